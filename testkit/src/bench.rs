//! Helpers shared by the benchmarks in `benches/`: medians, the machine line, CPU time and
//! page faults of a process (and of this one), the busy-polling plan an nginx's runtime chose, pinning a process, Lua's monotonic clock, and rewriting one section
//! of `docs/benchmarks.md`.

use std::fs;
use std::path::Path;
use std::process::Command;

/// The median of `v` (which it sorts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU model, vCPU count and nginx version, for the report.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let nginx = Command::new(crate::NGINX_BIN)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} vCPU, {nginx}, lua-nginx-module 0.10.23 (Debian 12)")
}

/// Lua defining `bench_now()`: seconds of `CLOCK_MONOTONIC`, through the FFI (for an
/// `init_by_lua_block`, like [`crate::LUA_PAYLOAD`]).
pub const LUA_BENCH_NOW: &str = r#"
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
"#;

/// Lua defining `in_flight(c, n, warmup, f)`: `c` light threads of the calling request, each
/// running `f(k)` (`k` calls), `warmup` calls in all untimed, then `n` timed; returns the
/// seconds the timed ones took (uses `bench_now`, [`LUA_BENCH_NOW`]).
pub const LUA_IN_FLIGHT: &str = r#"
    function in_flight(c, n, warmup, f)
        local function run(each, extra)
            local threads = {}
            for i = 1, c do
                threads[i] = ngx.thread.spawn(f, each + (i <= extra and 1 or 0))
            end
            for i = 1, c do
                local ok, err = ngx.thread.wait(threads[i])
                if not ok then error(err) end
            end
        end
        run(math.ceil(warmup / c), 0)
        local t0 = bench_now()
        run(math.floor(n / c), n % c)
        return bench_now() - t0
    end
"#;

/// Restricts every thread of process `pid` to `cpus` (a `taskset -c` list); true on success.
pub fn pin_process(pid: i32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in `path`
/// (appending the section when it is missing).
pub fn replace_section(path: &Path, name: &str, body: &str) {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{body}{}", &old[..b], &old[e..])
        }
        _ => format!("{}\n\n{begin}\n{body}{end}\n", old.trim_end()),
    };
    fs::write(path, new).expect("write docs/benchmarks.md");
}

/// CPU seconds used so far by this process, all its threads, user + system (`getrusage`:
/// microseconds, where [`cpu_seconds`] has clock ticks).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a writable `rusage`; RUSAGE_SELF needs nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU time used so far by process `pid`, all its threads, user + system, in seconds (from
/// `/proc/<pid>/stat`, clock-tick resolution). `None` when the process is gone.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    stat_cpu_seconds(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Minor page faults of process `pid` so far, all its threads (`/proc/<pid>/stat`). `None`
/// when the process is gone.
pub fn minor_faults(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may contain spaces), starting with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / hz.max(1) as f64)
}

/// CPU time used so far by each thread of process `pid`, as (thread name, seconds); see
/// [`cpu_seconds`]. Empty when the process is gone.
pub fn thread_cpu_seconds(pid: i32) -> Vec<(String, f64)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(String, f64)> = tasks
        .filter_map(|t| {
            let tid: i32 = t.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((comm.trim().to_owned(), stat_cpu_seconds(&stat)?))
        })
        .collect();
    threads.sort_by(|a, b| a.0.cmp(&b.0));
    threads
}

/// [`thread_cpu_seconds`] with the threads of one name summed (tokio's workers, a pool).
pub fn thread_name_cpu_seconds(pid: i32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (name, secs) in thread_cpu_seconds(pid) {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += secs,
            None => out.push((name, secs)),
        }
    }
    out
}

/// The busy-polling plan the runtime in `nginx` chose: its `busy polling: <plan> (` line in
/// error.log (logged at `info` when its poll thread starts), waited for up to `timeout`;
/// `None` when no such line came (error_log above info, or a build from before the plans).
pub fn busy_poll_plan(nginx: &crate::Nginx, timeout: std::time::Duration) -> Option<String> {
    let (found, log) = nginx.wait_log_contains("busy polling: ", timeout);
    if !found {
        return None;
    }
    let rest = log.split("busy polling: ").nth(1)?;
    Some(rest.split(" (").next().unwrap_or(rest).to_owned())
}
