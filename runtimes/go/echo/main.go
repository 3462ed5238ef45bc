// Command echo is the Go runtime to copy: built with -buildmode=c-shared into
// libffi_go_echo.so, it answers every call with its request, byte for byte.
//
//	local echo = assert(ngx.load_ffi("ffi_go_echo"))
//	local ok, res = echo:call("hello")   -- true, "hello"
//
// cfg: empty (one goroutine per call, as a runtime doing I/O needs), or "inline" (calls are
// answered on the polling goroutine, one at a time: the fastest way for a handler that never
// blocks, as this one).
package main

import "C"

import (
	"context"
	"fmt"
	"unsafe"

	"example.invalid/resty_grpc_zc/runtimes/go/restyffi"
)

// echo answers with the request itself. With BorrowRequest, req is the host's buffer, valid
// until the handler returns; returning it is fine (the response is copied before the task is
// answered), keeping it is not.
func echo(ctx context.Context, req []byte) ([]byte, error) {
	return req, nil
}

// libffi_init is called by ngx.load_ffi on the nginx main thread, once per distinct cfg;
// ServeWith starts the goroutines and returns at once. Init turns an error or a panic into a
// non-zero result and an error.log line.
//
//export libffi_init
func libffi_init(cfgp *C.char, tq unsafe.Pointer) C.int {
	cfg := ""
	if cfgp != nil {
		cfg = C.GoString(cfgp)
	}
	return C.int(restyffi.Init("go echo", func() error {
		opts := restyffi.Options{Name: "go echo", BorrowRequest: true}
		switch cfg {
		case "":
		case "inline":
			opts.Inline = true
		default:
			return fmt.Errorf("unknown cfg %q (want \"\" or \"inline\")", cfg)
		}
		_, err := restyffi.ServeWith(tq, echo, opts)
		return err
	}))
}

func main() {}
