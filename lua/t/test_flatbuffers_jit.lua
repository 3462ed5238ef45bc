-- JIT test of lua/resty/grpc_zc/flatbuffers.lua: a read loop and a build loop run 100k times
-- under jit.v (plus 5k rounds of the full test case, which touches every runtime entry point).
--
--   luajit lua/t/test_flatbuffers_jit.lua [JIT_LOG]
--
-- jit.v prints "[TRACE --- (parent/exit) start -- reason at location]" for an abort, with file
-- basenames. The test fails on:
--   * any "NYI" in the output;
--   * an abort that starts or stops in the runtime module, unless it is one of the aborts that
--     are part of normal trace formation (t/tap.lua's TRACE_FORMATION, the list the codec's JIT
--     test uses too): e.g. "loop unroll limit reached" (a caller's loop is left to its own
--     trace), "trace too long" (the trace is split), "leaving loop in root trace" (a short loop
--     became hot on its own; LuaJIT's randomised penalties make this one appear in some runs);
--   * "blacklisted" at a line of the module or of generated code: a blacklisted function or
--     loop aborts every trace that reaches it, so the callers would run interpreted.
-- Other aborts (test code) are listed for information.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. dir .. "/t/?.lua;" .. package.path

local fb = require("resty.grpc_zc.flatbuffers").preload()
local ffi = require "ffi"
local cases = require "fbtest_cases"
local Root = require "fbtest.Root"
local Scalars = require "fbtest.Scalars"
local Leaf = require "fbtest.Leaf"
local Vec3 = require "fbtest.Vec3"
local Equipment = require "fbtest.Equipment"

local N = 100000
local log = (arg and arg[1]) or os.tmpname()

-- A request-shaped message: id, 4 KiB payload, a subtable, a union, a small vector, a struct.
local PAYLOAD_LEN = 4096
local payload_src = ffi.new("uint8_t[?]", PAYLOAD_LEN)
for i = 0, PAYLOAD_LEN - 1 do
    payload_src[i] = i % 256
end
local SLOT = 8192
local slot = ffi.new("uint8_t[?]", SLOT)

local function build_request(b, i)
    local payload = b:CreateByteVectorFromPtr(payload_src, PAYLOAD_LEN)
    local id = b:CreateString("/pkg.Service/Method")
    local lname = b:CreateString("leaf")
    Leaf.Start(b)
    Leaf.AddName(b, lname)
    Leaf.AddValue(b, i + 1000) -- never the default (7), so every message has the same size
    local leaf = Leaf.End(b)
    Scalars.Start(b)
    Scalars.AddB(b, true)
    Scalars.AddU32(b, i)
    Scalars.AddI64(b, -i)
    Scalars.AddU64(b, i)
    Scalars.AddF64(b, 0.5)
    local sc = Scalars.End(b)
    Root.StartI32sVector(b, 3)
    b:PrependInt32(3)
    b:PrependInt32(2)
    b:PrependInt32(i)
    local ints = b:EndVector(3)
    Root.Start(b)
    Root.AddId(b, id)
    Root.AddScalars(b, sc)
    Root.AddPayload(b, payload)
    Root.AddI32s(b, ints)
    Root.AddPos(b, Vec3.CreateVec3(b, 1, 2, 3))
    Root.AddEquipmentType(b, Equipment.Leaf)
    Root.AddEquipment(b, leaf)
    return b:Finish(Root.End(b))
end

local function read_request(buf)
    local r = Root.GetRootAsRoot(buf, 0)
    local sum = #r:Id()
    local v = r.view
    local o = v:Offset(10)
    local p, n = v:VectorPtr(o)
    sum = sum + n + p[n - 1]
    local s = r:Scalars()
    if s:B() then
        sum = sum + s:U32() + s:F64()
    end
    sum = sum + tonumber(s:I64()) + tonumber(s:U64())
    for j = 1, r:I32sLength() do
        sum = sum + r:I32s(j)
    end
    sum = sum + r:Pos():Z()
    if r:EquipmentType() == Equipment.Leaf then
        local u = r:Equipment()
        local leaf = Leaf.New()
        leaf:Init(u.bytes, u.pos)
        sum = sum + leaf:Value() + #leaf:Name()
    end
    return sum
end

local jv = require "jit.v"
jv.on(log)

-- build loop: the same slot reused through Reset, no allocation of builders
local clock = os.clock
local t0 = clock()
local b = fb.Builder.FromBuffer(slot, SLOT)
local total_len = 0
for i = 1, N do
    b:Reset(slot, SLOT)
    build_request(b, i)
    local _, n = b:Bytes()
    total_len = total_len + n
end

local t_build = clock() - t0

-- read loop over the last built message
t0 = clock()
local p, n = b:Bytes()
local buf = fb.binaryArray.FromPtr(p, n)
local sum = 0
for _ = 1, N do
    sum = sum + read_request(buf)
end
local t_read = clock() - t0

-- the full case: every runtime entry point the generated code uses
local fb_full = fb.Builder(4096)
for _ = 1, N / 20 do
    fb_full:Clear()
    cases.build(fb_full, "full")
end
local fp, fn = fb_full:Bytes()
local fbuf = fb.binaryArray.FromPtr(fp, fn)
for _ = 1, N / 20 do
    cases.check(fbuf, "full")
end

jv.off()

local tap = require "t.tap"
local result = tap.result

print(string.format("# build %.2f us, read %.2f us per message (%d bytes, under jit.v)",
                    t_build / N * 1e6, t_read / N * 1e6, n))
result(read_request(buf) == sum / N, "read loop result is stable")
result(total_len == N * n, "build loop output size is stable")

local f = assert(io.open(log, "r"))
local out = f:read("*a")
f:close()

local function mentions_module(line)
    return line:find("%f[%w_]flatbuffers%.lua:") ~= nil
end
local generated = {}
for name in pairs(package.loaded) do
    local base = name:match("^fbtest%.(%w+)$")
    if base then
        generated[#generated + 1] = base .. ".lua:"
    end
end
local function at_generated(line)
    local at = line:match(" at (%S+)%]$") or ""
    for i = 1, #generated do
        if at:find("%f[%w_]" .. generated[i]) then
            return true
        end
    end
    return false
end
local traces, module_traces, bad, benign, others = tap.classify_traces(out, mentions_module,
    function(line) return mentions_module(line) or at_generated(line) end)

print(string.format("# %d traces (%d starting in the module); %d trace-formation aborts in the "
                    .. "module; %d aborts in test code", traces, module_traces, benign, others))
result(traces > 0 and module_traces > 0, "traces were compiled")
result(#bad == 0, "no NYI, no blacklisting, no other trace abort in the module",
       table.concat(bad, "\n  "))

tap.done()
