/* The C side of package restyffi: the host's functions looked up at run time, the library's
 * pin, and the SIGCHLD forwarder. Only restyffi's Go files include this header. */
#ifndef RESTYFFI_HOST_H
#define RESTYFFI_HOST_H

#include <stddef.h>

/* Internal to the library: never interposed by, nor interposing on, another object. */
#pragma GCC visibility push(hidden)

/* Looks up the host's functions with dlsym(RTLD_DEFAULT). Returns NULL when the three
 * contract functions were found, else the name of the first one missing. The extensions
 * (task_cancelled, resty_ffi_log) are optional. */
const char *restyffi_lookup(void);
int restyffi_has_cancelled(void);
/* Replaces the looked-up functions (unit tests run without a host). */
void restyffi_set_host(void *poll, void *get_req, void *respond, void *cancelled);
int restyffi_has_log(void);

void *restyffi_task_poll(void *tq);
char *restyffi_get_req(void *task, int *len);
void restyffi_respond(void *task, int rc, char *rsp, int rsp_len);
/* 1: nobody waits for the task any more; 0 otherwise, or when the host lacks the extension. */
int restyffi_task_cancelled(void *task);

/* resty_ffi_log, or "[level] msg\n" on stderr without it. */
void restyffi_log(int level, const char *msg, size_t len);

/* Copies len bytes into a malloc'd buffer (len 0: a 1-byte "\0"); NULL when malloc failed. */
char *restyffi_dup(const void *src, size_t len);

/* dlopen(own path, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE): the library can no longer be
 * unloaded. 0 on success; -1 with *err set. */
int restyffi_pin(const char **err);

/* Routes SIGCHLD that lands on a thread other than the main one (the thread whose id is the
 * process id) to the main thread, then lets the handler that was installed before run there
 * (unless noreap: then nothing runs, and every child is left to whoever waits for it).
 * 1: installed; 0: nothing to do (no handler, SIG_DFL or SIG_IGN); -1: sigaction failed. */
int restyffi_sigchld_route(int noreap);
/* How many SIGCHLD were forwarded to the main thread. */
unsigned long restyffi_sigchld_forwarded(void);

#pragma GCC visibility pop

#endif
