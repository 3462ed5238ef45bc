//! Runtimes in other languages on the host (issue 13): the seed's transport table per language.
//! Sequential echo calls from one Lua coroutine in one nginx worker, through each language's
//! runtime on the host and through the UDS proxy model (a cosocket and the `uds-echo`
//! process, 4-byte frames), same worker, same run, rounds interleaved, medians of rounds.
//!
//! ```text
//!  Lua ── ngx.load_ffi ──► Rust echo (resty_ffi_echo) | Go (ffi_go_echo, restyffi)
//!                          Python (ffi_python3: the resty_ffi helper; the article's raw cffi)
//!                          Java (ffi_java: resty.ffi.Server), Node.js (ffi_nodejs)
//!  Lua ── unix socket ───► uds-echo (the proxy model)
//! ```
//!
//! `cargo bench --bench runtimes` (part of `make bench`); `BENCH_QUICK=1` runs a tenth of the
//! calls. Writes `target/bench/runtimes.json` and the `runtimes` section of docs/benchmarks.md.
//! Two placements: everything on CPU 0 (`worker_cpu_affinity 0001`, the runtimes' threads
//! inherit it, the UDS echo pinned there too), and unpinned.

use std::fs;
use std::path::Path;

use serde_json::json;
use testkit::bench::{machine, median, pin_process, LUA_BENCH_NOW};
use testkit::LUA_UDS_ECHO;
use testkit::{repo_root, NginxBuilder, UdsEcho};

const SIZES: &[usize] = &[512, 102_400];
/// (path, label): the paths the location knows, in table order (the proxy first).
const PATHS: &[(&str, &str)] = &[
    ("uds", "UDS proxy"),
    ("rust", "Rust (echo runtime)"),
    ("go", "Go (restyffi, goroutine per call)"),
    ("go_inline", "Go (restyffi, inline)"),
    ("python", "Python (resty_ffi, thread pool)"),
    ("python_inline", "Python (resty_ffi, inline)"),
    ("python_raw", "Python (the article's cffi)"),
    ("java", "Java (resty.ffi.Server, pool)"),
    ("java_raw", "Java (raw Host calls)"),
    ("nodejs", "Node.js (resty_ffi.serve)"),
];
const ROUNDS: usize = 3;
const CALLS: usize = 100_000;
// Each helper twice where it offers both: handing each call to a pool (goroutine, thread) as
// a runtime doing I/O needs, and answering on the polling thread.

const LOCATION: &str = r#"
location /bench {
    content_by_lua_block {
        local size = tonumber(ngx.var.arg_size)
        local n = tonumber(ngx.var.arg_n)
        local path = ngx.var.arg_path
        local buf = string.rep("A", size)
        local once
        if path == "uds" then
            local sock = ngx.socket.tcp()
            assert(sock:connect("unix:" .. ngx.var.arg_sock))
            once = uds_echo_once(sock, buf)
        else
            local rt
            if path == "rust" then
                rt = assert(ngx.load_ffi("resty_ffi_echo"))
            elseif path == "go" then
                rt = assert(ngx.load_ffi("ffi_go_echo"))
            elseif path == "go_inline" then
                rt = assert(ngx.load_ffi("ffi_go_echo", "inline"))
            elseif path == "python_inline" then
                rt = assert(ngx.load_ffi("ffi_python3", "rt_test,echo_inline"))
            elseif path == "java_raw" then
                rt = assert(ngx.load_ffi("ffi_java", "rt.Raw,init"))
            elseif path == "python" then
                rt = assert(ngx.load_ffi("ffi_python3", "rt_test,echo"))
            elseif path == "python_raw" then
                rt = assert(ngx.load_ffi("ffi_python3", "ffi.echo,init", { is_global = true }))
            elseif path == "java" then
                rt = assert(ngx.load_ffi("ffi_java", "rt.Echo,init"))
            elseif path == "nodejs" then
                rt = assert(ngx.load_ffi("ffi_nodejs", "echo,init"))
            else
                return ngx.exit(400)
            end
            once = function()
                local ok, res = rt:echo(buf)
                if not ok or res ~= buf then error("bad echo: " .. tostring(res)) end
            end
        end
        for _ = 1, 200 do once() end
        local t0 = bench_now()
        for _ = 1, n do once() end
        ngx.say(bench_now() - t0)
    }
}
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    OneCpu,
    Unpinned,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "pinned to 1",
            Placement::Unpinned => "2, unpinned",
        }
    }
}

struct Row {
    placement: Placement,
    size: usize,
    calls: usize,
    /// Median seconds per path, in `PATHS` order.
    secs: Vec<f64>,
}

/// The Java test runtime, compiled against the loader's jar (make build writes it).
fn java_classes(root: &Path) -> std::path::PathBuf {
    let out = root.join("target/bench/runtimes-java");
    fs::create_dir_all(&out).unwrap();
    let status = std::process::Command::new("/usr/lib/jvm/default-java/bin/javac")
        .arg("-cp")
        .arg(root.join("target/release/resty-ffi.jar"))
        .arg("-d")
        .arg(&out)
        .arg(root.join("t/runtimes/java/rt/Echo.java"))
        .arg(root.join("t/runtimes/java/rt/Raw.java"))
        .status()
        .expect("javac");
    assert!(status.success(), "javac of the Java echo runtime failed");
    out
}

fn run(placement: Placement, quick: bool) -> Vec<Row> {
    let root = repo_root();
    let sock = root.join(format!(
        "target/bench/uds-echo-rt-{}.sock",
        std::process::id()
    ));
    let uds = UdsEcho::start(&sock);
    if placement == Placement::OneCpu {
        let _ = pin_process(uds.pid(), "0");
    }
    let classes = java_classes(&root);
    let python = format!(
        "{}:{}",
        root.join("t/runtimes/python").display(),
        root.join("loaders/python").display()
    );
    let nginx = NginxBuilder::new(&format!(
        "bench-runtimes-{}",
        if placement == Placement::OneCpu { "1" } else { "2" }
    ))
    .workers(1)
    .main_conf(if placement == Placement::OneCpu {
        "worker_cpu_affinity 0001;\nenv PYTHONPATH;\nenv CLASSPATH;\nenv NODE_PATH;\nenv PYTHONDONTWRITEBYTECODE;"
    } else {
        "env PYTHONPATH;\nenv CLASSPATH;\nenv NODE_PATH;\nenv PYTHONDONTWRITEBYTECODE;"
    })
    .env("NODE_PATH", &root.join("t/runtimes/nodejs").display().to_string())
    .env("PYTHONPATH", &python)
    .env("CLASSPATH", &classes.display().to_string())
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .error_log_level("warn")
    .http_conf(&format!(
        "init_worker_by_lua_block {{ require \"resty_ffi\" }}\ninit_by_lua_block {{{LUA_BENCH_NOW}{LUA_UDS_ECHO}}}"
    ))
    .server_conf(LOCATION)
    .start();

    let calls = if quick { CALLS / 10 } else { CALLS };
    let mut samples = vec![vec![Vec::new(); PATHS.len()]; SIZES.len()];
    for round in 0..ROUNDS {
        for (si, &size) in SIZES.iter().enumerate() {
            for k in 0..PATHS.len() {
                // The first path rotates from round to round.
                let pi = (k + round) % PATHS.len();
                let path = PATHS[pi].0;
                let url = format!(
                    "/bench?size={size}&n={calls}&path={path}&sock={}",
                    sock.display()
                );
                let r = nginx.get(&url);
                assert_eq!(r.status, 200, "{url}: {}", r.text());
                let secs: f64 = r.text().trim().parse().expect("seconds");
                eprintln!(
                    "{:<12} round {round} {size:>7} B {path:<10}: {:.2} µs/call",
                    placement.label(),
                    secs * 1e6 / calls as f64
                );
                samples[si][pi].push(secs);
            }
        }
    }
    nginx.assert_log_clean(&[]);
    SIZES
        .iter()
        .zip(samples)
        .map(|(&size, per_path)| Row {
            placement,
            size,
            calls,
            secs: per_path.into_iter().map(median).collect(),
        })
        .collect()
}

fn human(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn us(r: &Row, i: usize) -> f64 {
    r.secs[i] * 1e6 / r.calls as f64
}

fn table(rows: &[Row], machine: &str, quick: bool) -> String {
    let mut s = format!(
        "Command: `make bench` (`cargo bench --bench runtimes`{}). Machine: {machine}.\n\
         Sequential echo calls from one Lua coroutine in one worker, {} calls per cell, median of \
         {ROUNDS} interleaved rounds; results also in `target/bench/runtimes.json`.\n\n\
         µs per call (median); in brackets how many times faster than the UDS proxy.\n\n",
        if quick { ", BENCH_QUICK=1" } else { "" },
        rows.first().map_or(0, |r| r.calls),
    );
    s += "| CPUs | payload |";
    for (_, label) in PATHS {
        s += &format!(" {label} |");
    }
    s += "\n|---|---|";
    s += &"---|".repeat(PATHS.len());
    s += "\n";
    for r in rows {
        s += &format!("| {} | {} |", r.placement.label(), human(r.size));
        for i in 0..PATHS.len() {
            if i == 0 {
                s += &format!(" {:.2} |", us(r, 0));
            } else {
                s += &format!(" {:.2} ({:.1}x) |", us(r, i), r.secs[0] / r.secs[i]);
            }
        }
        s += "\n";
    }
    s += "\nTarget (issue 13): each language's runtime beats the UDS proxy at both sizes.\n\n";
    for (i, (_, label)) in PATHS.iter().enumerate().skip(1) {
        let beaten: Vec<String> = rows
            .iter()
            .filter(|r| r.secs[i] >= r.secs[0])
            .map(|r| format!("{} {}", r.placement.label(), human(r.size)))
            .collect();
        if beaten.is_empty() {
            s += &format!("- {label}: met (faster than the proxy in every cell)\n");
        } else {
            s += &format!("- {label}: **not met** at {}\n", beaten.join(", "));
        }
    }
    s
}

fn json(rows: &[Row], machine: &str, quick: bool) -> serde_json::Value {
    json!({
        "benchmark": "runtimes",
        "machine": machine,
        "quick": quick,
        "rounds": ROUNDS,
        "rows": rows.iter().map(|r| json!({
            "placement": r.placement.label(),
            "payload_bytes": r.size,
            "calls": r.calls,
            "us_per_call": PATHS.iter().enumerate()
                .map(|(i, (p, _))| (p.to_string(), json!(us(r, i))))
                .collect::<serde_json::Map<_, _>>(),
            "times_faster_than_uds": PATHS.iter().enumerate().skip(1)
                .map(|(i, (p, _))| (p.to_string(), json!(r.secs[0] / r.secs[i])))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

fn main() {
    // `cargo bench` passes --bench; any other argument is a filter nobody here uses.
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    let machine = machine();
    let mut rows = run(Placement::OneCpu, quick);
    rows.extend(run(Placement::Unpinned, quick));
    let out = root.join("target/bench");
    fs::create_dir_all(&out).unwrap();
    fs::write(
        out.join("runtimes.json"),
        serde_json::to_string_pretty(&json(&rows, &machine, quick)).unwrap(),
    )
    .unwrap();
    let section = table(&rows, &machine, quick);
    println!("{section}");
    let doc = root.join("docs/benchmarks.md");
    let text = fs::read_to_string(&doc).unwrap();
    let (begin, end) = ("<!-- BEGIN runtimes -->", "<!-- END runtimes -->");
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{section}{}", &text[..b], &text[e..])
        }
        _ => format!(
            "{text}\n## Runtimes in other languages: the transport table per language\n\n{begin}\n{section}{end}\n"
        ),
    };
    fs::write(&doc, new).unwrap();
}
