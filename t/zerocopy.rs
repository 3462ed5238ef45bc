//! The zero-copy data plane on a real nginx: `resty.grpc_zc` echo calls through the arena.
//!
//! Every test checks byte-for-byte results, that arena usage and calls in flight return to zero,
//! and that error.log is clean.

use std::thread;
use std::time::Duration;

use testkit::{Nginx, NginxBuilder};

/// Lua shared by the test locations: deterministic binary payloads (`payload(n, seed)`) and
/// `usage()`, "slots=0 bytes=0 calls=0" when nothing is leased and no call is tracked.
fn helpers() -> String {
    format!(
        r#"init_by_lua_block {{
            {}
            function usage()
                local s = assert(require("resty.grpc_zc").stats())
                return string.format("slots=%d bytes=%d calls=%d", s.slots_in_use,
                                     s.bytes_in_use, s.calls_in_flight)
            end
        }}"#,
        testkit::LUA_PAYLOAD
    )
}

fn nginx(name: &str, workers: usize, init: &str, server: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(workers)
        .http_conf(&format!(
            "{}\ninit_worker_by_lua_block {{ local grpc = require \"resty.grpc_zc\"; assert(grpc.init({init})) }}",
            helpers()
        ))
        .server_conf(server)
        .start()
}

fn body(n: &Nginx, path: &str) -> String {
    n.get_ok(path)
}

const IDLE: &str = "slots=0 bytes=0 calls=0";

#[test]
fn payloads_round_trip_byte_for_byte() {
    let n = nginx(
        "zc-sizes",
        1,
        "{ max_message = 8 * 1048576 }",
        r#"
        location /t {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                for _, size in ipairs({0, 1, 2, 255, 4096, 65536, 1048576, 4 * 1048576,
                                       8 * 1048576}) do
                    local p = payload(size, size % 251)
                    local ok, res = grpc.echo(p)
                    assert(ok, "size " .. size .. ": " .. tostring(res))
                    assert(res == p, "mismatch at size " .. size)
                    local ok, r = grpc.echo(p, { inplace = true })
                    assert(ok and r.len == size, "inplace size " .. size)
                    assert(r:string() == p, "inplace mismatch at " .. size)
                    r:release()
                    r:release()  -- idempotent
                end
                -- above the configured maximum: a clear error, nothing leaked
                local ok, err = grpc.echo(string.rep("x", 8 * 1048576 + 1))
                assert(not ok and err:find("max_message"), tostring(err))
                ngx.say(usage())
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/t"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn exhaustion_is_an_error_and_recovers() {
    let n = nginx(
        "zc-exhaust",
        1,
        "{ arena_size = 4 * 1048576, max_message = 1048576 }",
        r#"
        location /t {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local held, err = {}, nil
                for i = 1, 1000 do
                    local ok, r = grpc.echo(payload(200000, i % 256), { inplace = true })
                    if not ok then err = r break end
                    held[#held + 1] = r
                end
                assert(err and err:find("exhausted"), "expected exhaustion, got " .. tostring(err))
                assert(#held > 2, "held " .. #held)
                local s = grpc.stats()
                assert(s.failed_leases >= 1)
                for _, r in ipairs(held) do r:release() end
                -- recovered: the same calls work again
                for i = 1, 50 do
                    local p = payload(200000, i)
                    local ok, res = grpc.echo(p)
                    assert(ok and res == p, "after recovery: " .. tostring(res))
                end
                ngx.say(#held, " ", usage())
            }
        }
        "#,
    );
    let out = body(&n, "/t");
    assert!(out.ends_with(&format!("{IDLE}\n")), "{out}");
    n.assert_log_clean(&[]);
}

#[test]
fn timed_out_and_aborted_calls_give_their_slots_back() {
    let n = NginxBuilder::new("zc-abort")
        .workers(1)
        .http_conf(&format!(
            "{}\nlua_check_client_abort on;\ninit_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}",
            helpers()
        ))
        .server_conf(
            r#"
            location /timeout {
                content_by_lua_block {
                    local grpc = require "resty.grpc_zc"
                    local ok, err = grpc.echo(payload(5000, 1), { delay_ms = 200, timeout = 30 })
                    assert(not ok and err == "timeout", tostring(err))
                    ngx.say("timeout")
                }
            }
            location /slow {
                content_by_lua_block {
                    local ok, res = require("resty.grpc_zc").echo(payload(70000, 2),
                                                                  { delay_ms = 300 })
                    ngx.say(#res)
                }
            }
            location /dropped {
                content_by_lua_block {
                    -- an in-place reply that is never released: the GC gives it back
                    local ok, r = require("resty.grpc_zc").echo("x", { inplace = true })
                    assert(ok)
                    ngx.say("dropped")
                }
            }
            location /usage {
                content_by_lua_block {
                    collectgarbage()
                    collectgarbage()
                    ngx.say(usage())
                }
            }
            "#,
        )
        .start();
    for _ in 0..10 {
        assert_eq!(body(&n, "/timeout"), "timeout\n");
        assert_eq!(body(&n, "/dropped"), "dropped\n");
    }
    n.hang_up("/slow", 10, Duration::from_millis(50));
    // Collect the aborted calls' Lua objects now, then let the late replies arrive.
    let _ = body(&n, "/usage");
    thread::sleep(Duration::from_millis(600));
    assert_eq!(body(&n, "/usage"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn bad_descriptors_and_envelopes_get_errors() {
    let n = nginx(
        "zc-bad",
        1,
        "",
        r#"
        location /t {
            content_by_lua_block {
                local ffi = require "ffi"
                local grpc = require "resty.grpc_zc"
                local s = grpc.stats()
                -- the runtime object resty.grpc_zc posts through (same cache key)
                local rt = ngx.load_ffi("resty_grpc_zc", "instance=" .. s.instance)
                local function expect(req, pattern)
                    local ok, rc, msg = rt:call(req)
                    assert(ok == false and type(rc) == "number",
                           "accepted: " .. tostring(ok) .. " " .. tostring(rc))
                    assert(tostring(msg):find(pattern), tostring(msg))
                end
                expect(nil, "bad request descriptor")
                expect("short", "bad request descriptor")
                expect(string.rep("\0", 16), "request slot")
                expect(string.rep("\255", 16), "bad request descriptor")  -- offset + len overflows
                expect(ffi.string(ffi.new("grpc_zc_desc_t", 12345, 7, 0, 16), 16), "request slot")
                expect(ffi.string(ffi.new("grpc_zc_desc_t", 4096, 99, 0, 16), 16), "request slot")
                -- a live slot holding garbage instead of a FlatBuffer
                local lib = ffi.load("resty_grpc_zc")
                local inst = lib.grpc_zc_instance(s.instance)
                local base = lib.grpc_zc_arena_base(inst)
                for seed = 1, 200 do
                    local c = ffi.new("grpc_zc_call_t")
                    assert(lib.grpc_zc_call_begin(inst, 256, c.h) == 0)
                    local p = base + c.h.offset
                    for i = 0, 255 do p[i] = (i * seed * 31 + seed) % 256 end
                    local d = ffi.new("grpc_zc_desc_t", c.h.offset, c.h.gen, seed % 64, 256 - seed % 64)
                    local ok, rc, msg = rt:call(ffi.string(d, 16))
                    if ok then
                        -- garbage that happens to verify must still be a valid envelope
                        lib.grpc_zc_call_end(inst, c.h, 1, 0)
                    else
                        assert(type(rc) == "number" and msg:find("invalid request envelope")
                               or msg:find("envelope outside"), tostring(msg))
                        lib.grpc_zc_call_end(inst, c.h, 1, 0)
                    end
                end
                -- the data plane still works
                local p = payload(1000, 9)
                local ok, res = grpc.echo(p)
                assert(ok and res == p)
                ngx.say(usage())
            }
        }
        "#,
    );
    assert_eq!(body(&n, "/t"), format!("{IDLE}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn concurrent_calls_across_two_workers() {
    let n = nginx(
        "zc-load",
        2,
        "",
        r#"
        location /id {
            content_by_lua_block {
                local id = tonumber(ngx.var.arg_id)
                local ok, res = require("resty.grpc_zc").echo(payload(id % 5000, id % 256))
                if not ok then
                    ngx.status = 500
                    return ngx.say(res)
                end
                ngx.print(res)
            }
        }
        location /usage { content_by_lua_block { collectgarbage() ngx.say(usage()) } }
        "#,
    );
    let urls: Vec<String> = (0..4000).map(|i| n.url(&format!("/id?id={i}"))).collect();
    for (i, body) in testkit::get_all_ok(urls, 200).iter().enumerate() {
        let chunk: Vec<u8> = (0..256usize)
            .map(|k| ((k * 7 + i % 256) % 256) as u8)
            .collect();
        let want: Vec<u8> = chunk.iter().copied().cycle().take(i % 5000).collect();
        assert!(*body == want, "reply {i} differs");
    }
    for _ in 0..8 {
        assert_eq!(body(&n, "/usage"), format!("{IDLE}\n"));
    }
    n.assert_log_clean(&[]);
}

#[test]
fn hot_paths_jit_compile() {
    let n = nginx(
        "zc-jit",
        1,
        "",
        r#"
        location /t {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local log = ngx.config.prefix() .. "logs/jit.log"
                local v = require "jit.v"
                v.on(log)
                local p = payload(512, 1)
                local big = payload(100000, 2)
                for i = 1, 20000 do
                    local ok, res = grpc.echo(p)
                    if res ~= p then error("bad echo") end
                    local ok, r = grpc.echo(big, { inplace = true })
                    if r.len ~= #big then error("bad echo") end
                    r:release()
                end
                v.off()
                ngx.say(log)
            }
        }
        "#,
    );
    let log_path = body(&n, "/t");
    let log = std::fs::read_to_string(log_path.trim()).expect("jit.v log");
    // jit.v names a function's file by its basename: the client's modules under
    // lua/resty/grpc_zc/ are listed by name next to the facade.
    let ours = [
        "grpc_zc.lua",
        "flatbuffers.lua",
        "resty_ffi.lua",
        "/wire/",
        "/grpc_zc/",
        "lib.lua",
        "instance.lua",
        "call.lua",
        "reply.lua",
        "echo.lua",
        "tables.lua",
        "rpc.lua",
        "conn.lua",
        "stream.lua",
    ];
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NYI") || l.contains("blacklisted"))
        .filter(|l| ours.iter().any(|o| l.contains(o)))
        .collect();
    assert!(
        bad.is_empty(),
        "trace aborts in hot paths:\n{}",
        bad.join("\n")
    );
    // Which traces form, and where they start, depends on timing (whether the host's spin
    // catches the answer or the coroutine yields): the loop's own trace may inline the echo
    // path, or traces may start in any of our modules. What must hold: the loop and our code
    // compile into several traces, and nothing above aborted for good.
    let compiled = log
        .lines()
        .filter(|l| l.starts_with("[TRACE") && !l.starts_with("[TRACE ---"))
        .filter(|l| l.contains("content_by_lua") || ours.iter().any(|o| l.contains(o)))
        .count();
    assert!(
        compiled >= 3,
        "too few compiled traces in the hot path:\n{log}"
    );
    n.assert_log_clean(&[]);
}
