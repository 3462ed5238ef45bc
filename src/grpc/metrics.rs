//! Client metrics: gRFC A66's per-attempt and per-call instruments, per target and method, with
//! the retry counters grpc-go keeps beside them, and a JSON snapshot that Lua turns into
//! Prometheus text (`resty.grpc_zc.metrics`).
//!
//! | instrument (grpc-go's name)        | here                                 |
//! |------------------------------------|--------------------------------------|
//! | `grpc.client.attempt.started`      | [`MethodMetrics::attempt_started`]   |
//! | `grpc.client.attempt.duration`     | [`MethodMetrics::attempt_done`]      |
//! | `grpc.client.call.duration`        | [`MethodMetrics::call_done`]         |
//! | `grpc.client.call.retries`         | [`MethodMetrics::retried`] (a count) |
//! | `grpc.client.call.hedges`          | [`MethodMetrics::hedged`] (a count)  |
//! | retry throttling (gRFC A6)         | [`MethodMetrics::throttled`]         |
//!
//! A66's compressed message size histograms (`sent_total_compressed_message_size`,
//! `rcvd_total_compressed_message_size`) are not kept.
//!
//! Recording is on the hot path (about three records per call), so it is atomics only: a call
//! looks its method up once under a read lock ([`Metrics::target`], [`TargetMetrics::method`])
//! and then adds to counters that already exist. Every status's histograms are allocated with
//! the method (about 12 KiB of counters), so no call allocates after the first call of its
//! method. Methods are capped per
//! target ([`MAX_METHODS`]); beyond it calls are counted under `"other"`, as A66 does with
//! generic method names, so paths built from user input cannot grow memory without bound.
//!
//! # The JSON snapshot ([`Metrics::snapshot_json`]; stable: Lua decodes it)
//!
//! ```text
//! {"buckets":[0,1e-05,...,100],                  latency bounds, seconds (A66), ascending
//!  "targets":[{"target":"127.0.0.1:50051",
//!              "endpoints":[{"address":"10.0.0.1:50051","state":"READY","health":"SERVING",
//!                            "in_flight":0,"picks":12}],
//!              "methods":[{"method":"/pkg.S/M","attempt_started":12,"retries":0,"hedges":0,
//!                          "throttled":0,
//!                          "attempt_duration":{"OK":{"count":11,"sum":0.0123,
//!                                                    "buckets":[0,0,...,11]},
//!                                              "NOT_FOUND":{...}},
//!                          "call_duration":{...}}]}]}
//! ```
//!
//! `buckets` of a histogram are **cumulative** counts, one per bound of the top-level
//! `buckets` (`le` in Prometheus' words); `count` is the `+Inf` bucket, and is computed from the
//! same per-bucket counters, so a snapshot taken while calls record is still monotonic. `sum` is
//! in seconds. Only statuses seen at least once appear. Targets and methods are sorted by name.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tonic::Code;

use super::status::CODE_NAMES;

/// gRFC A66's latency bucket bounds, in seconds.
pub const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// Most methods kept per target; calls to further ones are counted under [`OTHER_METHOD`].
pub const MAX_METHODS: usize = 1000;

/// The method name that stands for every method past [`MAX_METHODS`].
pub const OTHER_METHOD: &str = "other";

/// A status's slot in the per-status arrays (tonic maps unknown numbers to UNKNOWN already).
fn code_index(code: Code) -> usize {
    (code as usize).min(CODE_NAMES.len() - 1)
}

/// What a metrics snapshot shows of one endpoint (filled by the balancer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub address: String,
    /// `IDLE`, `CONNECTING`, `READY` or `TRANSIENT_FAILURE`.
    pub state: &'static str,
    /// `SERVING`, `NOT_SERVING`, `UNKNOWN` (checked, no answer yet) or `UNCHECKED` (no health
    /// checking, or the server has no health service).
    pub health: &'static str,
    pub in_flight: usize,
    pub picks: u64,
}

/// The instance's registry: one [`TargetMetrics`] per target string `connect` was given.
#[derive(Default)]
pub struct Metrics {
    targets: RwLock<HashMap<String, Arc<TargetMetrics>>>,
}

impl Metrics {
    /// The metrics of `target`, made on first use.
    pub fn target(&self, target: &str) -> Arc<TargetMetrics> {
        lookup_or_insert(&self.targets, target, usize::MAX)
    }

    /// Every target's metrics as JSON (module doc); `endpoints(target)` gives each target's
    /// endpoints.
    pub fn snapshot_json(&self, endpoints: &dyn Fn(&str) -> Vec<EndpointView>) -> String {
        let targets = sorted(&self.targets);
        let mut out = String::with_capacity(256 + targets.len() * 1024);
        out.push_str("{\"buckets\":[");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            sep(&mut out, i);
            number(&mut out, *b);
        }
        out.push_str("],\"targets\":[");
        for (i, (name, t)) in targets.iter().enumerate() {
            sep(&mut out, i);
            out.push_str("{\"target\":");
            string(&mut out, name);
            out.push_str(",\"endpoints\":[");
            for (j, e) in endpoints(name).iter().enumerate() {
                sep(&mut out, j);
                endpoint(&mut out, e);
            }
            out.push_str("],\"methods\":[");
            for (j, (path, m)) in sorted(&t.methods).iter().enumerate() {
                sep(&mut out, j);
                m.write_json(&mut out, path);
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        out
    }
}

/// One target's methods.
#[derive(Default)]
pub struct TargetMetrics {
    methods: RwLock<HashMap<String, Arc<MethodMetrics>>>,
}

impl TargetMetrics {
    /// The metrics of method `path` ("/pkg.Service/Method"), made on first use; past 1000
    /// methods, the shared `"other"` entry (module doc).
    pub fn method(&self, path: &str) -> Arc<MethodMetrics> {
        lookup_or_insert(&self.methods, path, MAX_METHODS)
    }
}

/// The entry of `key` in `map`: found under the read lock (the common case), else made under
/// the write lock; once the map holds `cap` entries, new keys share the [`OTHER_METHOD`] entry.
fn lookup_or_insert<T: Default>(
    map: &RwLock<HashMap<String, Arc<T>>>,
    key: &str,
    cap: usize,
) -> Arc<T> {
    if let Some(v) = map.read().unwrap_or_else(PoisonError::into_inner).get(key) {
        return v.clone();
    }
    let mut w = map.write().unwrap_or_else(PoisonError::into_inner);
    let key = if w.len() >= cap && !w.contains_key(key) {
        OTHER_METHOD
    } else {
        key
    };
    w.entry(key.to_owned()).or_default().clone()
}

/// A map's entries sorted by key (snapshots are stable to read and to diff).
fn sorted<T>(map: &RwLock<HashMap<String, Arc<T>>>) -> Vec<(String, Arc<T>)> {
    let mut v: Vec<_> = map
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// One method of one target: counters, and a latency histogram per status for attempts and
/// for calls.
pub struct MethodMetrics {
    attempts_started: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    throttled: AtomicU64,
    attempt_duration: [Histogram; CODE_NAMES.len()],
    call_duration: [Histogram; CODE_NAMES.len()],
}

impl Default for MethodMetrics {
    fn default() -> Self {
        MethodMetrics {
            attempts_started: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            attempt_duration: std::array::from_fn(|_| Histogram::default()),
            call_duration: std::array::from_fn(|_| Histogram::default()),
        }
    }
}

impl MethodMetrics {
    /// An attempt began (`grpc.client.attempt.started`), before its pick.
    pub fn attempt_started(&self) {
        self.attempts_started.fetch_add(1, Relaxed);
    }

    /// An attempt ended with `code` after `elapsed` (`grpc.client.attempt.duration`).
    pub fn attempt_done(&self, code: Code, elapsed: Duration) {
        self.attempt_duration[code_index(code)].record(elapsed);
    }

    /// A call ended with `code` after `elapsed`, all its attempts included
    /// (`grpc.client.call.duration`).
    pub fn call_done(&self, code: Code, elapsed: Duration) {
        self.call_duration[code_index(code)].record(elapsed);
    }

    /// An attempt was retried.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// A hedged attempt was sent.
    pub fn hedged(&self) {
        self.hedges.fetch_add(1, Relaxed);
    }

    /// A retry or hedge was not sent because retry throttling held it back.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    fn write_json(&self, out: &mut String, path: &str) {
        out.push_str("{\"method\":");
        string(out, path);
        let _ = write!(
            out,
            ",\"attempt_started\":{},\"retries\":{},\"hedges\":{},\"throttled\":{}",
            self.attempts_started.load(Relaxed),
            self.retries.load(Relaxed),
            self.hedges.load(Relaxed),
            self.throttled.load(Relaxed)
        );
        out.push_str(",\"attempt_duration\":");
        by_status(out, &self.attempt_duration);
        out.push_str(",\"call_duration\":");
        by_status(out, &self.call_duration);
        out.push('}');
    }
}

/// A latency histogram over [`LATENCY_BUCKETS`]: a count per bucket (the last one past the
/// largest bound) and the sum in nanoseconds (584 years before it wraps).
struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // The first bound at or above the value (Prometheus' `le`).
        let i = LATENCY_BUCKETS.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Cumulative counts, one per bound, and the total (the `+Inf` bucket).
    fn cumulative(&self) -> ([u64; LATENCY_BUCKETS.len()], u64) {
        let mut cum = [0u64; LATENCY_BUCKETS.len()];
        let mut total = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Relaxed);
            if let Some(slot) = cum.get_mut(i) {
                *slot = total;
            }
        }
        (cum, total)
    }
}

/// `{"OK":{"count":..,"sum":..,"buckets":[..]},...}` for the statuses seen.
fn by_status(out: &mut String, hs: &[Histogram; CODE_NAMES.len()]) {
    out.push('{');
    let mut n = 0;
    for (name, h) in CODE_NAMES.iter().zip(hs) {
        let (cum, total) = h.cumulative();
        if total == 0 {
            continue;
        }
        sep(out, n);
        n += 1;
        let _ = write!(out, "\"{name}\":{{\"count\":{total},\"sum\":");
        number(out, h.sum_ns.load(Relaxed) as f64 / 1e9);
        out.push_str(",\"buckets\":[");
        for (i, c) in cum.iter().enumerate() {
            sep(out, i);
            let _ = write!(out, "{c}");
        }
        out.push_str("]}");
    }
    out.push('}');
}

fn endpoint(out: &mut String, e: &EndpointView) {
    out.push_str("{\"address\":");
    string(out, &e.address);
    out.push_str(",\"state\":");
    string(out, e.state);
    out.push_str(",\"health\":");
    string(out, e.health);
    let _ = write!(
        out,
        ",\"in_flight\":{},\"picks\":{}}}",
        e.in_flight, e.picks
    );
}

/// A comma before every item but the first.
fn sep(out: &mut String, i: usize) {
    if i > 0 {
        out.push(',');
    }
}

/// A finite number as JSON (Rust's shortest round-trip form; never NaN or infinite here).
fn number(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push('0');
    }
}

/// A JSON string: quotes, backslashes and control characters escaped.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn snapshot(m: &Metrics) -> Value {
        serde_json::from_str(&m.snapshot_json(&|_| Vec::new())).expect("valid JSON")
    }

    #[test]
    fn buckets_are_a66s_and_ascending() {
        assert_eq!(LATENCY_BUCKETS.len(), 41);
        assert_eq!(LATENCY_BUCKETS[0], 0.0);
        assert_eq!(LATENCY_BUCKETS[40], 100.0);
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_value_lands_in_the_first_bucket_at_or_above_it() {
        let h = Histogram::default();
        h.record(Duration::ZERO); // le=0
        h.record(ms(1)); // exactly on le=0.001
        h.record(Duration::from_micros(1001)); // le=0.002
        h.record(Duration::from_secs(1000)); // past 100 s: +Inf only
        let (cum, total) = h.cumulative();
        assert_eq!(total, 4);
        assert_eq!(cum[0], 1);
        let i = |b: f64| LATENCY_BUCKETS.iter().position(|&x| x == b).unwrap();
        assert_eq!(cum[i(0.0008)], 1);
        assert_eq!(cum[i(0.001)], 2);
        assert_eq!(cum[i(0.002)], 3);
        assert_eq!(cum[40], 3, "1000 s is past every bound");
        assert_eq!(h.sum_ns.load(Relaxed), 1_000_002_001_000);
    }

    #[test]
    fn snapshot_has_the_documented_shape() {
        let m = Metrics::default();
        let hello = m
            .target("127.0.0.1:1")
            .method("/helloworld.Greeter/SayHello");
        for _ in 0..3 {
            hello.attempt_started();
            hello.attempt_done(Code::Ok, ms(2));
            hello.call_done(Code::Ok, ms(2));
        }
        hello.attempt_started();
        hello.attempt_done(Code::NotFound, ms(20));
        hello.call_done(Code::NotFound, ms(20));
        hello.retried();
        hello.hedged();
        hello.hedged();
        hello.throttled();
        // the same entry again, through a second lookup
        m.target("127.0.0.1:1")
            .method("/helloworld.Greeter/SayHello")
            .attempt_started();
        m.target("a\"b\\c\n").method("/x.Y/Z");

        let eps = |t: &str| {
            if t == "127.0.0.1:1" {
                vec![EndpointView {
                    address: "127.0.0.1:1".into(),
                    state: "READY",
                    health: "SERVING",
                    in_flight: 2,
                    picks: 5,
                }]
            } else {
                Vec::new()
            }
        };
        let v: Value = serde_json::from_str(&m.snapshot_json(&eps)).unwrap();
        assert_eq!(v["buckets"].as_array().unwrap().len(), 41);
        assert_eq!(v["buckets"][7], 0.001);
        let targets = v["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 2);
        let t = &targets[0];
        assert_eq!(t["target"], "127.0.0.1:1");
        assert_eq!(
            t["endpoints"][0],
            serde_json::json!({"address":"127.0.0.1:1","state":"READY","health":"SERVING",
                               "in_flight":2,"picks":5})
        );
        let meth = &t["methods"][0];
        assert_eq!(meth["method"], "/helloworld.Greeter/SayHello");
        assert_eq!(meth["attempt_started"], 5);
        assert_eq!(meth["retries"], 1);
        assert_eq!(meth["hedges"], 2);
        assert_eq!(meth["throttled"], 1);
        let ok = &meth["attempt_duration"]["OK"];
        assert_eq!(ok["count"], 3);
        assert!((ok["sum"].as_f64().unwrap() - 0.006).abs() < 1e-9);
        let b = ok["buckets"].as_array().unwrap();
        assert_eq!(b.len(), 41);
        assert_eq!(b[7], 0, "le=0.001 does not hold 2 ms");
        assert_eq!(b[8], 3, "le=0.002 does");
        assert_eq!(b[9], 3, "cumulative");
        assert_eq!(b[40], 3);
        assert_eq!(meth["call_duration"]["NOT_FOUND"]["count"], 1);
        assert!(meth["call_duration"].get("UNAVAILABLE").is_none(), "unseen");
        assert_eq!(targets[1]["target"], "a\"b\\c\n", "escaped and read back");
        assert_eq!(
            targets[1]["methods"][0]["attempt_duration"],
            serde_json::json!({})
        );
    }

    #[test]
    fn methods_past_the_cap_share_other() {
        let t = TargetMetrics::default();
        for i in 0..MAX_METHODS {
            t.method(&format!("/s.S/M{i}"));
        }
        t.method("/s.S/M0").attempt_started();
        t.method("/s.S/late1").attempt_started();
        t.method("/s.S/late2").attempt_started();
        assert!(Arc::ptr_eq(
            &t.method("/s.S/late1"),
            &t.method(OTHER_METHOD)
        ));
        assert_eq!(t.method(OTHER_METHOD).attempts_started.load(Relaxed), 2);
        assert_eq!(t.method("/s.S/M0").attempts_started.load(Relaxed), 1);
        assert_eq!(t.methods.read().unwrap().len(), MAX_METHODS + 1);
    }

    #[test]
    fn recording_from_many_threads_adds_up() {
        let m = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let mm = m.target("t").method("/a.B/C");
                    for i in 0..1000 {
                        mm.attempt_started();
                        mm.call_done(Code::Ok, Duration::from_micros(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = snapshot(&m);
        let meth = &v["targets"][0]["methods"][0];
        assert_eq!(meth["attempt_started"], 4000);
        assert_eq!(meth["call_duration"]["OK"]["count"], 4000);
    }

    #[test]
    fn codes_name_themselves() {
        assert_eq!(CODE_NAMES[code_index(Code::Ok)], "OK");
        assert_eq!(CODE_NAMES[code_index(Code::NotFound)], "NOT_FOUND");
        assert_eq!(
            CODE_NAMES[code_index(Code::Unauthenticated)],
            "UNAUTHENTICATED"
        );
        assert_eq!(CODE_NAMES[code_index(Code::from(99))], "UNKNOWN");
    }
}
