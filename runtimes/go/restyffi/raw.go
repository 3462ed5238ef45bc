package restyffi

import (
	"sync/atomic"
	"unsafe"
)

// Queue is the raw style: the task queue handed to libffi_init, polled by one goroutine.
// Serve does all of this for you; use Queue when you want your own loop.
//
//	q, err := restyffi.NewQueue(tq)
//	go func() {
//		for t := q.Poll(); t != nil; t = q.Poll() {
//			t.Respond(0, t.Request())
//		}
//	}()
type Queue struct {
	tq       unsafe.Pointer
	finished bool
}

// NewQueue wraps tq (libffi_init's second argument). It fails when tq is NULL or the process
// does not export the contract's functions.
func NewQueue(tq unsafe.Pointer) (*Queue, error) {
	if hostErr != nil {
		return nil, hostErr
	}
	if tq == nil {
		return nil, errNilQueue
	}
	return &Queue{tq: tq}, nil
}

// Poll blocks until the next task (ngx_http_lua_ffi_task_poll). It returns nil once the finish
// marker was consumed (ngx.load_ffi's object was unloaded, or the worker exits); the queue is
// gone then and every later Poll returns nil without touching it. One goroutine polls a queue.
func (q *Queue) Poll() *Task {
	if q.finished {
		return nil
	}
	p := poll(q.tq)
	if p == nil {
		q.finished = true
		q.tq = nil
		return nil
	}
	return &Task{p: p}
}

// Task is one polled call. Answer it exactly once with Respond; until then it may be read and
// asked about from any goroutine.
type Task struct {
	p        unsafe.Pointer
	answered atomic.Bool
}

// Request copies the request: nil when Lua passed nil, an empty slice for "".
func (t *Task) Request() []byte {
	t.check()
	return getReq(t.p)
}

// RequestView is the request without a copy: it aliases the host's buffer, which is freed when
// the task is answered, so it must not be used (or retained) after Respond.
func (t *Task) RequestView() []byte {
	t.check()
	return reqView(t.p)
}

// Cancelled asks the host (ngx_http_lua_ffi_task_cancelled) whether anybody still waits for
// the answer: true after the call's timeout, or when its request was aborted. The task must
// still be answered. Always false on a host without the extension.
func (t *Task) Cancelled() bool {
	t.check()
	return taskCancelled(t.p)
}

// Respond answers the task: rc 0 makes Lua's call return true, rsp; any other rc returns
// false, rc, rsp. rsp is copied into a malloc'd buffer (nil: Lua sees nil). A second Respond
// panics: the host has freed the task.
func (t *Task) Respond(rc int, rsp []byte) {
	if !t.answered.CompareAndSwap(false, true) {
		panic("restyffi: task answered twice")
	}
	respond(t.p, rc, rsp)
}

func (t *Task) check() {
	if t.answered.Load() {
		panic("restyffi: task used after Respond")
	}
}
