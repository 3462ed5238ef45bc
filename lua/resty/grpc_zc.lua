-- resty.grpc_zc: the Lua side of the resty_grpc_zc runtime.
--
-- Requests are built as FlatBuffers directly in a slot of the runtime's shared arena and posted
-- through the lua-resty-ffi queue as a 16-byte descriptor; replies are read in place from
-- another slot. See docs/architecture.md and docs/grpc_zc.md.
--
-- gRPC calls (unary and the three streaming kinds) plus the transport self-test `echo`.
-- Conventions (lua-resty-core): misuse raises error(msg, 2); failures return
-- `false, err[, status]`. The API page is docs/grpc_zc.md.

local ffi = require "ffi"
local bit = require "bit"
local resty_ffi = require "resty_ffi"
local fb = require("resty.grpc_zc.flatbuffers").preload()
local Request = require "resty.grpc_zc.wire.Request"
local Echo = require "resty.grpc_zc.wire.Echo"
local Reply = require "resty.grpc_zc.wire.Reply"
local Command = require "resty.grpc_zc.wire.Command"
local Connect = require "resty.grpc_zc.wire.Connect"
local Call = require "resty.grpc_zc.wire.Call"
local CallKind = require "resty.grpc_zc.wire.CallKind"
local Metadata = require "resty.grpc_zc.wire.Metadata"
local Close = require "resty.grpc_zc.wire.Close"
local StreamSend = require "resty.grpc_zc.wire.StreamSend"
local StreamRecv = require "resty.grpc_zc.wire.StreamRecv"
local StreamCloseSend = require "resty.grpc_zc.wire.StreamCloseSend"
local pb = require "resty.grpc_zc.pb"

local C_ABI_VERSION = 2
local ARENA_MAGIC = 0x5241435a43505247ULL      -- "GRPCZCAR" little-endian
local ARENA_LAYOUT_VERSION = 1
-- vtable offset of Reply.payload (schema/envelope.fbs; t/zerocopy.rs checks it end to end).
local REPLY_PAYLOAD_VT = 12
-- Bytes of envelope around an echo payload: root offset, tables, vtables, vector length,
-- alignment padding (the builder raises "buffer full" if this were ever too small), plus room
-- in front of the request (the builder writes back to front) where the runtime puts the reply
-- header when it answers in the request's own slot (wire::REPLY_HEADER_LEN = 56). The echo
-- fast path (echo_request) needs 64 + 60 bytes in front of the payload and 4 behind it.
local ECHO_OVERHEAD = 64 + 64 + 64
-- The arena's largest slot is max_message plus this (src/runtime: ENVELOPE_SLACK).
local ENVELOPE_SLACK = 4096

local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_cast = ffi.cast
local ffi_string = ffi.string
local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local band = bit.band
local call_ptr = resty_ffi.call_ptr

ffi.cdef [[
    int grpc_zc_abi_version(void);
    const char *grpc_zc_cdef(void);
    typedef struct {
        uint32_t slot_offset;
        uint32_t slot_gen;
        uint32_t buf_offset;
        uint32_t buf_len;
    } grpc_zc_desc_t;
]]

local lib = ffi.load("resty_grpc_zc")
if lib.grpc_zc_abi_version() ~= C_ABI_VERSION then
    error("libresty_grpc_zc.so C ABI " .. tostring(lib.grpc_zc_abi_version())
          .. " does not match resty.grpc_zc's " .. C_ABI_VERSION)
end
-- Arena header, handle and stats types: declared by the library itself (one source of truth).
ffi.cdef(ffi_string(lib.grpc_zc_cdef()))
ffi.cdef [[
    void *grpc_zc_instance(const char *name);
    uint8_t *grpc_zc_arena_base(void *inst);
    int grpc_zc_call_begin(void *inst, uint32_t len, grpc_zc_handle_t *out);
    int grpc_zc_call_end(void *inst, const grpc_zc_handle_t *req, int posted, int abandoned);
    int grpc_zc_stats(void *inst, grpc_zc_arena_stats_t *out);
    const char *grpc_zc_strerror(int code);
]]

ffi.cdef [[
    typedef struct {
        grpc_zc_handle_t h;     /* the request slot: identifies the call */
        int32_t posted;         /* the descriptor went into the queue */
        int32_t active;         /* begun and not finished (else: in the pool, or never used) */
    } grpc_zc_call_t;
]]
local call_t = ffi.typeof("grpc_zc_call_t")
local u32p = ffi.typeof("uint32_t *")
local cu8p = ffi.typeof("const uint8_t *")
local uptr_t = ffi.typeof("uintptr_t")
local desc_t = ffi.typeof("grpc_zc_desc_t")
local header_ptr_t = ffi.typeof("const grpc_zc_arena_header_t *")
local DESC_LEN = ffi.sizeof(desc_t)

local _M = { version = "0.1.0" }

-- Largest value of a millisecond option: the envelope's fields are u32.
local MAX_MS = 4294967295
-- Largest value of a byte-size option (u32 fields, u32 arena offsets).
local MAX_SIZE = 4294967295


-- The one check of every numeric option (issue 11: NaN, inf, huge and negative numbers must
-- not slip through `v < 0` tests): `v` must be a number in [min, max] (NaN is in no range),
-- and an integer when `integer` is true. Raises "bad option <name>: ... expected, got <v>" at
-- the caller's caller (level 3), naming the accepted range. Returns `v`.
local function check_number(v, name, min, max, integer)
    if type(v) ~= "number" or not (v >= min and v <= max)
       or (integer and v ~= math.floor(v)) then
        error(string.format("bad option %s: %s from %.17g to %.17g expected, got %s", name,
                            integer and "an integer" or "a number", min, max, tostring(v)), 3)
    end
    return v
end

-- Per-worker state, set by init().
local inst, base, rt, inst_name, max_payload
local desc_mem = ffi_new("grpc_zc_desc_t[1]")
local desc = desc_mem[0]
-- The reply descriptor, copied here by resty_ffi.call_ptr (read before the next yield).
local rdesc_mem = ffi_new("grpc_zc_desc_t[1]")
local rdesc = rdesc_mem[0]
local stats_buf = ffi_new("grpc_zc_arena_stats_t")
local builder = fb.Builder.FromBuffer(ffi_new("uint8_t[8]"), 8)
local call_begin = lib.grpc_zc_call_begin
local call_end = lib.grpc_zc_call_end

-- Finalizer of every call object, set once when it is made: a call still active when Lua drops
-- it was abandoned (aborted request, a coroutine that died mid-call, a dropped in-place reply, a
-- Lua error between lease and post). Objects in the pool are inactive.
local function abandon(c)
    if c.active ~= 0 then
        c.active = 0
        call_end(inst, c.h, c.posted, 1)
    end
end

-- Call objects that finished, for reuse: no allocation and no ffi.gc per call.
local pool, npool = {}, 0
local POOL_MAX = 256


local function errstr(code)
    return ffi_string(lib.grpc_zc_strerror(code))
end


-- Highest CPU number (CPU_SETSIZE - 1).
local MAX_CPU = 1023
-- Largest max_message (src/config.rs: MAX_MESSAGE_LIMIT).
local MAX_MESSAGE_LIMIT = 64 * 1048576

-- opts.cpus of init(): a CPU number, a list of them, or a string ("1", "2-3", "0:2-3").
local function cpu_list(v)
    local t = type(v)
    if t == "number" then
        return string.format("%d", check_number(v, "cpus", 0, MAX_CPU, true))
    end
    if t == "string" and v:find("^[%d:%-]+$") then
        return v     -- checked by the runtime (a bad list makes init fail)
    end
    if t == "table" and #v > 0 then
        local parts = {}
        for i = 1, #v do
            local c = v[i]
            if type(c) ~= "number" or not (c >= 0 and c <= MAX_CPU) or c ~= math.floor(c) then
                error("bad option cpus: CPU numbers from 0 to " .. MAX_CPU .. " expected", 3)
            end
            parts[i] = string.format("%d", c)
        end
        return table.concat(parts, ":")
    end
    error("bad option cpus: a CPU number, a list of them or a string like \"2-3\" expected", 3)
end


-- grpc.init(opts?): loads the runtime in this worker (once). Called implicitly by the first
-- call; call it from init_worker_by_lua to size the arena:
--   opts.arena_size (bytes, default 64 MiB), opts.max_message (bytes, default 4 MiB),
--   opts.cpus (CPUs for the runtime's own threads, e.g. 1, {2, 3} or "2-3"; default: the
--   worker's), opts.busy_poll_us (how long the runtime busy-polls for answers while calls are
--   in flight, default 500; 0: off).
-- The cfg string of init's options; raises on a bad option.
local function init_cfg(name, opts)
    local cfg = "instance=" .. name
    if opts == nil then
        return cfg
    end
    if opts.arena_size ~= nil then
        cfg = cfg .. string.format(",arena_size=%d",
                                   check_number(opts.arena_size, "arena_size", 1, MAX_SIZE, true))
    end
    if opts.max_message ~= nil then
        cfg = cfg .. string.format(",max_message=%d", check_number(opts.max_message,
                                   "max_message", 1, MAX_MESSAGE_LIMIT, true))
    end
    if opts.cpus ~= nil then
        cfg = cfg .. ",cpus=" .. cpu_list(opts.cpus)
    end
    if opts.busy_poll_us ~= nil then
        cfg = cfg .. string.format(",busy_poll_us=%d", check_number(opts.busy_poll_us,
                                   "busy_poll_us", 0, 1000000, true))
    end
    return cfg
end

function _M.init(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table expected", 2)
    end
    -- Options are checked even when the runtime is already loaded (misuse always raises).
    local name = "grpc_zc-" .. ngx.worker.pid()
    local cfg = init_cfg(name, opts)
    if inst ~= nil then
        return true
    end
    local obj, rc = ngx.load_ffi("resty_grpc_zc", cfg)
    if not obj then
        return false, "cannot start the resty_grpc_zc runtime (rc " .. tostring(rc)
                      .. "; see the error log)"
    end
    local i = lib.grpc_zc_instance(name)
    if i == nil then
        return false, "resty_grpc_zc instance " .. name .. " not found"
    end
    local b = lib.grpc_zc_arena_base(i)
    local hdr = ffi_cast(header_ptr_t, b)
    if hdr.magic ~= ARENA_MAGIC or hdr.layout_version ~= ARENA_LAYOUT_VERSION then
        return false, "arena header mismatch (magic or layout version)"
    end
    inst, base, rt, inst_name = i, b, obj, name
    max_payload = hdr.max_message - ENVELOPE_SLACK
    return true
end


-- Starts a call: leases a request slot big enough for `need` bytes. Returns the call, or
-- nil, err. The call stays tied to the finalizer until finish().
local function begin(need)
    local c
    local n = npool
    if n > 0 then
        c = pool[n]
        pool[n] = nil
        npool = n - 1
    else
        c = ffi_gc(ffi_new(call_t), abandon)
    end
    local rc = call_begin(inst, need, c.h)
    if rc ~= 0 then
        if npool < POOL_MAX then
            npool = npool + 1
            pool[npool] = c
        end
        return nil, errstr(rc)
    end
    c.posted = 0
    c.active = 1
    return c
end


-- Ends call `c` (a second finish of the same call is a no-op). `c` goes back to the pool: the
-- caller must not use it afterwards.
local function finish(c, posted, abandoned)
    if c.active == 0 then
        return
    end
    c.active = 0
    call_end(inst, c.h, posted, abandoned)
    local n = npool
    if n < POOL_MAX then
        n = n + 1
        pool[n] = c
        npool = n
    end
end


-- Posts the descriptor in `desc` for call `h` and waits; the reply's descriptor is in `rdesc`.
-- Returns true, or false, err after finishing the call.
local function post_desc(h, call_opts)
    h.posted = 1
    local ok, res, err = call_ptr(rt, desc_mem, DESC_LEN, call_opts, rdesc_mem, DESC_LEN)
    if not ok then
        if type(res) == "number" then
            -- The runtime answered with an error (bad request, exhausted arena).
            finish(h, 1, 0)
            return false, tostring(err or ("runtime error " .. res))
        end
        -- Host-level failure: "timeout" means it was posted; everything else was not.
        finish(h, res == "timeout" and 1 or 0, 1)
        return false, res
    end
    if res ~= DESC_LEN then
        finish(h, 1, 1)
        return false, "bad reply descriptor"
    end
    return true
end


-- Posts the finished request of call `h` and waits. Returns the reply view, or false, err.
local function roundtrip(h, call_opts)
    local _, len, start = builder:Bytes()
    desc.slot_offset = h.h.offset
    desc.slot_gen = h.h.gen
    desc.buf_offset = start
    desc.buf_len = len
    local ok, err = post_desc(h, call_opts)
    if not ok then
        return false, err
    end
    local buf = fb.binaryArray.FromPtr(base + rdesc.slot_offset + rdesc.buf_offset,
                                       rdesc.buf_len)
    local reply = Reply.New()
    reply:Init(buf, fb.N.UOffsetT:Unpack(buf, 0))
    return reply
end


local function payload_of(reply)
    local v = reply.view
    local o = v:Offset(REPLY_PAYLOAD_VT)
    if o == 0 then
        return nil, 0
    end
    return v:VectorPtr(o)
end


-- The echo fast path. An Echo request without delay_ms has a fixed layout: 40 bytes that do
-- not depend on the payload, the payload's u32 length, the payload, zero padding to 4 bytes:
--   root uoffset, 2 bytes of padding, Request vtable, Request table (command_type Echo, command),
--   Echo vtable, Echo table (payload), payload vector.
-- ECHO_HEAD holds the 40 bytes, produced once at load by the generated builder (so a schema
-- change cannot leave it stale); echo_request() then writes a request with two ffi.copy calls
-- and one store instead of a builder run.
local ECHO_HEAD_LEN = 40
local ECHO_HEAD = ffi_new("uint8_t[?]", ECHO_HEAD_LEN)
do
    local mem = ffi_new("uint8_t[?]", 256)
    builder:Reset(mem, 256)
    local pv = builder:CreateByteVector("")
    Echo.Start(builder)
    Echo.AddPayload(builder, pv)
    local e = Echo.End(builder)
    Request.Start(builder)
    Request.AddCommandType(builder, Command.Echo)
    Request.AddCommand(builder, e)
    builder:Finish(Request.End(builder))
    local ptr, len = builder:Bytes()
    if len ~= ECHO_HEAD_LEN + 4 or ffi_cast(u32p, ptr + ECHO_HEAD_LEN)[0] ~= 0 then
        error("resty.grpc_zc: unexpected Echo envelope layout (" .. len .. " bytes)")
    end
    ffi.copy(ECHO_HEAD, ptr, ECHO_HEAD_LEN)
end

-- Writes the Echo request for `payload` (n bytes) into the slot of call `c` and fills `desc`.
-- The payload lands at the same address modulo 64 as the Lua string's bytes: memcpy between
-- buffers whose addresses differ by 4-12 bytes modulo 4 KiB runs 15-40x slower on these
-- machines (docs/benchmarks.md), and a co-aligned copy never does. Slots are 256-aligned.
local function echo_request(c, payload, n)
    local off = c.h.offset
    local slot = base + off
    local src = ffi_cast(cu8p, payload)
    -- 64 <= at <= 124: room for the 44-byte request head, and for the runtime's 56-byte reply
    -- header in front of the payload vector; 4-aligned as the runtime requires.
    local at = 64 + band(tonumber(ffi_cast(uptr_t, src) % 64), 60)
    local start = at - (ECHO_HEAD_LEN + 4)
    local p = slot + start
    ffi.copy(p, ECHO_HEAD, ECHO_HEAD_LEN)
    ffi_cast(u32p, p + ECHO_HEAD_LEN)[0] = n
    ffi.copy(slot + at, src, n)
    ffi_cast(u32p, slot + at + n)[0] = 0     -- padding (ECHO_OVERHEAD leaves room behind)
    desc.slot_offset = off
    desc.slot_gen = c.h.gen
    desc.buf_offset = start
    desc.buf_len = ECHO_HEAD_LEN + 4 + band(n + 3, -4)
end

-- Builds an Echo request with the generated builder (any option, e.g. delay_ms).
local function echo_request_built(c, payload, delay_ms)
    -- FlatBuffers align relative to the buffer's end: an 8-aligned end keeps every field
    -- naturally aligned in the (256-byte aligned) slot.
    local cap = c.h.len
    builder:Reset(base + c.h.offset, cap - cap % 8)
    local pv = builder:CreateByteVector(payload)
    Echo.Start(builder)
    Echo.AddPayload(builder, pv)
    Echo.AddDelayMs(builder, delay_ms)
    local e = Echo.End(builder)
    Request.Start(builder)
    Request.AddCommandType(builder, Command.Echo)
    Request.AddCommand(builder, e)
    builder:Finish(Request.End(builder))
    local _, len, start = builder:Bytes()
    desc.slot_offset = c.h.offset
    desc.slot_gen = c.h.gen
    desc.buf_offset = start
    desc.buf_len = len
end

-- One view re-pointed at each echo reply (read before the next yield), instead of a window,
-- a view and a Reply object per call.
local echo_view = fb.view.New(fb.binaryArray.FromPtr(ECHO_HEAD, 0), 0)
local REPLY_STATUS_VT = 6

-- The failure of an echo reply with a status (cold path: generated accessors).
local function echo_status(ptr, len)
    local buf = fb.binaryArray.FromPtr(ptr, len)
    local reply = Reply.New()
    reply:Init(buf, fb.N.UOffsetT:Unpack(buf, 0))
    local st = reply:Status()
    if st ~= nil and st:Code() ~= 0 then
        return st:Message() or ("status " .. st:Code())
    end
end


-- A reply read in place: valid until :release() (or until it is garbage-collected).
local InPlace = {}
local InPlace_mt = { __index = InPlace }

function InPlace:string()
    if self.h == nil then
        error("reply already released", 2)
    end
    local s = ffi_string(self.ptr, self.len)
    return s
end

function InPlace:release()
    local h = self.h
    if h ~= nil then
        self.h = nil
        self.ptr = nil
        finish(h, 1, 0)
    end
end


-- Longest echo delay_ms (a test hook: a minute is plenty, and a longer one would hold a slot).
local MAX_ECHO_DELAY_MS = 60000

-- grpc.echo(payload, opts?) -> true, reply_string | false, err
--   opts.timeout: ms; opts.inplace = true: the reply is an object with .ptr, .len, :string()
--   and :release() instead of a Lua string (the bytes stay in the arena until released);
--   opts.delay_ms: the runtime answers that much later (a test hook).
function _M.echo(payload, opts)
    if type(payload) ~= "string" then
        error("bad payload: string expected, got " .. type(payload), 2)
    end
    local inplace, delay_ms = false, nil
    if opts ~= nil then
        if type(opts) ~= "table" then
            error("bad opts: table expected", 2)
        end
        inplace = opts.inplace
        if opts.delay_ms ~= nil then
            delay_ms = math.ceil(check_number(opts.delay_ms, "delay_ms", 0, MAX_ECHO_DELAY_MS))
        end
        if opts.timeout ~= nil then
            check_number(opts.timeout, "timeout", 0, MAX_MS)
        end
    end
    if inst == nil then
        local ok, err = _M.init()
        if not ok then
            return false, err
        end
    end

    local n = #payload
    if n > max_payload then
        return false, "payload of " .. n .. " bytes larger than max_message (" .. max_payload
                      .. ")"
    end
    local h, err = begin(n + ECHO_OVERHEAD)
    if not h then
        return false, err
    end
    if delay_ms then
        echo_request_built(h, payload, delay_ms)
    else
        echo_request(h, payload, n)
    end
    local ok, rerr = post_desc(h, opts)
    if not ok then
        return false, rerr
    end

    local ptr = base + rdesc.slot_offset + rdesc.buf_offset
    local len = rdesc.buf_len
    if len < 4 then
        finish(h, 1, 0)
        return false, "bad reply"
    end
    local v = echo_view
    v:Repoint(ptr, len, ffi_cast(u32p, ptr)[0])
    if v:Offset(REPLY_STATUS_VT) ~= 0 then
        local msg = echo_status(ptr, len)
        if msg then
            finish(h, 1, 0)
            return false, msg
        end
    end
    local pptr, plen = nil, 0
    local o = v:Offset(REPLY_PAYLOAD_VT)
    if o ~= 0 then
        pptr, plen = v:VectorPtr(o)
    end
    if inplace then
        return true, setmetatable({ h = h, ptr = pptr, len = plen }, InPlace_mt)
    end
    local s = pptr and ffi_string(pptr, plen) or ""
    finish(h, 1, 0)
    return true, s
end


local CODE_NAMES = {
    [0] = "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}
_M.codes = {}
for code, name in pairs(CODE_NAMES) do
    _M.codes[name] = code
end
-- Extra host wait beyond a call's deadline, so the runtime's DEADLINE_EXCEEDED wins.
local DEADLINE_GRACE_MS = 1000
local RESOURCE_EXHAUSTED = 8
local FAILED_PRECONDITION = 9
-- Most metadata entries a call takes.
local MAX_METADATA = 4096
local INTERNAL = 13
local pb_size, pb_encode_into, pb_decode = pb.size, pb.encode_into, pb.decode

-- A user codec (grpc.set_codec), replacing resty.grpc_zc.pb for tables.
local codec_encode, codec_decode


local function ensure_init()
    if inst == nil then
        return _M.init()
    end
    return true
end

local encode_size, put_message  -- tables: defined below

-- Messages of at least BIG_COPY bytes are copied into the arena by the runtime's grpc_zc_copy.
local BIG_COPY = 2048
pcall(ffi.cdef, "void grpc_zc_copy(void *dst, const void *src, size_t len);")
local big_copy = lib.grpc_zc_copy


-- Leases a call slot of `need` bytes and points the builder at it (8-aligned end).
local function begin_build(need)
    local h, err = begin(need)
    if not h then
        return nil, err
    end
    local cap = h.h.len
    builder:Reset(base + h.h.offset, cap - cap % 8)
    return h
end


-- Finishes the envelope of `command` (a table offset of type `ctype`) in the builder.
local function finish_request(ctype, command)
    Request.Start(builder)
    Request.AddCommandType(builder, ctype)
    Request.AddCommand(builder, command)
    builder:Finish(Request.End(builder))
end


-- Response metadata of a reply as a table (a key sent more than once maps to a list of its
-- values, as ngx.resp.get_headers does), or nil when absent.
local function metadata_of(reply, trailers)
    local n = trailers and reply:TrailersLength() or reply:HeadersLength()
    if n == 0 then
        return nil
    end
    local t = {}
    for j = 1, n do
        local m = trailers and reply:Trailers(j) or reply:Headers(j)
        local k, v = m:Key(), m:ValueAsString() or ""
        local old = t[k]
        if old == nil then
            t[k] = v
        elseif type(old) == "table" then
            old[#old + 1] = v
        else
            t[k] = { old, v }
        end
    end
    return t
end


-- The gRPC status of a reply as (err, status) when it is not OK, else nil.
local function status_of(reply)
    local st = reply:Status()
    if st == nil or st:Code() == 0 then
        return nil
    end
    local code = st:Code()
    local msg = st:Message() or ""
    local name = CODE_NAMES[code] or "UNKNOWN"
    local details
    if st:DetailsLength() > 0 then
        details = st:DetailsAsString()
    end
    return name .. ": " .. msg, {
        code = code, message = msg, details = details,
        metadata = metadata_of(reply, true) or {},
    }
end


-- A failure made on this side, in the shape of a gRPC status.
local function local_failure(code, msg)
    return false, CODE_NAMES[code] .. ": " .. msg, { code = code, message = msg, metadata = {} }
end


local Conn = {}
local Conn_mt = { __index = Conn }

-- A millisecond option (nil: 0). Fractions round up, so 0.4 ms is 1 ms, never 0 ("none").
local function ms(v, name)
    if v == nil then
        return 0
    end
    return math.ceil(check_number(v, name, 0, MAX_MS))
end

-- A byte-size option (nil: 0, the default).
local function size_opt(v, name)
    if v == nil then
        return 0
    end
    return check_number(v, name, 1, MAX_SIZE, true)
end


-- grpc.connect(target, opts?) -> true, conn | false, err, status
--   target: "host:port", "[::1]:port", "http://host:port", "https://host:port", "unix:/path".
--   opts: host (authority and TLS server name), ca, cert, priv_key (PEM contents: TLS with
--   `ca` or for https targets, mTLS with cert + priv_key), insecure (plaintext regardless),
--   connect_timeout, timeout (default deadline of calls, ms), keepalive_interval,
--   keepalive_timeout (ms), max_send_msg_size, max_recv_msg_size (bytes; default: the arena's
--   max_message and 4 MiB), compression ("gzip").
function _M.connect(target, opts)
    if type(target) ~= "string" or target == "" then
        error("bad target: non-empty string expected", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table expected", 2)
    end
    opts = opts or {}
    local ok, err = ensure_init()
    if not ok then
        return false, err
    end
    for _, k in ipairs({ "host", "ca", "cert", "priv_key", "compression" }) do
        if opts[k] ~= nil and type(opts[k]) ~= "string" then
            error("bad option " .. k .. ": string expected", 2)
        end
    end
    -- Every numeric option checked before anything is leased.
    local connect_timeout = ms(opts.connect_timeout, "connect_timeout")
    local default_timeout = opts.timeout ~= nil and ms(opts.timeout, "timeout") or nil
    local keepalive_interval = ms(opts.keepalive_interval, "keepalive_interval")
    local keepalive_timeout = ms(opts.keepalive_timeout, "keepalive_timeout")
    local max_send_opt = size_opt(opts.max_send_msg_size, "max_send_msg_size")
    local max_recv_opt = size_opt(opts.max_recv_msg_size, "max_recv_msg_size")
    local h
    h, err = begin_build(#target + #(opts.host or "") + #(opts.ca or "") + #(opts.cert or "")
                         + #(opts.priv_key or "") + 320)
    if not h then
        return local_failure(RESOURCE_EXHAUSTED, err)
    end
    local t = builder:CreateString(target)
    local a = opts.host and builder:CreateString(opts.host)
    local ca = opts.ca and builder:CreateByteVector(opts.ca)
    local cert = opts.cert and builder:CreateByteVector(opts.cert)
    local key = opts.priv_key and builder:CreateByteVector(opts.priv_key)
    local comp = opts.compression and builder:CreateString(opts.compression)
    Connect.Start(builder)
    Connect.AddTarget(builder, t)
    if a then
        Connect.AddAuthority(builder, a)
    end
    if ca then
        Connect.AddCaPem(builder, ca)
    end
    if cert then
        Connect.AddCertPem(builder, cert)
    end
    if key then
        Connect.AddKeyPem(builder, key)
    end
    if comp then
        Connect.AddCompression(builder, comp)
    end
    if opts.insecure then
        Connect.AddInsecure(builder, true)
    end
    Connect.AddConnectTimeoutMs(builder, connect_timeout)
    Connect.AddDefaultTimeoutMs(builder, default_timeout or 0)
    Connect.AddKeepaliveIntervalMs(builder, keepalive_interval)
    Connect.AddKeepaliveTimeoutMs(builder, keepalive_timeout)
    Connect.AddMaxSendMsgSize(builder, max_send_opt)
    Connect.AddMaxRecvMsgSize(builder, max_recv_opt)
    finish_request(Command.Connect, Connect.End(builder))

    local reply, rerr = roundtrip(h, nil)
    if not reply then
        return false, rerr
    end
    local serr, status = status_of(reply)
    local id = tonumber(reply:Handle())
    finish(h, 1, 0)
    if serr then
        return false, serr, status
    end
    local max_send = max_payload
    if max_send_opt > 0 and max_send_opt < max_send then
        max_send = max_send_opt
    end
    return true, setmetatable({ id = id, target = target, timeout = default_timeout,
                                max_send = max_send }, Conn_mt)
end


-- Checks call options; returns the call's timeout (ms or nil) and metadata table.
local function check_call_opts(self, call_opts)
    if call_opts == nil then
        return self.timeout, nil, 0
    end
    if type(call_opts) ~= "table" then
        error("bad call options: table expected", 3)
    end
    local md = call_opts.metadata
    local need = 0
    if md ~= nil then
        if type(md) ~= "table" then
            error("bad metadata: table expected", 3)
        end
        for k, v in pairs(md) do
            if type(k) ~= "string" or type(v) ~= "string" then
                error("bad metadata: string keys and values expected", 3)
            end
            need = need + #k + #v + 32
        end
    end
    if call_opts.compression ~= nil and type(call_opts.compression) ~= "string" then
        error("bad option compression: string expected", 3)
    end
    local timeout = self.timeout
    if call_opts.timeout ~= nil then
        timeout = ms(call_opts.timeout, "timeout")
    end
    return timeout, md, need
end


-- Tables ------------------------------------------------------------------------------------
--
-- A table message is encoded by resty.grpc_zc.pb straight into the envelope's byte vector in
-- the arena (pb.size validates and measures, pb.encode_into writes), and replies of calls that
-- use tables are decoded straight from the arena (no Lua string in between). With a user codec
-- (grpc.set_codec) the table goes through its encode/decode as a string instead.

-- The message types of `path` ({ input, output, ... }), or nil, err.
local function types_of(path)
    local m = pb.method(path)
    if m == nil then
        return nil, "no message types for " .. path .. " (load them with grpc.load_proto)"
    end
    return m
end


-- A table request of type `md`: returns (tbl, size) for put_message, or (string, size) when a
-- user codec encoded it, or nil, err.
encode_size = function(md, tbl)
    if codec_encode then
        local ok, s = pcall(codec_encode, md.name, tbl)
        if not ok or type(s) ~= "string" then
            return nil, nil, "error while marshaling: " .. tostring(s)
        end
        return s, #s
    end
    local n, err = pb_size(md, tbl)
    if n == nil then
        return nil, nil, "error while marshaling: " .. tostring(err)
    end
    return tbl, n
end


-- Writes message `msg` (string, or a table measured by encode_size) as a byte vector; returns
-- its offset.
put_message = function(types, msg, n)
    if type(msg) == "string" and n < BIG_COPY then
        return builder:CreateByteVector(msg)
    end
    local ptr = builder:StartByteVectorInPlace(n)
    if type(msg) == "string" then
        -- glibc's memcpy is ~15x slower here for some buffer distances (src/copy.rs)
        big_copy(ptr, msg, n)
    else
        pb_encode_into(types.input, msg, ptr, n)
    end
    return builder:EndVector(n)
end


-- A received message as a table (from the arena, in place), or nil, err.
local function decode_message(types, ptr, len)
    if codec_decode then
        local ok, t = pcall(codec_decode, types.output.name, ptr and ffi_string(ptr, len) or "")
        if not ok then
            return nil, "error while unmarshaling: " .. tostring(t)
        end
        return t
    end
    local t, err = pb_decode(types.output, ptr or "", len)
    if t == nil then
        return nil, "error while unmarshaling: " .. tostring(err)
    end
    return t
end


-- Builds and posts a Call; returns the reply and the call (still to be finished), or
-- false, err, status.
local function post_call(self, kind, path, req, call_opts, timeout, md, need, types)
    if self.closed then
        return local_failure(FAILED_PRECONDITION, "connection closed")
    end
    if md then
        -- Each entry is a table of the envelope, whose verifier allows 8,192 of them.
        local m = 0
        for _ in pairs(md) do
            m = m + 1
        end
        if m > MAX_METADATA then
            return local_failure(RESOURCE_EXHAUSTED, "metadata of " .. m
                                 .. " entries, more than " .. MAX_METADATA)
        end
    end
    local n, err
    if type(req) == "table" then
        req, n, err = encode_size(types.input, req)
        if req == nil then
            return local_failure(INTERNAL, err)
        end
    else
        n = req and #req or 0
    end
    if n > self.max_send then
        return local_failure(RESOURCE_EXHAUSTED, "trying to send message larger than max ("
                             .. n .. " vs. " .. self.max_send .. ")")
    end
    local h
    h, err = begin_build(n + #path + need + 256)
    if not h then
        return local_failure(RESOURCE_EXHAUSTED, err)
    end
    local pv = req and put_message(types, req, n)
    local pathv = builder:CreateString(path)
    local comp = call_opts and call_opts.compression
    comp = comp and builder:CreateString(comp)
    local mdv
    if md then
        local offs, m = {}, 0
        for k, v in pairs(md) do
            local kv = builder:CreateString(k)
            local vv = builder:CreateByteVector(v)
            Metadata.Start(builder)
            Metadata.AddKey(builder, kv)
            Metadata.AddValue(builder, vv)
            m = m + 1
            offs[m] = Metadata.End(builder)
        end
        Call.StartMetadataVector(builder, m)
        for i = m, 1, -1 do
            builder:PrependUOffsetTRelative(offs[i])
        end
        mdv = builder:EndVector(m)
    end
    Call.Start(builder)
    Call.AddConn(builder, self.id)
    Call.AddKind(builder, kind)
    Call.AddPath(builder, pathv)
    if timeout then
        Call.AddTimeoutMs(builder, timeout)
    end
    if mdv then
        Call.AddMetadata(builder, mdv)
    end
    if comp then
        Call.AddCompression(builder, comp)
    end
    if pv then
        Call.AddPayload(builder, pv)
    end
    if call_opts and call_opts.response_metadata then
        Call.AddWantMetadata(builder, true)
    end
    finish_request(Command.Call, Call.End(builder))

    local wait = timeout and { timeout = timeout + DEADLINE_GRACE_MS } or nil
    local reply, rerr = roundtrip(h, wait)
    if not reply then
        return false, rerr
    end
    local serr, status = status_of(reply)
    if serr then
        finish(h, 1, 0)
        return false, serr, status
    end
    return reply, h
end


local function check_path(path)
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
        error("bad path: \"/package.Service/Method\" expected", 3)
    end
end


-- conn:unary(path, req, call_opts?) -> true, res[, meta] | false, err, status
--   req: the protobuf-encoded request (string); res: the encoded response (string).
--   call_opts: timeout (ms, sent as grpc-timeout), metadata (table; "-bin" keys carry bytes),
--   compression ("gzip" or "identity"), response_metadata (true: a third value
--   { headers = {...}, trailers = {...} }).
function Conn:unary(path, req, call_opts)
    check_path(path)
    local types, terr
    if type(req) == "table" then
        types, terr = types_of(path)
        if types == nil then
            return local_failure(INTERNAL, terr)
        end
    elseif type(req) ~= "string" then
        error("bad request: string or table expected, got " .. type(req), 2)
    end
    local timeout, md, need = check_call_opts(self, call_opts)
    local reply, h, status = post_call(self, CallKind.Unary, path, req, call_opts, timeout, md,
                                       need, types)
    if not reply then
        return false, h, status
    end
    local ptr, len = payload_of(reply)
    local res
    if types then
        res, terr = decode_message(types, ptr, len)
        if res == nil then
            finish(h, 1, 0)
            return local_failure(INTERNAL, terr)
        end
    else
        res = ptr and ffi_string(ptr, len) or ""
    end
    local meta
    if call_opts and call_opts.response_metadata then
        meta = { headers = metadata_of(reply) or {}, trailers = metadata_of(reply, true) or {} }
    end
    finish(h, 1, 0)
    return true, res, meta
end


-- Streams ------------------------------------------------------------------------------------

ffi.cdef [[
    int grpc_zc_stream_cancel(void *inst, uint64_t id);
    int grpc_zc_streams_open(void *inst);
    int grpc_zc_busy_polled_us(void *inst, uint64_t *us);
    typedef struct { uint64_t id; } grpc_zc_stream_ref_t;
]]
local stream_ref_t = ffi.typeof("grpc_zc_stream_ref_t")
local stream_cancel = lib.grpc_zc_stream_cancel

-- Finalizer of a stream Lua dropped without closing it: cancel it on the wire.
local function stream_gc(ref)
    stream_cancel(inst, ref.id)
end

local Stream = {}
local Stream_mt = { __index = Stream }


local function open_stream(self, kind, path, req, call_opts)
    local timeout, md, need = check_call_opts(self, call_opts)
    -- Tables when the method's types are loaded (unless call_opts.raw, or a string request).
    local types
    if not (call_opts and call_opts.raw) and type(req) ~= "string" then
        types = pb.method(path)
        if types == nil and type(req) == "table" then
            return local_failure(INTERNAL, select(2, types_of(path)))
        end
    end
    local reply, h, status = post_call(self, kind, path, req, call_opts, timeout, md, need,
                                       types)
    if not reply then
        return false, h, status
    end
    local id = tonumber(reply:Handle())
    finish(h, 1, 0)
    local deadline = timeout and timeout > 0 and ngx.now() * 1000 + timeout or nil
    return true, setmetatable({
        id = id,
        ref = ffi_gc(ffi_new(stream_ref_t, id), stream_gc),
        kind = kind,
        deadline = deadline,
        max_send = self.max_send,
        types = types,
        path = path,
    }, Stream_mt)
end


-- conn:new_stream(path, call_opts?) -> true, stream | false, err, status   (bidi streaming)
function Conn:new_stream(path, call_opts)
    check_path(path)
    return open_stream(self, CallKind.Bidi, path, nil, call_opts)
end


-- conn:server_stream(path, req, call_opts?) -> true, stream | false, err, status
function Conn:server_stream(path, req, call_opts)
    check_path(path)
    if type(req) ~= "string" and type(req) ~= "table" then
        error("bad request: string or table expected, got " .. type(req), 2)
    end
    return open_stream(self, CallKind.ServerStreaming, path, req, call_opts)
end


-- conn:client_stream(path, call_opts?) -> true, stream | false, err, status
function Conn:client_stream(path, call_opts)
    check_path(path)
    return open_stream(self, CallKind.ClientStreaming, path, nil, call_opts)
end


-- The stream is over (ended, failed or closed): forget it in the runtime.
local function forget(self)
    local ref = self.ref
    if ref ~= nil then
        self.ref = nil
        ffi_gc(ref, nil)
        stream_cancel(inst, self.id)
    end
end


-- The stream failed with (err, status): later operations report the same.
local function fail(self, err, status)
    self.err, self.status = err, status
    self.trls = status and status.metadata
    forget(self)
    return false, err, status
end


local function check_open(self)
    if self.err then
        return false, self.err, self.status
    end
    if self.ref == nil then
        return false, self.ended and "stream ended" or "stream closed"
    end
    return true
end


-- Starts a stream operation: checks the stream and leases a call slot of `need` bytes. Returns
-- the call, or false, err, status.
local function begin_op(self, need)
    local ok, err, status = check_open(self)
    if not ok then
        return ok, err, status
    end
    local h
    h, err = begin_build(need)
    if not h then
        return local_failure(RESOURCE_EXHAUSTED, err)
    end
    return h
end


-- Posts the stream operation built in the builder; returns the reply and its call, or
-- false, err, status (the stream has then failed).
local function stream_op(self, h, ctype, command)
    finish_request(ctype, command)
    local wait
    if self.deadline then
        local left = self.deadline - ngx.now() * 1000
        wait = { timeout = (left > 0 and left or 0) + DEADLINE_GRACE_MS }
    end
    local reply, rerr = roundtrip(h, wait)
    if not reply then
        return fail(self, rerr)
    end
    local serr, status = status_of(reply)
    if serr then
        finish(h, 1, 0)
        return fail(self, serr, status)
    end
    if self.hdrs == nil then
        self.hdrs = metadata_of(reply)
    end
    return reply, h
end


-- stream:send(msg) -> true | false, err, status
function Stream:send(msg)
    local n
    local types = self.types
    if type(msg) == "table" then
        if types == nil then
            local terr
            types, terr = types_of(self.path)
            if types == nil then
                return local_failure(INTERNAL, terr)
            end
        end
        local err
        msg, n, err = encode_size(types.input, msg)
        if msg == nil then
            return local_failure(INTERNAL, err)
        end
    elseif type(msg) == "string" then
        n = #msg
    else
        error("bad message: string or table expected, got " .. type(msg), 2)
    end
    local ok, err, status = check_open(self)
    if not ok then
        return ok, err, status
    end
    if n > self.max_send then
        -- The stream goes on, as in grpc-go: nothing was sent.
        return local_failure(RESOURCE_EXHAUSTED, "trying to send message larger than max ("
                             .. n .. " vs. " .. self.max_send .. ")")
    end
    local h
    h, err = begin_build(n + 128)
    if not h then
        return local_failure(RESOURCE_EXHAUSTED, err)
    end
    local pv = put_message(types, msg, n)
    StreamSend.Start(builder)
    StreamSend.AddStream(builder, self.id)
    StreamSend.AddPayload(builder, pv)
    local reply, rh, rstatus = stream_op(self, h, Command.StreamSend, StreamSend.End(builder))
    if not reply then
        return false, rh, rstatus
    end
    finish(rh, 1, 0)
    return true
end


-- Posts a StreamRecv (`headers_only`: wait for the response headers only) and returns the reply
-- and its call, or false, err, status.
local function recv_op(self, headers_only)
    local h, err, status = begin_op(self, 64)
    if not h then
        return false, err, status
    end
    StreamRecv.Start(builder)
    StreamRecv.AddStream(builder, self.id)
    if headers_only then
        StreamRecv.AddHeadersOnly(builder, true)
    end
    return stream_op(self, h, Command.StreamRecv, StreamRecv.End(builder))
end


-- Posts a StreamCloseSend (`finish_call`: and wait for the response and the end of the call);
-- returns the reply and its call, or false, err, status.
local function close_send_op(self, finish_call)
    local h, err, status = begin_op(self, 64)
    if not h then
        return false, err, status
    end
    StreamCloseSend.Start(builder)
    StreamCloseSend.AddStream(builder, self.id)
    if finish_call then
        StreamCloseSend.AddFinish(builder, true)
    end
    return stream_op(self, h, Command.StreamCloseSend, StreamCloseSend.End(builder))
end


-- The message of a stream reply (a table when the stream uses tables), or nil, err.
local function message_of(self, reply)
    local ptr, len = payload_of(reply)
    if self.types then
        return decode_message(self.types, ptr, len)
    end
    return ptr and ffi_string(ptr, len) or ""
end


-- The stream ended normally with `reply` (its trailers); `rh` is the reply's call.
local function ended(self, reply, rh)
    self.trls = metadata_of(reply, true) or {}
    self.ended = true
    finish(rh, 1, 0)
    forget(self)
end


local function undecodable(self, err)
    return fail(self, "INTERNAL: " .. err, { code = INTERNAL, message = err, metadata = {} })
end


-- stream:recv() -> true, msg | true, nil (end of stream) | false, err, status
function Stream:recv()
    if self.ended then
        return true, nil
    end
    local reply, rh, status = recv_op(self, false)
    if not reply then
        return false, rh, status
    end
    if not reply:HasMessage() then
        ended(self, reply, rh)
        return true, nil
    end
    local msg, err = message_of(self, reply)
    finish(rh, 1, 0)
    if msg == nil then
        return undecodable(self, err)
    end
    return true, msg
end


-- stream:close_send() -> true | false, err, status: no more messages from this side.
function Stream:close_send()
    local reply, rh, status = close_send_op(self, false)
    if not reply then
        return false, rh, status
    end
    finish(rh, 1, 0)
    return true
end


-- stream:finish() -> true, res | false, err, status: half-closes a client stream and returns
-- its one response once the call has ended (trailers then in stream:trailers()).
function Stream:finish()
    local reply, rh, status = close_send_op(self, true)
    if not reply then
        return false, rh, status
    end
    local res, err = message_of(self, reply)
    ended(self, reply, rh)
    if res == nil then
        return undecodable(self, err)
    end
    return true, res
end


-- stream:headers() -> table | nil, err: the response headers (waits for them).
function Stream:headers()
    if self.hdrs then
        return self.hdrs
    end
    local reply, rh = recv_op(self, true)
    if not reply then
        return nil, rh
    end
    self.hdrs = self.hdrs or {}
    finish(rh, 1, 0)
    return self.hdrs
end


-- stream:trailers() -> table | nil: the trailers, once the stream has ended (or failed).
function Stream:trailers()
    return self.trls
end


-- stream:close() -> true: ends the stream; if it is still running, it is cancelled on the wire
-- (RST_STREAM CANCEL). A stream that is garbage-collected unclosed is cancelled the same way.
function Stream:close()
    forget(self)
    return true
end


-- conn:close(): forgets the connection (calls in flight finish). A second close of the same
-- object is a no-op: it owns one count of the (shared) connection, released once.
function Conn:close()
    if self.closed then
        return true
    end
    local ok, err = ensure_init()
    if not ok then
        return false, err
    end
    local h
    h, err = begin_build(64)
    if not h then
        return false, err
    end
    Close.Start(builder)
    Close.AddConn(builder, self.id)
    finish_request(Command.Close, Close.End(builder))
    local reply, rerr = roundtrip(h, nil)
    if not reply then
        return false, rerr
    end
    finish(h, 1, 0)
    self.closed = true
    return true
end


-- grpc.load_proto(path_or_list, { import_paths = {...} }) -> true | nil, err: compiles .proto
-- files at run time (no protoc) and registers their messages and services, so calls can take
-- and return Lua tables. Per worker (per Lua VM); call it from init_by_lua (inherited by the
-- workers) or init_worker_by_lua. See docs/protobuf.md.
_M.load_proto = pb.load_proto

-- grpc.load_descriptor(bytes) -> true | nil, err: the same from a serialized
-- google.protobuf.FileDescriptorSet (protoc --descriptor_set_out --include_imports).
_M.load_descriptor = pb.load_descriptor

-- grpc.load_reflection(conn, service_or_list, call_opts?) -> true | nil, err: the message types
-- of services from a server that offers gRPC server reflection (no .proto file needed).
function _M.load_reflection(conn, services, call_opts)
    if type(conn) ~= "table" or getmetatable(conn) ~= Conn_mt then
        error("bad conn: a connection from grpc.connect expected", 2)
    end
    return require("resty.grpc_zc.reflection").load(conn, services, call_opts)
end

-- The codec module, for encoding or decoding messages by hand (pb.encode, pb.decode).
_M.pb = pb


-- grpc.set_codec{ encode = fn(type_name, tbl) -> string, decode = fn(type_name, s) -> tbl }:
-- a user codec for tables (e.g. lua-protobuf's pb.encode / pb.decode); grpc.set_codec(nil)
-- goes back to resty.grpc_zc.pb. Message types still come from grpc.load_proto.
function _M.set_codec(c)
    if c == nil then
        codec_encode, codec_decode = nil, nil
        return true
    end
    if type(c) ~= "table" or type(c.encode) ~= "function" or type(c.decode) ~= "function" then
        error("bad codec: { encode = function, decode = function } expected", 2)
    end
    codec_encode, codec_decode = c.encode, c.decode
    return true
end


-- grpc.readfile(path) -> contents | nil, err: reads a file (PEM certificates and keys).
function _M.readfile(path)
    if type(path) ~= "string" then
        error("bad path: string expected", 2)
    end
    local f, err = io.open(path, "rb")
    if not f then
        return nil, err
    end
    local data, rerr = f:read("*a")
    f:close()
    if data == nil then
        -- e.g. a folder: open succeeds, read fails
        return nil, path .. ": " .. tostring(rerr or "cannot read")
    end
    return data
end


-- grpc.stats() -> table: arena usage of this worker's instance, calls in flight, open streams
-- and the time its poll thread has spent busy-polling (busy_polled_us, µs since start).
local busy_polled_buf = ffi_new("uint64_t[1]")
function _M.stats()
    if inst == nil then
        return nil, "not initialized"
    end
    local calls = lib.grpc_zc_stats(inst, stats_buf)
    lib.grpc_zc_busy_polled_us(inst, busy_polled_buf)
    return {
        bytes_in_use = tonumber(stats_buf.bytes_in_use),
        slots_in_use = tonumber(stats_buf.slots_in_use),
        high_water_bytes = tonumber(stats_buf.high_water_bytes),
        failed_leases = tonumber(stats_buf.failed_leases),
        leases_total = tonumber(stats_buf.leases_total),
        calls_in_flight = calls,
        streams_open = lib.grpc_zc_streams_open(inst),
        busy_polled_us = tonumber(busy_polled_buf[0]),
        instance = inst_name,
    }
end


return _M
