// Command testrt is the Go runtime the tests drive (t/rt_go.rs): restyffi.Serve with a handler
// whose request names what to do, and a cfg that picks how libffi_init behaves.
//
// cfg: comma-separated key=value pairs
//
//	init=ok|fail|panic   libffi_init succeeds, returns an *Error with rc (default 3), or panics
//	rc=N                 the rc of init=fail
//	raw=1                serve with the raw Queue/Task API instead of Serve
//	max_in_flight=N      restyffi.Options.MaxInFlight
//	tag=...              ignored (a distinct cfg, so a distinct ngx.load_ffi object)
//
// requests: "sleep:MS" (sleeps, or returns early when the context is cancelled, counting it),
// "error:MSG", "rcerror:RC:MSG", "panic:MSG", "stats", "version"; anything else is echoed.
package main

import "C"

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"example.invalid/resty_grpc_zc/runtimes/go/restyffi"
)

// version is set at link time (-ldflags "-X main.version=...") by the reload test.
var version = "v1"

var (
	inits     atomic.Int64 // successful libffi_init calls in this process
	cancelled atomic.Int64 // sleeps that ended because their context was cancelled
	sleeping  atomic.Int64 // sleeps in progress
	servers   []*restyffi.Server
	serversMu = make(chan struct{}, 1)
)

func handle(ctx context.Context, req []byte) ([]byte, error) {
	s := string(req)
	cmd, arg, _ := strings.Cut(s, ":")
	switch cmd {
	case "sleep":
		ms, err := strconv.Atoi(arg)
		if err != nil {
			return nil, fmt.Errorf("bad sleep %q", arg)
		}
		sleeping.Add(1)
		defer sleeping.Add(-1)
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
			return req, nil
		case <-ctx.Done():
			cancelled.Add(1)
			return nil, ctx.Err()
		}
	case "error":
		return nil, errors.New(arg)
	case "rcerror":
		rc, msg, _ := strings.Cut(arg, ":")
		n, _ := strconv.Atoi(rc)
		return nil, restyffi.Errorf(n, "%s", msg)
	case "panic":
		panic(arg)
	case "stats":
		return []byte(stats()), nil
	case "version":
		return []byte(version), nil
	case "exec":
		// Runs `sh -c "exit 3"` N times with os/exec; reports how each Wait ended.
		n, _ := strconv.Atoi(arg)
		results := map[string]int{}
		for i := 0; i < n; i++ {
			err := exec.Command("/bin/sh", "-c", "exit 3").Run()
			var ee *exec.ExitError
			switch {
			case errors.As(err, &ee) && ee.ExitCode() == 3:
				results["status3"]++
			case err != nil:
				results[err.Error()]++
			default:
				results["ok"]++
			}
		}
		return []byte(fmt.Sprint(results)), nil
	}
	return req, nil
}

func stats() string {
	var st restyffi.Stats
	serversMu <- struct{}{}
	for _, s := range servers {
		x := s.Stats()
		st.Served += x.Served
		st.Failed += x.Failed
		st.Panics += x.Panics
		st.Cancelled += x.Cancelled
	}
	<-serversMu
	return fmt.Sprintf("inits=%d cancelled=%d ctx_cancelled=%d sleeping=%d panics=%d failed=%d "+
		"pinned=%v sigchld=%s forwarded=%d",
		inits.Load(), cancelled.Load(), st.Cancelled, sleeping.Load(), st.Panics, st.Failed,
		restyffi.Pinned(), restyffi.SigchldMode(), restyffi.SigchldForwarded())
}

// serveRaw is the raw style: one loop, the handler inline, each task answered once.
func serveRaw(tq unsafe.Pointer) error {
	q, err := restyffi.NewQueue(tq)
	if err != nil {
		return err
	}
	go func() {
		for t := q.Poll(); t != nil; t = q.Poll() {
			req := t.RequestView()
			if string(req) == "stats" {
				t.Respond(0, []byte(stats()))
				continue
			}
			t.Respond(0, append([]byte("raw:"), req...))
		}
		restyffi.Log(restyffi.LevelNotice, "go testrt: raw queue finished")
	}()
	return nil
}

//export libffi_init
func libffi_init(cfgp *C.char, tq unsafe.Pointer) C.int {
	cfg := ""
	if cfgp != nil {
		cfg = C.GoString(cfgp)
	}
	return C.int(restyffi.Init("go testrt", func() error {
		opts := restyffi.Options{Name: "go testrt"}
		initMode, rc, raw := "ok", 3, false
		for _, kv := range strings.Split(cfg, ",") {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return restyffi.Errorf(4, "bad cfg %q: want key=value", kv)
			}
			switch k {
			case "init":
				initMode = v
			case "rc":
				rc, _ = strconv.Atoi(v)
			case "raw":
				raw = v == "1"
			case "max_in_flight":
				opts.MaxInFlight, _ = strconv.Atoi(v)
			case "tag":
			default:
				return restyffi.Errorf(4, "bad cfg %q: unknown key %q", cfg, k)
			}
		}
		switch initMode {
		case "fail":
			return restyffi.Errorf(rc, "init=fail asked for rc %d", rc)
		case "panic":
			panic("init=panic asked for it")
		}
		if raw {
			if err := serveRaw(tq); err != nil {
				return err
			}
		} else {
			s, err := restyffi.ServeWith(tq, handle, opts)
			if err != nil {
				return err
			}
			serversMu <- struct{}{}
			servers = append(servers, s)
			<-serversMu
		}
		inits.Add(1)
		return nil
	}))
}

func main() {}
