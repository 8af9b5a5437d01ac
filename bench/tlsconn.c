/* tlsconn: TLS connection load generator for bench/tls.sh (not part of bulkhead; built by the script with
 * `cc -O2 -o tlsconn bench/tlsconn.c -lssl -lcrypto -lpthread`).
 *
 * rate mode (default): T threads, each with its own epoll loop and C/T connection slots. Every slot loops:
 *   connect, TLS handshake (with -r: offering the session ticket the slot's previous connection received),
 *   "GET PATH HTTP/1.1" with "Connection: close", read the response to the server's close, close; next.
 *   After WARMUP seconds (which also primes the sessions) it counts DURATION seconds and prints one line
 *     RESULT mode=full|resume conns=N duration_s=S cps=X resumed=R failed=F p50_us=.. p99_us=..
 *            client_cpu_s=.. server_cpu_s=.. up_cpu_s=.. busy_pct=.. version=.. cipher=.. group=..
 *   server_cpu_s / up_cpu_s: utime+stime (+ reaped children) of the -P / -U PIDs over exactly the counted
 *   window, read from /proc/PID/stat; client_cpu_s: getrusage of this process over the window; busy_pct: the
 *   host's busy CPU over the window, % of one core (/proc/stat). A connection counts when it completes
 *   inside the window with a "200" status line and the server's close; resumed = SSL_session_reused().
 * idle mode (-m idle): reads commands on stdin. "open N": opens N more keep-alive connections (at most W
 *   connecting at a time), each: connect, handshake, one GET (without -n), read the whole response
 *   (Content-Length or chunked), then stays open and idle (no reads); prints "READY ok failed seconds" (totals).
 *   "quit": peeks every idle socket (no TLS read), prints "DONE closed_by_server=K", closes them, exits.
 *
 * usage: tlsconn [-m rate|idle] [-c CONC] [-t THREADS] [-d SECONDS] [-w WARMUP] [-r] [-p PATH]
 *                [-P pid,pid] [-U pid,pid] [-W WINDOW] [-n] [-V 1.2|1.3] [-G groups] [-T timeout_s] HOST PORT
 * The client does not verify the server's certificate (SSL_VERIFY_NONE; the handshake signature is still
 * checked, as TLS requires), sets TCP_NODELAY, and uses OpenSSL's default groups/ciphers unless -G/-V. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { ST_FREE, ST_CONNECT, ST_HS, ST_WRITE, ST_READ, ST_IDLE };
enum { PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_STOP };

typedef struct conn {
    int fd, state;
    uint32_t events;       /* current epoll interest */
    SSL *ssl;
    SSL_SESSION *sess;     /* rate -r: the ticket for this slot's next connection */
    uint64_t t0;           /* start, ns */
    char head[1024];       /* the first bytes of the response */
    size_t hlen, total;
} conn_t;

typedef struct worker {
    pthread_t th;
    int ep, nconn;
    conn_t *conns;
    uint64_t done, resumed, failed;   /* counted inside the window */
    uint64_t fail_total;
    uint32_t *lat;                    /* µs, inside the window */
    size_t nlat, caplat;
    char errmsg[256];
} worker_t;

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static char req[512];
static size_t reqlen;
static int keepalive_req;              /* idle mode: parse the response length instead of reading to EOF */
static int opt_resume, opt_norequest;
static double opt_timeout = 10.0;
static _Atomic int phase = PH_WARMUP;
static char info[256];
static atomic_flag info_set = ATOMIC_FLAG_INIT;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *m) { fprintf(stderr, "tlsconn: %s\n", m); exit(2); }

static void set_interest(worker_t *w, conn_t *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(w->ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl");
    c->events = ev;
}

static void conn_close(worker_t *w, conn_t *c) {
    if (c->events) epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->events = 0;
    if (c->ssl) {
        /* keeps the session resumable (an SSL freed "mid-connection" marks its session not resumable) */
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = ST_FREE;
}

static int conn_start(worker_t *w, conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { snprintf(w->errmsg, sizeof w->errmsg, "socket: %s", strerror(errno)); return -1; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now_ns();
    c->hlen = c->total = 0;
    c->events = 0;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        snprintf(w->errmsg, sizeof w->errmsg, "connect: %s", strerror(errno));
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = ST_CONNECT;
    set_interest(w, c, EPOLLOUT);
    return 0;
}

/* the response in c->head/total is complete (keep-alive framing): Content-Length or chunked end */
static int response_complete(conn_t *c) {
    char *end = memmem(c->head, c->hlen, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t hl = (size_t)(end - c->head) + 4;
    for (char *p = c->head; p < end;) {
        char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!nl) nl = end;
        if ((size_t)(nl - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            return c->total >= hl + strtoull(p + 15, NULL, 10);
        if ((size_t)(nl - p) > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
            return c->hlen >= 5 && memcmp(c->head + c->hlen - 5, "0\r\n\r\n", 5) == 0;
        p = nl + 2;
    }
    return 1;
}

static void record_info(SSL *ssl) {
    if (atomic_flag_test_and_set(&info_set)) return;
    int g = SSL_get_negotiated_group(ssl);
    const char *gn = g ? OBJ_nid2sn(g & ~TLSEXT_nid_unknown) : "-";
    snprintf(info, sizeof info, "version=%s cipher=%s group=%s", SSL_get_version(ssl),
             SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), gn ? gn : "-");
}

/* 1: the connection finished (ok or not), 0: waiting for the socket */
static int fail(worker_t *w, conn_t *c, const char *what) {
    unsigned long e = ERR_peek_last_error();
    if (!w->errmsg[0] || w->fail_total < 3) {
        char eb[160] = "";
        if (e) ERR_error_string_n(e, eb, sizeof eb);
        snprintf(w->errmsg, sizeof w->errmsg, "%s%s%s (errno %d)", what, eb[0] ? ": " : "", eb, errno);
    }
    ERR_clear_error();
    w->fail_total++;
    if (atomic_load(&phase) == PH_MEASURE) w->failed++;
    conn_close(w, c);
    return 1;
}

static int ssl_wait(worker_t *w, conn_t *c, int r, const char *what) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { set_interest(w, c, EPOLLIN); return 0; }
    if (e == SSL_ERROR_WANT_WRITE) { set_interest(w, c, EPOLLOUT); return 0; }
    return fail(w, c, what);
}

static int finish(worker_t *w, conn_t *c) {
    int ok = c->hlen >= 12 && (memcmp(c->head, "HTTP/1.1 200", 12) == 0 || memcmp(c->head, "HTTP/1.0 200", 12) == 0);
    if (opt_norequest) ok = 1;
    if (!ok) {
        errno = 0;
        char s[64];
        snprintf(s, sizeof s, "bad response '%.*s'", (int)(c->hlen < 20 ? c->hlen : 20), c->head);
        return fail(w, c, s);
    }
    if (keepalive_req) {           /* idle mode: keep it, stop watching it */
        if (c->events) epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        c->events = 0;
        c->state = ST_IDLE;
        return 1;
    }
    if (atomic_load(&phase) == PH_MEASURE) {
        w->done++;
        if (SSL_session_reused(c->ssl)) w->resumed++;
        if (w->nlat == w->caplat) {
            w->caplat = w->caplat ? 2 * w->caplat : 65536;
            w->lat = realloc(w->lat, w->caplat * sizeof *w->lat);
            if (!w->lat) die("out of memory");
        }
        w->lat[w->nlat++] = (uint32_t)((now_ns() - c->t0) / 1000);
    }
    if (opt_resume) {
        SSL_SESSION *s = SSL_get1_session(c->ssl);
        if (s && SSL_SESSION_is_resumable(s)) {
            if (c->sess) SSL_SESSION_free(c->sess);
            c->sess = s;
        } else if (s) SSL_SESSION_free(s);
    }
    conn_close(w, c);
    return 1;
}

static int drive(worker_t *w, conn_t *c) {
    int r;
    char buf[16384];
    switch (c->state) {
    case ST_CONNECT: {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { errno = err; return fail(w, c, "connect"); }
        c->ssl = SSL_new(ctx);
        if (!c->ssl) return fail(w, c, "SSL_new");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        if (opt_resume && c->sess) SSL_set_session(c->ssl, c->sess);
        c->state = ST_HS;
    } /* fall through */
    case ST_HS:
        r = SSL_connect(c->ssl);
        if (r != 1) return ssl_wait(w, c, r, "handshake");
        record_info(c->ssl);
        if (opt_norequest) return finish(w, c);
        c->state = ST_WRITE;
        /* fall through */
    case ST_WRITE:
        r = SSL_write(c->ssl, req, (int)reqlen);
        if (r <= 0) return ssl_wait(w, c, r, "write");
        c->state = ST_READ;
        set_interest(w, c, EPOLLIN);
        /* fall through */
    case ST_READ:
        for (;;) {
            r = SSL_read(c->ssl, buf, sizeof buf);
            if (r > 0) {
                size_t n = (size_t)r, room = sizeof c->head - c->hlen;
                if (keepalive_req) { /* keep the tail for the chunked terminator check */
                    if (n >= sizeof c->head) { memcpy(c->head, buf + n - sizeof c->head, sizeof c->head); c->hlen = sizeof c->head; }
                    else {
                        if (n > room) { size_t drop = n - room; memmove(c->head, c->head + drop, c->hlen - drop); c->hlen -= drop; }
                        memcpy(c->head + c->hlen, buf, n); c->hlen += n;
                    }
                } else if (room) { size_t k = n < room ? n : room; memcpy(c->head + c->hlen, buf, k); c->hlen += k; }
                c->total += n;
                if (keepalive_req && response_complete(c)) return finish(w, c);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN && !keepalive_req) return finish(w, c);
            return ssl_wait(w, c, r, "read");
        }
    }
    return 1;
}

static void check_timeouts(worker_t *w, uint64_t now) {
    uint64_t lim = (uint64_t)(opt_timeout * 1e9);
    for (int i = 0; i < w->nconn; i++) {
        conn_t *c = &w->conns[i];
        if (c->state >= ST_CONNECT && c->state <= ST_READ && now - c->t0 > lim) {
            errno = ETIMEDOUT;
            const char *st[] = {"", "connect", "handshake", "write", "read"};
            char m[64];
            snprintf(m, sizeof m, "timeout in %s", st[c->state]);
            fail(w, c, m);
        }
    }
}

static void *rate_loop(void *arg) {
    worker_t *w = arg;
    struct epoll_event ev[256];
    uint64_t last_check = now_ns(), drain_start = 0;
    for (int i = 0; i < w->nconn; i++)
        if (conn_start(w, &w->conns[i]) < 0) w->fail_total++;
    for (;;) {
        int ph = atomic_load(&phase);
        if (ph == PH_STOP) break;
        if (ph == PH_DRAIN && !drain_start) drain_start = now_ns();
        int active = 0;
        for (int i = 0; i < w->nconn; i++) {
            conn_t *c = &w->conns[i];
            if (c->state == ST_FREE && ph < PH_DRAIN) {
                if (conn_start(w, c) < 0) { w->fail_total++; if (ph == PH_MEASURE) w->failed++; }
            }
            if (c->state != ST_FREE) active++;
        }
        if (!active && ph >= PH_DRAIN) break;
        if (drain_start && now_ns() - drain_start > 3000000000ull) break;
        int n = epoll_wait(w->ep, ev, 256, 100);
        for (int i = 0; i < n; i++) drive(w, ev[i].data.ptr);
        uint64_t t = now_ns();
        if (t - last_check > 200000000ull) { check_timeouts(w, t); last_check = t; }
    }
    for (int i = 0; i < w->nconn; i++) if (w->conns[i].state != ST_FREE) conn_close(w, &w->conns[i]);
    return NULL;
}

/* ---- /proc accounting ---------------------------------------------------------------------------------- */
static long clk_tck;

static uint64_t pid_ticks(const char *list) {
    uint64_t t = 0;
    if (!list || !*list) return 0;
    char *dup = strdup(list), *save = NULL;
    for (char *p = strtok_r(dup, ", ", &save); p; p = strtok_r(NULL, ", ", &save)) {
        char path[64], b[2048];
        snprintf(path, sizeof path, "/proc/%s/stat", p);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(b, 1, sizeof b - 1, f);
        fclose(f);
        b[n] = 0;
        char *q = strrchr(b, ')');
        if (!q) continue;
        unsigned long long v[16] = {0};
        /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14)
         * stime(15) cutime(16) cstime(17) */
        char st;
        if (sscanf(q + 2, "%c %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &st,
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11],
                   &v[12], &v[13]) == 15)
            t += v[10] + v[11] + v[12] + v[13];
    }
    free(dup);
    return t;
}

static void host_busy(uint64_t *busy, uint64_t *total) {
    FILE *f = fopen("/proc/stat", "r");
    char line[512];
    *busy = *total = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        unsigned long long v[8] = {0};
        if (strncmp(line, "cpu ", 4) != 0) continue;
        sscanf(line + 4, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7]);
        uint64_t tot = 0;
        for (int i = 0; i < 8; i++) tot += v[i];
        *total = tot;
        *busy = tot - v[3] - v[4];
    }
    fclose(f);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* ---- idle mode ------------------------------------------------------------------------------------------- */
static void idle_open(worker_t *w, int want, int window, double *secs, uint64_t *ok_total) {
    uint64_t t0 = now_ns();
    int base = w->nconn, started = 0, active = 0;
    conn_t *nc = realloc(w->conns, (size_t)(base + want) * sizeof *nc);
    if (!nc) die("out of memory");
    w->conns = nc;
    memset(nc + base, 0, (size_t)want * sizeof *nc);
    for (int i = base; i < base + want; i++) nc[i].fd = -1;
    /* pointers into w->conns changed: re-register the in-flight ones (none: idle ones are not registered) */
    w->nconn = base + want;
    struct epoll_event ev[256];
    uint64_t last_check = now_ns();
    while (started < want || active) {
        while (started < want && active < window) {
            conn_t *c = &w->conns[base + started++];
            if (conn_start(w, c) < 0) { w->fail_total++; continue; }
            active++;
        }
        int n = epoll_wait(w->ep, ev, 256, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = ev[i].data.ptr;
            if (drive(w, c)) active--;
        }
        uint64_t t = now_ns();
        if (t - last_check > 200000000ull) {
            for (int i = base; i < base + started; i++) {
                conn_t *c = &w->conns[i];
                if (c->state >= ST_CONNECT && c->state <= ST_READ && t - c->t0 > (uint64_t)(opt_timeout * 1e9)) {
                    errno = ETIMEDOUT;
                    fail(w, c, "timeout");
                    active--;
                }
            }
            last_check = t;
        }
    }
    uint64_t ok = 0;
    for (int i = 0; i < w->nconn; i++) ok += w->conns[i].state == ST_IDLE;
    *ok_total = ok;
    *secs = (double)(now_ns() - t0) / 1e9;
}

static void raise_nofile(rlim_t want) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur >= want) return;
    rl.rlim_cur = want <= rl.rlim_max ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static int idle_main(int window) {
    worker_t w = {0};
    w.ep = epoll_create1(EPOLL_CLOEXEC);
    if (w.ep < 0) die("epoll_create1");
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        int n;
        if (sscanf(line, "open %d", &n) == 1 && n > 0) {
            raise_nofile((rlim_t)(w.nconn + n + 64));
            double secs;
            uint64_t ok;
            idle_open(&w, n, window, &secs, &ok);
            printf("READY %llu %llu %.1f\n", (unsigned long long)ok, (unsigned long long)w.fail_total, secs);
            if (w.fail_total && w.errmsg[0]) fprintf(stderr, "tlsconn: first failures: %s\n", w.errmsg);
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) break;
    }
    int closed = 0;
    for (int i = 0; i < w.nconn; i++) {
        conn_t *c = &w.conns[i];
        if (c->state != ST_IDLE) continue;
        char b;
        ssize_t r = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) || r > 0) closed++;
    }
    printf("DONE closed_by_server=%d\n", closed);
    fflush(stdout);
    for (int i = 0; i < w.nconn; i++) if (w.conns[i].state != ST_FREE) conn_close(&w, &w.conns[i]);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = "rate", *path = "/", *spids = NULL, *upids = NULL, *groups = NULL, *ver = NULL;
    int conc = 64, threads = 1, window = 200, opt;
    double dur = 5, warm = 1;
    while ((opt = getopt(argc, argv, "m:c:t:d:w:rp:P:U:W:nV:G:T:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'c': conc = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'r': opt_resume = 1; break;
        case 'p': path = optarg; break;
        case 'P': spids = optarg; break;
        case 'U': upids = optarg; break;
        case 'W': window = atoi(optarg); break;
        case 'n': opt_norequest = 1; break;
        case 'V': ver = optarg; break;
        case 'G': groups = optarg; break;
        case 'T': opt_timeout = atof(optarg); break;
        default: fprintf(stderr, "usage: see the header of bench/tlsconn.c\n"); return 2;
        }
    }
    if (argc - optind != 2) die("need HOST PORT");
    if (conc < 1 || threads < 1 || window < 1) die("bad -c/-t/-W");
    if (threads > conc) threads = conc;
    signal(SIGPIPE, SIG_IGN);
    clk_tck = sysconf(_SC_CLK_TCK);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[optind + 1]));
    if (inet_pton(AF_INET, argv[optind], &addr.sin_addr) != 1) die("HOST must be an IPv4 address");

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (ver) {
        int v = strcmp(ver, "1.2") == 0 ? TLS1_2_VERSION : strcmp(ver, "1.3") == 0 ? TLS1_3_VERSION : 0;
        if (!v) die("-V wants 1.2 or 1.3");
        SSL_CTX_set_min_proto_version(ctx, v);
        SSL_CTX_set_max_proto_version(ctx, v);
    }
    if (groups && SSL_CTX_set1_groups_list(ctx, groups) != 1) die("-G: unknown group list");

    int idle = strcmp(mode, "idle") == 0;
    if (!idle && strcmp(mode, "rate") != 0) die("-m wants rate or idle");
    keepalive_req = idle;
    reqlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: tlsconn\r\n%s\r\n", path,
                              argv[optind], argv[optind + 1], idle ? "" : "Connection: close\r\n");
    if (idle) return idle_main(window);

    raise_nofile((rlim_t)conc + 64);
    worker_t *ws = calloc((size_t)threads, sizeof *ws);
    for (int i = 0; i < threads; i++) {
        worker_t *w = &ws[i];
        w->nconn = conc / threads + (i < conc % threads);
        w->conns = calloc((size_t)w->nconn, sizeof *w->conns);
        for (int k = 0; k < w->nconn; k++) w->conns[k].fd = -1;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0) die("epoll_create1");
        if (pthread_create(&w->th, NULL, rate_loop, w) != 0) die("pthread_create");
    }
    sleep_s(warm);
    uint64_t s0 = pid_ticks(spids), u0 = pid_ticks(upids), b0, tot0, b1, tot1;
    host_busy(&b0, &tot0);
    double c0 = self_cpu();
    uint64_t t0 = now_ns();
    atomic_store(&phase, PH_MEASURE);
    sleep_s(dur);
    atomic_store(&phase, PH_DRAIN);
    uint64_t t1 = now_ns();
    double c1 = self_cpu();
    uint64_t s1 = pid_ticks(spids), u1 = pid_ticks(upids);
    host_busy(&b1, &tot1);
    for (int i = 0; i < threads; i++) pthread_join(ws[i].th, NULL);

    uint64_t done = 0, resumed = 0, failed = 0, nlat = 0, ftot = 0;
    for (int i = 0; i < threads; i++) {
        done += ws[i].done; resumed += ws[i].resumed; failed += ws[i].failed; nlat += ws[i].nlat;
        ftot += ws[i].fail_total;
    }
    uint32_t *lat = malloc((nlat ? nlat : 1) * sizeof *lat);
    size_t k = 0;
    for (int i = 0; i < threads; i++) { memcpy(lat + k, ws[i].lat, ws[i].nlat * sizeof *lat); k += ws[i].nlat; }
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double el = (double)(t1 - t0) / 1e9;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double busy = tot1 > tot0 ? 100.0 * ncpu * (double)(b1 - b0) / (double)(tot1 - tot0) : 0;
    printf("RESULT mode=%s conns=%llu duration_s=%.3f cps=%.1f resumed=%llu failed=%llu p50_us=%u p99_us=%u "
           "client_cpu_s=%.3f server_cpu_s=%.3f up_cpu_s=%.3f busy_pct=%.0f threads=%d conc=%d %s\n",
           opt_resume ? "resume" : "full", (unsigned long long)done, el, done / el, (unsigned long long)resumed,
           (unsigned long long)failed, nlat ? lat[nlat / 2] : 0, nlat ? lat[(nlat * 99) / 100] : 0, c1 - c0,
           (double)(s1 - s0) / clk_tck, (double)(u1 - u0) / clk_tck, busy, threads, conc,
           info[0] ? info : "version=- cipher=- group=-");
    for (int i = 0; i < threads; i++)
        if (ws[i].fail_total && ws[i].errmsg[0]) {
            fprintf(stderr, "tlsconn: %llu failures in all (warm-up included), e.g. %s\n", (unsigned long long)ftot,
                    ws[i].errmsg);
            break;
        }
    return 0;
}
