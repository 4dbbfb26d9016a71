#!/bin/sh
# Container start for App Supervisor: prepare what APP_MODE needs, then run the command.
#
#   APP_MODE=local (default)  check, migrate, bootstrap_local (local environment, superuser,
#                             a running `demo` app): the same steps as `make run`
#   APP_MODE=supervisor       check, migrate, cluster_superuser (`admin`, its password printed
#                             once); the web server and the Celery jobs worker both come here
#   APP_MODE=worker           nothing: `manage.py run_environment` runs the system checks and
#                             migrates the environment's own database itself
#
# Then it execs its arguments (compose's `command:`, `docker run IMAGE ...`) or, given none,
# the mode's server:
#   local, supervisor  uvicorn on port 80
#   worker             python manage.py run_environment (Celery worker + heartbeat + uvicorn)
# exec: that process replaces this shell, so it receives docker's SIGTERM.
set -eu

cd "$(dirname "$0")/.."

# settings.py strips and lower-cases APP_MODE; unset means local.
mode=$(printf '%s' "${APP_MODE:-local}" | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]')

case "$mode" in
    worker)
        ;;
    *)
        # supervisor, local, or a value that `check` refuses with one line (supervisor.E001).
        python manage.py check --fail-level ERROR
        python manage.py migrate --noinput -v0
        if [ "$mode" = "local" ]; then
            python manage.py bootstrap_local
        elif [ "$mode" = "supervisor" ]; then
            python manage.py cluster_superuser
        fi
        ;;
esac

if [ "$#" -eq 0 ]; then
    if [ "$mode" = "worker" ]; then
        set -- python manage.py run_environment
    else
        set -- uvicorn supervisor_project.asgi:application --host 0.0.0.0 --port 80 \
            --lifespan on --no-server-header
    fi
fi
exec "$@"
