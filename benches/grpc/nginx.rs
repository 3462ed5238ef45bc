//! The nginx side: the Lua of the benchmark's locations, starting an nginx with it, and one timed
//! Lua request.

use std::path::Path;

use testkit::bench::{LUA_BENCH_NOW, LUA_IN_FLIGHT};
use testkit::{GrpcServer, Nginx, NginxBuilder, LUA_PAYLOAD, LUA_VARINT};

use crate::placement::Placement;
use crate::WARMUP;

const HTTP_CONF: &str = r#"
init_worker_by_lua_block {
    -- GRPC_BENCH_SPIN="spin_us,poll_spin_us,busy_poll_us": load the runtime with these host
    -- spins and this busy polling first (grpc.init then finds it); empty: the defaults.
    local spin = os.getenv("GRPC_BENCH_SPIN")
    if spin and spin ~= "" then
        local s, p, b = spin:match("^(%d+),(%d+),(%d+)$")
        assert(s, "GRPC_BENCH_SPIN: spin_us,poll_spin_us,busy_poll_us expected")
        require "resty_ffi"
        -- The cfg string grpc.init builds for these opts: the same cache key.
        assert(ngx.load_ffi("resty_grpc_zc",
                            "instance=grpc_zc-" .. ngx.worker.pid() .. ",busy_poll_us=" .. b,
                            { spin_us = tonumber(s), poll_spin_us = tonumber(p) }))
        assert(require("resty.grpc_zc").init({ busy_poll_us = tonumber(b) }))
    end
    -- GRPC_BENCH_BUSY_POLL: the busy-polling plan (grpc.init's busy_poll); empty: the default.
    local plan = os.getenv("GRPC_BENCH_BUSY_POLL")
    if plan and plan ~= "" then
        assert(require("resty.grpc_zc").init({ busy_poll = plan }))
    end
    assert(require("resty.grpc_zc").init())
}
init_by_lua_block {
    @BENCH_NOW@
    @IN_FLIGHT@
    @VARINT@
    -- A message whose field 1 (string or bytes) is s; proto3 leaves an empty one out.
    function field1(s)
        if #s == 0 then return "" end
        return "\10" .. varint(#s) .. s
    end
    @PAYLOAD@
    WARMUP = @WARMUP@
    HELLO = "/helloworld.Greeter/SayHello"
    UNARY = "/zctest.Test/Unary"
    -- n calls; every reply must be want_len bytes (nil: any length).
    function calls(conn, path, req, n, want_len)
        for _ = 1, n do
            local ok, res = conn:unary(path, req)
            if not ok then error(res) end
            if want_len and #res ~= want_len then
                error("reply of " .. #res .. " bytes, want " .. want_len)
            end
        end
    end
    function connect()
        local ok, conn = require("resty.grpc_zc").connect(ngx.var.arg_t)
        assert(ok, conn)
        return conn
    end
    -- Message types for the table path (issue 5).
    assert(require("resty.grpc_zc").load_proto({ "helloworld.proto", "zctest.proto" },
                                                { import_paths = { "@PROTO@" } }))
}
"#;

const SERVER_CONF: &str = r#"
location /seq {
    content_by_lua_block {
        local conn = connect()
        local size, n = tonumber(ngx.var.arg_size), tonumber(ngx.var.arg_n)
        local path, req, want = HELLO, "", nil
        if ngx.var.arg_m == "echo" then
            req = field1(payload(size, 1))
            path, want = UNARY, #req
            -- &sleep=ms (below 128): the server answers that late (EchoRequest.sleep_ms, a
            -- field the reply does not echo).
            local sleep = tonumber(ngx.var.arg_sleep)
            if sleep then
                req = req .. "\32" .. string.char(sleep)
            end
        end
        calls(conn, path, req, WARMUP, want)
        local t0 = bench_now()
        calls(conn, path, req, n, want)
        ngx.say(bench_now() - t0)
    }
}
location /tables {
    content_by_lua_block {
        -- The same calls with Lua tables (encoded into the arena, replies decoded from it) or
        -- with pre-encoded strings.
        local conn = connect()
        local size, n = tonumber(ngx.var.arg_size), tonumber(ngx.var.arg_n)
        local tables = ngx.var.arg_mode == "table"
        local path, req, want
        if ngx.var.arg_m == "echo" then
            local p = payload(size, 1)
            path, want = UNARY, size
            req = tables and { payload = p } or field1(p)
        else
            path = HELLO
            req = tables and { name = "world" } or field1("world")
        end
        local function run(k)
            for _ = 1, k do
                local ok, res = conn:unary(path, req)
                if not ok then error(res) end
                if want and #(tables and res.payload or res) < want then
                    error("short reply")
                end
            end
        end
        run(WARMUP)
        local t0 = bench_now()
        run(n)
        ngx.say(bench_now() - t0)
    }
}
location /transport {
    content_by_lua_block {
        -- The transport bench's paths (benches/transport.rs), for pairing builds with
        -- scripts/grpc-ab.sh: &path=ffi (the host and the reference echo runtime, copies),
        -- zc_string or zc_inplace (resty.grpc_zc's echo through the arena); &size, &n.
        local grpc = require "resty.grpc_zc"
        local size, n = tonumber(ngx.var.arg_size), tonumber(ngx.var.arg_n)
        local p = payload(size, 1)
        local path = ngx.var.arg_path
        local call
        if path == "ffi" then
            local rt = assert(ngx.load_ffi("resty_ffi_echo"))
            call = function()
                local ok, res = rt:echo(p)
                if not ok or #res ~= size then error("bad echo") end
            end
        elseif path == "zc_inplace" then
            local opts = { inplace = true }
            call = function()
                local ok, r = grpc.echo(p, opts)
                if not ok or r.len ~= size then error("bad echo") end
                r:release()
            end
        else
            call = function()
                local ok, res = grpc.echo(p)
                if not ok or res ~= p then error("bad echo") end
            end
        end
        for _ = 1, WARMUP do call() end
        local t0 = bench_now()
        for _ = 1, n do call() end
        ngx.say(bench_now() - t0)
    }
}
location /conc {
    content_by_lua_block {
        local conn = connect()
        local c, n = tonumber(ngx.var.arg_c), tonumber(ngx.var.arg_n)
        ngx.say(in_flight(c, n, WARMUP, function(k) calls(conn, HELLO, "", k) end))
    }
}
"#;

/// Starts an nginx (one worker) serving the benchmark's locations. `spin` is
/// `GRPC_BENCH_SPIN` for its init (empty: the defaults), `plan` its `GRPC_BENCH_BUSY_POLL`
/// (`busy_poll`; empty: the default); `lib_dir` is another build to run
/// (`None`: this tree's): its `libresty_grpc_zc.so`, and its host library and `lua/` tree when it
/// has them ([`NginxBuilder::build_dir`]).
pub fn start(
    name: &str,
    spin: &str,
    plan: &str,
    lib_dir: Option<&str>,
    placement: Placement,
    root: &Path,
) -> Nginx {
    let mut b = NginxBuilder::new(name);
    if let Some(dir) = lib_dir {
        b = b.build_dir(Path::new(dir));
    }
    b.workers(1)
        // The runtime's threads start in init_worker, after nginx set the worker's mask, and
        // inherit it.
        .main_conf(placement.worker_conf())
        .env("GRPC_BENCH_SPIN", spin)
        .env("GRPC_BENCH_BUSY_POLL", plan)
        // info: the busy-polling plan's line (`plan`).
        .error_log_level("info")
        .http_conf(
            &HTTP_CONF
                .replace("@BENCH_NOW@", LUA_BENCH_NOW)
                .replace("@IN_FLIGHT@", LUA_IN_FLIGHT)
                .replace("@VARINT@", LUA_VARINT)
                .replace("@PAYLOAD@", LUA_PAYLOAD)
                .replace("@WARMUP@", &WARMUP.to_string())
                .replace("@PROTO@", &root.join("testkit/proto").to_string_lossy()),
        )
        .server_conf(SERVER_CONF)
        .start()
}

/// Seconds for a Lua request (`/seq`, `/conc` or `/tables`), as Lua measured it.
pub fn timed(nginx: &Nginx, server: &GrpcServer, query: &str) -> f64 {
    let url = format!("{query}&t={}", server.addr());
    let text = nginx.get_ok(&url);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{url}: {text}"))
}
