package restyffi

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
	"unsafe"
)

// Handler serves one call. req is the request (nil when Lua passed nil, empty for ""), a copy
// the handler may keep. The returned bytes are the response (nil: Lua sees nil). A non-nil
// error fails the call: Lua gets false, rc, err.Error(), with rc 1 or the RC of an *Error. A
// panic is recovered and fails the call the same way (rc 1, "panic: ..."), its stack logged.
//
// ctx is cancelled when nobody waits for the answer any more (the call's timeout passed, or
// its request was aborted), as the host reports through ngx_http_lua_ffi_task_cancelled; the
// handler should then return soon (its answer is dropped by the host).
type Handler func(ctx context.Context, req []byte) ([]byte, error)

// Options tune a Server; the zero value is what Serve uses.
type Options struct {
	// MaxInFlight bounds the handlers running at once; 0 means no bound (one goroutine per
	// task). At the bound the server stops polling and further calls wait in the host's queue
	// (ngx.load_ffi's max_queue).
	MaxInFlight int
	// CancelCheck is how often the tasks in flight are asked whether anybody still waits
	// (default 20 ms). The check runs only while tasks are in flight.
	CancelCheck time.Duration
	// Name prefixes the server's log lines (default "restyffi").
	Name string
	// BorrowRequest hands the handler the host's request buffer instead of a copy: no
	// allocation per call, but req is valid only until the handler returns (do not keep it, or
	// let another goroutine use it after that). Returning req itself as the response is fine:
	// the response is copied before the task is answered.
	BorrowRequest bool
	// Inline runs the handler on the polling goroutine: no goroutine per call, and calls are
	// served one at a time, in order. Only for handlers that never block.
	Inline bool
}

// Stats counts a Server's calls.
type Stats struct {
	Served    uint64 // answered with rc 0
	Failed    uint64 // answered with an error (panics included)
	Panics    uint64 // handlers that panicked
	Cancelled uint64 // contexts cancelled because nobody waited any more
	InFlight  int    // handlers running now
}

// Server serves one queue: a polling goroutine, one goroutine per task, and a cancellation
// sweeper while tasks are in flight.
type Server struct {
	q       *Queue
	handler Handler
	opts    Options
	slots   chan struct{} // nil without MaxInFlight
	done    chan struct{}
	doneOne sync.Once
	kick    chan struct{}

	mu       sync.Mutex
	inflight map[*call]struct{}
	finished bool // the queue finished: no new calls
	served   uint64
	failed   uint64
	panics   uint64
	cancels  uint64
}

type call struct {
	task      unsafe.Pointer
	cancel    context.CancelFunc
	cancelled bool
}

// Serve starts serving tq (libffi_init's second argument) with handler and returns at once, as
// libffi_init must. It fails when tq is NULL or the host's functions are missing.
func Serve(tq unsafe.Pointer, handler Handler) (*Server, error) {
	return ServeWith(tq, handler, Options{})
}

// ServeWith is Serve with Options.
func ServeWith(tq unsafe.Pointer, handler Handler, opts Options) (*Server, error) {
	if handler == nil {
		return nil, fmt.Errorf("restyffi: nil handler")
	}
	q, err := NewQueue(tq)
	if err != nil {
		return nil, err
	}
	if opts.CancelCheck <= 0 {
		opts.CancelCheck = 20 * time.Millisecond
	}
	if opts.Name == "" {
		opts.Name = "restyffi"
	}
	s := &Server{
		q:        q,
		handler:  handler,
		opts:     opts,
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		inflight: make(map[*call]struct{}),
	}
	if opts.MaxInFlight > 0 {
		s.slots = make(chan struct{}, opts.MaxInFlight)
	}
	go s.pollLoop()
	if HasCancelled() {
		go s.sweep()
	}
	return s, nil
}

// Done is closed once the queue finished (the object was unloaded or the worker exits) and
// every task polled before was answered.
func (s *Server) Done() <-chan struct{} { return s.done }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Served: s.served, Failed: s.failed, Panics: s.panics, Cancelled: s.cancels,
		InFlight: len(s.inflight),
	}
}

func (s *Server) pollLoop() {
	for {
		if s.slots != nil {
			s.slots <- struct{}{}
		}
		p := s.q.Poll()
		if p == nil {
			break
		}
		s.start(p.p)
	}
	s.mu.Lock()
	s.finished = true
	empty := len(s.inflight) == 0
	s.mu.Unlock()
	if empty {
		s.close()
	}
	s.nudge()
}

func (s *Server) start(task unsafe.Pointer) {
	var req []byte
	if s.opts.BorrowRequest {
		req = reqView(task)
	} else {
		req = getReq(task)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &call{task: task, cancel: cancel}
	s.mu.Lock()
	s.inflight[c] = struct{}{}
	first := len(s.inflight) == 1
	s.mu.Unlock()
	if first {
		s.nudge()
	}
	if s.opts.Inline {
		s.run(ctx, c, req)
		return
	}
	go s.run(ctx, c, req)
	// Let the new goroutine run now, on this thread: a quick handler answers before the next
	// poll, with no thread woken. A handler that blocks parks and hands the thread back; one
	// that computes long is left to this thread while the poller moves on to another one
	// (the go statement woke an idle P for it).
	runtime.Gosched()
}

func (s *Server) run(ctx context.Context, c *call, req []byte) {
	rc, rsp, panicked := s.invoke(ctx, req)
	s.mu.Lock()
	delete(s.inflight, c)
	if rc == 0 {
		s.served++
	} else {
		s.failed++
	}
	if panicked {
		s.panics++
	}
	last := s.finished && len(s.inflight) == 0
	s.mu.Unlock()
	// Out of the map first: the sweeper no longer touches the task once it is answered.
	respond(c.task, rc, rsp)
	c.cancel()
	if s.slots != nil {
		<-s.slots
	}
	if last {
		s.close()
	}
}

// invoke runs the handler, turning an error or a panic into rc and message.
func (s *Server) invoke(ctx context.Context, req []byte) (rc int, rsp []byte, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			msg := fmt.Sprintf("panic: %v", r)
			Log(LevelErr, "%s: handler %s\n%s", s.opts.Name, msg, debug.Stack())
			rc, rsp, panicked = 1, []byte(msg), true
		}
	}()
	out, err := s.handler(ctx, req)
	if err != nil {
		rc, rsp = rcOf(err)
		return rc, rsp, false
	}
	return 0, out, false
}

func (s *Server) close() {
	s.doneOne.Do(func() { close(s.done) })
}

func (s *Server) nudge() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// sweep asks the host about every task in flight each CancelCheck, while there are any, and
// cancels the contexts of those nobody waits for. It holds s.mu while asking, so a task is
// never asked about after run took it out of the map to answer it.
func (s *Server) sweep() {
	tick := time.NewTicker(s.opts.CancelCheck)
	defer tick.Stop()
	for {
		s.mu.Lock()
		idle := len(s.inflight) == 0
		over := idle && s.finished
		s.mu.Unlock()
		if over {
			return
		}
		if idle {
			select {
			case <-s.kick:
			case <-s.done:
				return
			}
			tick.Reset(s.opts.CancelCheck)
			continue
		}
		select {
		case <-tick.C:
		case <-s.done:
			return
		}
		s.mu.Lock()
		for c := range s.inflight {
			if !c.cancelled && taskCancelled(c.task) {
				c.cancelled = true
				s.cancels++
				c.cancel()
			}
		}
		s.mu.Unlock()
	}
}

// Init runs start, the body of a libffi_init, and turns its outcome into libffi_init's
// result: 0 when it returned nil; an error is logged at [error] and gives its rc (an *Error's
// RC, else 1); a panic is recovered (a panic must never cross the C boundary: it would kill the
// worker), logged with its stack, and gives 2.
func Init(name string, start func() error) (rc int) {
	defer func() {
		if r := recover(); r != nil {
			Log(LevelErr, "%s: panic in libffi_init: %v\n%s", name, r, debug.Stack())
			rc = 2
		}
	}()
	if err := start(); err != nil {
		rc, _ = rcOf(err)
		Log(LevelErr, "%s: libffi_init failed: %v", name, err)
		return rc
	}
	return 0
}
