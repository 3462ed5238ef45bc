// Command article is a Go runtime in lua-resty-ffi's original raw style, without restyffi: the
// three host functions declared in the cgo preamble and resolved when the library is loaded
// (hence -shared, so cgo's test link accepts them undefined), one goroutine polling, each
// request answered with a malloc'd copy of itself.
package main

/*
#cgo LDFLAGS: -shared
#include <stdlib.h>
#include <string.h>
void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);
*/
import "C"

import "unsafe"

//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	go func() {
		for {
			task := C.ngx_http_lua_ffi_task_poll(tq)
			if task == nil {
				return
			}
			var n C.int
			req := C.ngx_http_lua_ffi_get_req(task, &n)
			if req == nil {
				C.ngx_http_lua_ffi_respond(task, 0, nil, 0)
				continue
			}
			rsp := (*C.char)(C.malloc(C.size_t(n) + 1))
			C.memcpy(unsafe.Pointer(rsp), unsafe.Pointer(req), C.size_t(n)+1)
			C.ngx_http_lua_ffi_respond(task, 0, rsp, n)
		}
	}()
	return 0
}

func main() {}
