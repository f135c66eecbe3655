// SPDX-License-Identifier: GPL-2.0
/* Socket allocation, charged to the socket's control group and memory cgroup when there are any. */

#include <linux/cgroup.h>
#include <linux/security.h>

int nr_cgroup_socks;

int mem_cgroup_charge_skmem(int *sk);

int sk_alloc(int *sk)
{
	int charged = 0;

	cgroup_sk_alloc(sk);
#ifdef CONFIG_CGROUPS
	nr_cgroup_socks++;
#endif
#if IS_ENABLED(CONFIG_MEMCG) && defined(CONFIG_INET)
	charged = mem_cgroup_charge_skmem(sk);
#else
	charged = 1;
#endif
	return charged + security_sk_alloc(sk);
}
