-- resty.grpc_zc.instance: this worker's runtime instance (grpc.init, grpc.stats).
--
-- Starts the runtime through ngx.load_ffi, finds its arena and checks the arena header. The
-- per-worker state is the table `instance.state` (fields below), read by the call modules;
-- it is set once by init() and never changes afterwards.
--
--     state.inst         the instance (void *), nil before init()
--     state.base         the arena's base pointer (uint8_t *)
--     state.rt           the resty_ffi runtime object calls are posted through
--     state.name         the instance name ("grpc_zc-<pid>")
--     state.max_payload  the largest payload a slot holds (bytes)

local ffi = require "ffi"
local lib = require "resty.grpc_zc.lib"
local C = assert(lib.load())

local ffi_new = ffi.new
local ffi_cast = ffi.cast
local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local floor = math.floor

local header_ptr_t = ffi.typeof("const grpc_zc_arena_header_t *")

local _M = { version = "0.1.0" }

local state = {}
_M.state = state


-- opts.cpus of init(): a CPU number, a list of them, or a string ("1", "2-3", "0:2-3").
local function cpu_list(v)
    local t = type(v)
    if t == "number" and v >= 0 and v == floor(v) then
        return tostring(v)
    end
    if t == "string" and v:find("^[%d:%-]+$") then
        return v     -- checked by the runtime (a bad list makes init fail)
    end
    if t == "table" and #v > 0 then
        local parts = {}
        for i = 1, #v do
            local c = v[i]
            if type(c) ~= "number" or c < 0 or c ~= floor(c) then
                error("bad option cpus: CPU numbers expected", 3)
            end
            parts[i] = tostring(c)
        end
        return table.concat(parts, ":")
    end
    error("bad option cpus: a CPU number, a list of them or a string like \"2-3\" expected", 3)
end


-- grpc.init(opts?) -> true | false, err: loads the runtime in this worker (once); the facade's
-- grpc.init is this function.
function _M.init(opts)
    if state.inst ~= nil then
        return true
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table expected", 2)
    end
    local name = "grpc_zc-" .. ngx.worker.pid()
    local cfg = "instance=" .. name
    if opts and opts.arena_size then
        cfg = cfg .. ",arena_size=" .. floor(opts.arena_size)
    end
    if opts and opts.max_message then
        cfg = cfg .. ",max_message=" .. floor(opts.max_message)
    end
    if opts and opts.cpus ~= nil then
        cfg = cfg .. ",cpus=" .. cpu_list(opts.cpus)
    end
    if opts and opts.busy_poll_us ~= nil then
        local us = opts.busy_poll_us
        if type(us) ~= "number" or not (us >= 0 and us <= 1000000) or us ~= floor(us) then
            error("bad opts.busy_poll_us: an integer from 0 to 1000000 expected", 2)
        end
        cfg = cfg .. ",busy_poll_us=" .. string.format("%d", us)
    end
    local obj, rc = ngx.load_ffi("resty_grpc_zc", cfg)
    if not obj then
        return false, "cannot start the resty_grpc_zc runtime (rc " .. tostring(rc)
                      .. "; see the error log)"
    end
    local i = C.grpc_zc_instance(name)
    if i == nil then
        return false, "resty_grpc_zc instance " .. name .. " not found"
    end
    local b = C.grpc_zc_arena_base(i)
    local hdr = ffi_cast(header_ptr_t, b)
    if hdr.magic ~= lib.ARENA_MAGIC or hdr.layout_version ~= lib.ARENA_LAYOUT_VERSION then
        return false, "arena header mismatch (magic or layout version)"
    end
    state.inst, state.base, state.rt, state.name = i, b, obj, name
    state.max_payload = hdr.max_message - lib.ENVELOPE_SLACK
    return true
end


-- init() with the defaults unless done: true, or false, err.
function _M.ensure()
    if state.inst == nil then
        return _M.init()
    end
    return true
end


-- grpc.stats() -> table | nil, err: arena usage of this worker's instance, calls in flight,
-- open streams and the time its poll thread has spent busy-polling (busy_polled_us, µs since
-- start).
local stats_buf = ffi_new("grpc_zc_arena_stats_t")
local busy_polled_buf = ffi_new("uint64_t[1]")
function _M.stats()
    local inst = state.inst
    if inst == nil then
        return nil, "not initialized"
    end
    local calls = C.grpc_zc_stats(inst, stats_buf)
    C.grpc_zc_busy_polled_us(inst, busy_polled_buf)
    return {
        bytes_in_use = tonumber(stats_buf.bytes_in_use),
        slots_in_use = tonumber(stats_buf.slots_in_use),
        high_water_bytes = tonumber(stats_buf.high_water_bytes),
        failed_leases = tonumber(stats_buf.failed_leases),
        leases_total = tonumber(stats_buf.leases_total),
        calls_in_flight = calls,
        streams_open = C.grpc_zc_streams_open(inst),
        busy_polled_us = tonumber(busy_polled_buf[0]),
        instance = state.name,
    }
end


return _M
