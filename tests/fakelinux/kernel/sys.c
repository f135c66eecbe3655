// SPDX-License-Identifier: GPL-2.0
/* The host name, as the uname system call reports it. */

#ifdef CONFIG_HOSTNAME
static const char hostname[] = CONFIG_HOSTNAME;
#else
static const char hostname[] = "(none)";
#endif

const char *sys_hostname(void)
{
	return hostname;
}
