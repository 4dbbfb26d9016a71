#!/bin/sh
# Container start for App Supervisor: the same steps as `make run`.
#   1. system checks (stop with one line per configuration error; APP_MODE=supervisor|worker
#      is refused by supervisor.E010 until the multi-environment mode lands)
#   2. migrations of the supervisor database
#   3. bootstrap_local, in local mode only (local environment, superuser, running `demo` app)
#   4. the ASGI server on port 80, as PID 1 (exec) so it receives docker's SIGTERM
set -eu

cd "$(dirname "$0")/.."

# settings.py strips and lower-cases APP_MODE; unset means local.
mode=$(printf '%s' "${APP_MODE:-local}" | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]')

python manage.py check --fail-level ERROR
python manage.py migrate --noinput -v0
if [ "$mode" = "local" ]; then
    python manage.py bootstrap_local
fi

exec uvicorn supervisor_project.asgi:application --host 0.0.0.0 --port 80 \
    --lifespan on --no-server-header
