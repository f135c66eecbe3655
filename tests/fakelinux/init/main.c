// SPDX-License-Identifier: GPL-2.0
/* The kernel's start: the log buffer (its size is an option) and the first steps. */

#ifdef CONFIG_LOG_SHIFT
#define LOG_BUF_LEN (1 << CONFIG_LOG_SHIFT)
#else
#define LOG_BUF_LEN (1 << 17)
#endif

char log_buf[LOG_BUF_LEN];

int copy_process(int pid);
void proc_root_init(void);

int start_kernel(void)
{
	log_buf[0] = '<';
#ifdef CONFIG_PROC_FS
	proc_root_init();
#endif
	return copy_process(1);
}
