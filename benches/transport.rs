//! Transport benchmark: sequential echo calls from one Lua coroutine, side by side in one run.
//!
//! Paths compared (same nginx, same worker, same payloads):
//! - `ffi`: `ngx.load_ffi` host + the reference echo runtime (lua-resty-ffi's copy semantics);
//! - `uds`: the "proxy model": a cosocket client talking to a separate echo process over a
//!   unix-domain socket with 4-byte length frames;
//! - `zc_inplace`: `resty.grpc_zc` echo through the arena, reply read in place (length and two
//!   bytes checked, then released);
//! - `zc_string`: the same, reply materialized as a Lua string and compared.
//!
//! Each (size, path) is run `REPEATS` times and the median is kept; the whole table is measured
//! twice: with the worker, its runtime threads and the echo process pinned to CPU 0
//! (`worker_cpu_affinity` / `taskset -c 0`) and unpinned.
//!
//! Writes `target/bench/transport.json`, `docs/benchmarks.md` (the transport section) and
//! `docs/img/transport.svg`. Run with `make bench` (or `cargo bench --bench transport`);
//! `BENCH_QUICK=1` runs 10x fewer calls.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use testkit::bench::{machine, median, replace_section};
use testkit::{repo_root, NginxBuilder, UdsEcho};

const SIZES: &[usize] = &[512, 4096, 10240, 102_400, 1_048_576];
const PATHS: &[&str] = &["ffi", "uds", "zc_inplace", "zc_string"];
const PATH_NAMES: &[&str] = &[
    "host + echo runtime (copy)",
    "UDS proxy",
    "zero-copy, in place",
    "zero-copy, Lua string",
];
const REPEATS: usize = 3;

fn calls_for(size: usize, quick: bool) -> usize {
    // 100,000 calls as in the seed's table; 1 MiB uses 10,000 (same per-call figure, a tenth of
    // the time: 100,000 MiB through a socket takes minutes).
    let n = if size >= 1_048_576 { 10_000 } else { 100_000 };
    if quick {
        n / 10
    } else {
        n
    }
}

const LUA: &str = r#"
init_worker_by_lua_block {
    require "resty_ffi"
    assert(require("resty.grpc_zc").init({ max_message = 2 * 1048576 }))
}
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
}
"#;

const LOCATION: &str = r#"
location /bench {
    content_by_lua_block {
        local ffi = require "ffi"
        local bit = require "bit"
        local size = tonumber(ngx.var.arg_size)
        local n = tonumber(ngx.var.arg_n)
        local path = ngx.var.arg_path
        local buf = string.rep("A", size)
        local t0, t1
        if path == "ffi" then
            local rt = assert(ngx.load_ffi("resty_ffi_echo"))
            for _ = 1, 200 do assert(select(2, rt:echo(buf)) == buf) end
            t0 = bench_now()
            for _ = 1, n do
                local ok, res = rt:echo(buf)
                if res ~= buf then error("bad echo") end
            end
            t1 = bench_now()
        elseif path == "zc_string" then
            local grpc = require "resty.grpc_zc"
            for _ = 1, 200 do assert(select(2, grpc.echo(buf)) == buf) end
            t0 = bench_now()
            for _ = 1, n do
                local ok, res = grpc.echo(buf)
                if res ~= buf then error("bad echo") end
            end
            t1 = bench_now()
        elseif path == "zc_inplace" then
            local grpc = require "resty.grpc_zc"
            local last = size - 1
            for _ = 1, 200 do
                local ok, r = grpc.echo(buf, { inplace = true })
                assert(ok and r:string() == buf)
                r:release()
            end
            t0 = bench_now()
            for _ = 1, n do
                local ok, r = grpc.echo(buf, { inplace = true })
                if not ok or r.len ~= size or r.ptr[0] ~= 65 or r.ptr[last] ~= 65 then
                    error("bad echo")
                end
                r:release()
            end
            t1 = bench_now()
        elseif path == "uds" then
            local sock = ngx.socket.tcp()
            assert(sock:connect("unix:" .. ngx.var.arg_sock))
            local hdr = ffi.new("unsigned char[4]")
            local len = size
            for i = 3, 0, -1 do
                hdr[i] = bit.band(len, 255)
                len = bit.rshift(len, 8)
            end
            local frame = { ffi.string(hdr, 4), buf }
            local function once()
                assert(sock:send(frame) == size + 4)
                local h = assert(sock:receive(4))
                local b1, b2, b3, b4 = h:byte(1, 4)
                local l = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
                local data = assert(sock:receive(l))
                if data ~= buf then error("bad echo") end
            end
            for _ = 1, 200 do once() end
            t0 = bench_now()
            for _ = 1, n do once() end
            t1 = bench_now()
            sock:close()
        else
            return ngx.exit(400)
        end
        ngx.say(t1 - t0)
    }
}
"#;

struct Row {
    pinned: bool,
    size: usize,
    calls: usize,
    /// Median seconds per path, in `PATHS` order.
    secs: Vec<f64>,
}

fn run(pinned: bool, quick: bool) -> Vec<Row> {
    let root = repo_root();
    let sock = root.join(format!("target/bench/uds-echo-{}.sock", std::process::id()));
    let uds = UdsEcho::start(&sock);
    if pinned {
        pin(uds.pid());
    }
    let affinity = if pinned {
        "worker_cpu_affinity 0001;"
    } else {
        ""
    };
    let nginx = NginxBuilder::new(if pinned {
        "bench-transport-pinned"
    } else {
        "bench-transport"
    })
    .workers(1)
    .main_conf(affinity)
    .error_log_level("warn")
    .http_conf(LUA)
    .server_conf(LOCATION)
    .start();

    let mut rows = Vec::new();
    for &size in SIZES {
        let calls = calls_for(size, quick);
        let mut secs = Vec::new();
        for path in PATHS {
            let mut samples = Vec::new();
            for _ in 0..REPEATS {
                let url = format!(
                    "/bench?size={size}&n={calls}&path={path}&sock={}",
                    sock.display()
                );
                let r = nginx.get(&url);
                assert_eq!(r.status, 200, "{url}: {}", r.text());
                samples.push(r.text().trim().parse::<f64>().expect("seconds"));
            }
            let m = median(samples);
            eprintln!(
                "{} {:>8} B {path}: {:.3} s for {calls} calls ({:.2} µs/call)",
                if pinned { "pinned  " } else { "unpinned" },
                size,
                m,
                m * 1e6 / calls as f64
            );
            secs.push(m);
        }
        rows.push(Row {
            pinned,
            size,
            calls,
            secs,
        });
    }
    nginx.assert_log_clean(&[]);
    rows
}

fn pin(pid: i32) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .output();
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1_048_576 => format!("{} MiB", s / 1_048_576),
        s if s >= 1024 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

fn json(rows: &[Row], machine: &str, quick: bool) -> String {
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let per = |x: f64| x * 1e6 / r.calls as f64;
            let mut o = serde_json::json!({
                "pinned": r.pinned,
                "size": r.size,
                "calls": r.calls,
            });
            for (i, p) in PATHS.iter().enumerate() {
                o[format!("{p}_s")] = r.secs[i].into();
                o[format!("{p}_us_per_call")] = per(r.secs[i]).into();
            }
            o["uds_over_ffi"] = (r.secs[1] / r.secs[0]).into();
            o["ffi_over_zc_inplace"] = (r.secs[0] / r.secs[2]).into();
            o["ffi_over_zc_string"] = (r.secs[0] / r.secs[3]).into();
            o["uds_over_zc_string"] = (r.secs[1] / r.secs[3]).into();
            o
        })
        .collect();
    let doc = serde_json::json!({
        "benchmark": "transport",
        "machine": machine,
        "quick": quick,
        "repeats": REPEATS,
        "unit": "seconds (median of repeats) for `calls` sequential calls",
        "results": results,
    });
    serde_json::to_string_pretty(&doc).expect("json") + "\n"
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "µs per call (median); ratios are how many times faster the right-hand path is.\n\n",
    );
    s.push_str("| CPUs | payload | calls |");
    for name in PATH_NAMES {
        let _ = write!(s, " {name} |");
    }
    s.push_str(" UDS / copy | copy / zc in place | copy / zc string | UDS / zc string |\n");
    s.push_str(&"|---".repeat(3 + PATHS.len() + 4));
    s.push_str("|\n");
    for r in rows {
        let per = |x: f64| x * 1e6 / r.calls as f64;
        let _ = write!(
            s,
            "| {} | {} | {} |",
            if r.pinned {
                "pinned to 1"
            } else {
                "2, unpinned"
            },
            human(r.size),
            r.calls
        );
        for x in &r.secs {
            let _ = write!(s, " {:.2} |", per(*x));
        }
        let _ = writeln!(
            s,
            " {:.1}x | {:.1}x | {:.1}x | **{:.1}x** |",
            r.secs[1] / r.secs[0],
            r.secs[0] / r.secs[2],
            r.secs[0] / r.secs[3],
            r.secs[1] / r.secs[3]
        );
    }
    s
}

/// A small log-scale grouped bar chart of µs per call, as SVG.
fn svg(rows: &[Row]) -> String {
    let (w, h, left, bottom, top) = (760.0, 340.0, 60.0, 60.0, 30.0);
    let groups: Vec<&Row> = rows.iter().collect();
    let bars_per_group = PATHS.len();
    let gw = (w - left - 20.0) / groups.len() as f64;
    let bw = gw / (bars_per_group as f64 + 1.0);
    let per_call = |r: &Row, i: usize| r.secs[i] * 1e6 / r.calls as f64;
    let max = rows
        .iter()
        .flat_map(|r| (0..bars_per_group).map(move |i| per_call(r, i)))
        .fold(1.0f64, f64::max);
    let (lo, hi) = (0.1f64.log10(), max.log10().ceil().max(1.0));
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.max(0.1).log10() - lo) / (hi - lo));
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#98df8a"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"13\">µs per sequential echo call (log scale; lower is better)</text>\n"
    );
    let mut tick = 0.1f64;
    while tick.log10() <= hi + 1e-9 {
        let yy = y(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick}</text>",
            w - 20.0,
            left - 4.0,
            yy + 4.0
        );
        tick *= 10.0;
    }
    for (g, r) in groups.iter().enumerate() {
        let x0 = left + g as f64 * gw + bw / 2.0;
        for i in 0..bars_per_group {
            let v = per_call(r, i);
            let yy = y(v);
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{yy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {v:.2} µs</title></rect>",
                x0 + i as f64 * bw,
                bw - 2.0,
                h - bottom - yy,
                colors[i % colors.len()],
                human(r.size),
                PATHS[i]
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            x0 + bw * bars_per_group as f64 / 2.0,
            h - bottom + 14.0,
            human(r.size),
            x0 + bw * bars_per_group as f64 / 2.0,
            h - bottom + 28.0,
            if r.pinned { "pinned" } else { "unpinned" }
        );
    }
    for (i, p) in PATH_NAMES.iter().enumerate() {
        let x = left + 10.0 + i as f64 * 175.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{p}</text>",
            h - 20.0,
            colors[i],
            x + 16.0,
            h - 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();
    fs::create_dir_all(root.join("docs/img")).unwrap();

    let mut rows = run(true, quick);
    rows.extend(run(false, quick));

    let machine = machine();
    fs::write(
        root.join("target/bench/transport.json"),
        json(&rows, &machine, quick),
    )
    .unwrap();
    fs::write(root.join("docs/img/transport.svg"), svg(&rows)).unwrap();
    let body = format!(
        "Command: `make bench` (`cargo bench --bench transport`{}). Machine: {machine}.\n\
         Sequential echo calls from one Lua coroutine in one worker, median of {REPEATS} runs;\n\
         results also in `target/bench/transport.json`.\n\n{}\n![µs per call](img/transport.svg)\n\n",
        if quick { ", BENCH_QUICK=1" } else { "" },
        table(&rows)
    );
    replace_section(&root.join("docs/benchmarks.md"), "transport", &body);
    println!("{}", table(&rows));
}
