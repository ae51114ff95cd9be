# Sourced by the mysql image's entrypoint on first start (docker_process_sql is its function).
# README's MySQL 8 source grants: read only, plus LOCK TABLES for the exact snapshot position.
repl_password="$(cat /run/secrets/source_repl_password)"
docker_process_sql <<SQL
CREATE USER 'repl'@'%' IDENTIFIED BY '${repl_password}';
GRANT SELECT, SHOW VIEW, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, PROCESS ON *.* TO 'repl'@'%';
SQL
