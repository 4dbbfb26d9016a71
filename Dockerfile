# App Supervisor image: local mode today (APP_MODE=local: one ASGI process serving the
# supervisor UI and the hosted sub-apps). Start-up steps live in docker/entrypoint.sh.
#
#   docker build -t app-supervisor .
#   docker run -p 14000:80 -e SECRET_KEY=... -v appsup-storage:/data/storage app-supervisor
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

# The project, piece by piece: a plain `COPY . .` would also copy .venv/ and storage/ (the
# local secret key and SQLite databases), as the repository has no .dockerignore.
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

# check, migrate, bootstrap_local (local mode only), then uvicorn on port 80.
CMD ["/app/docker/entrypoint.sh"]
