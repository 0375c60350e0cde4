/* What a hop through a userspace process costs on this machine, at the least.
 *
 * A frame the daemon switches (without the kernel fast path) leaves the sender's kernel path,
 * waits for a worker thread, and comes back through a system call. A ping between two
 * containers crosses the daemon twice, where the kernel bridge handles the whole echo inside
 * the sender's own system call. This measures the parts of that hop no daemon design avoids:
 *
 *   syscall      one trivial system call (getppid)
 *   same CPU     a round trip between two threads pinned to one CPU over pipes: two context
 *                switches and four system calls, the least a hop on the sender's CPU costs
 *   other CPU    the same with the threads on two CPUs, each sleeping in read(): two wake-ups
 *                of a sleeping thread on another CPU (on a VM, of a halted vCPU)
 *
 * Build and run: cc -O2 -pthread benches/wakecost.c -o /tmp/wakecost && /tmp/wakecost
 * Results: BENCHMARKS.md, "What a daemon hop costs".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 100000

static int ping[2], pong[2];
static int partner_cpu;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) {
        perror("sched_setaffinity");
        exit(1);
    }
}

static void *echo(void *arg) {
    (void)arg;
    pin(partner_cpu);
    char c;
    for (int i = 0; i < ROUNDS; i++)
        if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1)
            exit(1);
    return NULL;
}

/* Mean round trip in ns between this thread on CPU `me` and an echo thread on CPU `other`. */
static double round_trip(int me, int other) {
    pthread_t thread;
    char c = 1;
    if (pipe(ping) || pipe(pong))
        exit(1);
    pin(me);
    partner_cpu = other;
    pthread_create(&thread, NULL, echo, NULL);
    double start = now_ns();
    for (int i = 0; i < ROUNDS; i++)
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
            exit(1);
    double mean = (now_ns() - start) / ROUNDS;
    pthread_join(thread, NULL);
    for (int i = 0; i < 2; i++) {
        close(ping[i]);
        close(pong[i]);
    }
    return mean;
}

int main(void) {
    double start = now_ns();
    for (int i = 0; i < 1000000; i++)
        syscall(SYS_getppid);
    printf("syscall    %7.0f ns\n", (now_ns() - start) / 1e6);
    printf("same CPU   %7.0f ns a round trip (2 context switches)\n", round_trip(0, 0));
    if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
        printf("other CPU  %7.0f ns a round trip (2 cross-CPU wake-ups)\n", round_trip(0, 1));
    return 0;
}
