//! `grpc-native-client`: the native yardstick on its own, for profiling it as the Lua path is
//! profiled (`benches/budget.py` runs it under `perf`): tonic's greeter client on a
//! current-thread runtime (native_ct) or a multi-thread one, SayHello calls to a plaintext
//! server.
//!
//! ```text
//! grpc-native-client --target HOST:PORT --calls N [--in-flight C] [--multi-thread]
//! ```
//!
//! `--in-flight C`: C tasks calling in a loop (default 1: sequential calls). Prints one line,
//! `seconds S cpu_us_per_call U`: the timed calls' wall time, and this process's CPU time
//! (user + system, `getrusage`) over the whole run, warm-up (100 calls) and connect included,
//! per timed call.

use std::process::ExitCode;

use testkit::bench::own_cpu_seconds;
use testkit::native::{current_thread, Native};

const USAGE: &str =
    "usage: grpc-native-client --target HOST:PORT --calls N [--in-flight C] [--multi-thread]";
const WARMUP: usize = 100;

fn main() -> ExitCode {
    let (mut target, mut calls, mut in_flight, mut multi) = (None, None, 1usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(USAGE);
        let parsed = match a.as_str() {
            "--target" => value().map(|v| target = Some(v)),
            "--calls" => {
                value().and_then(|v| v.parse().map(|n| calls = Some(n)).map_err(|_| USAGE))
            }
            "--in-flight" => {
                value().and_then(|v| v.parse().map(|n| in_flight = n).map_err(|_| USAGE))
            }
            "--multi-thread" => {
                multi = true;
                Ok(())
            }
            _ => Err(USAGE),
        };
        if let Err(usage) = parsed {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    }
    let (Some(target), Some(calls)) = (target, calls) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if in_flight == 0 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let rt = if multi {
        tokio::runtime::Runtime::new().expect("starting a multi-thread runtime")
    } else {
        current_thread()
    };
    let cpu0 = own_cpu_seconds();
    let native = Native::connect(rt, &target, WARMUP);
    let secs = if in_flight == 1 {
        native.hello(calls)
    } else {
        native.concurrent(in_flight, calls)
    };
    let cpu = own_cpu_seconds() - cpu0;
    println!(
        "seconds {secs:.6} cpu_us_per_call {:.3}",
        cpu * 1e6 / calls as f64
    );
    ExitCode::SUCCESS
}
