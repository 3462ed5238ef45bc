-- resty.grpc_zc.pb.encode: Lua tables -> protobuf bytes, in two passes.
--
-- size(md, tbl) validates the table and measures it (nested sizes recorded in SZ, in the order
-- both passes meet them); encode_into(md, tbl, ptr, n) writes exactly those n bytes at a
-- pointer (an arena slot) and cannot fail halfway. Data errors return nil, err naming the field;
-- misuse raises (see resty.grpc_zc.pb).

local ffi = require "ffi"
local lib = require "resty.grpc_zc.lib"
local wire = require "resty.grpc_zc.pb.wire"

local ffi_cast = ffi.cast
local ffi_copy = ffi.copy
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_istype = ffi.istype
local floor = math.floor
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local pairs = pairs
local format = string.format

local T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING,
      T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64, T_SINT32, T_SINT64 =
      wire.types()
local MAX_DEPTH, TWO32, TWO31, TWO53 = wire.MAX_DEPTH, wire.TWO32, wire.TWO31, wire.TWO53
local int64_t, uint64_t = wire.int64_t, wire.uint64_t
local vsize, vsize64, parts64, zigzag_parts = wire.vsize, wire.vsize64, wire.parts64,
                                              wire.zigzag_parts
local put_varint, put_varint64, put_u32 = wire.put_varint, wire.put_varint64, wire.put_u32
local put_double, put_float = wire.put_double, wire.put_float
local check_md, check_buffer = wire.check_md, wire.check_buffer
local u8p_t = ffi.typeof("uint8_t *")

-- Strings of at least BIG_COPY bytes are copied with the runtime's grpc_zc_copy when the
-- library can be loaded, else ffi.copy (resty.grpc_zc.lib).
local BIG_COPY = lib.BIG_COPY
local big_copy = lib.big_copy

local _M = { version = "0.1.0" }

-- Error of the last failing size step (functions return -1 and leave it here).
local ERR

----------------------------------------------------------------------------------------------
-- Scalars: validate and measure (size pass), write (write pass)
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
-- called just before with the same table (not modified since); ptr must be a non-NULL pointer
-- (or an array of at least n bytes), checked before anything is written.
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

return _M
