// SPDX-License-Identifier: GPL-2.0
/* TCP: a connection asks the security module first (see include/linux/security.h). */

#include <linux/security.h>

int sk_alloc(int *sk);

int tcp_connect(int *sk)
{
	if (security_sk_alloc(sk))
		return -1;
	return sk_alloc(sk);
}

#ifdef CONFIG_SYN_COOKIES
int tcp_syncookies = 1;
#endif
