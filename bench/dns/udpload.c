/*
 * udpload: a small single-threaded DNS-over-UDP load generator for bench/dns/run.sh.
 *
 * Why it exists: dnsperf prints no latency percentiles, and its per-query output (-v)
 * comes from separate send and receive threads that, pinned to one core, preempt each
 * other for whole scheduler slices, which shows up as milliseconds of "latency" at any
 * server. udpload runs one busy-polling thread: sends leave on schedule, and every reply is
 * timed when recvmmsg returns it.
 *
 *   udpload -s ADDR -p PORT -d QUERYFILE -l SECONDS (-Q RATE | -q OUTSTANDING) [-c SOCKETS] [-y US] [-S US]
 *
 * -Q RATE: open loop, RATE queries per second spread evenly over time (latency mode).
 * -q N:    closed loop, N queries outstanding (throughput mode).
 * -y US:   with -Q, sleep between turns (in ppoll on the sockets, woken by a reply or after
 *          at most US microseconds) instead of busy-polling: for runs where the client shares
 *          its cores with the server, whose core a busy-polling client would take. Sends due
 *          while it sleeps leave together when it wakes.
 * -S US:   print each reply slower than US microseconds to stderr, one line each: when its
 *          query was sent (ms since the start), its latency (µs), and how many replies the
 *          receive that took it returned (to see whether slow replies come in bursts).
 * QUERYFILE is dnsperf's format ("name type" per line; A, AAAA, SRV, TXT, ANY).
 * Queries carry RD and no EDNS, like dnsperf's defaults. A query unanswered after 1 s is lost.
 *
 * Prints one line of key=value pairs: sent, answered, lost, qps, rcodes, mean answer size
 * and answer count, latency p50/p90/p99/p99.9/max in microseconds, and the client's own
 * stalls (gaps of >= 200 µs in its busy loop).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKETS 64
#define IDS 65536
#define BATCH 64
#define PKT 512
#define TIMEOUT_NS 1000000000ull
#define HIST_US 1000000 /* 1 µs buckets up to 1 s */

struct query { uint8_t buf[PKT]; int len; };

static struct query *queries;
static int nqueries;
static uint64_t hist[HIST_US + 1];
static uint64_t rcodes[16];

/* One slot per (socket, DNS id): send time, 0 when free. */
static uint64_t *sent_at;
static int nsockets = 1;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int qtype_code(const char *t) {
    if (!strcasecmp(t, "A")) return 1;
    if (!strcasecmp(t, "AAAA")) return 28;
    if (!strcasecmp(t, "SRV")) return 33;
    if (!strcasecmp(t, "TXT")) return 16;
    if (!strcasecmp(t, "ANY")) return 255;
    return -1;
}

static void load_queries(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    char line[600], name[520], type[32];
    int cap = 1024;
    queries = malloc(sizeof *queries * cap);
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%519s %31s", name, type) != 2) continue;
        int code = qtype_code(type);
        if (code < 0) { fprintf(stderr, "udpload: unknown type %s\n", type); exit(2); }
        if (nqueries == cap) queries = realloc(queries, sizeof *queries * (cap *= 2));
        struct query *q = &queries[nqueries];
        uint8_t *p = q->buf;
        memset(p, 0, 12);
        p[2] = 0x01; /* RD */
        p[5] = 1;    /* QDCOUNT */
        p += 12;
        char *label = name;
        while (*label) {
            char *dot = strchr(label, '.');
            int len = dot ? (int)(dot - label) : (int)strlen(label);
            if (len == 0 || len > 63) break;
            *p++ = (uint8_t)len;
            memcpy(p, label, len);
            p += len;
            label += len + (dot ? 1 : 0);
        }
        *p++ = 0;
        *p++ = (uint8_t)(code >> 8); *p++ = (uint8_t)code;
        *p++ = 0; *p++ = 1; /* IN */
        q->len = (int)(p - q->buf);
        nqueries++;
    }
    fclose(f);
    if (nqueries == 0) { fprintf(stderr, "udpload: no queries in %s\n", path); exit(2); }
}

static double percentile(uint64_t total, double frac) {
    uint64_t want = (uint64_t)(frac * (double)total), seen = 0;
    if (want >= total) want = total - 1;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > want) return i;
    }
    return HIST_US;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *file = NULL;
    int port = 53, window = 0, yield_us = 0, slow_us = 0;
    double seconds = 10, rate = 0;
    int opt;
    while ((opt = getopt(argc, argv, "s:p:d:l:Q:q:c:y:S:")) != -1) {
        switch (opt) {
        case 's': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'd': file = optarg; break;
        case 'l': seconds = atof(optarg); break;
        case 'Q': rate = atof(optarg); break;
        case 'q': window = atoi(optarg); break;
        case 'c': nsockets = atoi(optarg); break;
        case 'y': yield_us = atoi(optarg); break;
        case 'S': slow_us = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (!file || (rate <= 0) == (window <= 0) || nsockets < 1 || nsockets > MAX_SOCKETS || yield_us < 0 ||
        (yield_us > 0 && rate <= 0) || slow_us < 0) {
    usage:
        fprintf(stderr, "usage: udpload -s ADDR -p PORT -d FILE -l SECONDS (-Q RATE | -q OUTSTANDING) [-c SOCKETS] [-y US] [-S US]\n");
        return 2;
    }
    if (window > IDS * nsockets) window = IDS * nsockets;
    load_queries(file);
    sent_at = calloc((size_t)IDS * nsockets, sizeof *sent_at);

    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, addr, &to.sin_addr) != 1) { fprintf(stderr, "udpload: bad address %s\n", addr); return 2; }
    int fds[MAX_SOCKETS];
    for (int s = 0; s < nsockets; s++) {
        fds[s] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int big = 8 << 20;
        setsockopt(fds[s], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fds[s], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (connect(fds[s], (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 2; }
    }

    /* Per socket: next DNS id to try. Ids are used round robin, skipping busy ones. */
    uint16_t next_id[MAX_SOCKETS] = {0};
    uint64_t sent = 0, answered = 0, lost = 0, late = 0, bytes = 0, answers = 0, outstanding = 0;
    uint64_t qi = 0, send_errors = 0;
    struct mmsghdr out[BATCH], in[BATCH];
    struct iovec outv[BATCH], inv[BATCH];
    static uint8_t outbuf[BATCH][PKT], inbuf[BATCH][4096];
    for (int i = 0; i < BATCH; i++) {
        inv[i].iov_base = inbuf[i]; inv[i].iov_len = sizeof inbuf[i];
        memset(&in[i], 0, sizeof in[i]);
        in[i].msg_hdr.msg_iov = &inv[i]; in[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9), last_sweep = start;
    int sock_rr = 0;
    /* The client's own stalls (gaps of 200 µs or more between turns of its loop, e.g. the
     * core taken by an interrupt or another task, or the vCPU descheduled): reported, since
     * replies that arrive during one are timed late and at a fixed rate the sends due during
     * one leave as a burst afterwards. */
    uint64_t last_turn = start, stalls = 0, stall_ns = 0, max_stall_ns = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (now - last_turn >= 200000) {
            stalls++; stall_ns += now - last_turn;
            if (now - last_turn > max_stall_ns) max_stall_ns = now - last_turn;
        }
        last_turn = now;
        int sending = now < end;
        if (!sending && outstanding == 0) break;
        if (now > end + TIMEOUT_NS) break;

        /* How many to send now. */
        uint64_t due = 0;
        if (sending) {
            if (rate > 0) {
                uint64_t target = (uint64_t)((double)(now - start) * rate / 1e9) + 1;
                due = target > sent ? target - sent : 0;
            } else {
                due = (uint64_t)window > outstanding ? window - outstanding : 0;
            }
        }
        while (due > 0) {
            int s = sock_rr;
            sock_rr = (sock_rr + 1) % nsockets;
            int n = 0;
            for (; n < BATCH && (uint64_t)n < due; n++) {
                /* Find a free id on this socket. */
                int tries = 0;
                uint16_t id = next_id[s];
                while (sent_at[(size_t)s * IDS + id] != 0 && tries < IDS) { id++; tries++; }
                if (tries == IDS) break;
                next_id[s] = (uint16_t)(id + 1);
                struct query *q = &queries[qi++ % nqueries];
                memcpy(outbuf[n], q->buf, q->len);
                outbuf[n][0] = (uint8_t)(id >> 8); outbuf[n][1] = (uint8_t)id;
                outv[n].iov_base = outbuf[n]; outv[n].iov_len = q->len;
                memset(&out[n], 0, sizeof out[n]);
                out[n].msg_hdr.msg_iov = &outv[n]; out[n].msg_hdr.msg_iovlen = 1;
                sent_at[(size_t)s * IDS + id] = 1; /* reserved; stamped below */
            }
            if (n == 0) break;
            uint64_t t = now_ns();
            int done = sendmmsg(fds[s], out, n, 0);
            if (done < 0) done = 0;
            for (int i = 0; i < n; i++) {
                uint16_t id = (uint16_t)(outbuf[i][0] << 8 | outbuf[i][1]);
                if (i < done) sent_at[(size_t)s * IDS + id] = t;
                else { sent_at[(size_t)s * IDS + id] = 0; send_errors++; }
            }
            sent += done; outstanding += done;
            due -= n;
            if (done < n) break; /* socket buffer full: retry next turn */
        }

        /* Drain replies. */
        for (int s = 0; s < nsockets; s++) {
            for (;;) {
                for (int i = 0; i < BATCH; i++) in[i].msg_len = 0;
                int n = recvmmsg(fds[s], in, BATCH, MSG_DONTWAIT, NULL);
                if (n <= 0) break;
                uint64_t t = now_ns();
                for (int i = 0; i < n; i++) {
                    uint8_t *r = inbuf[i];
                    if (in[i].msg_len < 12 || !(r[2] & 0x80)) continue;
                    uint16_t id = (uint16_t)(r[0] << 8 | r[1]);
                    uint64_t *slot = &sent_at[(size_t)s * IDS + id];
                    if (*slot <= 1) { late++; continue; }
                    uint64_t us = (t - *slot) / 1000;
                    hist[us > HIST_US ? HIST_US : us]++;
                    if (slow_us > 0 && us > (uint64_t)slow_us)
                        fprintf(stderr, "%.3f %llu %d\n", (*slot - start) / 1e6, (unsigned long long)us, n);
                    *slot = 0;
                    outstanding--; answered++;
                    rcodes[r[3] & 0x0f]++;
                    bytes += in[i].msg_len;
                    answers += (uint64_t)(r[6] << 8 | r[7]);
                }
                if (n < BATCH) break;
            }
        }

        /* Expire queries unanswered for 1 s (every 100 ms). */
        now = now_ns();
        if (now - last_sweep > 100000000ull || (!sending && outstanding > 0 && now > end + TIMEOUT_NS)) {
            last_sweep = now;
            for (size_t i = 0; i < (size_t)IDS * nsockets; i++) {
                if (sent_at[i] > 1 && now - sent_at[i] > TIMEOUT_NS) { sent_at[i] = 0; lost++; outstanding--; }
            }
        }

        /* -y: sleep until a reply comes, the next send is due, or US have passed. A sleep
         * that overran what was asked by 200 µs or more counts as a stall (the overrun). */
        if (yield_us > 0) {
            uint64_t wait = (uint64_t)yield_us * 1000;
            if (sending) {
                uint64_t next_due = start + (uint64_t)((double)sent * 1e9 / rate);
                now = now_ns();
                wait = next_due > now ? (next_due - now < wait ? next_due - now : wait) : 0;
            }
            if (wait > 0) {
                struct pollfd pfd[MAX_SOCKETS];
                for (int s = 0; s < nsockets; s++) pfd[s] = (struct pollfd){.fd = fds[s], .events = POLLIN};
                struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)wait};
                uint64_t before = now_ns();
                ppoll(pfd, (nfds_t)nsockets, &ts, NULL);
                uint64_t after = now_ns();
                if (after - before >= wait + 200000) {
                    uint64_t over = after - before - wait;
                    stalls++; stall_ns += over;
                    if (over > max_stall_ns) max_stall_ns = over;
                }
                last_turn = after;
            }
        }
    }
    lost += outstanding;
    double elapsed = seconds;
    printf("sent=%llu answered=%llu lost=%llu late=%llu send_errors=%llu qps=%.0f",
           (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)lost,
           (unsigned long long)late, (unsigned long long)send_errors, (double)answered / elapsed);
    printf(" noerror=%llu other_rcode=%llu", (unsigned long long)rcodes[0],
           (unsigned long long)(answered - rcodes[0]));
    if (answered) {
        printf(" avg_size=%.1f avg_answers=%.2f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f",
               (double)bytes / answered, (double)answers / answered, percentile(answered, 0.5),
               percentile(answered, 0.9), percentile(answered, 0.99), percentile(answered, 0.999));
        int max = HIST_US;
        while (max > 0 && hist[max] == 0) max--;
        printf(" max_us=%d", max);
    }
    printf(" client_stalls=%llu client_stall_ms=%.1f client_max_stall_us=%llu", (unsigned long long)stalls,
           stall_ns / 1e6, (unsigned long long)(max_stall_ns / 1000));
    printf("\n");
    return 0;
}
