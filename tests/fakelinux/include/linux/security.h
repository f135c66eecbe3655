/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _LINUX_SECURITY_H
#define _LINUX_SECURITY_H

int security_check(int *sk);

/* Inlined into its callers: the security module is asked only in a kernel with CONFIG_SECURITY. */
static inline int security_sk_alloc(int *sk)
{
#ifndef CONFIG_SECURITY
	return 0;
#else
	return security_check(sk);
#endif
}

#endif /* _LINUX_SECURITY_H */
