// Package restyffi serves lua-resty-ffi calls from Go: a library built with
// -buildmode=c-shared exports libffi_init, and ngx.load_ffi calls it in each nginx worker.
//
//	Lua: obj:call(req) ──► host queue ──► poll goroutine ──► go handler(ctx, req) ──► respond
//	                                          │                       ▲
//	                                          └── sweeper: task_cancelled? ── cancel(ctx)
//
// A runtime is a main package:
//
//	//export libffi_init
//	func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
//		return C.int(restyffi.Init("echo", func() error {
//			_, err := restyffi.Serve(tq, func(ctx context.Context, req []byte) ([]byte, error) {
//				return req, nil
//			})
//			return err
//		}))
//	}
//
// Serve hides the three C calls (ngx_http_lua_ffi_task_poll, _get_req, _respond): bytes in,
// bytes out, an error or a panic becomes rc 1 (or Error.RC) with its message, and the
// context is cancelled when the host's ngx_http_lua_ffi_task_cancelled says nobody waits any
// more. Queue and Task are the raw style for those who want their own loop.
//
// At load (package init, before libffi_init), the package
//   - looks the host's functions up with dlsym, so the library links without them and loads on
//     the original lua-resty-ffi too (without the cancellation and logging extensions);
//   - pins the library (dlopen of its own file with RTLD_NODELETE | RTLD_NOLOAD): a Go runtime
//     can never be unloaded, so unpin = true must not unmap it;
//   - routes SIGCHLD that the kernel hands to a Go thread back to nginx's main thread (see
//     docs/runtimes.md, "Go and SIGCHLD"); RESTYFFI_SIGCHLD=keep turns that off, and
//     RESTYFFI_SIGCHLD=noreap also stops nginx's handler from reaping every child.
//
// One Go runtime per process: load at most one Go library per nginx worker (serve several
// cfgs from it instead).
package restyffi
