/* bulkhead: command line, config loading, and the main thread's signal loop. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "bh_alloc.h"
#include "bh_admin.h"
#include "bh_conf.h"
#include "bh_log.h"
#include "bh_proxy.h"

typedef struct main_ctx {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t worker_exit;
    bh_server_t srv;
    bh_admin_t *admin;
    _Atomic uint32_t exited;
    int signals;
} main_ctx_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bulkhead -c FILE       run with the config file\n"
            "       bulkhead --check FILE  validate the config file and exit (0 ok, 2 invalid)\n"
            "       bulkhead -c FILE --check  the same for the -c file (the container entrypoint's "
            "form)\n"
            "       bulkhead --check FILE --print\n"
            "                              ... and print the effective config (every key with its\n"
            "                              value in force, secrets redacted) as YAML on stdout\n"
            "       bulkhead --version\n"
            "       bulkhead --help\n"
            "Signals: SIGTERM/SIGINT drain in-flight requests and exit 0 (a second one exits "
            "at once);\n"
            "         SIGHUP reloads the config file (an invalid one is logged and ignored).\n");
}

/* A load warning "FILE:LINE:COL: what" on stderr as "FILE:LINE:COL: warning: what". */
static void print_warning(const char *path, const char *w)
{
    size_t n = strlen(path), at = 0;

    if (strncmp(w, path, n) == 0 && w[n] == ':') {
        const char *p = w + n + 1;
        p += strspn(p, "0123456789");
        if (*p == ':')
            p += 1 + strspn(p + 1, "0123456789");
        if (p[0] == ':' && p[1] == ' ')
            at = (size_t)(p + 2 - w);
    }
    fprintf(stderr, "%.*swarning: %s\n", (int)at, w, w + at);
}

static void on_signal(uv_signal_t *s, int signum)
{
    main_ctx_t *m = s->data;
    if (signum == SIGHUP) {
        if (m->signals > 0) {
            bh_log_warn("SIGHUP while draining: ignored");
            return;
        }
        bh_log_info("SIGHUP: reloading the configuration");
        (void)bh_server_reload(&m->srv);
        return;
    }
    if (++m->signals > 1) {
        bh_log_set_writer(NULL); /* written before _exit, not queued */
        bh_log_warn("second signal: exiting at once");
        _exit(1);
    }
    bh_log_info("signal %d: draining", signum);
    if (m->admin != NULL)
        bh_admin_set_draining(m->admin);
    bh_server_stop(&m->srv);
}

static void on_worker_exit_async(uv_async_t *a)
{
    main_ctx_t *m = a->data;
    if (atomic_load(&m->exited) < m->srv.n_workers)
        return;
    uv_close((uv_handle_t *)&m->sigterm, NULL);
    uv_close((uv_handle_t *)&m->sigint, NULL);
    uv_close((uv_handle_t *)&m->sighup, NULL);
    uv_close((uv_handle_t *)&m->worker_exit, NULL);
    if (m->admin != NULL)
        bh_admin_stop(m->admin);
    m->admin = NULL;
}

static void on_worker_exit(bh_server_t *srv)
{
    main_ctx_t *m = srv->data;
    atomic_fetch_add(&m->exited, 1);
    uv_async_send(&m->worker_exit);
}

static int run(const char *path)
{
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    if (bh_conf_load(path, &conf, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    bh_log_set_level(conf->log.level);
    for (size_t i = 0; i < conf->n_warnings; i++)
        bh_log_warn("%s", conf->warnings[i]);
    static main_ctx_t m; /* main thread only; static to keep it off the stack */
    uv_loop_init(&m.loop);
    int rc = bh_server_init(&m.srv, conf);
    if (rc < 0) {
        bh_log_error("startup failed: %s", rc < -1000 ? bh_strerror(rc) : uv_strerror(rc));
        bh_server_destroy(&m.srv); /* it owns conf */
        uv_loop_close(&m.loop);
        return 1;
    }
    m.srv.data = &m;
    m.srv.on_worker_exit = on_worker_exit;
    uv_async_init(&m.loop, &m.worker_exit, on_worker_exit_async);
    m.worker_exit.data = &m;
    uv_signal_t *sigs[] = {&m.sigterm, &m.sigint, &m.sighup};
    int nums[] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&m.loop, sigs[i]);
        sigs[i]->data = &m;
        uv_signal_start(sigs[i], on_signal, nums[i]);
    }
    signal(SIGPIPE, SIG_IGN);
    m.admin = bh_admin_start(&m.loop, &m.srv);
    rc = m.admin != NULL ? bh_server_start(&m.srv) : BH_ECONFIG;
    if (rc < 0 && m.admin == NULL) {
        bh_server_stop(&m.srv); /* workers were never started: nothing to drain */
        uv_close((uv_handle_t *)&m.sigterm, NULL);
        uv_close((uv_handle_t *)&m.sigint, NULL);
        uv_close((uv_handle_t *)&m.sighup, NULL);
        uv_close((uv_handle_t *)&m.worker_exit, NULL);
        uv_run(&m.loop, UV_RUN_DEFAULT);
    } else if (rc < 0) {
        bh_log_error("cannot start workers: %s", uv_strerror(rc));
    } else {
        for (size_t i = 0; i < conf->n_listeners; i++)
            bh_log_info("listening on %s (%s), %u worker(s)", conf->listeners[i].addr.text,
                        conf->listeners[i].name, conf->workers);
        uv_run(&m.loop, UV_RUN_DEFAULT);
    }
    bh_server_join(&m.srv);
    bh_server_destroy(&m.srv);
    uv_run(&m.loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&m.loop);
    if (lc != 0)
        bh_log_error("main loop closed with handles open");
    bh_log_info("stopped");
    return rc < 0 ? 1 : 0;
}

/* --check FILE [--print]: 0 when the file is valid (with --print, its effective config, redacted,
 * is the only output on stdout), 2 when it is not. */
static int check_config(const char *path, int print)
{
    bh_conf_t *conf = NULL;
    bh_conf_error_t err;
    char *text = NULL;
    size_t len = 0;
    int rc = 0;

    if (bh_conf_load(path, &conf, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    for (size_t i = 0; i < conf->n_warnings; i++)
        print_warning(conf->path, conf->warnings[i]);
    if (!print) {
        printf("%s: ok\n", path);
    } else if (bh_conf_emit(conf, BH_CONF_EMIT_REDACT, &text, &len) != 0) {
        fprintf(stderr, "bulkhead: cannot print the config of %s\n", path);
        rc = 1;
    } else if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        rc = 1;
    }
    bh_free(text);
    bh_conf_free(conf);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", optional_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
        {"print", no_argument, NULL, 'p'},        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *check = NULL;
    int opt, print = 0, check_mode = 0;
    while ((opt = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config = optarg;
            break;
        case 'k': /* --check=FILE, or --check with FILE as the positional argument or the -c file */
            check_mode = 1;
            check = optarg;
            break;
        case 'p':
            print = 1;
            break;
        case 'V':
            printf("bulkhead %s (libuv %s, llhttp %d.%d.%d)\n", BH_VERSION, uv_version_string(),
                   LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (check_mode && check == NULL && optind < argc)
        check = argv[optind++];
    if (check_mode && check == NULL)
        check = config;
    if (check_mode && check == NULL) {
        fprintf(stderr, "bulkhead: --check needs a FILE (--check FILE, or -c FILE --check)\n");
        usage(stderr);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "bulkhead: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (print && check == NULL) {
        fprintf(stderr, "bulkhead: --print goes with --check FILE\n");
        usage(stderr);
        return 2;
    }
    if (check != NULL)
        return check_config(check, print);
    if (config == NULL) {
        usage(stderr);
        return 2;
    }
    return run(config);
}
