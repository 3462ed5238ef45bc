package restyffi

/*
#include "host.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Level is an nginx log level, as resty_ffi_log takes it.
type Level int

// nginx's log levels.
const (
	LevelAlert  Level = 2
	LevelCrit   Level = 3
	LevelErr    Level = 4
	LevelWarn   Level = 5
	LevelNotice Level = 6
	LevelInfo   Level = 7
	LevelDebug  Level = 8
)

// Log writes one line to nginx's error log through the host's resty_ffi_log (in nginx's format,
// obeying the error_log level; lines over 2048 bytes are cut), from any goroutine. Without that
// extension (the original lua-resty-ffi) it writes "[level] msg" to stderr, which nginx points
// at its error log.
func Log(level Level, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) == 0 {
		return
	}
	b := []byte(msg)
	C.restyffi_log(C.int(level), (*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b)))
}
