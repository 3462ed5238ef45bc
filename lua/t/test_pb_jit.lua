-- JIT test of lua/resty/grpc_zc/pb.lua and its modules (lua/resty/grpc_zc/pb/*.lua; "pb.lua"
-- below means all of them): encode (size + encode_into) and decode loops over ordinary
-- messages run under jit.v.
--
--   luajit lua/t/test_pb_jit.lua [LIB [PRELOAD [JIT_LOG]]]
--
-- LIB, PRELOAD: as in test_pb.lua (the types come from pb.load_proto of t/proto/pbtest*.proto
-- and testkit/proto/helloworld.proto). The test fails on:
--   * any "NYI" in the jit.v output;
--   * "blacklisted" at a line of pb.lua (every trace reaching it would abort);
--   * an abort in pb.lua other than the trace-formation ones ("loop unroll limit reached",
--     "trace too long", "inner loop in root trace", "leaving loop in root trace",
--     "down-recursion, restarting", "call unroll limit reached" for the recursion over nested
--     messages);
--   * no trace compiled in pb.lua.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. package.path

local ffi = require "ffi"
local tap = require "t.tap"
local pb = tap.pb_with_protos(arg, dir)
local f
local log = arg[3] or os.tmpname()

local N = 100000
local Hello = assert(pb.message("helloworld.HelloRequest"))
local Scalars = assert(pb.message("pbtest.Scalars"))
local Nested = assert(pb.message("pbtest.Nested"))
local Repeated = assert(pb.message("pbtest.Repeated"))
local Maps = assert(pb.message("pbtest.Maps"))
local All = assert(pb.message("pbtest.All"))

local msgs = {
    { Hello, { name = "world" } },
    { Scalars, { f_double = 1.5, f_float = 0.25, f_int32 = -5, f_int64 = 1234567890123,
                 f_uint32 = 7, f_uint64 = 42, f_sint32 = -3, f_sint64 = -99, f_fixed32 = 9,
                 f_fixed64 = 10, f_sfixed32 = -11, f_sfixed64 = -12, f_bool = true,
                 f_string = "hello", f_bytes = "\0\1\2", f_enum = "GREEN" } },
    { Nested, { inner = { x = 1, child = { x = 2, tags = { "a", "b" } } },
                inners = { { x = 3 }, { x = 4 } }, scalars = { f_string = "s" } } },
    { Repeated, { r_int32 = { 1, 2, 3, -4 }, r_double = { 1, 2 }, r_string = { "x", "y" },
                  r_enum = { "RED", "BLUE" }, u_int32 = { 5, 6 }, r_msg = { { f_int32 = 1 } } } },
    { Maps, { m_string_int32 = { a = 1, b = 2 }, m_int32_string = { [1] = "one" } } },
    { All, { mid = 3, far = "far", scalars = { f_int32 = 1, f_enum = "BLUE" },
             oneofs = { o_string = "x", s_bool = true }, optionals = { p_int32 = 0 } } },
}

local K = math.floor(N / #msgs)
local buf = ffi.new("uint8_t[4096]")
local encoded = {}
local jv = require "jit.v"
jv.on(log)
local total = 0
for k = 1, #msgs do
    local md, t = msgs[k][1], msgs[k][2]
    for _ = 1, K do
        local n = pb.size(md, t)
        pb.encode_into(md, t, buf, n)
        total = total + n
    end
    encoded[k] = ffi.string(buf, pb.size(md, t))
end
local sum = 0
for k = 1, #msgs do
    local md, s = msgs[k][1], encoded[k]
    local p = ffi.cast("const uint8_t *", s)
    for _ = 1, K do
        local t = pb.decode(md, p, #s)
        if t then sum = sum + 1 end
    end
end
jv.off()

local result = tap.result
result(sum == K * #msgs and total > 0, "loops ran")

f = assert(io.open(log, "r"))
local out = f:read("*a")
f:close()

-- jit.v names a function's file by its basename: the facade pb.lua and the modules under
-- resty/grpc_zc/pb/ (wire, encode, decode, registry) make up the codec.
local MODULE_FILES = { "pb", "wire", "encode", "decode", "registry" }
local function in_module(line)
    for i = 1, #MODULE_FILES do
        if line:find("%f[%w_]" .. MODULE_FILES[i] .. "%.lua:") then
            return true
        end
    end
    return false
end
local traces, module_traces, bad, benign = tap.classify_traces(out, in_module)
print(string.format("# %d traces (%d in pb.lua), %d trace-formation aborts in pb.lua",
                    traces, module_traces, benign))
result(module_traces > 0, "traces were compiled in pb.lua")
result(#bad == 0, "no NYI, no blacklisting, no other trace abort in pb.lua",
       table.concat(bad, "\n  "))
tap.done()
