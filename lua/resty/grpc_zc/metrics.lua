-- resty.grpc_zc.metrics: the runtime's client metrics (gRFC A66 instruments per target and
-- method, src/grpc/metrics.rs) for Lua and for Prometheus.
--
--   grpc.metrics() -> table | nil, err        this worker's snapshot, decoded (shape below)
--   grpc.metrics_publish(dict, interval_s?)   stores this worker's snapshot in a shared dict
--   grpc.metrics_sync(dict, interval_s)       publishes now and every interval_s (a timer);
--                                             call it from init_worker_by_lua
--   grpc.prometheus(dict) -> text | nil, err  every worker's snapshots, in the Prometheus text
--                                             exposition format
--
-- Each worker has its own runtime, so its own counters: a scrape that lands on one worker
-- sees only that worker's calls. Workers therefore publish their snapshots in a
-- lua_shared_dict (one key per worker, `ngx.worker.id()`), and grpc.prometheus sums them:
-- counters and histograms per label set, whichever worker counted them. A snapshot of a
-- worker that stopped publishing (its id is gone after a reload with fewer workers) is kept
-- for its counters, which must not go down; its endpoint gauges describe a state that no
-- longer holds, so they are dropped once the snapshot is older than 3 x its interval.
-- A dedicated dict is best: grpc.prometheus lists the dict's keys (get_keys locks it).
--
-- The snapshot (src/grpc/metrics.rs documents it): { buckets = { bounds in seconds },
-- targets = { { target, endpoints = { { address, state, health, in_flight, picks } },
-- methods = { { method, attempt_started, retries, hedges, throttled,
-- attempt_duration = { [STATUS] = { count, sum, buckets = { cumulative counts } } },
-- call_duration = {...} } } } } }.

local Command = require "resty.grpc_zc.wire.Command"
local Metrics = require "resty.grpc_zc.wire.Metrics"
local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"
local check = require "resty.grpc_zc.check"
local ffi = require "ffi"
-- A private instance: the application's cjson settings do not change how snapshots decode.
local cjson = require("cjson.safe").new()

local ngx = ngx
local type = type
local error = error
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local format = string.format
local concat = table.concat
local sort = table.sort
local floor = math.floor
local builder = call.builder

local _M = { version = "0.1.0" }

-- Keys in the shared dict: PREFIX .. worker id.
local PREFIX = "grpc_zc_metrics:"
-- The interval assumed by a publish that does not say (seconds).
local DEFAULT_INTERVAL = 10


-- This worker's snapshot as JSON text, or nil, err.
local function snapshot_json()
    local ok, err = instance.ensure()
    if not ok then
        return nil, err
    end
    local h
    h, err = call.begin_build(64)
    if not h then
        return nil, err
    end
    Metrics.Start(builder)
    call.finish_request(Command.Metrics, Metrics.End(builder))
    local r, rerr = call.roundtrip(h, nil)
    if not r then
        return nil, rerr
    end
    local serr = reply.status_of(r)
    local json
    if not serr then
        local ptr, len = reply.payload_of(r)
        json = ptr and ffi.string(ptr, len) or ""
    end
    call.finish(h, 1, 0)
    if serr then
        return nil, serr
    end
    return json
end


function _M.metrics()
    local json, err = snapshot_json()
    if not json then
        return nil, err
    end
    local t, derr = cjson.decode(json)
    if type(t) ~= "table" then
        return nil, "metrics: bad snapshot: " .. tostring(derr)
    end
    return t
end


-- A shared dict, or raises.
local function check_dict(dict, level)
    if type(dict) ~= "table" or type(dict.get_keys) ~= "function" then
        error("bad dict: a lua_shared_dict (ngx.shared.NAME) expected", level + 1)
    end
end


local function check_interval(v, level)
    return check.number(v, "interval_s", 0.001, 86400 * 365, false, level + 1)
end


-- Stored as "<published at> <interval>\n<json>" (seconds, ngx.now()).
function _M.metrics_publish(dict, interval_s)
    check_dict(dict, 2)
    if interval_s ~= nil then
        check_interval(interval_s, 2)
    end
    local json, err = snapshot_json()
    if not json then
        return nil, err
    end
    local id = ngx.worker.id() or ngx.worker.pid()
    local ok, serr = dict:set(PREFIX .. id, format("%.3f %.3f\n", ngx.now(),
                                                   interval_s or DEFAULT_INTERVAL) .. json)
    if not ok then
        return nil, "metrics_publish: " .. tostring(serr)
    end
    return true
end


function _M.metrics_sync(dict, interval_s)
    check_dict(dict, 2)
    check_interval(interval_s, 2)
    local function publish(premature)
        if premature then
            return
        end
        local ok, err = _M.metrics_publish(dict, interval_s)
        if not ok then
            ngx.log(ngx.WARN, "resty.grpc_zc metrics_sync: ", err)
        end
    end
    -- Once at once (init_worker_by_lua cannot call the runtime itself), then every interval.
    local ok, err = ngx.timer.at(0, publish)
    if ok then
        ok, err = ngx.timer.every(interval_s, publish)
    end
    if not ok then
        return nil, "metrics_sync: " .. tostring(err)
    end
    return true
end


-- A label value escaped as the exposition format wants: backslash, double quote, newline.
local function escape(v)
    return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end


-- `{k1="v1",k2="v2"}` from a list { k1, v1, k2, v2, ... }.
local function labels(kv)
    local parts = {}
    for i = 1, #kv, 2 do
        parts[#parts + 1] = kv[i] .. '="' .. escape(kv[i + 1]) .. '"'
    end
    return "{" .. concat(parts, ",") .. "}"
end


-- A sample value: integers without a fraction, others in 15 significant digits.
local function num(v)
    if v == floor(v) and v > -2^53 and v < 2^53 then
        return format("%d", v)
    end
    return format("%.15g", v)
end


-- A bucket bound as `le`: "%g" writes every A66 bound exactly (1e-05, 0.0003, 1, 100).
local function le(bound)
    return format("%g", bound)
end


-- Metric families, in output order: name, type, help.
local FAMILIES = {
    { "grpc_client_attempt_started_total", "counter",
      "The total number of RPC attempts started, including those that have not completed." },
    { "grpc_client_attempt_duration_seconds", "histogram",
      "End-to-end time taken to complete an RPC attempt, including the time to pick an endpoint." },
    { "grpc_client_call_duration_seconds", "histogram",
      "End-to-end time the client takes to complete an RPC, all its attempts included." },
    { "grpc_client_call_retries_total", "counter", "Attempts retried." },
    { "grpc_client_call_hedges_total", "counter", "Hedged attempts sent." },
    { "grpc_client_call_retry_throttled_total", "counter",
      "Retries and hedges not sent because retry throttling held them back." },
    { "grpc_zc_endpoint_state", "gauge",
      "1 for the connectivity state an endpoint is in, per worker." },
    { "grpc_zc_endpoint_in_flight", "gauge", "Calls in flight on an endpoint, per worker." },
    { "grpc_zc_endpoint_healthy", "gauge",
      "1 when the endpoint may get calls (health SERVING, or not checked), per worker." },
}
local COUNTER_FIELDS = {
    grpc_client_attempt_started_total = "attempt_started",
    grpc_client_call_retries_total = "retries",
    grpc_client_call_hedges_total = "hedges",
    grpc_client_call_retry_throttled_total = "throttled",
}
local HISTOGRAM_FIELDS = {
    grpc_client_attempt_duration_seconds = "attempt_duration",
    grpc_client_call_duration_seconds = "call_duration",
}
local STATES = { "IDLE", "CONNECTING", "READY", "TRANSIENT_FAILURE" }


-- Adds `v` to fam[key] (key: the label text), remembering the order keys came in.
local function add(fam, key, v)
    local old = fam[key]
    if old == nil then
        fam.keys[#fam.keys + 1] = key
        old = 0
    end
    fam[key] = old + (tonumber(v) or 0)
end


-- A table's keys, sorted (statuses come out in the same order from every scrape).
local function sorted_keys(t)
    local ks = {}
    for k in pairs(t) do
        ks[#ks + 1] = k
    end
    sort(ks)
    return ks
end


-- Folds histogram `hist` of one label set into `fam` (one per histogram family): per label
-- text, its bucket sums by `le` (in bound order), sum and count.
local function add_histogram(fam, kv, bounds, hist)
    local lbl = labels(kv)
    local series = fam[lbl]
    if series == nil then
        series = { kv = kv, les = {}, buckets = {}, sum = 0, count = 0 }
        fam[lbl] = series
        fam.keys[#fam.keys + 1] = lbl
    end
    local counts = type(hist.buckets) == "table" and hist.buckets or {}
    for i, bound in ipairs(bounds) do
        local l = le(bound)
        if series.buckets[l] == nil then
            series.les[#series.les + 1] = l
            series.buckets[l] = 0
        end
        series.buckets[l] = series.buckets[l] + (tonumber(counts[i]) or 0)
    end
    series.sum = series.sum + (tonumber(hist.sum) or 0)
    series.count = series.count + (tonumber(hist.count) or 0)
end


-- Folds one worker's snapshot into `sums` (counters and histograms) and `gauges` (lines).
local function fold(sums, gauges, snap, worker, fresh)
    local bounds = type(snap.buckets) == "table" and snap.buckets or {}
    for _, t in ipairs(type(snap.targets) == "table" and snap.targets or {}) do
        local target = tostring(t.target)
        for _, m in ipairs(type(t.methods) == "table" and t.methods or {}) do
            -- A66's grpc.method: "pkg.Service/Method", without the leading slash.
            local method = tostring(m.method):gsub("^/", "")
            local base = labels({ "grpc_method", method, "grpc_target", target })
            for name, field in pairs(COUNTER_FIELDS) do
                add(sums[name], base, m[field])
            end
            for name, field in pairs(HISTOGRAM_FIELDS) do
                local by_status = type(m[field]) == "table" and m[field] or {}
                for _, status in ipairs(sorted_keys(by_status)) do
                    add_histogram(sums[name], { "grpc_method", method, "grpc_target", target,
                                                "grpc_status", status },
                                  bounds, by_status[status])
                end
            end
        end
        if fresh then
            for _, e in ipairs(type(t.endpoints) == "table" and t.endpoints or {}) do
                local kv = { "grpc_target", target, "address", e.address, "worker", worker }
                local g = gauges
                for _, s in ipairs(STATES) do
                    local lbl = labels({ "grpc_target", target, "address", e.address,
                                         "state", s, "worker", worker })
                    g.grpc_zc_endpoint_state[#g.grpc_zc_endpoint_state + 1] =
                        lbl .. " " .. (e.state == s and "1" or "0")
                end
                g.grpc_zc_endpoint_in_flight[#g.grpc_zc_endpoint_in_flight + 1] =
                    labels(kv) .. " " .. num(tonumber(e.in_flight) or 0)
                g.grpc_zc_endpoint_healthy[#g.grpc_zc_endpoint_healthy + 1] =
                    labels(kv) .. " " .. ((e.health == "SERVING" or e.health == "UNCHECKED") and "1" or "0")
            end
        end
    end
end


-- Appends a histogram family's lines: per label set its buckets, `+Inf`, _sum and _count.
local function emit_histogram(out, name, fam)
    for _, lbl in ipairs(fam.keys) do
        local series = fam[lbl]
        local kv = series.kv
        local n = #kv
        for _, l in ipairs(series.les) do
            kv[n + 1], kv[n + 2] = "le", l
            out[#out + 1] = name .. "_bucket" .. labels(kv) .. " " .. num(series.buckets[l])
        end
        kv[n + 1], kv[n + 2] = "le", "+Inf"
        out[#out + 1] = name .. "_bucket" .. labels(kv) .. " " .. num(series.count)
        kv[n + 1], kv[n + 2] = nil, nil
        out[#out + 1] = name .. "_sum" .. lbl .. " " .. num(series.sum)
        out[#out + 1] = name .. "_count" .. lbl .. " " .. num(series.count)
    end
end


function _M.prometheus(dict)
    check_dict(dict, 2)
    local sums, gauges = {}, {}
    for _, f in ipairs(FAMILIES) do
        local name, kind = f[1], f[2]
        if kind == "gauge" then
            gauges[name] = {}
        else
            sums[name] = { keys = {} }
        end
    end
    local keys = dict:get_keys(0)
    sort(keys)
    local now = ngx.now()
    for _, key in ipairs(keys) do
        if key:sub(1, #PREFIX) == PREFIX then
            local v = dict:get(key)
            local at, interval, json = tostring(v):match("^(%S+) (%S+)\n(.*)$")
            local snap = json and cjson.decode(json)
            if type(snap) == "table" then
                local at_s, interval_s = tonumber(at), tonumber(interval)
                local fresh = at_s and interval_s and now - at_s <= 3 * interval_s
                fold(sums, gauges, snap, key:sub(#PREFIX + 1), fresh)
            end
        end
    end
    local out = {}
    for _, f in ipairs(FAMILIES) do
        local name, kind, help = f[1], f[2], f[3]
        out[#out + 1] = "# HELP " .. name .. " " .. help
        out[#out + 1] = "# TYPE " .. name .. " " .. kind
        if kind == "gauge" then
            for _, line in ipairs(gauges[name]) do
                out[#out + 1] = name .. line
            end
        elseif kind == "histogram" then
            emit_histogram(out, name, sums[name])
        else
            local fam = sums[name]
            for _, k in ipairs(fam.keys) do
                out[#out + 1] = name .. k .. " " .. num(fam[k])
            end
        end
    end
    out[#out + 1] = ""
    return concat(out, "\n")
end


return _M
