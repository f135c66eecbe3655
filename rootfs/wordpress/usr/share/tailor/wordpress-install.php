<?php
/* tailor: install WordPress into its (empty) database at boot, what the web
 * installer (wp-admin/install.php) does. Run by the init once the mariadbd
 * service is ready; a second run finds the blog installed and does nothing. */
$_SERVER['HTTP_HOST'] = '127.0.0.1:8000';  /* Debian's wp-config.php picks the config by host */
$_SERVER['REQUEST_URI'] = '/';
define('WP_INSTALLING', true);

/* wp_die() (e.g. "Error establishing a database connection") ends the script with
 * status 0: make any end before the last line below fail the setup step. */
register_shutdown_function(function () {
    if (!defined('TAILOR_INSTALLED')) {
        fwrite(STDERR, "tailor-wordpress: install did not complete\n");
        exit(1);
    }
});

/* No mail server in the VM: skip the "your new blog" mail (a pluggable function). */
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password) {}

require '/usr/share/wordpress/wp-load.php';
require ABSPATH . 'wp-admin/includes/upgrade.php';

if (is_blog_installed()) {
    define('TAILOR_INSTALLED', true);
    echo "tailor-wordpress: already installed\n";
    exit(0);
}
$result = wp_install('tailor wordpress', 'admin', 'admin@example.invalid', true, '', 'tailor-admin');
if (!is_array($result) || empty($result['user_id']) || !is_blog_installed()) {
    fwrite(STDERR, "tailor-wordpress: wp_install failed\n");
    exit(1);
}
define('TAILOR_INSTALLED', true);
echo "tailor-wordpress: installed '" . get_option('blogname') . "' with theme " . get_option('stylesheet') . "\n";
