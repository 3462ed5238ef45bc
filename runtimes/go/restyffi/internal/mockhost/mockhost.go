// Package mockhost is a host for restyffi's unit tests: the contract's functions over a
// locked list of tasks in C memory, with the answers kept for the test to read.
package mockhost

/*
#include <stdlib.h>
#include <string.h>
#include "mock.h"
*/
import "C"

import "unsafe"

// Funcs returns the C functions poll, get_req, respond and task_cancelled.
func Funcs() (poll, getReq, respond, cancelled unsafe.Pointer) {
	return C.mock_fn_poll(), C.mock_fn_get_req(), C.mock_fn_respond(), C.mock_fn_cancelled()
}

// Queue is a task queue in C memory.
type Queue struct{ q *C.mock_queue }

// Task is a posted request.
type Task struct {
	q *Queue
	t *C.mock_task
}

// New allocates a queue (never freed: tests are short).
func New() *Queue {
	q := (*C.mock_queue)(C.calloc(1, C.size_t(unsafe.Sizeof(C.mock_queue{}))))
	C.mock_queue_init(q)
	return &Queue{q: q}
}

// Ptr is the tq handed to the code under test.
func (q *Queue) Ptr() unsafe.Pointer { return unsafe.Pointer(q.q) }

// Post queues req (nil: a nil request) as the host does: a malloc'd copy, NUL-terminated.
func (q *Queue) Post(req []byte) *Task {
	t := (*C.mock_task)(C.calloc(1, C.size_t(unsafe.Sizeof(C.mock_task{}))))
	if req != nil {
		t.req = (*C.char)(C.malloc(C.size_t(len(req) + 1)))
		if len(req) > 0 {
			C.memcpy(unsafe.Pointer(t.req), unsafe.Pointer(&req[0]), C.size_t(len(req)))
		}
		*(*byte)(unsafe.Add(unsafe.Pointer(t.req), len(req))) = 0
		t.len = C.int(len(req))
	}
	C.mock_post(q.q, t)
	return &Task{q: q, t: t}
}

// Finish appends the finish marker.
func (q *Queue) Finish() { C.mock_finish(q.q) }

// Finished reports whether the poller consumed the marker.
func (q *Queue) Finished() bool { return C.mock_is_finished(q.q) != 0 }

// Cancel marks the task as no longer awaited.
func (t *Task) Cancel() { C.mock_cancel(t.t) }

// Wait blocks until the task is answered; returns rc, the response (nil for NULL; the C
// string rule for length 0), and how many times the task was answered so far.
func (t *Task) Wait() (rc int, rsp []byte, answers int) {
	n := C.mock_wait(t.q.q, t.t)
	if t.t.rsp != nil {
		l := t.t.rsp_len
		if l == 0 {
			l = C.int(C.strlen(t.t.rsp))
		}
		rsp = C.GoBytes(unsafe.Pointer(t.t.rsp), l)
	}
	return int(t.t.rc), rsp, int(n)
}

// Answers is how many times the task was answered (it must end at 1).
func (t *Task) Answers() int { return int(t.t.answers) }
