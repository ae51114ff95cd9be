# Sourced by the mysql image's entrypoint on first start (docker_process_sql is its function).
# README's target grants: everything on the replicated database and the state schema, CONNECTION_ADMIN to fence.
austasync_password="$(cat /run/secrets/target_austasync_password)"
docker_process_sql <<SQL
CREATE USER 'austasync'@'%' IDENTIFIED BY '${austasync_password}';
GRANT ALL PRIVILEGES ON austa_portal.* TO 'austasync'@'%';
GRANT ALL PRIVILEGES ON _austasync.* TO 'austasync'@'%';
GRANT CONNECTION_ADMIN, REPLICATION SLAVE, REPLICATION CLIENT, PROCESS ON *.* TO 'austasync'@'%';
GRANT SELECT ON mysql.innodb_table_stats TO 'austasync'@'%';
SQL
