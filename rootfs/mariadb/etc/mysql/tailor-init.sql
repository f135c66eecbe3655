-- Run by mariadbd --init-file at every start: what the mariadb image sets up from
-- MARIADB_ROOT_PASSWORD and MARIADB_DATABASE (root reachable from the host, an app database).
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY 'tailor';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS app;
