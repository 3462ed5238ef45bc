//! Streaming gRPC calls (server, client and bidi) and response metadata on a real nginx against
//! the real tonic test server: every message checked, headers and trailers, status codes with
//! details mid-stream, deadlines and every way Lua can let go of a stream (close, garbage
//! collection, aborted request, `ngx.exit`, deadline) seen as a cancellation by the server, and the arena
//! and stream table idle afterwards.

use std::time::{Duration, Instant};

use testkit::{get_many_blocking, Client, GrpcServer, GrpcServerOpts};

mod common;
use common::{location, nginx, IDLE};

const USAGE: &str =
    "location /usage { content_by_lua_block { collectgarbage() collectgarbage() ngx.say(usage()) } }";

#[test]
fn server_client_and_bidi_streams() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let conf = [
        location(
            "/server",
            r#"
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 5, size = 1000 }), { metadata = { ["x-id"] = "s1" } })
            assert(ok, s)
            local n = 0
            while true do
                local ok, msg = s:recv()
                assert(ok, msg)
                if msg == nil then break end
                local payload, index = echo_reply(msg)
                assert(index == n and #payload == 1000, "message " .. n)
                n = n + 1
            end
            -- after the end, recv keeps answering end of stream
            local ok2, again = s:recv()
            assert(ok2 and again == nil)
            local h, t = s:headers(), s:trailers()
            assert(t["grpc-status"] == nil and t["grpc-message"] == nil, "status is not metadata")
            ngx.say(n, " ", h["x-server"], " ", h["x-id"], " ", t["x-trailer"], " ", t["x-id"])
            assert(s:close())
            "#,
        ),
        location(
            "/client",
            r#"
            local ok, s = conn:client_stream("/zctest.Test/ClientStream")
            assert(ok, s)
            for _, p in ipairs({ "a", "", "bc", string.rep("d", 100000) }) do
                local ok, err = s:send(echo_req({ payload = p }))
                assert(ok, err)
            end
            local ok, res = s:finish()
            assert(ok, res)
            local payload, index = echo_reply(res)
            ngx.say(index, " ", #payload, " ", payload:sub(1, 4), " ", s:trailers()["x-trailer"])
            local ok, err = s:send("late")
            ngx.say(tostring(ok), " ", err)
            "#,
        ),
        location(
            "/bidi",
            r#"
            local ok, s = conn:new_stream("/zctest.Test/Bidi", { metadata = { ["x-b-bin"] = "\0\1\2" } })
            assert(ok, s)
            local h = assert(s:headers())
            assert(h["x-b-bin"] == "\0\1\2", "binary header echoed raw")
            for i = 0, 19 do
                local p = i % 5 == 0 and "" or ("m" .. i)
                assert(s:send(echo_req({ payload = p })))
                local ok, msg = s:recv()
                assert(ok and msg, tostring(msg))
                local payload, index = echo_reply(msg)
                assert(payload == p and index == i, "echo " .. i)
            end
            -- a 4,000,000-byte message both ways (the reply stays under the 4 MiB default)
            local big = string.rep("z", 4000000)
            assert(s:send(echo_req({ payload = big })))
            local ok, msg = s:recv()
            assert(ok and echo_reply(msg) == big, "big message")
            assert(s:close_send())
            local ok, msg = s:recv()
            assert(ok and msg == nil, "end after close_send")
            ngx.say("bidi ok ", s:trailers()["x-trailer"])
            ngx.say(usage())
            "#,
        ),
        location(
            "/failing",
            r#"
            -- two messages, then a status with details
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 2, payload = "x", status = 9, message = "nö ✓",
                           details = "\0det" }))
            assert(ok, s)
            assert(select(2, s:recv()))
            assert(select(2, s:recv()))
            local ok, err, st = s:recv()
            assert(ok == false and st.code == 9 and st.details == "\0det", tostring(err))
            ngx.say(err)
            -- the same answer again, and the trailers are the status's metadata
            local ok2, err2 = s:recv()
            assert(ok2 == false and err2 == err)
            assert(s:trailers()["x-trailer"] == "done")
            -- unknown method on a stream
            local ok, s = conn:new_stream("/zctest.Test/Nope")
            assert(ok, s)
            local ok, err, st = s:recv()
            ngx.say(err:match("^[A-Z_]+"), " ", st.code)
            -- unary with details and response metadata
            local ok, err, st = conn:unary("/zctest.Test/Unary",
                echo_req({ status = 7, message = "no", details = "\1\2" }))
            assert(not ok and st.details == "\1\2" and st.metadata["x-trailer"] == "done")
            local ok, res, meta = conn:unary("/zctest.Test/Unary", echo_req({ payload = "p" }),
                { response_metadata = true, metadata = { ["x-u"] = "1" } })
            assert(ok, res)
            ngx.say(meta.headers["x-server"], " ", meta.headers["x-u"], " ",
                    meta.trailers["x-trailer"], " ", meta.trailers["x-u"])
            "#,
        ),
        USAGE.to_owned(),
    ]
    .concat();
    let n = nginx("grpc-streams", 1, &conf);
    let t = server.addr();
    assert_eq!(n.get_ok(&format!("/server?t={t}")), "5 zctest s1 done s1\n");
    assert_eq!(
        n.get_ok(&format!("/client?t={t}")),
        "4 100003 abcd done\nfalse stream ended\n"
    );
    assert_eq!(
        n.get_ok(&format!("/bidi?t={t}")),
        format!("bidi ok done\n{IDLE}\n")
    );
    assert_eq!(
        n.get_ok(&format!("/failing?t={t}")),
        "FAILED_PRECONDITION: nö ✓\nUNIMPLEMENTED 12\nzctest 1 done 1\n"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn deadlines_and_every_way_of_letting_go_cancel_the_stream() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let conf = [
        location(
            "/deadline",
            r#"
            ngx.update_time()
            local t0 = ngx.now()
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 1000, sleep_ms = 50, payload = "x" }), { timeout = 300 })
            assert(ok, s)
            local n = 0
            while true do
                local ok, msg, st = s:recv()
                if not ok then
                    ngx.update_time()
                    local took = (ngx.now() - t0) * 1000
                    assert(st.code == 4, msg)
                    assert(took >= 290 and took < 300 + 50 + 20, "ended after " .. took .. " ms")
                    break
                end
                n = n + 1
            end
            assert(n >= 3 and n <= 7, n .. " messages before the deadline")
            -- sends after the deadline report it too
            local ok, s = conn:new_stream("/zctest.Test/Bidi", { timeout = 100 })
            ngx.sleep(0.15)
            local ok, err = s:send(echo_req({ payload = "late" }))
            ngx.say(tostring(ok), " ", err:match("^[A-Z_]+"))
            "#,
        ),
        location(
            "/close",
            r#"
            local ok, s = conn:new_stream("/zctest.Test/Bidi")
            assert(s:send(echo_req({ payload = "1" })))
            assert(select(2, s:recv()))
            assert(s:close())
            local ok, err = s:recv()
            ngx.say(tostring(ok), " ", err)
            "#,
        ),
        location(
            "/drop",
            r#"
            do
                local ok, s = conn:new_stream("/zctest.Test/Bidi")
                assert(s:send(echo_req({ payload = "1" })))
                assert(select(2, s:recv()))
            end
            collectgarbage()
            collectgarbage()
            ngx.say("dropped")
            "#,
        ),
        location(
            "/kill",
            r#"
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 2, sleep_ms = 5000 }))
            assert(select(2, s:recv()))
            local th = ngx.thread.spawn(function() return s:recv() end)
            ngx.sleep(0.05)
            assert(ngx.thread.kill(th))
            s = nil
            collectgarbage()
            collectgarbage()
            ngx.say("killed")
            "#,
        ),
        location(
            "/hang",
            r#"
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 2, sleep_ms = 5000 }))
            assert(select(2, s:recv()))
            local ok, msg = s:recv()   -- the client hangs up while this waits
            ngx.say(tostring(ok))
            "#,
        ),
        location(
            "/exit",
            r#"
            -- ngx.exit while light threads wait on a stream and on a unary call
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 2, sleep_ms = 5000 }))
            assert(select(2, s:recv()))
            ngx.thread.spawn(function() return s:recv() end)
            ngx.thread.spawn(function()
                return conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 5000 }))
            end)
            ngx.sleep(0.05)
            ngx.say("exiting")
            ngx.exit(200)
            "#,
        ),
        USAGE.to_owned(),
    ]
    .concat();
    let n = nginx("grpc-stream-cancel", 1, &conf);
    let t = server.addr();
    assert_eq!(
        n.get_ok(&format!("/deadline?t={t}")),
        "false DEADLINE_EXCEEDED\n"
    );
    // The deadline stream and the late bidi stream.
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 2);
    assert!(c >= 2, "server saw {c} cancelled calls after deadlines");
    assert_eq!(n.get_ok(&format!("/close?t={t}")), "false stream closed\n");
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 3);
    assert!(c >= 3, "server saw {c} cancelled calls after close");
    assert_eq!(n.get_ok(&format!("/drop?t={t}")), "dropped\n");
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 4);
    assert!(
        c >= 4,
        "server saw {c} cancelled calls after a dropped stream"
    );
    assert_eq!(n.get_ok(&format!("/kill?t={t}")), "killed\n");
    // The killed thread's coroutine (holding the stream) is freed with its request.
    let _ = n.get_ok("/usage");
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 5);
    assert!(
        c >= 5,
        "server saw {c} cancelled calls after a killed light thread"
    );
    n.hang_up(&format!("/hang?t={t}"), 3, Duration::from_millis(300));
    let _ = n.get_ok("/usage");
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 8);
    assert!(
        c >= 8,
        "server saw {c} cancelled calls after aborted requests"
    );
    assert_eq!(n.get_ok(&format!("/exit?t={t}")), "exiting\n");
    let started = Instant::now();
    let _ = n.get_ok("/usage");
    let (c, _) = server.wait_stats(Duration::from_secs(5), |c, _| c >= 10);
    assert!(
        c >= 10,
        "server saw {c} cancelled calls after ngx.exit (a stream and a unary call)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cancelled on the wire, not ended by the server's 5 s sleep"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn unix_sockets_compression_and_message_limits() {
    let dir = tempdir();
    let sock = format!("{dir}/zctest.sock");
    let uds = GrpcServer::start(GrpcServerOpts::default().uds(&sock));
    let tcp = GrpcServer::start(GrpcServerOpts::default().max_recv(2048));
    let plain = GrpcServer::start(GrpcServerOpts::default());
    let conf = format!(
        r#"
        location /uds {{
            content_by_lua_block {{
                local grpc = require "resty.grpc_zc"
                local ok, conn = grpc.connect("unix:{sock}")
                assert(ok, conn)
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("uds"))
                assert(ok, res)
                ngx.say(field1(res))
                local ok, s = conn:new_stream("/zctest.Test/Bidi")
                assert(s:send(echo_req({{ payload = "over uds" }})))
                local ok, msg = s:recv()
                ngx.say((echo_reply(msg)))
                s:close()
            }}
        }}
        location /gzip {{
            content_by_lua_block {{
                local grpc = require "resty.grpc_zc"
                local ok, conn = grpc.connect(ngx.var.arg_t, {{ compression = "gzip" }})
                local big = string.rep("compressible ", 10000)
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({{ payload = big }}))
                assert(ok, res)
                assert(echo_reply(res) == big)
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({{ payload = "id" }}),
                                           {{ compression = "identity" }})
                assert(ok, res)
                local ok, err = pcall(grpc.connect, ngx.var.arg_t, {{ compression = 1 }})
                assert(not ok)
                local ok, err = grpc.connect(ngx.var.arg_t, {{ compression = "brotli" }})
                ngx.say("gzip ok ", err)
            }}
        }}
        location /limits {{
            content_by_lua_block {{
                local grpc = require "resty.grpc_zc"
                local ok, conn = grpc.connect(ngx.var.arg_t,
                    {{ max_send_msg_size = 1000, max_recv_msg_size = 500 }})
                local ok, err, st = conn:unary("/zctest.Test/Unary",
                                               echo_req({{ payload = string.rep("x", 1001) }}))
                ngx.say(st.code, " ", err:match("^[A-Z_]+"))
                local ok, err, st = conn:unary("/zctest.Test/Unary", echo_req({{ size = 600 }}))
                ngx.say(st.code, " ", err:match("^[A-Z_]+"))
                local ok, s = conn:new_stream("/zctest.Test/Bidi")
                local ok, err, st = s:send(echo_req({{ payload = string.rep("x", 1001) }}))
                ngx.say(st.code)
                assert(s:send(echo_req({{ size = 600 }})))
                local ok, err, st = s:recv()
                ngx.say(st.code)
                -- the server's own limit (2048) on a stream
                local ok, conn2 = grpc.connect(ngx.var.arg_t)
                local ok, s = conn2:new_stream("/zctest.Test/Bidi")
                assert(s:send(echo_req({{ payload = string.rep("y", 3000) }})))
                local ok, err, st = s:recv()
                ngx.say(st.code)
                ngx.say(usage())
            }}
        }}
        {USAGE}
        "#
    );
    let n = nginx("grpc-uds", 1, &conf);
    assert_eq!(n.get_ok("/uds"), "Hello uds\nover uds\n");
    let t = tcp.addr();
    assert_eq!(
        n.get_ok(&format!("/gzip?t={}", plain.addr())),
        "gzip ok INVALID_ARGUMENT: compression \"brotli\" not supported (gzip)\n"
    );
    assert_eq!(
        n.get_ok(&format!("/limits?t={t}")),
        format!("8 RESOURCE_EXHAUSTED\n8 RESOURCE_EXHAUSTED\n8\n8\n8\n{IDLE}\n")
    );
    drop(uds);
    n.assert_log_clean(&[]);
}

#[test]
fn streams_survive_a_server_restart_and_load_on_2_workers() {
    let mut server = GrpcServer::start(GrpcServerOpts::default());
    let conf = [
        location(
            "/long",
            r#"
            local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                echo_req({ count = 100, sleep_ms = 100, payload = "x" }))
            assert(select(2, s:recv()))
            ngx.say("first")
            ngx.flush(true)
            while true do
                local ok, msg, st = s:recv()
                if not ok then
                    ngx.say(msg:match("^[A-Z_]+"))
                    break
                end
                assert(msg, "the stream cannot end normally")
            end
            "#,
        ),
        location(
            "/mixed",
            r#"
            -- 5 concurrent calls of each request: 2 unary, 1 server, 1 client, 1 bidi stream
            local id = ngx.var.arg_id
            local function unary(i)
                local p = id .. ":" .. i
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ payload = p }))
                assert(ok, res)
                assert(echo_reply(res) == p)
            end
            local function server()
                local ok, s = conn:server_stream("/zctest.Test/ServerStream",
                                                 echo_req({ count = 3, payload = id }))
                assert(ok, s)
                for i = 0, 2 do
                    local ok, msg = s:recv()
                    local p, idx = echo_reply(msg)
                    assert(p == id and idx == i)
                end
                assert(s:recv() == true)
            end
            local function client()
                local ok, s = conn:client_stream("/zctest.Test/ClientStream")
                for i = 1, 3 do assert(s:send(echo_req({ payload = id }))) end
                local ok, res = s:finish()
                assert(ok, res)
                local p, n = echo_reply(res)
                assert(p == id .. id .. id and n == 3)
            end
            local function bidi()
                local ok, s = conn:new_stream("/zctest.Test/Bidi")
                for i = 1, 3 do
                    assert(s:send(echo_req({ payload = id .. i })))
                    local ok, msg = s:recv()
                    assert(echo_reply(msg) == id .. i)
                end
                assert(s:close_send())
                local ok, msg = s:recv()
                assert(ok and msg == nil)
            end
            local threads = {
                ngx.thread.spawn(unary, 1), ngx.thread.spawn(unary, 2),
                ngx.thread.spawn(server), ngx.thread.spawn(client), ngx.thread.spawn(bidi),
            }
            for _, th in ipairs(threads) do
                local ok, err = ngx.thread.wait(th)
                assert(ok, err)
            end
            ngx.say("ok ", id)
            "#,
        ),
        USAGE.to_owned(),
    ]
    .concat();
    let n = nginx("grpc-stream-load", 2, &conf);
    let t = server.addr();
    // A stream in flight when the server goes away ends with UNAVAILABLE; new calls work once
    // the server is back.
    let url = n.url(&format!("/long?t={t}"));
    let long = std::thread::spawn(move || Client::new().get(&url));
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let body = long.join().unwrap().expect("response");
    assert_eq!(String::from_utf8_lossy(&body.body), "first\nUNAVAILABLE\n");
    // 200 requests × 5 calls, 40 at a time, on 2 workers: every reply checked in Lua.
    let urls: Vec<String> = (0..200)
        .map(|i| n.url(&format!("/mixed?t={t}&id=r{i}")))
        .collect();
    let results = get_many_blocking(urls, 40);
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(
            *status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(String::from_utf8_lossy(body), format!("ok r{i}\n"));
    }
    for _ in 0..4 {
        assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    }
    n.assert_log_clean(&[]);
}

fn tempdir() -> String {
    let d = std::env::temp_dir().join(format!("grpc_zc-uds-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}
