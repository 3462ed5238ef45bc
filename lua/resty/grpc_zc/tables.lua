-- resty.grpc_zc.tables: messages as Lua tables (grpc.load_proto types, grpc.set_codec).
--
-- A table message is encoded by resty.grpc_zc.pb straight into the envelope's byte vector in
-- the arena (pb.size validates and measures, pb.encode_into writes), and replies of calls that
-- use tables are decoded straight from the arena (no Lua string in between). With a user codec
-- (grpc.set_codec) the table goes through its encode/decode as a string instead.

local ffi = require "ffi"
local pb = require "resty.grpc_zc.pb"
local lib = require "resty.grpc_zc.lib"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"

local ffi_string = ffi.string
local type = type
local error = error
local pcall = pcall
local tostring = tostring
local pb_size, pb_encode_into, pb_decode = pb.size, pb.encode_into, pb.decode
local big_copy = lib.big_copy
local BIG_COPY = lib.BIG_COPY
local builder = call.builder
local payload_of = reply.payload_of

local _M = { version = "0.1.0" }

-- A user codec (grpc.set_codec), replacing resty.grpc_zc.pb for tables.
local codec_encode, codec_decode


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


-- The message types of `path` ({ input, output, ... }), or nil, err.
function _M.types_of(path)
    local m = pb.method(path)
    if m == nil then
        return nil, "no message types for " .. path .. " (load them with grpc.load_proto)"
    end
    return m
end


-- A table request of type `md`: returns (tbl, size) for put_message, or (string, size) when a
-- user codec encoded it, or nil, nil, err.
function _M.encode_size(md, tbl)
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


-- Writes message `msg` (string, or a table measured by encode_size) as a byte vector in the
-- builder; returns its offset.
function _M.put_message(types, msg, n)
    if type(msg) == "string" and n < BIG_COPY then
        return builder:CreateByteVector(msg)
    end
    local ptr = builder:StartByteVectorInPlace(n)
    if type(msg) == "string" then
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
_M.decode_message = decode_message


-- The message of a reply: a table when `types` is given (the call uses tables), else the
-- payload as a string; or nil, err.
function _M.message_of(types, r)
    local ptr, len = payload_of(r)
    if types then
        return decode_message(types, ptr, len)
    end
    return ptr and ffi_string(ptr, len) or ""
end


return _M
