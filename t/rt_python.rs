//! The Python loader (`libffi_python3.so`) on a real nginx with Debian's CPython: the article's
//! raw cffi runtime, the `resty_ffi` helper (threads and asyncio), failures, hot reload,
//! virtualenvs, reload and quit.
//!
//! Python modules come from `t/runtimes/python` and the helper from `loaders/python`, through
//! `PYTHONPATH` (declared with `env PYTHONPATH;`). Every test checks that error.log has no
//! `[alert]`, `[crit]`, `[emerg]` and no unexpected `[error]`.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{by_id, Nginx, NginxBuilder};

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

/// The Python the loader is built against.
const PYTHON: &str = "/usr/bin/python3";

fn python_path() -> String {
    let root = testkit::repo_root();
    format!(
        "{}:{}",
        root.join("loaders/python").display(),
        root.join("t/runtimes/python").display()
    )
}

fn builder(name: &str, workers: usize) -> NginxBuilder {
    NginxBuilder::new(name)
        .workers(workers)
        .env("PYTHONPATH", &python_path())
        // No __pycache__ in the source tree, and no stale bytecode for rewritten modules.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .http_conf(&format!(
            "init_by_lua_block {{ {} }}\nlua_check_client_abort on;\n{INIT}",
            testkit::LUA_PAYLOAD
        ))
}

fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    builder(name, workers).server_conf(server).start()
}

/// A fresh scratch folder `target/t-python/<name>-<pid>`.
fn scratch(name: &str) -> PathBuf {
    let dir = testkit::repo_root()
        .join("target/t-python")
        .join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Waits until error.log has `count` lines containing `needle`; returns the log.
fn wait_log_count(n: &Nginx, needle: &str, count: usize, timeout: Duration) -> String {
    let until = Instant::now() + timeout;
    loop {
        let log = n.error_log();
        let seen = log.matches(needle).count();
        if seen >= count {
            return log;
        }
        assert!(
            Instant::now() < until,
            "{seen} of {count} lines {needle:?} after {timeout:?}:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The article's example, exactly: `ffi/echo.py` in the raw cffi style, through the article's
/// Lua lines; then `__unload`, a dlclose of the unpinned handle, and a second load that
/// reloads the module (`?`) in the same interpreter.
#[test]
fn article_example_runs_as_written() {
    let n = nginx(
        "py-article",
        1,
        r#"
        location /article {
            content_by_lua_block {
                local demo = ngx.load_ffi("ffi_python3", "ffi.echo?,init", {is_global = true, unpin = true})
                local ok, res = demo:echo("hello")
                assert(ok)
                assert(res == "hello")
                -- rsp_len 0: a C string, so the answer ends at the first NUL
                local ok, res = demo:echo("abc\0def")
                assert(ok and res == "abc", tostring(res))
                ngx.say("ok")
            }
        }
        location /unload {
            content_by_lua_block {
                local demo = ngx.load_ffi("ffi_python3", "ffi.echo?,init", {is_global = true, unpin = true})
                demo:__unload()
                local ok, err = demo:echo("late")
                assert(ok == false and err == "task queue is finished", tostring(err))
                demo = nil
                -- the handle is garbage now: LuaJIT dlcloses the loader (which stays pinned)
                collectgarbage()
                collectgarbage()
                ngx.say(ngx.worker.pid())
            }
        }
        "#,
    );
    for _ in 0..3 {
        assert_eq!(n.get_ok("/article"), "ok\n");
    }
    let pid = n.get_ok("/unload");
    wait_log_count(&n, "ffi.echo: poll loop left", 1, Duration::from_secs(5));
    assert_eq!(n.get_ok("/article"), "ok\n", "loaded again after unload");
    assert_eq!(n.get_ok("/unload"), pid, "same worker, no crash");
    wait_log_count(&n, "ffi.echo: poll loop left", 2, Duration::from_secs(5));
    n.assert_log_clean(&[]);
}

/// The raw style needs cffi's C extension, which expects libpython's symbols in the global
/// scope: the loader makes them global even when it was not loaded with `is_global`.
#[test]
fn cffi_imports_without_is_global() {
    let n = nginx(
        "py-local",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local rt, rc = ngx.load_ffi("ffi_python3", "ffi.echo,init")
                assert(rt, rc)
                local ok, res = rt:echo("local")
                ngx.say(res)
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "local\n");
    n.assert_log_clean(&[]);
}

/// The helper's echo, sync (pool and inline) and async: byte for byte, NUL bytes, empty, nil,
/// up to 16 MiB, in Lua and as request bodies.
#[test]
fn helper_echo_is_binary_safe() {
    let n = nginx(
        "py-binary",
        1,
        r#"
        location /sizes {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f))
                for _, size in ipairs({0, 1, 2, 511, 4096, 65536, 1048576, 16 * 1048576}) do
                    local p = payload(size, size % 251)
                    local ok, res, err = rt:echo(p)
                    assert(ok == true and err == nil, "call failed at " .. size)
                    assert(type(res) == "string" and res == p, "mismatch at size " .. size)
                end
                local ok, res, err = rt:echo(nil)
                assert(ok == true and res == nil and err == nil, "nil request")
                local ok, res = rt:echo("")
                assert(ok == true and res == "", "empty request: " .. tostring(res))
                local ok, res = rt:echo("\0")
                assert(ok == true and res == "\0", "a NUL byte")
                ngx.say("ok")
            }
        }
        location /body {
            client_max_body_size 32m;
            client_body_buffer_size 32m;
            content_by_lua_block {
                ngx.req.read_body()
                local rt = assert(ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f))
                local ok, res = rt:echo(ngx.req.get_body_data())
                assert(ok)
                ngx.print(res)
            }
        }
        "#,
    );
    for f in ["echo", "echo_inline", "echo_async"] {
        assert_eq!(n.get_ok(&format!("/sizes?f={f}")), "ok\n", "{f}");
    }
    for f in ["echo", "echo_async"] {
        by_id::assert_bodies_echo(&n, &format!("/body?f={f}"));
    }
    n.assert_log_clean(&[]);
}

/// What a runtime sees: the cfg's rest as a pointer (an int), lua-resty-ffi's way; Debian's
/// Python; UTF-8 mode in nginx's untouched "C" locale; no Python signal handler; nginx's
/// signals blocked in the interpreter's threads.
#[test]
fn runtime_environment() {
    let n = nginx(
        "py-facts",
        1,
        r#"
        location /facts {
            content_by_lua_block {
                local cfg = ngx.var.arg_rest and "rt_test,facts," .. ngx.unescape_uri(ngx.var.arg_rest)
                            or "rt_test,facts"
                local rt = assert(ngx.load_ffi("ffi_python3", cfg))
                local ok, res = rt:call()
                assert(ok, res)
                ngx.print(res)
            }
        }
        "#,
    );
    let facts = n.get_ok("/facts?rest=a,b%20c");
    let expected = [
        "cfg='a,b c'",
        "cfg_ptr_is_int=True tq_is_int=True",
        "init_on_main_thread=True",
        "prefix=/usr",
        &format!("executable={PYTHON}"),
        "utf8_mode=1",
        "lc_ctype=C",
        "python_sigint_handler=None",
        "blocked_in_handler=SIGHUP,SIGINT,SIGQUIT,SIGUSR1,SIGUSR2,SIGALRM,SIGTERM,SIGCHLD,SIGWINCH,SIGIO",
    ];
    assert_eq!(facts.lines().collect::<Vec<_>>(), expected, "{facts}");
    let facts = n.get_ok("/facts");
    assert!(facts.starts_with("cfg=None\n"), "no rest: NULL: {facts}");
    n.assert_log_clean(&[]);
}

/// The location used by the load and lifecycle tests: echoes a payload derived from `id`
/// through `rt_test,<f>`.
const ECHO_BY_ID: &str = r#"
location /id {
    content_by_lua_block {
        local id = tonumber(ngx.var.arg_id)
        local rt = ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f)
        local p = payload(id % 3000, id % 256)
        local ok, res = rt:echo(p)
        if not ok then
            ngx.status = 500
            ngx.say("call failed: ", tostring(res))
            return
        end
        ngx.print(res)
    }
}
"#;

#[test]
fn ten_thousand_calls_200_concurrent_2_workers() {
    let n = nginx("py-load", 2, ECHO_BY_ID);
    // Even ids on the thread pool, odd ones on asyncio.
    let urls: Vec<String> = (0..10_000)
        .map(|i| {
            let f = if i % 2 == 0 { "echo" } else { "echo_async" };
            n.url(&format!("/id?id={i}&f={f}"))
        })
        .collect();
    let replies = testkit::get_all_ok(urls, 200);
    assert_eq!(replies.len(), 10_000);
    for (i, body) in replies.iter().enumerate() {
        assert!(*body == by_id::payload_of(i), "reply {i} differs");
    }
    n.assert_log_clean(&[]);
}

/// A per-call timeout and clients hanging up: the handler sees `resty_ffi.cancelled()` and
/// stops early, sync and async.
#[test]
fn timeout_and_abort_are_seen_as_cancelled() {
    let n = nginx(
        "py-cancel",
        1,
        r#"
        location /timeout {
            content_by_lua_block {
                local rt = ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f)
                ngx.update_time()
                local t0 = ngx.now()
                local ok, err = rt:call("10000", {timeout = 50})
                ngx.update_time()
                local took = ngx.now() - t0
                assert(ok == false and err == "timeout", tostring(err))
                assert(took >= 0.045 and took < 1, "timeout took " .. took)
                local ok, res = rt:call("10")
                assert(ok and res == "done", tostring(res))
                ngx.say("ok")
            }
        }
        location /slow {
            content_by_lua_block {
                local rt = ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f)
                local ok, res = rt:call(ngx.var.arg_ms)
                ngx.say(res)
            }
        }
        location /gc {
            content_by_lua_block {
                -- an aborted request's task is released by its finalizer
                collectgarbage()
                collectgarbage()
                ngx.say("collected")
            }
        }
        "#,
    );
    for (f, line) in [
        ("slow", "rt_test: slow call cancelled"),
        ("slow_async", "rt_test: slow async call cancelled"),
    ] {
        assert_eq!(n.get_ok(&format!("/timeout?f={f}")), "ok\n");
        wait_log_count(&n, line, 1, Duration::from_secs(5));
        // Five clients hang up once their calls are in the handler.
        let clients = send_requests(&n, &format!("/slow?f={f}&ms=10000"), 5);
        wait_log_count(&n, &format!("rt_test: {f} call started"), 7, WAIT);
        drop(clients);
        // nginx sees the aborts; the tasks are released by finalizers, so collect until the
        // handler saw all five.
        let until = Instant::now() + WAIT;
        while n.error_log().matches(line).count() < 6 {
            assert!(Instant::now() < until, "{}", n.error_log());
            assert_eq!(n.get_ok("/gc"), "collected\n");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(n.get_ok(&format!("/slow?f={f}&ms=1")), "done\n");
    }
    n.assert_log_clean(&[]);
}

/// Opens `count` connections that each send `GET path` (without reading the reply).
fn send_requests(n: &Nginx, path: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", n.port())).expect("connect to nginx");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("send request");
            s
        })
        .collect()
}

/// Starts `count` calls that the runtime answers after `ms`, in background threads, and waits
/// until all of them are in the handler.
fn slow_calls(n: &Nginx, count: usize, ms: u64) -> Vec<by_id::Call> {
    let calls = by_id::start(n, count, &format!("f=sleepy,{ms}"));
    let seen = n.error_log().matches(SLEEPY_STARTED).count();
    wait_log_count(n, SLEEPY_STARTED, seen + count, WAIT);
    calls
}

const SLEEPY_STARTED: &str = "rt_test: sleepy call started";

#[test]
fn reload_with_calls_in_flight() {
    let mut n = nginx("py-reload", 2, ECHO_BY_ID);
    let old = n.worker_pids();
    let calls = slow_calls(&n, 40, 400);
    n.reload();
    by_id::assert_answered(calls, "in-flight call survives the reload");
    assert!(
        n.wait_pids_gone(&old, Duration::from_secs(5)),
        "old workers exit"
    );
    assert!(n.get("/id?id=7&f=echo").body == by_id::payload_of(7));
    n.assert_log_clean(&[]);
}

#[test]
fn quit_with_calls_in_flight() {
    let mut n = nginx("py-quit", 2, ECHO_BY_ID);
    let calls = slow_calls(&n, 40, 400);
    n.quit_within(Duration::from_secs(3));
    by_id::assert_answered(calls, "in-flight call completes before quit");
    n.assert_log_clean(&[]);
}

#[test]
fn quit_respects_worker_shutdown_timeout() {
    let mut n = builder("py-shutdown-timeout", 1)
        .main_conf("worker_shutdown_timeout 1s;")
        .server_conf(ECHO_BY_ID)
        .start();
    let calls = slow_calls(&n, 10, 30_000);
    n.quit_within(Duration::from_secs(4));
    for c in calls {
        // nginx closed the connections: an error or an incomplete reply, never a hang.
        let _ = c.join().unwrap();
    }
    n.assert_log_clean(&[]);
}

/// Each way a runtime can fail: `ngx.load_ffi` returns `nil, rc`, error.log has the reason with
/// the traceback, and the worker keeps serving.
#[test]
fn failing_runtimes_return_nil_rc_and_log_why() {
    let n = nginx(
        "py-fail",
        1,
        r#"
        location /fail {
            content_by_lua_block {
                local out = {}
                local function try(cfg)
                    local o, rc = ngx.load_ffi("ffi_python3", cfg)
                    out[#out + 1] = o == nil and tostring(rc) or "loaded"
                end
                try("no_such_module,init")        -- 4: does not import
                try("broken,init")                -- 4: raises while importing
                try("rt_test,nope")               -- 5: no such function
                try("rt_test,not_callable")       -- 5
                try("rt_test,init_raises")        -- 6: init raised
                try("rt_test,init_returns_none")  -- 7: not an int
                try("rt_test,init_returns,9")     -- 9: init's own rc
                try("rt_test")                    -- 2: no function in cfg
                try("")                           -- 2
                try(nil)                          -- 2
                ngx.say(table.concat(out, " "))
                local ok, res = ngx.load_ffi("ffi_python3", "rt_test,echo"):call("alive")
                ngx.say(res)
            }
        }
        location /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
        "#,
    );
    let pid = n.get_ok("/pid");
    assert_eq!(n.get_ok("/fail"), "4 4 5 5 6 7 9 2 2 2\nalive\n");
    assert_eq!(n.get_ok("/fail"), "4 4 5 5 6 7 9 2 2 2\nalive\n");
    assert_eq!(n.get_ok("/pid"), pid, "the same worker serves");
    let log = n.error_log();
    for needle in [
        "cannot import no_such_module:\nTraceback (most recent call last):",
        "ModuleNotFoundError: No module named 'no_such_module'",
        "cannot import broken:\nTraceback",
        "broken.py\", line 4, in <module>",
        "ZeroDivisionError: division by zero",
        "module rt_test has no function nope",
        "rt_test.not_callable is not callable: 42",
        "rt_test.init_raises() raised:\nTraceback",
        "RuntimeError: init exploded",
        "rt_test.init_returns_none() returned None, not an int",
        "bad cfg \"rt_test\": cfg has no function",
        "bad cfg NULL: cfg is missing",
    ] {
        assert!(log.contains(needle), "error.log lacks {needle:?}:\n{log}");
    }
    n.assert_log_clean(&["ffi_python3: "]);
}

/// An interpreter that cannot start (a PYTHONHOME without the standard library): `nil, 3`
/// every time, the reason in error.log, and the worker keeps serving.
#[test]
fn interpreter_that_cannot_start() {
    let n = builder("py-nostart", 1)
        .env("PYTHONHOME", "/nonexistent")
        .server_conf(
            r#"
            location /t {
                content_by_lua_block {
                    local o, rc = ngx.load_ffi("ffi_python3", "rt_test,echo")
                    local o2, rc2 = ngx.load_ffi("ffi_python3", "rt_test,echo_async")
                    local ok, res = assert(ngx.load_ffi("resty_ffi_echo")):call("still serving")
                    ngx.say(tostring(o), " ", rc, " ", tostring(o2), " ", rc2, " ", res)
                }
            }
            "#,
        )
        .start();
    assert_eq!(n.get_ok("/t"), "nil 3 nil 3 still serving\n");
    assert_eq!(n.get_ok("/t"), "nil 3 nil 3 still serving\n");
    let log = n.error_log();
    assert!(
        log.contains("the Python interpreter cannot start: "),
        "{log}"
    );
    assert!(
        log.contains("cannot start: it failed earlier in this worker: "),
        "{log}"
    );
    n.assert_log_clean(&["ffi_python3: "]);
}

/// Hot reload: a module given as a path with `?`, `unpin = true`, `__unload`, the file
/// changes, the next load runs the new code in the same interpreter.
#[test]
fn hot_reload_picks_up_a_changed_file() {
    let dir = scratch("hot");
    let module = dir.join("hot_rt.py");
    let write = |version: &str| {
        fs::write(
            &module,
            format!(
                "import resty_ffi, sys\n\
                 VERSION = {version:?}\n\
                 def init(cfg, tq):\n\
                 \x20   first = sys.path[0]\n\
                 \x20   s = resty_ffi.serve(tq, lambda req: f'{{VERSION}} {{first}}')\n\
                 \x20   def report():\n\
                 \x20       s.finished.wait()\n\
                 \x20       resty_ffi.log(resty_ffi.NOTICE, f'hot_rt: {{VERSION}} finished')\n\
                 \x20   import threading\n\
                 \x20   threading.Thread(target=report, daemon=True).start()\n\
                 \x20   return 0\n"
            ),
        )
        .expect("writing the module");
    };
    write("v1");
    let cfg = format!("{}?,init", module.display());
    let n = nginx(
        "py-hot",
        1,
        &r#"
        location /hot {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_python3", "@CFG@", {unpin = true}))
                local ok, res = rt:call()
                assert(ok, res)
                ngx.say(res)
            }
        }
        location /unload {
            content_by_lua_block {
                local rt = ngx.load_ffi("ffi_python3", "@CFG@", {unpin = true})
                rt:__unload()
                rt = nil
                collectgarbage()
                collectgarbage()
                ngx.say("unloaded")
            }
        }
        "#
        .replace("@CFG@", &cfg),
    );
    let first = format!("{}", dir.display());
    assert_eq!(n.get_ok("/hot"), format!("v1 {first}\n"));
    assert_eq!(n.get_ok("/hot"), format!("v1 {first}\n"), "cached object");
    assert_eq!(n.get_ok("/unload"), "unloaded\n");
    wait_log_count(&n, "hot_rt: v1 finished", 1, Duration::from_secs(5));
    write("version two");
    assert_eq!(n.get_ok("/hot"), format!("version two {first}\n"));
    assert_eq!(n.get_ok("/unload"), "unloaded\n");
    wait_log_count(
        &n,
        "hot_rt: version two finished",
        1,
        Duration::from_secs(5),
    );
    n.assert_log_clean(&[]);
}

/// The helper's error path, on threads and on asyncio: exceptions answer rc 1 and their
/// message (traceback in error.log), `resty_ffi.Error` its own rc and message, a bad return
/// type rc 1.
#[test]
fn helper_error_path() {
    let n = nginx(
        "py-errors",
        1,
        r#"
        location /err {
            content_by_lua_block {
                local rt = ngx.load_ffi("ffi_python3", "rt_test," .. ngx.var.arg_f)
                local ok, a, b = rt:call(ngx.var.arg_what)
                ngx.say(tostring(ok), "|", tostring(a), "|", tostring(b))
            }
        }
        "#,
    );
    for f in ["errors", "errors_async"] {
        let call = |what: &str| n.get_ok(&format!("/err?f={f}&what={what}"));
        assert_eq!(call("raise"), "false|1|ValueError: bad input\n", "{f}");
        assert_eq!(call("error"), "false|7|custom failure\n", "{f}");
        assert_eq!(call("error_bytes"), "false|-3|\0bin\n", "{f}");
        assert_eq!(
            call("int"),
            "false|1|TypeError: handler returned int, expected bytes, str or None\n",
            "{f}"
        );
        assert_eq!(call("str"), "true|text \u{e9}|nil\n", "{f}");
        assert_eq!(call("none"), "true|nil|nil\n", "{f}");
        assert_eq!(call("bytearray"), "true|ba|nil\n", "{f}");
        assert_eq!(call("exit"), "false|1|SystemExit: 3\n", "{f}");
        assert_eq!(call("echo"), "true|echo|nil\n", "{f}");
    }
    let log = n.error_log();
    for needle in [
        "raised: Traceback (most recent call last):",
        "in _errors\n    raise ValueError(\"bad input\")\nValueError: bad input",
        "handler of resty_ffi-1: TypeError: handler returned int",
    ] {
        assert!(log.contains(needle), "error.log lacks {needle:?}:\n{log}");
    }
    assert!(!log.contains("custom failure"), "Error is not logged");
    n.assert_log_clean(&["resty_ffi: handler of "]);
}

/// `VIRTUAL_ENV` picks a virtualenv: its site-packages are imported from and `sys.prefix` is
/// the venv.
#[test]
fn virtual_env_selects_a_virtualenv() {
    let venv = scratch("venv");
    let version = Command::new(PYTHON)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("running python3");
    let version = String::from_utf8(version.stdout).unwrap();
    let site = venv.join(format!("lib/python{}/site-packages", version.trim()));
    fs::create_dir_all(&site).unwrap();
    fs::create_dir_all(venv.join("bin")).unwrap();
    std::os::unix::fs::symlink(PYTHON, venv.join("bin/python3")).unwrap();
    fs::write(
        venv.join("pyvenv.cfg"),
        "home = /usr/bin\ninclude-system-site-packages = false\n",
    )
    .unwrap();
    fs::write(
        site.join("venv_only.py"),
        "import sys, resty_ffi\n\
         def init(cfg, tq):\n\
         \x20   resty_ffi.serve(tq, lambda req: f'{sys.prefix} {__file__}', workers=0)\n\
         \x20   return 0\n",
    )
    .unwrap();
    let n = builder("py-venv", 1)
        .env("VIRTUAL_ENV", &venv.display().to_string())
        .server_conf(
            r#"
            location /t {
                content_by_lua_block {
                    local rt = assert(ngx.load_ffi("ffi_python3", "venv_only,init"))
                    local ok, res = rt:call()
                    ngx.say(res)
                }
            }
            "#,
        )
        .start();
    let want = format!(
        "{} {}\n",
        venv.display(),
        site.join("venv_only.py").display()
    );
    assert_eq!(n.get_ok("/t"), want);
    n.assert_log_clean(&[]);
}
