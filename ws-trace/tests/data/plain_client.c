#define _GNU_SOURCE
/* A WebSocket client that knows nothing of ws-engine: blocking read(2), frames parsed by
 * hand, and on_message() for every message, which spins for SPIN_US microseconds.
 * Usage: plain_client HOST PORT SPIN_US. Prints "received N on_message_p50_ns D" (D: the
 * median of on_message's own durations, from its first clock read to its last) and exits
 * 0 after the server's close frame. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long spin_us;
static unsigned long received;
#define MAX_TIMED 65536
static uint64_t durations[MAX_TIMED];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline)) void on_message(const unsigned char *data, size_t len) {
    uint64_t start = now_ns(), end = start + (uint64_t)spin_us * 1000u, t;
    do {
        t = now_ns();
    } while (t < end);
    if (received < MAX_TIMED) durations[received] = t - start;
    received++;
    __asm__ volatile("" : : "r"(data), "r"(len) : "memory");
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static unsigned long long median_duration(void) {
    size_t n = received < MAX_TIMED ? received : MAX_TIMED;
    if (n == 0) return 0;
    qsort(durations, n, sizeof durations[0], by_value);
    return (unsigned long long)durations[n / 2];
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: plain_client HOST PORT SPIN_US\n");
        return 2;
    }
    spin_us = atol(argv[3]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /feed HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     argv[1], argv[2]);
    if (write(fd, req, n) != n) {
        perror("write");
        return 1;
    }
    static unsigned char buf[1 << 20];
    size_t have = 0, pos = 0;
    int upgraded = 0;
    for (;;) {
        if (have == sizeof buf) {
            memmove(buf, buf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
        ssize_t got = read(fd, buf + have, sizeof buf - have);
        if (got <= 0) {
            fprintf(stderr, "connection ended after %lu messages\n", received);
            return 1;
        }
        have += (size_t)got;
        if (!upgraded) {
            unsigned char *end = memmem(buf, have, "\r\n\r\n", 4);
            if (!end) continue;
            pos = (size_t)(end - buf) + 4;
            upgraded = 1;
        }
        for (;;) {
            if (have - pos < 2) break;
            unsigned char op = buf[pos] & 0x0f;
            size_t len = buf[pos + 1] & 0x7f, hdr = 2;
            if (len == 126) {
                if (have - pos < 4) break;
                len = ((size_t)buf[pos + 2] << 8) | buf[pos + 3];
                hdr = 4;
            } else if (len == 127) {
                fprintf(stderr, "frame too large\n");
                return 1;
            }
            if (have - pos < hdr + len) break;
            if (op == 8) {
                printf("received %lu on_message_p50_ns %llu\n", received, median_duration());
                return 0;
            }
            on_message(buf + pos + hdr, len);
            pos += hdr + len;
        }
        if (pos == have) {
            pos = have = 0;
        }
    }
}
