-- resty.grpc_zc.echo: the transport self-test grpc.echo and its fast path.
--
-- The runtime answers an Echo in the request's own slot (a reply header written in front of
-- the payload), so the payload is copied once into the arena and, unless the caller reads it
-- in place (opts.inplace: an InPlace object), once out of it.

local ffi = require "ffi"
local bit = require "bit"
local fb = require("resty.grpc_zc.flatbuffers").preload()
local Request = require "resty.grpc_zc.wire.Request"
local Echo = require "resty.grpc_zc.wire.Echo"
local Command = require "resty.grpc_zc.wire.Command"
local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"
local check = require "resty.grpc_zc.check"

local ffi_new = ffi.new
local ffi_cast = ffi.cast
local ffi_copy = ffi.copy
local ffi_string = ffi.string
local type = type
local error = error
local tonumber = tonumber
local setmetatable = setmetatable
local band = bit.band
local ceil = math.ceil
local number = check.number
local MAX_MS = check.MAX_MS
local begin = call.begin
local finish = call.finish
local post_desc = call.post_desc
local reply_ptr = call.reply_ptr
local describe_built = call.describe_built
local build_into = call.build_into
local builder = call.builder
local desc = call.desc
local ensure = instance.ensure
local S = instance.state

local u32p = ffi.typeof("uint32_t *")
local cu8p = ffi.typeof("const uint8_t *")
local uptr_t = ffi.typeof("uintptr_t")

local REPLY_STATUS_VT = reply.STATUS_VT
local REPLY_PAYLOAD_VT = reply.PAYLOAD_VT
-- Bytes of envelope around an echo payload: root offset, tables, vtables, vector length,
-- alignment padding (the builder raises "buffer full" if this were ever too small), plus room
-- in front of the request (the builder writes back to front) where the runtime puts the reply
-- header when it answers in the request's own slot (wire::REPLY_HEADER_LEN = 56). The echo
-- fast path (echo_request) needs 64 + 60 bytes in front of the payload and 4 behind it.
local ECHO_OVERHEAD = 64 + 64 + 64

local _M = { version = "0.1.0" }


-- Writes the Echo request for `payload` with the generated builder into the buffer the builder
-- points at (`delay_ms`: nil, or the runtime answers that much later).
local function build_echo(payload, delay_ms)
    local pv = builder:CreateByteVector(payload)
    Echo.Start(builder)
    Echo.AddPayload(builder, pv)
    if delay_ms then
        Echo.AddDelayMs(builder, delay_ms)
    end
    local e = Echo.End(builder)
    Request.Start(builder)
    Request.AddCommandType(builder, Command.Echo)
    Request.AddCommand(builder, e)
    builder:Finish(Request.End(builder))
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
    build_echo("", nil)
    local ptr, len = builder:Bytes()
    if len ~= ECHO_HEAD_LEN + 4 or ffi_cast(u32p, ptr + ECHO_HEAD_LEN)[0] ~= 0 then
        error("resty.grpc_zc: unexpected Echo envelope layout (" .. len .. " bytes)")
    end
    ffi_copy(ECHO_HEAD, ptr, ECHO_HEAD_LEN)
end

-- Writes the Echo request for `payload` (n bytes) into the slot of call `c` and fills `desc`.
-- The payload lands at the same address modulo 64 as the Lua string's bytes: memcpy between
-- buffers whose addresses differ by 4-12 bytes modulo 4 KiB runs 15-40x slower on these
-- machines (docs/benchmarks.md), and a co-aligned copy never does. Slots are 256-aligned.
local function echo_request(c, payload, n)
    local off = c.h.offset
    local slot = S.base + off
    local src = ffi_cast(cu8p, payload)
    -- 64 <= at <= 124: room for the 44-byte request head, and for the runtime's 56-byte reply
    -- header in front of the payload vector; 4-aligned as the runtime requires.
    local at = 64 + band(tonumber(ffi_cast(uptr_t, src) % 64), 60)
    local start = at - (ECHO_HEAD_LEN + 4)
    local p = slot + start
    ffi_copy(p, ECHO_HEAD, ECHO_HEAD_LEN)
    ffi_cast(u32p, p + ECHO_HEAD_LEN)[0] = n
    ffi_copy(slot + at, src, n)
    ffi_cast(u32p, slot + at + n)[0] = 0     -- padding (ECHO_OVERHEAD leaves room behind)
    desc.slot_offset = off
    desc.slot_gen = c.h.gen
    desc.buf_offset = start
    desc.buf_len = ECHO_HEAD_LEN + 4 + band(n + 3, -4)
end

-- Builds an Echo request with the generated builder (any option, e.g. delay_ms).
local function echo_request_built(c, payload, delay_ms)
    build_into(c)
    build_echo(payload, delay_ms)
    describe_built(c)
end

-- One view re-pointed at each echo reply (read before the next yield), instead of a window,
-- a view and a Reply object per call.
local echo_view = fb.view.New(fb.binaryArray.FromPtr(ECHO_HEAD, 0), 0)

-- The failure of an echo reply with a status (cold path: generated accessors).
local function echo_status(ptr, len)
    local st = reply.open(ptr, len):Status()
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
--   opts.delay_ms: the runtime answers that much later (a test hook; 0 to 60,000 ms).
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
            delay_ms = ceil(number(opts.delay_ms, "delay_ms", 0, MAX_ECHO_DELAY_MS))
        end
        if opts.timeout ~= nil then
            -- 0 passes here and is refused by the host (a positive wait expected)
            number(opts.timeout, "timeout", 0, MAX_MS)
        end
    end
    if S.inst == nil then
        local ok, err = ensure()
        if not ok then
            return false, err
        end
    end

    local n = #payload
    local max_payload = S.max_payload
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

    local ptr, len = reply_ptr()
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


return _M
