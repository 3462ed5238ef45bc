package restyffi

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "host.h"
*/
import "C"

import (
	"errors"
	"os"
	"sync/atomic"
	"unsafe"
)

// What package init found out; read-only afterwards.
var (
	// hostErr is non-nil when the contract's functions are missing from the process.
	hostErr error
	// pinErr is non-nil when the library could not be pinned.
	pinErr error
	// sigchld describes what was done about SIGCHLD (see SigchldMode).
	sigchld string
)

// The package pins its library and routes SIGCHLD as soon as the Go runtime starts, that is when
// LuaJIT's ffi.load maps the library, before libffi_init runs.
func init() {
	if missing := C.restyffi_lookup(); missing != nil {
		hostErr = errors.New("restyffi: the host does not export " + C.GoString(missing) +
			" (load this library through resty_ffi's ngx.load_ffi)")
	}
	var cerr *C.char
	if C.restyffi_pin(&cerr) != 0 {
		pinErr = errors.New("restyffi: cannot pin the library: " + C.GoString(cerr))
		Log(LevelWarn, "%v; unpin = true would unload a running Go runtime", pinErr)
	}
	mode := os.Getenv("RESTYFFI_SIGCHLD")
	switch mode {
	case "keep":
		sigchld = "keep"
	default:
		noreap := C.int(0)
		if mode == "noreap" {
			noreap = 1
		}
		switch C.restyffi_sigchld_route(noreap) {
		case 1:
			sigchld = "route"
			if noreap != 0 {
				sigchld = "noreap"
			}
		case 0:
			sigchld = "none"
		default:
			sigchld = "failed"
			Log(LevelWarn, "restyffi: cannot install the SIGCHLD forwarder")
		}
	}
}

// setHost replaces the host's functions with the C functions given (unit tests' mock host).
func setHost(poll, getReq, respond, cancelled unsafe.Pointer) {
	C.restyffi_set_host(poll, getReq, respond, cancelled)
	hostErr = nil
}

// HostError is nil when the process exports the three contract functions (the library was
// loaded by ngx.load_ffi); otherwise it names the missing one. Serve and NewQueue return it.
func HostError() error { return hostErr }

// Pinned reports whether the library is pinned (RTLD_NODELETE): true unless pinning failed,
// which is logged at [warn].
func Pinned() bool { return pinErr == nil }

// HasCancelled reports whether the host has the ngx_http_lua_ffi_task_cancelled extension
// (this project's host does; the original lua-resty-ffi does not, and then contexts are only
// cancelled by the handler's own deadlines).
func HasCancelled() bool { return C.restyffi_has_cancelled() != 0 }

// SigchldMode says what package init did about SIGCHLD: "route" (the forwarder is installed),
// "noreap" (installed, and nginx's reaping handler no longer runs: RESTYFFI_SIGCHLD=noreap),
// "none" (SIGCHLD had no handler, nothing to route), "keep" (RESTYFFI_SIGCHLD=keep asked to
// leave it alone) or "failed".
func SigchldMode() string { return sigchld }

// SigchldForwarded is how many SIGCHLD the forwarder moved from a Go thread to the main thread.
func SigchldForwarded() uint64 { return uint64(C.restyffi_sigchld_forwarded()) }

// maxLen is the largest request or response the contract's int lengths carry.
const maxLen = 1<<31 - 1

// getReq copies the task's request: nil for a nil request, a non-nil empty slice for "".
func getReq(task unsafe.Pointer) []byte {
	var n C.int
	p := C.restyffi_get_req(task, &n)
	if p == nil {
		return nil
	}
	if n <= 0 {
		return []byte{}
	}
	return C.GoBytes(unsafe.Pointer(p), n)
}

// reqView is the request without a copy: host memory, valid until the task is answered.
func reqView(task unsafe.Pointer) []byte {
	var n C.int
	p := C.restyffi_get_req(task, &n)
	if p == nil {
		return nil
	}
	if n <= 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

// respond answers task with rc and a malloc'd copy of rsp (nil: NULL, so Lua sees nil; empty:
// a 1-byte "\0" with length 0, so Lua sees ""). A response the host cannot take (longer than
// 2 GiB - 1, or malloc failed) becomes rc 1 with the reason.
func respond(task unsafe.Pointer, rc int, rsp []byte) {
	if rsp == nil {
		C.restyffi_respond(task, C.int(rc), nil, 0)
		return
	}
	if len(rsp) > maxLen {
		respondErr(task, 1, "restyffi: response longer than 2147483647 bytes")
		return
	}
	var src unsafe.Pointer
	if len(rsp) > 0 {
		src = unsafe.Pointer(&rsp[0])
	}
	p := C.restyffi_dup(src, C.size_t(len(rsp)))
	if p == nil {
		C.restyffi_respond(task, 1, nil, 0)
		return
	}
	C.restyffi_respond(task, C.int(rc), p, C.int(len(rsp)))
}

func respondErr(task unsafe.Pointer, rc int, msg string) {
	respond(task, rc, []byte(msg))
}

func taskCancelled(task unsafe.Pointer) bool {
	return C.restyffi_task_cancelled(task) != 0
}

func poll(tq unsafe.Pointer) unsafe.Pointer {
	return C.restyffi_task_poll(tq)
}

// counters shared by every Server of the library, for Stats.
type counters struct {
	served, failed, panics, cancelled atomic.Uint64
}
