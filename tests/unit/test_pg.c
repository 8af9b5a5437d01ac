/* Postgres connections and pools (bh_pg) against a throwaway PostgreSQL started by the test:
 * connect, query, connect errors, pool cap, session reset, cancel, restart, shutdown. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bh_pg.h"

#define NEVER BH_TIME_NEVER

/* ---- the throwaway server ----------------------------------------------------------------
 * Run like the integration fixtures' (tests/integration/sql/sqlfix.py): a cluster in a temp dir
 * (tmpfs when there is one) on a free loopback port, run through runuser as $BH_PG_OS_USER (default
 * postgres) when the test runs as root, since initdb refuses root. The binaries: the folder
 * $BH_PG_BIN alone when it is set (as in the fixtures), else the newest Debian
 * /usr/lib/postgresql/<major>/bin, else `pg_config --bindir`, else the folder of an initdb on PATH.
 *
 * Without a server the libpq cases skip and say why; when a server is required
 * (BULKHEAD_REQUIRE_PG=1, which scripts/test.sh exports, or BULKHEAD_BUILD set) they fail instead.
 * The group teardown stops the cluster and removes its folder; if this process dies before (a
 * crash, a sanitizer abort, a timeout's kill), a reaper process that waits for it to go does the
 * same. */

static struct {
    bool ok;
    bool required;
    char why[600]; /* why there is no server */
    char bin[PATH_MAX];
    char user[64]; /* the OS user the server runs as; "" when not root */
    char base[64];
    char data[96];
    int port;
    char conninfo[128];
    pid_t reaper;
    int reaper_fd; /* write end: a byte says "cleaned up", EOF says "clean up" */
} srv = {.reaper_fd = -1};

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(cmd))
        return -1;
    return system(cmd);
}

static void no_server(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void no_server(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(srv.why, sizeof(srv.why), fmt, ap);
    va_end(ap);
}

/* The prefix that runs a command as the server's OS user. */
static const char *as_pg(void)
{
    static char prefix[96];
    snprintf(prefix, sizeof(prefix), srv.user[0] ? "runuser -u %s -- " : "", srv.user);
    return prefix;
}

static bool pg_bin_ok(const char *dir)
{
    static const char *const tools[] = {"initdb", "pg_ctl", "postgres"};
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, tools[i]);
        if (access(p, X_OK) != 0)
            return false;
    }
    return true;
}

static bool use_bin(const char *dir)
{
    char real[PATH_MAX];
    if (dir == NULL || realpath(dir, real) == NULL || !pg_bin_ok(real))
        return false;
    snprintf(srv.bin, sizeof(srv.bin), "%s", real);
    return true;
}

static bool find_pg_bin(void)
{
    const char *env = getenv("BH_PG_BIN");
    if (env != NULL && env[0] != '\0') {
        if (use_bin(env))
            return true;
        no_server("BH_PG_BIN=%s has no initdb, pg_ctl and postgres", env);
        return false;
    }
    /* Debian: /usr/lib/postgresql/<major>/bin, the newest major first */
    glob_t g;
    int best = -1;
    char best_dir[PATH_MAX] = "";
    if (glob("/usr/lib/postgresql/*/bin", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            int major = atoi(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"));
            if (major > best && pg_bin_ok(g.gl_pathv[i])) {
                best = major;
                snprintf(best_dir, sizeof(best_dir), "%s", g.gl_pathv[i]);
            }
        }
        globfree(&g);
    }
    if (best >= 0 && use_bin(best_dir))
        return true;
    char line[PATH_MAX] = "";
    FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
    if (p != NULL) {
        if (fgets(line, sizeof(line), p) == NULL)
            line[0] = '\0';
        pclose(p);
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] != '\0' && use_bin(line))
            return true;
    }
    const char *path = getenv("PATH");
    char *copy = strdup(path != NULL ? path : "");
    assert_non_null(copy);
    bool found = false;
    for (char *save = NULL, *d = strtok_r(copy, ":", &save); d != NULL && !found;
         d = strtok_r(NULL, ":", &save)) {
        char f[PATH_MAX + 8], real[PATH_MAX];
        snprintf(f, sizeof(f), "%s/initdb", d);
        if (access(f, X_OK) == 0 && realpath(f, real) != NULL)
            found = use_bin(dirname(real));
    }
    free(copy);
    if (!found)
        no_server("no PostgreSQL server binaries (initdb, pg_ctl, postgres) in "
                  "/usr/lib/postgresql/*/bin, pg_config --bindir or PATH: install postgresql "
                  "(scripts/deps.sh) or set BH_PG_BIN");
    return found;
}

/* The major version of the server binaries (0 when unknown): names the cached template. */
static int pg_major(void)
{
    char cmd[PATH_MAX + 32], line[256] = "";
    snprintf(cmd, sizeof(cmd), "'%s/pg_ctl' --version 2>/dev/null", srv.bin);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return 0;
    if (fgets(line, sizeof(line), p) == NULL)
        line[0] = '\0';
    pclose(p);
    const char *v = strstr(line, ") "); /* "pg_ctl (PostgreSQL) 15.14 (Debian ...)" */
    return v != NULL ? atoi(v + 2) : 0;
}

/* A port free on 127.0.0.1 now, picked at random below the ephemeral range, like the integration
 * fixtures' free_port(): a port from that range (what binding port 0 gives) can be taken by any
 * outgoing connection before the server binds it. */
static int free_port(void)
{
    static bool seeded;
    if (!seeded) {
        srandom((unsigned)getpid() ^ (unsigned)time(NULL));
        seeded = true;
    }
    int low = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &low) != 1)
            low = 32768;
        fclose(f);
    }
    int hi = low < 32768 ? low : 32768, lo = hi - 12000 < 1024 ? 1024 : hi - 12000;
    for (int i = 0; i < 1000; i++) {
        int port = i < 999 ? lo + (int)(random() % (hi - lo)) : 0; /* the last try: any port */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons((uint16_t)port)};
        socklen_t len = sizeof(a);
        if (fd < 0)
            return -1;
        bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
                  getsockname(fd, (struct sockaddr *)&a, &len) == 0;
        close(fd);
        if (ok)
            return ntohs(a.sin_port);
    }
    return -1;
}

static PGconn *admin(void)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "host=%s port=%d user=postgres dbname=postgres", srv.base, srv.port);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "admin connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Runs one statement on a fresh admin connection; returns the first value (malloc'd) or NULL. */
static char *admin_value(const char *sql)
{
    PGconn *c = admin();
    if (c == NULL)
        return NULL;
    PGresult *r = PQexec(c, sql);
    char *v = NULL;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        v = strdup(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fprintf(stderr, "admin %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    return v;
}

/* Runs one statement that returns no rows; false (and srv.why) when it failed. */
static bool admin_command(const char *sql)
{
    PGconn *c = admin();
    if (c == NULL) {
        no_server("cannot connect to the started server as postgres over %s", srv.base);
        return false;
    }
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        no_server("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    return ok;
}

/* mode: "fast" (clients get 57P01, a shutdown checkpoint) or "immediate" (no checkpoint). */
static int pg_ctl(const char *what, const char *mode)
{
    return sh("%s'%s/pg_ctl' -D '%s' -l '%s/log' -w -m %s %s >/dev/null 2>&1", as_pg(), srv.bin,
              srv.data, srv.base, mode, what);
}

/* Stops the cluster (when it runs) and removes its folder. */
static void cluster_remove(void)
{
    if (srv.base[0] == '\0')
        return;
    if (srv.bin[0] != '\0' && access(srv.data, F_OK) == 0)
        sh("%s'%s/pg_ctl' -D '%s' -m immediate -w stop >/dev/null 2>&1", as_pg(), srv.bin,
           srv.data);
    sh("rm -rf '%s'", srv.base);
}

/* A process in its own session that removes the cluster once this process is gone without saying
 * it did so itself (the pipe's write end is close-on-exec: no server or shell holds it open). */
static void start_reaper(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return; /* no reaper: the group teardown still cleans up */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        close(fds[1]);
        setsid(); /* out of the process group a timeout kills */
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { /* and off the test's output, which its runner reads to the end */
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        char c;
        ssize_t n;
        while ((n = read(fds[0], &c, 1)) < 0 && errno == EINTR)
            ;
        if (n <= 0)
            cluster_remove();
        _exit(0); /* no exit handlers: nothing of the parent's to check or flush */
    }
    close(fds[0]);
    srv.reaper = pid;
    srv.reaper_fd = fds[1];
}

static void stop_reaper(void)
{
    if (srv.reaper_fd < 0)
        return;
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    if (write(srv.reaper_fd, "q", 1) != 1)
        fprintf(stderr, "test_pg: the reaper is gone: %s\n", strerror(errno));
    signal(SIGPIPE, old);
    close(srv.reaper_fd);
    srv.reaper_fd = -1;
    waitpid(srv.reaper, NULL, 0);
}

static bool start_server(void)
{
    if (!find_pg_bin())
        return false;
    struct passwd *pw = NULL;
    if (geteuid() == 0) {
        const char *u = getenv("BH_PG_OS_USER");
        snprintf(srv.user, sizeof(srv.user), "%s", u != NULL && u[0] != '\0' ? u : "postgres");
        if ((pw = getpwnam(srv.user)) == NULL) {
            no_server("running as root, and there is no OS user %s to run the server as (initdb "
                      "refuses root; set BH_PG_OS_USER)",
                      srv.user);
            return false;
        }
        if (sh("command -v runuser >/dev/null 2>&1") != 0) {
            no_server("running as root, and runuser (util-linux) is missing");
            return false;
        }
    }
    /* tmpfs when there is one: the server's files never need to survive the test. */
    const char *root = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(srv.base, sizeof(srv.base), "%s/bh_test_pg.XXXXXX", root);
    if (mkdtemp(srv.base) == NULL) {
        no_server("mkdtemp %s: %s", srv.base, strerror(errno));
        srv.base[0] = '\0';
        return false;
    }
    snprintf(srv.data, sizeof(srv.data), "%s/data", srv.base);
    start_reaper();
    chmod(srv.base, 0755);
    if (pw != NULL && chown(srv.base, pw->pw_uid, pw->pw_gid) != 0) {
        no_server("chown %s to %s: %s", srv.base, srv.user, strerror(errno));
        return false;
    }
    /* initdb takes seconds: a pristine cluster is kept as a template per major version
     * (published by an atomic rename, so a half-written one is never used) and copied per run. */
    char tmpl[96];
    snprintf(tmpl, sizeof(tmpl), "%s/bh_test_pg%d_template", root, pg_major());
    if (sh("test -f %s/PG_VERSION && %scp -a %s %s", tmpl, as_pg(), tmpl, srv.data) != 0) {
        sh("rm -rf %s", srv.data);
        if (sh("%s'%s/initdb' -D %s -U postgres --auth-local=trust "
               "--auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C >%s/initdb.log 2>&1",
               as_pg(), srv.bin, srv.data, srv.base) != 0) {
            no_server("%s/initdb failed (as %s): see %s/initdb.log", srv.bin,
                      srv.user[0] ? srv.user : "this user", srv.base);
            sh("cat %s/initdb.log >&2", srv.base); /* the folder goes at teardown */
            return false;
        }
        sh("cp -a %s %s.%d && mv -T %s.%d %s 2>/dev/null || rm -rf %s.%d", srv.data, tmpl,
           (int)getpid(), tmpl, (int)getpid(), tmpl, tmpl, (int)getpid());
    }
    char conf[160];
    snprintf(conf, sizeof(conf), "%s/postgresql.conf", srv.data);
    /* another process may bind the port between free_port() and the server: then another port */
    for (int attempt = 0;; attempt++) {
        srv.port = free_port();
        FILE *f = fopen(conf, "a");
        if (f == NULL || srv.port < 0) {
            no_server("cannot append to %s or find a free port", conf);
            if (f != NULL)
                fclose(f);
            return false;
        }
        fprintf(f,
                "port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n"
                "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
                "max_connections = 30\nshared_buffers = 16MB\ndynamic_shared_memory_type = mmap\n",
                srv.port, srv.base);
        fclose(f);
        if (pg_ctl("start", "fast") == 0)
            break;
        if (attempt < 3 &&
            sh("grep -q 'could not bind\\|Address already in use' %s/log", srv.base) == 0)
            continue;
        no_server("pg_ctl start failed (port %d):", srv.port);
        sh("cat %s/log >&2", srv.base);
        return false;
    }
    if (!admin_command("CREATE ROLE alice LOGIN PASSWORD 'secret'"))
        return false;
    snprintf(srv.conninfo, sizeof(srv.conninfo), "host=127.0.0.1 port=%d", srv.port);
    return true;
}

/* Whether the libpq cases must fail rather than skip without a server. */
static bool pg_required(void)
{
    const char *r = getenv("BULKHEAD_REQUIRE_PG");
    if (r != NULL && r[0] != '\0')
        return strcmp(r, "0") != 0;
    const char *b = getenv("BULKHEAD_BUILD");
    return b != NULL && b[0] != '\0';
}

static int server_up(void **state)
{
    (void)state;
    srv.required = pg_required();
    srv.ok = start_server();
    if (srv.ok)
        fprintf(stderr, "test_pg: PostgreSQL from %s on 127.0.0.1:%d in %s\n", srv.bin, srv.port,
                srv.base);
    else
        fprintf(stderr, "test_pg: the libpq cases %s: %s\n", srv.required ? "FAIL" : "skip",
                srv.why);
    return 0; /* the cases report it, and the teardown runs */
}

static int server_down(void **state)
{
    (void)state;
    cluster_remove();
    stop_reaper();
    return 0;
}

/* ---- a loop, pools, helpers -------------------------------------------------------------- */

typedef struct ctx {
    uv_loop_t loop;
    uv_timer_t tick;
    bh_pg_shared_t *shared;
    bh_pg_pools_t *pools;
    bh_pg_server_t server;
    bh_pg_setting_t session[2];
    bool closed;
    uv_async_t wakeup; /* drains inbox: the pools' messages to this thread */
    bh_sem_inbox_t inbox;
} ctx_t;

static void on_inbox_wake(bh_sem_inbox_t *in)
{
    uv_async_send(&((ctx_t *)in->data)->wakeup);
}

static void on_wakeup(uv_async_t *a)
{
    ctx_t *x = a->data;
    bh_pool_inbox_run(&x->inbox, uv_now(&x->loop));
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int ctx_setup(void **state)
{
    if (!srv.ok)
        return 0;
    ctx_t *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    assert_int_equal(uv_loop_init(&x->loop), 0);
    uv_timer_init(&x->loop, &x->tick);
    uv_timer_start(&x->tick, on_tick, 10, 10); /* run_until re-checks its condition */
    uv_async_init(&x->loop, &x->wakeup, on_wakeup);
    x->wakeup.data = x;
    x->inbox = (bh_sem_inbox_t){.lane = 0, .wake = on_inbox_wake, .data = x};
    x->shared = bh_pg_shared_new(1);
    x->pools = bh_pg_pools_new(&x->loop, x->shared, &x->inbox);
    assert_non_null(x->pools);
    x->session[0] = (bh_pg_setting_t){"statement_timeout", "5s"};
    x->session[1] = (bh_pg_setting_t){"search_path", "public, pg_catalog"};
    x->server = (bh_pg_server_t){
        .conninfo = srv.conninfo,
        .session = x->session,
        .n_session = 2,
        .pool = {.max_connections = 4,
                 .max_pending = 16,
                 .max_idle = 4,
                 .min_idle = 0,
                 .acquire_timeout_ms = 3000,
                 .idle_timeout_ms = 60000,
                 .max_lifetime_ms = 0},
        .connect_timeout_ms = 2000,
    };
    *state = x;
    return 0;
}

#define run_until(x, cond, ms)                                                                     \
    do {                                                                                           \
        uint64_t end_ = mono_ms() + (ms);                                                          \
        while (!(cond) && mono_ms() < end_)                                                        \
            uv_run(&(x)->loop, UV_RUN_ONCE);                                                       \
        assert_true(cond);                                                                         \
    } while (0)

static void on_pools_closed(void *data)
{
    ((ctx_t *)data)->closed = true;
}

static int ctx_teardown(void **state)
{
    ctx_t *x = *state;
    if (x == NULL)
        return 0;
    bh_pg_pools_close(x->pools, on_pools_closed, x);
    run_until(x, x->closed, 5000);
    assert_int_equal(bh_pg_shared_count(x->shared), 0);
    uv_close((uv_handle_t *)&x->tick, NULL);
    uv_close((uv_handle_t *)&x->wakeup, NULL);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x->loop), 0);
    bh_pool_inbox_run(&x->inbox, 0); /* drops what is still queued (every pool has detached) */
    bh_pg_shared_free(x->shared);
    free(x);
    *state = NULL;
    return 0;
}

typedef struct acq {
    bh_pg_waiter_t w;
    bool done;
    int status;
    bh_pg_conn_t *c;
    char sqlstate[6];
    int code;
    char message[512];
    char detail[256];
} acq_t;

static void on_acquired(bh_pg_waiter_t *w, bh_pg_conn_t *c, int status, const bh_pg_error_t *err)
{
    acq_t *a = w->data;
    a->done = true;
    a->status = status;
    a->c = c;
    if (err != NULL) {
        memcpy(a->sqlstate, err->sqlstate, sizeof(a->sqlstate));
        a->code = err->code;
        snprintf(a->message, sizeof(a->message), "%s", err->message);
        if (err->detail != NULL)
            snprintf(a->detail, sizeof(a->detail), "%.*s", (int)err->detail_len, err->detail);
    }
}

/* Returns what bh_pg_acquire returned; a->done once the outcome is known. */
static int acquire(bh_pg_pool_t *p, acq_t *a)
{
    memset(a, 0, sizeof(*a));
    a->w.cb = on_acquired;
    a->w.data = a;
    bh_pg_conn_t *c = NULL;
    int rc = bh_pg_acquire(p, &a->w, NEVER, &c);
    if (rc != BH_POOL_QUEUED) {
        a->done = true;
        a->status = rc;
        a->c = c;
    }
    return rc;
}

static bh_pg_conn_t *acquire_ok(ctx_t *x, bh_pg_pool_t *p, acq_t *a)
{
    int rc = acquire(p, a);
    assert_true(rc == 0 || rc == BH_POOL_QUEUED);
    run_until(x, a->done, 3000);
    if (a->status != 0)
        fprintf(stderr, "acquire: %d %s\n", a->status, a->message);
    assert_int_equal(a->status, 0);
    assert_non_null(a->c);
    return a->c;
}

static bh_pg_pool_t *pool_for(ctx_t *x, const char *db, const char *user, const char *pw)
{
    bh_pg_pool_t *p = NULL;
    assert_int_equal(bh_pg_pool_get(x->pools, &x->server, db, user, pw, &p), 0);
    assert_non_null(p);
    return p;
}

typedef struct q {
    bool done;
    int status;
    int n;
    PGresult *res[16];
    uint32_t tags[16];
    int nsteps;
    uint32_t step_tags[16];
    int step_status[16];
} q_t;

static void on_result(bh_pg_conn_t *c, uint32_t tag, PGresult *res, void *data)
{
    q_t *q = data;
    if (q->n < 16) {
        q->tags[q->n] = tag;
        q->res[q->n++] = res;
    } else {
        PQclear(res);
    }
}

static void on_step(bh_pg_conn_t *c, uint32_t tag, int status, void *data)
{
    q_t *q = data;
    if (q->nsteps < 16) {
        q->step_tags[q->nsteps] = tag;
        q->step_status[q->nsteps++] = status;
    }
}

static void on_done(bh_pg_conn_t *c, int status, void *data)
{
    q_t *q = data;
    q->done = true;
    q->status = status;
}

static const bh_pg_pipe_cbs_t cbs = {.result = on_result, .step = on_step, .done = on_done};

static void q_clear(q_t *q)
{
    for (int i = 0; i < q->n; i++)
        PQclear(q->res[i]);
    memset(q, 0, sizeof(*q));
}

/* One statement (after the reset when the connection needs one) and a sync: the first error, or
 * bh_pg_push's cache result. */
static int send_one(bh_pg_conn_t *c, q_t *q, const char *sql, int n, const char *const *vals,
                    unsigned flags)
{
    memset(q, 0, sizeof(*q));
    int cached = 0, rc = bh_pg_push_reset(c);
    if (rc >= 0)
        rc = cached = bh_pg_push(c, 0, sql, n, vals, flags);
    if (rc >= 0)
        rc = bh_pg_push_sync(c, 100);
    if (rc >= 0)
        rc = bh_pg_send(c, &cbs, q);
    return rc < 0 ? rc : cached;
}

static void query(ctx_t *x, bh_pg_conn_t *c, q_t *q, const char *sql, int n,
                  const char *const *vals)
{
    assert_int_equal(send_one(c, q, sql, n, vals, 0), 0);
    run_until(x, q->done, 3000);
    assert_int_equal(q->status, 0);
}

/* "; "-separated statements (no ';' inside them), tagged 0, 1, ..., in one transaction. */
static void exec_sql(ctx_t *x, bh_pg_conn_t *c, q_t *q, const char *sql)
{
    memset(q, 0, sizeof(*q));
    assert_true(bh_pg_push_reset(c) >= 0);
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", sql);
    uint32_t tag = 0;
    for (char *save = NULL, *t = strtok_r(buf, ";", &save); t != NULL;
         t = strtok_r(NULL, ";", &save))
        assert_int_equal(bh_pg_push(c, tag++, t, 0, NULL, 0), 0);
    assert_int_equal(bh_pg_push_sync(c, 100), 0);
    assert_int_equal(bh_pg_send(c, &cbs, q), 0);
    run_until(x, q->done, 3000);
    assert_int_equal(q->status, 0);
}

static int backend_pid(bh_pg_conn_t *c)
{
    return PQbackendPID(bh_pg_conn_pq(c));
}

/* Without a server: a failure when one is required (scripts/test.sh), else a skip. */
#define SKIP_WITHOUT_PG()                                                                          \
    do {                                                                                           \
        if (!srv.ok) {                                                                             \
            if (srv.required)                                                                      \
                fail_msg("no PostgreSQL, and BULKHEAD_REQUIRE_PG=1 or BULKHEAD_BUILD requires "    \
                         "one: %s",                                                                \
                         srv.why);                                                                 \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* ---- tests ------------------------------------------------------------------------------- */

static void test_error_parse(void **state)
{
    (void)state;
    bh_pg_error_t e;
    bh_pg_error_parse(&e, "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  28P01: "
                          "password authentication failed for user \"alice\"\n"
                          "LOCATION:  auth_failed, auth.c:326\n");
    assert_int_equal(e.code, BH_EPG_REJECTED);
    assert_string_equal(e.sqlstate, "28P01");
    assert_string_equal(e.severity, "FATAL");
    assert_int_equal(e.detail_len, strlen("password authentication failed for user \"alice\""));
    assert_memory_equal(e.detail, "password authentication failed", 30);
    assert_false(bh_pg_error_retriable(e.code));

    bh_pg_error_parse(&e, "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  53300: "
                          "sorry, too many clients already\n");
    assert_int_equal(e.code, BH_ECONNECT_FAILED);
    assert_string_equal(e.sqlstate, "53300");
    assert_true(bh_pg_error_retriable(e.code));

    bh_pg_error_parse(&e, "connection to server at \"127.0.0.1\", port 1 failed: Connection "
                          "refused\n\tIs the server running on that host and accepting TCP/IP "
                          "connections?\n");
    assert_int_equal(e.code, BH_ECONNECT_REFUSED);
    assert_string_equal(e.sqlstate, "");
    assert_null(e.detail);

    bh_pg_error_parse(&e, "could not translate host name \"nope.invalid\" to address: Name or "
                          "service not known\n");
    assert_int_equal(e.code, BH_ECONNECT_FAILED);
    bh_pg_error_parse(&e, NULL);
    assert_int_equal(e.code, BH_ECONNECT_FAILED);
    assert_string_equal(e.message, "");
}

static void test_connect_and_query(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    q_t q;
    const char *vals[] = {"41", NULL};
    query(x, c, &q,
          "SELECT $1::int + 1, $2::text, current_setting('DateStyle'), "
          "current_setting('TimeZone'), current_setting('application_name'), "
          "current_setting('IntervalStyle'), current_setting('bytea_output'), "
          "current_setting('client_encoding'), current_setting('statement_timeout'), "
          "current_setting('search_path')",
          2, vals);
    assert_int_equal(q.n, 1);
    PGresult *r = q.res[0];
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "42");
    assert_true(PQgetisnull(r, 0, 1));
    assert_string_equal(PQgetvalue(r, 0, 2), "ISO, MDY");
    assert_string_equal(PQgetvalue(r, 0, 3), "UTC");
    assert_string_equal(PQgetvalue(r, 0, 4), "bulkhead");
    assert_string_equal(PQgetvalue(r, 0, 5), "postgres");
    assert_string_equal(PQgetvalue(r, 0, 6), "hex");
    assert_string_equal(PQgetvalue(r, 0, 7), "UTF8");
    assert_string_equal(PQgetvalue(r, 0, 8), "5s");
    assert_string_equal(PQgetvalue(r, 0, 9), "public, pg_catalog");
    q_clear(&q);

    /* Extended protocol even without parameters: one statement only. */
    query(x, c, &q, "SELECT 1; SELECT 2", 0, NULL);
    assert_int_equal(q.n, 1);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(q.res[0], PG_DIAG_SQLSTATE), "42601");
    q_clear(&q);

    /* A SQL error leaves the connection usable; a pipeline runs several statements. */
    exec_sql(x, c, &q, "BEGIN; SELECT 7; COMMIT");
    assert_int_equal(q.n, 3);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_COMMAND_OK);
    assert_string_equal(PQgetvalue(q.res[1], 0, 0), "7");
    assert_string_equal(PQcmdStatus(q.res[2]), "COMMIT");
    q_clear(&q);

    /* Single-row mode: one result per row, then the final empty one. */
    assert_int_equal(send_one(c, &q, "SELECT generate_series(1, 3)", 0, NULL, BH_PG_SINGLE_ROW), 0);
    run_until(x, q.done, 3000);
    assert_int_equal(q.n, 4);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_SINGLE_TUPLE);
    assert_string_equal(PQgetvalue(q.res[2], 0, 0), "3");
    assert_int_equal(PQresultStatus(q.res[3]), PGRES_TUPLES_OK);
    q_clear(&q);

    /* COPY is refused without hanging the connection. */
    exec_sql(x, c, &q, "COPY (SELECT 1) TO STDOUT");
    q_clear(&q);

    const bh_pool_t *b = bh_pg_pool_base(p);
    bh_pg_release(c, true);
    /* The COPY made it unsafe to reuse: closed, not idle. */
    run_until(x, b->n_busy == 0 && b->n_closing == 0, 3000);
    assert_int_equal(b->n_idle, 0);

    c = acquire_ok(x, p, &a);
    query(x, c, &q, "SELECT 1", 0, NULL);
    q_clear(&q);
    bh_pg_release(c, true);
    run_until(x, b->n_idle == 1, 3000);
    assert_int_equal(b->opened, 2);
}

static void test_wrong_password(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    bh_pg_pool_t *good = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, good, &a);
    bh_pg_release(c, true);
    run_until(x, bh_pg_pool_base(good)->n_idle == 1, 3000);

    /* Another password is another key: it never rides the authenticated idle connection. */
    bh_pg_pool_t *bad = pool_for(x, "postgres", "alice", "wrongpw");
    assert_ptr_not_equal(good, bad);
    assert_int_equal(bh_pg_pools_count(x->pools), 2);
    assert_int_equal(acquire(bad, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    assert_int_equal(a.status, BH_EPG_REJECTED);
    assert_int_equal(a.code, BH_EPG_REJECTED);
    assert_string_equal(a.sqlstate, "28P01");
    assert_non_null(strstr(a.message, "FATAL:  28P01: password authentication failed"));
    assert_null(strstr(a.message, "wrongpw"));
    assert_string_equal(a.detail, "password authentication failed for user \"alice\"");
    assert_false(bh_pg_error_retriable(a.status));

    /* No password at all never falls back to a .pgpass of this process. */
    bh_pg_pool_t *none = pool_for(x, "postgres", "alice", NULL);
    assert_int_equal(acquire(none, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    assert_int_equal(a.status, BH_EPG_REJECTED);
    assert_non_null(strstr(a.message, "no password supplied"));
    assert_int_equal(bh_pg_pools_count(x->pools), 3);
}

static void test_unknown_database(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    /* A database name is never expanded as a conninfo (no host taken from a request). */
    bh_pg_pool_t *p = pool_for(x, "host=10.9.9.9 dbname=nope", "alice", "secret");
    acq_t a;
    assert_int_equal(acquire(p, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    assert_int_equal(a.status, BH_EPG_REJECTED);
    assert_string_equal(a.sqlstate, "3D000");
    assert_non_null(strstr(a.message, "127.0.0.1"));
}

static void test_connect_refused_and_timeout(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    char ci[128];
    int port = free_port();
    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d", port);
    x->server.conninfo = ci;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    assert_int_equal(acquire(p, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    assert_int_equal(a.status, BH_ECONNECT_REFUSED);
    assert_string_equal(a.sqlstate, "");
    assert_true(bh_pg_error_retriable(a.status));

    /* A listener that never answers the startup packet. */
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(ls, 8), 0);
    assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &len), 0);
    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d", ntohs(sa.sin_port));
    x->server.connect_timeout_ms = 200;
    p = pool_for(x, "postgres", "alice", "secret");
    uint64_t t0 = mono_ms();
    assert_int_equal(acquire(p, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    uint64_t took = mono_ms() - t0;
    assert_int_equal(a.status, BH_ECONNECT_TIMEOUT);
    assert_true(took >= 150 && took < 1000);
    close(ls);
}

static void test_resolve(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    /* A name is resolved off the loop and passed as hostaddr (every address, in order). */
    char ci[128];
    snprintf(ci, sizeof(ci), "host=localhost port=%d connect_timeout=1", srv.port);
    x->server.conninfo = ci;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    assert_string_equal(PQhost((PGconn *)bh_pg_conn_pq(c)), "localhost");
    PQconninfoOption *opts = PQconninfo((PGconn *)bh_pg_conn_pq(c));
    const char *hostaddr = NULL;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    assert_non_null(hostaddr);
    assert_non_null(strstr(hostaddr, "127.0.0.1"));
    PQconninfoFree(opts);
    q_t q;
    query(x, c, &q, "SELECT inet_server_addr()::text", 0, NULL);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "127.0.0.1/32");
    q_clear(&q);
    bh_pg_release(c, true);

    x->server.conninfo = "host=bulkhead-test.invalid port=5432";
    p = pool_for(x, "postgres", "alice", "secret");
    assert_int_equal(acquire(p, &a), BH_POOL_QUEUED);
    run_until(x, a.done, 3000);
    assert_int_equal(a.status, BH_ECONNECT_FAILED);
    assert_non_null(strstr(a.message, "could not translate host name \"bulkhead-test.invalid\""));

    /* A conninfo libpq cannot parse. */
    bh_pg_pool_t *bad = NULL;
    x->server.conninfo = "host=";
    assert_int_equal(bh_pg_pool_get(x->pools, &x->server, "d", "u", "p", &bad), 0);
    x->server.conninfo = "nonsense";
    assert_int_equal(bh_pg_pool_get(x->pools, &x->server, "d", "u", "p", &bad), BH_EINVAL);
    bh_pg_setting_t evil = {"x -c y", "1"};
    x->server.conninfo = srv.conninfo;
    x->server.session = &evil;
    x->server.n_session = 1;
    assert_int_equal(bh_pg_pool_get(x->pools, &x->server, "d", "u", "p", &bad), BH_EINVAL);
}

static void test_pool_cap(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    x->server.pool.max_connections = 2;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    acq_t a1, a2, a3;
    bh_pg_conn_t *c1 = acquire_ok(x, p, &a1);
    bh_pg_conn_t *c2 = acquire_ok(x, p, &a2);
    assert_int_equal(acquire(p, &a3), BH_POOL_QUEUED);
    for (uint64_t end = mono_ms() + 200; mono_ms() < end;)
        uv_run(&x->loop, UV_RUN_ONCE);
    assert_false(a3.done);
    assert_int_equal(bh_sem_in_use(b->sem), 2);
    assert_int_equal(b->n_connecting, 0);

    int pid1 = backend_pid(c1);
    bh_pg_release(c1, true); /* reset, then straight to the waiter */
    run_until(x, a3.done, 3000);
    assert_int_equal(a3.status, 0);
    assert_int_equal(backend_pid(a3.c), pid1);
    assert_int_equal(bh_sem_in_use(b->sem), 2);
    assert_int_equal(b->opened, 2);

    /* acquire_timeout: a waiter that gets nothing hears BH_EPOOL_TIMEOUT. */
    acq_t a4;
    memset(&a4, 0, sizeof(a4));
    a4.w.cb = on_acquired;
    a4.w.data = &a4;
    bh_pg_conn_t *none = NULL;
    assert_int_equal(bh_pg_acquire(p, &a4.w, uv_now(&x->loop) + 100, &none), BH_POOL_QUEUED);
    run_until(x, a4.done, 2000);
    assert_int_equal(a4.status, BH_EPOOL_TIMEOUT);

    bh_pg_release(c2, true);
    bh_pg_release(a3.c, false);
    run_until(x, b->n_idle == 1 && b->n_busy == 0 && b->n_closing == 0, 3000);
    assert_int_equal(bh_sem_in_use(b->sem), 1);
}

static void test_session_reset(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    acq_t a;
    q_t q;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    int pid = backend_pid(c);
    exec_sql(x, c, &q,
             "SET TimeZone = 'America/New_York'; SET statement_timeout = '1min'; "
             "CREATE TEMP TABLE bh_tmp(x int); PREPARE bh_p AS SELECT 1; "
             "SELECT pg_advisory_lock(42); LISTEN bh_chan");
    assert_int_equal(q.n, 6);
    for (int i = 0; i < q.n; i++)
        assert_int_not_equal(PQresultStatus(q.res[i]), PGRES_FATAL_ERROR);
    q_clear(&q);
    bh_pg_release(c, true);
    run_until(x, b->n_idle == 1, 3000);

    c = acquire_ok(x, p, &a);
    assert_int_equal(backend_pid(c), pid); /* the same session, reset */
    query(x, c, &q,
          "SELECT current_setting('TimeZone'), current_setting('statement_timeout'), "
          "(SELECT count(*) FROM pg_class WHERE relname = 'bh_tmp' AND relpersistence = 't'), "
          "(SELECT count(*) FROM pg_prepared_statements), "
          "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = "
          "pg_backend_pid()), (SELECT count(*) FROM pg_listening_channels())",
          0, NULL);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "UTC");
    assert_string_equal(PQgetvalue(q.res[0], 0, 1), "5s"); /* back to the session's own */
    for (int i = 2; i < 5; i++)
        assert_string_equal(PQgetvalue(q.res[0], 0, i), "0");
    q_clear(&q);
    /* The reset ran in the same transaction as that statement, and UNLISTEN takes effect when
     * it commits (notifications are only delivered between transactions anyway). */
    query(x, c, &q, "SELECT count(*) FROM pg_listening_channels()", 0, NULL);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "0");
    q_clear(&q);

    /* An open transaction is never handed to the next user: the connection is discarded. */
    exec_sql(x, c, &q, "BEGIN; CREATE TEMP TABLE bh_tx(x int)");
    q_clear(&q);
    assert_int_equal(PQtransactionStatus(bh_pg_conn_pq(c)), PQTRANS_INTRANS);
    uint64_t closed = b->closed;
    bh_pg_release(c, true);
    run_until(x, b->closed == closed + 1 && b->n_closing == 0, 3000);
    assert_int_equal(b->n_idle, 0);
    c = acquire_ok(x, p, &a);
    assert_int_not_equal(backend_pid(c), pid);
    assert_int_equal(PQtransactionStatus(bh_pg_conn_pq(c)), PQTRANS_IDLE);

    /* A failed transaction too. */
    exec_sql(x, c, &q, "BEGIN; SELECT 1/0");
    assert_int_equal(PQresultStatus(q.res[1]), PGRES_FATAL_ERROR);
    q_clear(&q);
    closed = b->closed;
    bh_pg_release(c, true);
    run_until(x, b->closed == closed + 1 && b->n_closing == 0, 3000);
    assert_int_equal(b->n_idle, 0);
}

/* Several statements in one round trip: per-statement results and steps; an error makes the
 * server skip the rest of its transaction (BH_PG_SKIPPED) but not what follows the next sync. */
static void test_pipeline(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    q_t q;
    memset(&q, 0, sizeof(q));
    assert_int_equal(bh_pg_push(c, 1, "SELECT 1", 0, NULL, 0), 0);
    assert_int_equal(bh_pg_push(c, 2, "SELECT 1/0", 0, NULL, 0), 0);
    assert_int_equal(bh_pg_push(c, 3, "SELECT 3", 0, NULL, 0), 0);
    assert_int_equal(bh_pg_push_sync(c, 10), 0);
    assert_int_equal(bh_pg_push(c, 4, "SELECT 4", 0, NULL, BH_PG_SINGLE_ROW), 0);
    assert_int_equal(bh_pg_push_sync(c, 11), 0);
    assert_int_equal(bh_pg_send(c, &cbs, &q), 0);
    assert_false(q.done); /* never from inside the call */
    run_until(x, q.done, 3000);
    assert_int_equal(q.status, 0);
    assert_int_equal(q.n, 4);
    assert_int_equal(q.tags[0], 1);
    assert_int_equal(q.tags[1], 2);
    assert_string_equal(PQresultErrorField(q.res[1], PG_DIAG_SQLSTATE), "22012");
    assert_int_equal(q.tags[2], 4);
    assert_int_equal(PQresultStatus(q.res[2]), PGRES_SINGLE_TUPLE);
    assert_int_equal(PQresultStatus(q.res[3]), PGRES_TUPLES_OK);
    uint32_t tags[] = {1, 2, 3, 10, 4, 11};
    int st[] = {0, 0, BH_PG_SKIPPED, 0, 0, 0};
    assert_int_equal(q.nsteps, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(q.step_tags[i], tags[i]);
        assert_int_equal(q.step_status[i], st[i]);
    }
    q_clear(&q);
    bh_pg_release(c, true);
}

static int prepared_count(ctx_t *x, bh_pg_conn_t *c)
{
    q_t q;
    query(x, c, &q, "SELECT count(*) FROM pg_prepared_statements", 0, NULL);
    int n = atoi(PQgetvalue(q.res[0], 0, 0));
    q_clear(&q);
    return n;
}

/* The prepared-statement cache: a miss, then hits; the LRU bound; a stale plan runs once more
 * unprepared without the caller noticing. */
static void test_statement_cache(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    x->server.statement_cache = 2;
    x->server.reset_auto = true;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    q_t q;
    const char *v[] = {"5"};
    assert_int_equal(send_one(c, &q, "SELECT $1::int * 2", 1, v, BH_PG_CACHE), BH_PG_CACHE_MISS);
    run_until(x, q.done, 3000);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "10");
    q_clear(&q);
    assert_int_equal(send_one(c, &q, "SELECT $1::int * 2", 1, v, BH_PG_CACHE), BH_PG_CACHE_HIT);
    run_until(x, q.done, 3000);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "10");
    q_clear(&q);
    assert_int_equal(prepared_count(x, c), 1);
    /* A third text evicts the least recently used: never more than 2 on the server. */
    const char *texts[] = {"SELECT 1", "SELECT 2", "SELECT 3", "SELECT 2"};
    for (int i = 0; i < 4; i++) {
        assert_true(send_one(c, &q, texts[i], 0, NULL, BH_PG_CACHE) > 0);
        run_until(x, q.done, 3000);
        assert_int_equal(q.status, 0);
        q_clear(&q);
        assert_true(prepared_count(x, c) <= 2);
    }
    /* The table changes under a cached plan: 0A000 never reaches the caller. */
    exec_sql(x, c, &q, "CREATE TEMP TABLE bh_st(a int)");
    q_clear(&q);
    for (int i = 0; i < 3; i++) {
        if (i == 2) {
            exec_sql(x, c, &q, "ALTER TABLE bh_st ALTER COLUMN a TYPE text");
            q_clear(&q);
        }
        assert_true(send_one(c, &q, "SELECT * FROM bh_st", 0, NULL, BH_PG_CACHE) > 0);
        run_until(x, q.done, 3000);
        assert_int_equal(q.status, 0);
        assert_int_equal(q.n, 1);
        assert_int_equal(PQresultStatus(q.res[0]), PGRES_TUPLES_OK);
        assert_int_equal(PQftype(q.res[0], 0), i == 2 ? 25 : 23);
        assert_int_equal(q.nsteps, 2);
        q_clear(&q);
    }
    bh_pg_release(c, true);
}

/* reset_auto: only a statement flagged as leaving state (or a changed ParameterStatus) makes
 * the next owner's pipeline begin with the reset. */
static void test_reset_auto(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    x->server.reset_auto = true;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    acq_t a;
    q_t q;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    query(x, c, &q, "SELECT 1", 0, NULL);
    q_clear(&q);
    bh_pg_release(c, true);
    c = acquire_ok(x, p, &a);
    assert_false(bh_pg_needs_reset(c));
    /* An unflagged SET is still seen through the ParameterStatus it changes. */
    query(x, c, &q, "SET TimeZone = 'America/New_York'", 0, NULL);
    q_clear(&q);
    bh_pg_release(c, true);
    c = acquire_ok(x, p, &a);
    assert_true(bh_pg_needs_reset(c));
    query(x, c, &q, "SELECT current_setting('TimeZone')", 0, NULL);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "UTC");
    q_clear(&q);
    assert_false(bh_pg_needs_reset(c)); /* its transaction committed */
    assert_int_equal(send_one(c, &q, "SET statement_timeout = '1min'", 0, NULL, BH_PG_LEAVES_STATE),
                     0);
    run_until(x, q.done, 3000);
    q_clear(&q);
    bh_pg_release(c, true);
    run_until(x, b->n_idle == 1, 3000);
    assert_int_equal(b->opened, 1);
    c = acquire_ok(x, p, &a);
    assert_true(bh_pg_needs_reset(c));
    query(x, c, &q, "SELECT current_setting('statement_timeout')", 0, NULL);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "5s");
    q_clear(&q);
    bh_pg_release(c, true);
}

static bool cancel_done;
static int cancel_status;

static void on_cancelled(bh_pg_conn_t *c, int status, void *data)
{
    cancel_done = true;
    cancel_status = status;
}

static void on_cancel_timer(uv_timer_t *t)
{
    bh_pg_conn_t *c = t->data;
    assert_int_equal(bh_pg_cancel(c, on_cancelled, NULL), 0);
    assert_int_equal(bh_pg_cancel(c, on_cancelled, NULL), BH_EPOOL_FULL);
}

static int active_sleeps(void)
{
    char *v = admin_value("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                          "'SELECT pg_sleep(10)%' AND state = 'active'");
    int n = v != NULL ? atoi(v) : -1;
    free(v);
    return n;
}

static void test_cancel(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    assert_int_equal(bh_pg_cancel(c, on_cancelled, NULL), BH_EINVAL); /* nothing running */
    q_t q;
    uint64_t t0 = mono_ms();
    assert_int_equal(send_one(c, &q, "SELECT pg_sleep(10)", 0, NULL, 0), 0);
    static uv_timer_t t; /* closed by the teardown's loop run */
    uv_timer_init(&x->loop, &t);
    t.data = c;
    cancel_done = false;
    uv_timer_start(&t, on_cancel_timer, 100, 0);
    run_until(x, q.done && cancel_done, 3000);
    assert_true(mono_ms() - t0 < 2000);
    assert_int_equal(cancel_status, 0);
    assert_int_equal(q.status, 0);
    assert_int_equal(q.n, 1);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(q.res[0], PG_DIAG_SQLSTATE), "57014");
    q_clear(&q);
    uint64_t closed = b->closed;
    bh_pg_release(c, true); /* cancelled: discarded */
    run_until(x, b->closed == closed + 1 && b->n_closing == 0, 3000);
    assert_int_equal(b->n_idle, 0);

    /* The user goes away mid-statement: released at once, cancelled on the server. */
    c = acquire_ok(x, p, &a);
    assert_int_equal(send_one(c, &q, "SELECT pg_sleep(10)", 0, NULL, 0), 0);
    for (uint64_t end = mono_ms() + 2000; active_sleeps() != 1 && mono_ms() < end;)
        uv_run(&x->loop, UV_RUN_NOWAIT);
    assert_int_equal(active_sleeps(), 1);
    closed = b->closed;
    bh_pg_release(c, true);
    assert_false(q.done);
    run_until(x, b->closed == closed + 1 && b->n_closing == 0, 3000);
    assert_false(q.done); /* no callback after release */
    uint64_t end = mono_ms() + 3000;
    while (active_sleeps() != 0 && mono_ms() < end)
        usleep(20000);
    assert_int_equal(active_sleeps(), 0);
    assert_true(mono_ms() - t0 < 5000);
    uv_close((uv_handle_t *)&t, NULL);
}

static void test_restart(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    x->server.pool.min_idle = 2;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    run_until(x, b->n_idle == 2, 3000); /* pre-warmed */
    assert_int_equal(b->opened, 2);

    /* Restarted while idle, and the loop has not run since: alive() finds both dead. */
    assert_int_equal(pg_ctl("restart", "fast"), 0);
    acq_t a;
    q_t q;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    query(x, c, &q, "SELECT 1", 0, NULL);
    assert_int_equal(PQresultStatus(q.res[0]), PGRES_TUPLES_OK);
    q_clear(&q);
    assert_true(b->closed >= 2);
    bh_pg_release(c, true);
    run_until(x, b->n_idle >= 2 && b->n_connecting == 0, 3000);

    /* Restarted while the loop runs, under idle and busy connections: the idle watch notices
     * (and min_idle is met again); the busy one reports the loss on its next statement. */
    c = acquire_ok(x, p, &a);
    run_until(x, b->n_idle >= 2 && b->n_connecting == 0, 3000);
    uint64_t closed = b->closed;
    uint32_t idle = b->n_idle;
    assert_int_equal(pg_ctl("restart", "immediate"), 0);
    run_until(x, b->closed >= closed + idle && b->n_idle >= 2 && b->n_connecting == 0, 3000);
    int rc = send_one(c, &q, "SELECT 3", 0, NULL, 0);
    if (rc == 0) {
        run_until(x, q.done, 3000);
        assert_int_equal(q.status, BH_EPG_CONN_LOST);
    } else {
        assert_int_equal(rc, BH_EPG_CONN_LOST);
    }
    q_clear(&q);
    bh_pg_release(c, true);
    run_until(x, b->n_busy == 0 && b->n_closing == 0, 3000);
    c = acquire_ok(x, p, &a);
    query(x, c, &q, "SELECT 2", 0, NULL);
    assert_string_equal(PQgetvalue(q.res[0], 0, 0), "2");
    q_clear(&q);
    bh_pg_release(c, true);
    run_until(x, b->n_idle >= 2 && b->n_busy == 0 && b->n_closing == 0, 3000);
}

static void test_shutdown_and_sweep(void **state)
{
    SKIP_WITHOUT_PG();
    ctx_t *x = *state;
    x->server.pool.idle_timeout_ms = 50;
    bh_pg_pool_t *p = pool_for(x, "postgres", "alice", "secret");
    const bh_pool_t *b = bh_pg_pool_base(p);
    acq_t a;
    bh_pg_conn_t *c = acquire_ok(x, p, &a);
    bh_pg_release(c, true);
    run_until(x, b->n_idle == 1, 3000);
    run_until(x, bh_pool_empty(b), 3000);               /* idle_timeout */
    assert_int_equal(bh_pg_shared_count(x->shared), 2); /* the database's permits, the key's cap */
    bh_pg_pools_sweep(x->pools);
    assert_int_equal(bh_pg_pools_count(x->pools), 1); /* empty once: kept */
    bh_pg_pools_sweep(x->pools);
    run_until(x, bh_pg_pools_count(x->pools) == 0, 1000);
    assert_int_equal(bh_pg_shared_count(x->shared), 0);

    /* Shutdown with a busy connection and a waiter. */
    x->server.pool.max_connections = 1;
    x->server.pool.idle_timeout_ms = 60000;
    p = pool_for(x, "postgres", "alice", "secret");
    c = acquire_ok(x, p, &a);
    acq_t w;
    assert_int_equal(acquire(p, &w), BH_POOL_QUEUED);
    bh_pg_pools_close(x->pools, on_pools_closed, x);
    assert_true(w.done);
    assert_int_equal(w.status, BH_EPOOL_CLOSED);
    bh_pg_pool_t *none = NULL;
    assert_int_equal(bh_pg_pool_get(x->pools, &x->server, "postgres", "alice", "secret", &none),
                     BH_EPOOL_CLOSED);
    for (uint64_t end = mono_ms() + 50; mono_ms() < end;)
        uv_run(&x->loop, UV_RUN_ONCE);
    assert_false(x->closed); /* the busy one is still out */
    bh_pg_release(c, true);
    run_until(x, x->closed, 3000);
    /* teardown: already closed */
    assert_int_equal(bh_pg_shared_count(x->shared), 0);
    uv_close((uv_handle_t *)&x->tick, NULL);
    uv_close((uv_handle_t *)&x->wakeup, NULL);
    uv_run(&x->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&x->loop), 0);
    bh_pool_inbox_run(&x->inbox, 0); /* drops what is still queued (every pool has detached) */
    bh_pg_shared_free(x->shared);
    free(x);
    *state = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_parse),
        cmocka_unit_test_setup_teardown(test_connect_and_query, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_database, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused_and_timeout, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_resolve, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_pool_cap, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_session_reset, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_pipeline, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_statement_cache, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_reset_auto, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_restart, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_and_sweep, ctx_setup, ctx_teardown),
    };
    return cmocka_run_group_tests(tests, server_up, server_down);
}
