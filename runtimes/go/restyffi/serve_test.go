package restyffi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"example.invalid/resty_grpc_zc/runtimes/go/restyffi/internal/mockhost"
)

func TestMain(m *testing.M) {
	setHost(mockhost.Funcs())
	m.Run()
}

func echo(ctx context.Context, req []byte) ([]byte, error) { return req, nil }

func TestEchoShapes(t *testing.T) {
	for _, opts := range []Options{{}, {BorrowRequest: true}, {Inline: true}} {
		q := mockhost.New()
		s, err := ServeWith(q.Ptr(), echo, opts)
		if err != nil {
			t.Fatal(err)
		}
		big := bytes.Repeat([]byte("a\x00b"), 1<<20)
		for _, req := range [][]byte{[]byte("hello\x00world"), nil, {}, big} {
			task := q.Post(req)
			rc, rsp, _ := task.Wait()
			if rc != 0 || !bytes.Equal(rsp, req) || (req == nil) != (rsp == nil) {
				t.Fatalf("%+v: echo of %d bytes (nil %v): rc %d, %d bytes (nil %v)",
					opts, len(req), req == nil, rc, len(rsp), rsp == nil)
			}
		}
		q.Finish()
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed after the finish marker")
		}
		if !q.Finished() {
			t.Fatal("the marker was not consumed")
		}
	}
}

func TestErrorsAndPanics(t *testing.T) {
	q := mockhost.New()
	s, err := Serve(q.Ptr(), func(ctx context.Context, req []byte) ([]byte, error) {
		switch string(req) {
		case "err":
			return []byte("ignored"), errors.New("boom")
		case "rc":
			return nil, fmt.Errorf("wrapped: %w", Errorf(7, "seven"))
		case "panic":
			panic("kaboom")
		}
		return req, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]struct {
		rc  int
		rsp string
	}{"err": {1, "boom"}, "rc": {7, "wrapped: seven"}, "panic": {1, "panic: kaboom"}, "ok": {0, "ok"}} {
		rc, rsp, _ := q.Post([]byte(req)).Wait()
		if rc != want.rc || string(rsp) != want.rsp {
			t.Errorf("%s: rc %d %q, want %d %q", req, rc, rsp, want.rc, want.rsp)
		}
	}
	st := s.Stats()
	if st.Served != 1 || st.Failed != 3 || st.Panics != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestCancelledContext(t *testing.T) {
	q := mockhost.New()
	var ended atomic.Int32
	s, err := ServeWith(q.Ptr(), func(ctx context.Context, req []byte) ([]byte, error) {
		select {
		case <-ctx.Done():
			ended.Add(1)
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			return req, nil
		}
	}, Options{CancelCheck: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tasks := []*mockhost.Task{q.Post([]byte("a")), q.Post([]byte("b"))}
	tasks[0].Cancel()
	rc, rsp, _ := tasks[0].Wait()
	if rc != 1 || string(rsp) != "context canceled" {
		t.Fatalf("rc %d %q", rc, rsp)
	}
	tasks[1].Cancel()
	tasks[1].Wait()
	if ended.Load() != 2 || s.Stats().Cancelled != 2 {
		t.Fatalf("ended %d, stats %+v", ended.Load(), s.Stats())
	}
}

func TestMaxInFlight(t *testing.T) {
	q := mockhost.New()
	var running, most atomic.Int32
	_, err := ServeWith(q.Ptr(), func(ctx context.Context, req []byte) ([]byte, error) {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		return req, nil
	}, Options{MaxInFlight: 3})
	if err != nil {
		t.Fatal(err)
	}
	var tasks []*mockhost.Task
	for i := 0; i < 12; i++ {
		tasks = append(tasks, q.Post([]byte{byte(i)}))
	}
	for _, task := range tasks {
		if _, _, n := task.Wait(); n != 1 {
			t.Fatalf("answered %d times", n)
		}
	}
	if most.Load() != 3 {
		t.Fatalf("at most %d at once, want 3", most.Load())
	}
}

func TestRawQueue(t *testing.T) {
	q := mockhost.New()
	raw, err := NewQueue(q.Ptr())
	if err != nil {
		t.Fatal(err)
	}
	task := q.Post([]byte("x"))
	go func() {
		for tk := raw.Poll(); tk != nil; tk = raw.Poll() {
			req := tk.RequestView()
			if tk.Cancelled() {
				req = []byte("cancelled")
			}
			tk.Respond(0, append([]byte("raw:"), req...))
			func() {
				defer func() { recover() }()
				tk.Respond(0, nil)
				t.Error("a second Respond did not panic")
			}()
		}
	}()
	if _, rsp, _ := task.Wait(); string(rsp) != "raw:x" {
		t.Fatalf("%q", rsp)
	}
	q.Finish()
	if _, err := NewQueue(nil); err == nil {
		t.Fatal("NewQueue(nil) succeeded")
	}
}

func TestInit(t *testing.T) {
	if rc := Init("t", func() error { return nil }); rc != 0 {
		t.Errorf("ok: %d", rc)
	}
	if rc := Init("t", func() error { return Errorf(9, "nine") }); rc != 9 {
		t.Errorf("error: %d", rc)
	}
	if rc := Init("t", func() error { panic("x") }); rc != 2 {
		t.Errorf("panic: %d", rc)
	}
}
