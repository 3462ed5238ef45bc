-- resty.grpc_zc.pb: a descriptor-driven protobuf codec for LuaJIT over FFI pointers.
--
-- Lua tables <-> protobuf wire format, with the message types taken from a serialized
-- google.protobuf.FileDescriptorSet (pb.load_descriptor) or from .proto files compiled at run
-- time by the runtime library (pb.load_proto, no protoc). Encoding is two passes: pb.size
-- validates the table and measures it (nested sizes cached), pb.encode_into writes exactly that
-- many bytes at a pointer (an arena slot), and cannot fail halfway. Decoding reads a
-- `const uint8_t *` in place. See docs/protobuf.md.
--
--     pb.load_proto / pb.load_descriptor --> registry (one per Lua VM)
--     pb.message(name) --> prepared descriptor (fields by number, wire types, enums, maps...)
--     table --pb.size--> n --pb.encode_into(ptr, n)--> bytes       bytes --pb.decode--> table
--
-- Conventions (lua-resty-core): misuse (a non-descriptor argument, encode_into with a size that
-- does not match the table) raises error(msg, 2); data errors return nil, err, where err names
-- the field: "routeguide.Point.latitude: number expected, got string".
--
-- Hot paths are written for the JIT: no pairs() except over map fields, no closures per call,
-- FFI byte access, one reused scratch table for nested sizes. Little-endian hosts only.
--
-- This module is the facade over resty/grpc_zc/pb/:
--   wire      field types, varints, fixed-width values, 64-bit integers as halves
--   encode    size and write passes (pb.size, pb.encode_into, pb.encode)
--   decode    decoding in place and its options (pb.decode, pb.option)
--   registry  loaded types, prepared descriptors, the bootstrap descriptor (pb.load_*,
--             pb.message, pb.enum, pb.method, pb.clear)

local lib = require "resty.grpc_zc.lib"
local encode = require "resty.grpc_zc.pb.encode"
local decode = require "resty.grpc_zc.pb.decode"
local registry = require "resty.grpc_zc.pb.registry"

local rawset = rawset

local _M = {
    version = "0.1.0",
    size = encode.size,
    encode_into = encode.encode_into,
    encode = encode.encode,
    decode = decode.decode,
    option = decode.option,
    load_descriptor = registry.load_descriptor,
    load_proto = registry.load_proto,
    message = registry.message,
    enum = registry.enum,
    method = registry.method,
    clear = registry.clear,
}

-- pb.libpath: where the runtime library is loaded from (pb.load_proto, big copies) when set
-- before it is first needed; it is resty.grpc_zc.lib's `path`, the one search rule's override.
setmetatable(_M, {
    __index = function(_, k)
        if k == "libpath" then
            return lib.path
        end
    end,
    __newindex = function(t, k, v)
        if k == "libpath" then
            lib.path = v
        else
            rawset(t, k, v)
        end
    end,
})

return _M
