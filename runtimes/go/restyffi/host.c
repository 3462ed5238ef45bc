/* See host.h. Everything here runs on whichever thread calls it; the signal handler is
 * async-signal-safe (syscalls only, errno saved). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "host.h"

typedef void *(*poll_fn)(void *);
typedef char *(*get_req_fn)(void *, int *);
typedef void (*respond_fn)(void *, int, char *, int);
typedef int (*cancelled_fn)(void *);
typedef int (*log_fn)(int, const char *, size_t);

/* Written once by restyffi_lookup (package init, before any task exists), read-only after. */
static poll_fn host_poll;
static get_req_fn host_get_req;
static respond_fn host_respond;
static cancelled_fn host_cancelled;
static log_fn host_log;

const char *restyffi_lookup(void)
{
    host_cancelled = (cancelled_fn) dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_task_cancelled");
    host_log = (log_fn) dlsym(RTLD_DEFAULT, "resty_ffi_log");
    host_poll = (poll_fn) dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_task_poll");
    if (host_poll == NULL) {
        return "ngx_http_lua_ffi_task_poll";
    }
    host_get_req = (get_req_fn) dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_get_req");
    if (host_get_req == NULL) {
        return "ngx_http_lua_ffi_get_req";
    }
    host_respond = (respond_fn) dlsym(RTLD_DEFAULT, "ngx_http_lua_ffi_respond");
    if (host_respond == NULL) {
        return "ngx_http_lua_ffi_respond";
    }
    return NULL;
}

void restyffi_set_host(void *poll, void *get_req, void *respond, void *cancelled)
{
    host_poll = (poll_fn) poll;
    host_get_req = (get_req_fn) get_req;
    host_respond = (respond_fn) respond;
    host_cancelled = (cancelled_fn) cancelled;
}

int restyffi_has_cancelled(void) { return host_cancelled != NULL; }
int restyffi_has_log(void) { return host_log != NULL; }

void *restyffi_task_poll(void *tq) { return host_poll(tq); }
char *restyffi_get_req(void *task, int *len) { return host_get_req(task, len); }
void restyffi_respond(void *task, int rc, char *rsp, int rsp_len)
{
    host_respond(task, rc, rsp, rsp_len);
}

int restyffi_task_cancelled(void *task)
{
    return host_cancelled != NULL && host_cancelled(task) == 1;
}

static const char *level_name(int level)
{
    static const char *names[] = {"emerg", "emerg", "alert", "crit", "error",
                                  "warn", "notice", "info", "debug"};
    if (level < 1 || level > 8) {
        level = level < 1 ? 1 : 8;
    }
    return names[level];
}

void restyffi_log(int level, const char *msg, size_t len)
{
    if (host_log != NULL) {
        /* -1: the host's bounded list was full; it counts and reports the dropped lines. */
        (void) host_log(level, msg, len);
        return;
    }
    fprintf(stderr, "[%s] %.*s\n", level_name(level), (int) len, msg);
}

char *restyffi_dup(const void *src, size_t len)
{
    char *p = malloc(len == 0 ? 1 : len);
    if (p == NULL) {
        return NULL;
    }
    if (len == 0) {
        p[0] = '\0';
    } else {
        memcpy(p, src, len);
    }
    return p;
}

int restyffi_pin(const char **err)
{
    Dl_info info;
    if (dladdr((void *) restyffi_pin, &info) == 0 || info.dli_fname == NULL) {
        *err = "dladdr found no file for this library";
        return -1;
    }
    /* The handle is never closed: the reference it holds is the pin, and RTLD_NODELETE makes
     * every later dlclose (LuaJIT's, with unpin = true) leave the mapping alone. */
    if (dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL) {
        *err = dlerror();
        return -1;
    }
    return 0;
}

/* ---- SIGCHLD routing ---------------------------------------------------------------------
 * The Go runtime unblocks SIGCHLD on every thread it creates (sigtable's _SigUnblock), so
 * while nginx's main thread blocks it (glibc's system() does, lua-nginx-module's signalfd for
 * ngx.pipe does) the kernel delivers it to a Go thread, where nginx's handler reaps the child
 * with waitpid(-1) before its owner can. The forwarder puts it back where it would have gone
 * without Go: pending on the main thread. */

static struct sigaction chld_prev;
static volatile unsigned long chld_forwarded;
/* 1: on the main thread, do not run the previous handler (nginx's reaps every child). */
static int chld_noreap;

static void chld_run_prev(int sig, siginfo_t *info, void *uc)
{
    if (chld_prev.sa_flags & SA_SIGINFO) {
        chld_prev.sa_sigaction(sig, info, uc);
    } else if (chld_prev.sa_handler != SIG_DFL && chld_prev.sa_handler != SIG_IGN) {
        chld_prev.sa_handler(sig);
    }
}

static void chld_handler(int sig, siginfo_t *info, void *uc)
{
    int saved = errno;
    pid_t pid = getpid();
    if ((pid_t) syscall(SYS_gettid) != pid) {
        siginfo_t si;
        if (info != NULL) {
            si = *info;
        } else {
            memset(&si, 0, sizeof(si));
            si.si_signo = sig;
        }
        /* The kernel lets a thread queue a signal with a kernel si_code only to itself; keep
         * si_pid and si_status (nginx logs si_pid) and mark it queued. */
        si.si_code = SI_QUEUE;
        if (syscall(SYS_rt_tgsigqueueinfo, pid, pid, sig, &si) == 0) {
            __atomic_add_fetch(&chld_forwarded, 1, __ATOMIC_RELAXED);
            errno = saved;
            return;
        }
    }
    if (!chld_noreap) {
        chld_run_prev(sig, info, uc);
    }
    errno = saved;
}

int restyffi_sigchld_route(int noreap)
{
    struct sigaction cur, sa;
    chld_noreap = noreap;
    if (sigaction(SIGCHLD, NULL, &cur) != 0) {
        return -1;
    }
    if (cur.sa_flags & SA_SIGINFO) {
        if (cur.sa_sigaction == chld_handler) {
            return 1;
        }
    } else if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN) {
        /* SIG_IGN means "reap automatically", which no handler can imitate; SIG_DFL has no
         * handler to steal children. */
        return 0;
    }
    chld_prev = cur;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = chld_handler;
    sa.sa_mask = cur.sa_mask;
    sa.sa_flags = (cur.sa_flags & (SA_NOCLDSTOP | SA_NOCLDWAIT | SA_RESTART))
                  | SA_SIGINFO | SA_ONSTACK;
    if (sigaction(SIGCHLD, &sa, NULL) != 0) {
        return -1;
    }
    return 1;
}

unsigned long restyffi_sigchld_forwarded(void)
{
    return __atomic_load_n(&chld_forwarded, __ATOMIC_RELAXED);
}
