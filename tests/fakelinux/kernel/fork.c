// SPDX-License-Identifier: GPL-2.0
/* Process creation: a count of forks, and the futex and timer clean-ups a new process needs. */

int nr_forks;

void futex_init_task(int pid);
void posix_cputimers_init(int pid);

int copy_process(int pid)
{
	nr_forks++;
#ifdef CONFIG_FUTEX
	futex_init_task(pid);
#endif
#ifdef CONFIG_POSIX_TIMERS
	posix_cputimers_init(pid);
#endif
	return pid + nr_forks;
}
