/* The attacks of tests/tests/evasion_net.rs, done for real with raw syscalls (no liburing):
 *
 *   netprobe SETTLE_MS connect ADDR PORT          connect(2) (an IPv6 ADDR, ::ffff:a.b.c.d
 *                                                   included, uses an AF_INET6 socket)
 *   netprobe SETTLE_MS uring-connect ADDR PORT    io_uring IORING_OP_CONNECT
 *   netprobe SETTLE_MS sendmmsg ADDR PORT COUNT   COUNT UDP datagrams in one sendmmsg(2)
 *   netprobe SETTLE_MS uring-sendmsg ADDR PORT    io_uring IORING_OP_SENDMSG, a UDP datagram
 *                                                   with its address in the msghdr
 *   netprobe SETTLE_MS uring-sendto ADDR PORT     io_uring IORING_OP_SEND with the address in
 *                                                   the SQE (addr2, 6.0+): sendto(2) by ring
 *   netprobe SETTLE_MS uring-connected-send ADDR PORT
 *       connect(2) a UDP socket to ADDR PORT (prints `connect=N` first), then io_uring
 *       IORING_OP_SEND without an address: the connected socket's datagram
 *   netprobe SETTLE_MS open PATH                  openat(2), read-write
 *   netprobe SETTLE_MS uring-open PATH            io_uring IORING_OP_OPENAT, read-write
 *   netprobe SETTLE_MS toctou ADDR ADDR2 PORT EACH
 *       the main thread connects to one sockaddr, ADDR and ADDR2 in turn, while a thread
 *       rewrites its IPv4 address to the other one as soon as each connect starts (one
 *       aligned 32-bit store: never a torn address), until EACH connects went each way (or
 *       20000 tries); getpeername() says where each one went, a refused one went nowhere.
 *
 * SETTLE_MS: wait first, so that the monitor has put the process under its profile.
 * Prints one line: `res=N` (0 or -errno), or for toctou `first=N second=M eperm=K other=L`.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int addr_of(const char *text, int port, struct sockaddr_storage *out, socklen_t *len) {
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *in4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        *len = sizeof(*in4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof(*in6);
        return AF_INET6;
    }
    fprintf(stderr, "bad address %s\n", text);
    exit(2);
}

/* One io_uring request, submitted and waited for: its completion's result. */
static int uring_one(void (*fill)(struct io_uring_sqe *, void *), void *arg) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    int ring = syscall(__NR_io_uring_setup, 4, &p);
    if (ring < 0) {
        perror("io_uring_setup");
        exit(3);
    }
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe),
                                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                                     IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        perror("mmap");
        exit(3);
    }
    unsigned *sq_tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    unsigned *sq_array = (unsigned *)(sq + p.sq_off.array);
    unsigned *cq_head = (unsigned *)(cq + p.cq_off.head);
    unsigned *cq_tail = (unsigned *)(cq + p.cq_off.tail);
    unsigned *cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    unsigned tail = *sq_tail;
    unsigned index = tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[index];
    memset(sqe, 0, sizeof(*sqe));
    fill(sqe, arg);
    sq_array[index] = index;
    atomic_store_explicit((_Atomic unsigned *)sq_tail, tail + 1, memory_order_release);
    int n = syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (n < 0) {
        perror("io_uring_enter");
        exit(3);
    }
    unsigned head = atomic_load_explicit((_Atomic unsigned *)cq_head, memory_order_acquire);
    while (head == atomic_load_explicit((_Atomic unsigned *)cq_tail, memory_order_acquire)) {
    }
    int res = cqes[head & *cq_mask].res;
    atomic_store_explicit((_Atomic unsigned *)cq_head, head + 1, memory_order_release);
    close(ring);
    return res;
}

struct connect_arg {
    int fd;
    struct sockaddr_storage *addr;
    socklen_t len;
};

static void fill_connect(struct io_uring_sqe *sqe, void *arg) {
    struct connect_arg *c = arg;
    sqe->opcode = IORING_OP_CONNECT;
    sqe->fd = c->fd;
    sqe->addr = (unsigned long)c->addr;
    sqe->off = c->len;
}

struct send_arg {
    int fd;
    struct msghdr *msg;
    struct sockaddr_storage *addr;
    socklen_t len;
};

static void fill_sendmsg(struct io_uring_sqe *sqe, void *arg) {
    struct send_arg *s = arg;
    sqe->opcode = IORING_OP_SENDMSG;
    sqe->fd = s->fd;
    sqe->addr = (unsigned long)s->msg;
    sqe->len = 1;
}

/* IORING_OP_SEND of the msghdr's one byte; with `addr` set, to that address (addr2). */
static void fill_send(struct io_uring_sqe *sqe, void *arg) {
    struct send_arg *s = arg;
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = s->fd;
    sqe->addr = (unsigned long)s->msg->msg_iov->iov_base;
    sqe->len = s->msg->msg_iov->iov_len;
    if (s->addr) {
        sqe->addr2 = (unsigned long)s->addr;
        sqe->addr_len = s->len;
    }
}

static void fill_open(struct io_uring_sqe *sqe, void *arg) {
    sqe->opcode = IORING_OP_OPENAT;
    sqe->fd = AT_FDCWD;
    sqe->addr = (unsigned long)arg;
    sqe->open_flags = O_RDWR;
}

static struct sockaddr_in shared;
static uint32_t flip[2];
static atomic_int stop;
static atomic_int started;
/* The round the main thread is connecting in (0: none). */
static atomic_uint round_in_connect;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    /* Best effort: on one CPU the race is only rarer. */
    sched_setaffinity(0, sizeof(set), &set);
}

/* As soon as the main thread is in a connect, rewrite the address to the other one: the
 * kernel copies it at the syscall's start, sometimes before this store and sometimes after,
 * and whatever reads the buffer again later (at the syscall's exit) sees the other address. */
static void *flipper(void *unused) {
    (void)unused;
    pin(1);
    atomic_store(&started, 1);
    unsigned last = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        unsigned round = atomic_load_explicit(&round_in_connect, memory_order_acquire);
        if (round != 0 && round != last) {
            /* Through a volatile pointer: the compiler keeps every store. */
            *(volatile uint32_t *)&shared.sin_addr.s_addr = flip[round & 1];
            last = round;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: see the source\n");
        return 2;
    }
    /* Never hang a test: a stalled probe dies. */
    alarm(60);
    struct timespec settle = {atoi(argv[1]) / 1000, (atoi(argv[1]) % 1000) * 1000000L};
    nanosleep(&settle, NULL);
    const char *mode = argv[2];
    struct sockaddr_storage addr;
    socklen_t len;
    int res;
    if (!strcmp(mode, "connect") || !strcmp(mode, "uring-connect")) {
        int family = addr_of(argv[3], atoi(argv[4]), &addr, &len);
        int fd = socket(family, SOCK_STREAM, 0);
        if (!strcmp(mode, "connect")) {
            res = connect(fd, (struct sockaddr *)&addr, len) == 0 ? 0 : -errno;
        } else {
            struct connect_arg c = {fd, &addr, len};
            res = uring_one(fill_connect, &c);
        }
    } else if (!strcmp(mode, "sendmmsg")) {
        int family = addr_of(argv[3], atoi(argv[4]), &addr, &len);
        int count = atoi(argv[5]);
        int fd = socket(family, SOCK_DGRAM, 0);
        struct mmsghdr msgs[16];
        struct iovec iov = {"x", 1};
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < count && i < 16; i++) {
            msgs[i].msg_hdr.msg_name = &addr;
            msgs[i].msg_hdr.msg_namelen = len;
            msgs[i].msg_hdr.msg_iov = &iov;
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = sendmmsg(fd, msgs, count, 0);
        res = n < 0 ? -errno : n;
    } else if (!strcmp(mode, "uring-sendmsg") || !strcmp(mode, "uring-sendto") ||
               !strcmp(mode, "uring-connected-send")) {
        int family = addr_of(argv[3], atoi(argv[4]), &addr, &len);
        int fd = socket(family, SOCK_DGRAM, 0);
        struct iovec iov = {"x", 1};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        struct send_arg s = {fd, &msg, NULL, 0};
        if (!strcmp(mode, "uring-sendmsg")) {
            msg.msg_name = &addr;
            msg.msg_namelen = len;
            res = uring_one(fill_sendmsg, &s);
        } else if (!strcmp(mode, "uring-sendto")) {
            s.addr = &addr;
            s.len = len;
            res = uring_one(fill_send, &s);
        } else {
            int connected = connect(fd, (struct sockaddr *)&addr, len) == 0 ? 0 : -errno;
            printf("connect=%d ", connected);
            res = connected == 0 ? uring_one(fill_send, &s) : connected;
        }
    } else if (!strcmp(mode, "open")) {
        int fd = openat(AT_FDCWD, argv[3], O_RDWR);
        res = fd < 0 ? -errno : 0;
    } else if (!strcmp(mode, "uring-open")) {
        res = uring_one(fill_open, argv[3]);
        res = res < 0 ? res : 0;
    } else if (!strcmp(mode, "toctou")) {
        struct in_addr a, b;
        if (inet_pton(AF_INET, argv[3], &a) != 1 || inet_pton(AF_INET, argv[4], &b) != 1) {
            fprintf(stderr, "bad IPv4 address\n");
            return 2;
        }
        flip[0] = a.s_addr;
        flip[1] = b.s_addr;
        shared.sin_family = AF_INET;
        shared.sin_port = htons(atoi(argv[5]));
        shared.sin_addr = a;
        int each = atoi(argv[6]);
        pthread_t thread;
        pthread_create(&thread, NULL, flipper, NULL);
        while (!atomic_load(&started)) {
        }
        int first = 0, second = 0, eperm = 0, other = 0;
        pin(0);
        for (unsigned i = 0; i < 20000 && (first < each || second + eperm < each); i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            /* The address this round means (round i + 1 is flipped to flip[(i + 1) & 1]). */
            *(volatile uint32_t *)&shared.sin_addr.s_addr = flip[i & 1];
            atomic_store_explicit(&round_in_connect, i + 1, memory_order_release);
            int ret = connect(fd, (struct sockaddr *)&shared, sizeof(shared));
            int err = errno;
            atomic_store_explicit(&round_in_connect, 0, memory_order_release);
            if (ret == 0) {
                struct sockaddr_in peer;
                socklen_t peer_len = sizeof(peer);
                getpeername(fd, (struct sockaddr *)&peer, &peer_len);
                if (peer.sin_addr.s_addr == flip[0]) {
                    first++;
                } else {
                    second++;
                }
            } else if (err == EPERM) {
                eperm++;
            } else {
                other++;
            }
            close(fd);
        }
        atomic_store(&stop, 1);
        pthread_join(thread, NULL);
        printf("first=%d second=%d eperm=%d other=%d\n", first, second, eperm, other);
        return 0;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("res=%d\n", res);
    return 0;
}
