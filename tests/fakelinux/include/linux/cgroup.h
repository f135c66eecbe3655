/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _LINUX_CGROUP_H
#define _LINUX_CGROUP_H

/* Without control groups, a socket's cgroup hook is a stub that compiles to nothing. */
#ifdef CONFIG_CGROUPS
void cgroup_sk_alloc(int *sk);
#else
static inline void cgroup_sk_alloc(int *sk)
{
}
#endif

#endif /* _LINUX_CGROUP_H */
