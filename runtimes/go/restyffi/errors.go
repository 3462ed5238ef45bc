package restyffi

import (
	"errors"
	"fmt"
)

var errNilQueue = errors.New("restyffi: libffi_init was given a NULL queue")

// Error is an error with the rc Lua sees: a handler returning &Error{RC: 7, Msg: "no such key"}
// makes the call return false, 7, "no such key". Any other error gives rc 1 and its message.
type Error struct {
	RC  int
	Msg string
}

func (e *Error) Error() string { return e.Msg }

// Errorf makes an *Error with rc and a formatted message.
func Errorf(rc int, format string, args ...any) error {
	return &Error{RC: rc, Msg: fmt.Sprintf(format, args...)}
}

// rcOf maps a handler's error to the rc and body Lua sees; an rc of 0 becomes 1, since a failed
// call must not read as a success.
func rcOf(err error) (int, []byte) {
	var e *Error
	rc := 1
	if errors.As(err, &e) && e.RC != 0 {
		rc = e.RC
	}
	return rc, []byte(err.Error())
}
