/* reseed: the guest end of tailor's snapshot entropy push.
 *
 * A VM restored from a snapshot repeats the snapshot's crng output until the next reseed. The
 * init starts this helper (kernel argument tailor_reseed=PORT) before it execs the app; after a
 * restore the host connects to 0.0.0.0:PORT through a hostfwd and sends 16..64 random bytes.
 * The helper credits them to the input pool (RNDADDENTROPY), forces a crng reseed
 * (RNDRESEEDCRNG) and answers "reseeded\n", or "error N\n" (N: the errno of the failing call),
 * or "short\n" for fewer than 16 bytes. A client's error never ends the loop.
 *
 * Freestanding x86-64: no libc (built with -nostdlib -static -ffreestanding), raw syscalls.
 * Kernel UAPI headers only: they need no libc. */
#include <linux/random.h>   /* RNDADDENTROPY, RNDRESEEDCRNG, struct rand_pool_info */
#include <linux/in.h>       /* struct sockaddr_in, INADDR_ANY */
#include <linux/time_types.h>
#include <asm/unistd.h>     /* __NR_* */
#include <asm/socket.h>     /* SOL_SOCKET, SO_REUSEADDR, SO_RCVTIMEO_OLD */
#include <asm/fcntl.h>      /* O_WRONLY, O_CLOEXEC */

/* _IOW('R', 0x03, int[2]) and _IO('R', 0x07), as this machine's linux-libc-dev defines them */
_Static_assert(RNDADDENTROPY == 0x40085203 && RNDRESEEDCRNG == 0x5207, "the ioctls of random(4)");

#define AF_INET 2           /* libc's, not in the UAPI headers */
#define SOCK_STREAM 1
#define MSG_DONTWAIT 0x40
#define MSG_NOSIGNAL 0x4000 /* a client gone early is EPIPE, not a SIGPIPE that kills us */
#define MIN_BYTES 16
#define MAX_BYTES 64

/* A raw system call: number in rax, arguments in rdi rsi rdx r10 r8 r9; returns -errno on error. */
static long sys(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile ("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			  : "rcx", "r11", "memory");
	return ret;
}
#define sys3(n, a, b, c) sys(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

static long len(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void say(int fd, const char *s) { sys(__NR_sendto, fd, (long)s, len(s), MSG_NOSIGNAL, 0, 0); }
static __attribute__((noreturn)) void die(const char *s)
{
	sys3(__NR_write, 2, s, len(s));
	for (;;) sys3(__NR_exit, 1, 0, 0);
}

/* The entropy buffer: the header's struct (flexible buf[]) with room for MAX_BYTES after it. */
static union { struct rand_pool_info info; __u32 space[2 + MAX_BYTES / 4]; } pool;
static struct sockaddr_in addr;

/* Serve one client on socket c with the random device rnd open. */
static void serve(int c, int rnd)
{
	static const struct __kernel_old_timeval limit = { 5, 0 }; /* a silent client cannot stall us */
	char *buf = (char *)pool.info.buf, msg[16], *p;
	long got = 0, n, err;
	int i;

	sys(__NR_setsockopt, c, SOL_SOCKET, SO_RCVTIMEO_OLD, (long)&limit, sizeof limit, 0);
	while (got < MIN_BYTES && (n = sys3(__NR_read, c, buf + got, MAX_BYTES - got)) > 0)
		got += n;
	if (got < MIN_BYTES) {
		say(c, "short\n");
		return;
	}
	pool.info.entropy_count = 8 * got; /* bits */
	pool.info.buf_size = got;          /* bytes */
	err = sys3(__NR_ioctl, rnd, RNDADDENTROPY, &pool.info);
	if (err == 0)
		err = sys3(__NR_ioctl, rnd, RNDRESEEDCRNG, 0);
	if (err == 0) {
		say(c, "reseeded\n");
	} else { /* "error N\n", built backwards from the end of msg */
		p = msg + sizeof msg - 1;
		*p = 0;
		*--p = '\n';
		n = -err; /* 1..4095 */
		do
			*--p = '0' + n % 10;
		while (n /= 10);
		for (i = 5; i >= 0; i--)
			*--p = "error "[i];
		say(c, p);
	}
	/* drop bytes past MAX_BYTES (a close with unread bytes resets the connection, maybe before the
	 * reply is read), then forget them all: they are in the pool now */
	while (sys(__NR_recvfrom, c, (long)buf, MAX_BYTES, MSG_DONTWAIT, 0, 0) > 0)
		;
	for (i = 0; i < MAX_BYTES; i++)
		buf[i] = 0;
}

/* Called by _start with the initial stack: argc, then argv[]. */
__attribute__((noreturn, used)) void start(long *sp)
{
	const char *arg = sp[0] > 1 ? (const char *)sp[2] : "";
	long port = 0, one = 1, s, rnd, c;

	for (; *arg >= '0' && *arg <= '9' && port <= 65535; arg++)
		port = port * 10 + (*arg - '0');
	if (*arg || port < 1 || port > 65535)
		die("usage: reseed PORT (1-65535)\n");
	rnd = sys3(__NR_open, "/dev/urandom", O_WRONLY | O_CLOEXEC, 0);
	if (rnd < 0)
		die("reseed: cannot open /dev/urandom\n");
	s = sys3(__NR_socket, AF_INET, SOCK_STREAM | O_CLOEXEC, 0);
	addr.sin_family = AF_INET;
	addr.sin_port = (unsigned short)(port >> 8 | (port & 0xff) << 8); /* network byte order */
	addr.sin_addr.s_addr = INADDR_ANY;
	sys(__NR_setsockopt, s, SOL_SOCKET, SO_REUSEADDR, (long)&one, sizeof(int), 0);
	if (s < 0 || sys3(__NR_bind, s, &addr, sizeof addr) < 0 || sys3(__NR_listen, s, 4, 0) < 0)
		die("reseed: cannot listen on the port\n");
	for (;;) {
		c = sys3(__NR_accept, s, 0, 0);
		if (c < 0)
			continue; /* ECONNABORTED, EINTR, ...: wait for the next client */
		serve(c, rnd);
		sys3(__NR_close, c, 0, 0);
	}
}

/* The entry point: pass the stack pointer (argc) to start() with the stack 16-byte aligned. */
__asm__(".text\n.global _start\n_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n");
