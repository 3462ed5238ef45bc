-- resty.grpc_zc.pb.wire: the protobuf wire format's building blocks for the codec modules.
--
-- Field type and label numbers of descriptor.proto, varints and fixed-width values read and
-- written through FFI byte pointers, 64-bit integers as two 32-bit halves (numbers, int64_t /
-- uint64_t cdata or decimal strings), and the argument checks of the public API (descriptors,
-- (ptr, len) pairs, string lengths).
-- Little-endian hosts only.

local ffi = require "ffi"
local bit = require "bit"
local check = require "resty.grpc_zc.check"

local ffi_cast = ffi.cast
local ffi_new = ffi.new
local ffi_istype = ffi.istype
local band = bit.band
local floor = math.floor
local huge = math.huge
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local sub = string.sub
local byte = string.byte
local find = string.find
local format = string.format
local in_range = check.in_range

if not ffi.abi("le") then
    error("resty.grpc_zc.pb: little-endian hosts only")
end

local _M = { version = "0.1.0" }

local ok_new, new_tab = pcall(require, "table.new")
if not ok_new then
    new_tab = function() return {} end
end
_M.new_tab = new_tab

local int64_t = ffi.typeof("int64_t")
local uint64_t = ffi.typeof("uint64_t")
_M.int64_t, _M.uint64_t = int64_t, uint64_t
-- Scratch for floating-point bytes (each use is synchronous).
local conv = ffi_new("union { double d; float f[2]; uint8_t b[8]; }")
_M.conv = conv

-- FieldDescriptorProto.Type
local T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING,
      T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64, T_SINT32, T_SINT64 =
      1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
local WIRE = { 1, 5, 0, 0, 0, 1, 5, 0, 2, 3, 2, 2, 0, 0, 5, 1, 0, 0 }
local TYPE_NAME = { "double", "float", "int64", "uint64", "int32", "fixed64", "fixed32", "bool",
                    "string", "group", "message", "bytes", "uint32", "enum", "sfixed32",
                    "sfixed64", "sint32", "sint64" }
-- FieldDescriptorProto.Label
local L_OPTIONAL, L_REQUIRED, L_REPEATED = 1, 2, 3

local MAX_DEPTH = 100
local TWO32 = 4294967296
local TWO31 = 2147483648
local TWO53 = 9007199254740992
local NAN = 0 / 0

-- The field type numbers, in order: local T_DOUBLE, ..., T_SINT64 = wire.types()
function _M.types()
    return T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL,
           T_STRING, T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64,
           T_SINT32, T_SINT64
end
_M.WIRE, _M.TYPE_NAME = WIRE, TYPE_NAME
_M.L_OPTIONAL, _M.L_REQUIRED, _M.L_REPEATED = L_OPTIONAL, L_REQUIRED, L_REPEATED
_M.MAX_DEPTH, _M.TWO32, _M.TWO31, _M.TWO53, _M.NAN = MAX_DEPTH, TWO32, TWO31, TWO53, NAN

----------------------------------------------------------------------------------------------
-- Varints and fixed-width values
----------------------------------------------------------------------------------------------

-- Bytes of the varint of v, 0 <= v < 2^53 integral.
local function vsize(v)
    if v < 128 then return 1 end
    if v < 16384 then return 2 end
    if v < 2097152 then return 3 end
    if v < 268435456 then return 4 end
    if v < 34359738368 then return 5 end
    if v < 4398046511104 then return 6 end
    if v < 562949953421312 then return 7 end
    return 8
end

-- Bytes of the varint of hi * 2^32 + lo (halves in [0, 2^32)).
local function vsize64(lo, hi)
    if hi == 0 then return vsize(lo) end
    if hi < 8 then return 5 end
    if hi < 1024 then return 6 end
    if hi < 131072 then return 7 end
    if hi < 16777216 then return 8 end
    if hi < TWO31 then return 9 end
    return 10
end

local function put_varint(p, pos, v)
    while v >= 128 do
        p[pos] = v % 128 + 128
        v = floor(v / 128)
        pos = pos + 1
    end
    p[pos] = v
    return pos + 1
end

local function put_varint64(p, pos, lo, hi)
    while hi > 0 do
        p[pos] = lo % 128 + 128
        lo = floor(lo / 128) + (hi % 128) * 33554432
        hi = floor(hi / 128)
        pos = pos + 1
    end
    return put_varint(p, pos, lo)
end

local function put_u32(p, pos, v) -- v integral in [-2^31, 2^32)
    p[pos] = band(v, 255)
    p[pos + 1] = band(bit.rshift(v, 8), 255)
    p[pos + 2] = band(bit.rshift(v, 16), 255)
    p[pos + 3] = bit.rshift(v, 24)
    return pos + 4
end

local function put_double(p, pos, v)
    conv.d = v
    p[pos], p[pos + 1], p[pos + 2], p[pos + 3] = conv.b[0], conv.b[1], conv.b[2], conv.b[3]
    p[pos + 4], p[pos + 5], p[pos + 6], p[pos + 7] = conv.b[4], conv.b[5], conv.b[6], conv.b[7]
    return pos + 8
end

local function put_float(p, pos, v)
    conv.f[0] = v
    p[pos], p[pos + 1], p[pos + 2], p[pos + 3] = conv.b[0], conv.b[1], conv.b[2], conv.b[3]
    return pos + 4
end

-- Reads a varint at pos (< lim). Returns lo, hi (halves of the 64-bit value), new pos; or nil
-- for a truncated or over-long varint.
local function get_varint(p, pos, lim)
    local lo, mul = 0, 1
    for _ = 1, 4 do
        if pos >= lim then return nil end
        local b = p[pos]
        pos = pos + 1
        if b < 128 then
            return lo + b * mul, 0, pos
        end
        lo = lo + (b - 128) * mul
        mul = mul * 128
    end
    if pos >= lim then return nil end
    local b = p[pos]
    pos = pos + 1
    lo = lo + (b % 16) * 268435456
    local hi = floor((b % 128) / 16)
    if b < 128 then return lo, hi, pos end
    mul = 8
    for _ = 1, 5 do
        if pos >= lim then return nil end
        b = p[pos]
        pos = pos + 1
        hi = hi + (b % 128) * mul
        if b < 128 then
            return lo, hi % TWO32, pos
        end
        mul = mul * 128
    end
    return nil
end

local function get_u32(p, pos)
    return p[pos] + p[pos + 1] * 256 + p[pos + 2] * 65536 + p[pos + 3] * 16777216
end
_M.vsize, _M.vsize64, _M.get_varint, _M.get_u32 = vsize, vsize64, get_varint, get_u32
_M.put_varint, _M.put_varint64, _M.put_u32 = put_varint, put_varint64, put_u32
_M.put_double, _M.put_float = put_double, put_float

----------------------------------------------------------------------------------------------
-- 64-bit integers
----------------------------------------------------------------------------------------------

local U64_MAX_DIV10 = 1844674407370955161ULL
local I64_MAX = 9223372036854775807ULL

-- Parses a decimal string into a number (|v| < 2^53) or int64/uint64 cdata; nil, err.
local function parse_dec(s, signed)
    local i, neg = 1, false
    local c = byte(s, 1)
    if c == 45 then
        neg, i = true, 2
    elseif c == 43 then
        i = 2
    end
    if not find(s, "^%d+$", i) then
        return nil, "integer expected, got string \"" .. s .. "\""
    end
    if #s - i < 15 then
        local n = tonumber(sub(s, i))
        if neg then
            if not signed and n ~= 0 then
                return nil, "value out of range: " .. s
            end
            return -n
        end
        return n
    end
    local u = 0ULL
    for j = i, #s do
        local d = byte(s, j) - 48
        if u > U64_MAX_DIV10 or (u == U64_MAX_DIV10 and d > 5) then
            return nil, "value out of range: " .. s
        end
        u = u * 10 + d
    end
    if neg then
        if u == 0 then return 0 end
        if not signed or u > I64_MAX + 1 then
            return nil, "value out of range: " .. s
        end
        return -ffi_cast(int64_t, u)
    end
    if signed then
        if u > I64_MAX then
            return nil, "value out of range: " .. s
        end
        return ffi_cast(int64_t, u)
    end
    return u
end

-- Two's-complement halves (lo, hi in [0, 2^32)) of a 64-bit input: integral number, int64_t /
-- uint64_t cdata or decimal string. nil, err when it is none of these or out of range.
local function parts64(v, signed)
    local tv = type(v)
    if tv == "string" then
        local x, e = parse_dec(v, signed)
        if x == nil then return nil, e end
        v, tv = x, type(x)
    end
    if tv == "number" then
        if v ~= floor(v) then
            if v ~= v or v == huge or v == -huge then
                return nil, "integer expected, got " .. tostring(v)
            end
            return nil, "integer expected, got " .. format("%.17g", v)
        end
        if signed then
            if v < -9223372036854775808 or v >= 9223372036854775808 then
                return nil, "value out of range for int64: " .. format("%.17g", v)
            end
        elseif v < 0 or v >= 18446744073709551616 then
            return nil, "value out of range for uint64: " .. format("%.17g", v)
        end
        local hi = floor(v / TWO32)
        local lo = v - hi * TWO32
        if hi < 0 then hi = hi + TWO32 end
        return lo, hi
    end
    if tv == "cdata" then
        if ffi_istype(int64_t, v) then
            if not signed and v < 0 then
                return nil, "value out of range for uint64: " .. tostring(v)
            end
        elseif ffi_istype(uint64_t, v) then
            if signed and v > I64_MAX then
                return nil, "value out of range for int64: " .. tostring(v)
            end
        else
            return nil, "integer expected, got " .. tostring(ffi.typeof(v))
        end
        local u = ffi_cast(uint64_t, v)
        return tonumber(u % 4294967296ULL), tonumber(u / 4294967296ULL)
    end
    return nil, "number expected, got " .. tv
end

-- Zigzag of a signed 64-bit value given as halves.
local function zigzag_parts(lo, hi)
    local neg = hi >= TWO31
    local zhi = (hi * 2) % TWO32 + floor(lo / TWO31)
    local zlo = (lo * 2) % TWO32
    if neg then
        zhi, zlo = TWO32 - 1 - zhi, TWO32 - 1 - zlo
    end
    return zlo, zhi
end
_M.parse_dec, _M.parts64, _M.zigzag_parts = parse_dec, parts64, zigzag_parts

-- Misuse of the public API: `md` is not a prepared message descriptor.
function _M.check_md(md, fname)
    if type(md) ~= "table" or md.fields == nil then
        error("bad argument #1 to pb." .. fname .. " (message descriptor expected, got "
              .. type(md) .. ")", 3)
    end
end

-- Longest buffer a (ptr, len) argument may name.
local MAX_BUFFER = 2147483647
local cu8p_t = ffi.typeof("const uint8_t *")

-- What a cdata type is, by ctype id: "ptr", "array" or false (an integer, a struct...); the
-- first look at a type reads its name, later ones are a table lookup (JIT-compiled).
local ctype_kind = {}
local function kind_of(v)
    local id = tonumber(ffi.typeof(v))
    local k = ctype_kind[id]
    if k == nil then
        local what = tostring(ffi.typeof(v))
        k = (find(what, "%*>$") and "ptr") or (find(what, "%[") and "array") or false
        ctype_kind[id] = k
    end
    return k
end

-- Misuse of the public API: a (ptr, len) argument pair that is unsafe to read or write,
-- checked before anything touches memory. `ptr` must be a non-NULL pointer or array cdata
-- (not an integer or a struct, which a cast would turn into an address), `len` an integer
-- from 0 to MAX_BUFFER and, for an array, at most its size. `arg`: the position of `ptr` in
-- pb.<fname>'s arguments. Raises at the caller of pb.<fname>. Byte pointers (what the codec
-- and resty.grpc_zc pass) take the fast path.
function _M.check_buffer(fname, ptr, len, arg)
    if not in_range(len, 0, MAX_BUFFER, true) then
        error("bad argument #" .. (arg + 1) .. " to pb." .. fname .. " (a length from 0 to "
              .. MAX_BUFFER .. " expected, got " .. tostring(len) .. ")", 3)
    end
    if type(ptr) ~= "cdata" then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (pointer expected, got "
              .. type(ptr) .. ")", 3)
    end
    if ptr == nil then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (NULL pointer)", 3)
    end
    if ffi_istype(cu8p_t, ptr) then
        return
    end
    local k = kind_of(ptr)
    if k == "array" then
        if len > ffi.sizeof(ptr) then
            error("bad argument #" .. (arg + 1) .. " to pb." .. fname .. " (" .. len
                  .. " bytes, longer than the array)", 3)
        end
    elseif k ~= "ptr" then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (pointer expected, got "
              .. tostring(ffi.typeof(ptr)) .. ")", 3)
    end
end

-- Misuse of the public API: `len` of a Lua string argument is not an integer from 0 to its
-- length. `arg`: the position of `len`.
function _M.check_string_len(fname, s, len, arg)
    if not in_range(len, 0, #s, true) then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (a length from 0 to " .. #s
              .. " expected, got " .. tostring(len) .. ")", 3)
    end
end

return _M
