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
/// for SIGCHLD on a signalfd, reap the child. Prints `signalfd <r> <reap result>`.
/// `/execute`: os.execute (glibc's system(), which blocks SIGCHLD while it waits) `n` times;
/// prints how many returned the child's status. `/pipe`: ngx.pipe itself where the nginx
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
        local pfd = ffi.new("struct t_pollfd[1]")
        pfd[0].fd, pfd[0].events = fd, 1
        local r = C.poll(pfd, 1, tonumber(ngx.var.arg_wait_ms) or 3000)
        local buf = ffi.new("unsigned char[128]")
        if r == 1 then
            assert(C.read(fd, buf, 128) == 128)
        end
        C.close(fd)
        ngx.say("signalfd ", r, " ", SIG.reap(pid))
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
        .server_conf(CHILD_LOCATIONS);
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
    for _ in 0..20 {
        assert_eq!(n.get_ok("/pipe_like"), "signalfd 1 status 7\n");
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
    let r = n.get_ok("/pipe_like?wait_ms=500");
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
fn os_execute_without_the_forwarder() {
    let n = child_nginx("go-execute-keep", false, &[("RESTYFFI_SIGCHLD", "keep")]);
    assert!(n.get_ok("/load").contains("sigchld=keep"));
    let r = n.get_ok("/execute?n=200");
    eprintln!("os.execute without the forwarder: {r}");
    n.assert_log_clean(&[]);
}
