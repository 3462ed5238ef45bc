//! Faults found from the outside (issue 11), each tested as a class on a real nginx against
//! real servers (the tonic test server and the misbehaving `RogueServer`):
//!
//! - pointers: every public function that takes `(ptr, len)` refuses NULL, non-pointers and
//!   bad lengths before anything reads memory, and the worker never dies;
//! - deadlines: every call kind (unary, client, server, bidi) in every phase (before the
//!   response headers, between messages, during a send) ends with DEADLINE_EXCEEDED, many
//!   times in a row, so a race between the timer and tonic's own errors shows;
//! - sharing: connect objects and streams to one target from concurrent requests, closed in
//!   every order and more than once, never break each other;
//! - options: NaN, inf, -0, huge, negative and fractional numbers in every numeric option;
//!   `connect_timeout` against a server that accepts and stays silent; `readfile` of a folder;
//!   too many metadata entries; bad echo delays;
//! - a property test of the whole Lua API (`resty.grpc_zc`, its `pb`, `resty_ffi`): every
//!   function and method, every argument position, values of every type, from a seeded PRNG
//!   (the seed is printed on failure).

use std::time::{Duration, Instant};

use testkit::grpc::STALL_PATH;
use testkit::{get_many_blocking, GrpcServer, GrpcServerOpts, Nginx, RogueServer};

mod common;
use common::{nginx_with, IDLE};

/// Lua for init_by_lua: the test protos compiled once (pb.decode needs a message type).
fn init_lua() -> String {
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/proto");
    format!(
        r#"
        local grpc = require "resty.grpc_zc"
        assert(grpc.load_proto({{ "helloworld.proto", "zctest.proto" }},
                               {{ import_paths = {{ "{protos}" }} }}))
        "#
    )
}

const USAGE: &str = r#"
    location /usage {
        content_by_lua_block {
            -- replies of abandoned calls may still be on their way: wait for idle a little
            for _ = 1, 100 do
                collectgarbage() collectgarbage()
                if usage() == "slots=0 bytes=0 calls=0 streams=0" then break end
                ngx.sleep(0.02)
            end
            ngx.say(usage())
        }
    }
"#;

fn start(name: &str, server: &str) -> Nginx {
    nginx_with(name, 1, &init_lua(), &[server, USAGE].concat())
}

/// Panics unless the worker is the one that started (`pid`) and error.log shows no crash.
fn assert_worker_alive(n: &Nginx, pid: &[i32]) {
    let log = n.error_log();
    assert!(!log.contains("exited on signal"), "a worker died:\n{log}");
    assert_eq!(n.worker_pids(), pid, "the worker changed:\n{log}");
}

#[test]
fn pointers_and_lengths_are_checked_before_anything_reads_them() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let conf = r#"
        location /pointers {
            content_by_lua_block {
                local ffi = require "ffi"
                local grpc = require "resty.grpc_zc"
                local resty_ffi = require "resty_ffi"
                local pb = grpc.pb
                local NULL = ffi.cast("const uint8_t *", nil)
                local VNULL = ffi.cast("void *", nil)
                local buf = ffi.new("uint8_t[16]")
                local md = assert(pb.message("zctest.EchoRequest"))
                local echo_rt = assert(ngx.load_ffi("resty_ffi_echo"))
                local out = ffi.new("uint8_t[16]")
                -- each: refused (a raised error, or nil/false and a message), never a crash
                local function try(name, f, ...)
                    local ok, a, b = pcall(f, ...)
                    local refused = (not ok) or a == nil or a == false
                    local msg = not ok and a or b
                    ngx.say(name, ": ", refused and "refused" or "ACCEPTED",
                            type(msg) == "string" and "" or " (no message)")
                end
                try("load_descriptor NULL", grpc.load_descriptor, NULL, 100)
                try("load_descriptor void NULL", grpc.load_descriptor, VNULL, 100)
                try("load_descriptor int64", grpc.load_descriptor, 4096LL, 100)
                try("load_descriptor negative", grpc.load_descriptor, buf, -1)
                try("load_descriptor NaN", grpc.load_descriptor, buf, 0/0)
                try("load_descriptor oversized", grpc.load_descriptor, buf, 2^40)
                try("load_descriptor past the array", grpc.load_descriptor, buf, 17)
                try("load_descriptor fractional", grpc.load_descriptor, buf, 1.5)
                try("decode NULL", pb.decode, md, NULL, 10)
                try("decode int64", pb.decode, md, 12345LL, 10)
                try("decode negative", pb.decode, md, buf, -5)
                try("decode inf", pb.decode, md, buf, math.huge)
                try("decode past the array", pb.decode, md, buf, 100)
                try("encode_into NULL", pb.encode_into, md, { payload = "abc" }, NULL, 5)
                try("encode_into int64", pb.encode_into, md, { payload = "abc" }, 77LL, 5)
                try("call_ptr NULL request", resty_ffi.call_ptr, echo_rt, NULL, 16, nil, out, 16)
                try("call_ptr negative", resty_ffi.call_ptr, echo_rt, buf, -1, nil, out, 16)
                try("call_ptr NaN", resty_ffi.call_ptr, echo_rt, buf, 0/0, nil, out, 16)
                try("call_ptr huge", resty_ffi.call_ptr, echo_rt, buf, 2^53, nil, out, 16)
                try("call_ptr NULL out", resty_ffi.call_ptr, echo_rt, buf, 16, nil, NULL, 16)
                try("call_ptr out NaN", resty_ffi.call_ptr, echo_rt, buf, 16, nil, out, 0/0)
                try("call_ptr int64 out", resty_ffi.call_ptr, echo_rt, buf, 16, nil, 5LL, 16)
                try("call_ptr timeout NaN", resty_ffi.call_ptr, echo_rt, buf, 16,
                    { timeout = 0/0 }, out, 16)
                -- and the valid forms still work
                local d = grpc.readfile(ngx.var.arg_fds)
                ngx.say("descriptor (ptr, len): ",
                        tostring(grpc.load_descriptor(ffi.cast("const uint8_t *", d), #d)))
                local enc = assert(pb.encode(md, { payload = "abc" }))
                local t = assert(pb.decode(md, ffi.cast("const uint8_t *", enc), #enc))
                ngx.say("decode (ptr, len): ", t.payload)
                local ok, n = resty_ffi.call_ptr(echo_rt, buf, 16, nil, out, 16)
                ngx.say("call_ptr: ", tostring(ok), " ", tostring(n))
                local ok, conn = grpc.connect(ngx.var.arg_t)
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "ptr" })
                ngx.say("call: ", ok and res.message or res)
            }
        }
    "#;
    let n = start("faults-pointers", conf);
    let pid = n.worker_pids();
    // A FileDescriptorSet of helloworld.proto, written by the runtime's own compiler.
    let fds = n.prefix().join("hello.fds");
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/proto");
    let set = resty_grpc_zc::proto::compile(&["helloworld.proto"], &[protos]).expect("compiling");
    std::fs::write(&fds, set).unwrap();
    let out = n.get_ok(&format!(
        "/pointers?t={}&fds={}",
        server.addr(),
        fds.display()
    ));
    let refused: Vec<&str> = out.lines().filter(|l| l.contains(": ")).collect();
    for line in &refused[..refused.len() - 4] {
        assert!(line.ends_with(": refused"), "{line}\n{out}");
    }
    assert!(
        out.ends_with(
            "descriptor (ptr, len): true\ndecode (ptr, len): abc\ncall_ptr: true 16\ncall: Hello ptr\n"
        ),
        "{out}"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    assert_worker_alive(&n, &pid);
}

/// Lua that runs `body` `RUNS` times, tallying how each run ended; `body` returns
/// (ok, err, status) of the operation that should fail with DEADLINE_EXCEEDED.
const RUNS: usize = 50;

fn deadline_case(name: &str, body: &str) -> String {
    format!(
        r#"
        do
            local tally, other = 0, nil
            for i = 1, {RUNS} do
                local ok, err, st = (function() {body} end)()
                if ok == false and st and st.code == 4 then
                    tally = tally + 1
                else
                    other = other or (tostring(ok) .. " " .. tostring(err))
                end
            end
            ngx.say("{name}: ", tally, "/{RUNS}", other and (" first other: " .. other) or "")
        end
        "#
    )
}

#[test]
fn every_call_kind_and_phase_ends_with_deadline_exceeded() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let rogue = RogueServer::start();
    let cases = [
        // Before the response headers: a server that never answers the request.
        deadline_case(
            "unary, before headers",
            r#"return stall:unary(STALL, "x", { timeout = 20 })"#,
        ),
        deadline_case(
            "server, before headers",
            r#"local ok, s = assert(stall:server_stream(STALL, "x", { timeout = 20 }))
               local a, b, c = s:recv() s:close() return a, b, c"#,
        ),
        deadline_case(
            "server headers(), before headers",
            r#"local ok, s = assert(stall:server_stream(STALL, "x", { timeout = 20 }))
               local h, err = s:headers()
               local a, b, c = s:recv() s:close()
               if h ~= nil then return true, "headers" end
               return a, b, c"#,
        ),
        deadline_case(
            "client, before headers",
            r#"local ok, s = assert(stall:client_stream(STALL, { timeout = 20 }))
               local a, b, c = s:finish() s:close() return a, b, c"#,
        ),
        deadline_case(
            "bidi, before headers",
            r#"local ok, s = assert(stall:new_stream(STALL, { timeout = 20 }))
               local a, b, c = s:recv() s:close() return a, b, c"#,
        ),
        // Before the headers, a slow server (tonic sends them when the handler returns).
        deadline_case(
            "unary, slow server",
            r#"return conn:unary("/zctest.Test/Unary", echo_req({ sleep_ms = 200 }),
                                 { timeout = 20 })"#,
        ),
        // Between messages.
        deadline_case(
            "server, between messages",
            r#"local ok, s = assert(conn:server_stream("/zctest.Test/ServerStream",
                   echo_req({ count = 100, sleep_ms = 15, payload = "x" }), { timeout = 25 }))
               while true do
                   local a, b, c = s:recv()
                   if not a or b == nil then s:close() return a, b, c end
               end"#,
        ),
        deadline_case(
            "bidi, between messages",
            r#"local ok, s = assert(conn:new_stream("/zctest.Test/Bidi", { timeout = 25 }))
               assert(s:send(echo_req({ payload = "1" })))
               assert(select(2, s:recv()))
               local a, b, c = s:recv() s:close() return a, b, c"#,
        ),
        deadline_case(
            "client, between messages",
            r#"local ok, s = assert(conn:client_stream("/zctest.Test/ClientStream",
                   { timeout = 25 }))
               assert(s:send(echo_req({ payload = "1" })))
               ngx.sleep(0.03)
               local a, b, c = s:finish() s:close() return a, b, c"#,
        ),
        // During a send: the server reads nothing, flow control fills up.
        deadline_case(
            "client, during a send",
            r#"local ok, s = assert(stall:client_stream(STALL, { timeout = 40 }))
               for _ = 1, 100 do
                   local a, b, c = s:send(BIG)
                   if not a then s:close() return a, b, c end
               end
               s:close() return true, "all sent""#,
        ),
        deadline_case(
            "bidi, during a send",
            r#"local ok, s = assert(stall:new_stream(STALL, { timeout = 40 }))
               for _ = 1, 100 do
                   local a, b, c = s:send(BIG)
                   if not a then s:close() return a, b, c end
               end
               s:close() return true, "all sent""#,
        ),
    ];
    // One location per case: each request stays well under the HTTP client's timeout.
    let conf: String = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            format!(
                r#"
        location /deadline{i} {{
            content_by_lua_block {{
                local grpc = require "resty.grpc_zc"
                STALL = "{STALL_PATH}"
                BIG = string.rep("b", 100000)
                local ok
                ok, conn = assert(grpc.connect(ngx.var.arg_t))
                ok, stall = assert(grpc.connect(ngx.var.arg_r))
                {case}
            }}
        }}
        "#
            )
        })
        .collect();
    let n = start("faults-deadlines", &conf);
    let full = format!("{RUNS}/{RUNS}");
    let mut out = String::new();
    for i in 0..cases.len() {
        out += &n.get_ok(&format!(
            "/deadline{i}?t={}&r={}",
            server.addr(),
            rogue.addr()
        ));
    }
    for line in out.lines() {
        assert!(line.ends_with(&full), "{line}\n--- all ---\n{out}");
    }
    assert_eq!(out.lines().count(), cases.len(), "{out}");
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn shared_connections_and_streams_survive_closes_in_any_order() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let conf = r#"
        location /share {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local t = ngx.var.arg_t
                local seed = tonumber(ngx.var.arg_seed)
                math.randomseed(seed)
                -- three objects with one id (same settings), one with another id on the same
                -- channel, and a stream on each
                local conns = {}
                for i = 1, 3 do conns[i] = select(2, assert(grpc.connect(t))) end
                conns[4] = select(2, assert(grpc.connect(t, { timeout = 5000 })))
                local streams = {}
                for i = 1, 4 do
                    -- raw: strings, although init_by_lua loaded the method's types
                    local ok, s = assert(conns[i]:new_stream("/zctest.Test/Bidi", { raw = true }))
                    streams[i] = s
                end
                local function works(c, what)
                    local ok, res = c:unary("/zctest.Test/Unary", echo_req({ payload = what }))
                    assert(ok, what .. ": " .. tostring(res))
                    assert(echo_reply(res) == what)
                end
                -- close objects and streams in a random order, each 1-3 times, interleaved
                -- with the other requests (ngx.sleep), and check the rest keep working
                local order = {}
                for i = 1, 8 do order[i] = i end
                for i = 8, 2, -1 do
                    local j = math.random(i)
                    order[i], order[j] = order[j], order[i]
                end
                local closed, sclosed = {}, {}
                for _, k in ipairs(order) do
                    for _ = 1, math.random(3) do
                        if k <= 4 then
                            assert(conns[k]:close())
                            closed[k] = true
                        else
                            assert(streams[k - 4]:close())
                            sclosed[k - 4] = true
                        end
                        ngx.sleep(0.001)
                    end
                    for i = 1, 4 do
                        if not closed[i] then works(conns[i], "c" .. i) end
                        local s = streams[i]
                        if not sclosed[i] then
                            assert(s:send(echo_req({ payload = "s" .. i })))
                            local ok, msg = s:recv()
                            assert(ok and echo_reply(msg) == "s" .. i, tostring(msg))
                        end
                    end
                    -- a call on a closed object: a clear local error
                    for i = 1, 4 do
                        if closed[i] then
                            local ok, err, st = conns[i]:unary("/zctest.Test/Unary", "")
                            assert(ok == false and st and st.code == 9
                                   and err:find("closed", 1, true), tostring(err))
                        end
                    end
                end
                -- a fresh connect after all that works
                local ok, c = assert(grpc.connect(t))
                works(c, "fresh")
                c:close()
                ngx.say("ok")
            }
        }
    "#;
    let n = start("faults-share", conf);
    let t = server.addr();
    let urls: Vec<String> = (0..48)
        .map(|i| n.url(&format!("/share?t={t}&seed={i}")))
        .collect();
    for (i, (status, body)) in get_many_blocking(urls, 8).into_iter().enumerate() {
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, "ok\n".to_owned()),
            "request {i}\n{}",
            n.error_log()
        );
    }
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn connect_timeout_covers_the_handshake() {
    let rogue = RogueServer::start();
    let conf = r#"
        location /silent {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local function run(name, target, opts, f)
                    local ok, conn = assert(grpc.connect(target, opts))
                    ngx.update_time()
                    local t0 = ngx.now()
                    local ok, err, st = f(conn)
                    ngx.update_time()
                    local took = (ngx.now() - t0) * 1000
                    ngx.say(name, ": ", tostring(ok), " ", st and st.code or "-", " ",
                            took < 1500 and "in time" or ("after " .. took .. " ms"))
                end
                local t = ngx.var.arg_t
                local o = { connect_timeout = 300 }
                run("unary", t, o, function(c)
                    return c:unary("/zctest.Test/Unary", "", { timeout = 5000 })
                end)
                run("server stream", t, o, function(c)
                    local ok, s = assert(c:server_stream("/zctest.Test/ServerStream", "",
                                                         { timeout = 5000 }))
                    return s:recv()
                end)
                run("tls", "https://" .. t, o, function(c)
                    return c:unary("/zctest.Test/Unary", "", { timeout = 5000 })
                end)
                -- no connect_timeout: the call's deadline still ends it
                run("no connect_timeout", t, nil, function(c)
                    return c:unary("/zctest.Test/Unary", "", { timeout = 300 })
                end)
            }
        }
    "#;
    let n = start("faults-silent", conf);
    assert_eq!(
        n.get_ok(&format!("/silent?t={}", rogue.silent_addr())),
        "unary: false 14 in time\nserver stream: false 14 in time\ntls: false 14 in time\n\
         no connect_timeout: false 4 in time\n"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn bad_numbers_folders_metadata_and_echo_delays_are_refused() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let conf = r#"
        location /numbers {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local t = ngx.var.arg_t
                local BAD = { 0/0, math.huge, -math.huge, 1e300, -1, -0.5, 2^32, 2^53 }
                local refused, accepted = 0, {}
                local function expect_refused(what, f)
                    local ok, a, b = pcall(f)
                    if ok and a ~= nil and a ~= false then
                        accepted[#accepted + 1] = what
                    else
                        refused = refused + 1
                    end
                end
                local ok, conn = assert(grpc.connect(t))
                for _, v in ipairs(BAD) do
                    local sv = tostring(v)
                    for _, k in ipairs({ "connect_timeout", "timeout", "keepalive_interval",
                                         "keepalive_timeout", "max_send_msg_size",
                                         "max_recv_msg_size" }) do
                        expect_refused("connect " .. k .. "=" .. sv, function()
                            return grpc.connect(t, { [k] = v })
                        end)
                    end
                    expect_refused("unary timeout=" .. sv, function()
                        return conn:unary("/zctest.Test/Unary", "", { timeout = v })
                    end)
                    expect_refused("stream timeout=" .. sv, function()
                        return conn:new_stream("/zctest.Test/Bidi", { timeout = v })
                    end)
                    expect_refused("echo delay_ms=" .. sv, function()
                        return grpc.echo("x", { delay_ms = v })
                    end)
                    expect_refused("echo timeout=" .. sv, function()
                        return grpc.echo("x", { timeout = v })
                    end)
                    for _, k in ipairs({ "arena_size", "max_message", "busy_poll_us", "cpus" }) do
                        expect_refused("init " .. k .. "=" .. sv, function()
                            -- options are checked even when the runtime is loaded
                            return grpc.init({ [k] = v })
                        end)
                    end
                end
                ngx.say("refused ", refused, #accepted > 0
                        and (" accepted: " .. table.concat(accepted, ", ")) or "")
                -- NaN as a connection's default timeout used to poison it
                local ok, c = pcall(grpc.connect, t, { timeout = 0/0 })
                local ok2, res = conn:unary("/zctest.Test/Unary", echo_req({ payload = "p" }))
                ngx.say("after NaN: ", tostring(ok2), " ", (echo_reply(res)))
                -- fractional milliseconds round up, never to "no deadline"
                local ok, err, st = conn:unary("/zctest.Test/Unary",
                    echo_req({ sleep_ms = 300 }), { timeout = 0.4 })
                ngx.say("0.4 ms: ", tostring(ok), " ", st and st.code)
                -- -0 is zero
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ payload = "z" }),
                                           { timeout = -0 })
                ngx.say("-0: ", tostring(ok))
                -- 0 is "no deadline" (a connection's) or "the connection's" (a call's): a call
                -- longer than the host's grace period still gets its answer
                local ok, c0 = grpc.connect(t, { timeout = 0 })
                local ok, res = c0:unary("/zctest.Test/Unary",
                    echo_req({ payload = "0", sleep_ms = 1200 }), { timeout = 0 })
                ngx.say("0 ms: ", tostring(ok), " ", (echo_reply(res)))
                c0:close()

                -- a folder
                local data, err = grpc.readfile("/tmp")
                ngx.say("readfile folder: ", tostring(data), " ", type(err))
                local data, err = grpc.readfile("/nonexistent/x")
                ngx.say("readfile missing: ", tostring(data), " ", type(err))

                -- too many metadata entries: a status, early
                local md = {}
                for i = 1, 10000 do md["x-k" .. i] = "v" end
                local ok, err, st = conn:unary("/zctest.Test/Unary", "", { metadata = md })
                ngx.say("10000 metadata: ", tostring(ok), " ", st and st.code, " ",
                        tostring(err):match("^[A-Z_]+"))
                local ok, s, st = conn:new_stream("/zctest.Test/Bidi", { metadata = md })
                ngx.say("10000 metadata stream: ", tostring(ok), " ", st and st.code)
                local md = {}
                for i = 1, 100 do md["x-k" .. i] = "v" end
                local ok, res = conn:unary("/zctest.Test/Unary", echo_req({ payload = "m" }),
                                           { metadata = md })
                ngx.say("100 metadata: ", tostring(ok))

                -- echo delays
                local ok, r = grpc.echo("d", { delay_ms = 1 })
                ngx.say("delay 1: ", tostring(ok), " ", r)
                local ok, e = pcall(grpc.echo, "d", { delay_ms = -1 })
                ngx.say("delay -1: ", tostring(ok), " ", tostring(e):match("bad [%w_. ]+"))
            }
        }
    "#;
    let n = start("faults-numbers", conf);
    let out = n.get_ok(&format!("/numbers?t={}", server.addr()));
    // 8 values × (6 connect options + 2 call timeouts + 2 echo options + 4 init options)
    assert_eq!(
        out,
        "refused 112\nafter NaN: true p\n0.4 ms: false 4\n-0: true\n0 ms: true 0\n\
         readfile folder: nil string\nreadfile missing: nil string\n\
         10000 metadata: false 8 RESOURCE_EXHAUSTED\n10000 metadata stream: false 8\n\
         100 metadata: true\ndelay 1: true d\ndelay -1: false bad option delay_ms\n"
    );
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

/// The property test's Lua: `n` random calls of random public functions with random
/// arguments; prints a summary line, or raises with the seed and the offending call.
const PROPERTY: &str = r#"
    location /property {
        content_by_lua_block {
            local ffi = require "ffi"
            local grpc = require "resty.grpc_zc"
            local resty_ffi = require "resty_ffi"
            local pb = grpc.pb
            local seed, count, t = tonumber(ngx.var.arg_seed), tonumber(ngx.var.arg_n), ngx.var.arg_t
            -- a small PRNG of our own (xorshift32), so a seed means the same run everywhere
            local bit = require "bit"
            local state = seed * 2654435761 % 4294967296
            if state == 0 then state = 1 end
            local function rnd(n)
                state = bit.bxor(state, bit.lshift(state, 13))
                state = bit.bxor(state, bit.rshift(state, 17))
                state = bit.bxor(state, bit.lshift(state, 5))
                return (state % 4294967296) % n + 1
            end

            local ok, conn = assert(grpc.connect(t, { connect_timeout = 1000, timeout = 100 }))
            local echo_rt = assert(ngx.load_ffi("resty_ffi_echo"))
            local PB_OPTIONS = pb.option()
            local streams, replies = {}, {}
            local BIG = string.rep("B", 5 * 1048576)
            local MT = setmetatable({}, { __index = function() error("poisoned index") end,
                                          __len = function() return 1e9 end,
                                          __pairs = function() error("poisoned pairs") end })
            local co = coroutine.create(function() end)
            local NULL = ffi.cast("const uint8_t *", nil)
            local OPT_KEYS = { "timeout", "connect_timeout", "keepalive_interval",
                "keepalive_timeout", "max_send_msg_size", "max_recv_msg_size", "compression",
                "host", "ca", "cert", "priv_key", "insecure", "metadata", "response_metadata",
                "raw", "inplace", "delay_ms", "import_paths", "arena_size", "max_message",
                "cpus", "busy_poll_us", "int64", "enum", "encode", "decode", "max_queue",
                "spin_us", "poll_spin_us", "is_global", "unpin", "service_config",
                "resolve_interval" }
            local PATHS = { "/zctest.Test/Unary", "/zctest.Test/ServerStream",
                "/zctest.Test/ClientStream", "/zctest.Test/Bidi", "/helloworld.Greeter/SayHello",
                "/nope.Nope/Nope", "/" }
            local gen
            local function table_of(depth)
                local k = rnd(6)
                if k == 1 then return {} end
                if k == 2 then return { gen(depth + 1), gen(depth + 1) } end
                if k == 3 then return MT end
                if k == 4 then return { name = gen(depth + 1), payload = gen(depth + 1) } end
                if k == 5 then
                    local key = gen(depth + 1)
                    if key == nil or key ~= key then key = 1 end
                    return { ["x-a"] = gen(depth + 1), [key] = "v" }
                end
                local o = {}
                for _ = 1, rnd(3) do
                    o[OPT_KEYS[rnd(#OPT_KEYS)]] = gen(depth + 1)
                end
                return o
            end
            local VALUES = {
                function() return nil end, function() return true end,
                function() return false end, function() return 0 end,
                function() return -0 end, function() return 1 end, function() return -1 end,
                function() return 0/0 end, function() return math.huge end,
                function() return -math.huge end, function() return 1e300 end,
                function() return 0.5 end, function() return 123.456 end,
                function() return 2^31 end, function() return 2^32 end,
                function() return 2^53 end, function() return -2^31 end,
                function() return "" end, function() return BIG end,
                function() return "a\0b\r\nc" end, function() return t end,
                function() return "unix:/nonexistent" end,
                function() return PATHS[rnd(#PATHS)] end,
                function() return echo_req({ payload = "p", count = 2 }) end,
                function() return "/tmp" end,
                function(d) return d < 2 and table_of(d) or {} end,
                function(d) return d < 2 and table_of(d) or {} end,
                function() return ffi.new("uint8_t[16]") end,
                function() return NULL end, function() return 5LL end,
                function() return ffi.new("struct { int a; }") end,
                function() return print end, function() return co end,
                function() return conn end, function() return echo_rt end,
                function() return streams[rnd(4)] end,
                function() return pb.message("zctest.EchoRequest") end,
            }
            gen = function(depth)
                return VALUES[rnd(#VALUES)](depth or 0)
            end
            -- A random `self` one call in eight. Not the resty_ffi runtime object for other
            -- classes' methods: its __index answers every name with a function (so a method
            -- that reads self.err sees one); that object is misuse no check can tell apart.
            local function self_of(obj)
                if rnd(8) == 1 then
                    local v = gen()
                    if v ~= echo_rt or obj == echo_rt then return v end
                end
                return obj
            end
            local function nomethod() error("no such object here", 2) end
            local function keep(a, b)
                if type(b) == "table" and getmetatable(b) and b.recv then
                    streams[#streams % 4 + 1] = b
                elseif type(b) == "table" and b.release then
                    replies[#replies + 1] = b
                end
            end
            -- name, how to call with random arguments, whether a bare nil is documented
            local FUNCS = {
                { "grpc.init", function(a) return grpc.init(a) end },
                { "grpc.echo", function(a, b) return grpc.echo(a, b) end },
                { "grpc.connect", function(a, b)
                    local ok, c = grpc.connect(a, b)
                    if ok and rnd(2) == 1 then c:close() end
                    return ok, c
                  end },
                { "grpc.stats", function(a) return grpc.stats(a) end },
                { "grpc.readfile", function(a) return grpc.readfile(a) end },
                { "grpc.metrics", function(a) return grpc.metrics(a) end },
                { "grpc.metrics_publish", function(a, b) return grpc.metrics_publish(a, b) end },
                { "grpc.prometheus", function(a) return grpc.prometheus(a) end },
                { "grpc.load_proto", function(a, b) return grpc.load_proto(a, b) end },
                { "grpc.load_descriptor", function(a, b) return grpc.load_descriptor(a, b) end },
                { "grpc.load_reflection", function(a, b, c)
                    return grpc.load_reflection(self_of(conn), a, b) end },
                { "grpc.set_codec", function(a)
                    local r = { pcall(grpc.set_codec, a) }
                    grpc.set_codec(nil)
                    if not r[1] then error(r[2], 0) end
                    return unpack(r, 2)
                  end },
                { "pb.encode", function(a, b) return pb.encode(a, b) end },
                { "pb.decode", function(a, b, c) return pb.decode(a, b, c) end },
                { "pb.size", function(a, b) return pb.size(a, b) end },
                { "pb.encode_into", function(a, b, c, d) return pb.encode_into(a, b, c, d) end },
                { "pb.message", function(a) return pb.message(a) end, true },
                { "pb.enum", function(a) return pb.enum(a) end, true },
                { "pb.method", function(a) return pb.method(a) end, true },
                { "pb.option", function(a)
                    local r = { pcall(pb.option, a) }
                    pb.option(PB_OPTIONS)
                    if not r[1] then error(r[2], 0) end
                    return r[2] ~= nil, r[2]
                  end },
                { "conn:unary", function(a, b, c) return conn.unary(self_of(conn), a, b, c) end },
                { "conn:server_stream", function(a, b, c)
                    return conn.server_stream(self_of(conn), a, b, c) end },
                { "conn:client_stream", function(a, b)
                    return conn.client_stream(self_of(conn), a, b) end },
                { "conn:new_stream", function(a, b) return conn.new_stream(self_of(conn), a, b) end },
                { "conn:close", function()
                    local ok, c = grpc.connect(t, { connect_timeout = 1000, timeout = 100 })
                    c:close()
                    local o = self_of(c)
                    if o == conn then o = c end  -- the shared conn stays open
                    return c.close(o)
                  end },
                { "stream:send", function(a)
                    local s = streams[rnd(4)] or {}
                    return (s.send or nomethod)(self_of(s), a)
                  end },
                { "stream:recv", function() local s = streams[rnd(4)] or {}
                    return (s.recv or nomethod)(self_of(s)) end },
                { "stream:close_send", function() local s = streams[rnd(4)] or {}
                    return (s.close_send or nomethod)(self_of(s)) end },
                { "stream:finish", function() local s = streams[rnd(4)] or {}
                    return (s.finish or nomethod)(self_of(s)) end },
                { "stream:headers", function() local s = streams[rnd(4)] or {}
                    return (s.headers or nomethod)(self_of(s)) end },
                { "stream:trailers", function() local s = streams[rnd(4)] or {}
                    return (s.trailers or nomethod)(self_of(s)) end, true },
                { "stream:close", function() local s = streams[rnd(4)] or {}
                    return (s.close or nomethod)(self_of(s)) end },
                { "reply:string", function() local r = replies[#replies] or {}
                    return (r.string or nomethod)(self_of(r)) end },
                { "reply:release", function() local r = table.remove(replies) or {}
                    return (r.release or nomethod)(self_of(r)), "" end },
                { "resty_ffi.call_ptr", function(a, b, c, d, e)
                    return resty_ffi.call_ptr(self_of(echo_rt), a, b, c, d, e) end },
                { "resty_ffi.stats", function(a) return resty_ffi.stats(self_of(echo_rt)) end },
                { "resty_ffi.load_ffi", function(a, b, c)
                    -- never a real library name: starting runtimes is not the point here
                    if a == "resty_ffi_echo" then a = "x" end
                    return resty_ffi.load_ffi(a, b, c)
                  end },
                { "runtime:call", function(a, b)
                    local o = self_of(echo_rt)
                    if type(o) == "function" then o = echo_rt end  -- print() is no runtime
                    return o(a, b)
                  end },
            }
            -- Valid arguments by function name: half the calls take them with one or two
            -- positions replaced, so the checks behind the first argument are reached too.
            local VALID = {
                ["grpc.init"] = function() return { { busy_poll_us = 500 } } end,
                ["grpc.echo"] = function() return { "payload", { timeout = 100 } } end,
                ["grpc.connect"] = function() return { t, { connect_timeout = 1000 } } end,
                ["grpc.readfile"] = function() return { "/tmp" } end,
                ["grpc.load_descriptor"] = function() return { "", 0 } end,
                ["grpc.load_reflection"] = function()
                    return { "zctest.Test", { timeout = 100 } } end,
                ["pb.encode"] = function() return { pb.message("zctest.EchoRequest"),
                                                    { payload = "x" } } end,
                ["pb.size"] = function() return { pb.message("zctest.EchoRequest"),
                                                  { payload = "x" } } end,
                ["pb.decode"] = function() return { pb.message("zctest.EchoRequest"),
                                                    "\10\1x", 3 } end,
                ["pb.encode_into"] = function() return { pb.message("zctest.EchoRequest"),
                    { payload = "x" }, ffi.new("uint8_t[16]"), 3 } end,
                ["conn:unary"] = function() return { "/zctest.Test/Unary",
                    echo_req({ payload = "p" }), { timeout = 100 } } end,
                ["conn:server_stream"] = function() return { "/zctest.Test/ServerStream",
                    echo_req({ count = 2 }), { timeout = 100 } } end,
                ["conn:client_stream"] = function()
                    return { "/zctest.Test/ClientStream", { timeout = 100 } } end,
                ["conn:new_stream"] = function()
                    return { "/zctest.Test/Bidi", { timeout = 100, raw = true } } end,
                ["stream:send"] = function() return { echo_req({ payload = "x" }) } end,
                ["resty_ffi.call_ptr"] = function() return { ffi.new("uint8_t[16]"), 16,
                    { timeout = 100 }, ffi.new("uint8_t[16]"), 16 } end,
                ["runtime:call"] = function() return { "abc", { timeout = 100 } } end,
            }
            local calls, raised, failed, succeeded = 0, 0, 0, 0
            for i = 1, count do
                local f = FUNCS[rnd(#FUNCS)]
                local args
                local valid = VALID[f[1]]
                if valid and rnd(2) == 1 then
                    args = valid()
                    for _ = 1, rnd(2) do args[rnd(5)] = gen() end
                else
                    args = { gen(), gen(), gen(), gen(), gen() }
                end
                local r = { pcall(f[2], unpack(args, 1, 5)) }
                calls = calls + 1
                local shape
                if not r[1] then
                    raised = raised + 1
                    if type(r[2]) ~= "string" then shape = "raised a " .. type(r[2]) end
                elseif r[2] == nil or r[2] == false then
                    failed = failed + 1
                    if type(r[3]) ~= "string" and not (f[3] and r[2] == nil) then
                        shape = "returned " .. tostring(r[2]) .. " without a message"
                    end
                    if r[4] ~= nil and (type(r[4]) ~= "table" or type(r[4].code) ~= "number") then
                        shape = "returned a status that is not one: " .. type(r[4]) .. " " .. tostring(r[4]) .. " " .. tostring(r[3])
                    end
                else
                    succeeded = succeeded + 1
                    keep(r[2], r[3])
                end
                if shape then
                    local desc = {}
                    for j = 1, 5 do desc[j] = type(args[j]) .. ":" .. tostring(args[j]):sub(1, 40) end
                    error("seed " .. seed .. " call " .. i .. ": " .. f[1] .. "("
                          .. table.concat(desc, ", ") .. ") " .. shape)
                end
            end
            for i = 1, 4 do if streams[i] then streams[i]:close() end end
            for _, r in ipairs(replies) do r:release() end
            streams, replies = nil, nil
            grpc.set_codec(nil)
            -- a normal call afterwards works
            local ok, conn = assert(grpc.connect(t))
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "after" })
            assert(ok, res)
            ngx.say("seed ", seed, ": ", calls, " calls, ", raised, " raised, ", failed,
                    " failed, ", succeeded, " succeeded; ", res.message)
        }
    }
"#;

#[test]
fn property_every_public_function_with_arguments_of_every_type() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let n = start("faults-property", PROPERTY);
    let pid = n.worker_pids();
    let t = server.addr();
    let base: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() % 100_000)
        });
    let started = Instant::now();
    let mut total = 0;
    for seed in base..base + 8 {
        let r = n.get(&format!("/property?seed={seed}&n=2500&t={t}"));
        assert_eq!(
            r.status,
            200,
            "seed {seed} (re-run with FAULTS_SEED={seed}): {}\n{}",
            r.text(),
            n.error_log()
        );
        println!("{}", r.text().trim_end());
        total += 2500;
        assert_worker_alive(&n, &pid);
        if started.elapsed() > Duration::from_secs(50) {
            break;
        }
    }
    println!("{total} calls in {:?}", started.elapsed());
    assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"), "seeds from {base}");
    assert_worker_alive(&n, &pid);
}
