// docs/prefetch-floor.c: the floor of prefetch on a one-CPU partition
// (docs/BENCHMARKS.md, "Prefetch"). A minimal userfaultfd handler thread,
// in the toucher's own process and pinned to the toucher's CPU, serves each
// fault with ONE UFFDIO_COPY of the faulting page and the next K pages
// (from a read-only zero mapping); the toucher writes 8 bytes to each page
// of 2048 in order, timing each write (as `vcored bench` does). The kernel's
// own first touch of the same number of pages is measured interleaved; the
// ratio is taken per repetition and its median printed. No framework, no
// second process: what any pager that copies on the worker's CPU pays at
// least.
//
//   gcc -O2 -Wall -pthread -o /tmp/prefetch-floor docs/prefetch-floor.c
//   /tmp/prefetch-floor 1        # the CPU both threads are pinned to
//
// Needs root (or vm.unprivileged_userfaultfd=1).
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PS 4096
#define N 2048
#define REPS 9

static int uffd, K, cpu;
static char *base, *zero;

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static void pin(void) {
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof s, &s)) perror("sched_setaffinity");
}

static void *handler(void *arg) {
	(void)arg;
	pin();
	for (;;) {
		struct pollfd p = {uffd, POLLIN, 0};
		struct uffd_msg m;
		poll(&p, 1, -1);
		if (read(uffd, &m, sizeof m) != sizeof m) continue;
		if (m.event != UFFD_EVENT_PAGEFAULT) continue;
		uintptr_t addr = m.arg.pagefault.address & ~(uintptr_t)(PS - 1);
		uintptr_t end = (uintptr_t)base + (size_t)N * PS;
		size_t len = (size_t)(K + 1) * PS;
		if (addr + len > end) len = end - addr;
		struct uffdio_copy c = {.dst = addr, .src = (uintptr_t)zero, .len = len, .mode = 0};
		if (ioctl(uffd, UFFDIO_COPY, &c)) {
			struct uffdio_range r = {addr, PS};
			ioctl(uffd, UFFDIO_WAKE, &r);
		}
	}
	return 0;
}

// touch writes the first word of every page, timing each write; it returns
// the mean time per page.
static double touch(char *m) {
	double sum = 0;
	for (int i = 0; i < N; i++) {
		double a = now();
		*(volatile uint64_t *)(m + (size_t)i * PS) = 0;
		sum += now() - a;
	}
	return sum / N;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static char *fresh(void) {
	char *m = mmap(0, (size_t)N * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) { perror("mmap"); exit(1); }
	madvise(m, (size_t)N * PS, MADV_NOHUGEPAGE);
	return m;
}

int main(int argc, char **argv) {
	cpu = argc > 1 ? atoi(argv[1]) : 1;
	pin();
	zero = mmap(0, 1024 * PS, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = {.api = UFFD_API};
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) { perror("userfaultfd"); return 1; }
	pthread_t th;
	pthread_create(&th, 0, handler, 0);
	int ks[] = {0, 16, 64, 256, 511};
	for (int ki = 0; ki < 5; ki++) {
		K = ks[ki];
		double rk[REPS], rp[REPS], rr[REPS];
		for (int rep = 0; rep < REPS; rep++) {
			char *m = fresh();
			rk[rep] = touch(m);
			munmap(m, (size_t)N * PS);
			base = fresh();
			struct uffdio_register r = {.range = {(uintptr_t)base, (size_t)N * PS}, .mode = UFFDIO_REGISTER_MODE_MISSING};
			if (ioctl(uffd, UFFDIO_REGISTER, &r)) { perror("UFFDIO_REGISTER"); return 1; }
			rp[rep] = touch(base);
			munmap(base, (size_t)N * PS);
			rr[rep] = rp[rep] / rk[rep];
		}
		qsort(rk, REPS, sizeof rk[0], cmp);
		qsort(rp, REPS, sizeof rp[0], cmp);
		qsort(rr, REPS, sizeof rr[0], cmp);
		printf("K=%3d (pages per copy %3d): kernel %.2f us/page, uffd copy-ahead %.2f us/page, ratio median %.2f (min %.2f, max %.2f)\n",
		       K, K + 1, rk[REPS / 2] / 1000, rp[REPS / 2] / 1000, rr[REPS / 2], rr[0], rr[REPS - 1]);
	}
	return 0;
}
