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

local ffi = require "ffi"
local bit = require "bit"

local ffi_cast = ffi.cast
local ffi_copy = ffi.copy
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_istype = ffi.istype
local band, bor = bit.band, bit.bor
local floor = math.floor
local huge = math.huge
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local pairs = pairs
local next = next
local select = select
local sub = string.sub
local byte = string.byte
local find = string.find
local format = string.format
local concat = table.concat
local sort = table.sort

local ok_new, new_tab = pcall(require, "table.new")
if not ok_new then
    new_tab = function() return {} end
end

if not ffi.abi("le") then
    error("resty.grpc_zc.pb: little-endian hosts only")
end

local _M = { version = "0.1.0" }

local u8p_t = ffi.typeof("uint8_t *")
local cu8p_t = ffi.typeof("const uint8_t *")

-- Longest buffer a (ptr, len) argument may name.
local MAX_BUFFER = 2147483647

-- Checks a (ptr, len) argument pair before anything reads memory: `ptr` a non-NULL pointer or
-- array cdata (not an integer or a struct, which ffi.cast would turn into an address), `len` an
-- integer from 0 to MAX_BUFFER and, for an array, at most its size. Raises at the caller's
-- caller. Byte pointers (what this module and resty.grpc_zc pass) take the fast path.
local function check_buffer(fname, ptr, len, arg)
    if type(len) ~= "number" or not (len >= 0 and len <= MAX_BUFFER) or len % 1 ~= 0 then
        error("bad argument #" .. (arg + 1) .. " to pb." .. fname .. " (a length from 0 to "
              .. MAX_BUFFER .. " expected, got " .. tostring(len) .. ")", 3)
    end
    if ptr == nil then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (NULL pointer)", 3)
    end
    if ffi_istype(cu8p_t, ptr) then
        return
    end
    local what = tostring(ffi.typeof(ptr))
    if what:find("%[") then
        if len > ffi.sizeof(ptr) then
            error("bad argument #" .. (arg + 1) .. " to pb." .. fname .. " (" .. len
                  .. " bytes, longer than the array)", 3)
        end
    elseif not what:find("%*>$") then
        error("bad argument #" .. arg .. " to pb." .. fname .. " (pointer expected, got "
              .. what .. ")", 3)
    end
end
local int64_t = ffi.typeof("int64_t")
local uint64_t = ffi.typeof("uint64_t")
local conv = ffi_new("union { double d; float f[2]; uint8_t b[8]; }")

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

-- Strings of at least BIG_COPY bytes are copied with the runtime's grpc_zc_copy when the library
-- is loaded: glibc's memcpy is ~15x slower here for some buffer distances (src/copy.rs).
local BIG_COPY = 2048
local big_copy
-- The first big copy looks the function up (pb.libpath may be set by then); ffi.copy if the
-- library cannot be loaded.
big_copy = function(dst, src, n)
    big_copy = ffi_copy
    pcall(ffi.cdef, "void grpc_zc_copy(void *dst, const void *src, size_t len);")
    local ok, l = pcall(ffi.load, _M.libpath or "resty_grpc_zc")
    if ok then
        local found, f = pcall(function() return l.grpc_zc_copy end)
        if found then
            big_copy = f
        end
    end
    return big_copy(dst, src, n)
end

-- Options (pb.option).
local INT64_MODE = 1 -- 1 auto, 2 cdata, 3 string
local ENUM_AS_NAME = true
local FILL_DEFAULTS = false

-- Error of the last failing size/decode step (functions return -1 / nil and leave it here).
local ERR

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

-- Lua value of a 64-bit integer read as halves.
local function int64_value(lo, hi, signed)
    local mode = INT64_MODE
    if signed and hi >= TWO31 then
        local h = hi - TWO32
        if mode == 1 and h >= -2097152 then
            local d = h * TWO32 + lo
            if d > -TWO53 then return d end
        end
        local x = ffi_cast(int64_t, h) * 4294967296LL + lo
        if mode == 3 then
            local s = tostring(x)
            return sub(s, 1, #s - 2)
        end
        return x
    end
    if mode == 1 and hi < 2097152 then
        return hi * TWO32 + lo
    end
    if mode == 3 then
        if hi < 2097152 then
            return format("%.0f", hi * TWO32 + lo)
        end
        local s = tostring(ffi_cast(uint64_t, hi) * 4294967296ULL + lo)
        return sub(s, 1, #s - 3)
    end
    if signed then
        return ffi_cast(int64_t, hi) * 4294967296LL + lo
    end
    return ffi_cast(uint64_t, hi) * 4294967296ULL + lo
end

----------------------------------------------------------------------------------------------
-- Scalars: validate and measure (size pass), write (write pass), read (decode)
----------------------------------------------------------------------------------------------

-- A 32-bit integer input: integral number (or int64 cdata) within [lo, hi]; nil, err.
local function int32_in(v, lo, hi, tname)
    local tv = type(v)
    if tv ~= "number" then
        if tv == "cdata" and (ffi_istype(int64_t, v) or ffi_istype(uint64_t, v)) then
            if v < lo or v > hi then
                return nil, "value out of range for " .. tname .. ": " .. tostring(v)
            end
            return tonumber(v)
        end
        return nil, "number expected, got " .. tv
    end
    if v ~= floor(v) then
        return nil, "integer expected, got " .. tostring(v)
    end
    if v < lo or v > hi then
        return nil, "value out of range for " .. tname .. ": " .. format("%.17g", v)
    end
    return v
end

-- The number of an enum input (name or int32 number); nil, err.
local function enum_in(f, v)
    if type(v) == "string" then
        local n = f.enum.by_name[v]
        if n == nil then
            return nil, "unknown value \"" .. v .. "\" of enum " .. f.enum.name
        end
        return n
    end
    return int32_in(v, -TWO31, TWO31 - 1, "enum")
end

-- Size of the value (no tag) of a scalar field, validating it; nil, err.
local function scalar_size(f, ft, v)
    if ft == T_STRING or ft == T_BYTES then
        if type(v) ~= "string" then
            return nil, "string expected, got " .. type(v)
        end
        local n = #v
        return vsize(n) + n
    elseif ft == T_INT32 or ft == T_ENUM then
        local n, e
        if ft == T_ENUM then
            n, e = enum_in(f, v)
        else
            n, e = int32_in(v, -TWO31, TWO31 - 1, "int32")
        end
        if n == nil then return nil, e end
        if n < 0 then return 10 end
        return vsize(n)
    elseif ft == T_BOOL then
        if type(v) ~= "boolean" then
            return nil, "boolean expected, got " .. type(v)
        end
        return 1
    elseif ft == T_DOUBLE or ft == T_FLOAT then
        if type(v) ~= "number" then
            return nil, "number expected, got " .. type(v)
        end
        return ft == T_DOUBLE and 8 or 4
    elseif ft == T_UINT32 then
        local n, e = int32_in(v, 0, TWO32 - 1, "uint32")
        if n == nil then return nil, e end
        return vsize(n)
    elseif ft == T_SINT32 then
        local n, e = int32_in(v, -TWO31, TWO31 - 1, "sint32")
        if n == nil then return nil, e end
        return vsize(n >= 0 and 2 * n or -2 * n - 1)
    elseif ft == T_FIXED32 then
        local n, e = int32_in(v, 0, TWO32 - 1, "fixed32")
        if n == nil then return nil, e end
        return 4
    elseif ft == T_SFIXED32 then
        local n, e = int32_in(v, -TWO31, TWO31 - 1, "sfixed32")
        if n == nil then return nil, e end
        return 4
    elseif ft == T_INT64 or ft == T_UINT64 then
        if type(v) == "number" and v >= 0 and v < TWO53 and v == floor(v) then
            return vsize(v)
        end
        local lo, hi = parts64(v, ft == T_INT64)
        if lo == nil then return nil, hi end
        return vsize64(lo, hi)
    elseif ft == T_SINT64 then
        if type(v) == "number" and v > -4503599627370496 and v < 4503599627370496
           and v == floor(v) then
            return vsize(v >= 0 and 2 * v or -2 * v - 1)
        end
        local lo, hi = parts64(v, true)
        if lo == nil then return nil, hi end
        return vsize64(zigzag_parts(lo, hi))
    else -- T_FIXED64, T_SFIXED64
        local lo, hi = parts64(v, ft == T_SFIXED64)
        if lo == nil then return nil, hi end
        return 8
    end
end

-- Writes the value (no tag) of a scalar field validated by scalar_size. Returns the new pos.
local function put_scalar(p, pos, f, ft, v)
    if ft == T_STRING or ft == T_BYTES then
        local n = #v
        pos = put_varint(p, pos, n)
        if n < BIG_COPY then
            ffi_copy(p + pos, v, n)
        else
            big_copy(p + pos, v, n)
        end
        return pos + n
    elseif ft == T_INT32 or ft == T_ENUM then
        if ft == T_ENUM and type(v) == "string" then
            v = f.enum.by_name[v]
        else
            v = tonumber(v)
        end
        if v < 0 then
            return put_varint64(p, pos, v + TWO32, TWO32 - 1)
        end
        return put_varint(p, pos, v)
    elseif ft == T_BOOL then
        p[pos] = v and 1 or 0
        return pos + 1
    elseif ft == T_DOUBLE then
        return put_double(p, pos, v)
    elseif ft == T_FLOAT then
        return put_float(p, pos, v)
    elseif ft == T_UINT32 then
        return put_varint(p, pos, tonumber(v))
    elseif ft == T_SINT32 then
        v = tonumber(v)
        return put_varint(p, pos, v >= 0 and 2 * v or -2 * v - 1)
    elseif ft == T_FIXED32 or ft == T_SFIXED32 then
        return put_u32(p, pos, tonumber(v))
    elseif ft == T_INT64 or ft == T_UINT64 then
        if type(v) == "number" and v >= 0 and v < TWO53 and v == floor(v) then
            return put_varint(p, pos, v)
        end
        local lo, hi = parts64(v, ft == T_INT64)
        return put_varint64(p, pos, lo, hi)
    elseif ft == T_SINT64 then
        if type(v) == "number" and v > -4503599627370496 and v < 4503599627370496
           and v == floor(v) then
            return put_varint(p, pos, v >= 0 and 2 * v or -2 * v - 1)
        end
        local lo, hi = parts64(v, true)
        return put_varint64(p, pos, zigzag_parts(lo, hi))
    else -- T_FIXED64, T_SFIXED64
        local lo, hi = parts64(v, ft == T_SFIXED64)
        put_u32(p, pos, lo)
        return put_u32(p, pos + 4, hi)
    end
end

-- Whether a validated scalar input is its type's zero value (proto3 implicit presence: not
-- written).
local function is_zero(f, ft, v)
    if ft == T_STRING or ft == T_BYTES then
        return v == ""
    elseif ft == T_BOOL then
        return v == false
    elseif ft == T_ENUM and type(v) == "string" then
        return f.enum.by_name[v] == 0
    elseif type(v) == "string" then -- 64-bit decimal
        return tonumber(v) == 0
    end
    return v == 0
end

-- Reads a varint-encoded scalar of type ft (wire type 0); returns value, pos or nil.
local function get_varint_value(f, ft, p, pos, lim)
    local lo, hi
    if pos >= lim then return nil end
    local b = p[pos]
    if b < 128 then
        lo, hi, pos = b, 0, pos + 1
    else
        lo, hi, pos = get_varint(p, pos, lim)
        if lo == nil then return nil end
    end
    if ft == T_INT32 or ft == T_ENUM then
        if lo >= TWO31 then lo = lo - TWO32 end
        if ft == T_ENUM and ENUM_AS_NAME then
            local name = f.enum.name_of[lo + 0.5]
            if name ~= nil then return name, pos end
        end
        return lo, pos
    elseif ft == T_BOOL then
        return lo ~= 0 or hi ~= 0, pos
    elseif ft == T_UINT32 then
        return lo, pos
    elseif ft == T_SINT32 then
        if lo % 2 == 1 then
            return -(lo + 1) / 2, pos
        end
        return lo / 2, pos
    elseif ft == T_SINT64 then
        local odd = lo % 2 == 1
        lo = floor(lo / 2) + (hi % 2) * TWO31
        hi = floor(hi / 2)
        if odd then -- -(v + 1) as two's complement halves: bitwise not
            lo, hi = TWO32 - 1 - lo, TWO32 - 1 - hi
        end
        return int64_value(lo, hi, true), pos
    end
    return int64_value(lo, hi, ft == T_INT64), pos
end

-- Reads a fixed-width scalar (wire types 1 and 5) at pos, bounds checked by the caller.
local function get_fixed_value(ft, p, pos)
    -- NaNs are checked on the bytes and replaced by the canonical one: LuaJIT does not
    -- canonicalize a NaN read from cdata, and one whose bits look like a tagged value crashes
    -- the VM (payload and sign of a NaN are therefore not preserved).
    if ft == T_DOUBLE then
        local b6, b7 = p[pos + 6], p[pos + 7]
        if b7 >= 0x7f and band(b7, 0x7f) == 0x7f and b6 >= 0xf0 and
           (b6 > 0xf0 or p[pos] + p[pos + 1] + p[pos + 2] + p[pos + 3] + p[pos + 4]
                         + p[pos + 5] ~= 0) then
            return NAN
        end
        local b = conv.b
        b[0], b[1], b[2], b[3] = p[pos], p[pos + 1], p[pos + 2], p[pos + 3]
        b[4], b[5], b[6], b[7] = p[pos + 4], p[pos + 5], b6, b7
        return conv.d
    elseif ft == T_FLOAT then
        local b2, b3 = p[pos + 2], p[pos + 3]
        if band(b3, 0x7f) == 0x7f and b2 >= 0x80 and (b2 > 0x80 or p[pos] + p[pos + 1] ~= 0) then
            return NAN
        end
        local b = conv.b
        b[0], b[1], b[2], b[3] = p[pos], p[pos + 1], b2, b3
        return tonumber(conv.f[0])
    elseif ft == T_FIXED32 then
        return get_u32(p, pos)
    elseif ft == T_SFIXED32 then
        local v = get_u32(p, pos)
        if v >= TWO31 then v = v - TWO32 end
        return v
    end
    return int64_value(get_u32(p, pos), get_u32(p, pos + 4), ft == T_SFIXED64)
end

----------------------------------------------------------------------------------------------
-- Encoding: size pass (validates, records nested sizes in SZ) and write pass
----------------------------------------------------------------------------------------------

-- Sizes of nested messages, map entries and packed bodies, in the order both passes meet them.
local SZ = {}
local SZN = 0
-- The table, descriptor and size of the last size pass, for encode_into.
local last_md, last_tbl, last_n

local function fail(path, e)
    ERR = path .. ": " .. e
    return -1
end

local msg_size

-- Size of one element of a repeated/map field or of a singular value, with its tag. Message
-- values reserve a slot in SZ.
local function value_size(f, v, depth, path)
    local ft = f.type
    if ft == T_MESSAGE or ft == T_GROUP then
        if type(v) ~= "table" then
            return fail(path, "table expected, got " .. type(v))
        end
        local slot = SZN + 1
        SZN = slot
        local n = msg_size(f.msg, v, depth + 1)
        if n < 0 then return -1 end
        SZ[slot] = n
        if ft == T_GROUP then
            return 2 * f.tagsize + n
        end
        return f.tagsize + vsize(n) + n
    end
    local n, e = scalar_size(f, ft, v)
    if n == nil then return fail(path, e) end
    return f.tagsize + n
end

local function map_size(f, m, depth)
    if type(m) ~= "table" then
        return fail(f.full, "table expected, got " .. type(m))
    end
    local kf, vf = f.key, f.value
    local total = 0
    for k, v in pairs(m) do
        local slot = SZN + 1
        SZN = slot
        local ks, e = scalar_size(kf, kf.type, k)
        if ks == nil then
            return fail(f.full, "key " .. tostring(k) .. ": " .. e)
        end
        local vs = value_size(vf, v, depth, f.full .. "[" .. tostring(k) .. "]")
        if vs < 0 then return -1 end
        local n = 1 + ks + vs
        SZ[slot] = n
        total = total + f.tagsize + vsize(n) + n
    end
    return total
end

local function repeated_size(f, a, depth)
    if type(a) ~= "table" then
        return fail(f.full, "table expected, got " .. type(a))
    end
    local cnt = #a
    if cnt == 0 then return 0 end
    if f.packed then
        local ft = f.type
        local slot = SZN + 1
        SZN = slot
        local body = 0
        for i = 1, cnt do
            local v = a[i]
            if v == nil then return fail(f.full .. "[" .. i .. "]", "nil element") end
            local n, e = scalar_size(f, ft, v)
            if n == nil then return fail(f.full .. "[" .. i .. "]", e) end
            body = body + n
        end
        SZ[slot] = body
        return f.ptagsize + vsize(body) + body
    end
    local total = 0
    for i = 1, cnt do
        local v = a[i]
        if v == nil then return fail(f.full .. "[" .. i .. "]", "nil element") end
        local n = value_size(f, v, depth, f.full .. "[" .. i .. "]")
        if n < 0 then return -1 end
        total = total + n
    end
    return total
end

msg_size = function(md, t, depth)
    if depth > MAX_DEPTH then
        return fail(md.name, "nesting deeper than " .. MAX_DEPTH)
    end
    local fields = md.fields
    local total = 0
    for i = 1, md.nfields do
        local f = fields[i]
        local v = t[f.name]
        if v ~= nil then
            local n
            if f.map then
                n = map_size(f, v, depth)
            elseif f.repeated then
                n = repeated_size(f, v, depth)
            elseif f.implicit then
                local e
                n, e = scalar_size(f, f.type, v)
                if n == nil then return fail(f.full, e) end
                if is_zero(f, f.type, v) then
                    n = 0
                else
                    n = n + f.tagsize
                end
            else
                n = value_size(f, v, depth, f.full)
            end
            if n < 0 then return -1 end
            total = total + n
        elseif f.required then
            return fail(f.full, "required field missing")
        end
    end
    local oneofs = md.oneofs
    for i = 1, #oneofs do
        local o = oneofs[i]
        local first = 0 -- numbers only in the loop: no type-unstable loop variable
        for j = 1, #o do
            if t[o[j].name] ~= nil then
                if first > 0 then
                    return fail(md.name .. "." .. o.name, "more than one field set ("
                                .. o[first].name .. ", " .. o[j].name .. ")")
                end
                first = j
            end
        end
    end
    return total
end

local msg_write

local function value_write(p, pos, f, v)
    local ft = f.type
    if ft == T_MESSAGE then
        pos = put_varint(p, pos, f.tag)
        local slot = SZN + 1
        SZN = slot
        pos = put_varint(p, pos, SZ[slot])
        return msg_write(p, pos, f.msg, v)
    elseif ft == T_GROUP then
        pos = put_varint(p, pos, f.tag)
        SZN = SZN + 1
        pos = msg_write(p, pos, f.msg, v)
        return put_varint(p, pos, f.tag + 1)
    end
    pos = put_varint(p, pos, f.tag)
    return put_scalar(p, pos, f, ft, v)
end

local function map_write(p, pos, f, m)
    local kf, vf = f.key, f.value
    for k, v in pairs(m) do
        pos = put_varint(p, pos, f.tag)
        local slot = SZN + 1
        SZN = slot
        pos = put_varint(p, pos, SZ[slot])
        p[pos] = kf.tag
        pos = put_scalar(p, pos + 1, kf, kf.type, k)
        pos = value_write(p, pos, vf, v)
    end
    return pos
end

local function repeated_write(p, pos, f, a)
    local cnt = #a
    if cnt == 0 then return pos end
    if f.packed then
        local ft = f.type
        pos = put_varint(p, pos, f.ptag)
        local slot = SZN + 1
        SZN = slot
        pos = put_varint(p, pos, SZ[slot])
        for i = 1, cnt do
            pos = put_scalar(p, pos, f, ft, a[i])
        end
        return pos
    end
    for i = 1, cnt do
        pos = value_write(p, pos, f, a[i])
    end
    return pos
end

msg_write = function(p, pos, md, t)
    local fields = md.fields
    for i = 1, md.nfields do
        local f = fields[i]
        local v = t[f.name]
        if v ~= nil then
            if f.map then
                pos = map_write(p, pos, f, v)
            elseif f.repeated then
                pos = repeated_write(p, pos, f, v)
            elseif f.implicit then
                if not is_zero(f, f.type, v) then
                    pos = put_varint(p, pos, f.tag)
                    pos = put_scalar(p, pos, f, f.type, v)
                end
            else
                pos = value_write(p, pos, f, v)
            end
        end
    end
    return pos
end

local function check_md(md, fname)
    if type(md) ~= "table" or md.fields == nil then
        error("bad argument #1 to pb." .. fname .. " (message descriptor expected, got "
              .. type(md) .. ")", 3)
    end
end

-- pb.size(md, tbl) -> n | nil, err
local function size(md, t)
    check_md(md, "size")
    if type(t) ~= "table" then
        return nil, md.name .. ": table expected, got " .. type(t)
    end
    SZN = 0
    local n = msg_size(md, t, 1)
    if n < 0 then
        last_tbl = nil
        return nil, ERR
    end
    last_md, last_tbl, last_n = md, t, n
    return n
end
_M.size = size

-- pb.encode_into(md, tbl, ptr, n) -> n: writes exactly n bytes at ptr. n comes from pb.size
-- called just before with the same table (not modified since).
local function encode_into(md, t, ptr, n)
    if md ~= last_md or t ~= last_tbl or n ~= last_n then
        check_md(md, "encode_into")
        local m, err = size(md, t)
        if m == nil then
            error("pb.encode_into: " .. err, 2)
        end
        if m ~= n then
            error("pb.encode_into: the message takes " .. m .. " bytes, not " .. tostring(n), 2)
        end
    end
    last_tbl = nil
    if type(ptr) ~= "cdata" then
        error("bad argument #3 to pb.encode_into (pointer expected, got " .. type(ptr) .. ")", 2)
    end
    check_buffer("encode_into", ptr, n, 3)
    local p = ffi_cast(u8p_t, ptr)
    SZN = 0
    local pos = msg_write(p, 0, md, t)
    if pos ~= n then -- a bug, or a table modified between pb.size and pb.encode_into
        error("pb.encode_into: wrote " .. pos .. " bytes, expected " .. n, 2)
    end
    return n
end
_M.encode_into = encode_into

local scratch, scratch_len = nil, 0

-- pb.encode(md, tbl) -> string | nil, err
function _M.encode(md, t)
    local n, err = size(md, t)
    if n == nil then return nil, err end
    if n > scratch_len then
        scratch_len = n < 256 and 256 or n
        scratch = ffi_new("uint8_t[?]", scratch_len)
    end
    encode_into(md, t, scratch, n)
    return ffi_string(scratch, n)
end

----------------------------------------------------------------------------------------------
-- Decoding
----------------------------------------------------------------------------------------------

-- C-style unescaping of a bytes default_value ("\001\xff\n").
local ESC = { n = "\n", r = "\r", t = "\t", a = "\a", b = "\b", f = "\f", v = "\v",
              ["\\"] = "\\", ["'"] = "'", ['"'] = '"', ["?"] = "?" }
local function unescape(s)
    s = s:gsub("\\([0-7][0-7]?[0-7]?)", function(o) return string.char(tonumber(o, 8) % 256) end)
    s = s:gsub("\\[xX](%x%x?)", function(h) return string.char(tonumber(h, 16)) end)
    return (s:gsub("\\(.)", function(c) return ESC[c] or c end))
end

-- The decoded-table value of a field's proto2 default_value text, or of its zero value.
local function default_value(f, text)
    local ft = f.type
    if ft == T_STRING then return text or "" end
    if ft == T_BYTES then return text and unescape(text) or "" end
    if ft == T_BOOL then return text == "true" end
    if ft == T_ENUM then
        if text then
            return ENUM_AS_NAME and text or f.enum.by_name[text]
        end
        return ENUM_AS_NAME and f.enum.first or 0
    end
    if ft == T_DOUBLE or ft == T_FLOAT then
        if text == "inf" then return huge end
        if text == "-inf" then return -huge end
        if text == "nan" then return 0 / 0 end
        return tonumber(text) or 0
    end
    if text == nil then return 0 end
    if ft == T_INT64 or ft == T_UINT64 or ft == T_SINT64 or ft == T_FIXED64
       or ft == T_SFIXED64 then
        local signed = ft ~= T_UINT64 and ft ~= T_FIXED64
        local lo, hi = parts64(text, signed)
        if lo == nil then return 0 end
        return int64_value(lo, hi, signed)
    end
    return tonumber(text) or 0
end


local function dfail(md, e)
    ERR = md.name .. ": " .. e
    return nil
end

-- Skips a field of wire type wt whose tag ended at pos. Returns the new pos or nil.
local function skip_field(md, p, pos, lim, wt, num, depth)
    if wt == 0 then
        local lo
        lo, _, pos = get_varint(p, pos, lim)
        if lo == nil then return dfail(md, "truncated varint") end
        return pos
    elseif wt == 1 then
        pos = pos + 8
    elseif wt == 5 then
        pos = pos + 4
    elseif wt == 2 then
        local n, hi
        n, hi, pos = get_varint(p, pos, lim)
        if n == nil then return dfail(md, "truncated length") end
        if hi ~= 0 then return dfail(md, "length out of range") end
        pos = pos + n
    elseif wt == 3 then
        if depth > MAX_DEPTH then return dfail(md, "groups nested too deep") end
        while true do
            if pos >= lim then return dfail(md, "unterminated group " .. num) end
            local tag, hi
            tag, hi, pos = get_varint(p, pos, lim)
            if tag == nil or hi ~= 0 then return dfail(md, "bad tag") end
            local w, n = tag % 8, floor(tag / 8)
            if w == 4 then
                if n ~= num then return dfail(md, "mismatched end group") end
                return pos
            end
            pos = skip_field(md, p, pos, lim, w, n, depth + 1)
            if pos == nil then return nil end
        end
    else
        return dfail(md, "invalid wire type " .. wt)
    end
    if pos > lim then return dfail(md, "truncated field " .. num) end
    return pos
end

local decode_msg

-- Decodes one value of field f (wire type f.wt) at pos; returns value, pos or nil.
local function get_value(f, p, pos, lim, depth)
    local ft = f.type
    local wt = f.wt
    if wt == 0 then
        local v
        v, pos = get_varint_value(f, ft, p, pos, lim)
        if v == nil then return dfail(f.md, "truncated varint in " .. f.name) end
        return v, pos
    elseif wt == 2 then
        local n, hi
        if pos >= lim then return dfail(f.md, "truncated field " .. f.name) end
        local b = p[pos]
        if b < 128 then
            n, pos = b, pos + 1
        else
            n, hi, pos = get_varint(p, pos, lim)
            if n == nil or hi ~= 0 then return dfail(f.md, "bad length of " .. f.name) end
        end
        local e = pos + n
        if e > lim then return dfail(f.md, "truncated field " .. f.name) end
        if ft == T_MESSAGE then
            local t = decode_msg(f.msg, p, pos, e, depth + 1, -1)
            if t == nil then return nil end
            return t, e
        end
        return ffi_string(p + pos, n), e
    elseif wt == 1 then
        if pos + 8 > lim then return dfail(f.md, "truncated field " .. f.name) end
        return get_fixed_value(ft, p, pos), pos + 8
    elseif wt == 5 then
        if pos + 4 > lim then return dfail(f.md, "truncated field " .. f.name) end
        return get_fixed_value(ft, p, pos), pos + 4
    end
    -- group
    return decode_msg(f.msg, p, pos, lim, depth + 1, f.number)
end

-- Decodes a map entry of field f in [pos, e) into m.
local function get_entry(f, m, p, pos, e, depth)
    local kf, vf = f.key, f.value
    local k, v
    while pos < e do
        local tag = p[pos]
        pos = pos + 1
        if tag >= 128 then
            local hi
            tag, hi, pos = get_varint(p, pos - 1, e)
            if tag == nil or hi ~= 0 then return dfail(f.msg, "bad tag") end
        end
        local wt, num = tag % 8, floor(tag / 8)
        if num == 1 and wt == kf.wt then
            k, pos = get_value(kf, p, pos, e, depth)
        elseif num == 2 and wt == vf.wt then
            v, pos = get_value(vf, p, pos, e, depth)
        else
            pos = skip_field(f.msg, p, pos, e, wt, num, depth)
        end
        if pos == nil then return nil end
    end
    if k == nil then k = default_value(kf, nil) end
    if type(k) == "cdata" then -- 64-bit keys beyond 2^53: decimal strings (cdata keys are
        local s = tostring(k)   -- compared by identity)
        k = sub(s, 1, #s - (ffi_istype(uint64_t, k) and 3 or 2))
    end
    if v == nil then
        if vf.type == T_MESSAGE then
            v = new_tab(0, 0)
        else
            v = default_value(vf, nil)
        end
    end
    m[k] = v
    return true
end

local function fill_defaults(md, t)
    local d = md.defaults
    for i = 1, #d do
        local f = d[i]
        if t[f.name] == nil then
            t[f.name] = default_value(f, f.default_text)
        end
    end
end

decode_msg = function(md, p, pos, lim, depth, group)
    if depth > MAX_DEPTH then
        return dfail(md, "nesting deeper than " .. MAX_DEPTH)
    end
    local t = new_tab(0, md.nfields < 8 and md.nfields or 8)
    local dense, ndense, sparse = md.dense, md.ndense, md.sparse
    while pos < lim do
        local tag = p[pos]
        pos = pos + 1
        if tag >= 128 then
            local hi
            tag, hi, pos = get_varint(p, pos - 1, lim)
            if tag == nil or hi ~= 0 then return dfail(md, "bad tag") end
        end
        local wt = band(tag, 7)
        local num = floor(tag / 8)
        local f
        if num >= 1 and num <= ndense then
            f = dense[num]
        else
            f = sparse[num + 0.5]
        end
        if not f then
            if wt == 4 then
                if num == group then
                    if FILL_DEFAULTS then fill_defaults(md, t) end
                    return t, pos
                end
                return dfail(md, "unexpected end group " .. num)
            end
            if num == 0 then return dfail(md, "field number 0") end
            pos = skip_field(md, p, pos, lim, wt, num, depth)
            if pos == nil then return nil end
        elseif wt == f.wt then
            if f.map then
                local n, hi
                n, hi, pos = get_varint(p, pos, lim)
                if n == nil or hi ~= 0 then return dfail(md, "bad length of " .. f.name) end
                local e = pos + n
                if e > lim then return dfail(md, "truncated field " .. f.name) end
                local m = t[f.name]
                if m == nil then
                    m = new_tab(0, 4)
                    t[f.name] = m
                end
                if not get_entry(f, m, p, pos, e, depth + 1) then return nil end
                pos = e
            else
                local v
                v, pos = get_value(f, p, pos, lim, depth)
                if pos == nil then return nil end
                if f.repeated then
                    local a = t[f.name]
                    if a == nil then
                        t[f.name] = { v }
                    else
                        a[#a + 1] = v
                    end
                else
                    local o = f.oneof
                    if o ~= nil then
                        for j = 1, #o do
                            t[o[j].name] = nil
                        end
                    end
                    t[f.name] = v
                end
            end
        elseif wt == 2 and f.packable then -- packed (also accepted when declared unpacked)
            local n, hi
            n, hi, pos = get_varint(p, pos, lim)
            if n == nil or hi ~= 0 then return dfail(md, "bad length of " .. f.name) end
            local e = pos + n
            if e > lim then return dfail(md, "truncated field " .. f.name) end
            local a = t[f.name]
            if a == nil then
                a = new_tab(f.wt == 0 and n or n / (f.wt == 1 and 8 or 4), 0)
                t[f.name] = a
            end
            local k = #a
            local ft = f.type
            if f.wt == 0 then
                while pos < e do
                    local v
                    v, pos = get_varint_value(f, ft, p, pos, e)
                    if v == nil then return dfail(md, "truncated varint in " .. f.name) end
                    k = k + 1
                    a[k] = v
                end
            else
                local w = f.wt == 1 and 8 or 4
                if n % w ~= 0 then return dfail(md, "bad packed length of " .. f.name) end
                while pos < e do
                    k = k + 1
                    a[k] = get_fixed_value(ft, p, pos)
                    pos = pos + w
                end
            end
        elseif wt == 4 and num == group then
            if FILL_DEFAULTS then fill_defaults(md, t) end
            return t, pos
        else
            return dfail(md, "wire type " .. wt .. " of field " .. f.name .. " ("
                         .. TYPE_NAME[f.type] .. ")")
        end
    end
    if pos ~= lim then return dfail(md, "truncated message") end
    if group >= 0 then return dfail(md, "unterminated group") end
    if FILL_DEFAULTS then fill_defaults(md, t) end
    return t, pos
end

-- pb.decode(md, ptr, len) -> table | nil, err. ptr: const uint8_t * (or a Lua string, len
-- optional).
function _M.decode(md, ptr, len)
    check_md(md, "decode")
    if type(ptr) == "string" then
        len = len or #ptr
        if type(len) ~= "number" or not (len >= 0 and len <= #ptr) or len % 1 ~= 0 then
            error("bad argument #3 to pb.decode (a length from 0 to " .. #ptr
                  .. " expected: longer than the string, or not one)", 2)
        end
    elseif type(ptr) ~= "cdata" then
        error("bad argument #2 to pb.decode (string or pointer expected, got " .. type(ptr)
              .. ")", 2)
    else
        check_buffer("decode", ptr, len, 2)
    end
    local t = decode_msg(md, ffi_cast(cu8p_t, ptr), 0, len, 1, -1)
    if t == nil then return nil, ERR end
    return t
end

----------------------------------------------------------------------------------------------
-- Registry: raw descriptors by full name, prepared descriptors on demand
----------------------------------------------------------------------------------------------

local function new_registry()
    return { types = {}, services = {}, prepared = {}, methods = {} }
end

local reg = new_registry()

local function strip_dot(s)
    if byte(s, 1) == 46 then return sub(s, 2) end
    return s
end

-- Registers the messages, enums and services of one FileDescriptorProto table.
local function register_file(r, file)
    local pkg = file.package or ""
    local syntax = file.syntax
    if syntax == nil or syntax == "" then syntax = "proto2" end
    local function add_enums(prefix, list)
        for i = 1, list and #list or 0 do
            local e = list[i]
            r.types[prefix .. e.name] = { kind = "enum", raw = e, full = prefix .. e.name }
        end
    end
    local function add_msgs(prefix, list)
        for i = 1, list and #list or 0 do
            local m = list[i]
            local full = prefix .. m.name
            r.types[full] = { kind = "message", raw = m, full = full, syntax = syntax }
            add_msgs(full .. ".", m.nested_type)
            add_enums(full .. ".", m.enum_type)
        end
    end
    local prefix = pkg == "" and "" or pkg .. "."
    add_msgs(prefix, file.message_type)
    add_enums(prefix, file.enum_type)
    local svcs = file.service
    for i = 1, svcs and #svcs or 0 do
        local s = svcs[i]
        local full = prefix .. s.name
        r.services[full] = s
        local ms = s.method
        for j = 1, ms and #ms or 0 do
            local m = ms[j]
            r.methods["/" .. full .. "/" .. m.name] = { raw = m }
        end
    end
end

local function prepare_enum(r, name)
    local key = "enum " .. name
    local ed = r.prepared[key]
    if ed then return ed end
    local e = r.types[name]
    if e == nil or e.kind ~= "enum" then return nil end
    -- name_of: keyed by number + 0.5, so that the table is a pure hash (an integer key that
    -- misses the array part of a mixed table is "NYI: mixed sparse/dense table" for the JIT).
    ed = { name = name, by_name = {}, by_number = {}, values = {}, name_of = {} }
    local vals = e.raw.value or {}
    for i = 1, #vals do
        local v = vals[i]
        local num = v.number or 0
        ed.by_name[v.name] = num
        if ed.by_number[num] == nil then
            ed.by_number[num] = v.name
            ed.name_of[num + 0.5] = v.name
        end
        ed.values[i] = v.name
    end
    ed.first = vals[1] and vals[1].name
    r.prepared[key] = ed
    return ed
end

local prepare_message
local pending_maps = {}
local prep_depth = 0

local function prepare_field(r, md, raw, syntax)
    local ft = raw.type
    local tname = raw.type_name and strip_dot(raw.type_name)
    if ft == nil or ft == 0 then
        local e = tname and r.types[tname]
        if e == nil then
            return nil, md.name .. "." .. raw.name .. ": unresolved type " .. tostring(tname)
        end
        ft = e.kind == "enum" and T_ENUM or T_MESSAGE
    end
    if WIRE[ft] == nil then
        return nil, md.name .. "." .. raw.name .. ": unknown field type " .. tostring(ft)
    end
    local label = raw.label or L_OPTIONAL
    local opts = raw.options
    local f = {
        md = md, name = raw.name, number = raw.number, full = md.name .. "." .. raw.name,
        type = ft, wt = WIRE[ft], json_name = raw.json_name,
        repeated = label == L_REPEATED, required = label == L_REQUIRED,
        proto3_optional = raw.proto3_optional == true,
    }
    f.tag = f.number * 8 + f.wt
    f.tagsize = vsize(f.tag)
    f.ptag = f.number * 8 + 2
    f.ptagsize = vsize(f.ptag)
    f.packable = f.repeated and f.wt ~= 2 and f.wt ~= 3
    if f.repeated and f.packable then
        if opts and opts.packed ~= nil then
            f.packed = opts.packed
        else
            f.packed = syntax == "proto3" or syntax == "editions"
        end
    else
        f.packed = false
    end
    if ft == T_MESSAGE or ft == T_GROUP then
        local sub_md, err = prepare_message(r, tname)
        if sub_md == nil then
            return nil, err or (f.full .. ": unresolved message type " .. tostring(tname))
        end
        f.msg = sub_md
        if f.repeated and sub_md.map_entry then
            -- key and value are set once every type of the cycle is prepared (the entry may
            -- still be in preparation here: map<string, Self>)
            f.map = true
            pending_maps[#pending_maps + 1] = f
        end
    elseif ft == T_ENUM then
        f.enum = prepare_enum(r, tname)
        if f.enum == nil then
            return nil, f.full .. ": unresolved enum type " .. tostring(tname)
        end
    end
    -- proto3 fields without presence: singular scalars outside oneofs, not `optional`.
    f.implicit = syntax == "proto3" and not f.repeated and ft ~= T_MESSAGE and ft ~= T_GROUP
                 and raw.oneof_index == nil and not f.proto3_optional
    f.scalar = ft ~= T_MESSAGE and ft ~= T_GROUP
    f.default_text = raw.default_value
    f.oneof_index = raw.oneof_index
    return f
end

local prepare_message_

prepare_message = function(r, name)
    name = strip_dot(name)
    local md = r.prepared[name]
    if md then return md end
    local e = r.types[name]
    if e == nil or e.kind ~= "message" then return nil end
    local depth = prep_depth
    prep_depth = depth + 1
    local err
    md, err = prepare_message_(r, name, e)
    prep_depth = depth
    if depth > 0 then return md, err end
    local pending = pending_maps
    pending_maps = {}
    if md == nil then return nil, err end
    for i = 1, #pending do
        local f = pending[i]
        f.key = f.msg.by_number[1]
        f.value = f.msg.by_number[2]
        if f.key == nil or f.value == nil then
            return nil, f.full .. ": map entry without key or value"
        end
    end
    return md
end

prepare_message_ = function(r, name, e)
    local md
    local raw = e.raw
    local opts = raw.options
    md = { name = name, fields = {}, nfields = 0, by_number = {}, by_name = {}, oneofs = {},
           defaults = {}, syntax = e.syntax, map_entry = (opts and opts.map_entry) == true }
    r.prepared[name] = md -- before the fields: recursive types resolve to this table
    local rf = raw.field or {}
    local fields = {}
    for i = 1, #rf do
        local f, err = prepare_field(r, md, rf[i], e.syntax)
        if f == nil then
            r.prepared[name] = nil
            return nil, err
        end
        fields[i] = f
    end
    sort(fields, function(a, b) return a.number < b.number end)
    local decl = raw.oneof_decl or {}
    local groups = {}
    for i = 1, #fields do
        local f = fields[i]
        md.by_number[f.number] = f
        md.by_name[f.name] = f
        local oi = f.oneof_index
        if oi ~= nil and not f.proto3_optional then
            local o = groups[oi]
            if o == nil then
                o = { name = decl[oi + 1] and decl[oi + 1].name or tostring(oi) }
                groups[oi] = o
                md.oneofs[#md.oneofs + 1] = o
            end
            o[#o + 1] = f
            f.oneof = o
        end
        if f.scalar and not f.repeated and f.oneof == nil and not f.proto3_optional
           and (e.syntax ~= "proto3" or f.implicit) then
            md.defaults[#md.defaults + 1] = f
        end
    end
    md.fields = fields
    md.nfields = #fields
    -- Decoder's lookup by number: an array without holes (false for gaps) for numbers up to
    -- 256, a pure hash keyed by number + 0.5 above (see prepare_enum).
    local ndense = 0
    for i = 1, #fields do
        if fields[i].number <= 256 and fields[i].number > ndense then ndense = fields[i].number end
    end
    md.ndense = ndense
    md.dense = new_tab(ndense, 0)
    for i = 1, ndense do md.dense[i] = md.by_number[i] or false end
    md.sparse = {}
    for i = 1, #fields do
        if fields[i].number > ndense then md.sparse[fields[i].number + 0.5] = fields[i] end
    end
    return md
end

local function prepare_method(r, path)
    local m = r.methods[path]
    if m == nil then return nil end
    if m.prepared then return m.prepared end
    local raw = m.raw
    local input, e1 = prepare_message(r, raw.input_type or "")
    if input == nil then return nil, e1 or ("unresolved input type " .. tostring(raw.input_type)) end
    local output, e2 = prepare_message(r, raw.output_type or "")
    if output == nil then
        return nil, e2 or ("unresolved output type " .. tostring(raw.output_type))
    end
    m.prepared = { input = input, output = output, path = path,
                   client_streaming = raw.client_streaming == true,
                   server_streaming = raw.server_streaming == true }
    return m.prepared
end

----------------------------------------------------------------------------------------------
-- Bootstrap: the part of google/protobuf/descriptor.proto this module reads
----------------------------------------------------------------------------------------------

local function F(name, number, ftype, type_name, label)
    return { name = name, number = number, type = ftype, label = label or L_OPTIONAL,
             type_name = type_name }
end
local function R(name, number, ftype, type_name)
    return F(name, number, ftype, type_name, L_REPEATED)
end
local G = ".google.protobuf."
local BOOT = {
    name = "google/protobuf/descriptor.proto", package = "google.protobuf", syntax = "proto2",
    message_type = {
        { name = "FileDescriptorSet", field = { R("file", 1, T_MESSAGE, G .. "FileDescriptorProto") } },
        { name = "FileDescriptorProto", field = {
            F("name", 1, T_STRING), F("package", 2, T_STRING), R("dependency", 3, T_STRING),
            R("message_type", 4, T_MESSAGE, G .. "DescriptorProto"),
            R("enum_type", 5, T_MESSAGE, G .. "EnumDescriptorProto"),
            R("service", 6, T_MESSAGE, G .. "ServiceDescriptorProto"),
            F("syntax", 12, T_STRING) } },
        { name = "DescriptorProto", field = {
            F("name", 1, T_STRING), R("field", 2, T_MESSAGE, G .. "FieldDescriptorProto"),
            R("nested_type", 3, T_MESSAGE, G .. "DescriptorProto"),
            R("enum_type", 4, T_MESSAGE, G .. "EnumDescriptorProto"),
            F("options", 7, T_MESSAGE, G .. "MessageOptions"),
            R("oneof_decl", 8, T_MESSAGE, G .. "OneofDescriptorProto") } },
        { name = "MessageOptions", field = { F("map_entry", 7, T_BOOL) } },
        { name = "FieldDescriptorProto", field = {
            F("name", 1, T_STRING), F("number", 3, T_INT32), F("label", 4, T_INT32),
            F("type", 5, T_INT32), F("type_name", 6, T_STRING), F("default_value", 7, T_STRING),
            F("options", 8, T_MESSAGE, G .. "FieldOptions"), F("oneof_index", 9, T_INT32),
            F("json_name", 10, T_STRING), F("proto3_optional", 17, T_BOOL) } },
        { name = "FieldOptions", field = { F("packed", 2, T_BOOL) } },
        { name = "OneofDescriptorProto", field = { F("name", 1, T_STRING) } },
        { name = "EnumDescriptorProto", field = {
            F("name", 1, T_STRING), R("value", 2, T_MESSAGE, G .. "EnumValueDescriptorProto") } },
        { name = "EnumValueDescriptorProto", field = { F("name", 1, T_STRING), F("number", 2, T_INT32) } },
        { name = "ServiceDescriptorProto", field = {
            F("name", 1, T_STRING), R("method", 2, T_MESSAGE, G .. "MethodDescriptorProto") } },
        { name = "MethodDescriptorProto", field = {
            F("name", 1, T_STRING), F("input_type", 2, T_STRING), F("output_type", 3, T_STRING),
            F("client_streaming", 5, T_BOOL), F("server_streaming", 6, T_BOOL) } },
    },
}
local boot = new_registry()
register_file(boot, BOOT)
local FDS = assert(prepare_message(boot, "google.protobuf.FileDescriptorSet"))

----------------------------------------------------------------------------------------------
-- Public API
----------------------------------------------------------------------------------------------

-- Decodes with the options the bootstrap needs (numbers as numbers, no defaults).
local function decode_descriptor(ptr, len)
    local m, e, d = INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS
    INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS = 1, true, false
    local set = decode_msg(FDS, ffi_cast(cu8p_t, ptr), 0, len, 1, -1)
    INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS = m, e, d
    if set == nil then
        return nil, "bad FileDescriptorSet: " .. ERR
    end
    return set
end

-- Registers a decoded FileDescriptorSet; checks that every message of it prepares.
local function register_set(set)
    local files = set.file or {}
    -- Into a copy first: a set with an unresolvable reference changes nothing.
    local r = new_registry()
    for k, v in pairs(reg.types) do r.types[k] = v end
    for k, v in pairs(reg.services) do r.services[k] = v end
    for k, v in pairs(reg.methods) do r.methods[k] = { raw = v.raw } end
    for i = 1, #files do
        register_file(r, files[i])
    end
    for name, e in pairs(r.types) do
        if e.kind == "message" then
            local md, err = prepare_message(r, name)
            if md == nil then
                return nil, err or ("cannot prepare " .. name)
            end
        end
    end
    reg = r
    return true
end

-- pb.load_descriptor(bytes[, len]) -> true | nil, err. bytes: a serialized
-- google.protobuf.FileDescriptorSet (Lua string, or a pointer with len).
function _M.load_descriptor(bytes, len)
    if type(bytes) == "string" then
        len = len or #bytes
        if type(len) ~= "number" or not (len >= 0 and len <= #bytes) or len % 1 ~= 0 then
            error("bad argument #2 to pb.load_descriptor (a length from 0 to " .. #bytes
                  .. " expected)", 2)
        end
    elseif type(bytes) ~= "cdata" then
        error("bad argument #1 to pb.load_descriptor (string or pointer expected)", 2)
    else
        check_buffer("load_descriptor", bytes, len, 1)
    end
    local set, err = decode_descriptor(bytes, len)
    if set == nil then return nil, err end
    return register_set(set)
end

local lib
local proto_out = ffi_new("uint8_t *[1]")
local proto_len = ffi_new("size_t[1]")

local function load_lib()
    if lib then return lib end
    local cdefs = {
        "int grpc_zc_proto_compile(const char *files, const char *import_paths, "
            .. "uint8_t **out, size_t *out_len);",
        "void grpc_zc_free(void *p);",
    }
    for i = 1, #cdefs do
        pcall(ffi.cdef, cdefs[i]) -- already declared by another module: fine
    end
    -- In nginx, the host library (loaded with global symbols by resty_ffi) defines the
    -- ngx_http_lua_ffi_* functions the runtime library is linked against.
    if ngx ~= nil and package.loaded.resty_ffi == nil then
        pcall(require, "resty_ffi")
    end
    -- Next to the Lua modules' native libraries first (lua_package_cpath), as resty_ffi finds
    -- the host, then the dynamic loader's own search.
    local path = _M.libpath or package.searchpath("libresty_grpc_zc", package.cpath)
                 or package.searchpath("resty_grpc_zc", package.cpath) or "resty_grpc_zc"
    local ok, l = pcall(ffi.load, path)
    if not ok then
        return nil, "cannot load libresty_grpc_zc: " .. tostring(l)
    end
    lib = l
    return lib
end

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- pb.load_proto(path_or_list, { import_paths = {...} }) -> true | nil, err
function _M.load_proto(files, opts)
    if type(files) == "string" then
        files = { files }
    elseif type(files) ~= "table" then
        error("bad argument #1 to pb.load_proto (path or list of paths expected)", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #2 to pb.load_proto (table expected)", 2)
    end
    local imports = opts and opts.import_paths
    if imports == nil then -- protoc-like convenience: each file's directory
        imports = {}
        local seen = {}
        for i = 1, #files do
            local d = dirname(files[i])
            if not seen[d] then
                seen[d] = true
                imports[#imports + 1] = d
            end
        end
    elseif type(imports) == "string" then
        imports = { imports }
    end
    local l, err = load_lib()
    if l == nil then return nil, err end
    local rc = l.grpc_zc_proto_compile(concat(files, "\n"), concat(imports, "\n"),
                                       proto_out, proto_len)
    local out, n = proto_out[0], tonumber(proto_len[0])
    if rc ~= 0 then
        local msg = out ~= nil and ffi_string(out, n) or ("grpc_zc_proto_compile: error " .. rc)
        l.grpc_zc_free(out)
        return nil, msg
    end
    local set
    set, err = decode_descriptor(out, n)
    l.grpc_zc_free(out)
    if set == nil then return nil, err end
    return register_set(set)
end

-- pb.message(full_name) -> descriptor | nil[, err]
function _M.message(name)
    if type(name) ~= "string" then
        error("bad argument #1 to pb.message (string expected)", 2)
    end
    return prepare_message(reg, name)
end

-- pb.enum(full_name) -> { name, by_name = {NAME = n}, by_number = {[n] = NAME} } | nil
function _M.enum(name)
    if type(name) ~= "string" then
        error("bad argument #1 to pb.enum (string expected)", 2)
    end
    return prepare_enum(reg, strip_dot(name))
end

-- pb.method("/pkg.Service/Method") -> { input, output, client_streaming, server_streaming }
function _M.method(path)
    if type(path) ~= "string" then
        error("bad argument #1 to pb.method (string expected)", 2)
    end
    return prepare_method(reg, path)
end

-- pb.option{ int64 = "auto" | "cdata" | "string", enum = "name" | "number",
--            defaults = true | false } -> previous options
function _M.option(o)
    local prev = { int64 = ({ "auto", "cdata", "string" })[INT64_MODE],
                   enum = ENUM_AS_NAME and "name" or "number", defaults = FILL_DEFAULTS }
    if o == nil then return prev end
    if type(o) ~= "table" then
        error("bad argument #1 to pb.option (table expected)", 2)
    end
    if o.int64 ~= nil then
        local m = ({ auto = 1, cdata = 2, string = 3 })[o.int64]
        if m == nil then error("pb.option: int64 must be auto, cdata or string", 2) end
        INT64_MODE = m
    end
    if o.enum ~= nil then
        if o.enum ~= "name" and o.enum ~= "number" then
            error("pb.option: enum must be name or number", 2)
        end
        ENUM_AS_NAME = o.enum == "name"
    end
    if o.defaults ~= nil then
        FILL_DEFAULTS = o.defaults and true or false
    end
    return prev
end

-- pb.clear(): forgets every loaded type (tests).
function _M.clear()
    reg = new_registry()
end

return _M
