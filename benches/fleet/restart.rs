//! The rolling restart: nginx calls at a number in flight for a while against the fleet
//! (round_robin) while each backend is restarted in turn (SIGKILL, started again on its
//! address); the calls that completed and failed per bucket, as Lua counted them.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use testkit::grpc::Fleet;
use testkit::{Client, Nginx};

use crate::nginx::{burst, load_body};

/// How long the load runs.
const DURATION: Duration = Duration::from_secs(10);
/// When the first backend is restarted, after the load was posted.
const FIRST: Duration = Duration::from_secs(2);
/// Between the starts of two restarts.
const GAP: Duration = Duration::from_secs(2);
/// Width of one bucket of the series.
pub const BUCKET_MS: u64 = 100;

/// One backend's restart, in seconds since the load started (Lua's t0).
#[derive(Debug, Clone)]
pub struct Restart {
    pub backend: usize,
    /// When it was killed.
    pub down: f64,
    /// When it served again (a Stats call answered).
    pub up: f64,
}

/// One rolling restart.
pub struct Roll {
    pub name: &'static str,
    pub service_config: Value,
    pub in_flight: usize,
    /// Calls that succeeded / failed per bucket (by the time they ended).
    pub ok: Vec<u64>,
    pub failed: Vec<u64>,
    /// Failures by status code, and the first few error strings.
    pub codes: Value,
    pub errors: Value,
    pub restarts: Vec<Restart>,
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("a series expected: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Restarts every backend of `fleet` in turn while `nginx` calls `target` with `sc` at
/// `in_flight` (its connection warmed first).
pub fn roll(
    fleet: &mut Fleet,
    nginx: &Nginx,
    name: &'static str,
    target: &str,
    sc: Value,
    in_flight: usize,
) -> Roll {
    burst(nginx, target, &sc, in_flight, 2_000);
    let url = nginx.url("/load");
    let body = load_body(target, &sc, in_flight, DURATION, BUCKET_MS);
    let load = thread::spawn(move || Client::new().post(&url, body.as_bytes()));
    let posted = Instant::now();
    let mut moments = Vec::new();
    for i in 0..fleet.len() {
        thread::sleep((posted + FIRST + GAP * i as u32).saturating_duration_since(Instant::now()));
        let down = epoch_now();
        fleet.restart(i);
        moments.push((i, down, epoch_now()));
    }
    let resp = load.join().unwrap().expect("the /load request");
    let text = resp.text();
    assert_eq!(resp.status, 200, "/load: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let t0 = v["t0"].as_f64().expect("t0");
    let roll = Roll {
        name,
        service_config: sc,
        in_flight,
        ok: counts(&v["ok"]),
        failed: counts(&v["failed"]),
        codes: v["codes"].clone(),
        errors: v["errors"].clone(),
        restarts: moments
            .into_iter()
            .map(|(backend, down, up)| Restart {
                backend,
                down: down - t0,
                up: up - t0,
            })
            .collect(),
    };
    eprintln!(
        "rolling restart, {name}: {} calls ok, {} failed ({})",
        roll.total_ok(),
        roll.total_failed(),
        roll.codes
    );
    roll
}

impl Roll {
    pub fn total_ok(&self) -> u64 {
        self.ok.iter().sum()
    }

    pub fn total_failed(&self) -> u64 {
        self.failed.iter().sum()
    }

    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "service_config": self.service_config,
            "in_flight": self.in_flight,
            "bucket_ms": BUCKET_MS,
            "duration_s": DURATION.as_secs_f64(),
            "ok_per_bucket": self.ok,
            "failed_per_bucket": self.failed,
            "calls_ok": self.total_ok(),
            "calls_failed": self.total_failed(),
            "failed_by_code": self.codes,
            "first_errors": self.errors,
            "restarts": self.restarts.iter().map(|r| json!({
                "backend": r.backend, "killed_at_s": r.down, "serving_at_s": r.up,
            })).collect::<Vec<_>>(),
        })
    }
}
