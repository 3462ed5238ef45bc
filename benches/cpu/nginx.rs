//! The nginx sides: one worker whose runtime is started with a given busy-polling plan, the Lua
//! of the two cases, and one timed Lua request.

use std::time::Duration;

use testkit::bench::{busy_poll_plan, LUA_BENCH_NOW, LUA_IN_FLIGHT};
use testkit::{GrpcServer, Nginx, NginxBuilder};

use crate::placement::Placement;
use crate::{IN_FLIGHT, WARMUP};

/// The runtime's `busy_poll` option of each nginx side, in side order.
pub const MODES: [&str; 3] = ["adaptive", "fixed", "off"];

const HTTP_CONF: &str = r#"
init_worker_by_lua_block {
    assert(require("resty.grpc_zc").init({ busy_poll = "@MODE@" }))
}
init_by_lua_block {
    @BENCH_NOW@
    @IN_FLIGHT@
    WARMUP = @WARMUP@
    HELLO = "/helloworld.Greeter/SayHello"
    -- n SayHello calls with an empty name (an empty message).
    function calls(conn, n)
        for _ = 1, n do
            local ok, res = conn:unary(HELLO, "")
            if not ok then error(res) end
        end
    end
    -- Prints a timed loop's seconds and the µs the runtime busy-polled during it.
    function say_timed(f)
        local grpc = require "resty.grpc_zc"
        local p0 = grpc.stats().busy_polled_us
        local secs = f()
        ngx.say(secs, " ", grpc.stats().busy_polled_us - p0)
    end
    function connect()
        local ok, conn = require("resty.grpc_zc").connect(ngx.var.arg_t)
        assert(ok, conn)
        return conn
    end
}
"#;

const SERVER_CONF: &str = r#"
location /seq {
    content_by_lua_block {
        local conn = connect()
        local n = tonumber(ngx.var.arg_n)
        calls(conn, WARMUP)
        say_timed(function()
            local t0 = bench_now()
            calls(conn, n)
            return bench_now() - t0
        end)
    }
}
location /conc {
    content_by_lua_block {
        -- c light threads of this request calling in a loop on one connection, n calls in all.
        local conn = connect()
        local c, n = tonumber(ngx.var.arg_c), tonumber(ngx.var.arg_n)
        say_timed(function()
            return in_flight(c, n, WARMUP, function(k) calls(conn, k) end)
        end)
    }
}
"#;

/// An nginx (one worker) for `placement` whose runtime runs `grpc.init({ busy_poll = mode })`,
/// and the plan its poll thread chose (its `busy polling: <plan> (` line in error.log).
pub fn start(placement: Placement, mode: &str) -> (Nginx, String) {
    let nginx = NginxBuilder::new(&format!("bench-cpu-{}-{mode}", placement.key()))
        .workers(1)
        // The runtime's threads start in init_worker, after nginx set the worker's mask, and
        // inherit it; the plan is chosen then.
        .main_conf(placement.worker_conf())
        // info: the plan's line.
        .error_log_level("info")
        .http_conf(
            &HTTP_CONF
                .replace("@MODE@", mode)
                .replace("@BENCH_NOW@", LUA_BENCH_NOW)
                .replace("@IN_FLIGHT@", LUA_IN_FLIGHT)
                .replace("@WARMUP@", &WARMUP.to_string()),
        )
        .server_conf(SERVER_CONF)
        .start();
    let plan = busy_poll_plan(&nginx, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no busy-polling plan in error.log:\n{}", nginx.error_log()));
    (nginx, plan)
}

/// The Lua request of a case with `calls` timed calls.
pub fn query(sequential: bool, calls: usize) -> String {
    if sequential {
        format!("/seq?n={calls}")
    } else {
        format!("/conc?c={IN_FLIGHT}&n={calls}")
    }
}

/// Seconds of a Lua request's timed loop, as Lua measured it, and the seconds its runtime
/// busy-polled meanwhile (the warm-up's polling included in the in-flight case).
pub fn timed(nginx: &Nginx, server: &GrpcServer, query: &str) -> (f64, f64) {
    let url = format!("{query}&t={}", server.addr());
    let text = nginx.get_ok(&url);
    let mut figures = text.split_whitespace().map(|f| f.parse::<f64>());
    match (figures.next(), figures.next()) {
        (Some(Ok(secs)), Some(Ok(polled_us))) => (secs, polled_us / 1e6),
        _ => panic!("{url}: {text}"),
    }
}
