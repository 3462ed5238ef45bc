-- Tests of lua/resty/grpc_zc/flatbuffers.lua with the stock LuaJIT CLI.
--
--   luajit lua/t/test_flatbuffers.lua [INTEROP_DIR]
--
-- With INTEROP_DIR, reads the buffers Python built in INTEROP_DIR/py/<case>.bin (through FFI
-- pointers, never as Lua strings) and writes Lua's own to INTEROP_DIR/lua/<case>.bin for
-- fbtest_interop.py to check. lua/t/run.sh drives the whole exchange.
-- Ends with "N passed, N failed" and exits non-zero on failure.

local dir = (arg and arg[0] or ""):match("^(.*)/t/[^/]*$") or "lua"
package.path = dir .. "/?.lua;" .. dir .. "/t/?.lua;" .. package.path

-- Generated code does require('flatbuffers'): preload our runtime under that name first.
local fb = require("resty.grpc_zc.flatbuffers").preload()
local ffi = require "ffi"
local cases = require "fbtest_cases"
local Root = require "fbtest.Root"
local Leaf = require "fbtest.Leaf"
local Vec3 = require "fbtest.Vec3"
local Scalars = require "fbtest.Scalars"

local interop_dir = arg and arg[1]

ffi.cdef [[
void *fopen(const char *path, const char *mode);
size_t fread(void *ptr, size_t size, size_t n, void *f);
size_t fwrite(const void *ptr, size_t size, size_t n, void *f);
int fseek(void *f, long off, int whence);
long ftell(void *f);
int fclose(void *f);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int mprotect(void *addr, size_t len, int prot);
int getpagesize(void);
]]
local C = ffi.C

local passed, failed = 0, 0

local function test(name, fn)
    local ok, err = xpcall(fn, debug.traceback)
    if ok then
        passed = passed + 1
        print("ok - " .. name)
    else
        failed = failed + 1
        print("not ok - " .. name .. "\n  " .. tostring(err):gsub("\n", "\n  "))
    end
end

local function expect_error(fn, pattern, what)
    local ok, err = pcall(fn)
    if ok then
        error((what or "call") .. ": expected an error matching " .. pattern, 2)
    end
    if not tostring(err):find(pattern) then
        error((what or "call") .. ": error " .. tostring(err) .. " does not match " .. pattern, 2)
    end
end

local eq = cases.eq

-- Memory with an inaccessible page right after `n` usable bytes (after = true) or right
-- before them (after = false): any access outside [p, p + n) on that side faults.
local PAGE = C.getpagesize()
local PROT_NONE, PROT_RW, MAP_PRIVATE_ANON = 0, 3, 0x22
local guarded_maps = {}
local function guarded(n, after)
    local pages = math.ceil(math.max(n, 1) / PAGE)
    local total = (pages + 2) * PAGE
    local base = C.mmap(nil, total, PROT_NONE, MAP_PRIVATE_ANON, -1, 0)
    assert(ffi.cast("intptr_t", base) ~= -1, "mmap failed")
    local data = ffi.cast("uint8_t *", base) + PAGE
    assert(C.mprotect(data, pages * PAGE, PROT_RW) == 0, "mprotect failed")
    guarded_maps[#guarded_maps + 1] = { base, total }
    if after then
        return data + pages * PAGE - n
    end
    return data
end
local function free_guarded()
    for i = 1, #guarded_maps do
        C.munmap(guarded_maps[i][1], guarded_maps[i][2])
    end
    guarded_maps = {}
end

local function read_file(path)
    local f = C.fopen(path, "rb")
    assert(f ~= nil, "cannot open " .. path)
    C.fseek(f, 0, 2)
    local n = tonumber(C.ftell(f))
    C.fseek(f, 0, 0)
    local mem = ffi.new("uint8_t[?]", math.max(n, 1))
    assert(tonumber(C.fread(mem, 1, n, f)) == n, "short read of " .. path)
    C.fclose(f)
    return mem, n
end

local function write_file(path, ptr, n)
    local f = C.fopen(path, "wb")
    assert(f ~= nil, "cannot create " .. path)
    assert(tonumber(C.fwrite(ptr, 1, n, f)) == n, "short write of " .. path)
    C.fclose(f)
end

-- Build a case with a growing builder; returns a private copy (mem, len).
local function build_copy(name, initial)
    local b = fb.Builder(initial or 16)
    cases.build(b, name)
    local p, n = b:Bytes()
    local mem = ffi.new("uint8_t[?]", n)
    ffi.copy(mem, p, n)
    return mem, n
end

------------------------------------------------------------------------------------------------

test("preload makes require('flatbuffers') this module and refuses another one", function()
    eq(require("flatbuffers"), fb, "require('flatbuffers')")
    eq(fb.preload(), fb, "preload is idempotent")
    local saved = package.loaded.flatbuffers
    package.loaded.flatbuffers = { upstream = true }
    local ok, err = pcall(fb.preload)
    package.loaded.flatbuffers = saved
    eq(ok, false, "preload over another module")
    assert(tostring(err):find("another module"), err)
end)

for _, name in ipairs(cases.names) do
    test("lua builds and reads back " .. name, function()
        local mem, n = build_copy(name)
        cases.check(fb.binaryArray.FromPtr(mem, n), name)
    end)
end

if interop_dir then
    for _, name in ipairs(cases.names) do
        test("lua reads " .. name .. " built by python (FFI buffer)", function()
            local mem, n = read_file(interop_dir .. "/py/" .. name .. ".bin")
            cases.check(fb.binaryArray.FromPtr(mem, n), name)
        end)
    end
    for _, name in ipairs(cases.names) do
        test("lua writes " .. name .. " for python (FromBuffer, exact size)", function()
            local _, len = build_copy(name)
            local mem = ffi.new("uint8_t[?]", len)
            local b = fb.Builder.FromBuffer(mem, len)
            cases.build(b, name)
            local p, n, start = b:Bytes()
            eq(n, len, "length")
            eq(start, 0, "start")
            write_file(interop_dir .. "/lua/" .. name .. ".bin", p, n)
        end)
    end
else
    print("# no INTEROP_DIR given: skipping the Python exchange (lua/t/run.sh does it)")
end

test("FromBuffer in a larger slot: output ends at the slot's end; same bytes as Builder", function()
    for _, name in ipairs({ "full", "minimal", "union_leaf" }) do
        local ref, len = build_copy(name, 8)
        local cap = len + 1000
        local mem = ffi.new("uint8_t[?]", cap)
        local b = fb.Builder.FromBuffer(mem, cap)
        cases.build(b, name)
        local p, n, start = b:Bytes()
        eq(n, len, name .. " length")
        eq(start, cap - len, name .. " start")
        eq(ffi.cast("uintptr_t", p) - ffi.cast("uintptr_t", mem), ffi.cast("uintptr_t", start),
           name .. " ptr")
        eq(ffi.string(p, n) == ffi.string(ref, len), true, name .. " bytes")
        eq(b:Output() == ffi.string(ref, len), true, name .. " Output()")
        cases.check(fb.binaryArray.FromPtr(p, n), name)
    end
end)

test("Reset and Clear reuse a builder without changing the output", function()
    local ref, len = build_copy("full")
    local slots = { ffi.new("uint8_t[?]", len), ffi.new("uint8_t[?]", len + 64) }
    local b = fb.Builder.FromBuffer(slots[1], len)
    for round = 1, 3 do
        local slot = slots[round % 2 + 1]
        b:Reset(slot, round % 2 == 0 and len or len + 64)
        cases.build(b, "full")
        local p, n = b:Bytes()
        eq(ffi.string(p, n) == ffi.string(ref, len), true, "round " .. round)
        b:Clear()
        cases.build(b, "full")
        p, n = b:Bytes()
        eq(ffi.string(p, n) == ffi.string(ref, len), true, "round " .. round .. " after Clear")
    end
end)

test("a too-small caller buffer raises 'buffer full' and never writes outside it", function()
    for _, name in ipairs({ "full", "minimal", "union_shield" }) do
        local _, len = build_copy(name)
        for cap = len - 1, 0, -1 do
            -- a guard page right before the slot: a write below it would fault
            local mem = guarded(cap, false)
            local b = fb.Builder.FromBuffer(mem, cap)
            expect_error(function() cases.build(b, name) end, "^flatbuffers: buffer full",
                         name .. " cap " .. cap)
        end
        free_guarded()
    end
    local _, len = build_copy("big")
    for _, cap in ipairs({ 0, 100, len - 100, len - 1 }) do
        local mem = ffi.new("uint8_t[?]", math.max(cap, 1))
        local b = fb.Builder.FromBuffer(mem, cap)
        expect_error(function() cases.build(b, "big") end, "^flatbuffers: buffer full",
                     "big cap " .. cap)
    end
end)

test("size prefix and file identifier", function()
    local b = fb.Builder(64)
    local id = b:CreateString("sp")
    Root.Start(b)
    Root.AddId(b, id)
    b:FinishSizePrefixedWithIdentifier(Root.End(b), "FBT1")
    local p, n = b:Bytes()
    local buf = fb.binaryArray.FromPtr(p, n)
    eq(fb.N.Uint32:Unpack(buf, 0), n - 4, "size prefix")
    eq(buf:Slice(8, 12), "FBT1", "identifier")
    eq(Root.GetRootAsRoot(fb.binaryArray.FromPtr(p + 4, n - 4), 0):Id(), "sp", "id")

    b = fb.Builder(64)
    id = b:CreateString("s")
    Root.Start(b)
    Root.AddId(b, id)
    b:FinishSizePrefixed(Root.End(b))
    p, n = b:Bytes()
    eq(fb.N.Uint32:Unpack(fb.binaryArray.FromPtr(p, n), 0), n - 4, "size prefix")
    eq(Root.GetRootAsRoot(fb.binaryArray.FromPtr(p + 4, n - 4), 0):Id(), "s", "id")
end)

test("VectorPtr and StringPtr point into the buffer (zero copy)", function()
    local mem, n = build_copy("full")
    local r = Root.GetRootAsRoot(fb.binaryArray.FromPtr(mem, n), 0)
    local v = r.view
    local p, len = v:VectorPtr(v:Offset(10))
    local off = tonumber(ffi.cast("uintptr_t", p) - ffi.cast("uintptr_t", mem))
    assert(off > 0 and off + len <= n, "payload outside the buffer")
    eq(len, 256, "payload length")
    ffi.cast("uint8_t *", p)[0] = 99 -- same memory: the accessor sees the write
    eq(r:Payload(1), 99, "payload[1] after in-place write")
    local ip, ilen = v:VectorPtr(v:Offset(20), 4)
    eq(ilen, 3, "i32s count")
    eq(ffi.cast("const int32_t *", ip)[2], 2147483647, "i32s[3] through the pointer")
    local sp, slen = v:StringPtr(v.pos + v:Offset(4))
    eq(ffi.string(sp, slen), "root-full", "id through StringPtr")
    eq(sp[slen], 0, "NUL after the string")
end)

test("64-bit integers read as int64_t/uint64_t cdata and compare with numbers", function()
    local mem, n = build_copy("full")
    local s = Root.GetRootAsRoot(fb.binaryArray.FromPtr(mem, n), 0):Scalars()
    assert(ffi.istype("int64_t", s:I64()), "I64 is int64_t")
    assert(ffi.istype("uint64_t", s:U64()), "U64 is uint64_t")
    eq(s:I64() == 0x7fffffffffffffffLL, true, "int64 max")
    eq(s:U64() == 0xffffffffffffffffULL, true, "uint64 max")
    local b = fb.Builder(64)
    Scalars.Start(b)
    Scalars.AddI64(b, -5)
    Scalars.AddU64(b, 2 ^ 53)
    Scalars.AddI32(b, -7)
    local sc = Scalars.End(b)
    b:Finish(sc)
    local p, len = b:Bytes()
    local t = Scalars.New()
    local buf = fb.binaryArray.FromPtr(p, len)
    t:Init(buf, fb.N.UOffsetT:Unpack(buf, 0))
    eq(t:I64() == -5, true, "int64 == number")
    eq(t:U64() == 2 ^ 53, true, "uint64 == number")
    eq(tonumber(t:I64()), -5, "tonumber")
    eq(t:I32(), -7, "int32 is a number")
    eq(t:U8(), 0, "absent field is the default number")
end)

test("upstream-compatible pieces: Lua string buffers, N types, GetSlot, Slice", function()
    local mem, n = build_copy("union_leaf")
    local s = ffi.string(mem, n)
    cases.check(fb.binaryArray.New(s), "union_leaf") -- zero-copy window over the string
    local r = Root.GetRootAsRoot(s, 0) -- generated code wraps strings itself
    eq(r:Id(), "u-leaf", "id from a string buffer")
    eq(r.view:GetSlot(50, 0, fb.N.Uint8), 1, "GetSlot equipment type")
    eq(r.view:GetSlot(48, 1, fb.N.Int8), 1, "GetSlot absent colour")
    eq(r.view:GetVOffsetTSlot(4, 0) ~= 0, true, "GetVOffsetTSlot")
    eq(fb.N.Int32:Pack(-2), "\254\255\255\255", "Pack int32")
    eq(fb.N.Uint16:Unpack("\1\2", 0), 0x0201, "Unpack uint16 from a string")
    eq(fb.N.Float32:Unpack(fb.N.Float32:Pack(1.5), 0), 1.5, "float32 round trip")
    eq(fb.N.Int8:ConvertType(-1, fb.N.Uint8), 255, "ConvertType")
    eq(fb.N.Uint8:ValidNumber(256), false, "ValidNumber")
    expect_error(function() fb.N.Int16:EnforceNumber(40000) end, "valid range")
    eq(fb.N.Int64:ValidNumber(-2 ^ 63), true, "int64 min valid")
    eq(fb.binaryArray.New(s):Slice(4, 8), "FBT1", "Slice")
    eq(fb.binaryArray.New(0).size, 0, "New(0) size")
    eq(fb.binaryArray.New(3).size, 3, "New(3) size")
end)

test("out-of-range reads raise 'out of bounds' errors", function()
    local mem, n = build_copy("full")
    local buf = fb.binaryArray.FromPtr(mem, n)
    local r = Root.GetRootAsRoot(buf, 0)
    local oob = "^flatbuffers: out of bounds"
    expect_error(function() r:I32s(-1000000) end, oob, "negative index")
    expect_error(function() r:I32s(1000000000) end, oob, "huge index")
    expect_error(function() r:Strings(100000) end, oob, "string index")
    expect_error(function() r.view:Get(fb.N.Uint64, n - 7) end, oob, "Get straddling the end")
    expect_error(function() r.view:Get(fb.N.Uint8, -1) end, oob, "Get before the start")
    expect_error(function() r.view:Get(fb.N.Uint8, 0 / 0) end, oob, "Get at NaN")
    expect_error(function() r.view:Indirect(n) end, oob, "Indirect at the end")
    expect_error(function() r:PayloadAsString(1, 257) end, oob, "VectorAsString past the end")
    expect_error(function() Root.GetRootAsRoot(fb.binaryArray.FromPtr(mem, 3), 0) end, oob,
                 "root offset in a 3-byte buffer")
    expect_error(function() Root.GetRootAsRoot(fb.binaryArray.New(0), 0):Id() end, oob,
                 "empty buffer")
    local bad = Root.New()
    bad:Init(buf, n - 2)
    expect_error(function() bad:Id() end, oob, "table position at the end")
    bad:Init(buf, -4)
    expect_error(function() bad:Id() end, oob, "negative table position")
end)

-- Every prefix of a valid buffer, in memory that ends at a guard page.
test("truncated buffers: every prefix errors cleanly or reads in bounds", function()
    local mem, n = build_copy("full")
    local errors = 0
    for k = 0, n - 1 do
        local p = guarded(k, true)
        ffi.copy(p, mem, k)
        local ok, err = pcall(cases.walk, fb.binaryArray.FromPtr(p, k))
        if not ok then
            if not tostring(err):find("^flatbuffers: out of bounds") then
                error("prefix " .. k .. ": unexpected error " .. tostring(err))
            end
            errors = errors + 1
        end
        if k % 256 == 255 then
            free_guarded()
        end
    end
    free_guarded()
    assert(errors >= n - 8, "only " .. errors .. " of " .. n .. " prefixes were rejected")
    print("# " .. errors .. " of " .. n .. " prefixes rejected")
end)

-- Random mutations of a valid buffer; the copy sits against a guard page on one side.
test("fuzz: 4000 mutated buffers and 1000 random ones never read outside memory", function()
    math.randomseed(20240611)
    local mem, n = build_copy("full")
    local specials = { 0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe }
    local counts = { ok = 0, oob = 0 }
    local after_mem = guarded(n, true)
    local before_mem = guarded(n, false)
    local function run(p, len, what)
        local ok, err = pcall(cases.walk, fb.binaryArray.FromPtr(p, len))
        if ok then
            counts.ok = counts.ok + 1
        elseif tostring(err):find("^flatbuffers: out of bounds") then
            counts.oob = counts.oob + 1
        else
            error(what .. ": unexpected error " .. tostring(err))
        end
    end
    for i = 1, 4000 do
        local p = (i % 2 == 0) and after_mem or before_mem
        ffi.copy(p, mem, n)
        local len = n
        for _ = 1, math.random(1, 4) do
            local at = math.random(0, n - 1)
            if math.random() < 0.5 then
                p[at] = specials[math.random(#specials)]
            else
                p[at] = math.random(0, 255)
            end
        end
        if math.random() < 0.1 then
            len = math.random(0, n)
            if p == after_mem then -- keep the guard page right after the shortened buffer
                local q = after_mem + (n - len)
                ffi.copy(q, p, len)
                p = q
            end
        end
        run(p, len, "mutation " .. i)
    end
    local rnd = guarded(256, true)
    for i = 1, 1000 do
        local len = math.random(0, 256)
        local p = rnd + (256 - len)
        for j = 0, len - 1 do
            p[j] = math.random(0, 255)
        end
        if len >= 4 and i % 2 == 0 then -- a plausible root offset
            ffi.cast("uint32_t *", p)[0] = math.random(0, len)
        end
        run(p, len, "random buffer " .. i)
    end
    free_guarded()
    print(string.format("# fuzz: %d read fully, %d rejected out of bounds", counts.ok, counts.oob))
    assert(counts.oob > 1000, "suspiciously few rejections")
end)

test("builder misuse raises errors", function()
    local b = fb.Builder(64)
    Root.Start(b)
    expect_error(function() Root.Start(b) end, "StartObject inside", "nested StartObject")
    expect_error(function() b:CreateString("x") end, "inside an object", "CreateString in object")
    expect_error(function() b:PrependInt32Slot(99, 1, 0) end, "slot 99 outside", "bad slot")
    expect_error(function() Root.AddPos(b, 12345) end, "struct must be created immediately",
                 "struct offset not current")
    expect_error(function() b:EndVector(0) end, "EndVector without StartVector")
    b = fb.Builder(64)
    expect_error(function() b:EndObject() end, "EndObject without StartObject")
    expect_error(function() b:CreateString(42) end, "expects a string")
    expect_error(function() b:CreateByteVector({}) end, "expects a string")
    expect_error(function() b:Bytes() end, "before Finish")
    expect_error(function() b:FinishWithIdentifier(1, "TOOLONG") end, "4%-byte")
    expect_error(function() fb.Builder.FromBuffer("not a pointer", 10) end, "cdata pointer")
    expect_error(function() fb.binaryArray.FromPtr({}, 10) end, "cdata pointer")
    expect_error(function() fb.view.New({}, 0) end, "binaryArray")
    expect_error(function() Leaf.New():Init({}, 0) end, "binaryArray")
end)

test("StartByteVectorInPlace and CreateByteVector(ptr, len) copy nothing twice", function()
    local src = ffi.new("uint8_t[?]", 1000)
    for i = 0, 999 do
        src[i] = i % 251
    end
    local slot = ffi.new("uint8_t[?]", 4096)
    local b = fb.Builder.FromBuffer(slot, 4096)
    local p = b:StartByteVectorInPlace(1000)
    eq(tonumber(ffi.cast("uintptr_t", p) - ffi.cast("uintptr_t", slot)) < 4096, true, "in slot")
    ffi.copy(p, src, 1000)
    local v1 = b:EndVector(1000)
    local v2 = b:CreateByteVector(src, 1000)
    local v3 = b:CreateByteVectorFromPtr(src + 10, 5)
    local id = b:CreateString(src, 3)
    Root.Start(b)
    Root.AddId(b, id)
    Root.AddPayload(b, v1)
    Root.AddI8s(b, v2)
    Root.AddBools(b, v3)
    b:Finish(Root.End(b))
    local bp, bn = b:Bytes()
    local r = Root.GetRootAsRoot(fb.binaryArray.FromPtr(bp, bn), 0)
    eq(r:PayloadAsString() == ffi.string(src, 1000), true, "in-place vector")
    eq(r:I8sAsString() == ffi.string(src, 1000), true, "CreateByteVector(ptr, len)")
    eq(r:BoolsAsString(), ffi.string(src + 10, 5), "CreateByteVectorFromPtr")
    eq(r:Id(), "\0\1\2", "CreateString(ptr, len)")
end)

test("vtables are shared between identical tables", function()
    local b = fb.Builder(256)
    local offs = {}
    for i = 1, 10 do
        Leaf.Start(b)
        Leaf.AddValue(b, i)
        offs[i] = Leaf.End(b)
    end
    local size_10 = b:Offset()
    -- each further Leaf costs its 8 bytes of table only (soffset + int32), no new vtable
    Leaf.Start(b)
    Leaf.AddValue(b, 11)
    Leaf.End(b)
    eq(b:Offset() - size_10, 8, "bytes per deduplicated table")
end)

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
