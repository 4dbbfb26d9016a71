-- Run once by the postgres image, on an empty data volume, against POSTGRES_DB
-- (nocobase_supervisor, the supervisor's database). Each worker environment keeps what it
-- hosts in a database of its own (DB_DATABASE in docker-compose.yml): create them here.
-- A volume initialised earlier (e.g. by the local-mode compose file) skips this script:
--   docker compose exec postgres createdb -U postgres nocobase_worker_a
--   docker compose exec postgres createdb -U postgres nocobase_worker_b
CREATE DATABASE nocobase_worker_a;
CREATE DATABASE nocobase_worker_b;
