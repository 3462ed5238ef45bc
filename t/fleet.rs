//! Calling a service, not a server: a real nginx with the module, a fleet of real gRPC servers
//! on 127.0.0.2, .3, ... (one port, each saying who it is in `x-backend`), and a real DNS
//! server whose records the tests change while calls run.
//!
//! Every test drives load through one Lua location (`/load`): it connects with the target and
//! service config the test posts, makes the calls from several light threads and answers how
//! many each backend served, which failed and how (JSON). The servers' own counters are the
//! check on what the client says.

use std::collections::HashMap;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::dns::DnsServer;
use testkit::grpc::Fleet;
use testkit::Nginx;

mod common;
use common::{nginx, IDLE};

/// The load driver (see the module docs). The body: `target`, `sc` (service config: a JSON
/// string or object), `ri` (resolve_interval ms), `n` calls or `duration_ms`, `c` threads,
/// `path`, `req` (EchoRequest fields), `md` (request metadata), `timeout` (ms).
const LOAD: &str = r#"
location = /load {
    content_by_lua_block {
        local cjson = require "cjson.safe"
        local grpc = require "resty.grpc_zc"
        ngx.req.read_body()
        local q = assert(cjson.decode(ngx.req.get_body_data()))
        local ok, conn = grpc.connect(q.target, {
            service_config = q.sc, resolve_interval = q.ri, connect_timeout = 1000,
        })
        if not ok then
            ngx.say(cjson.encode({ connect_error = conn }))
            return
        end
        local by, codes, errors = {}, {}, {}
        local failed, started, slowest = 0, 0, 0
        local req = echo_req(q.req or { payload = "x" })
        local path = q.path or "/zctest.Test/Unary"
        local opts = { timeout = q.timeout, metadata = q.md, response_metadata = true }
        local t0 = ngx.now()
        local function more()
            if q.duration_ms then
                ngx.update_time()
                return (ngx.now() - t0) * 1000 < q.duration_ms
            end
            return started < q.n
        end
        local function worker()
            while more() do
                started = started + 1
                ngx.update_time()
                local c0 = ngx.now()
                local ok, res, meta = conn:unary(path, req, opts)
                ngx.update_time()
                slowest = math.max(slowest, ngx.now() - c0)
                if ok then
                    local b = meta.headers["x-backend"] or "?"
                    by[b] = (by[b] or 0) + 1
                else
                    failed = failed + 1
                    local code = tostring(meta and meta.code)
                    codes[code] = (codes[code] or 0) + 1
                    if #errors < 5 then errors[#errors + 1] = res end
                end
            end
        end
        local threads = {}
        for i = 1, q.c or 1 do threads[i] = ngx.thread.spawn(worker) end
        for _, th in ipairs(threads) do assert(ngx.thread.wait(th)) end
        ngx.update_time()
        ngx.say(cjson.encode({ by = by, failed = failed, codes = codes, errors = errors,
                               calls = started, ms = (ngx.now() - t0) * 1000,
                               slowest_ms = slowest * 1000 }))
    }
}
location = /metrics_json {
    content_by_lua_block {
        ngx.say(require("cjson").encode(assert(require("resty.grpc_zc").metrics())))
    }
}
location = /usage {
    content_by_lua_block { ngx.say(usage()) }
}
"#;

/// An nginx with one worker (its runtime balances on its own) serving [`LOAD`].
fn fleet_nginx(name: &str) -> Nginx {
    nginx(name, 1, LOAD)
}

/// What `/load` answered.
#[derive(Debug)]
struct Load {
    by: HashMap<String, u64>,
    failed: u64,
    codes: HashMap<String, u64>,
    errors: Vec<String>,
    calls: u64,
    ms: f64,
    slowest_ms: f64,
}

impl Load {
    fn served(&self, backend: &str) -> u64 {
        self.by.get(backend).copied().unwrap_or(0)
    }
}

/// Posts `q` to `/load`.
fn load(n: &Nginx, q: &Value) -> Load {
    let resp = n.post("/load", q.to_string().as_bytes());
    let text = resp.text();
    assert_eq!(resp.status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    if let Some(e) = v.get("connect_error") {
        panic!("connect failed: {e}");
    }
    let map = |k: &str| -> HashMap<String, u64> {
        v[k].as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    Load {
        by: map("by"),
        failed: v["failed"].as_u64().unwrap(),
        codes: map("codes"),
        errors: v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        calls: v["calls"].as_u64().unwrap(),
        ms: v["ms"].as_f64().unwrap(),
        slowest_ms: v["slowest_ms"].as_f64().unwrap(),
    }
}

/// `/load` in a thread of its own (for tests that act on the fleet while calls run).
fn load_in_background(n: &Nginx, q: Value) -> thread::JoinHandle<Load> {
    let url = n.url("/load");
    thread::spawn(move || {
        let resp = testkit::Client::new()
            .post(&url, q.to_string().as_bytes())
            .expect("response");
        let text = resp.text();
        assert_eq!(resp.status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let by = v["by"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let codes = v["codes"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        Load {
            by,
            failed: v["failed"].as_u64().unwrap(),
            codes,
            errors: v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            calls: v["calls"].as_u64().unwrap(),
            ms: v["ms"].as_f64().unwrap(),
            slowest_ms: v["slowest_ms"].as_f64().unwrap(),
        }
    })
}

/// Waits until `cond` holds (checked every 20 ms), for at most `within`.
fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Calls received by every server of the fleet.
fn received(fleet: &Fleet) -> Vec<u64> {
    (0..fleet.len()).map(|i| fleet.stats(i).received).collect()
}

fn round_robin() -> Value {
    json!({ "loadBalancingConfig": [{ "round_robin": {} }] })
}

/// round_robin with a retryPolicy for UNAVAILABLE.
fn round_robin_retrying() -> Value {
    json!({
        "loadBalancingConfig": [{ "round_robin": {} }],
        "methodConfig": [{
            "name": [{ "service": "zctest.Test" }],
            "retryPolicy": {
                "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
            }
        }]
    })
}

/// The arena and streams are idle, and the error log has nothing worse than [warn].
fn assert_clean(n: &Nginx) {
    wait_until(Duration::from_secs(5), "an idle arena", || {
        n.get_ok("/usage") == format!("{IDLE}\n")
    });
    n.assert_log_clean(&[]);
}

#[test]
fn round_robin_spreads_calls_evenly_and_metrics_match_the_servers() {
    let fleet = Fleet::start(3, |o| o);
    let n = fleet_nginx("fleet-rr");
    let target = fleet.ipv4_target();
    let r = load(
        &n,
        &json!({ "target": target, "sc": round_robin(), "n": 3000, "c": 16 }),
    );
    assert_eq!(r.failed, 0, "{r:?}");
    for b in ["b0", "b1", "b2"] {
        let got = r.served(b);
        assert!(
            (900..=1100).contains(&got),
            "{b} served {got} of 3000: {r:?}"
        );
    }
    assert_eq!(
        received(&fleet),
        vec![r.served("b0"), r.served("b1"), r.served("b2")]
    );
    // The runtime's counts are the servers' counts.
    let m: Value = serde_json::from_str(&n.get_ok("/metrics_json")).unwrap();
    let t = m["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target.as_str())
        .unwrap_or_else(|| panic!("no target {target} in {m}"));
    let method = t["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["method"] == "/zctest.Test/Unary")
        .unwrap();
    assert_eq!(method["attempt_started"], 3000);
    assert_eq!(method["call_duration"]["OK"]["count"], 3000);
    let endpoints = t["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{t}");
    let mut picks = 0;
    for (i, e) in endpoints.iter().enumerate() {
        assert_eq!(e["address"], fleet.addr(i).as_str());
        assert_eq!(e["state"], "READY");
        assert_eq!(e["in_flight"], 0);
        picks += e["picks"].as_u64().unwrap();
    }
    assert_eq!(picks, 3000);
    assert_clean(&n);
}

#[test]
fn pick_first_sticks_to_one_backend_and_fails_over() {
    let mut fleet = Fleet::start(3, |o| o);
    let n = fleet_nginx("fleet-pf");
    let q = json!({ "target": fleet.ipv4_target(), "n": 300, "c": 8 });
    let r = load(&n, &q);
    assert_eq!((r.failed, r.served("b0")), (0, 300), "{r:?}");
    fleet.kill9(0);
    // The connection's end is seen at once; a call may still meet it (no retry policy).
    let r = load(
        &n,
        &json!({ "target": fleet.ipv4_target(), "n": 300, "c": 1 }),
    );
    assert!(r.failed <= 1, "{r:?}");
    assert_eq!(r.served("b1"), 300 - r.failed, "{r:?}");
    assert_eq!(fleet.stats(2).received, 0, "b2 never picked");
    n.assert_log_clean(&[]);
}

#[test]
fn least_request_sends_less_to_a_slow_backend() {
    let fleet = Fleet::start_each(3, |i, o| if i == 0 { o.delay_ms(40) } else { o });
    let n = fleet_nginx("fleet-lr");
    let sc =
        json!({ "loadBalancingConfig": [{ "least_request_experimental": { "choiceCount": 2 } }] });
    let r = load(
        &n,
        &json!({ "target": fleet.ipv4_target(), "sc": sc, "duration_ms": 2000, "c": 8 }),
    );
    assert_eq!(r.failed, 0, "{r:?}");
    let (slow, fast) = (r.served("b0"), r.served("b1") + r.served("b2"));
    // round_robin would give the slow one a third; power of two choices far less.
    assert!(
        slow * 10 < r.calls,
        "slow backend served {slow} of {}: {r:?}",
        r.calls
    );
    assert!(fast > 0);
    assert_clean(&n);
}

#[test]
fn dns_adds_a_replica_within_the_interval_and_drains_a_removed_one() {
    let mut fleet = Fleet::start(3, |o| o);
    let dns = DnsServer::start();
    let name = dns.fqdn("svc");
    let ip = |i: usize| -> IpAddr { fleet.ip(i) };
    dns.set(&name, &[ip(0), ip(1)]);
    let n = fleet_nginx("fleet-dns");
    let target = format!(
        "dns://{}/{}:{}",
        dns.addr(),
        name.trim_end_matches('.'),
        fleet.port()
    );
    let q = |calls: u64, req: Value| json!({ "target": target, "sc": round_robin(), "ri": 300, "n": calls, "c": 3, "req": req });
    let r = load(&n, &q(300, json!({ "payload": "x" })));
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(
        (r.served("b0"), r.served("b1"), r.served("b2")),
        (150, 150, 0),
        "{r:?}"
    );
    // A replica added: traffic within the interval (300 ms) and a little.
    dns.set(&name, &[ip(0), ip(1), ip(2)]);
    let added = Instant::now();
    wait_until(Duration::from_secs(3), "b2 to get calls", || {
        load(&n, &q(30, json!({ "payload": "x" }))).served("b2") > 0
    });
    assert!(
        added.elapsed() < Duration::from_millis(1500),
        "{:?}",
        added.elapsed()
    );
    // Three long calls in flight (one per backend), then b0 leaves DNS: its call finishes,
    // and no new call reaches it.
    let long = load_in_background(&n, q(3, json!({ "payload": "x", "sleep_ms": 1500 })));
    wait_until(Duration::from_secs(3), "the long calls to start", || {
        fleet.stats(0).received > 150
            && fleet.stats(1).received > 150
            && fleet.stats(2).received > 0
    });
    dns.set(&name, &[ip(1), ip(2)]);
    thread::sleep(Duration::from_millis(700));
    let before = fleet.stats(0).received;
    let r = load(&n, &q(300, json!({ "payload": "x" })));
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(r.served("b0"), 0, "{r:?}");
    assert_eq!(
        fleet.stats(0).received,
        before,
        "no new call reached the removed backend"
    );
    let l = long.join().unwrap();
    assert_eq!(
        (l.failed, l.calls),
        (0, 3),
        "the drained call finished: {l:?}"
    );
    assert!(dns.queries() >= 4, "resolved again every interval");
    // A name that does not resolve: UNAVAILABLE naming the resolution failure.
    let r = load(
        &n,
        &json!({ "target": format!("dns://{}/nowhere.{}:{}", dns.addr(), dns.zone().trim_end_matches('.'), fleet.port()), "n": 1 }),
    );
    assert_eq!(r.codes.get("14"), Some(&1), "{r:?}");
    assert!(r.errors[0].contains("resolution failed"), "{r:?}");
    fleet.kill9(0);
    assert_clean(&n);
}

#[test]
fn kill_9_of_a_backend_under_load_with_a_retry_policy_fails_no_call() {
    let mut fleet = Fleet::start(3, |o| o);
    let n = fleet_nginx("fleet-kill");
    let q = json!({ "target": fleet.ipv4_target(), "sc": round_robin_retrying(),
                    "duration_ms": 2500, "c": 16, "req": { "payload": "x", "sleep_ms": 2 } });
    let running = load_in_background(&n, q);
    wait_until(Duration::from_secs(5), "load on b1", || {
        fleet.stats(1).received > 200
    });
    fleet.kill9(1);
    let r = running.join().unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.served("b0") > 0 && r.served("b2") > 0);
    let m: Value = serde_json::from_str(&n.get_ok("/metrics_json")).unwrap();
    assert!(
        m.to_string().contains("TRANSIENT_FAILURE") || m.to_string().contains("CONNECTING"),
        "{m}"
    );
    assert_clean(&n);
}

#[test]
fn a_rolling_restart_of_every_backend_under_load_fails_no_call() {
    let mut fleet = Fleet::start(3, |o| o);
    let n = fleet_nginx("fleet-roll");
    let q = json!({ "target": fleet.ipv4_target(), "sc": round_robin_retrying(),
                    "duration_ms": 4000, "c": 16, "req": { "payload": "x", "sleep_ms": 2 } });
    let running = load_in_background(&n, q);
    wait_until(Duration::from_secs(5), "load", || {
        fleet.stats(0).received > 100
    });
    for i in 0..3 {
        fleet.restart(i);
        wait_until(
            Duration::from_secs(3),
            "the restarted backend to serve",
            || fleet.stats(i).received > 20,
        );
    }
    let r = running.join().unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    assert_clean(&n);
}

/// One method config with `policy` for zctest.Test, round_robin, and `extra` at top level.
fn with_policy(policy: Value, extra: Value) -> Value {
    let mut sc = json!({
        "loadBalancingConfig": [{ "round_robin": {} }],
        "methodConfig": [{ "name": [{ "service": "zctest.Test" }] }]
    });
    for (k, v) in policy.as_object().unwrap() {
        sc["methodConfig"][0][k] = v.clone();
    }
    for (k, v) in extra.as_object().unwrap() {
        sc[k] = v.clone();
    }
    sc
}

fn retry_policy(max_attempts: u32) -> Value {
    json!({ "retryPolicy": {
        "maxAttempts": max_attempts, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"] } })
}

#[test]
fn retries_stop_at_max_attempts_at_commit_and_under_throttling_and_honour_pushback() {
    let fleet = Fleet::start(3, |o| o);
    let n = fleet_nginx("fleet-retry");
    let total = |f: &Fleet| received(f).iter().sum::<u64>();
    let target = fleet.ipv4_target();
    // Fails until the third attempt: succeeds on it, each retry says its attempt number.
    let sc = with_policy(retry_policy(4), json!({}));
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1,
                              "md": { "x-fail-until-attempt": "2" } }),
    );
    assert_eq!((r.failed, total(&fleet)), (0, 3), "{r:?}");
    // maxAttempts: never more than that many attempts.
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1,
                              "md": { "x-fail-until-attempt": "100" } }),
    );
    assert_eq!((r.failed, total(&fleet)), (1, 3 + 4), "{r:?}");
    // Committed: headers (and a message) came before the failure: one attempt only.
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1, "path": "/zctest.Test/ServerStream",
                              "req": { "payload": "x", "count": 1, "status": 14 } }),
    );
    assert_eq!((r.failed, total(&fleet)), (1, 3 + 4 + 1), "{r:?}");
    // Not retryable: one attempt.
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1,
                              "md": { "x-fail-until-attempt": "100", "x-fail-code": "13" } }),
    );
    assert_eq!((r.failed, r.codes.get("13")), (1, Some(&1)), "{r:?}");
    assert_eq!(total(&fleet), 3 + 4 + 1 + 1);
    // Pushback: the retry waits what the server asked; a negative one stops retries.
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1,
                              "md": { "x-fail-until-attempt": "1", "x-pushback-ms": "400" } }),
    );
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.ms >= 400.0, "retried after {} ms", r.ms);
    let before = total(&fleet);
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 1,
                              "md": { "x-fail-until-attempt": "1", "x-pushback-ms": "-1" } }),
    );
    assert_eq!((r.failed, total(&fleet) - before), (1, 1), "{r:?}");
    // Throttling (maxTokens 10, tokenRatio 0.1, maxAttempts 3), every attempt failing:
    // call 1 takes 3 attempts (tokens 10 → 7), call 2 two (→ 5: at half, throttled), every
    // later call one. 20 calls: 3 + 2 + 18 attempts, 19 throttled, 3 retries.
    let sc = with_policy(
        retry_policy(3),
        json!({ "retryThrottling": { "maxTokens": 10, "tokenRatio": 0.1 } }),
    );
    let before = total(&fleet);
    let r = load(
        &n,
        &json!({ "target": target, "sc": sc, "n": 20,
                              "md": { "x-fail-until-attempt": "100" } }),
    );
    assert_eq!(r.failed, 20);
    assert_eq!(total(&fleet) - before, 23);
    let m = n.get_ok("/metrics_json");
    assert!(m.contains("\"throttled\":19"), "{m}");
    assert_clean(&n);
}

#[test]
fn hedging_answers_from_the_fast_backend_and_cancels_the_slow_one() {
    let fleet = Fleet::start_each(2, |i, o| if i == 0 { o.delay_ms(3000) } else { o });
    let n = fleet_nginx("fleet-hedge");
    let sc = with_policy(
        json!({ "hedgingPolicy": { "maxAttempts": 2, "hedgingDelay": "0.1s" } }),
        json!({}),
    );
    let r = load(
        &n,
        &json!({ "target": fleet.ipv4_target(), "sc": sc, "n": 10, "c": 1 }),
    );
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(
        r.served("b0"),
        0,
        "the slow backend never answered first: {r:?}"
    );
    assert!(r.slowest_ms < 1500.0, "{r:?}");
    // Every attempt the slow backend got was cancelled on the wire (its handler dropped).
    let slow = fleet.stats(0).received;
    assert!(
        slow >= 4,
        "round_robin sent it about half the first attempts: {slow}"
    );
    wait_until(
        Duration::from_secs(3),
        "the slow backend to see the cancellations",
        || fleet.stats(0).cancelled == slow,
    );
    let m = n.get_ok("/metrics_json");
    assert!(m.contains("\"hedges\":"), "{m}");
    assert_clean(&n);
}

#[test]
fn health_not_serving_drains_a_backend_and_serving_brings_it_back() {
    let fleet = Fleet::start_each(3, |i, o| if i == 2 { o.no_health() } else { o });
    let n = fleet_nginx("fleet-health");
    let sc = json!({ "loadBalancingConfig": [{ "round_robin": {} }],
                     "healthCheckConfig": { "serviceName": "zctest.Test" } });
    let q = json!({ "target": fleet.ipv4_target(), "sc": sc, "n": 300, "c": 4 });
    let r = load(&n, &q);
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(
        r.served("b0") > 0 && r.served("b1") > 0 && r.served("b2") > 0,
        "{r:?}"
    );
    fleet[1].set_serving(false);
    wait_until(Duration::from_secs(3), "b1 to leave the picks", || {
        load(&n, &q).served("b1") == 0
    });
    let r = load(&n, &q);
    assert_eq!((r.failed, r.served("b1")), (0, 0), "{r:?}");
    fleet[1].set_serving(true);
    wait_until(Duration::from_secs(3), "b1 back in the picks", || {
        load(&n, &q).served("b1") > 0
    });
    assert!(
        n.error_log()
            .contains("has no health service (UNIMPLEMENTED): counted healthy"),
        "one log line for b2"
    );
    assert_clean(&n);
}

#[test]
fn the_whole_fleet_down_fails_fast_or_waits_for_ready() {
    let mut fleet = Fleet::start(2, |o| o);
    let n = fleet_nginx("fleet-down");
    let target = fleet.ipv4_target();
    let r = load(
        &n,
        &json!({ "target": target, "sc": round_robin(), "n": 10 }),
    );
    assert_eq!(r.failed, 0);
    fleet.kill9(0);
    fleet.kill9(1);
    let r = load(
        &n,
        &json!({ "target": target, "sc": round_robin(), "n": 5, "timeout": 5000 }),
    );
    assert_eq!(r.codes.get("14"), Some(&5), "{r:?}");
    assert!(r.slowest_ms < 500.0, "fail fast: {r:?}");
    // waitForReady: the call waits, and succeeds once a backend is back within its deadline.
    let sc = with_policy(json!({ "waitForReady": true }), json!({}));
    let waiting = load_in_background(
        &n,
        json!({ "target": target, "sc": sc, "n": 1, "timeout": 8000 }),
    );
    thread::sleep(Duration::from_millis(800));
    fleet.restart(1);
    let r = waiting.join().unwrap();
    assert_eq!((r.failed, r.served("b1")), (0, 1), "{r:?}");
    assert!(r.ms >= 700.0, "it waited: {r:?}");
    assert_clean(&n);
}

#[test]
fn bad_names_and_service_configs_are_refused_clearly() {
    let n = nginx(
        "fleet-bad",
        1,
        r#"
        location = /connect {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                ngx.req.read_body()
                local q = assert(cjson.decode(ngx.req.get_body_data()))
                local grpc = require "resty.grpc_zc"
                local ok, err = grpc.connect(q.target, { service_config = q.sc })
                ngx.say(ok and "ok" or err)
            }
        }
        location = /metrics_json {
            content_by_lua_block {
                ngx.say(require("cjson").encode(assert(require("resty.grpc_zc").metrics())))
            }
        }
        "#,
    );
    let connect = |target: &str, sc: Value| {
        let mut body = json!({ "target": target });
        if !sc.is_null() {
            body["sc"] = sc;
        }
        let body = body.to_string();
        n.post("/connect", body.as_bytes()).text().trim().to_owned()
    };
    for (target, want) in [
        (
            "ipv4:1.2.3:80",
            "INVALID_ARGUMENT: target \"ipv4:1.2.3:80\"",
        ),
        ("dns://x/foo:80", "dns server"),
        ("127.0.0.1:http", "port"),
        ("unix:", "INVALID_ARGUMENT"),
        ("nosuch:scheme:1", "INVALID_ARGUMENT"),
    ] {
        let got = connect(target, Value::Null);
        assert!(
            got.starts_with("INVALID_ARGUMENT") && got.contains(want),
            "{target}: {got}"
        );
    }
    for (sc, want) in [
        (json!("{"), "INVALID_ARGUMENT: service_config: invalid JSON"),
        (
            json!({ "loadBalancingConfig": [{ "weighted_target": {} }] }),
            "INVALID_ARGUMENT: service_config: loadBalancingConfig",
        ),
        (
            with_policy(
                json!({ "retryPolicy": { "maxAttempts": 1, "initialBackoff": "1s",
                "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"] } }),
                json!({}),
            ),
            "INVALID_ARGUMENT: service_config: methodConfig[0].retryPolicy.maxAttempts",
        ),
        (
            with_policy(json!({ "timeout": "soon" }), json!({})),
            "INVALID_ARGUMENT: service_config: methodConfig[0].timeout",
        ),
        (
            json!({ "retryThrottling": { "maxTokens": 0, "tokenRatio": 1 } }),
            "INVALID_ARGUMENT: service_config: retryThrottling.maxTokens",
        ),
    ] {
        let got = connect("127.0.0.1:1", sc.clone());
        assert!(got.starts_with(want), "{sc}: {got}");
    }
    // Nothing half-applied: no target was made by a refused connect.
    let m: Value = serde_json::from_str(&n.get_ok("/metrics_json")).unwrap();
    assert_eq!(m["targets"].as_array().map_or(0, Vec::len), 0, "{m}");
    n.assert_log_clean(&[]);
}

#[test]
fn streams_retry_while_uncommitted_and_replay_what_was_sent() {
    let fleet = Fleet::start(2, |o| o);
    let n = nginx(
        "fleet-streams",
        1,
        r#"
        location = /bidi {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local grpc = require "resty.grpc_zc"
                ngx.req.read_body()
                local q = assert(cjson.decode(ngx.req.get_body_data()))
                local ok, conn = assert(grpc.connect(q.target, { service_config = q.sc }))
                local ok, s = assert(conn:new_stream("/zctest.Test/Bidi",
                                                     { metadata = q.md, timeout = 5000 }))
                local out = {}
                for i, m in ipairs(q.send) do
                    assert(s:send(echo_req(m)))
                end
                assert(s:close_send())
                while true do
                    local ok, msg, st = s:recv()
                    if not ok then
                        out[#out + 1] = "error " .. tostring(msg)
                        break
                    end
                    if msg == nil then break end
                    out[#out + 1] = (echo_reply(msg))
                end
                s:close()
                ngx.say(table.concat(out, ","))
            }
        }
        location = /usage {
            content_by_lua_block { ngx.say(usage()) }
        }
        "#,
    );
    let total = |f: &Fleet| received(f).iter().sum::<u64>();
    let sc = with_policy(retry_policy(3), json!({}));
    let bidi = |md: Value, send: Value| {
        let q = json!({ "target": fleet.ipv4_target(), "sc": sc, "md": md, "send": send });
        n.post("/bidi", q.to_string().as_bytes())
            .text()
            .trim()
            .to_owned()
    };
    // The first attempt fails before any response header: the second gets both messages.
    let got = bidi(
        json!({ "x-fail-until-attempt": "1" }),
        json!([{ "payload": "one" }, { "payload": "two" }]),
    );
    assert_eq!(got, "one,two");
    assert_eq!(
        total(&fleet),
        2,
        "an injected attempt, then the one that worked"
    );
    // Committed (the server answered a message, then failed): not retried.
    let got = bidi(
        json!({}),
        json!([{ "payload": "one" }, { "payload": "x", "status": 14 }]),
    );
    assert!(got.starts_with("one,error UNAVAILABLE"), "{got}");
    assert_eq!(total(&fleet), 3);
    wait_until(Duration::from_secs(5), "an idle arena", || {
        n.get_ok("/usage") == format!("{IDLE}\n")
    });
    n.assert_log_clean(&[]);
}
