//! The Node.js loader (`libffi_nodejs.so`) on a real nginx with a real Node.js (Debian's
//! libnode108): the runtimes are `t/runtimes/nodejs/*.js`, found through `NODE_PATH`.
//!
//! Every test starts its own nginx and checks that error.log has no `[alert]`, `[crit]`,
//! `[emerg]` and no unexpected `[error]`. `serve()` waits for tasks on Node's event loop with
//! this host's eventfd protocol; the `*_poll_thread` variants force the poll-thread path that
//! hosts without it (the real lua-resty-ffi) get.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{by_id, Nginx, NginxBuilder};

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

fn runtimes_dir() -> PathBuf {
    testkit::repo_root().join("t/runtimes/nodejs")
}

fn builder(name: &str, workers: usize) -> NginxBuilder {
    NginxBuilder::new(name)
        .workers(workers)
        .env("NODE_PATH", &runtimes_dir().display().to_string())
        .http_conf(&format!(
            "init_by_lua_block {{ {} }}\n{INIT}\nlua_shared_dict started 1m;",
            testkit::LUA_PAYLOAD
        ))
}

fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    builder(name, workers).server_conf(server).start()
}

/// How `serve()` polls: `loop` (the host's eventfd, on Node's loop) or `thread`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Poll {
    Loop,
    Thread,
}

fn nginx_polling(name: &str, workers: usize, poll: Poll, server: &str) -> Nginx {
    let b = builder(name, workers);
    let b = match poll {
        Poll::Loop => b,
        Poll::Thread => b.env("RESTY_FFI_NODEJS_POLL", "thread"),
    };
    b.server_conf(server).start()
}

#[test]
fn echo_is_binary_safe() {
    echo_binary("node-binary", Poll::Loop);
}

#[test]
fn echo_is_binary_safe_poll_thread() {
    echo_binary("node-binary-thread", Poll::Thread);
}

fn echo_binary(name: &str, poll: Poll) {
    let n = nginx_polling(
        name,
        1,
        poll,
        r#"
        location /sizes {
            content_by_lua_block {
                for _, cfg in ipairs({"echo,init", "echo,init_async"}) do
                    local rt = assert(ngx.load_ffi("ffi_nodejs", cfg))
                    for _, size in ipairs({1, 2, 511, 4096, 65536, 1048576, 16 * 1048576}) do
                        local p = payload(size, size % 251)
                        local ok, res, err = rt:echo(p)
                        assert(ok == true and err == nil, cfg .. ": call failed at " .. size)
                        assert(res == p, cfg .. ": mismatch at size " .. size)
                    end
                    local ok, res, err = rt:echo(nil)
                    assert(ok == true and res == nil and err == nil, cfg .. ": nil request")
                    local ok, res = rt:echo("")
                    assert(ok == true and res == "", cfg .. ": empty request " .. tostring(res))
                    local ok, res = rt:echo("a\0b\0")
                    assert(ok == true and res == "a\0b\0", cfg .. ": NUL bytes")
                end
                ngx.say("ok")
            }
        }
        location /body {
            client_max_body_size 32m;
            client_body_buffer_size 32m;
            content_by_lua_block {
                ngx.req.read_body()
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init"))
                local ok, res = rt:echo(ngx.req.get_body_data())
                assert(ok)
                ngx.print(res)
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/sizes"), "ok\n");
    by_id::assert_bodies_echo(&n, "/body");
    n.assert_log_clean(&[]);
}

#[test]
fn helper_shapes_and_error_path() {
    let n = nginx(
        "node-shapes",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,shapes"))
                local function check(req, want_ok, want_a, want_b)
                    local ok, a, b = rt:call(req)
                    if ok ~= want_ok or a ~= want_a or b ~= want_b then
                        error(string.format("%s: got %s %s %s", req, tostring(ok),
                                            tostring(a), tostring(b)))
                    end
                end
                -- an exception or a rejection: rc 1 and its message
                check("throw", false, 1, "thrown")
                check("reject", false, 1, "rejected")
                check("async", false, 1, "thrown after await")
                check("rc", false, 42, "with an rc")
                check("string", false, 1, "a plain string")
                check("number", false, 1,
                      "resty_ffi: a response is a Buffer, TypedArray, DataView, ArrayBuffer, "
                      .. "string, null or undefined")
                -- what the handler returns
                check("text", true, "h\195\169llo", nil)
                check("nil", true, nil, nil)
                check("undefined", true, nil, nil)
                check("empty", true, "", nil)
                check("u16", true, "ABCD", nil)
                check("arraybuffer", true, "\1\0\2", nil)
                check("dataview", true, "\8\9", nil)
                check("self", true, "answered by the handler", nil)
                check("cancelled-after", true, "first", nil)
                check("other", true, "other", nil)
                -- rc ~= 0 from Lua's side of the contract
                local ok, rc, rsp = rt:call("rc")
                assert(ok == false and rc == 42 and rsp == "with an rc")
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "ok\n");
    // The handler that answered itself: serve() finds the task answered and says so.
    let (found, log) = n.wait_log_contains(
        "resty_ffi: unknown or already answered task",
        Duration::from_secs(5),
    );
    assert!(found, "{log}");
    n.assert_log_clean(&[]);
}

#[test]
fn the_lua_resty_ffi_example_runs_unchanged() {
    // lua-resty-ffi's Node.js example: its Lua lines and a runtime in its style (a Worker polls
    // with the blocking poll_task, the main thread answers).
    let n = nginx(
        "node-demo",
        1,
        r#"
        location /echo {
            content_by_lua_block {
                require("resty_ffi")
                local demo = ngx.load_ffi("ffi_nodejs", "demo/echo,init", {is_global=true})
                local ok, res = demo:echo("hello")
                assert(ok)
                assert(res == "hello")
                demo:__unload()
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/echo"), "ok\n");
    assert_eq!(n.get_ok("/echo"), "ok\n");
    let (found, log) = n.wait_log_contains("demo/echo: finished", Duration::from_secs(5));
    assert!(
        found,
        "the Worker's poll_task returned 0 after __unload:\n{log}"
    );
    n.assert_log_clean(&[]);
}

/// Echoes a payload derived from `id` through runtime `cfg` (default `echo,init`).
const ECHO_BY_ID: &str = r#"
location /id {
    content_by_lua_block {
        local id = tonumber(ngx.var.arg_id)
        local cfg = ngx.var.arg_cfg or "echo,init"
        local rt, rc = ngx.load_ffi("ffi_nodejs", cfg)
        if not rt then
            ngx.status = 500
            return ngx.say("load failed: ", rc)
        end
        local p = payload(id % 3000, id % 256)
        ngx.shared.started:incr(cfg, 1, 0)
        local ok, res = rt:echo(p)
        if not ok then
            ngx.status = 500
            ngx.say("call failed: ", tostring(res))
            return
        end
        ngx.print(res)
    }
}
location /started {
    content_by_lua_block { ngx.say(ngx.shared.started:get(ngx.var.arg_cfg) or 0) }
}
"#;

#[test]
fn ten_thousand_calls_200_concurrent_2_workers() {
    let n = nginx("node-load", 2, ECHO_BY_ID);
    let urls: Vec<String> = (0..10_000)
        .map(|i| {
            let cfg = if i % 2 == 0 {
                "echo,init"
            } else {
                "echo,init_async"
            };
            n.url(&format!("/id?id={i}&cfg={cfg}"))
        })
        .collect();
    let replies = testkit::get_all_ok(urls, 200);
    for (i, body) in replies.iter().enumerate() {
        assert!(*body == by_id::payload_of(i), "reply {i} differs");
    }
    n.assert_log_clean(&[]);
}

#[test]
fn timeout_and_abort_are_seen_by_the_helper() {
    timeout_and_abort("node-cancel", Poll::Loop);
}

#[test]
fn timeout_and_abort_are_seen_by_the_helper_poll_thread() {
    timeout_and_abort("node-cancel-thread", Poll::Thread);
}

fn timeout_and_abort(name: &str, poll: Poll) {
    let n = nginx_polling(
        name,
        1,
        poll,
        r#"
        lua_check_client_abort on;
        location /timeout {
            content_by_lua_block {
                local slow = assert(ngx.load_ffi("ffi_nodejs", "echo,slow,300"))
                -- the runtime answers after 300 ms: the 50 ms timeout comes first
                local ok, err = slow:echo("late", {timeout = 50})
                assert(ok == false and err == "timeout", tostring(err))
                -- without a timeout the same runtime answers
                local ok, res = slow:echo("on time")
                assert(ok and res == "on time")
                ngx.say("ok")
            }
        }
        location /slow {
            content_by_lua_block {
                local slow = assert(ngx.load_ffi("ffi_nodejs", "echo,slow,5000"))
                local ok, res = slow:echo("never read")
                ngx.say(res)
            }
        }
        location /gc {
            content_by_lua_block {
                collectgarbage()
                collectgarbage()
                ngx.say(ngx.worker.pid())
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/timeout"), "ok\n");
    let (found, log) = n.wait_log_contains("slow: task cancelled", Duration::from_secs(5));
    assert!(found, "the helper saw the timed-out call cancelled:\n{log}");
    let pid = n.get_ok("/gc");
    // The clients hang up long before the 5 s answer.
    n.hang_up("/slow", 10, Duration::from_millis(300));
    assert_eq!(n.get_ok("/gc"), pid, "same worker");
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = || n.error_log().matches("slow: task cancelled").count();
    while count() < 11 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        count() >= 11,
        "aborted requests were seen cancelled ({}):\n{}",
        count(),
        n.error_log()
    );
    assert_eq!(n.get_ok("/gc"), pid, "the worker survived");
    n.assert_log_clean(&[]);
}

/// Starts `count` slow calls in background threads and returns once nginx runs all of them.
fn slow_calls(n: &Nginx, count: usize, ms: u32) -> Vec<by_id::Call> {
    let calls = by_id::start(n, count, &format!("cfg=echo,slow,{ms}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let started = || -> usize {
        n.get_ok(&format!("/started?cfg=echo,slow,{ms}"))
            .trim()
            .parse()
            .unwrap()
    };
    while started() < count {
        assert!(Instant::now() < deadline, "the slow calls did not start");
        thread::sleep(Duration::from_millis(10));
    }
    calls
}

/// Waits until the slow runtime was loaded in every worker (so the calls are in flight).
fn warm_up(n: &Nginx, ms: u32) {
    let urls: Vec<String> = (0..20)
        .map(|i| n.url(&format!("/id?id={i}&cfg=echo,slow,{ms}")))
        .collect();
    let _ = testkit::get_many_blocking(urls, 20);
}

#[test]
fn reload_with_calls_in_flight() {
    let mut n = nginx("node-reload", 2, ECHO_BY_ID);
    warm_up(&n, 1);
    let old = n.worker_pids();
    let calls = slow_calls(&n, 40, 400);
    n.reload();
    by_id::assert_answered(calls, "in-flight call survives the reload");
    assert!(
        n.wait_pids_gone(&old, Duration::from_secs(5)),
        "old workers exit"
    );
    assert!(
        n.get("/id?id=7").body == by_id::payload_of(7),
        "new workers serve"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn quit_with_calls_in_flight() {
    quit_in_flight("node-quit", Poll::Loop);
}

#[test]
fn quit_with_calls_in_flight_poll_thread() {
    quit_in_flight("node-quit-thread", Poll::Thread);
}

fn quit_in_flight(name: &str, poll: Poll) {
    let mut n = nginx_polling(name, 2, poll, ECHO_BY_ID);
    warm_up(&n, 1);
    let calls = slow_calls(&n, 40, 400);
    n.quit_within(Duration::from_secs(3));
    by_id::assert_answered(calls, "in-flight call completes before quit");
    n.assert_log_clean(&[]);
}

#[test]
fn quit_respects_worker_shutdown_timeout() {
    let mut n = builder("node-shutdown-timeout", 1)
        .main_conf("worker_shutdown_timeout 1s;")
        .server_conf(ECHO_BY_ID)
        .start();
    warm_up(&n, 1);
    let calls = slow_calls(&n, 10, 30_000);
    n.quit_within(Duration::from_secs(4));
    for c in calls {
        // nginx closed the connections: an error or an incomplete reply, never a hang.
        let _ = c.join().unwrap();
    }
    n.assert_log_clean(&[]);
}

#[test]
fn failing_runtimes_leave_the_worker_serving() {
    let n = nginx(
        "node-failures",
        1,
        r#"
        location /load {
            content_by_lua_block {
                local rt, rc = ngx.load_ffi("ffi_nodejs", ngx.var.arg_cfg)
                ngx.say(rt and "loaded" or ("nil " .. tostring(rc)))
            }
        }
        location /pid {
            content_by_lua_block { ngx.say(ngx.worker.pid()) }
        }
        "#,
    );
    let pid = n.get_ok("/pid");
    let cases: &[(&str, &str, &str)] = &[
        // cfg, what Lua sees, a line error.log must have
        (
            "no_such_module,init",
            "nil 1",
            "no_such_module,init: Error: Cannot find module 'no_such_module'",
        ),
        ("echo,nope", "nil 1", "echo.js exports no function 'nope'"),
        (
            "echo,not_a_function",
            "nil 1",
            "exports no function 'not_a_function'",
        ),
        (
            "echo,init_throws",
            "nil 1",
            "echo,init_throws: Error: init failed on purpose",
        ),
        (
            "echo,init_rejects",
            "nil 1",
            "echo,init_rejects: Error: async init failed on purpose",
        ),
        (
            "echo,init_rc",
            "nil 7",
            "echo,init_rc: the init function returned 7",
        ),
        (
            "echo,init_not_int",
            "nil 1",
            "the init function returned 'zero', not an integer",
        ),
        ("broken,init", "nil 1", "broken.js:4"),
        ("echo", "nil 2", "bad cfg \"echo\""),
    ];
    for (cfg, want, line) in cases {
        assert_eq!(
            n.get_ok(&format!("/load?cfg={cfg}")),
            format!("{want}\n"),
            "{cfg}"
        );
        let (found, log) = n.wait_log_contains(line, Duration::from_secs(5));
        assert!(found, "{cfg}: no {line:?} in error.log:\n{log}");
    }
    let log = n.error_log();
    assert!(
        log.contains("at exports.init_throws") || log.contains("at Object.init_throws"),
        "the stack is logged:\n{log}"
    );
    assert!(log.contains("SyntaxError"), "{log}");
    // Loading a good runtime still works, in the same worker.
    assert_eq!(n.get_ok("/load?cfg=echo,init"), "loaded\n");
    assert_eq!(n.get_ok("/pid"), pid);
    n.assert_log_clean(&[
        "resty_ffi_nodejs: no_such_module,init",
        "resty_ffi_nodejs: echo,nope",
        "resty_ffi_nodejs: echo,not_a_function",
        "resty_ffi_nodejs: echo,init_throws",
        "resty_ffi_nodejs: echo,init_rejects",
        "resty_ffi_nodejs: echo,init_not_int",
        "resty_ffi_nodejs: broken,init",
        "resty_ffi_nodejs: bad cfg",
    ]);
}

#[test]
fn misbehaving_javascript_does_not_reach_the_worker() {
    let n = nginx(
        "node-rude",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init_rude"))
                local ok, res = rt:echo("still here")
                ngx.say(res, " ", ngx.worker.pid())
            }
        }
        location /log {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init_log"))
                local ok, res = rt:echo("logged")
                ngx.say(res)
            }
        }
        "#,
    );
    let first = n.get_ok("/t");
    assert!(first.starts_with("still here "), "{first}");
    for needle in [
        "process.exit(3) ignored",
        "uncaught exception: Error: uncaught on purpose",
        "unhandled rejection: Error: unhandled on purpose",
        "rude: poll_task on the event loop: resty_ffi: poll_task blocks",
    ] {
        let (found, log) = n.wait_log_contains(needle, Duration::from_secs(5));
        assert!(found, "no {needle:?}:\n{log}");
    }
    assert_eq!(n.get_ok("/t"), first, "same worker, same answer");
    assert_eq!(n.get_ok("/log"), "logged\n");
    // Lines from the Node.js thread reach error.log through the host's queue, in order:
    // wait for the last one.
    let (found, log) =
        n.wait_log_contains("ffi.log notice from js { a: 1 }", Duration::from_secs(5));
    assert!(found, "{log}");
    let line = |text: &str| {
        log.lines()
            .find(|l| l.ends_with(text))
            .unwrap_or_else(|| panic!("no {text:?}:\n{log}"))
            .to_owned()
    };
    assert!(line("console.error from js").contains("[error]"));
    assert!(line("console.warn from js: 42").contains("[warn]"));
    assert!(line("ffi.log notice from js { a: 1 }").contains("[notice]"));
    assert!(
        !log.contains("console.log from js"),
        "console.log is [info], below the notice level:\n{log}"
    );
    n.assert_log_clean(&[
        "process.exit(3) ignored",
        "uncaught on purpose",
        "unhandled on purpose",
        "console.error from js",
    ]);
}

#[test]
fn node_that_cannot_start_fails_the_load_only() {
    let n = builder("node-nostart", 1)
        .env("NODE_OPTIONS", "--no-such-node-option")
        .server_conf(
            r#"
            location /load {
                content_by_lua_block {
                    local rt, rc = ngx.load_ffi("ffi_nodejs", "echo,init")
                    ngx.say(rt and "loaded" or ("nil " .. tostring(rc)), " ", ngx.worker.pid())
                }
            }
            "#,
        )
        .start();
    let first = n.get_ok("/load");
    assert!(first.starts_with("nil 3 "), "{first}");
    assert_eq!(n.get_ok("/load"), first, "the same answer, the same worker");
    let (found, log) = n.wait_log_contains("--no-such-node-option", Duration::from_secs(5));
    assert!(found, "{log}");
    n.assert_log_clean(&["resty_ffi_nodejs"]);
}

#[test]
fn hot_reload_with_question_mark() {
    let n = nginx(
        "node-hot",
        1,
        r#"
        location /call {
            content_by_lua_block {
                local cfg = ngx.unescape_uri(ngx.var.arg_cfg)
                local rt, rc = ngx.load_ffi("ffi_nodejs", cfg, {unpin = true})
                if not rt then return ngx.say("load failed: ", rc) end
                local ok, res = rt:call("x")
                ngx.say(res)
            }
        }
        location /unload {
            content_by_lua_block {
                local cfg = ngx.unescape_uri(ngx.var.arg_cfg)
                local rt = ngx.load_ffi("ffi_nodejs", cfg, {unpin = true})
                rt:__unload()
                rt = nil
                collectgarbage()
                collectgarbage()
                ngx.say("unloaded")
            }
        }
        "#,
    );
    let file = n.prefix().join("hot.js");
    let write = |version: &str| {
        fs::write(
            &file,
            format!(
                "const ffi = require('resty_ffi');\n\
                 exports.init = (cfg, tq) => {{ ffi.serve(tq, () => '{version}'); return 0; }};\n"
            ),
        )
        .unwrap()
    };
    let path = file.display().to_string();
    let hot = format!("{path}%3F,init");
    let cached = format!("{path},init");
    write("v1");
    assert_eq!(n.get_ok(&format!("/call?cfg={hot}")), "v1\n");
    write("v2");
    // Without `?` the module Node already has is used.
    assert_eq!(n.get_ok(&format!("/call?cfg={cached}")), "v1\n");
    assert_eq!(n.get_ok(&format!("/unload?cfg={hot}")), "unloaded\n");
    // With `?` the changed file is read again (the loader stayed loaded through the GC).
    assert_eq!(n.get_ok(&format!("/call?cfg={hot}")), "v2\n");
    assert_eq!(n.get_ok(&format!("/call?cfg={cached}")), "v1\n");
    n.assert_log_clean(&[]);
}

/// Signal handlers of nginx's signals, as `sigaction` reports them, before and after Node.js
/// starts; and every thread but nginx's own blocks those signals.
#[test]
fn nginx_keeps_its_signals() {
    let n = NginxBuilder::new("node-signals")
        .env("NODE_PATH", &runtimes_dir().display().to_string())
        .http_conf(
            r#"
            lua_shared_dict sig 1m;
            init_worker_by_lua_block {
                require "resty_ffi"
                local ffi = require "ffi"
                pcall(ffi.cdef, "int sigaction(int, const void *, void *);")
                function handlers()
                    local buf = ffi.new("uint8_t[256]")
                    local t = {}
                    -- HUP INT QUIT USR1 USR2 PIPE ALRM TERM CHLD WINCH IO
                    for _, s in ipairs({1, 2, 3, 10, 12, 13, 14, 15, 17, 28, 29}) do
                        assert(ffi.C.sigaction(s, nil, buf) == 0)
                        t[#t + 1] = tostring(ffi.cast("uintptr_t *", buf)[0])
                    end
                    return table.concat(t, ",")
                end
                ngx.shared.sig:set("before", handlers())
            }
            "#,
        )
        .server_conf(
            r#"
            location /t {
                content_by_lua_block {
                    local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init"))
                    assert(select(2, rt:echo("x")) == "x")
                    -- a Worker thread and an fs call start more threads
                    local demo = assert(ngx.load_ffi("ffi_nodejs", "demo/echo,init"))
                    assert(select(2, demo:echo("y")) == "y")
                    local before, after = ngx.shared.sig:get("before"), handlers()
                    ngx.say(before == after and "same" or (before .. " ~= " .. after))
                }
            }
            "#,
        )
        .start();
    assert_eq!(n.get_ok("/t"), "same\n");
    let pid = n.worker_pids()[0];
    // HUP INT QUIT USR1 USR2 ALRM TERM CHLD WINCH IO, as bits of /proc's SigBlk mask.
    let nginx_signals: u64 = [1u32, 2, 3, 10, 12, 14, 15, 17, 28, 29]
        .iter()
        .map(|s| 1u64 << (s - 1))
        .sum();
    let mut threads = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap();
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let blocked = u64::from_str_radix(&field("SigBlk:"), 16).unwrap();
        if tid != pid {
            threads += 1;
            assert_eq!(
                blocked & nginx_signals,
                nginx_signals,
                "thread {tid} ({}) may take nginx's signals",
                field("Name:")
            );
        }
    }
    assert!(threads >= 4, "Node.js runs threads ({threads})");
    n.assert_log_clean(&[]);
}

/// An N-API addon, compiled here against libnode's headers.
const ADDON: &str = r#"
#include <node_api.h>
static napi_value hello(napi_env env, napi_callback_info info) {
    napi_value s;
    napi_create_string_utf8(env, "hello from an addon", NAPI_AUTO_LENGTH, &s);
    return s;
}
NAPI_MODULE_INIT() {
    napi_value fn;
    napi_create_function(env, "hello", NAPI_AUTO_LENGTH, hello, NULL, &fn);
    napi_set_named_property(env, exports, "hello", fn);
    return exports;
}
"#;

#[test]
fn native_addons_load_and_process_state_is_nginx_s() {
    let include = [
        "/usr/include/node",
        "/var/cache/resty-grpc-zc/libnode108/usr/include/node",
    ]
    .into_iter()
    .find(|d| std::path::Path::new(d).join("node_api.h").is_file())
    .expect("libnode's headers (scripts/deps.sh installs them)");
    let n = nginx(
        "node-addon",
        1,
        r#"
        location /t {
            content_by_lua_block {
                -- is_global = false: the loader makes libnode's symbols global for addons
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init_addon," .. ngx.var.arg_addon))
                local ok, res = rt:call()
                ngx.say(res)
            }
        }
        "#,
    );
    let dir = n.prefix().join("addon");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("addon.c"), ADDON).unwrap();
    let addon = dir.join("addon.node");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-I", include, "-o"])
        .arg(&addon)
        .arg(dir.join("addon.c"))
        .status()
        .expect("running cc");
    assert!(cc.success());
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        n.get_ok(&format!("/t?addon={}", addon.display())),
        format!(
            "hello from an addon; process.chdir() is not supported in workers; cwd {}\n",
            cwd.display()
        )
    );
    n.assert_log_clean(&[]);
}

#[test]
fn rss_is_flat_over_many_calls() {
    let n = nginx(
        "node-rss",
        1,
        r#"
        location /run {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init"))
                local slow = assert(ngx.load_ffi("ffi_nodejs", "echo,slow,1"))
                local p = payload(4096, 3)
                for i = 1, tonumber(ngx.var.arg_n) do
                    local ok, res = rt:echo(p)
                    if not ok or res ~= p then error("bad echo at " .. i) end
                    if i % 1000 == 0 then
                        -- timeouts and late answers too
                        slow:echo(p)
                        slow:echo(p, {timeout = 1})
                    end
                end
                ngx.say(ngx.worker.pid())
            }
        }
        "#,
    );
    let pid: i32 = n.get_ok("/run?n=50000").trim().parse().unwrap();
    let warm = n.rss_kb(pid).unwrap();
    for _ in 0..3 {
        assert_eq!(n.get_ok("/run?n=50000").trim(), pid.to_string());
    }
    let after = n.rss_kb(pid).unwrap();
    let growth = after as f64 / warm as f64;
    assert!(
        growth <= 1.10,
        "RSS grew from {warm} KiB to {after} KiB ({growth:.3}x) over 150,000 calls"
    );
    n.assert_log_clean(&[]);
}
