-- resty.grpc_zc.pb.decode: protobuf bytes -> Lua tables, read in place.
--
-- decode(md, ptr, len) reads a `const uint8_t *` (an arena slot, or a Lua string) without
-- copying more than the strings it returns. The decoding options (pb.option: 64-bit integers,
-- enums, proto2 defaults) live here. Data errors return nil, err; misuse raises (see
-- resty.grpc_zc.pb).

local ffi = require "ffi"
local bit = require "bit"
local wire = require "resty.grpc_zc.pb.wire"

local type, tostring, tonumber, error = type, tostring, tonumber, error
local ffi_cast, ffi_string, ffi_istype = ffi.cast, ffi.string, ffi.istype
local band = bit.band
local floor, huge = math.floor, math.huge
local sub, format = string.sub, string.format

local T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING,
      T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64, T_SINT32, T_SINT64 =
      wire.types()
local TYPE_NAME = wire.TYPE_NAME
local MAX_DEPTH, TWO32, TWO31, TWO53, NAN = wire.MAX_DEPTH, wire.TWO32, wire.TWO31, wire.TWO53,
                                            wire.NAN
local int64_t, uint64_t, conv, new_tab = wire.int64_t, wire.uint64_t, wire.conv, wire.new_tab
local get_varint, get_u32, parts64 = wire.get_varint, wire.get_u32, wire.parts64
local check_md, check_buffer, check_string_len = wire.check_md, wire.check_buffer,
                                                 wire.check_string_len
local cu8p_t = ffi.typeof("const uint8_t *")

local _M = { version = "0.1.0" }

-- Options (pb.option).
local INT64_MODE = 1 -- 1 auto, 2 cdata, 3 string
local ENUM_AS_NAME = true
local FILL_DEFAULTS = false

-- Error of the last failing size/decode step (functions return -1 / nil and leave it here).
local ERR

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
-- optional); a NULL or non-pointer cdata, or a bad length, raises before anything is read.
function _M.decode(md, ptr, len)
    check_md(md, "decode")
    if type(ptr) == "string" then
        len = len or #ptr
        check_string_len("decode", ptr, len, 3)
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

-- Decodes a message with the options descriptors need (numbers as numbers, enums as names, no
-- defaults), whatever pb.option says: table | nil, err.
function _M.decode_plain(md, ptr, len)
    local m, e, d = INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS
    INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS = 1, true, false
    local t = decode_msg(md, ffi_cast(cu8p_t, ptr), 0, len, 1, -1)
    INT64_MODE, ENUM_AS_NAME, FILL_DEFAULTS = m, e, d
    if t == nil then
        return nil, ERR
    end
    return t
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

return _M
