-- Lua half of t/pb_conformance.rs (not run by run.sh: it needs the cases the Rust test
-- generates). One process for all cases:
--
--   luajit lua/t/test_pb_conformance.lua DESCRIPTOR_SET CASES OUT
--
-- DESCRIPTOR_SET: a serialized FileDescriptorSet. CASES: repeated
--   u32 len + full message name | u32 len + bytes encoded by prost | u32 len + Lua table literal
-- (little-endian lengths). For each case the codec:
--   1. decodes prost's bytes into T1 and encodes T1 again: B1;
--   2. evaluates the literal (the same message as Lua tables, written by Rust) into T2, checks
--      T1 deep-equals T2, and encodes T2 with pb.size + pb.encode_into into FFI memory: B2;
--   3. decodes B1 with int64 = "string" and with int64 = "cdata", re-encodes each, decodes that
--      back in "auto" mode and checks it deep-equals T1.
-- OUT gets per case: u32 status (0 ok) | u32 len + B1 | u32 len + B2, or status 1 and u32 len +
-- an error text. Rust decodes B1 and B2 with prost and compares them with the original.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. package.path

local ffi = require "ffi"
local pb = require "resty.grpc_zc.pb"

local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local fds, cases, out_path = arg[1], arg[2], arg[3]
assert(pb.load_descriptor(slurp(fds)))
local input = slurp(cases)
local ip = ffi.cast("const uint8_t *", input)
local pos = 0

local function u32_at(p, i)
    return p[i] + p[i + 1] * 256 + p[i + 2] * 65536 + p[i + 3] * 16777216
end
local function blob()
    local n = u32_at(ip, pos)
    local s = input:sub(pos + 5, pos + 4 + n)
    pos = pos + 4 + n
    return s
end
local function u32(n)
    return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
                       math.floor(n / 16777216) % 256)
end

local function deep_eq(a, b, path)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
        return false, path .. ": " .. ta .. " vs " .. tb .. " (" .. tostring(a) .. " vs "
                      .. tostring(b) .. ")"
    end
    if ta == "number" then
        if a == b or (a ~= a and b ~= b) then
            if a == 0 and b == 0 and 1 / a ~= 1 / b then
                return false, path .. ": signed zero"
            end
            return true
        end
        return false, path .. ": " .. string.format("%.17g vs %.17g", a, b)
    elseif ta == "cdata" then
        if a == b and tostring(ffi.typeof(a)) == tostring(ffi.typeof(b)) then return true end
        return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
    elseif ta == "table" then
        for k, v in pairs(a) do
            local ok, e = deep_eq(v, b[k], path .. "." .. tostring(k))
            if not ok then return false, e end
        end
        for k in pairs(b) do
            if a[k] == nil then
                return false, path .. "." .. tostring(k) .. ": missing on the left"
            end
        end
        return true
    end
    if a == b then return true end
    return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
end

local buf_len = 1024
local buf = ffi.new("uint8_t[?]", buf_len)

local out = {}
local n_cases = 0
while pos < #input do
    local name, bytes, literal = blob(), blob(), blob()
    n_cases = n_cases + 1
    local ok, b1, b2 = pcall(function()
        local md = assert(pb.message(name), "unknown message " .. name)
        local t1 = assert(pb.decode(md, bytes))
        local b1 = assert(pb.encode(md, t1))
        local t2 = assert(loadstring("return " .. literal))()
        assert(deep_eq(t1, t2, name))
        local n = assert(pb.size(md, t2))
        if n > buf_len then
            buf_len = n
            buf = ffi.new("uint8_t[?]", n)
        end
        assert(pb.encode_into(md, t2, buf, n) == n)
        local b2 = ffi.string(buf, n)
        for _, mode in ipairs({ "string", "cdata" }) do
            pb.option { int64 = mode }
            local t3, e3 = pb.decode(md, b1)
            local b3, e4 = nil, nil
            if t3 then b3, e4 = pb.encode(md, t3) end
            pb.option { int64 = "auto" }
            assert(t3, e3)
            assert(b3, "re-encoding in int64 = " .. mode .. ": " .. tostring(e4))
            local t4 = assert(pb.decode(md, b3))
            local same, e5 = deep_eq(t4, t1, name)
            assert(same, "int64 = " .. mode .. ": " .. tostring(e5))
        end
        return b1, b2
    end)
    pb.option { int64 = "auto" }
    if ok then
        out[#out + 1] = u32(0) .. u32(#b1) .. b1 .. u32(#b2) .. b2
    else
        local e = tostring(b1)
        out[#out + 1] = u32(1) .. u32(#e) .. e
    end
end

local f = assert(io.open(out_path, "wb"))
f:write(table.concat(out))
f:close()
print(n_cases .. " cases")
