-- Run by mariadbd --init-file at every start: WordPress's database and its user
-- (what Debian's /usr/share/doc/wordpress/examples/setup-mysql does).
CREATE DATABASE IF NOT EXISTS wordpress CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'wordpress'@'%' IDENTIFIED BY 'tailor';
GRANT ALL PRIVILEGES ON wordpress.* TO 'wordpress'@'%';
