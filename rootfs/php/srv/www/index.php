<?php
// Served by `php -S` running as init in a tailor microVM.
echo "Hello from PHP " . PHP_MAJOR_VERSION . "." . PHP_MINOR_VERSION . " running as init\n";
