# App Supervisor image: one image for every process, chosen by APP_MODE and the command.
# docker/entrypoint.sh prepares what the mode needs, then runs the command (see there):
#   APP_MODE=local (default)  one ASGI process: supervisor UI + hosted sub-apps
#   APP_MODE=supervisor       the ASGI server (default command), or the Celery jobs worker
#   APP_MODE=worker           python manage.py run_environment (default command)
# docker-compose.yml runs the seed's multi-environment topology with it. Local mode alone:
#
#   docker build -t app-supervisor .
#   docker run -p 14000:80 -v appsup-storage:/data/storage app-supervisor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STORAGE_DIR=/data/storage

# tzdata: TZ becomes Django's TIME_ZONE, which needs the zone database; slim images may lack it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tzdata \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# A non-root user owns only the storage directory; the code stays root-owned and read-only.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data/storage \
    && chown app:app /data/storage

# The project, piece by piece: only what runs. .dockerignore keeps .venv/ and storage/ (the
# local secret key and SQLite databases) out of the context, but `COPY . .` would still ship
# tests, benchmarks and whatever else lies in the working copy.
COPY manage.py ./
COPY supervisor_project ./supervisor_project
COPY apps ./apps
COPY workers ./workers
COPY templates ./templates
COPY docker ./docker
RUN chmod 0755 /app/docker/entrypoint.sh

VOLUME ["/data/storage"]
USER app
EXPOSE 80

# ENTRYPOINT, not CMD: a compose `command:` (or `docker run IMAGE cmd...`) replaces only the
# command, and the entrypoint still prepares the mode first. No CMD on purpose: setting
# ENTRYPOINT clears the base image's CMD (python3), and without arguments the entrypoint runs
# the mode's own server.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
