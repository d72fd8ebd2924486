/* A program that does its work from its first instruction, for tests/tests/process.rs:
 * `monitor trace --exe` must see all of it (the loader's opens included).
 *
 *   firststeps PATH PORT    open PATH, bind 127.0.0.1:PORT, listen, exit
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: firststeps PATH PORT\n");
        return 2;
    }
    int file = open(argv[1], O_RDONLY);
    if (file < 0) {
        perror("open");
        return 1;
    }
    int sock = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("bind");
        return 1;
    }
    if (listen(sock, 1) != 0) {
        perror("listen");
        return 1;
    }
    return 0;
}
