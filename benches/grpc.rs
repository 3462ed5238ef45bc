//! gRPC benchmark: sequential `helloworld.Greeter/SayHello` calls from one Lua coroutine through
//! `resty.grpc_zc`, against the native tonic client doing the same loop, same server, same run.
//!
//! Writes `target/bench/grpc.json` and the `grpc` section of `docs/benchmarks.md`. Run with
//! `make bench` (or `cargo bench --bench grpc`); `BENCH_QUICK=1` runs 10x fewer calls.

use std::fmt::Write as _;
use std::fs;
use std::time::Instant;

use testkit::bench::{machine, median, replace_section};
use testkit::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use testkit::{repo_root, GrpcServer, GrpcServerOpts, NginxBuilder};

/// (name length in bytes, calls).
const CASES: &[(usize, usize)] = &[(0, 20_000), (512, 20_000), (4096, 20_000), (102_400, 5_000)];
const REPEATS: usize = 3;

const LUA: &str = r#"
init_worker_by_lua_block { assert(require("resty.grpc_zc").init()) }
init_by_lua_block {
    local ffi = require "ffi"
    ffi.cdef [[
        typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
        int clock_gettime(int clk, bench_timespec *ts);
    ]]
    local ts = ffi.new("bench_timespec")
    function bench_now()
        ffi.C.clock_gettime(1, ts)
        return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
    function hello_req(name)
        local n, t = #name, {}
        repeat
            local b = n % 128
            n = math.floor(n / 128)
            t[#t + 1] = string.char(n > 0 and b + 128 or b)
        until n == 0
        return "\10" .. table.concat(t) .. name
    end
}
"#;

const LOCATION: &str = r#"
location /bench {
    content_by_lua_block {
        local grpc = require "resty.grpc_zc"
        local ok, conn = grpc.connect(ngx.var.arg_t)
        assert(ok, conn)
        local req = hello_req(string.rep("n", tonumber(ngx.var.arg_size)))
        local n = tonumber(ngx.var.arg_n)
        for _ = 1, 200 do assert(conn:unary("/helloworld.Greeter/SayHello", req)) end
        local t0 = bench_now()
        for _ = 1, n do
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", req)
            if not ok then error(res) end
        end
        ngx.say(bench_now() - t0)
    }
}
"#;

fn native(server: &GrpcServer, size: usize, n: usize) -> f64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = GreeterClient::new(server.channel().await);
        let name = "n".repeat(size);
        for _ in 0..200 {
            client
                .say_hello(HelloRequest { name: name.clone() })
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        for _ in 0..n {
            client
                .say_hello(HelloRequest { name: name.clone() })
                .await
                .unwrap();
        }
        t0.elapsed().as_secs_f64()
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();
    let server = GrpcServer::start(GrpcServerOpts::default());
    let nginx = NginxBuilder::new("bench-grpc")
        .workers(1)
        .error_log_level("warn")
        .http_conf(LUA)
        .server_conf(LOCATION)
        .start();

    let mut rows = Vec::new();
    for &(size, calls) in CASES {
        let calls = if quick { calls / 10 } else { calls };
        let mut lua = Vec::new();
        let mut nat = Vec::new();
        for _ in 0..REPEATS {
            let url = format!("/bench?size={size}&n={calls}&t={}", server.addr());
            lua.push(nginx.get_ok(&url).trim().parse::<f64>().unwrap());
            nat.push(native(&server, size, calls));
        }
        let (l, t) = (median(lua), median(nat));
        eprintln!(
            "{size:>7} B: resty.grpc_zc {:.1} µs/call, native tonic {:.1} µs/call",
            l * 1e6 / calls as f64,
            t * 1e6 / calls as f64
        );
        rows.push((size, calls, l, t));
    }
    nginx.assert_log_clean(&[]);

    let machine = machine();
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|&(size, calls, l, t)| {
            serde_json::json!({
                "name_bytes": size, "calls": calls,
                "grpc_zc_s": l, "tonic_s": t,
                "grpc_zc_us_per_call": l * 1e6 / calls as f64,
                "tonic_us_per_call": t * 1e6 / calls as f64,
                "overhead": l / t - 1.0,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "benchmark": "grpc", "machine": machine, "quick": quick, "repeats": REPEATS,
        "results": results,
    });
    fs::write(
        root.join("target/bench/grpc.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();

    let mut table = String::from(
        "| name size | calls | resty.grpc_zc from Lua (µs/call) | native tonic client (µs/call) | overhead |\n|---|---|---|---|---|\n",
    );
    for &(size, calls, l, t) in &rows {
        let _ = writeln!(
            table,
            "| {size} B | {calls} | {:.1} | {:.1} | {:+.0} % |",
            l * 1e6 / calls as f64,
            t * 1e6 / calls as f64,
            (l / t - 1.0) * 100.0
        );
    }
    let body = format!(
        "Command: `make bench` (`cargo bench --bench grpc`{}). Machine: {machine}.\n\
         Sequential SayHello calls against testkit's tonic server on 127.0.0.1, one nginx worker\n\
         (unpinned) vs the native tonic 0.14 client on a default multi-thread tokio runtime, median\n\
         of {REPEATS} runs; results also in `target/bench/grpc.json`.\n\n{table}\n",
        if quick { ", BENCH_QUICK=1" } else { "" },
    );
    replace_section(&root.join("docs/benchmarks.md"), "grpc", &body);
    println!("{table}");
}
