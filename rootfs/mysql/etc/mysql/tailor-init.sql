-- Run by mariadbd --init-file at every start: what the mysql image sets up from
-- MYSQL_ROOT_PASSWORD and MYSQL_DATABASE (root reachable from the host, an app database).
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY 'tailor';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS app;
