-- resty_ffi: ngx.load_ffi() on stock nginx + lua-nginx-module, keeping lua-resty-ffi's contract.
--
-- require("resty_ffi") installs ngx.load_ffi(lib, cfg, opts). The native half is
-- libresty_ffi.so (the `host` crate of this repository), loaded RTLD_GLOBAL so that runtimes
-- resolve ngx_http_lua_ffi_task_poll/get_req/respond from it.
--
-- Conventions (lua-resty-core): misuse raises error(msg, 2); runtime failures return values.

local ffi = require "ffi"
local base = require "resty.core.base"
require "ngx.semaphore"   -- declares ngx_http_lua_sema_t and ngx_http_lua_ffi_sema_wait

local C = ffi.C
local ffi_gc = ffi.gc
local ffi_str = ffi.string
local ffi_load = ffi.load
local ffi_new = ffi.new
local ffi_copy = ffi.copy
local ffi_cast = ffi.cast
local get_request = base.get_request
local get_phase = ngx.get_phase
local co_yield = coroutine._yield
local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local math_floor = math.floor

local FFI_OK = base.FFI_OK
local FFI_ERROR = base.FFI_ERROR
local FFI_DECLINED = base.FFI_DECLINED

local ABI_VERSION = 2

-- Defaults of the optional tuning knobs (µs). See docs/host.md.
local DEFAULT_MAX_QUEUE = 65536
local DEFAULT_SPIN_US = 20
local DEFAULT_POLL_SPIN_US = 50
local MAX_SPIN_BACKOFF = 64
-- "No timeout": sema_wait needs one; ~24.8 days is the largest its int takes.
local FOREVER_MS = 2147483647

ffi.cdef [[
    int resty_ffi_abi_version(void);
    int resty_ffi_init(const char **err);
    void *resty_ffi_queue_new(int max_queue, int poll_spin_us);
    void resty_ffi_queue_finish(void *tq);
    void *resty_ffi_task_post(void *tq, const char *req, size_t len, int *err);
    int resty_ffi_task_spin(void *tq, void *task, int max_us);
    ngx_http_lua_sema_t *resty_ffi_task_wait(void *task, const char **err);
    int resty_ffi_task_result(void *task, const char **rsp, size_t *len);
    void resty_ffi_task_release(void *task);

    int libffi_init(const char *cfg, void *tq);
]]


local function find_host()
    -- Next to the Lua modules' native libraries first (lua_package_cpath), then the
    -- dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache after `make install`).
    local path = package.searchpath("libresty_ffi", package.cpath)
                 or package.searchpath("resty_ffi", package.cpath)
    if path then
        return ffi_load(path, true)
    end
    return ffi_load("resty_ffi", true)
end

local host = find_host()
if host.resty_ffi_abi_version() ~= ABI_VERSION then
    error("libresty_ffi.so ABI version " .. tostring(host.resty_ffi_abi_version())
          .. " does not match resty_ffi.lua's " .. ABI_VERSION)
end

local host_post = host.resty_ffi_task_post
local host_spin = host.resty_ffi_task_spin
local host_wait = host.resty_ffi_task_wait
local host_result = host.resty_ffi_task_result
local host_release = host.resty_ffi_task_release
local sema_wait = C.ngx_http_lua_ffi_sema_wait

-- Per-worker scratch buffers (each use is synchronous: filled and read without a yield between).
local const_char_p = ffi.typeof("const char *")
local err_int = ffi_new("int[1]")
local err_str = ffi_new("const char *[1]")
local rsp_ptr = ffi_new("const char *[1]")
local rsp_len = ffi_new("size_t[1]")
local ERR_BUF_SIZE = 128
local errbuf = ffi_new("unsigned char[?]", ERR_BUF_SIZE)
local errlen = ffi_new("size_t[1]")

local POST_ERRORS = {
    [1] = "post failed, queue full",
    [2] = "task queue is finished",
    [3] = "no memory",
    [4] = "request too large",
}

local YIELDABLE = { rewrite = true, access = true, content = true, timer = true }

local _M = { version = "0.1.0", abi_version = ABI_VERSION }

local runtimes = {}   -- per worker: cache key -> runtime object
local state = setmetatable({}, { __mode = "k" })   -- runtime object -> its private state
local pinned = {}     -- library handles kept loaded forever (opts.unpin ~= true)
local initialized = false


local function release(task)
    ffi_gc(task, nil)
    host_release(task)
end


-- Posts `len` bytes at `req` (a Lua string or a pointer; nil with 0 for a nil request) and
-- waits for the answer. Returns the answered task (tied to a finalizer; the caller reads it and
-- calls release), or nil, err. Misuse raises at the level of the caller's caller.
local function post_and_wait(self, req, len, call_opts)
    local st = state[self]
    if st == nil then
        error("bad runtime object", 3)
    end
    if st.finished then
        return nil, "task queue is finished"
    end

    local timeout_ms = FOREVER_MS
    if call_opts ~= nil then
        if type(call_opts) ~= "table" then
            error("bad options: table expected", 3)
        end
        local t = call_opts.timeout
        if t ~= nil then
            -- `not (t > 0)` also refuses NaN; inf and larger than FOREVER_MS wait forever.
            if type(t) ~= "number" or not (t > 0) then
                error("bad timeout: positive number of milliseconds expected, got "
                      .. tostring(t), 3)
            end
            timeout_ms = math_floor(t)
            if timeout_ms < 1 then
                timeout_ms = 1
            elseif timeout_ms > FOREVER_MS then
                timeout_ms = FOREVER_MS
            end
        end
    end

    local phase = get_phase()
    if not YIELDABLE[phase] then
        return nil, "API disabled in the context of " .. phase
    end
    local r = get_request()
    if not r then
        return nil, "no request found"
    end

    local tq = st.tq
    local task = host_post(tq, req, len, err_int)
    if task == nil then
        return nil, POST_ERRORS[err_int[0]] or "post failed"
    end
    -- An aborted request never resumes this coroutine: the finalizer gives the task back.
    ffi_gc(task, host_release)

    -- Fast runtimes answer within a few µs: spin for that long rather than pay two thread
    -- wake-ups. Back off after misses so slow runtimes cost no spinning.
    local done = false
    if st.skip > 0 then
        st.skip = st.skip - 1
    elseif st.spin_us > 0 then
        if host_spin(tq, task, st.spin_us) == 1 then
            done = true
            st.backoff = 0
            st.spin_hits = st.spin_hits + 1
        else
            st.spin_misses = st.spin_misses + 1
            local b = st.backoff * 2
            if b < 1 then
                b = 1
            elseif b > MAX_SPIN_BACKOFF then
                b = MAX_SPIN_BACKOFF
            end
            st.backoff = b
            st.skip = b
        end
    end

    if not done then
        st.waits = st.waits + 1
        local sem = host_wait(task, err_str)
        if sem ~= nil then
            errlen[0] = ERR_BUF_SIZE
            local rc = sema_wait(r, sem, timeout_ms, errbuf, errlen)
            if rc == FFI_ERROR then
                release(task)
                return nil, ffi_str(errbuf, errlen[0])
            end
            if rc ~= FFI_OK then
                if rc == FFI_DECLINED then
                    release(task)
                    return nil, "timeout"
                end
                local ok, werr = co_yield()
                if not ok then
                    release(task)
                    return nil, werr or "timeout"
                end
            end
        elseif err_str[0] ~= nil then
            release(task)
            return nil, ffi_str(err_str[0])
        end
    end
    return task
end


local function call(self, req, call_opts)
    local req_type = type(req)
    if req_type ~= "string" and req ~= nil then
        if state[self] == nil then
            error("bad runtime object", 2)
        end
        error("bad request: string or nil expected, got " .. req_type, 2)
    end
    local task, err = post_and_wait(self, req, req and #req or 0, call_opts)
    if task == nil then
        return false, err
    end

    local rc = host_result(task, rsp_ptr, rsp_len)
    local rsp
    if rsp_ptr[0] ~= nil then
        rsp = ffi_str(rsp_ptr[0], rsp_len[0])
    end
    release(task)
    if rc == 0 then
        return true, rsp, nil
    end
    return false, rc, rsp
end


-- Largest request or output buffer (the host refuses longer requests).
local MAX_LEN = 2147483647

-- What a cdata type is, by ctype id: "ptr", "array" or false (an integer, a struct...).
local ctype_kind = {}
local function kind_of(v)
    local id = tonumber(ffi.typeof(v))
    local k = ctype_kind[id]
    if k == nil then
        local what = tostring(ffi.typeof(v))
        k = (what:find("%*>$") and "ptr") or (what:find("%[") and "array") or false
        ctype_kind[id] = k
    end
    return k
end

-- A (ptr, len) pair that is safe to hand to C: `ptr` a non-NULL pointer or array cdata (not an
-- integer or struct cdata, which a cast would turn into an address; an array at least `len`
-- bytes long), `len` an integer from 0 to MAX_LEN.
local function is_buffer(ptr, len)
    if type(ptr) ~= "cdata" or ptr == nil or type(len) ~= "number"
       or not (len >= 0 and len <= MAX_LEN) or len % 1 ~= 0 then
        return false
    end
    local k = kind_of(ptr)
    return k == "ptr" or (k == "array" and len <= ffi.sizeof(ptr))
end


-- resty_ffi.call_ptr(obj, req, len, call_opts, out, out_len): obj:call() for a request of `len`
-- bytes at cdata pointer `req` (the host copies them, as it copies a string), whose successful
-- response is copied into `out` (`out_len` bytes of room) instead of becoming a Lua string.
-- Returns true, n (the response's length, which may exceed out_len: then only out_len bytes
-- were copied; nil when the runtime answered NULL) | false, rc, rsp (runtime error, rsp a
-- string or nil) | false, err (host failure, as obj:call). For small fixed-size requests and
-- responses on hot paths (resty.grpc_zc's 16-byte descriptors): no string is created per call.
function _M.call_ptr(obj, req, len, call_opts, out, out_len)
    -- Checked before anything reads `req` or writes `out`: non-NULL pointers (or arrays no
    -- shorter than the length), integer lengths the host takes (NaN, negative, fractional and
    -- huge ones refused).
    if not is_buffer(req, len) then
        error("bad request: non-NULL cdata pointer and a length from 0 to " .. MAX_LEN
              .. " expected", 2)
    end
    if not is_buffer(out, out_len) then
        error("bad output buffer: non-NULL cdata pointer and a length from 0 to " .. MAX_LEN
              .. " expected", 2)
    end
    local task, err = post_and_wait(obj, ffi_cast(const_char_p, req), len, call_opts)
    if task == nil then
        return false, err
    end

    local rc = host_result(task, rsp_ptr, rsp_len)
    local p = rsp_ptr[0]
    if rc == 0 then
        local n
        if p ~= nil then
            n = tonumber(rsp_len[0])
            ffi_copy(out, p, n < out_len and n or out_len)
        end
        release(task)
        return true, n
    end
    local rsp
    if p ~= nil then
        rsp = ffi_str(p, rsp_len[0])
    end
    release(task)
    return false, rc, rsp
end


local function unload(self)
    local st = state[self]
    if st == nil or st.finished then
        return
    end
    st.finished = true
    host.resty_ffi_queue_finish(st.tq)
    st.tq = nil
    if runtimes[st.key] == self then
        runtimes[st.key] = nil
    end
    if st.unpin then
        pinned[st.key] = nil
        st.handle = nil
    end
end


local mt = {
    __index = function(self, name)
        if name == "__unload" then
            return unload
        end
        return call
    end,
    __call = call,
}


local function check_opt(opts, name, kind)
    local v = opts[name]
    if v ~= nil and type(v) ~= kind then
        error("bad option " .. name .. ": " .. kind .. " expected", 3)
    end
    return v
end


function _M.load_ffi(lib, cfg, opts)
    if type(lib) ~= "string" or lib == "" then
        error("bad library name: non-empty string expected", 2)
    end
    if cfg ~= nil and type(cfg) ~= "string" then
        error("bad cfg: string or nil expected", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table or nil expected", 2)
    end
    local phase = get_phase()
    if phase == "init" then
        error("ngx.load_ffi cannot run in init_by_lua: runtime threads do not survive the "
              .. "fork into workers; load from init_worker_by_lua or later", 2)
    end

    local key = lib
    if cfg then
        key = lib .. "&" .. cfg
    end
    local obj = runtimes[key]
    if obj then
        return obj
    end

    opts = opts or {}
    local max_queue = check_opt(opts, "max_queue", "number") or DEFAULT_MAX_QUEUE
    local is_global = check_opt(opts, "is_global", "boolean") or false
    local unpin = check_opt(opts, "unpin", "boolean") or false
    local spin_us = check_opt(opts, "spin_us", "number") or DEFAULT_SPIN_US
    local poll_spin_us = check_opt(opts, "poll_spin_us", "number") or DEFAULT_POLL_SPIN_US
    if not (max_queue >= 1 and max_queue <= 2147483647) or max_queue % 1 ~= 0 then
        error("bad option max_queue: an integer from 1 to 2147483647 expected", 2)
    end
    if not (spin_us >= 0 and spin_us <= 1000000) then
        error("bad option spin_us: a number from 0 to 1000000 expected", 2)
    end
    if not (poll_spin_us >= 0 and poll_spin_us <= 1000000) or poll_spin_us % 1 ~= 0 then
        error("bad option poll_spin_us: an integer from 0 to 1000000 expected", 2)
    end

    if not initialized then
        local rc = host.resty_ffi_init(err_str)
        if rc ~= 0 then
            error("resty_ffi: " .. ffi_str(err_str[0]), 2)
        end
        initialized = true
    end

    local handle = ffi_load(lib, is_global)
    local tq = host.resty_ffi_queue_new(max_queue, poll_spin_us)
    if tq == nil then
        return nil, "no memory"
    end

    local rc = handle.libffi_init(cfg, tq)
    if rc ~= 0 then
        -- The runtime refused to start; a poller it may have started still gets its marker.
        host.resty_ffi_queue_finish(tq)
        return nil, rc
    end

    obj = setmetatable({}, mt)
    state[obj] = {
        key = key,
        tq = tq,
        handle = handle,
        unpin = unpin,
        finished = false,
        spin_us = spin_us,
        skip = 0,
        backoff = 0,
        spin_hits = 0,
        spin_misses = 0,
        waits = 0,
    }
    if not unpin then
        pinned[key] = handle
    end
    runtimes[key] = obj
    return obj
end


-- Wake-up counters of a runtime object, for tuning and tests: calls answered while spinning,
-- spins that missed, and calls that waited on the semaphore.
function _M.stats(obj)
    local st = state[obj]
    if st == nil then
        error("not a runtime object", 2)
    end
    return { spin_hits = st.spin_hits, spin_misses = st.spin_misses, waits = st.waits }
end


ngx.load_ffi = _M.load_ffi

return _M
