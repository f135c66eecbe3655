// SPDX-License-Identifier: GPL-2.0
/* Opening files: the flags a process may pass, checked before anything else. */

#define O_ACCMODE 3

int do_sys_open(int dfd, const char *name, int flags)
{
	if (!name || (flags & O_ACCMODE) == O_ACCMODE)
		return -22;
#ifdef CONFIG_SECCOMP
	if (dfd < -100)
		return -1;
#endif
	return dfd + 3;
}
