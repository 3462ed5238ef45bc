//! The nginx side: the Lua load drivers (a timed burst of calls, and calls for a duration with
//! a per-bucket series) and starting an nginx with them.

use std::time::Duration;

use serde_json::{json, Value};
use testkit::bench::LUA_BENCH_NOW;
use testkit::{Nginx, NginxBuilder};

use crate::{PAYLOAD, WARMUP};

const HTTP_CONF: &str = r#"
init_worker_by_lua_block {
    assert(require("resty.grpc_zc").init())
}
init_by_lua_block {
    @BENCH_NOW@
    cjson = require "cjson.safe"
    -- zctest.EchoRequest { payload = PAYLOAD } (field 1, a short bytes field).
    local p = "@PAYLOAD@"
    UNARY = "/zctest.Test/Unary"
    REQ = "\10" .. string.char(#p) .. p
    WARMUP = @WARMUP@
    -- The connection of the posted body: `target`, `sc` (a service config table, or none).
    function body_conn()
        ngx.req.read_body()
        local q = assert(cjson.decode(ngx.req.get_body_data()))
        local sc = q.sc ~= cjson.null and q.sc or nil
        local ok, conn = require("resty.grpc_zc").connect(q.target, {
            service_config = sc, connect_timeout = 1000,
        })
        assert(ok, conn)
        return q, conn
    end
}
"#;

const SERVER_CONF: &str = r#"
# POST {target, sc, c, n}: n calls made by c light threads (after WARMUP untimed ones);
# answers the seconds the n took.
location = /burst {
    content_by_lua_block {
        local q, conn = body_conn()
        local function calls(k)
            for _ = 1, k do
                local ok, res = conn:unary(UNARY, REQ)
                if not ok then error(res) end
            end
        end
        local function run(n)
            local c = q.c
            if c == 1 then return calls(n) end
            local threads = {}
            for i = 1, c do
                threads[i] = ngx.thread.spawn(calls, math.floor(n / c) + (i <= n % c and 1 or 0))
            end
            for i = 1, c do
                local ok, err = ngx.thread.wait(threads[i])
                if not ok then error(err) end
            end
        end
        run(WARMUP)
        local t0 = bench_now()
        run(q.n)
        ngx.say(bench_now() - t0)
    }
}
# POST {target, sc, c, duration_ms, bucket_ms, timeout}: c light threads call in a loop for
# duration_ms; answers, per bucket of bucket_ms (by the time a call ended), the calls that
# succeeded and those that failed, the status codes of the failures, the first errors and t0
# (ngx.now() when the load started: seconds since the epoch, ms resolution).
location = /load {
    content_by_lua_block {
        local q, conn = body_conn()
        local nb = math.ceil(q.duration_ms / q.bucket_ms)
        local done, failed = {}, {}
        for i = 1, nb do done[i], failed[i] = 0, 0 end
        local codes, errors = {}, {}
        local opts = { timeout = q.timeout }
        ngx.update_time()
        local t0 = ngx.now()
        local function bucket()
            ngx.update_time()
            return math.floor((ngx.now() - t0) * 1000 / q.bucket_ms) + 1
        end
        local function worker()
            while bucket() <= nb do
                local ok, res, meta = conn:unary(UNARY, REQ, opts)
                local b = math.min(bucket(), nb)
                if ok then
                    done[b] = done[b] + 1
                else
                    failed[b] = failed[b] + 1
                    local code = tostring(meta and meta.code)
                    codes[code] = (codes[code] or 0) + 1
                    if #errors < 5 then errors[#errors + 1] = tostring(res) end
                end
            end
        end
        local threads = {}
        for i = 1, q.c do threads[i] = ngx.thread.spawn(worker) end
        for _, th in ipairs(threads) do assert(ngx.thread.wait(th)) end
        ngx.say(cjson.encode({ t0 = t0, ok = done, failed = failed, codes = codes,
                               errors = errors }))
    }
}
"#;

/// Starts an nginx (one worker, unpinned) serving `/burst` and `/load`.
pub fn start(name: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(1)
        .error_log_level("warn")
        .http_conf(
            &HTTP_CONF
                .replace("@BENCH_NOW@", LUA_BENCH_NOW)
                .replace("@PAYLOAD@", PAYLOAD)
                .replace("@WARMUP@", &WARMUP.to_string()),
        )
        .server_conf(SERVER_CONF)
        .start()
}

/// Seconds for `n` calls at `c` in flight to `target` (with service config `sc`, `Null`:
/// none), as Lua measured them.
pub fn burst(nginx: &Nginx, target: &str, sc: &Value, c: usize, n: usize) -> f64 {
    let body = json!({ "target": target, "sc": sc, "c": c, "n": n }).to_string();
    let resp = nginx.post("/burst", body.as_bytes());
    let text = resp.text();
    assert_eq!(resp.status, 200, "/burst {body}: {text}");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("/burst {body}: {text}"))
}

/// The body of a `/load` request: calls for `duration` at `c` in flight, `bucket_ms` buckets.
pub fn load_body(target: &str, sc: &Value, c: usize, duration: Duration, bucket_ms: u64) -> String {
    json!({
        "target": target, "sc": sc, "c": c, "duration_ms": duration.as_millis() as u64,
        "bucket_ms": bucket_ms, "timeout": 2000,
    })
    .to_string()
}
