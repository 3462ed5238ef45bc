-- resty.grpc_zc.call: one call's life on the Lua side.
--
-- A call leases a request slot (begin), its request is written there (through the shared
-- FlatBuffers `builder`, or by hand on the echo fast path), its 16-byte descriptor is posted
-- through the host queue (post_desc / roundtrip), its reply is read in place, and finish()
-- gives the slots back. Call objects are pooled: no allocation and no ffi.gc per call.
--
--     begin(need) / begin_build(need) -> call | nil, err
--     desc                      the request descriptor post_desc sends (filled by the writer)
--     post_desc(c, call_opts)   -> true | false, err; the reply descriptor is then in `rdesc`
--     finish_request(ctype, command); roundtrip(c, call_opts) -> reply view | false, err
--     finish(c, posted, abandoned)

local ffi = require "ffi"
local resty_ffi = require "resty_ffi"
local fb = require("resty.grpc_zc.flatbuffers").preload()
local Request = require "resty.grpc_zc.wire.Request"
local lib = require "resty.grpc_zc.lib"
local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local C = assert(lib.load())

local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_string = ffi.string
local type = type
local tostring = tostring
local call_ptr = resty_ffi.call_ptr
local call_begin = C.grpc_zc_call_begin
local call_end = C.grpc_zc_call_end
local open_reply = reply.open
local S = instance.state

local call_t = ffi.typeof("grpc_zc_call_t")
local desc_t = ffi.typeof("grpc_zc_desc_t")
local DESC_LEN = ffi.sizeof(desc_t)

local _M = { version = "0.1.0" }

local desc_mem = ffi_new("grpc_zc_desc_t[1]")
local desc = desc_mem[0]
-- The reply descriptor, copied here by resty_ffi.call_ptr (read before the next yield).
local rdesc_mem = ffi_new("grpc_zc_desc_t[1]")
local rdesc = rdesc_mem[0]
_M.desc, _M.rdesc = desc, rdesc

-- The one builder every request is written with (requests are built without a yield between
-- begin and post).
local builder = fb.Builder.FromBuffer(ffi_new("uint8_t[8]"), 8)
_M.builder = builder


function _M.errstr(code)
    return ffi_string(C.grpc_zc_strerror(code))
end
local errstr = _M.errstr


-- Finalizer of every call object, set once when it is made: a call still active when Lua drops
-- it was abandoned (aborted request, a coroutine that died mid-call, a dropped in-place reply, a
-- Lua error between lease and post). Objects in the pool are inactive.
local function abandon(c)
    if c.active ~= 0 then
        c.active = 0
        call_end(S.inst, c.h, c.posted, 1)
    end
end

-- Call objects that finished, for reuse.
local pool, npool = {}, 0
local POOL_MAX = 256


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
    local rc = call_begin(S.inst, need, c.h)
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
_M.begin = begin


-- Ends call `c` (a second finish of the same call is a no-op). `c` goes back to the pool: the
-- caller must not use it afterwards.
local function finish(c, posted, abandoned)
    if c.active == 0 then
        return
    end
    c.active = 0
    call_end(S.inst, c.h, posted, abandoned)
    local n = npool
    if n < POOL_MAX then
        n = n + 1
        pool[n] = c
        npool = n
    end
end
_M.finish = finish


-- Points the builder at the slot of call `c`. FlatBuffers align relative to the buffer's end:
-- an 8-aligned end keeps every field naturally aligned in the (256-byte aligned) slot.
local function build_into(c)
    local cap = c.h.len
    builder:Reset(S.base + c.h.offset, cap - cap % 8)
end
_M.build_into = build_into


-- Leases a call slot of `need` bytes and points the builder at it.
function _M.begin_build(need)
    local c, err = begin(need)
    if not c then
        return nil, err
    end
    build_into(c)
    return c
end


-- Finishes the envelope of `command` (a table offset of type `ctype`) in the builder.
function _M.finish_request(ctype, command)
    Request.Start(builder)
    Request.AddCommandType(builder, ctype)
    Request.AddCommand(builder, command)
    builder:Finish(Request.End(builder))
end


-- Points `desc` at the request the builder finished in the slot of call `c`.
local function describe_built(c)
    local _, len, start = builder:Bytes()
    desc.slot_offset = c.h.offset
    desc.slot_gen = c.h.gen
    desc.buf_offset = start
    desc.buf_len = len
end
_M.describe_built = describe_built


-- Posts the descriptor in `desc` for call `c` and waits; the reply's descriptor is in `rdesc`.
-- Returns true, or false, err after finishing the call.
local function post_desc(c, call_opts)
    c.posted = 1
    local ok, res, err = call_ptr(S.rt, desc_mem, DESC_LEN, call_opts, rdesc_mem, DESC_LEN)
    if not ok then
        if type(res) == "number" then
            -- The runtime answered with an error (bad request, exhausted arena).
            finish(c, 1, 0)
            return false, tostring(err or ("runtime error " .. res))
        end
        -- Host-level failure: "timeout" means it was posted; everything else was not.
        finish(c, res == "timeout" and 1 or 0, 1)
        return false, res
    end
    if res ~= DESC_LEN then
        finish(c, 1, 1)
        return false, "bad reply descriptor"
    end
    return true
end
_M.post_desc = post_desc


-- Where the reply of the last post_desc starts in the arena, and its length.
local function reply_ptr()
    return S.base + rdesc.slot_offset + rdesc.buf_offset, rdesc.buf_len
end
_M.reply_ptr = reply_ptr


-- Posts the request the builder finished for call `c` and waits. Returns the reply view, or
-- false, err.
function _M.roundtrip(c, call_opts)
    describe_built(c)
    local ok, err = post_desc(c, call_opts)
    if not ok then
        return false, err
    end
    return open_reply(reply_ptr())
end


return _M
