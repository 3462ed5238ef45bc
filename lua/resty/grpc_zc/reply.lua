-- resty.grpc_zc.reply: reading a Reply envelope in place, and the gRPC status shape.
--
-- A reply lives in an arena slot until its call is finished (resty.grpc_zc.call); everything
-- here reads it through the generated accessors without copying more than what is returned.
-- Failures take the shape `false, "<CODE_NAME>: <message>", { code, message, details,
-- metadata }` (local_failure makes one on this side).

local fb = require("resty.grpc_zc.flatbuffers").preload()
local Reply = require "resty.grpc_zc.wire.Reply"

local type = type
local tonumber = tonumber
local uoffset = fb.N.UOffsetT
local from_ptr = fb.binaryArray.FromPtr

local _M = { version = "0.1.0" }

-- vtable offsets of Reply.status and Reply.payload (schema/envelope.fbs; t/zerocopy.rs checks
-- them end to end), for readers that skip the generated accessors (the echo fast path).
_M.STATUS_VT = 6
_M.PAYLOAD_VT = 12

local CODE_NAMES = {
    [0] = "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}
-- grpc.codes: code name -> number.
_M.codes = {}
for code, name in pairs(CODE_NAMES) do
    _M.codes[name] = code
end
_M.RESOURCE_EXHAUSTED = 8
_M.FAILED_PRECONDITION = 9
_M.INTERNAL = 13


-- The Reply at (ptr, len): a view valid until its call is finished.
function _M.open(ptr, len)
    local buf = from_ptr(ptr, len)
    local reply = Reply.New()
    reply:Init(buf, uoffset:Unpack(buf, 0))
    return reply
end


-- The reply's payload as (ptr, len), or nil, 0.
function _M.payload_of(reply)
    local v = reply.view
    local o = v:Offset(_M.PAYLOAD_VT)
    if o == 0 then
        return nil, 0
    end
    return v:VectorPtr(o)
end


-- The id the runtime gave what the request created (a connection, a stream).
function _M.id_of(reply)
    return tonumber(reply:Id())
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
_M.metadata_of = metadata_of


-- The gRPC status of a reply as (err, status) when it is not OK, else nil.
function _M.status_of(reply)
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
function _M.local_failure(code, msg)
    return false, CODE_NAMES[code] .. ": " .. msg, { code = code, message = msg, metadata = {} }
end


return _M
