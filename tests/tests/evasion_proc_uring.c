/* io_uring through raw syscalls (no liburing). As a governed "server": creates a ring (with
 * SQPOLL when argv[1] is "sqpoll"), submits an IORING_OP_OPENAT of argv[2] and an
 * IORING_OP_CONNECT to 127.0.0.1:argv[3], and prints each result. As an accessor
 * (argv[1] "procmem"): opens argv[2] (a /proc/PID/mem) with IORING_OP_OPENAT, reads argv[4]
 * bytes at address argv[3] and prints them. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ring_fd;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static int sqpoll;

static int submit_and_wait(struct io_uring_sqe *sqe) {
    unsigned tail = *sq_tail;
    unsigned idx = tail & *sq_mask;
    sqes[idx] = *sqe;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    unsigned flags = IORING_ENTER_GETEVENTS | (sqpoll ? IORING_ENTER_SQ_WAKEUP : 0);
    if (syscall(__NR_io_uring_enter, ring_fd, sqpoll ? 0 : 1, 1, flags, NULL, 0) < 0) {
        perror("io_uring_enter");
        exit(2);
    }
    unsigned head;
    while ((head = *cq_head) == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
        usleep(1000);
    int res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s plain|sqpoll PATH PORT\n", argv[0]);
        return 2;
    }
    sqpoll = strcmp(argv[1], "sqpoll") == 0;
    int procmem = strcmp(argv[1], "procmem") == 0;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    if (sqpoll) {
        p.flags = IORING_SETUP_SQPOLL;
        p.sq_thread_idle = 1000;
    }
    ring_fd = syscall(__NR_io_uring_setup, 8, &p);
    if (ring_fd < 0) {
        perror("io_uring_setup");
        return 2;
    }
    char *sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

    struct io_uring_sqe sqe;
    memset(&sqe, 0, sizeof sqe);
    sqe.opcode = IORING_OP_OPENAT;
    sqe.fd = AT_FDCWD;
    sqe.addr = (unsigned long)argv[2];
    sqe.open_flags = O_RDONLY;
    int opened = submit_and_wait(&sqe);
    printf("openat %d\n", opened);
    if (procmem) {
        if (argc < 5 || opened < 0)
            return 1;
        size_t len = strtoul(argv[4], NULL, 10);
        char buf[256] = {0};
        if (len >= sizeof buf)
            len = sizeof buf - 1;
        ssize_t n = pread(opened, buf, len, (off_t)strtoull(argv[3], NULL, 10));
        printf("data %s\n", n > 0 ? buf : "");
        fflush(stdout);
        return n > 0 ? 0 : 1;
    }

    int sock = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[3]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(&sqe, 0, sizeof sqe);
    sqe.opcode = IORING_OP_CONNECT;
    sqe.fd = sock;
    sqe.addr = (unsigned long)&addr;
    sqe.off = sizeof addr;
    int connected = submit_and_wait(&sqe);
    printf("connect %d\n", connected);
    fflush(stdout);
    return opened >= 0 && connected == 0 ? 0 : 1;
}
