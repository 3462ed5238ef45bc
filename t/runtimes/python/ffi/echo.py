# The article's runtime, in its raw style: cffi reaches the host's functions in the global
# namespace (ngx.load_ffi(..., {is_global = true})), a daemon thread polls the queue and answers
# each task with a strdup'd copy of the request (rsp_len 0: a C string).
from cffi import FFI
ffi = FFI()
ffi.cdef("""
char *strdup(const char *s);
void *ngx_http_lua_ffi_task_poll(void *p);
char *ngx_http_lua_ffi_get_req(void *tsk, int *len);
void ngx_http_lua_ffi_respond(void *tsk, int rc, char *rsp, int rsp_len);
""")
C = ffi.dlopen(None)

import sys
import threading


def poll(tq):
    while True:
        task = C.ngx_http_lua_ffi_task_poll(ffi.cast("void *", tq))
        if task == ffi.NULL:
            break
        req = C.ngx_http_lua_ffi_get_req(task, ffi.NULL)
        res = C.strdup(req)
        C.ngx_http_lua_ffi_respond(task, 0, res, 0)
    print("ffi.echo: poll loop left", file=sys.stderr)


def init(cfg, tq):
    t = threading.Thread(target=poll, args=(tq,))
    t.daemon = True
    t.start()
    return 0
