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
local check = require "resty.grpc_zc.check"
local C = assert(lib.load())

local ffi_new = ffi.new
local ffi_cast = ffi.cast
local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local format = string.format
local number = check.number
local in_range = check.in_range
local MAX_SIZE = check.MAX_SIZE

local header_ptr_t = ffi.typeof("const grpc_zc_arena_header_t *")

local _M = { version = "0.1.0" }

local state = {}
_M.state = state


-- Highest CPU number (CPU_SETSIZE - 1).
local MAX_CPU = 1023
-- Largest max_message (the arena's MAX_MESSAGE_LIMIT, src/arena).
local MAX_MESSAGE_LIMIT = 64 * 1048576

-- opts.cpus of init(): a CPU number, a list of them, or a string ("1", "2-3", "0:2-3").
-- Misuse raises at `level` (check.number's rule).
local function cpu_list(v, level)
    local t = type(v)
    if t == "number" then
        return format("%d", number(v, "cpus", 0, MAX_CPU, true, level + 1))
    end
    if t == "string" and v:find("^[%d:%-]+$") then
        return v     -- checked by the runtime (a bad list makes init fail)
    end
    if t == "table" and #v > 0 then
        local parts = {}
        for i = 1, #v do
            local c = v[i]
            if not in_range(c, 0, MAX_CPU, true) then
                error("bad option cpus: CPU numbers from 0 to " .. MAX_CPU .. " expected",
                      level + 1)
            end
            parts[i] = format("%d", c)
        end
        return table.concat(parts, ":")
    end
    error("bad option cpus: a CPU number, a list of them or a string like \"2-3\" expected",
          level + 1)
end


-- The cfg string of init's options for instance `name`; raises at the caller of init on a bad
-- option.
local function init_cfg(name, opts)
    local cfg = "instance=" .. name
    if opts == nil then
        return cfg
    end
    if opts.arena_size ~= nil then
        cfg = cfg .. format(",arena_size=%d",
                            number(opts.arena_size, "arena_size", 1, MAX_SIZE, true, 3))
    end
    if opts.max_message ~= nil then
        cfg = cfg .. format(",max_message=%d",
                            number(opts.max_message, "max_message", 1, MAX_MESSAGE_LIMIT, true, 3))
    end
    if opts.cpus ~= nil then
        cfg = cfg .. ",cpus=" .. cpu_list(opts.cpus, 3)
    end
    if opts.busy_poll_us ~= nil then
        cfg = cfg .. format(",busy_poll_us=%d",
                            number(opts.busy_poll_us, "busy_poll_us", 0, 1000000, true, 3))
    end
    local mode = opts.busy_poll
    if mode ~= nil then
        if mode ~= "adaptive" and mode ~= "fixed" and mode ~= "ahead" and mode ~= "off" then
            error("bad option busy_poll: \"adaptive\", \"fixed\", \"ahead\" or \"off\" expected, got "
                  .. tostring(mode), 3)
        end
        cfg = cfg .. ",busy_poll=" .. mode
    end
    return cfg
end


-- grpc.init(opts?) -> true | false, err: loads the runtime in this worker (once); the facade's
-- grpc.init is this function. Options are checked even when the runtime is already loaded
-- (misuse always raises).
function _M.init(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table expected", 2)
    end
    local name = "grpc_zc-" .. ngx.worker.pid()
    local cfg = init_cfg(name, opts)
    if state.inst ~= nil then
        return true
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
