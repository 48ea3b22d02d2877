-- docker-compose.yml: the monitoring role postgres_exporter connects as, created on the first
-- start of the postgres container (/docker-entrypoint-initdb.d). Read-only statistics through
-- pg_monitor, never a superuser. The password only matters on the compose network: Postgres
-- publishes no port. The Docker-free stack creates the same role through stack/postgres.py,
-- with a password made at each start.
CREATE ROLE otel_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  PASSWORD 'otel_monitor';
GRANT pg_monitor TO otel_monitor;
ALTER ROLE otel_monitor SET default_transaction_read_only = on;
