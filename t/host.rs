//! The lua-resty-ffi host on a real nginx: `ngx.load_ffi` with the reference echo runtime.
//!
//! Every test starts its own nginx (private prefix, free port) and checks, besides its own
//! assertions, that error.log has no `[alert]`, `[crit]`, `[emerg]` and no unexpected `[error]`.

use std::thread;
use std::time::Duration;

use testkit::{by_id, get_many, Nginx, NginxBuilder};

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

/// Lua shared by the test locations: deterministic binary payloads (`payload(n, seed)`).
fn helpers() -> String {
    format!("init_by_lua_block {{ {} }}", testkit::LUA_PAYLOAD)
}

fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(workers)
        .http_conf(&format!("{}\n{INIT}", helpers()))
        .server_conf(server)
        .start()
}

fn body(n: &Nginx, path: &str) -> String {
    n.get_ok(path)
}

#[test]
fn echo_is_binary_safe() {
    let n = nginx(
        "binary",
        1,
        r#"
        location /sizes {
            content_by_lua_block {
                local rt = assert(ngx.load_ffi("resty_ffi_echo"))
                for _, size in ipairs({0, 1, 2, 511, 4096, 65536, 1048576, 16 * 1048576}) do
                    local p = payload(size, size % 251)
                    local ok, res, err = rt:echo(p)
                    assert(ok == true and err == nil, "call failed at " .. size)
                    assert(type(res) == "string" and res == p, "mismatch at size " .. size)
                end
                local ok, res, err = rt:echo(nil)
                assert(ok == true and res == nil and err == nil, "nil request")
                local ok, res = rt:echo("")
                -- "" travels as a 1-byte malloc'd "\0" answered with rsp_len 0 (C-string rule)
                assert(ok == true and res == "", "empty request: " .. tostring(res))
                ngx.say("ok")
            }
        }
        location /body {
            client_max_body_size 32m;
            client_body_buffer_size 32m;
            content_by_lua_block {
                ngx.req.read_body()
                local rt = assert(ngx.load_ffi("resty_ffi_echo"))
                local ok, res = rt:echo(ngx.req.get_body_data())
                assert(ok)
                ngx.print(res)
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/sizes"), "ok\n");
    by_id::assert_bodies_echo(&n, "/body");
    n.assert_log_clean(&[]);
}

#[test]
fn contract_return_values() {
    let n = nginx(
        "contract",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local a = ngx.load_ffi("resty_ffi_echo")
                assert(ngx.load_ffi("resty_ffi_echo") == a, "cached by lib")
                local b = ngx.load_ffi("resty_ffi_echo", "tag=b")
                assert(b ~= a, "cfg is part of the key")
                assert(ngx.load_ffi("resty_ffi_echo", "tag=b", {max_queue = 5}) == b,
                       "opts are not part of the key")

                -- rc ~= 0: false, rc, rsp
                local e = ngx.load_ffi("resty_ffi_echo", "rc=7")
                local ok, rc, rsp = e:whatever("abc")
                assert(ok == false and rc == 7 and rsp == "abc", "rc path")

                -- NULL response, C-string response
                local nilrt = ngx.load_ffi("resty_ffi_echo", "rsp=nil")
                local ok, res, err = nilrt:x("abc")
                assert(ok == true and res == nil and err == nil, "nil rsp")
                local cs = ngx.load_ffi("resty_ffi_echo", "rsp=cstr")
                local ok, res = cs:x("hello")
                assert(ok == true and res == "hello", "cstr rsp")

                -- libffi_init failure: nil, rc; not cached
                local o, rc = ngx.load_ffi("resty_ffi_echo", "init_rc=5")
                assert(o == nil and rc == 5, "init failure")

                -- any method name, and __call
                assert(select(2, a:echo("1")) == "1")
                assert(select(2, a:anything_at_all("2")) == "2")
                assert(select(2, a("3")) == "3")

                -- misuse raises
                local okp, msg = pcall(a.echo, a, 42)
                assert(not okp and msg:find("string or nil expected"), tostring(msg))
                okp, msg = pcall(ngx.load_ffi, 42)
                assert(not okp and msg:find("bad library name"), tostring(msg))

                -- __unload: later calls fail, a new load makes a new object
                b:__unload()
                local ok, err = b:echo("x")
                assert(ok == false and err == "task queue is finished", tostring(err))
                local b2 = ngx.load_ffi("resty_ffi_echo", "tag=b")
                assert(b2 ~= b and select(2, b2:echo("y")) == "y")
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/t"), "ok\n");
    // The poll thread prints the marker after the queue finishes, which may follow the response.
    let (found, log) =
        n.wait_log_contains("resty_ffi_echo: finished cfg=tag=b", Duration::from_secs(5));
    assert!(found, "the unloaded runtime got its finish marker:\n{log}");
    n.assert_log_clean(&[]);
}

#[test]
fn yieldable_and_non_yieldable_contexts() {
    let n = NginxBuilder::new("contexts")
        .workers(1)
        .http_conf(
            r#"
            lua_shared_dict results 1m;
            init_worker_by_lua_block {
                require "resty_ffi"
                local rt = ngx.load_ffi("resty_ffi_echo")
                local ok, err = rt:echo("x")
                ngx.shared.results:set("init_worker", tostring(ok) .. " " .. tostring(err))
                assert(ngx.timer.at(0, function()
                    local ok, res = rt:echo("from timer")
                    ngx.shared.results:set("timer", tostring(ok) .. " " .. tostring(res))
                end))
            }
            upstream backend {
                server 127.0.0.1:1;
                balancer_by_lua_block {
                    local ok, err = ngx.load_ffi("resty_ffi_echo"):echo("x")
                    ngx.shared.results:set("balancer", tostring(ok) .. " " .. tostring(err))
                    ngx.exit(500)
                }
            }
            "#,
        )
        .server_conf(
            r#"
            location /yield {
                rewrite_by_lua_block {
                    local ok, res = ngx.load_ffi("resty_ffi_echo"):echo("rewrite")
                    ngx.ctx.r = res
                }
                access_by_lua_block {
                    local ok, res = ngx.load_ffi("resty_ffi_echo"):echo("access")
                    ngx.ctx.a = res
                }
                content_by_lua_block {
                    local ok, res = ngx.load_ffi("resty_ffi_echo"):echo("content")
                    ngx.say(ngx.ctx.r, " ", ngx.ctx.a, " ", res, " ",
                            ngx.shared.results:get("timer"))
                }
            }
            location /noyield {
                set_by_lua_block $set_result {
                    local ok, err = ngx.load_ffi("resty_ffi_echo"):echo("x")
                    return tostring(ok) .. " " .. tostring(err)
                }
                header_filter_by_lua_block {
                    local ok, err = ngx.load_ffi("resty_ffi_echo"):echo("x")
                    ngx.header["X-Header-Filter"] = tostring(ok) .. " " .. tostring(err)
                }
                log_by_lua_block {
                    local ok, err = ngx.load_ffi("resty_ffi_echo"):echo("x")
                    ngx.shared.results:set("log", tostring(ok) .. " " .. tostring(err))
                }
                content_by_lua_block {
                    ngx.say(ngx.var.set_result)
                }
            }
            location /balancer { proxy_pass http://backend; }
            location /results {
                content_by_lua_block {
                    local r = ngx.shared.results
                    ngx.say(r:get("init_worker"))
                    ngx.say(r:get("log"))
                    ngx.say(r:get("balancer"))
                }
            }
            "#,
        )
        .start();
    // The timer fires right after start; give it a moment.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        body(&n, "/yield"),
        "rewrite access content true from timer\n"
    );
    let r = n.get("/noyield");
    assert_eq!(r.text(), "false API disabled in the context of set\n");
    let _ = n.get("/balancer");
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        body(&n, "/results"),
        "false API disabled in the context of init_worker\n\
         false API disabled in the context of log\n\
         false API disabled in the context of balancer\n"
    );
    // The header filter cannot be observed through ureq's Resp; it must at least not break
    // the request (status 200 above) or the worker.
    n.assert_log_clean(&["connect() failed", "balancer"]);
}

#[test]
fn timeout_returns_and_frees_the_late_answer() {
    let n = nginx(
        "timeout",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local slow = ngx.load_ffi("resty_ffi_echo", "delay_ms=300,check_cancel=1")
                ngx.update_time()
                local t0 = ngx.now()
                local ok, err = slow:echo("late", {timeout = 50})
                ngx.update_time()
                local took = ngx.now() - t0
                assert(ok == false and err == "timeout", tostring(err))
                assert(took >= 0.045 and took < 0.2, "timeout took " .. took)
                local okp, msg = pcall(slow.echo, slow, "x", {timeout = -1})
                assert(not okp and msg:find("bad timeout"), tostring(msg))
                -- without a timeout the same runtime answers
                local ok, res = slow:echo("on time")
                assert(ok and res == "on time")
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/t"), "ok\n");
    let (found, log) =
        n.wait_log_contains("resty_ffi_echo: task cancelled", Duration::from_secs(5));
    assert!(
        found,
        "the runtime saw the cancellation through ngx_http_lua_ffi_task_cancelled:\n{log}"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn aborted_requests_leak_nothing() {
    let n = nginx(
        "abort",
        1,
        r#"
        lua_check_client_abort on;
        location /slow {
            content_by_lua_block {
                local slow = ngx.load_ffi("resty_ffi_echo", "delay_ms=300,check_cancel=1")
                local ok, res = slow:echo("never read")
                ngx.say(res)
            }
        }
        location /exit_with_thread {
            content_by_lua_block {
                local slow = ngx.load_ffi("resty_ffi_echo", "delay_ms=300,check_cancel=1")
                ngx.thread.spawn(function() return slow:echo("in a thread") end)
                ngx.exit(204)
            }
        }
        location /kill_thread {
            content_by_lua_block {
                local slow = ngx.load_ffi("resty_ffi_echo", "delay_ms=300,check_cancel=1")
                local th = ngx.thread.spawn(function() return slow:echo("killed") end)
                assert(ngx.thread.kill(th))
                ngx.say("killed")
            }
        }
        location /gc {
            content_by_lua_block {
                collectgarbage()
                collectgarbage()
                ngx.say(ngx.worker.pid())
            }
        }
        location /echo {
            content_by_lua_block {
                local rt = ngx.load_ffi("resty_ffi_echo")
                local ok, res = rt:echo(ngx.var.arg_v)
                ngx.say(res)
            }
        }
        "#,
    );
    let pid = body(&n, "/gc");
    // Clients that hang up mid-call.
    n.hang_up("/slow", 20, Duration::from_millis(50));
    for _ in 0..10 {
        assert_eq!(n.get("/exit_with_thread").status, 204);
        assert_eq!(body(&n, "/kill_thread"), "killed\n");
    }
    // Collect the abandoned calls before their answers arrive, then let the answers come.
    assert_eq!(body(&n, "/gc"), pid, "same worker");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(body(&n, "/gc"), pid, "the worker survived the late answers");
    assert_eq!(body(&n, "/echo?v=alive"), "alive\n");
    let log = n.error_log();
    let cancelled = log.matches("resty_ffi_echo: task cancelled").count();
    assert!(
        cancelled >= 20,
        "abandoned calls were reported cancelled to the runtime ({cancelled}):\n{log}"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn queue_overflow() {
    let n = nginx(
        "overflow",
        1,
        r#"
        location /t {
            content_by_lua_block {
                -- The poll thread sleeps 300 ms before each poll: the first task waits in the
                -- queue, so with max_queue = 1 the second post is refused.
                local rt = ngx.load_ffi("resty_ffi_echo", "poll_delay_ms=300", {max_queue = 1})
                local th = ngx.thread.spawn(function() return rt:echo("first") end)
                local ok, err = rt:echo("second")
                assert(ok == false and err == "post failed, queue full", tostring(err))
                local okw, ok1, res1 = ngx.thread.wait(th)
                assert(okw and ok1 and res1 == "first")
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/t"), "ok\n");
    n.assert_log_clean(&[]);
}

/// The Lua location used by the load and lifecycle tests: echoes a payload derived from `id`.
const ECHO_BY_ID: &str = r#"
location /id {
    content_by_lua_block {
        local id = tonumber(ngx.var.arg_id)
        local cfg = ngx.var.arg_cfg
        local rt = ngx.load_ffi("resty_ffi_echo", cfg)
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
    let n = nginx("load", 2, ECHO_BY_ID);
    let urls: Vec<String> = (0..10_000).map(|i| n.url(&format!("/id?id={i}"))).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replies = rt.block_on(get_many(urls, 200));
    assert_eq!(replies.len(), 10_000);
    for (i, (status, body)) in replies.iter().enumerate() {
        assert_eq!(
            *status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(body)
        );
        assert!(*body == by_id::payload_of(i), "reply {i} differs");
    }
    n.assert_log_clean(&[]);
}

/// Starts `count` slow calls in background threads; returns their join handles.
fn slow_calls(n: &Nginx, count: usize, cfg: &str) -> Vec<by_id::Call> {
    by_id::start(n, count, &format!("cfg={cfg}"))
}

#[test]
fn reload_with_calls_in_flight() {
    let mut n = nginx("reload", 2, ECHO_BY_ID);
    let old = n.worker_pids();
    let calls = slow_calls(&n, 40, "delay_ms=400");
    thread::sleep(Duration::from_millis(150));
    n.reload();
    by_id::assert_answered(calls, "in-flight call survives the reload");
    assert!(
        n.wait_pids_gone(&old, Duration::from_secs(5)),
        "old workers exit"
    );
    // New workers serve.
    assert!(n.get("/id?id=7").body == by_id::payload_of(7));
    let log = n.error_log();
    assert!(
        log.matches("resty_ffi_echo: finished cfg=delay_ms=400")
            .count()
            >= 1,
        "old workers' runtimes got their finish markers:\n{log}"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn quit_with_calls_in_flight() {
    let mut n = nginx("quit", 2, ECHO_BY_ID);
    let calls = slow_calls(&n, 40, "delay_ms=400");
    thread::sleep(Duration::from_millis(150));
    n.quit_within(Duration::from_secs(3));
    by_id::assert_answered(calls, "in-flight call completes before quit");
    let log = n.error_log();
    assert!(
        log.contains("resty_ffi_echo: finished cfg=delay_ms=400"),
        "{log}"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn quit_respects_worker_shutdown_timeout() {
    let mut n = NginxBuilder::new("shutdown-timeout")
        .workers(1)
        .main_conf("worker_shutdown_timeout 1s;")
        .http_conf(&format!("{}\n{INIT}", helpers()))
        .server_conf(ECHO_BY_ID)
        .start();
    let calls = slow_calls(&n, 10, "delay_ms=30000");
    thread::sleep(Duration::from_millis(200));
    n.quit_within(Duration::from_secs(4));
    for c in calls {
        // The connections were closed by nginx: an error or an incomplete reply, never a hang.
        let _ = c.join().unwrap();
    }
    n.assert_log_clean(&[]);
}

#[test]
fn rss_is_flat_over_a_million_calls() {
    let n = nginx(
        "leak",
        1,
        r#"
        location /run {
            content_by_lua_block {
                local rt = ngx.load_ffi("resty_ffi_echo")
                local slow = ngx.load_ffi("resty_ffi_echo", "delay_ms=1")
                local p = payload(512, 3)
                for i = 1, tonumber(ngx.var.arg_n) do
                    local ok, res = rt:echo(p)
                    if not ok or res ~= p then error("bad echo at " .. i) end
                    if i % 1000 == 0 then
                        -- exercise the semaphore path and timeouts too
                        slow:echo(p)
                        slow:echo(p, {timeout = 1})
                    end
                end
                ngx.say(ngx.worker.pid())
            }
        }
        "#,
    );
    let pid: i32 = body(&n, "/run?n=100000").trim().parse().unwrap();
    let after_100k = n.rss_kb(pid).unwrap();
    for _ in 0..9 {
        assert_eq!(body(&n, "/run?n=100000").trim(), pid.to_string());
    }
    let after_1m = n.rss_kb(pid).unwrap();
    let growth = after_1m as f64 / after_100k as f64;
    assert!(
        growth <= 1.05,
        "RSS grew from {after_100k} KiB to {after_1m} KiB ({growth:.3}x)"
    );
    n.assert_log_clean(&[]);
}

/// `resty_ffi_log` bound from Lua on the host library, and a location calling it with
/// `?level=&text=` (`&len=` cuts the text; `&null=1` passes NULL), saying its return value.
const LOG_LOCATION: &str = r#"
        location /log {
            content_by_lua_block {
                local ffi = require "ffi"
                pcall(ffi.cdef, "int resty_ffi_log(int, const char *, size_t);")
                local host = ffi.load(package.searchpath("resty_ffi", package.cpath))
                if ngx.var.arg_init == "1" then
                    assert(ngx.load_ffi("resty_ffi_echo"))   -- attaches the host
                end
                local text = ngx.unescape_uri(ngx.var.arg_text or "")
                local len = tonumber(ngx.var.arg_len) or #text
                local msg = text
                if ngx.var.arg_null == "1" then
                    msg = nil
                end
                ngx.say(host.resty_ffi_log(tonumber(ngx.var.arg_level), msg, len))
            }
        }
"#;

/// The error.log line that ends with `text`.
fn log_line(log: &str, text: &str) -> Option<String> {
    log.lines().find(|l| l.ends_with(text)).map(str::to_owned)
}

/// Checks `YYYY/MM/DD HH:MM:SS [level] PID#TID: text`, nginx's own format, with the worker's
/// pid and its main thread's id.
fn assert_nginx_format(line: &str, level: &str, pid: i32, text: &str) {
    let (stamp, rest) = line.split_at(19.min(line.len()));
    let shape: String = stamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999/99/99 99:99:99", "time stamp of {line:?}");
    assert_eq!(rest, format!(" [{level}] {pid}#{pid}: {text}"), "{line:?}");
}

#[test]
fn log_export_writes_nginx_lines_on_the_main_thread() {
    let n = NginxBuilder::new("log")
        .workers(1)
        .error_log_level("notice")
        .http_conf(INIT)
        .server_conf(LOG_LOCATION)
        .start();
    let pid = n.worker_pids()[0];
    let say = |query: &str| body(&n, &format!("/log?init=1&{query}"));
    assert_eq!(say("level=4&text=log%20test%3A%20an%20error"), "0\n");
    assert_eq!(say("level=5&text=log%20test%3A%20a%20warning"), "0\n");
    assert_eq!(say("level=6&text=log%20test%3A%20a%20notice"), "0\n");
    assert_eq!(say("level=7&text=log%20test%3A%20an%20info%20line"), "0\n");
    assert_eq!(
        say("level=99&text=log%20test%3A%20clamped%20to%20debug"),
        "0\n"
    );
    assert_eq!(say("level=5&text=log%20test%3A%20cut%20here&len=13"), "0\n");
    assert_eq!(say("level=4&null=1&len=5"), "-1\n");
    let log = n.error_log();
    let find =
        |text: &str| log_line(&log, text).unwrap_or_else(|| panic!("no line {text:?} in:\n{log}"));
    assert_nginx_format(
        &find("log test: an error"),
        "error",
        pid,
        "log test: an error",
    );
    assert_nginx_format(
        &find("log test: a warning"),
        "warn",
        pid,
        "log test: a warning",
    );
    assert_nginx_format(
        &find("log test: a notice"),
        "notice",
        pid,
        "log test: a notice",
    );
    assert_nginx_format(&find("log test: cut"), "warn", pid, "log test: cut");
    assert!(
        !log.contains("an info line") && !log.contains("clamped to debug"),
        "lines below the error_log level (notice) are left out:\n{log}"
    );
    assert!(
        !log.contains("cut here"),
        "only len bytes are written:\n{log}"
    );
    n.assert_log_clean(&["log test: an error"]);
}

#[test]
fn log_export_before_the_host_is_attached_writes_stderr() {
    let n = NginxBuilder::new("log-early")
        .workers(1)
        .http_conf(INIT)
        .server_conf(LOG_LOCATION)
        .start();
    // No `ngx.load_ffi` yet in this worker: the host has no eventfd, the line goes to stderr,
    // which nginx points at error.log.
    assert_eq!(body(&n, "/log?level=5&text=log%20test%3A%20early"), "0\n");
    let (found, log) = n.wait_log_contains("log test: early", Duration::from_secs(5));
    assert!(found, "{log}");
    assert_eq!(
        log_line(&log, "log test: early").as_deref(),
        Some("[warn] log test: early")
    );
    // Attached: the same export now writes through nginx's logger.
    assert_eq!(
        body(&n, "/log?init=1&level=5&text=log%20test%3A%20late"),
        "0\n"
    );
    let pid = n.worker_pids()[0];
    let log = n.error_log();
    let late = log_line(&log, "log test: late").unwrap_or_else(|| panic!("{log}"));
    assert_nginx_format(&late, "warn", pid, "log test: late");
    n.assert_log_clean(&[]);
}
