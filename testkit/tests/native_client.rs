//! `grpc-native-client`, the native yardstick the CPU budget profiles: it makes the calls it is
//! asked for (the server counts them), reports its time and CPU, and refuses bad arguments and
//! a target that does not answer.

use std::process::Command;

use testkit::{GrpcServer, GrpcServerOpts};

const CLIENT: &str = env!("CARGO_BIN_EXE_grpc-native-client");
const SERVER: &str = env!("CARGO_BIN_EXE_grpc-test-server");

/// `(seconds, cpu_us_per_call)` from the client's one line.
fn run(args: &[&str]) -> (f64, f64) {
    let out = Command::new(CLIENT).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {out:?}");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        (f.len(), f[0], f[2]),
        (4, "seconds", "cpu_us_per_call"),
        "{text}"
    );
    (f[1].parse().unwrap(), f[3].parse().unwrap())
}

#[test]
fn makes_the_calls_sequential_and_in_flight_and_reports_time_and_cpu() {
    let server = GrpcServer::start_bin(SERVER.as_ref(), GrpcServerOpts::default());
    let addr = server.addr();
    let before = server.stats().1;
    let (secs, cpu) = run(&["--target", &addr, "--calls", "300"]);
    assert!(secs > 0.0 && cpu > 0.0, "{secs} {cpu}");
    let (secs, cpu) = run(&["--target", &addr, "--calls", "1000", "--in-flight", "16"]);
    assert!(secs > 0.0 && cpu > 0.0, "{secs} {cpu}");
    let (secs, _) = run(&["--target", &addr, "--calls", "200", "--multi-thread"]);
    assert!(secs > 0.0);
    // Each run makes its calls and 100 warm-up calls (in flight: rounded up to whole batches,
    // 7 a task); the server counts every one.
    assert_eq!(
        server.stats().1 - before,
        300 + 100 + 1000 + 7 * 16 + 200 + 100
    );
}

#[test]
fn refuses_bad_arguments_and_a_dead_target() {
    for args in [
        &[][..],
        &["--target", "127.0.0.1:1"][..],
        &["--target", "127.0.0.1:1", "--calls", "x"][..],
        &[
            "--target",
            "127.0.0.1:1",
            "--calls",
            "5",
            "--in-flight",
            "0",
        ][..],
        &["--calls", "5", "--bogus"][..],
    ] {
        let out = Command::new(CLIENT).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
    // Port 1 of 127.0.0.1: nothing listens, the connect fails and the client says so.
    let out = Command::new(CLIENT)
        .args(["--target", "127.0.0.1:1", "--calls", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to 127.0.0.1:1"));
}
