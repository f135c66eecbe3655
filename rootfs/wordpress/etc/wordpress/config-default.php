<?php
/* tailor: WordPress's configuration for every host name. Debian's
 * /usr/share/wordpress/wp-config.php loads /etc/wordpress/config-<host>.php and
 * falls back to this file; the boot test reaches the VM through a forwarded
 * host port (Host: 127.0.0.1:<port>), so nothing here depends on the host. */
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', 'tailor');
define('DB_HOST', '127.0.0.1:3306');      /* the mariadbd service in the same VM */
define('DB_CHARSET', 'utf8mb4');

/* Home and site URL follow the request's Host header, so WordPress never
 * redirects the front page to the URL it was installed under. */
$tailor_host = preg_replace('/[^A-Za-z0-9.:\[\]-]/', '', $_SERVER['HTTP_HOST'] ?? '127.0.0.1:8000');
define('WP_HOME', 'http://' . $tailor_host);
define('WP_SITEURL', 'http://' . $tailor_host);

/* php -S serves /usr/share/wordpress, so wp-content is the packaged one (the
 * Debian default, /var/lib/wordpress/wp-content, is filled by wp-setup in the
 * package's postinst, which a tailor image never runs). */
define('WP_CONTENT_DIR', '/usr/share/wordpress/wp-content');
define('WP_CONTENT_URL', WP_SITEURL . '/wp-content');

/* A self-contained VM: no cron loopback requests, no updates, no outside HTTP. */
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);

/* Fixed keys: this is a boot-test image, not a site to deploy. */
define('AUTH_KEY',         'tailor-auth-key');
define('SECURE_AUTH_KEY',  'tailor-secure-auth-key');
define('LOGGED_IN_KEY',    'tailor-logged-in-key');
define('NONCE_KEY',        'tailor-nonce-key');
define('AUTH_SALT',        'tailor-auth-salt');
define('SECURE_AUTH_SALT', 'tailor-secure-auth-salt');
define('LOGGED_IN_SALT',   'tailor-logged-in-salt');
define('NONCE_SALT',       'tailor-nonce-salt');
