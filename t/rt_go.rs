//! Go runtimes on a real nginx: the echo users copy (`runtimes/go/echo`, built by `make build`
//! into `target/release/libffi_go_echo.so`), the test runtime `t/runtimes/go/testrt` (the
//! `restyffi` helper's every path, driven by the request) and a runtime in lua-resty-ffi's raw
//! style (`t/runtimes/go/article`). The tests build the Go libraries themselves (offline, with
//! `runtimes/go/build.sh`; Go's cache makes a rebuild a link).
//!
//! One Go runtime per process: each nginx here loads one Go library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{Nginx, NginxBuilder};

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

/// Builds the Go main package `pkg` (relative to the repository) into `out` with
/// `runtimes/go/build.sh`, passing `args` to `go build`.
fn go_build(out: &Path, pkg: &str, args: &[&str]) {
    let root = testkit::repo_root();
    let status = Command::new(root.join("runtimes/go/build.sh"))
        .arg(out)
        .arg(root.join(pkg))
        .args(args)
        .status()
        .expect("running runtimes/go/build.sh");
    assert!(status.success(), "building {pkg}: {status}");
}

fn go_test_dir() -> PathBuf {
    testkit::repo_root().join("target/go-test")
}

/// The echo users copy, where `make build` puts it.
fn echo_lib() -> &'static str {
    static LIB: OnceLock<String> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = testkit::lib_dir().join("libffi_go_echo.so");
        go_build(&out, "runtimes/go/echo", &[]);
        out.display().to_string()
    })
}

/// The test runtime (`t/runtimes/go/testrt`).
fn test_lib() -> &'static str {
    static LIB: OnceLock<String> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = go_test_dir().join("libffi_go_test.so");
        go_build(&out, "t/runtimes/go/testrt", &[]);
        out.display().to_string()
    })
}

/// The raw-style runtime (`t/runtimes/go/article`).
fn article_lib() -> &'static str {
    static LIB: OnceLock<String> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = go_test_dir().join("libffi_go_article.so");
        go_build(&out, "t/runtimes/go/article", &[]);
        out.display().to_string()
    })
}

/// `init_by_lua` defining `payload(n, seed)` and the global `LIB`, the Go library's path.
fn http_conf(lib: &str) -> String {
    format!(
        "init_by_lua_block {{ {} LIB = \"{lib}\" }}\n{INIT}",
        testkit::LUA_PAYLOAD
    )
}

fn nginx(name: &str, workers: usize, lib: &str, server: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(workers)
        .http_conf(&http_conf(lib))
        .server_conf(server)
        .start()
}

/// A location `/call?cfg=&req=` calling the test runtime: prints `ok res`, `false rc rsp` or
/// `false err`.
const CALL: &str = r#"
location /call {
    content_by_lua_block {
        local rt, rc = ngx.load_ffi(LIB, ngx.var.arg_cfg)
        if not rt then
            return ngx.say("load failed ", rc)
        end
        local timeout = tonumber(ngx.var.arg_timeout)
        local ok, a, b = rt:call(ngx.unescape_uri(ngx.var.arg_req or ""),
                                 timeout and {timeout = timeout} or nil)
        ngx.say(tostring(ok), " ", tostring(a), b ~= nil and (" " .. tostring(b)) or "")
    }
}
"#;

/// `/call?req=stats` parsed into (key, value) pairs.
fn stats(n: &Nginx, cfg: &str) -> Vec<(String, String)> {
    let text = n.get_ok(&format!("/call?cfg={cfg}&req=stats"));
    let text = text
        .strip_prefix("true ")
        .unwrap_or_else(|| panic!("stats: {text}"));
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn stat(n: &Nginx, cfg: &str, key: &str) -> i64 {
    stats(n, cfg)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in stats"))
        .1
        .parse()
        .unwrap()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// LuaJIT FFI for the child-reaping tests: signal masks, a signalfd (what lua-nginx-module's
/// ngx.pipe uses to learn that a child exited), posix_spawn and waitpid.
const SIGNAL_FFI: &str = r#"
    local ffi = require "ffi"
    ffi.cdef [[
        typedef struct { unsigned long val[16]; } t_sigset;
        struct t_pollfd { int fd; short events; short revents; };
        int sigemptyset(t_sigset *set);
        int sigaddset(t_sigset *set, int signum);
        int pthread_sigmask(int how, const t_sigset *set, t_sigset *old);
        int signalfd(int fd, const t_sigset *mask, int flags);
        int posix_spawn(int *pid, const char *path, const void *actions, const void *attr,
                        char *const argv[], char *const envp[]);
        int waitpid(int pid, int *status, int options);
        int poll(struct t_pollfd *fds, unsigned long n, int timeout);
        long read(int fd, void *buf, size_t n);
        int close(int fd);
        int usleep(unsigned int us);
    ]]
    SIG = { ffi = ffi, C = ffi.C, SIGCHLD = 17, SIG_BLOCK = 0, SIG_SETMASK = 2 }
    function SIG.chld_set()
        local set = ffi.new("t_sigset")
        ffi.C.sigemptyset(set)
        ffi.C.sigaddset(set, 17)
        return set
    end
    -- Spawns `sh -c script`; returns its pid.
    function SIG.spawn(script)
        local argv = ffi.new("char *[4]")
        local keep = { ffi.new("char[3]", "sh"), ffi.new("char[3]", "-c"),
                       ffi.new("char[?]", #script + 1, script) }
        argv[0], argv[1], argv[2], argv[3] = keep[1], keep[2], keep[3], nil
        local envp = ffi.new("char *[1]")
        local pid = ffi.new("int[1]")
        local rc = ffi.C.posix_spawn(pid, "/bin/sh", nil, nil, argv, envp)
        assert(rc == 0, "posix_spawn: " .. rc)
        return pid[0]
    end
    -- waitpid(pid): "status N" or "errno E" (10 is ECHILD: someone else reaped it).
    function SIG.reap(pid)
        local st = ffi.new("int[1]")
        local r = ffi.C.waitpid(pid, st, 0)
        if r == pid then
            return "status " .. math.floor(st[0] / 256) % 256
        end
        return "errno " .. ffi.errno()
    end
"#;

/// `/pipe_like`: what ngx.pipe does on OpenResty, with SIGCHLD blocked on the main thread since
/// `init_worker` (as lua-nginx-module blocks it before any runtime starts): spawn a child, wait
/// for SIGCHLD on a signalfd (`sleep_ms` after the spawn, then up to `wait_ms`), reap the
/// child. Prints `signalfd <r> <reap result>`.
/// `/execute`: os.execute (glibc's system(), which blocks SIGCHLD while it waits) `n` times;
/// prints how many returned the child's status; `/popen`: the same for io.popen's close.
/// `/call?req=exec:N`: os/exec in the Go runtime. `/pipe`: ngx.pipe itself where the nginx
/// binary has it (prints `absent` on Debian's lua-nginx-module, which lacks its C half).
const CHILD_LOCATIONS: &str = r#"
location /load {
    content_by_lua_block {
        local rt = assert(ngx.load_ffi(LIB))
        local ok, res = rt:call("stats")
        ngx.say(res)
    }
}
location /pipe_like {
    content_by_lua_block {
        local C, ffi = SIG.C, SIG.ffi
        local fd = C.signalfd(-1, SIG.chld_set(), 2048 + 524288)   -- SFD_NONBLOCK | SFD_CLOEXEC
        assert(fd >= 0, "signalfd")
        local pid = SIG.spawn("exit 7")
        -- Blocked in nanosleep, the main thread does not look at the signalfd while the child
        -- exits: whichever thread takes SIGCHLD meanwhile runs nginx's handler.
        C.usleep((tonumber(ngx.var.arg_sleep_ms) or 0) * 1000)
        local pfd = ffi.new("struct t_pollfd[1]")
        pfd[0].fd, pfd[0].events = fd, 1
        local buf = ffi.new("unsigned char[128]")
        local wait_ms = tonumber(ngx.var.arg_wait_ms) or 3000
        ngx.update_time()
        local deadline = ngx.now() + wait_ms / 1000
        local got = 0
        repeat
            -- Readable, then EAGAIN happens when another thread dequeued the signal between
            -- the two; the event loop of ngx.pipe just waits for the next readiness.
            if C.poll(pfd, 1, wait_ms) == 1 and C.read(fd, buf, 128) == 128 then
                got = 1
            end
            ngx.update_time()
        until got == 1 or ngx.now() >= deadline
        C.close(fd)
        ngx.say("signalfd ", got, " ", SIG.reap(pid))
    }
}
location /execute {
    content_by_lua_block {
        local good, other = 0, {}
        for i = 1, tonumber(ngx.var.arg_n) do
            local rc = os.execute("exit 3")
            if rc == 768 or rc == 3 then
                good = good + 1
            else
                other[#other + 1] = tostring(rc)
            end
        end
        ngx.say(good, " ", table.concat(other, ","))
    }
}
location /popen {
    content_by_lua_block {
        local good, other = 0, {}
        for i = 1, tonumber(ngx.var.arg_n) do
            local f = io.popen("exit 3")
            f:read("*a")
            local ok, err = f:close()
            if ok then
                good = good + 1
            else
                other[#other + 1] = tostring(err)
            end
        end
        ngx.say(good, " ", table.concat(other, ","))
    }
}
location /pipe {
    content_by_lua_block {
        local C = require("ffi").C
        if not pcall(function() return C.ngx_http_lua_ffi_pipe_spawn end) then
            return ngx.say("absent")
        end
        local proc = assert(require("ngx.pipe").spawn({"sh", "-c", "exit 7"}))
        local ok, reason, status = proc:wait()
        ngx.say(tostring(ok), " ", tostring(reason), " ", tostring(status))
    }
}
"#;

/// nginx with the test runtime and the child-reaping locations; `block_chld` blocks SIGCHLD on
/// the main thread in `init_worker`, as lua-nginx-module does for ngx.pipe.
fn child_nginx(name: &str, block_chld: bool, env: &[(&str, &str)]) -> Nginx {
    let block = if block_chld {
        "SIG.C.pthread_sigmask(SIG.SIG_BLOCK, SIG.chld_set(), nil)"
    } else {
        ""
    };
    let mut b = NginxBuilder::new(name)
        .workers(1)
        .http_conf(&format!(
            "init_by_lua_block {{ {SIGNAL_FFI} LIB = \"{}\" }}\n\
             init_worker_by_lua_block {{ require \"resty_ffi\" {block} }}",
            test_lib()
        ))
        .server_conf(&format!("{CHILD_LOCATIONS}{CALL}"));
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

#[test]
fn sigchld_reaches_the_main_thread_with_a_go_runtime_loaded() {
    // Without a Go runtime: the only thread blocks SIGCHLD, the signalfd sees it.
    let n = child_nginx("go-chld", true, &[]);
    assert_eq!(n.get_ok("/pipe_like"), "signalfd 1 status 7\n");
    // The Go runtime's threads all unblock SIGCHLD; restyffi routes it back.
    let loaded = n.get_ok("/load");
    assert!(loaded.contains("sigchld=route"), "{loaded}");
    for _ in 0..10 {
        assert_eq!(n.get_ok("/pipe_like"), "signalfd 1 status 7\n");
        assert_eq!(n.get_ok("/pipe_like?sleep_ms=50"), "signalfd 1 status 7\n");
    }
    assert!(stat_of(&n.get_ok("/load"), "forwarded") >= 1);
    assert_eq!(n.get_ok("/pipe"), "absent\n");
    n.assert_log_clean(&[]);
}

fn stat_of(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .1
        .parse()
        .unwrap()
}

#[test]
fn without_the_forwarder_a_go_thread_steals_the_child() {
    let n = child_nginx("go-chld-keep", true, &[("RESTYFFI_SIGCHLD", "keep")]);
    let loaded = n.get_ok("/load");
    assert!(loaded.contains("sigchld=keep"), "{loaded}");
    // lua-resty-ffi issue #5: nginx's handler runs on a Go thread and reaps the child.
    let r = n.get_ok("/pipe_like?sleep_ms=300&wait_ms=0");
    assert_eq!(r, "signalfd 0 errno 10\n");
    let (found, log) = n.wait_log_contains("exited with code 7", Duration::from_secs(5));
    assert!(found, "{log}");
    n.assert_log_clean(&[]);
}

#[test]
fn os_execute_returns_the_status_with_a_go_runtime_loaded() {
    let n = child_nginx("go-execute", false, &[]);
    assert!(n.get_ok("/load").contains("sigchld=route"));
    assert_eq!(n.get_ok("/execute?n=200"), "200 \n");
    n.assert_log_clean(&[]);
}

#[test]
fn echo_is_byte_for_byte() {
    let n = nginx(
        "go-echo",
        1,
        echo_lib(),
        r#"
        location /sizes {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi(LIB, ngx.var.arg_cfg))
                for _, size in ipairs({1, 2, 255, 4096, 65536, 1048576, 16 * 1048576}) do
                    local p = payload(size, size % 251)
                    local ok, res, err = rt:echo(p)
                    assert(ok == true and err == nil, "call failed at " .. size)
                    assert(res == p, "mismatch at size " .. size)
                end
                local ok, res = rt:echo("a\0b\0\0")
                assert(ok and res == "a\0b\0\0", "NUL bytes")
                local ok, res, err = rt:echo(nil)
                assert(ok == true and res == nil and err == nil, "nil request")
                local ok, res = rt:echo("")
                assert(ok == true and res == "", "empty request: " .. tostring(res))
                ngx.say("ok")
            }
        }
        location /bad_cfg {
            content_by_lua_block {
                local rt, rc = ngx.load_ffi(LIB, "bogus")
                ngx.say(tostring(rt), " ", tostring(rc))
            }
        }
        location /body {
            client_max_body_size 32m;
            client_body_buffer_size 32m;
            content_by_lua_block {
                ngx.req.read_body()
                local rt = assert(ngx.load_ffi(LIB))
                local ok, res = rt:echo(ngx.req.get_body_data())
                assert(ok)
                ngx.print(res)
            }
        }
        "#,
    );
    // One goroutine per call, and every call on the polling goroutine.
    assert_eq!(n.get_ok("/sizes"), "ok\n");
    assert_eq!(n.get_ok("/sizes?cfg=inline"), "ok\n");
    let data = testkit::payload(16 << 20, 7);
    let r = n.post("/body", &data);
    assert_eq!(r.status, 200);
    assert!(r.body == data, "16 MiB body differs");
    assert_eq!(n.get_ok("/bad_cfg"), "nil 1\n");
    n.assert_log_clean(&["go echo: libffi_init failed: unknown cfg \"bogus\""]);
}

/// Echoes a payload derived from `id` through the Go echo.
const ECHO_BY_ID: &str = r#"
location /id {
    content_by_lua_block {
        local id = tonumber(ngx.var.arg_id)
        local rt = assert(ngx.load_ffi(LIB))
        local p = payload(id % 3000, id % 256)
        local ok, res = rt:echo(p)
        if not ok or res ~= p then
            ngx.status = 500
            return ngx.say("call failed: ", tostring(res))
        end
        ngx.print(res)
    }
}
"#;

#[test]
fn ten_thousand_calls_200_concurrent_2_workers() {
    let n = nginx("go-load", 2, echo_lib(), ECHO_BY_ID);
    let urls: Vec<String> = (0..10_000).map(|i| n.url(&format!("/id?id={i}"))).collect();
    let bodies = testkit::get_all_ok(urls, 200);
    for (i, body) in bodies.iter().enumerate() {
        assert!(
            *body == testkit::payload(i % 3000, i % 256),
            "reply {i} differs"
        );
    }
    n.assert_log_clean(&[]);
}

#[test]
fn errors_panics_and_rc() {
    let n = nginx("go-errors", 1, test_lib(), CALL);
    assert_eq!(n.get_ok("/call?req=error:boom"), "false 1 boom\n");
    assert_eq!(
        n.get_ok("/call?req=rcerror:7:no%20such%20key"),
        "false 7 no such key\n"
    );
    // rc 0 in an *Error still fails the call
    assert_eq!(n.get_ok("/call?req=rcerror:0:zero"), "false 1 zero\n");
    let pid = n.worker_pids();
    for _ in 0..3 {
        assert_eq!(
            n.get_ok("/call?req=panic:kaboom"),
            "false 1 panic: kaboom\n"
        );
    }
    // The worker is unhurt and keeps serving.
    assert_eq!(n.worker_pids(), pid);
    assert_eq!(n.get_ok("/call?req=hello"), "true hello\n");
    assert_eq!(stat(&n, "", "panics"), 3);
    assert_eq!(stat(&n, "", "failed"), 6);
    let log = n.error_log();
    assert!(log.contains("go testrt: handler panic: kaboom"), "{log}");
    assert!(
        log.contains("runtime/debug.Stack"),
        "the stack is logged:\n{log}"
    );
    n.assert_log_clean(&["go testrt: handler panic: kaboom"]);
}

#[test]
fn one_goroutine_per_task() {
    let n = nginx(
        "go-concurrent",
        1,
        test_lib(),
        r#"
        location /many {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi(LIB))
                ngx.update_time()
                local t0 = ngx.now()
                local threads = {}
                for i = 1, 100 do
                    threads[i] = ngx.thread.spawn(function() return rt:call("sleep:300") end)
                end
                for i = 1, 100 do
                    local okw, ok, res = ngx.thread.wait(threads[i])
                    assert(okw and ok and res == "sleep:300", tostring(res))
                end
                ngx.update_time()
                ngx.say(ngx.now() - t0 < 3 and "concurrent" or ("serial " .. (ngx.now() - t0)))
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/many"), "concurrent\n");
    n.assert_log_clean(&[]);
}

#[test]
fn max_in_flight_bounds_the_handlers() {
    let n = nginx(
        "go-bounded",
        1,
        test_lib(),
        r#"
        location /bounded {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi(LIB, "max_in_flight=2"))
                ngx.update_time()
                local t0 = ngx.now()
                local threads = {}
                for i = 1, 6 do
                    threads[i] = ngx.thread.spawn(function() return rt:call("sleep:200") end)
                end
                for i = 1, 6 do
                    local okw, ok = ngx.thread.wait(threads[i])
                    assert(okw and ok)
                end
                ngx.update_time()
                -- 6 sleeps of 200 ms, 2 at a time: at least 3 rounds
                ngx.say(ngx.now() - t0 >= 0.55 and "bounded" or ("unbounded " .. (ngx.now() - t0)))
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/bounded"), "bounded\n");
    n.assert_log_clean(&[]);
}

#[test]
fn timeout_cancels_the_context() {
    let n = nginx("go-timeout", 1, test_lib(), CALL);
    let t0 = Instant::now();
    assert_eq!(
        n.get_ok("/call?req=sleep:20000&timeout=100"),
        "false timeout\n"
    );
    // The sweeper sees task_cancelled, the handler's context is cancelled, the sleep ends.
    assert!(
        eventually(Duration::from_secs(5), || stat(&n, "", "cancelled") == 1),
        "{:?}",
        stats(&n, "")
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(stat(&n, "", "ctx_cancelled"), 1);
    assert_eq!(stat(&n, "", "sleeping"), 0);
    n.assert_log_clean(&[]);
}

const GC: &str = r#"
location /gc {
    content_by_lua_block {
        collectgarbage()
        collectgarbage()
        ngx.say("ok")
    }
}
"#;

#[test]
fn aborted_requests_cancel_the_context() {
    let n = NginxBuilder::new("go-abort")
        .workers(1)
        .http_conf(&http_conf(test_lib()))
        .server_conf(&format!("lua_check_client_abort on;\n{CALL}{GC}"))
        .start();
    assert_eq!(stat(&n, "", "cancelled"), 0);
    n.hang_up("/call?req=sleep:20000", 10, Duration::from_millis(200));
    // An aborted request's task is released by its finalizer, so the host reports it
    // cancelled once Lua's garbage collector has run.
    assert!(
        eventually(Duration::from_secs(5), || {
            n.get_ok("/gc");
            stat(&n, "", "cancelled") == 10
        }),
        "{:?}",
        stats(&n, "")
    );
    assert_eq!(stat(&n, "", "sleeping"), 0);
    n.assert_log_clean(&[]);
}

/// Starts `count` calls of `req` in background threads.
fn calls_in_flight(
    n: &Nginx,
    count: usize,
    req: &str,
) -> Vec<thread::JoinHandle<Result<testkit::Resp, String>>> {
    (0..count)
        .map(|i| {
            let url = n.url(&format!("/call?cfg=tag={i}&req={req}"));
            thread::spawn(move || testkit::Client::new().get(&url))
        })
        .collect()
}

/// Waits until `count` sleeps run in the runtime (across workers: each worker answers for its
/// own process, so ask until every one has been seen with its share).
fn wait_sleeping(n: &Nginx, count: i64) {
    assert!(
        eventually(Duration::from_secs(10), || {
            let seen: std::collections::HashMap<i32, i64> = (0..20)
                .map(|_| {
                    let line = n.get_ok("/sleeping");
                    let (pid, c) = line.trim().split_once(' ').unwrap();
                    (pid.parse().unwrap(), c.parse().unwrap())
                })
                .collect();
            seen.values().sum::<i64>() >= count
        }),
        "{count} calls did not start"
    );
}

const SLEEPING: &str = r#"
location /sleeping {
    content_by_lua_block {
        local rt = assert(ngx.load_ffi(LIB))
        local ok, res = rt:call("stats")
        ngx.say(ngx.worker.pid(), " ", res:match("sleeping=(%d+)"))
    }
}
"#;

#[test]
fn reload_with_calls_in_flight() {
    let mut n = nginx("go-reload", 2, test_lib(), &format!("{CALL}{SLEEPING}"));
    let old = n.worker_pids();
    let calls = calls_in_flight(&n, 40, "sleep:600");
    wait_sleeping(&n, 40);
    n.reload();
    for c in calls {
        let r = c
            .join()
            .unwrap()
            .expect("an in-flight call survives the reload");
        assert_eq!(r.text(), "true sleep:600\n");
    }
    assert!(
        n.wait_pids_gone(&old, Duration::from_secs(5)),
        "old workers exit"
    );
    assert_eq!(n.get_ok("/call?req=after"), "true after\n");
    n.assert_log_clean(&[]);
}

#[test]
fn quit_with_calls_in_flight() {
    let mut n = nginx("go-quit", 2, test_lib(), &format!("{CALL}{SLEEPING}"));
    let calls = calls_in_flight(&n, 40, "sleep:600");
    wait_sleeping(&n, 40);
    n.quit_within(Duration::from_secs(3));
    for c in calls {
        let r = c
            .join()
            .unwrap()
            .expect("an in-flight call completes before quit");
        assert_eq!(r.text(), "true sleep:600\n");
    }
    n.assert_log_clean(&[]);
}

#[test]
fn quit_respects_worker_shutdown_timeout() {
    let mut n = NginxBuilder::new("go-shutdown-timeout")
        .workers(1)
        .main_conf("worker_shutdown_timeout 1s;")
        .http_conf(&http_conf(test_lib()))
        .server_conf(&format!("{CALL}{SLEEPING}"))
        .start();
    let calls = calls_in_flight(&n, 10, "sleep:30000");
    wait_sleeping(&n, 10);
    n.quit_within(Duration::from_secs(4));
    for c in calls {
        // nginx closed the connections: an error or an incomplete reply, never a hang.
        let _ = c.join().unwrap();
    }
    n.assert_log_clean(&[]);
}

#[test]
fn init_failures_leave_the_worker_serving() {
    let n = nginx(
        "go-init",
        1,
        test_lib(),
        r#"
        location /t {
            content_by_lua_block {
                local out = {}
                for _, cfg in ipairs({"bogus=1", "nokey", "init=fail,rc=9", "init=panic"}) do
                    local rt, rc = ngx.load_ffi(LIB, cfg)
                    out[#out + 1] = cfg .. " -> " .. tostring(rt) .. " " .. tostring(rc)
                end
                local rt = assert(ngx.load_ffi(LIB, "tag=good"))
                local ok, res = rt:call("still here")
                out[#out + 1] = tostring(ok) .. " " .. res
                ngx.say(table.concat(out, "\n"))
            }
        }
        "#,
    );
    let pid = n.worker_pids();
    assert_eq!(
        n.get_ok("/t"),
        "bogus=1 -> nil 4\n\
         nokey -> nil 4\n\
         init=fail,rc=9 -> nil 9\n\
         init=panic -> nil 2\n\
         true still here\n"
    );
    assert_eq!(n.worker_pids(), pid);
    let log = n.error_log();
    for line in [
        "go testrt: libffi_init failed: bad cfg \"bogus=1\": unknown key \"bogus\"",
        "go testrt: libffi_init failed: bad cfg \"nokey\": want key=value",
        "go testrt: libffi_init failed: init=fail asked for rc 9",
        "go testrt: panic in libffi_init: init=panic asked for it",
    ] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
    assert!(
        log.contains("main.libffi_init"),
        "the stack is logged:\n{log}"
    );
    n.assert_log_clean(&[
        "go testrt: libffi_init failed",
        "go testrt: panic in libffi_init",
    ]);
}

#[test]
fn unpin_unload_and_load_again_keeps_the_runtime() {
    let n = nginx(
        "go-unpin",
        1,
        test_lib(),
        r#"
        location /t {
            content_by_lua_block {
                local function mapped()
                    local f = assert(io.open("/proc/self/maps"))
                    local maps = f:read("*a")
                    f:close()
                    return maps:find(LIB, 1, true) ~= nil
                end
                local opts = {unpin = true}
                local rt = assert(ngx.load_ffi(LIB, "tag=hot?", opts))
                local _, before = rt:call("stats")
                rt:__unload()
                local ok, err = rt:call("x")
                assert(ok == false and err == "task queue is finished", tostring(err))
                rt = nil
                -- LuaJIT dlcloses the unpinned handle once it is garbage
                collectgarbage()
                collectgarbage()
                local again = assert(ngx.load_ffi(LIB, "tag=hot?", opts))
                local _, after = again:call("stats")
                ngx.say(before:match("inits=%d+"), " ", after:match("inits=%d+"), " ",
                        tostring(mapped()), " ", after:match("pinned=%a+"))
            }
        }
        "#,
    );
    // The same Go runtime answers after the dlclose: its state survived (no second start).
    assert_eq!(n.get_ok("/t"), "inits=1 inits=2 true pinned=true\n");
    n.assert_log_clean(&[]);
}

#[test]
fn new_code_is_picked_up_by_an_nginx_reload() {
    let dir = go_test_dir().join("hot");
    let lib = dir.join("libffi_go_hot.so");
    go_build(
        &lib,
        "t/runtimes/go/testrt",
        &["-ldflags", "-X main.version=A"],
    );
    let mut n = nginx("go-hot", 1, &lib.display().to_string(), CALL);
    assert_eq!(n.get_ok("/call?req=version"), "true A\n");
    // A new build replaces the file by a rename (never rewrite a mapped library in place).
    go_build(
        &lib,
        "t/runtimes/go/testrt",
        &["-ldflags", "-X main.version=B"],
    );
    assert_eq!(
        n.get_ok("/call?req=version"),
        "true A\n",
        "the old worker keeps A"
    );
    n.reload();
    assert_eq!(n.get_ok("/call?req=version"), "true B\n");
    n.assert_log_clean(&[]);
}

#[test]
fn raw_api_and_the_articles_raw_style() {
    let n = nginx("go-raw", 1, test_lib(), CALL);
    assert_eq!(n.get_ok("/call?cfg=raw=1&req=abc"), "true raw:abc\n");
    n.assert_log_clean(&[]);

    let n = nginx(
        "go-article",
        1,
        article_lib(),
        r#"
        location /t {
            content_by_lua_block {
                local demo = ngx.load_ffi(LIB)
                local ok, res = demo:echo("hello")
                assert(ok)
                assert(res == "hello")
                local p = payload(100000, 3)
                local ok, res = demo:echo(p)
                assert(ok and res == p)
                assert(select(2, demo:echo("")) == "")
                assert(select(2, demo:echo(nil)) == nil)
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "ok\n");
    n.assert_log_clean(&[]);
}

/// LuaJIT FFI reading signal dispositions (glibc's x86-64 `struct sigaction`).
const SIGACTION_FFI: &str = r#"
    local ffi = require "ffi"
    ffi.cdef [[
        struct t_sigaction { void *handler; unsigned long mask[16]; int flags; void *restorer; };
        int sigaction(int sig, const struct t_sigaction *act, struct t_sigaction *old);
        typedef struct { void *sp; int flags; size_t size; } t_stack;
        int sigaltstack(const t_stack *ss, t_stack *old);
    ]]
    -- nginx's signals, and those the Go runtime takes in a c-shared library.
    NGINX_SIGNALS = { HUP = 1, INT = 2, QUIT = 3, USR1 = 10, USR2 = 12, ALRM = 14,
                      TERM = 15, CHLD = 17, WINCH = 28, IO = 29 }
    GO_SIGNALS = { BUS = 7, FPE = 8, SEGV = 11, PIPE = 13, URG = 23, PROF = 27 }
    function disposition(sig)
        local sa = ffi.new("struct t_sigaction")
        assert(ffi.C.sigaction(sig, nil, sa) == 0)
        local onstack = bit.band(sa.flags, 0x08000000) ~= 0
        return tostring(ffi.cast("uintptr_t", sa.handler)), onstack
    end
"#;

/// What loading a Go library does to each signal's disposition in the worker: `same`/`changed`
/// handler, `+onstack` when SA_ONSTACK is set; and the main thread's alternate stack.
fn dispositions(name: &str, env: &[(&str, &str)]) -> String {
    let mut b = NginxBuilder::new(name);
    for (k, v) in env {
        b = b.env(k, v);
    }
    let n = b
        .workers(1)
        .http_conf(&format!(
            "init_by_lua_block {{ {SIGACTION_FFI} LIB = \"{}\" }}\n\
             init_worker_by_lua_block {{\n\
                 require \"resty_ffi\"\n\
                 BEFORE = {{}}\n\
                 for name, sig in pairs(NGINX_SIGNALS) do BEFORE[name] = disposition(sig) end\n\
                 for name, sig in pairs(GO_SIGNALS) do BEFORE[name] = disposition(sig) end\n\
             }}",
            test_lib()
        ))
        .server_conf(
            r#"
            location /t {
                content_by_lua_block {
                    assert(ngx.load_ffi(LIB))
                    local out = {}
                    local names = {}
                    for name in pairs(NGINX_SIGNALS) do names[#names + 1] = name end
                    for name in pairs(GO_SIGNALS) do names[#names + 1] = name end
                    table.sort(names)
                    for _, name in ipairs(names) do
                        local sig = NGINX_SIGNALS[name] or GO_SIGNALS[name]
                        local h, onstack = disposition(sig)
                        out[#out + 1] = name .. "=" .. (h == BEFORE[name] and "same" or "changed")
                                        .. (onstack and "+onstack" or "")
                    end
                    local ffi = require "ffi"
                    local st = ffi.new("t_stack")
                    ffi.C.sigaltstack(nil, st)
                    out[#out + 1] = "altstack=" .. (bit.band(st.flags, 2) ~= 0 and "off" or "on")
                    ngx.say(table.concat(out, " "))
                }
            }
            "#,
        )
        .start();
    let r = n.get_ok("/t");
    n.assert_log_clean(&[]);
    r
}

#[test]
fn go_leaves_nginx_signal_handlers_alone() {
    // The Go runtime takes the synchronous signals, SIGPIPE and SIGURG (preemption), keeps
    // nginx's handlers (adding SA_ONSTACK), and leaves no alternate stack on the main thread;
    // restyffi's SIGCHLD forwarder is the one change to an nginx signal.
    let nginx = "FPE=changed+onstack HUP=same+onstack INT=same+onstack IO=same+onstack PIPE=changed+onstack \
                 PROF=same QUIT=same+onstack SEGV=changed+onstack TERM=same+onstack \
                 URG=changed+onstack USR1=same+onstack USR2=same+onstack WINCH=same+onstack \
                 altstack=off\n";
    assert_eq!(
        dispositions("go-signals", &[]),
        format!("ALRM=same+onstack BUS=changed+onstack CHLD=changed+onstack {nginx}")
    );
    assert_eq!(
        dispositions("go-signals-keep", &[("RESTYFFI_SIGCHLD", "keep")]),
        format!("ALRM=same+onstack BUS=changed+onstack CHLD=same+onstack {nginx}")
    );
}

#[test]
fn noreap_leaves_every_child_to_its_owner() {
    // nginx's worker handler reaps every child (waitpid(-1)), with or without Go: io.popen's
    // close and Go's os/exec lose their child's status to it. RESTYFFI_SIGCHLD=noreap stops
    // running it; each child is then reaped by whoever waits for it.
    let n = child_nginx("go-noreap", false, &[("RESTYFFI_SIGCHLD", "noreap")]);
    assert!(n.get_ok("/load").contains("sigchld=noreap"));
    assert_eq!(n.get_ok("/call?req=exec:100"), "true map[status3:100]\n");
    assert_eq!(n.get_ok("/popen?n=50"), "50 \n");
    assert_eq!(n.get_ok("/execute?n=100"), "100 \n");
    n.assert_log_clean(&[]);
    let n = child_nginx("go-noreap-pipe", true, &[("RESTYFFI_SIGCHLD", "noreap")]);
    assert!(n.get_ok("/load").contains("sigchld=noreap"));
    for _ in 0..5 {
        assert_eq!(n.get_ok("/pipe_like?sleep_ms=50"), "signalfd 1 status 7\n");
    }
    n.assert_log_clean(&[]);
}
