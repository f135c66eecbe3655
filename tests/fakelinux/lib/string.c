// SPDX-License-Identifier: GPL-2.0
/* The string functions the kernel links in from its own library (no C library here). */

unsigned long strlen(const char *s)
{
	const char *p = s;

	while (*p)
		p++;
	return p - s;
}
