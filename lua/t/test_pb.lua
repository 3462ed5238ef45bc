-- Unit tests of lua/resty/grpc_zc/pb.lua (the protobuf codec), stock `luajit` CLI.
--
--   luajit lua/t/test_pb.lua [LIB [PRELOAD]]
--
-- LIB: the runtime library for pb.load_proto (default target/release/libresty_grpc_zc.so).
-- PRELOAD: a library loaded first with global symbols; outside nginx, the runtime's references
-- to lua-nginx-module's ngx_http_lua_ffi_* functions need definitions (lua/t/run.sh builds
-- stubs), since the library is linked with BIND_NOW.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. package.path
local repo = dir == "lua" and "." or dir:match("^(.*)/lua$") or "."

local ffi = require "ffi"
if arg[2] and arg[2] ~= "" then
    _G.PB_TEST_PRELOAD = ffi.load(arg[2], true) -- kept: a collected clib is dlclosed
end
local pb = require "resty.grpc_zc.pb"
pb.libpath = arg[1] or (repo .. "/target/release/libresty_grpc_zc.so")

local passed, failed = 0, 0
local function ok(cond, name, detail)
    if cond then
        passed = passed + 1
        print("ok - " .. name)
    else
        failed = failed + 1
        print("not ok - " .. name .. (detail ~= nil and ("\n  " .. tostring(detail)) or ""))
    end
end
local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
local function unhex(h)
    return (h:gsub("%s", ""):gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end
local function eq(a, b, name)
    ok(a == b, name, tostring(a) .. " ~= " .. tostring(b))
end

-- load_proto ---------------------------------------------------------------------------------

local r, err = pb.load_proto({ "pbtest.proto", "pbtest2.proto" },
                             { import_paths = { repo .. "/t/proto" } })
ok(r == true, "load_proto t/proto/pbtest*.proto", err)
if not r then
    print(string.format("%d passed, %d failed", passed, failed + 1))
    os.exit(1)
end
r, err = pb.load_proto(repo .. "/testkit/proto/helloworld.proto")
ok(r == true, "load_proto helloworld.proto (import path: its directory)", err)

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)
local function write(name, text)
    local f = assert(io.open(tmp .. "/" .. name, "w"))
    f:write(text)
    f:close()
end
write("bad.proto", 'syntax = "proto3";\nmessage M {\n  int32 x = 1\n}\n')
r, err = pb.load_proto("bad.proto", { import_paths = { tmp } })
ok(r == nil and err:find("^bad%.proto:4:1: ") ~= nil, "syntax error names file:line:col", err)
write("unres.proto", 'syntax = "proto3";\nmessage M {\n  Nope x = 1;\n}\n')
r, err = pb.load_proto("unres.proto", { import_paths = { tmp } })
ok(r == nil and err:find("^unres%.proto:3:") ~= nil and err:find("Nope") ~= nil,
   "unresolved type names file, line and type", err)
write("imp.proto", 'syntax = "proto3";\nimport "gone.proto";\n')
r, err = pb.load_proto("imp.proto", { import_paths = { tmp } })
ok(r == nil and err:find("imp.proto:2:", 1, true) ~= nil and err:find("gone.proto", 1, true),
   "missing import names the importing line", err)
r, err = pb.load_proto(tmp .. "/none.proto")
ok(r == nil and err:find("none.proto: file not found", 1, true) ~= nil, "missing file", err)
os.execute("rm -rf " .. tmp)
ok(pb.message("bad.M") == nil, "a failed load registers nothing")

r, err = pb.load_descriptor("\10\3abc")
ok(r == nil and err:find("FileDescriptorSet") ~= nil, "load_descriptor rejects garbage", err)

-- registry -----------------------------------------------------------------------------------

local Scalars = pb.message("pbtest.Scalars")
local Repeated = pb.message("pbtest.Repeated")
local Maps = pb.message("pbtest.Maps")
local Oneofs = pb.message("pbtest.Oneofs")
local Optionals = pb.message("pbtest.Optionals")
local Nested = pb.message("pbtest.Nested")
local All = pb.message("pbtest.All")
local P2 = pb.message("pbtest2.P2")
ok(Scalars and Repeated and Maps and Oneofs and Optionals and Nested and All and P2,
   "pb.message finds every test type")
ok(pb.message(".pbtest.Scalars") == Scalars, "pb.message: leading dot, cached descriptor")
ok(pb.message("pbtest.Nope") == nil, "pb.message: unknown type is nil")
ok(pb.message("pbtest.Nested.Inner") == Nested.by_name.inner.msg, "nested types resolve")
local m = pb.method("/pbtest.TestService/Bidi")
ok(m and m.input == All and m.output == All and m.client_streaming and m.server_streaming,
   "pb.method: bidi")
m = pb.method("/pbtest.TestService/ServerStream")
ok(m and not m.client_streaming and m.server_streaming and m.input == Scalars, "pb.method: server stream")
m = pb.method("/helloworld.Greeter/SayHello")
ok(m and m.input.name == "helloworld.HelloRequest" and not m.client_streaming, "pb.method: SayHello")
ok(pb.method("/helloworld.Greeter/Nope") == nil, "pb.method: unknown is nil")
local Color = pb.enum("pbtest.Color")
ok(Color and Color.by_name.BLUE == -3 and Color.by_number[2] == "GREEN", "pb.enum")

-- known encodings ----------------------------------------------------------------------------

local function enc(md, t)
    local s, e = pb.encode(md, t)
    return s and hex(s) or ("error: " .. e)
end
eq(enc(Scalars, { f_int32 = 150 }), "189601", "int32 150")
eq(enc(Scalars, { f_int32 = -1 }), "18ffffffffffffffffff01", "negative int32: 10-byte varint")
eq(enc(Scalars, { f_sint32 = -1, f_sint64 = -2 }), "38014003", "sint32/sint64 zigzag")
eq(enc(Scalars, { f_string = "testing" }), "720774657374696e67", "string")
eq(enc(Scalars, { f_bool = true, f_enum = "GREEN" }), "68018001" .. "02", "bool, enum by name")
eq(enc(Scalars, { f_enum = "BLUE" }), "8001fdffffffffffffffff01", "negative enum value")
eq(enc(Scalars, { f_fixed32 = 1, f_sfixed32 = -2 }), "4d010000005dfeffffff", "fixed32, sfixed32")
eq(enc(Scalars, { f_fixed64 = 1, f_sfixed64 = -1 }),
   "51" .. "0100000000000000" .. "61" .. "ffffffffffffffff", "fixed64, sfixed64")
eq(enc(Scalars, { f_double = 1.5, f_float = -2 }), "09000000000000f83f15000000c0", "double, float")
eq(enc(Scalars, { f_int32 = 0, f_string = "", f_bool = false, f_enum = "COLOR_UNSPECIFIED",
                  f_double = 0, f_uint64 = "0", f_bytes = "" }), "",
   "proto3: zero values are not written")
eq(enc(Optionals, { p_int32 = 0, p_string = "", p_bool = false }), "080012002800",
   "proto3 optional: zero values are written")
eq(enc(Repeated, { r_int32 = { 1, 2, 300 } }), "1a04" .. "0102ac02", "proto3 packs scalars")
eq(enc(Repeated, { u_int32 = { 1, 2 } }), "900101" .. "900102", "[packed = false]")
eq(enc(Repeated, { r_double = { 1 }, r_string = { "a", "" } }),
   "0a08000000000000f03f" .. "720161" .. "7200", "packed doubles, repeated strings")
eq(enc(Repeated, { r_int32 = {} }), "", "empty repeated field: nothing")
eq(enc(All, { far = "x" }), "faffffff0f0178", "field number 2^29-1")
eq(enc(Nested, { inner = {} }), "0a00", "empty nested message")
eq(enc(Nested, { inner = { x = 1, child = { x = 2 } } }), "0a06" .. "0801" .. "12020802", "nested")
eq(enc(Oneofs, { o_int32 = 0 }), "0800", "oneof member: zero is written")
eq(enc(P2, { req = 0 }), "0800", "proto2: required zero written")
eq(enc(P2, { req = 1, grp = { g = 2 } }), "0801" .. "7b" .. "8001" .. "02" .. "7c", "proto2 group")
eq(enc(P2, { req = 1, unpacked = { 1, 2 }, packed = { -1 } }), "0801" .. "5801" .. "5802" .. "620101",
   "proto2: unpacked by default, [packed = true]")
eq(enc(Maps, { m_string_int32 = { a = 1 } }), "0a05" .. "0a0161" .. "1001", "map entry")

-- 64-bit integers ----------------------------------------------------------------------------

eq(enc(Scalars, { f_int64 = "-9223372036854775808" }), "20" .. "80808080808080808001", "int64 min as string")
eq(enc(Scalars, { f_int64 = -9223372036854775807LL - 1 }), "20" .. "80808080808080808001", "int64 min as cdata")
eq(enc(Scalars, { f_uint64 = "18446744073709551615" }), "30" .. "ffffffffffffffffff01", "uint64 max as string")
eq(enc(Scalars, { f_uint64 = 18446744073709551615ULL }), "30" .. "ffffffffffffffffff01", "uint64 max as cdata")
eq(enc(Scalars, { f_uint64 = 2 ^ 63 }), "30" .. "80808080808080808001", "uint64 2^63 as a number")
eq(enc(Scalars, { f_sint64 = "-9223372036854775808" }), "40" .. "ffffffffffffffffff01", "sint64 min")
eq(enc(Scalars, { f_int64 = -1 }), "20" .. "ffffffffffffffffff01", "int64 -1")
local s = pb.encode(Scalars, { f_int64 = "9007199254740993", f_uint64 = "9007199254740992",
                               f_sint64 = -9007199254740993LL, f_fixed64 = 2 ^ 53 - 1,
                               f_sfixed64 = "-42" })
local d = pb.decode(Scalars, s)
ok(d.f_int64 == 9007199254740993LL and type(d.f_int64) == "cdata", "auto: 2^53+1 is int64 cdata")
ok(d.f_uint64 == 9007199254740992ULL and type(d.f_uint64) == "cdata", "auto: 2^53 is uint64 cdata")
ok(d.f_sint64 == -9007199254740993LL, "auto: -(2^53+1) is int64 cdata")
ok(d.f_fixed64 == 2 ^ 53 - 1 and type(d.f_fixed64) == "number", "auto: 2^53-1 is a number")
ok(d.f_sfixed64 == -42 and type(d.f_sfixed64) == "number", "auto: -42 is a number")
pb.option { int64 = "string" }
d = pb.decode(Scalars, s)
ok(d.f_int64 == "9007199254740993" and d.f_sint64 == "-9007199254740993"
   and d.f_fixed64 == "9007199254740991" and d.f_sfixed64 == "-42", "int64 = string")
pb.option { int64 = "cdata" }
d = pb.decode(Scalars, s)
ok(type(d.f_fixed64) == "cdata" and d.f_fixed64 == 9007199254740991ULL
   and type(d.f_sfixed64) == "cdata" and d.f_sfixed64 == -42LL, "int64 = cdata")
pb.option { int64 = "auto" }
d = pb.decode(Maps, pb.encode(Maps, { m_int64_msg = { ["-9223372036854775808"] = {}, [5] = {} } }))
ok(d.m_int64_msg["-9223372036854775808"] and d.m_int64_msg[5], "big 64-bit map keys decode as strings")

-- decoding -----------------------------------------------------------------------------------

local function dec(md, h)
    local t, e = pb.decode(md, unhex(h))
    return t, e
end
d = dec(Scalars, "18ffffffffffffffffff01" .. "8001fdffffffffffffffff01")
ok(d.f_int32 == -1 and d.f_enum == "BLUE", "negative int32, negative enum")
d = dec(Scalars, "8001" .. "4d")
ok(d.f_enum == 77, "unknown enum number decodes as the number")
d = dec(Scalars, "98060a" .. "a2060178" .. "a5060000803f" .. "a9060000000000000000"
        .. "ab06" .. "b0060a" .. "ac06" .. "189601")
ok(d and d.f_int32 == 150, "unknown fields (every wire type, a group) are skipped", select(2, dec(Scalars, "98060a")))
d = dec(Repeated, "1a03010203" .. "900101" .. "92010105")
ok(d and #d.r_int32 == 3 and d.u_int32[1] == 1 and d.u_int32[2] == 5,
   "packed accepted for an unpacked field")
d = dec(Repeated, "1801" .. "1802")
ok(d and d.r_int32[1] == 1 and d.r_int32[2] == 2, "unpacked accepted for a packed field")
d = dec(Oneofs, "0801" .. "12026869")
ok(d and d.o_int32 == nil and d.o_string == "hi", "oneof: the last member wins")
d = dec(Scalars, "09" .. "000000000000f87f")
ok(d and d.f_double ~= d.f_double, "NaN")
d = dec(Scalars, "15" .. "0000807f" .. "09" .. "000000000000f0ff")
ok(d and d.f_float == math.huge and d.f_double == -math.huge, "inf")
d = dec(Scalars, "")
ok(d and next(d) == nil, "empty message: empty table (absent fields are nil)")
d = dec(Nested, "0a00")
ok(d and type(d.inner) == "table" and next(d.inner) == nil, "empty nested message: empty table")
d = dec(Maps, "0a00" .. "3a020801")
ok(d and d.m_string_int32[""] == 0 and d.m_bool_enum[true] == "COLOR_UNSPECIFIED",
   "map entries with missing key/value get zero values")
d = dec(P2, "0801" .. "7b" .. "800102" .. "8a010178" .. "7c" .. "9301" .. "980101" .. "9401"
        .. "9301" .. "9401")
ok(d and d.grp and d.grp.g == 2 and d.grp.s == "x" and #d.rgrp == 2 and d.rgrp[1].v == 1
   and next(d.rgrp[2]) == nil, "proto2 groups, repeated groups")

local buf = ffi.new("uint8_t[3]", 0x18, 0x96, 0x01)
d = pb.decode(Scalars, buf, 3)
ok(d and d.f_int32 == 150, "decode from a const uint8_t * and a length")

pb.option { defaults = true }
d = dec(P2, "0801")
ok(d.opt_int32 == -7 and d.opt_string == "hello" and d.opt_bytes == "\1\255x"
   and d.opt_level == "MID" and d.opt_double == math.huge and d.opt_float == -1.5
   and d.opt_bool == true and d.opt_int64 == -9007199254740993LL
   and d.opt_uint64 == 18446744073709551615ULL and d.no_default_level == "LOW"
   and d.opt_sint32 == 0 and d.pick_a == nil and d.child == nil,
   "defaults = true: proto2 explicit defaults, first enum value, not oneofs or messages")
d = dec(Scalars, "")
ok(d.f_int32 == 0 and d.f_string == "" and d.f_enum == "COLOR_UNSPECIFIED" and d.f_bool == false,
   "defaults = true: proto3 zero values")
d = dec(Optionals, "")
ok(next(d) == nil, "defaults = true: proto3 optional fields stay absent")
pb.option { defaults = false }
pb.option { enum = "number" }
d = dec(Scalars, "8001fdffffffffffffffff01")
ok(d.f_enum == -3, "enum = number")
pb.option { enum = "name" }

-- errors -------------------------------------------------------------------------------------

local function enc_err(md, t)
    local s2, e = pb.encode(md, t)
    return s2 == nil and e or ("no error: " .. hex(s2))
end
eq(enc_err(Scalars, { f_int32 = "x" }), "pbtest.Scalars.f_int32: number expected, got string",
   "error names the field")
eq(enc_err(Scalars, { f_int32 = 1.5 }), "pbtest.Scalars.f_int32: integer expected, got 1.5", "non-integral")
eq(enc_err(Scalars, { f_int32 = 2 ^ 31 }),
   "pbtest.Scalars.f_int32: value out of range for int32: 2147483648", "int32 range")
eq(enc_err(Scalars, { f_uint32 = -1 }),
   "pbtest.Scalars.f_uint32: value out of range for uint32: -1", "uint32 range")
eq(enc_err(Scalars, { f_uint64 = -1 }),
   "pbtest.Scalars.f_uint64: value out of range for uint64: -1", "uint64 negative")
eq(enc_err(Scalars, { f_int64 = "9223372036854775808" }),
   "pbtest.Scalars.f_int64: value out of range: 9223372036854775808", "int64 string range")
eq(enc_err(Scalars, { f_int64 = "12x" }),
   "pbtest.Scalars.f_int64: integer expected, got string \"12x\"", "int64 bad string")
eq(enc_err(Scalars, { f_int64 = 0 / 0 }), "pbtest.Scalars.f_int64: integer expected, got nan", "int64 NaN")
eq(enc_err(Scalars, { f_enum = "PURPLE" }),
   "pbtest.Scalars.f_enum: unknown value \"PURPLE\" of enum pbtest.Color", "unknown enum name")
eq(enc_err(Scalars, { f_bool = 1 }), "pbtest.Scalars.f_bool: boolean expected, got number", "bool")
eq(enc_err(Scalars, { f_string = 1 }), "pbtest.Scalars.f_string: string expected, got number", "string")
eq(enc_err(Scalars, { f_double = "1" }), "pbtest.Scalars.f_double: number expected, got string", "double")
eq(enc_err(Nested, { inner = { child = { x = "y" } } }),
   "pbtest.Nested.Inner.x: number expected, got string", "nested field")
eq(enc_err(Nested, { inner = 5 }), "pbtest.Nested.inner: table expected, got number", "message type")
eq(enc_err(Repeated, { r_int32 = { 1, "2" } }),
   "pbtest.Repeated.r_int32[2]: number expected, got string", "repeated element")
eq(enc_err(Repeated, { r_msg = { {}, { f_bool = 0 } } }),
   "pbtest.Scalars.f_bool: boolean expected, got number", "repeated message element")
eq(enc_err(Maps, { m_int32_string = { [1.5] = "a" } }),
   "pbtest.Maps.m_int32_string: key 1.5: integer expected, got 1.5", "map key")
eq(enc_err(Maps, { m_string_int32 = { a = "b" } }),
   "pbtest.Maps.m_string_int32[a]: number expected, got string", "map value")
eq(enc_err(Oneofs, { o_int32 = 1, o_string = "x" }):gsub("%(.*%)", "(..)"),
   "pbtest.Oneofs.choice: more than one field set (..)", "oneof conflict")
eq(enc_err(P2, {}), "pbtest2.P2.req: required field missing", "proto2 required")
local loop = {}
loop.inner = { child = {} }
loop.inner.child.child = loop.inner
local e = enc_err(Nested, loop)
ok(e:find("nesting deeper than 100", 1, true) ~= nil, "self-referencing table: depth limit", e)
ok(not pcall(pb.encode, {}, {}), "misuse raises: not a descriptor")

-- decoding bad input never raises: every truncation of a valid message, and random bytes.
local full = pb.encode(All, {
    scalars = { f_int64 = -5, f_string = "abc", f_double = 1.25, f_fixed32 = 7, f_enum = "RED" },
    repeated = { r_int32 = { 1, 300, -1 }, r_string = { "x", "yz" }, u_double = { 1, 2 },
                 r_msg = { { f_bool = true } } },
    maps = { m_string_int32 = { a = 1, b = -2 }, m_int64_msg = { [3] = { f_uint32 = 9 } } },
    oneofs = { o_msg = { f_sint32 = -9 }, s_double = 2 },
    nested = { inner = { x = 1, child = { x = 2, tags = { "t" } } } },
    recursive = { far = "far" }, mid = 3,
})
local all_ok = true
for cut = 0, #full - 1 do
    local okc, t, e2 = pcall(pb.decode, All, full:sub(1, cut))
    if not okc or (t ~= nil and cut > 0 and false) then
        all_ok = false
        print("# cut " .. cut .. ": " .. tostring(t))
    end
    if okc and t == nil and type(e2) ~= "string" then all_ok = false end
end
ok(all_ok, "every truncation decodes or fails with nil, err (never raises)")
local t_full = pb.decode(All, full)
ok(t_full and t_full.scalars.f_int64 == -5 and t_full.maps.m_int64_msg[3].f_uint32 == 9
   and t_full.oneofs.o_msg.f_sint32 == -9 and t_full.nested.inner.child.tags[1] == "t",
   "rich message round trip")
local _, e3 = pb.decode(All, full:sub(1, #full - 1))
ok(type(e3) == "string" and e3:find("^pbtest%.") ~= nil, "truncation error names the message", e3)

math.randomseed(7)
local raised = 0
for _ = 1, 20000 do
    local n = math.random(0, 40)
    local bytes = {}
    for j = 1, n do bytes[j] = string.char(math.random(0, 255)) end
    local str = table.concat(bytes)
    if math.random(2) == 1 then -- mutate a valid message instead
        local i = math.random(1, #full)
        str = full:sub(1, i - 1) .. string.char(math.random(0, 255)) .. full:sub(i + 1)
    end
    local okc, res = pcall(pb.decode, All, str)
    if not okc then
        raised = raised + 1
        if raised < 3 then print("# raised: " .. tostring(res)) end
    elseif res ~= nil then
        local okc2, re = pcall(pb.encode, All, res)
        if not okc2 or re == nil then
            raised = raised + 1
            if raised < 3 then print("# re-encode: " .. tostring(re)) end
        end
    end
end
ok(raised == 0, "20,000 random and mutated inputs: no raise; what decodes re-encodes")

-- encode_into --------------------------------------------------------------------------------

local hello = pb.message("helloworld.HelloRequest")
local req = { name = "world" }
local n = pb.size(hello, req)
local out = ffi.new("uint8_t[?]", n)
eq(pb.encode_into(hello, req, out, n), n, "encode_into returns n")
eq(hex(ffi.string(out, n)), "0a05776f726c64", "encode_into writes the message")
ok(not pcall(pb.encode_into, hello, req, out, n + 1), "encode_into with a wrong n raises")
n = pb.size(hello, req)
req.name = "world!"
local okc, e4 = pcall(pb.encode_into, hello, req, ffi.new("uint8_t[16]"), n)
ok(not okc and tostring(e4):find("takes 9 bytes", 1, true) == nil and tostring(e4):find("wrote") ~= nil,
   "a table changed between size and encode_into: raises, never overruns silently", e4)
n = pb.size(hello, { name = "a" })
local other = { name = "bb" }
okc = pcall(pb.encode_into, hello, other, ffi.new("uint8_t[16]"), n)
ok(not okc, "encode_into of another table than the last size: re-measured, mismatch raises")
eq(pb.encode_into(hello, other, out, 4), 4, "encode_into of an unmeasured table with the right n")

-- JSON friendliness: typical replies decode to plain Lua values (no cdata) in "auto" mode.
local reply = pb.decode(pb.message("helloworld.HelloReply"), unhex("0a0b48656c6c6f20776f726c64"))
ok(reply.message == "Hello world", "HelloReply")
local function has_cdata(t)
    for _, v in pairs(t) do
        if type(v) == "cdata" or (type(v) == "table" and has_cdata(v)) then return true end
    end
    return false
end
ok(not has_cdata(t_full), "auto mode: no cdata for small 64-bit values")
local okj, cjson = pcall(require, "cjson")
if okj then
    ok(cjson.encode(t_full) ~= nil, "cjson.encode of a decoded message")
end

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
