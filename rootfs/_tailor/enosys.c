/* enosys: start the guest's /init with some system calls failing as on a kernel without them.
 *
 * Discovery asks whether an app needs an option that provides system calls (EPOLL: epoll_*,
 * FUTEX: futex, ...) without building a kernel that lacks it: a kernel without the option answers
 * those calls with ENOSYS, and so does this helper's seccomp filter. The kernel starts it as init
 * (init= or rdinit=) with tailor_enosys=NR,NR,... in its environment (Linux hands an unknown
 * name=value argument without a dot to init that way); it installs a filter that makes those
 * x86-64 system call numbers return -ENOSYS for itself and everything it starts, says so on the
 * console and execs /init with the same arguments and environment. An empty list installs no
 * filter (the control boot). A bad list stops the boot with a message: the host then sees a failed
 * boot test, never a silently unfiltered one.
 *
 * Freestanding x86-64 like reseed.c: no libc, raw system calls, kernel UAPI headers only. */
#include <linux/filter.h>   /* struct sock_filter, struct sock_fprog, BPF_* */
#include <linux/seccomp.h>  /* SECCOMP_SET_MODE_FILTER, SECCOMP_RET_* */
#include <linux/audit.h>    /* AUDIT_ARCH_X86_64 */
#include <linux/prctl.h>    /* PR_SET_NO_NEW_PRIVS */
#include <asm/unistd.h>     /* __NR_* */

#define ENOSYS 38
#define MAX_CALLS 64
#define INIT "/init"
#define KEY "tailor_enosys="
/* offsets of struct seccomp_data's nr and arch */
#define DATA_NR 0
#define DATA_ARCH 4

/* A raw system call with three arguments; the other three (r10, r8, r9) are 0, as prctl wants them. */
static long sys(long n, long a, long b, long c)
{
	register long r10 __asm__("r10") = 0, r8 __asm__("r8") = 0, r9 __asm__("r9") = 0;
	long ret;
	__asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			  : "rcx", "r11", "memory");
	return ret;
}

static long len(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void out(const char *s) { sys(__NR_write, 1, (long)s, len(s)); }
static __attribute__((noreturn)) void stop(const char *s)
{
	out("tailor-enosys: ");
	out(s);
	out("\n");
	for (;;) sys(__NR_exit, 1, 0, 0);  /* init exits: the kernel panics and the boot test fails */
}

/* The value of KEY in envp, or 0. */
static const char *lookup(char **envp)
{
	for (; *envp; envp++) {
		const char *e = *envp, *k = KEY;
		while (*k && *e == *k) e++, k++;
		if (!*k)
			return e;
	}
	return 0;
}

static struct sock_filter prog[4 + 2 * MAX_CALLS + 1];

/* Called by _start with the initial stack: argc, argv[], 0, envp[], 0. */
__attribute__((noreturn, used)) void start(long *sp)
{
	long argc = sp[0], nr, i, n = 0, ret;
	char **argv = (char **)(sp + 1), **envp = argv + argc + 1;
	const char *list = lookup(envp), *p = list;
	struct sock_fprog fprog;

	if (!list)
		stop("no " KEY "in the environment; not starting " INIT);
	/* load the arch; anything but x86-64 is let through (this helper only runs on x86-64 guests) */
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH);
	prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA_NR);
	for (i = 0; *p; i++) {
		const char *digits = p;

		if (i == MAX_CALLS)
			stop("more than 64 system calls in " KEY);
		for (nr = 0; *p >= '0' && *p <= '9' && nr < 1000; p++)
			nr = nr * 10 + (*p - '0');
		if (p == digits || nr >= 1000 || (*p && *p != ',') || (*p == ',' && !p[1]))
			stop("bad " KEY "value: give system call numbers separated by commas");
		if (*p == ',')
			p++;
		prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1);
		prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
	}
	prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	if (i > 0) {
		fprog.len = (unsigned short)n;
		fprog.filter = prog;
		if (sys(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0) != 0)
			stop("prctl(PR_SET_NO_NEW_PRIVS) failed");
		ret = sys(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, (long)&fprog);
		if (ret != 0)
			stop(ret == -22 ? "seccomp() failed: EINVAL (a kernel without SECCOMP_FILTER?)" : "seccomp() failed");
		out("tailor-enosys: system calls ");
		out(list);
		out(" fail with ENOSYS\n");
	} else {
		out("tailor-enosys: no system calls fail (control)\n");
	}
	argv[0] = INIT;
	sys(__NR_execve, (long)INIT, (long)argv, (long)envp);
	stop("cannot exec " INIT);
}

/* The entry point: pass the stack pointer (argc) to start() with the stack 16-byte aligned. */
__asm__(".text\n.global _start\n_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n");
