//! The gRPC client on a real nginx against real tonic servers (`testkit`'s grpc-test-server):
//! unary calls, status codes, deadlines and cancellation seen by the server, big and empty
//! messages, server restarts, load across two workers. Every test ends with the arena idle and
//! a clean error.log.

use std::time::{Duration, Instant};

use testkit::{GrpcServer, GrpcServerOpts};

mod common;
use common::{alone, helpers, location, nginx, shared, IDLE};

#[test]
fn unary_calls_and_status_codes() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let server_conf = [
        location(
            "/hello",
            r#"
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("nginx ✓"))
            assert(ok, res)
            ngx.say(field1(res))
            "#,
        ),
        location(
            "/status",
            r#"
            local ok, err, st = conn:unary("/zctest.Test/Unary",
                                           echo_req({ status = 5, message = "nöt found ✓" }))
            assert(ok == false and st.code == 5 and st.message == "nöt found ✓", tostring(err))
            ngx.say(err)
            local ok, err, st = conn:unary("/zctest.Test/Nope", "")
            assert(ok == false and st.code == 12, tostring(err))
            ngx.say(err:match("^[A-Z_]+"))
            local okp, msg = pcall(conn.unary, conn, "no-slash", "")
            assert(not okp and msg:find("bad path"), tostring(msg))
            local okp, msg = pcall(conn.unary, conn, "/a/b", 42)
            assert(not okp and msg:find("string or table expected"), tostring(msg))
            -- a zero-length message is a message
            local ok, res = conn:unary("/zctest.Test/Unary", "")
            assert(ok and res == "", tostring(res))
            ngx.say(usage())
            "#,
        ),
        location(
            "/down",
            r#"
            local ok, err, st = conn:unary("/zctest.Test/Unary", "")
            ngx.say(tostring(ok), " ", err:match("^[A-Z_]+"))
            "#,
        ),
    ]
    .concat();
    let n = nginx("grpc-unary", 1, &server_conf);
    let t = server.addr();
    assert_eq!(n.get_ok(&format!("/hello?t={t}")), "Hello nginx ✓\n");
    assert_eq!(
        n.get_ok(&format!("/status?t={t}")),
        format!("NOT_FOUND: nöt found ✓\nUNIMPLEMENTED\n{IDLE}\n")
    );
    assert_eq!(
        n.get_ok("/down?t=127.0.0.1:1"),
        "false UNAVAILABLE\n",
        "a target nobody listens on"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn deadlines_and_cancellation_reach_the_server() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let server_conf = [
        location(
            "/deadline",
            r#"
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err, st = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 3000 }),
                                           { timeout = 150 })
            ngx.update_time()
            local took = (ngx.now() - t0) * 1000
            assert(ok == false and st.code == 4, tostring(err))
            assert(took >= 140 and took < 150 + 50 + 20, "returned after " .. took .. " ms")
            ngx.say(err:match("^[A-Z_]+"))
            "#,
        ),
        location(
            "/slow",
            r#"
            local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 3000 }))
            ngx.say(tostring(ok))
            "#,
        ),
        "location /usage { content_by_lua_block { collectgarbage() collectgarbage() ngx.say(usage()) } }"
            .to_owned(),
    ]
    .concat();
    let n = nginx("grpc-deadline", 1, &server_conf);
    let t = server.addr();
    for _ in 0..3 {
        assert_eq!(n.get_ok(&format!("/deadline?t={t}")), "DEADLINE_EXCEEDED\n");
    }
    let (cancelled, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 3);
    assert!(cancelled >= 3, "server saw {cancelled} cancelled calls");
    // Clients that hang up: their calls are cancelled on the wire once Lua lets go of them.
    n.hang_up(&format!("/slow?t={t}"), 5, Duration::from_millis(200));
    let _ = n.get_ok("/usage");
    let (cancelled, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 8);
    assert!(
        cancelled >= 8,
        "server saw {cancelled} cancelled calls after aborts"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn big_and_oversize_messages() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let small = GrpcServer::start(GrpcServerOpts::default().max_recv(1024));
    let server_conf = [
        location(
            "/big",
            r#"
            local p = string.rep("\0\1\2\3\255", 838000)    -- 4,190,000 bytes
            local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ payload = p }))
            assert(ok, res)
            assert(field1(res) == p, "4 MB payload differs")
            -- a response above the client's 4 MiB limit
            local ok, err, st = conn:unary("/zctest.Test/Unary", echo_req({ size = 5 * 1048576 }))
            assert(ok == false and st.code == 8, tostring(err))
            ngx.say("big ok")
            "#,
        ),
        location(
            "/oversize",
            r#"
            local ok, err, st = conn:unary("/zctest.Test/Unary",
                                           echo_req({ payload = string.rep("x", 2000) }))
            assert(ok == false and st.code == 8, tostring(err))
            ngx.say(err:match("^[A-Z_]+"), " ", usage())
            "#,
        ),
    ]
    .concat();
    let n = nginx("grpc-big", 1, &server_conf);
    assert_eq!(n.get_ok(&format!("/big?t={}", server.addr())), "big ok\n");
    assert_eq!(
        n.get_ok(&format!("/oversize?t={}", small.addr())),
        format!("RESOURCE_EXHAUSTED {IDLE}\n")
    );
    n.assert_log_clean(&[]);
}

#[test]
fn reconnects_after_a_server_restart() {
    let _machine = shared();
    let mut server = GrpcServer::start(GrpcServerOpts::default());
    let server_conf = r#"
        location /call {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                -- one connection per worker, kept across requests
                if not CONN then
                    local ok, c = grpc.connect(ngx.var.arg_t, { connect_timeout = 500 })
                    assert(ok, c)
                    CONN = c
                end
                local ok, res = CONN:unary("/helloworld.Greeter/SayHello", hello_req("again"),
                                           { timeout = 2000 })
                ngx.say(ok and field1(res) or res)
            }
        }
    "#;
    let n = nginx("grpc-restart", 1, server_conf);
    let url = format!("/call?t={}", server.addr());
    assert_eq!(n.get_ok(&url), "Hello again\n");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = n.get_ok(&url);
        if body == "Hello again\n" {
            break;
        }
        assert!(
            body.starts_with("UNAVAILABLE") || body.starts_with("CANCELLED"),
            "unexpected failure while the server restarts: {body}"
        );
        assert!(Instant::now() < deadline, "no reconnection within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    n.assert_log_clean(&[]);
}

#[test]
fn ipv6_target_and_keepalive_detect_a_frozen_server() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default().listen("[::1]:0"));
    let t = server.addr();
    assert!(t.starts_with("[::1]:"), "{t}");
    // ka=1: HTTP/2 pings every 200 ms, the connection dropped when one is not answered in
    // 300 ms. Prints the outcome and the seconds it took.
    let server_conf = r#"
        location /call {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local opts = { connect_timeout = 1000 }
                if ngx.var.arg_ka then
                    opts.keepalive_interval, opts.keepalive_timeout = 200, 300
                end
                local ok, conn = grpc.connect(ngx.var.arg_t, opts)
                assert(ok, conn)
                ngx.update_time()
                local t0 = ngx.now()
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("v6"),
                                           { timeout = tonumber(ngx.var.arg_timeout) })
                ngx.update_time()
                ngx.say(ok and field1(res) or res:match("^[A-Z_]+"), " ",
                        string.format("%.2f", ngx.now() - t0))
            }
        }
    "#;
    let n = nginx("grpc-keepalive", 1, server_conf);
    let ka = format!("/call?t={t}&ka=1&timeout=10000");
    let plain = format!("/call?t={t}&timeout=1500");
    let outcome = |body: String| -> (String, f64) {
        let (what, secs) = body
            .trim_end()
            .rsplit_once(' ')
            .expect("outcome and seconds");
        (what.to_owned(), secs.parse().expect("seconds"))
    };
    assert_eq!(outcome(n.get_ok(&ka)).0, "Hello v6", "a call to [::1]");
    assert_eq!(outcome(n.get_ok(&plain)).0, "Hello v6");

    // Frozen: TCP still acknowledges, so only the pings can tell. Both calls go out at once.
    server.pause();
    let (ka_body, plain_body) = std::thread::scope(|s| {
        let a = s.spawn(|| n.get_ok(&ka));
        let b = s.spawn(|| n.get_ok(&plain));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (what, secs) = outcome(ka_body);
    assert_eq!(what, "UNAVAILABLE", "keepalive gave up on the connection");
    assert!(secs < 3.0, "keepalive took {secs} s (deadline 10 s)");
    let (what, secs) = outcome(plain_body);
    assert_eq!(
        what, "DEADLINE_EXCEEDED",
        "without keepalive only the deadline ends it"
    );
    assert!(
        (1.45..2.0).contains(&secs),
        "deadline of 1.5 s took {secs} s"
    );

    // Back: the keepalive connection was dropped and is made again.
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (what, _) = outcome(n.get_ok(&ka));
        if what == "Hello v6" {
            break;
        }
        assert_eq!(what, "UNAVAILABLE", "while reconnecting");
        assert!(Instant::now() < deadline, "no reconnection within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(outcome(n.get_ok(&plain)).0, "Hello v6");
    n.assert_log_clean(&[]);
}

#[test]
fn thousand_calls_from_200_concurrent_requests_on_2_workers() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let server_conf = r#"
        location /id {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                if not CONN then
                    local ok, c = grpc.connect(ngx.var.arg_t)
                    assert(ok, c)
                    CONN = c
                end
                local id = tonumber(ngx.var.arg_id)
                local out = {}
                for k = 1, 5 do
                    local p = id .. ":" .. k .. ":" .. string.rep("z", (id * 7 + k) % 3000)
                    local ok, res = CONN:unary("/zctest.Test/Unary", echo_req({ payload = p }))
                    if not ok or field1(res) ~= p then
                        ngx.status = 500
                        return ngx.say("call ", k, " failed: ", tostring(res))
                    end
                    out[k] = #p
                end
                ngx.say(table.concat(out, ","))
            }
        }
        location /usage { content_by_lua_block { collectgarbage() ngx.say(usage()) } }
    "#;
    let n = nginx("grpc-load", 2, server_conf);
    let t = server.addr();
    let urls: Vec<String> = (0..200)
        .map(|i| n.url(&format!("/id?id={i}&t={t}")))
        .collect();
    for (i, body) in testkit::get_all_ok(urls, 200).iter().enumerate() {
        let want: Vec<String> = (1..=5)
            .map(|k| {
                let p = format!("{i}:{k}:");
                (p.len() + (i * 7 + k) % 3000).to_string()
            })
            .collect();
        assert_eq!(
            String::from_utf8_lossy(body),
            format!("{}\n", want.join(","))
        );
    }
    for _ in 0..6 {
        assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    }
    n.assert_log_clean(&[]);
}

#[test]
fn tls_mtls_and_wrong_ca() {
    let _machine = shared();
    let dir = testkit::repo_root().join(format!("target/t-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = testkit::certs(&dir);
    let tls = GrpcServer::start(GrpcServerOpts::default().tls(&certs));
    let mtls = GrpcServer::start(GrpcServerOpts::default().mtls(&certs));
    let server_conf = r#"
        location /tls {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local opts = { host = "localhost", connect_timeout = 2000,
                               ca = assert(grpc.readfile(ngx.var.arg_ca)) }
                if ngx.var.arg_cert then
                    opts.cert = assert(grpc.readfile(ngx.var.arg_cert))
                    opts.priv_key = assert(grpc.readfile(ngx.var.arg_key))
                end
                local ok, conn = grpc.connect(ngx.var.arg_t, opts)
                assert(ok, conn)
                local ok, res, st = conn:unary("/helloworld.Greeter/SayHello", hello_req("tls"),
                                               { timeout = 3000 })
                if not ok then
                    return ngx.say(res:match("^[A-Z_]+"))
                end
                -- a bidi stream over the same TLS channel
                local ok, s = conn:new_stream("/zctest.Test/Bidi", { timeout = 3000 })
                assert(ok, s)
                assert(s:send(echo_req({ payload = "over tls" })))
                local ok, msg = s:recv()
                assert(ok and msg, tostring(msg))
                s:close()
                ngx.say(field1(res), " ", field1(msg))
            }
        }
    "#;
    let n = nginx("grpc-tls", 1, server_conf);
    let q =
        |t: &str, ca: &std::path::Path, client: Option<(&std::path::Path, &std::path::Path)>| {
            let mut u = format!("/tls?t={t}&ca={}", ca.display());
            if let Some((c, k)) = client {
                u.push_str(&format!("&cert={}&key={}", c.display(), k.display()));
            }
            n.get_ok(&u)
        };
    let client = Some((certs.client_cert_path(), certs.client_key_path()));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    assert_eq!(
        q(&tls.addr(), &certs.ca_path(), None),
        "Hello tls over tls\n"
    );
    assert_eq!(
        q(&tls.addr(), &certs.other_ca_path(), None),
        "UNAVAILABLE\n",
        "wrong CA"
    );
    assert_eq!(
        q(&mtls.addr(), &certs.ca_path(), client),
        "Hello tls over tls\n",
        "mTLS"
    );
    assert_eq!(
        q(&mtls.addr(), &certs.ca_path(), None),
        "UNAVAILABLE\n",
        "mTLS server refuses a client without a certificate"
    );
    n.assert_log_clean(&[]);
}

/// Busy polling (`busy_poll_us`): it happens, a window that sees no answer is backed off from,
/// and a call that waits long on its server does not keep the poll thread spinning.
#[test]
fn busy_polling_backs_off_and_stops_when_nothing_happens() {
    let _machine = alone();
    let server = GrpcServer::start(GrpcServerOpts::default());
    // An nginx whose worker runs `init` (Lua) in init_worker.
    let helpers = helpers();
    let start = |name: &str, init: &str, server_conf: &str| {
        testkit::NginxBuilder::new(name)
            .workers(1)
            .http_conf(&format!(
                "{helpers}\ninit_worker_by_lua_block {{\n\
                 local grpc = require \"resty.grpc_zc\"\n{init}\n}}"
            ))
            .server_conf(server_conf)
            .start()
    };
    let conf = location(
        "/quiet",
        r#"
        local grpc = require "resty.grpc_zc"
        local function polled() return grpc.stats().busy_polled_us end
        -- CPU seconds the runtime's poll thread has used (utime + stime, in clock ticks).
        local function poll_cpu()
            local dir = "/proc/" .. ngx.worker.pid() .. "/task/"
            for tid in io.popen("ls " .. dir):lines() do
                local f = io.open(dir .. tid .. "/comm")
                local comm = f and f:read("*l")
                if f then f:close() end
                if comm == "grpc_zc-poll" then
                    local st = assert(io.open(dir .. tid .. "/stat")):read("*a")
                    local fields = {}
                    for v in st:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = v end
                    -- fields[12], fields[13]: utime, stime (stat fields 14 and 15)
                    return (tonumber(fields[12]) + tonumber(fields[13])) / 100
                end
            end
            error("no grpc_zc-poll thread")
        end
        -- Answers that come quickly: the poll thread busy-polls for them.
        local p0 = polled()
        for i = 1, 100 do
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("n" .. i))
            assert(ok, res)
        end
        local fast = polled() - p0
        -- 100 calls to a server that answers 5 ms late: windows of 1 ms that see no answer.
        -- Without the back-off that is 100 ms of polling; with it, windows 1, 3, 6, 11, 20,
        -- 37 and 70 poll (7 ms).
        p0 = polled()
        for _ = 1, 100 do
            local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 5 }))
            assert(ok, res)
        end
        local slow = polled() - p0
        -- One call in flight for 1.2 s, on a server that answers late: nothing happens.
        local th = ngx.thread.spawn(function()
            return conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 1200 }))
        end)
        ngx.sleep(0.1)
        local before = poll_cpu()
        ngx.sleep(1)
        local used = poll_cpu() - before
        local _, ok, res = ngx.thread.wait(th)
        assert(ok, res)
        ngx.say(fast > 0 and "polled" or "fast calls polled 0 µs")
        ngx.say(slow < 20000 and "backed off" or ("slow calls polled " .. slow .. " µs"))
        ngx.say(used < 0.3 and "quiet" or ("the poll thread used " .. used .. " s of CPU"))
        "#,
    );
    let n = start(
        "grpc-busy-poll",
        r#"assert(grpc.init({ busy_poll_us = 1000, busy_poll = "fixed" }))"#,
        &conf,
    );
    let t = server.addr();
    assert_eq!(
        n.get_ok(&format!("/quiet?t={t}")),
        "polled\nbacked off\nquiet\n"
    );
    n.assert_log_clean(&[]);

    // Turned off (and bad values refused) through grpc.init.
    let n = start(
        "grpc-busy-poll-off",
        r#"
        for _, bad in ipairs({ -1, 1.5, 1000001, "200", 0 / 0 }) do
            local ok, err = pcall(grpc.init, { busy_poll_us = bad })
            assert(not ok and err:find("busy_poll_us"), tostring(bad))
        end
        for _, bad in ipairs({ "always", 1, true }) do
            local ok, err = pcall(grpc.init, { busy_poll = bad })
            assert(not ok and err:find("bad option busy_poll"), tostring(bad))
        end
        assert(grpc.init({ busy_poll_us = 0 }))
        "#,
        &location(
            "/hello",
            r#"
            for i = 1, 100 do
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("n" .. i))
                assert(ok and field1(res) == "Hello n" .. i, tostring(res))
            end
            ngx.say(usage(), " polled ", require("resty.grpc_zc").stats().busy_polled_us)
            "#,
        ),
    );
    assert_eq!(
        n.get_ok(&format!("/hello?t={t}")),
        format!("{IDLE} polled 0\n")
    );
    n.assert_log_clean(&[]);
}

/// `busy_poll = "adaptive"` (the default) measures wherever the poll thread runs (but under a
/// cgroup CPU quota: a test below); `"fixed"` polls from the last task; `"ahead"` learns
/// when answers come and sleeps until shortly before them, so a 20 ms answer costs a small part
/// of the 20 ms that polling from the last task spends on it.
#[test]
fn busy_polling_plans_and_ahead_sleeps_until_the_answer_is_near() {
    let _machine = alone();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let helpers = helpers();
    let start = |name: &str, main: &str, init: &str| {
        testkit::NginxBuilder::new(name)
            .workers(1)
            .main_conf(main)
            .error_log_level("info")
            .http_conf(&format!(
                "{helpers}\ninit_worker_by_lua_block {{\n\
                 local grpc = require \"resty.grpc_zc\"\n{init}\n}}"
            ))
            .server_conf(&location(
                "/slow",
                r#"
                local grpc = require "resty.grpc_zc"
                -- 30 calls answered 20 ms late (learning), then 30 measured.
                local function calls(n)
                    for _ = 1, n do
                        local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 20 }))
                        assert(ok, res)
                    end
                end
                calls(30)
                local p0 = grpc.stats().busy_polled_us
                calls(30)
                ngx.say((grpc.stats().busy_polled_us - p0) / 30)
                "#,
            ))
            .start()
    };
    let t = server.addr();
    let polled =
        |n: &testkit::Nginx| -> f64 { n.get_ok(&format!("/slow?t={t}")).trim().parse().unwrap() };
    let plan = |n: &testkit::Nginx, want: &str| {
        let (found, log) = n.wait_log_contains(
            &format!("busy polling: {want} ("),
            std::time::Duration::from_secs(5),
        );
        assert!(found, "no 'busy polling: {want}' line in:\n{log}");
    };
    let window = "busy_poll_us = 30000";

    let ahead = start(
        "busy-ahead",
        "",
        &format!(r#"assert(grpc.init({{ {window}, busy_poll = "ahead" }}))"#),
    );
    let ahead_us = polled(&ahead);
    plan(&ahead, "ahead of the answers");
    let fixed = start(
        "busy-fixed",
        "",
        &format!(r#"assert(grpc.init({{ {window}, busy_poll = "fixed" }}))"#),
    );
    let fixed_us = polled(&fixed);
    plan(&fixed, "from the last task");
    // Polling from the last task polls while the 20 ms pass (less when a loaded machine makes
    // windows miss and back off); ahead of the answer, the timer wakes the loop shortly
    // before it (its lateness, a few hundred µs at worst on a loaded machine, plus a lead), so
    // it polls for a small part of them.
    assert!(fixed_us > 0.0, "fixed polled {fixed_us} us per 20 ms call");
    assert!(
        ahead_us < 5000.0,
        "ahead polled {ahead_us} us per 20 ms call (fixed {fixed_us})"
    );

    let pinned = start(
        "busy-pinned",
        "worker_cpu_affinity 0001;",
        &format!("assert(grpc.init({{ {window} }}))"),
    );
    polled(&pinned);
    plan(&pinned, "measured");
    let adaptive = start(
        "busy-adaptive",
        "",
        &format!("assert(grpc.init({{ {window} }}))"),
    );
    polled(&adaptive);
    plan(&adaptive, "measured");
    let off = start(
        "busy-off",
        "",
        r#"assert(grpc.init({ busy_poll = "off" }))"#,
    );
    assert_eq!(polled(&off), 0.0);
    plan(&off, "off");
    for n in [&ahead, &fixed, &pinned, &adaptive, &off] {
        n.assert_log_clean(&[]);
    }
}

/// `busy_poll = "adaptive"` (the default) weighs polling against sleeping by what each costs
/// per answer as it runs, and takes the cheaper: with 2 calls in flight whose answers take
/// 2 ms, inside a 20 ms window, polling keeps a CPU busy for about a millisecond an answer to
/// see it a wake-up sooner, so after its first stretches (and a confirming try) the runtime
/// switches to sleeping, logs both costs, and from then on polls only in its occasional tries.
/// (With more calls in flight the server queues them and their waits drift by more than the
/// CPU polling costs: the test would measure the server.)
#[test]
fn adaptive_switches_to_sleeping_where_polling_only_costs() {
    let _machine = alone();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let nginx = testkit::NginxBuilder::new("busy-measured")
        .workers(1)
        .error_log_level("info")
        .http_conf(&format!(
            "{}\ninit_worker_by_lua_block {{\n\
             assert(require(\"resty.grpc_zc\").init({{ busy_poll_us = 20000 }}))\n}}",
            helpers()
        ))
        .server_conf(&location(
            "/load",
            r#"
            -- 2 light threads, n calls each, answered 2 ms late; prints the share of the time
            -- the runtime busy-polled.
            local n = tonumber(ngx.var.arg_n)
            local function calls()
                for _ = 1, n do
                    local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 2 }))
                    assert(ok, res)
                end
            end
            ngx.update_time()
            local p0, t0 = grpc.stats().busy_polled_us, ngx.now()
            local threads = {}
            for i = 1, 2 do
                threads[i] = ngx.thread.spawn(calls)
            end
            for i = 1, 2 do
                assert(ngx.thread.wait(threads[i]))
            end
            ngx.update_time()
            ngx.say((grpc.stats().busy_polled_us - p0) / ((ngx.now() - t0) * 1e6))
            "#,
        ))
        .start();
    let load = |n: usize| -> f64 {
        nginx
            .get_ok(&format!("/load?t={}&n={n}", server.addr()))
            .trim()
            .parse()
            .unwrap()
    };
    // Warm-up (512 answers), a stretch polling (512), a try of sleeping (128 settling, 256
    // measured) and its confirmation (256): 1,664 answers.
    let first = load(1000);
    let (found, log) = nginx.wait_log_contains(
        "busy polling: measured, now sleeping (",
        Duration::from_secs(5),
    );
    assert!(found, "no switch to sleeping in:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("measured, now sleeping"))
        .unwrap();
    // "... polling <cpu> + <waiting> us, sleeping <cpu> + <waiting> us)"
    let cost = |way: &str| -> f64 {
        let rest = line.split(&format!("{way} ")).last().unwrap();
        let sum = rest.split(" us").next().unwrap();
        sum.split(" + ").map(|v| v.parse::<f64>().unwrap()).sum()
    };
    let (poll, sleep) = (cost("polling"), cost("sleeping"));
    assert!(sleep < poll, "{line}");
    // From here it sleeps, trying polling for 384 answers after 4, 8 ... stretches of 512.
    // (The first load polls about half its time on a quiet machine and a fifth with both CPUs
    // taken by other work; the drop is what counts. The window is 10 times the answers' time:
    // with 5 ms, one run in about ten ended the first load without a switch, most likely a busy
    // moment slowing the answers past the window, where missed windows back off and polling
    // costs little.)
    let then = load(1000);
    assert!(
        first > 0.15 && then < first / 2.0,
        "share of the time polled: {first:.2} before the switch, {then:.2} after\n{log}"
    );
    assert!(
        !nginx.error_log().contains("measured, now polling"),
        "switched back:\n{}",
        nginx.error_log()
    );
    nginx.assert_log_clean(&[]);
}

/// The runtime's log lines reach nginx's error log in nginx's own format, from the poll thread
/// through the host's `resty_ffi_log` (written by the worker's main thread), and obey the
/// `error_log` level.
#[test]
fn runtime_log_lines_reach_the_error_log_in_nginx_format() {
    let _machine = shared();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let location = location(
        "/t",
        r#"
        local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("log"))
        assert(ok, res)
        conn:close()
        ngx.say(field1(res))
        "#,
    );
    let start = |name: &str, level: &str| {
        testkit::NginxBuilder::new(name)
            .error_log_level(level)
            .http_conf(&format!(
                "{}\ninit_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}",
                helpers()
            ))
            .server_conf(&location)
            .start()
    };
    let url = format!("/t?t={}", server.addr());
    let target = server.addr().to_string();

    let n = start("grpc-log-info", "info");
    assert_eq!(n.get_ok(&url), "Hello log\n");
    let worker = n.worker_pids()[0];
    for what in ["channel opened", "channel closed"] {
        let needle = format!("target {target}: {what}");
        let (found, log) = n.wait_log_contains(&needle, Duration::from_secs(5));
        assert!(found, "no {needle:?} in error.log:\n{log}");
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        // "2026/12/01 20:56:20 [info] 1234#1234: resty_grpc_zc: instance <name>: target ..."
        let (stamp, rest) = line.split_at(19);
        let digits = |s: &str| s.chars().filter(|c| c.is_ascii_digit()).count();
        assert_eq!(digits(stamp), 14, "nginx's time stamp: {line}");
        assert!(
            rest.starts_with(&format!(
                " [info] {worker}#{worker}: resty_grpc_zc: instance "
            )),
            "nginx's level and pid#tid (the worker's main thread wrote it): {line}"
        );
    }
    n.assert_log_clean(&[]);

    // At the default `notice`, info lines are not written.
    let n = start("grpc-log-notice", "notice");
    assert_eq!(n.get_ok(&url), "Hello log\n");
    // Lines queued by runtime threads are written at the host's next wake-up.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !n.error_log().contains("channel opened"),
        "an info line at notice:\n{}",
        n.error_log()
    );
    n.assert_log_clean(&[]);
}

/// A cgroup v1 `cpu` group with a CPU quota, which the calling thread joins (threads and
/// processes it starts then are in it too) until [`QuotaGroup::leave`]; removed when dropped,
/// after what ran in it has exited. An error says why this machine cannot make one (no v1 cpu
/// controller, no permission).
struct QuotaGroup {
    dir: std::path::PathBuf,
}

const CPU_CGROUP: &str = "/sys/fs/cgroup/cpu";

impl QuotaGroup {
    fn join(name: &str, quota_us: u64, period_us: u64) -> Result<QuotaGroup, String> {
        let root = std::path::Path::new(CPU_CGROUP);
        if !root.join("cpu.cfs_quota_us").exists() {
            return Err(format!("no cgroup v1 cpu controller at {CPU_CGROUP}"));
        }
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let group = QuotaGroup { dir };
        let write = |file: &str, v: String| {
            std::fs::write(group.dir.join(file), v).map_err(|e| format!("{file}: {e}"))
        };
        write("cpu.cfs_period_us", period_us.to_string())?;
        write("cpu.cfs_quota_us", quota_us.to_string())?;
        write("tasks", gettid().to_string())?;
        Ok(group)
    }

    /// The calling thread goes back to the root group; what it started stays.
    fn leave(&self) {
        std::fs::write(format!("{CPU_CGROUP}/tasks"), gettid().to_string())
            .expect("back to the root cpu group");
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

impl Drop for QuotaGroup {
    fn drop(&mut self) {
        self.leave();
        // Removable once nginx's processes (stopped before this) have left it.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Under a cgroup CPU quota (a container's CPU limit) the runtime finds the quota, logs it,
/// and the default polls from the last task instead of measuring: there sleeping costs more
/// CPU than polling, and the measured plan's tries of it cost more than they find
/// (docs/benchmarks.md, "Busy polling under a CPU quota", "A plan that measures").
#[test]
fn under_a_cgroup_cpu_quota_the_default_polls_and_logs_the_quota() {
    let _machine = alone();
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making a cgroup needs root");
        return;
    }
    let server = GrpcServer::start(GrpcServerOpts::default());
    let group = match QuotaGroup::join("t-grpc-quota", 150_000, 100_000) {
        Ok(g) => g,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let mut nginx = testkit::NginxBuilder::new("busy-quota")
        .workers(1)
        .error_log_level("info")
        .http_conf(&format!(
            "{}\ninit_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}",
            helpers()
        ))
        .server_conf(&location(
            "/calls",
            r#"
            local grpc = require "resty.grpc_zc"
            local p0 = grpc.stats().busy_polled_us
            for _ = 1, 50 do
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 1 }))
                assert(ok, res)
            end
            ngx.say(grpc.stats().busy_polled_us - p0)
            "#,
        ))
        .start();
    group.leave();
    let cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", nginx.worker_pids()[0])).unwrap();
    assert!(
        cgroup.contains("/t-grpc-quota-"),
        "the worker is not in the group: {cgroup}"
    );
    let polled: f64 = nginx
        .get_ok(&format!("/calls?t={}", server.addr()))
        .trim()
        .parse()
        .unwrap();
    let (found, log) =
        nginx.wait_log_contains("busy polling: from the last task (", Duration::from_secs(5));
    assert!(
        found,
        "no 'busy polling: from the last task' line in:\n{log}"
    );
    assert!(
        log.contains("cgroup CPU quota 1.50)"),
        "the quota is not in the plan's line:\n{log}"
    );
    assert!(polled > 0.0, "50 calls under the quota polled {polled} us");
    nginx.assert_log_clean(&[]);
    nginx.stop();
    drop(group);
}
