// The least a userspace datapath between a container and the host can do: a two-port wire
// between a veth's host end (a packet socket) and a TAP, with no switching, no table, no
// counter. It moves every frame as is, the virtio-net header included (both ends speak the
// same one), in batches, and waits as vswitch's workers do but for their home CPU: an optional
// poll window of `-p` microseconds after the last frame (non-blocking reads and sched_yield),
// then a sleep in epoll_wait; pin it with taskset to give it a home. benches/hopfloor.sh runs it beside the kernel bridge and the daemon, so that
// the daemon's own overhead shows apart from the hop's (BENCHMARKS.md, "The host's frames by
// CPU, and the least a hop can cost").
//
//   cc -O2 -Wall benches/wire.c -o /tmp/wire
//   ip netns exec HOST /tmp/wire -i VETH_HOST_END -t TAPNAME [-p POLL_US]
//
// It creates the TAP, prints "ready" once both ends are open, and runs until killed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// <net/if.h> clashes with <linux/if.h>.
unsigned int if_nametoindex(const char *ifname);

#define BATCH 16
#define FRAME (65536 + 64) // a GSO super-frame, its Ethernet and virtio-net headers

static void die(const char *what) {
    perror(what);
    exit(1);
}

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static int open_packet(const char *ifname) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one)) die("PACKET_VNET_HDR");
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one))
        die("PACKET_IGNORE_OUTGOING");
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    a.sll_ifindex = (int)if_nametoindex(ifname);
    if (!a.sll_ifindex) die(ifname);
    if (bind(fd, (struct sockaddr *)&a, sizeof a)) die("bind");
    struct packet_mreq m = {.mr_ifindex = a.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m)) die("promisc");
    return fd;
}

static int open_tap(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq r = {0};
    snprintf(r.ifr_name, IFNAMSIZ, "%s", name);
    r.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &r)) die("TUNSETIFF");
    int len = sizeof(struct virtio_net_hdr);
    if (ioctl(fd, TUNSETVNETHDRSZ, &len)) die("TUNSETVNETHDRSZ");
    if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) die("TUNSETOFFLOAD");
    return fd;
}

int main(int argc, char **argv) {
    const char *veth = NULL, *tap = NULL;
    long poll_us = 0;
    for (int c; (c = getopt(argc, argv, "i:t:p:")) != -1;) {
        if (c == 'i') veth = optarg;
        else if (c == 't') tap = optarg;
        else if (c == 'p') poll_us = atol(optarg);
        else return 2;
    }
    if (!veth || !tap) {
        fprintf(stderr, "usage: wire -i VETH -t TAP [-p POLL_US]\n");
        return 2;
    }
    int pfd = open_packet(veth), tfd = open_tap(tap);
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN};
    e.data.fd = pfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, pfd, &e)) die("epoll_ctl");
    e.data.fd = tfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e)) die("epoll_ctl");

    static char bufs[BATCH][FRAME];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = FRAME};
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
    }
    printf("ready\n");
    fflush(stdout);

    long long last = now_us();
    for (;;) {
        int moved = 0;
        // Container to host: a batch off the packet socket, each frame written into the TAP.
        int n = recvmmsg(pfd, msgs, BATCH, MSG_DONTWAIT, NULL);
        for (int i = 0; i < n; i++)
            // EIO: the TAP is still down; EAGAIN: its queue is full. Both drop the frame.
            if (write(tfd, bufs[i], msgs[i].msg_len) < 0 && errno != EAGAIN && errno != EIO)
                die("write tap");
        moved += n > 0 ? n : 0;
        // Host to container: a batch read off the TAP, sent in one sendmmsg.
        int m = 0;
        for (; m < BATCH; m++) {
            ssize_t len = read(tfd, bufs[m], FRAME);
            if (len < 0) break;
            iov[m].iov_len = (size_t)len;
        }
        // ENOBUFS, EAGAIN: the veth or the socket's buffer is full; the batch is dropped.
        if (m > 0 && sendmmsg(pfd, msgs, (unsigned)m, 0) < 0 && errno != ENOBUFS && errno != EAGAIN)
            die("sendmmsg");
        for (int i = 0; i < m; i++) iov[i].iov_len = FRAME;
        moved += m;
        if (moved) {
            last = now_us();
            continue;
        }
        if (now_us() - last < poll_us) {
            sched_yield();
            continue;
        }
        struct epoll_event ev[2];
        if (epoll_wait(ep, ev, 2, -1) < 0 && errno != EINTR) die("epoll_wait");
        last = now_us();
    }
}
