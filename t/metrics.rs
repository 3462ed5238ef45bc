//! Client metrics on a real nginx with two workers against the test server: unary calls are
//! counted per method, target and status (`grpc.metrics()` in one worker, `grpc.prometheus`
//! summed over both through a shared dict), snapshots of workers that stopped publishing keep
//! their counters but lose their endpoint gauges, label values are escaped; and the connect
//! options that feed the balancer (`service_config`, `resolve_interval`) are checked in Lua.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::{GrpcServer, GrpcServerOpts, NginxBuilder};

mod common;
use common::{helpers, location};

const OK_PER_REQUEST: usize = 3;
const FAILED_PER_REQUEST: usize = 1;
const REQUESTS: usize = 10;

/// The samples of a Prometheus text: `name{labels}` → value; and the `# TYPE` lines.
fn samples(text: &str) -> (HashMap<String, f64>, Vec<String>) {
    let mut m = HashMap::new();
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            types.push(t.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.rsplit_once(' ').expect("name value");
        let v: f64 = v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(m.insert(k.to_owned(), v).is_none(), "duplicate sample {k}");
    }
    (m, types)
}

#[test]
fn calls_are_counted_per_status_across_workers() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let t = server.addr();
    let server_conf = [
        location(
            "/calls",
            &format!(
                r#"
                for _ = 1, {OK_PER_REQUEST} do
                    local ok, res = conn:unary("/zctest.Test/Unary", echo_req({{ payload = "x" }}))
                    assert(ok, res)
                end
                for _ = 1, {FAILED_PER_REQUEST} do
                    local ok, err, st = conn:unary("/zctest.Test/Unary",
                                                   echo_req({{ status = 5, message = "nope" }}))
                    assert(ok == false and st.code == 5, tostring(err))
                end
                ngx.say("done")
                "#
            ),
        ),
        r#"
        location = /metrics {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                assert(grpc.metrics_publish(ngx.shared.grpc_metrics, 0.2))
                ngx.print(assert(grpc.prometheus(ngx.shared.grpc_metrics)))
            }
        }
        location = /json {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local m = assert(grpc.metrics())
                ngx.say(require("cjson").encode(m))
            }
        }
        location = /fake {
            content_by_lua_block {
                -- Two snapshots as other workers would publish them: one stale (published
                -- long ago), one fresh, each with an endpoint and a method.
                local snap = [[{"buckets":[0.001,1],"targets":[{"target":"%s",
                  "endpoints":[{"address":"10.0.0.1:1","state":"READY","health":"NOT_SERVING",
                                "in_flight":2,"picks":9}],
                  "methods":[{"method":"/f.F/M","attempt_started":4,"retries":1,"hedges":2,
                              "throttled":3,"attempt_duration":{},"call_duration":{"UNAVAILABLE":
                              {"count":4,"sum":0.5,"buckets":[1,3]}}}]}]}]]
                local d = ngx.shared.grpc_metrics
                assert(d:set("grpc_zc_metrics:7", "1.000 0.200\n" .. snap:format("stale")))
                assert(d:set("grpc_zc_metrics:8", string.format("%.3f 0.200\n", ngx.now())
                                                  .. snap:format([[we\"ird\\ta\nrget]])))
                ngx.say("ok")
            }
        }
        location = /unfake {
            content_by_lua_block {
                ngx.shared.grpc_metrics:delete("grpc_zc_metrics:7")
                ngx.shared.grpc_metrics:delete("grpc_zc_metrics:8")
                ngx.say("ok")
            }
        }
        "#
        .to_owned(),
    ]
    .concat();
    let n = NginxBuilder::new("metrics")
        .workers(2)
        .http_conf(&format!(
            "{}\nlua_shared_dict grpc_metrics 1m;\n\
             init_worker_by_lua_block {{\n\
               local grpc = require \"resty.grpc_zc\"\n\
               assert(grpc.init())\n\
               assert(grpc.metrics_sync(ngx.shared.grpc_metrics, 0.2))\n\
             }}",
            helpers()
        ))
        .server_conf(&server_conf)
        .start();
    for _ in 0..REQUESTS {
        assert_eq!(n.get_ok(&format!("/calls?t={t}")), "done\n");
    }
    let ok = (REQUESTS * OK_PER_REQUEST) as f64;
    let failed = (REQUESTS * FAILED_PER_REQUEST) as f64;
    let base = format!(r#"grpc_method="zctest.Test/Unary",grpc_target="{t}""#);
    let started = format!("grpc_client_attempt_started_total{{{base}}}");

    // Both workers' calls, once both have published (every 0.2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (m, types) = loop {
        let (m, types) = samples(&n.get_ok("/metrics"));
        if m.get(&started) == Some(&(ok + failed)) || Instant::now() > deadline {
            break (m, types);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m.get(&started), Some(&(ok + failed)), "{m:#?}");
    for (kind, status, count) in [
        ("attempt", "OK", ok),
        ("attempt", "NOT_FOUND", failed),
        ("call", "OK", ok),
        ("call", "NOT_FOUND", failed),
    ] {
        let name = format!("grpc_client_{kind}_duration_seconds");
        let lbl = format!(r#"{base},grpc_status="{status}""#);
        assert_eq!(
            m[&format!("{name}_count{{{lbl}}}")],
            count,
            "{name} {status}"
        );
        assert_eq!(m[&format!("{name}_bucket{{{lbl},le=\"+Inf\"}}")], count);
        assert!(m[&format!("{name}_sum{{{lbl}}}")] > 0.0);
        // cumulative: never decreasing, and the last bound (100 s) holds every call
        let mut last = 0.0;
        for b in [
            "0", "1e-05", "0.0001", "0.001", "0.005", "0.01", "0.1", "1", "10", "100",
        ] {
            let v = m[&format!("{name}_bucket{{{lbl},le=\"{b}\"}}")];
            assert!(v >= last, "{name} {status} le={b}: {v} < {last}");
            last = v;
        }
        assert_eq!(last, count);
    }
    for c in ["retries", "hedges", "retry_throttled"] {
        assert_eq!(m[&format!("grpc_client_call_{c}_total{{{base}}}")], 0.0);
    }
    for ty in [
        "grpc_client_attempt_started_total counter",
        "grpc_client_attempt_duration_seconds histogram",
        "grpc_client_call_duration_seconds histogram",
        "grpc_client_call_retries_total counter",
        "grpc_client_call_hedges_total counter",
        "grpc_client_call_retry_throttled_total counter",
        "grpc_zc_endpoint_state gauge",
        "grpc_zc_endpoint_in_flight gauge",
        "grpc_zc_endpoint_healthy gauge",
    ] {
        assert!(types.iter().any(|t| t == ty), "# TYPE {ty}");
    }

    // One worker's own snapshot, decoded.
    let v: serde_json::Value = serde_json::from_str(&n.get_ok("/json")).unwrap();
    assert_eq!(v["buckets"].as_array().unwrap().len(), 41);
    let target = &v["targets"][0];
    assert_eq!(target["target"], t.as_str());
    let meth = &target["methods"][0];
    assert_eq!(meth["method"], "/zctest.Test/Unary");
    let here = meth["attempt_started"].as_f64().unwrap();
    assert!(here > 0.0 && here <= ok + failed, "{meth}");
    assert_eq!(
        meth["attempt_duration"]["OK"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        41
    );

    // Published snapshots of other workers: counters of both summed in, the stale one's
    // endpoint gauges dropped, label values escaped.
    assert_eq!(n.get_ok("/fake"), "ok\n");
    let text = n.get_ok("/metrics");
    let (m, _) = samples(&text);
    let weird = r#"we\"ird\\ta\nrget"#;
    for tgt in ["stale", weird] {
        let b = format!(r#"grpc_method="f.F/M",grpc_target="{tgt}""#);
        assert_eq!(m[&format!("grpc_client_attempt_started_total{{{b}}}")], 4.0);
        assert_eq!(m[&format!("grpc_client_call_retries_total{{{b}}}")], 1.0);
        assert_eq!(m[&format!("grpc_client_call_hedges_total{{{b}}}")], 2.0);
        assert_eq!(
            m[&format!("grpc_client_call_retry_throttled_total{{{b}}}")],
            3.0
        );
        let h = format!(r#"{b},grpc_status="UNAVAILABLE""#);
        assert_eq!(
            m[&format!("grpc_client_call_duration_seconds_bucket{{{h},le=\"0.001\"}}")],
            1.0
        );
        assert_eq!(
            m[&format!("grpc_client_call_duration_seconds_bucket{{{h},le=\"1\"}}")],
            3.0
        );
        assert_eq!(
            m[&format!("grpc_client_call_duration_seconds_bucket{{{h},le=\"+Inf\"}}")],
            4.0
        );
        assert_eq!(
            m[&format!("grpc_client_call_duration_seconds_sum{{{h}}}")],
            0.5
        );
    }
    let ep = format!(r#"grpc_target="{weird}",address="10.0.0.1:1""#);
    assert_eq!(
        m[&format!(r#"grpc_zc_endpoint_state{{{ep},state="READY",worker="8"}}"#)],
        1.0
    );
    assert_eq!(
        m[&format!(r#"grpc_zc_endpoint_state{{{ep},state="IDLE",worker="8"}}"#)],
        0.0
    );
    assert_eq!(
        m[&format!(r#"grpc_zc_endpoint_in_flight{{{ep},worker="8"}}"#)],
        2.0
    );
    assert_eq!(
        m[&format!(r#"grpc_zc_endpoint_healthy{{{ep},worker="8"}}"#)],
        0.0
    );
    assert!(
        !text.contains(r#"grpc_target="stale",address"#),
        "stale endpoint gauges are dropped:\n{text}"
    );
    assert_eq!(n.get_ok("/unfake"), "ok\n");
    n.assert_log_clean(&[]);
}

#[test]
fn connect_options_for_the_balancer_are_checked_in_lua() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let server_conf = r#"
        location = /opts {
            content_by_lua_block {
                local grpc = require "resty.grpc_zc"
                local t = ngx.var.arg_t
                local function raises(opts, needle)
                    local ok, err = pcall(grpc.connect, t, opts)
                    assert(not ok, "no error for " .. needle)
                    assert(tostring(err):find(needle, 1, true), tostring(err))
                end
                raises({ service_config = 42 }, "bad option service_config")
                raises({ service_config = true }, "bad option service_config")
                raises({ service_config = { f = print } }, "bad option service_config")
                raises({ resolve_interval = -1 }, "bad option resolve_interval")
                raises({ resolve_interval = 0 / 0 }, "bad option resolve_interval")
                raises({ resolve_interval = "1000" }, "bad option resolve_interval")
                -- accepted (the runtime ignores them until the balancer lands)
                local sc = { loadBalancingConfig = { { round_robin = {} } },
                             methodConfig = { { name = { { service = "zctest.Test" } },
                                                timeout = "1s" } } }
                for _, opts in ipairs({
                    { service_config = sc },
                    { service_config = '{"loadBalancingPolicy":"round_robin"}' },
                    { service_config = {} },
                    { resolve_interval = 1000 },
                    { resolve_interval = 0, service_config = sc },
                }) do
                    local ok, conn = grpc.connect(t, opts)
                    assert(ok, conn)
                    local ok, res = conn:unary("/zctest.Test/Unary", "")
                    assert(ok, res)
                    conn:close()
                end
                -- bad dicts
                for _, f in ipairs({ grpc.prometheus, grpc.metrics_publish }) do
                    local ok, err = pcall(f, "grpc_metrics")
                    assert(not ok and err:find("bad dict", 1, true), tostring(err))
                end
                local ok, err = pcall(grpc.metrics_sync, ngx.shared.d, 0)
                assert(not ok and err:find("bad option interval_s", 1, true), tostring(err))
                ngx.say("ok")
            }
        }
    "#;
    let n = NginxBuilder::new("metrics-opts")
        .workers(1)
        .http_conf(&format!(
            "{}\nlua_shared_dict d 1m;\n\
             init_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}",
            helpers()
        ))
        .server_conf(server_conf)
        .start();
    assert_eq!(n.get_ok(&format!("/opts?t={}", server.addr())), "ok\n");
    n.assert_log_clean(&[]);
}
