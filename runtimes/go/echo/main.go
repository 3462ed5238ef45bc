// Command echo is the Go runtime to copy: built with -buildmode=c-shared into
// libffi_go_echo.so, it answers every call with its request, byte for byte.
//
//	local echo = assert(ngx.load_ffi("ffi_go_echo"))
//	local ok, res = echo:call("hello")   -- true, "hello"
package main

import "C"

import (
	"context"
	"unsafe"

	"example.invalid/resty_grpc_zc/runtimes/go/restyffi"
)

func echo(ctx context.Context, req []byte) ([]byte, error) {
	return req, nil
}

// libffi_init is called by ngx.load_ffi on the nginx main thread; Serve starts the goroutines
// and returns at once. cfg is unused here (each ngx.load_ffi cfg gets its own queue and server).
//
//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	return C.int(restyffi.Init("go echo", func() error {
		_, err := restyffi.Serve(tq, echo)
		return err
	}))
}

func main() {}
