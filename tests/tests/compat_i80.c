/* 32-bit (ia32) syscalls made by a 64-bit process with `int $0x80`: the way around the
 * per-syscall tracepoints, which skip compat syscalls. Built static and non-PIE so that the
 * buffers the syscalls name lie below 4 GiB (ia32 pointers are 32 bits).
 *
 *   probe                  ia32 getpid; prints "ia32 ok" if it matches the native one
 *   open PATH1 PATH2 PATH3 ia32 open(PATH1), ia32 openat(AT_FDCWD, PATH2), prints what was
 *                          read; ia32 unlink(PATH3)
 *   target SECRET MARK     holds SECRET in static memory; prints "pid ADDR LEN"; waits on stdin
 *   vm_readv PID ADDR LEN  ia32 process_vm_readv of the target's secret; prints "data ..."
 *   ptrace PID ADDR        ia32 PTRACE_ATTACH, PTRACE_PEEKDATA of one word, PTRACE_DETACH
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

static char path1[4096], path2[4096], path3[4096], secret[256], local[256];
static unsigned int iov_local[2], iov_remote[2], word;

static long i80(long nr, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long ebp asm("rbp") = f;
    /* rbp is the frame pointer: the function is built with -fomit-frame-pointer. */
    asm volatile("int $0x80"
                 : "=a"(ret)
                 : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e), "r"(ebp)
                 : "memory");
    return ret;
}

static void dump(const char *what, long fd) {
    char buf[128] = {0};
    long n = fd >= 0 ? read((int)fd, buf, sizeof buf - 1) : -1;
    printf("%s fd=%ld read=%ld data=%s\n", what, fd, n, n > 0 ? buf : "");
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "probe")) {
        long pid = i80(20, 0, 0, 0, 0, 0, 0);
        printf("%s %ld\n", pid == getpid() ? "ia32 ok" : "ia32 absent", pid);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "open")) {
        strncpy(path1, argv[2], sizeof path1 - 1);
        strncpy(path2, argv[3], sizeof path2 - 1);
        strncpy(path3, argv[4], sizeof path3 - 1);
        /* Garbage in the upper halves: the kernel reads 32 bits, so must the monitor. */
        long hi = 0x5a5a5a5a00000000L;
        dump("open", i80(5, hi | (long)path1, hi | 0, 0, 0, 0, 0));
        dump("openat", i80(295, hi | (unsigned int)-100, (long)path2, 0, 0, 0, 0));
        printf("unlink ret=%ld\n", i80(10, hi | (long)path3, 0, 0, 0, 0, 0));
        fflush(stdout);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "target")) {
        strncpy(secret, argv[2], sizeof secret - 1);
        printf("%d %lu %zu\n", getpid(), (unsigned long)secret, strlen(secret));
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {
        }
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "vm_readv")) {
        long pid = atol(argv[2]);
        iov_local[0] = (unsigned int)(unsigned long)local;
        iov_local[1] = (unsigned int)atol(argv[4]);
        iov_remote[0] = (unsigned int)atol(argv[3]);
        iov_remote[1] = iov_local[1];
        long n = i80(347, pid, (long)iov_local, 1, (long)iov_remote, 1, 0);
        printf("vm_readv ret=%ld data=%s\n", n, n > 0 ? local : "");
        return n > 0 ? 0 : 1;
    }
    if (argc == 4 && !strcmp(argv[1], "ptrace")) {
        long pid = atol(argv[2]);
        long addr = atol(argv[3]);
        long r = i80(26, 16 /* PTRACE_ATTACH */, pid, 0, 0, 0, 0);
        if (r != 0) {
            printf("ptrace attach ret=%ld\n", r);
            return 1;
        }
        waitpid((int)pid, NULL, 0);
        /* compat PEEKDATA stores the 32-bit word at the address in `data`. */
        r = i80(26, 2 /* PTRACE_PEEKDATA */, pid, addr, (long)&word, 0, 0);
        i80(26, 17 /* PTRACE_DETACH */, pid, 0, 0, 0, 0);
        char text[5] = {0};
        memcpy(text, &word, 4);
        printf("ptrace peek ret=%ld data=%s\n", r, text);
        return r == 0 ? 0 : 1;
    }
    fprintf(stderr, "usage: see the comment at the top of compat_i80.c\n");
    return 2;
}
