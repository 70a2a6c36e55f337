/*
 * The floor of the load benchmark: what the kernel costs per request on this machine.
 *
 * An epoll server on 127.0.0.1:PORT that answers every HTTP/1.1 request with the same fixed
 * 307 and keeps the connection open. Per request it makes one recv and one send (no parsing
 * beyond finding the end of each request head, no allocation, no logging, no timers), so its
 * CPU time per request is the system calls and the loopback TCP work any server must pay.
 *
 * usage: floor PORT [WORKERS]   (WORKERS processes share the listening socket; default 1)
 * Built by benches/load/run.py with the system C compiler; stopped with SIGINT or SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The size of the gateway's manifest redirect (status line, Location, Content-Length, Date,
 * Connection), so that both send about the same bytes. */
static const char ANSWER[] =
    "HTTP/1.1 307 Temporary Redirect\r\n"
    "Location: http://127.0.0.1:65535/v2/images/pause/manifests/3.10\r\n"
    "Content-Length: 0\r\n"
    "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

#define MAX_FDS 65536
#define MAX_ANSWERS 64
/* How much of "\r\n\r\n" the connection's last bytes matched: a head may end across reads. */
static unsigned char matched[MAX_FDS];

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Complete request heads in buf[0..n), carrying the partial match of the head's end. */
static int heads(int fd, const char *buf, ssize_t n) {
    static const char end[] = "\r\n\r\n";
    int found = 0;
    unsigned char m = matched[fd];
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == end[m]) {
            if (++m == 4) {
                found++;
                m = 0;
            }
        } else {
            m = buf[i] == '\r' ? 1 : 0;
        }
    }
    matched[fd] = m;
    return found;
}

static void serve(int listener) {
    static char answers[sizeof(ANSWER) * MAX_ANSWERS];
    size_t one = sizeof(ANSWER) - 1;
    for (int i = 0; i < MAX_ANSWERS; i++)
        memcpy(answers + i * one, ANSWER, one);

    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = listener};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) < 0)
        die("epoll_ctl listener");
    struct epoll_event events[256];
    char buf[16384];
    for (;;) {
        int ready = epoll_wait(ep, events, 256, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                for (;;) {
                    int c = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    if (c >= MAX_FDS) {
                        close(c);
                        continue;
                    }
                    int yes = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
                    matched[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0)
                        close(c);
                }
                continue;
            }
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) {
                if (n < 0 && errno == EAGAIN)
                    continue;
                close(fd); /* also leaves the epoll set */
                continue;
            }
            int count = heads(fd, buf, n);
            if (count > MAX_ANSWERS)
                count = MAX_ANSWERS;
            if (count > 0 && send(fd, answers, one * count, MSG_NOSIGNAL) < 0)
                close(fd);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2)
        return fprintf(stderr, "usage: %s PORT [WORKERS]\n", argv[0]), 2;
    int port = atoi(argv[1]);
    int workers = argc > 2 ? atoi(argv[2]) : 1;
    if (port <= 0 || port > 65535 || workers < 1)
        return fprintf(stderr, "bad PORT or WORKERS\n"), 2;

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (listener < 0)
        die("socket");
    int yes = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        die("bind");
    if (listen(listener, 4096) < 0)
        die("listen");

    if (workers == 1)
        serve(listener);
    pid_t parent = getpid();
    for (int i = 0; i < workers; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            /* A worker goes when the parent does, however the parent was stopped. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                return 0;
            serve(listener);
        }
    }
    while (wait(NULL) > 0)
        ;
    return 0;
}
