-- Microbenchmark of lua/resty/grpc_zc/pb.lua (figures only: no time limit is tested).
--
--   luajit lua/t/test_pb_bench.lua [LIB [PRELOAD]]   (LIB, PRELOAD: as in test_pb.lua)
--
-- Per message: pb.size + pb.encode_into into FFI memory (what the integration does in an arena
-- slot), pb.decode from a pointer, and side by side the cost of a pre-encoded string (ffi.copy
-- in, ffi.string out) that the codec replaces. Results in docs/protobuf.md.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. package.path

local ffi = require "ffi"
local tap = require "t.tap"
local pb = tap.pb_with_protos(arg, dir)

local clock = os.clock
local function bench(n, fn)
    fn(math.min(n, 1000)) -- warm-up (traces)
    local best = math.huge
    for _ = 1, 3 do
        local t0 = clock()
        fn(n)
        local dt = (clock() - t0) / n
        if dt < best then best = dt end
    end
    return best * 1e6
end

local buf = ffi.new("uint8_t[?]", 200000)
local big = string.rep("x", 100000)
-- Each case builds a fresh table per call, as a caller does (the table constructor is part of
-- the encode figure; it is what a pre-encoded string saves).
local cases = {
    { "HelloRequest{name=\"world\"}", "helloworld.HelloRequest", 1000000,
      function() return { name = "world" } end },
    { "Scalars (16 fields)", "pbtest.Scalars", 300000, function()
        return { f_double = 1.5, f_float = 0.25, f_int32 = -5, f_int64 = 1234567890123,
                 f_uint32 = 7, f_uint64 = 42, f_sint32 = -3, f_sint64 = -99, f_fixed32 = 9,
                 f_fixed64 = 10, f_sfixed32 = -11, f_sfixed64 = -12, f_bool = true,
                 f_string = "hello", f_bytes = "\0\1\2", f_enum = "GREEN" }
    end },
    { "Nested (3 levels, 2 repeated)", "pbtest.Nested", 300000, function()
        return { inner = { x = 1, child = { x = 2, tags = { "a", "b" } } },
                 inners = { { x = 3 }, { x = 4 } }, scalars = { f_string = "s" } }
    end },
    { "Scalars{f_bytes = 100 KB}", "pbtest.Scalars", 20000,
      function() return { f_bytes = big } end },
}

local size, encode_into, decode = pb.size, pb.encode_into, pb.decode
local sink = {}

local function encode_loop(md, mk, k)
    for i = 1, k do
        local t = mk()
        local m = size(md, t)
        encode_into(md, t, buf, m)
    end
end
local function decode_loop(md, p, len, k)
    for i = 1, k do
        sink[i % 8] = decode(md, p, len)
    end
end
local function copy_loop(s, k)
    for _ = 1, k do
        ffi.copy(buf, s, #s)
    end
end
local function string_loop(p, len, k)
    for i = 1, k do
        sink[i % 8] = ffi.string(p, len)
    end
end

print(string.format("# %-32s %6s %10s %10s %10s %10s", "message", "bytes", "encode us",
                    "decode us", "copy in us", "string us"))
for _, c in ipairs(cases) do
    local label, name, n, mk = c[1], c[2], c[3], c[4]
    local md = assert(pb.message(name))
    local len = size(md, mk())
    encode_into(md, mk(), buf, len)
    local s = ffi.string(buf, len)
    local p = ffi.cast("const uint8_t *", s)
    local enc = bench(n, function(k) encode_loop(md, mk, k) end)
    local dec = bench(n, function(k) decode_loop(md, p, len, k) end)
    local copy_in = bench(n, function(k) copy_loop(s, k) end)
    local to_string = bench(n, function(k) string_loop(p, len, k) end)
    print(string.format("# %-32s %6d %10.3f %10.3f %10.3f %10.3f", label, len, enc, dec,
                        copy_in, to_string))
    local back = decode(md, p, len)
    tap.result(back and pb.encode(md, back) == s, label .. " round trip")
end
tap.done()
