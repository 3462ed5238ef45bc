-- Test cases for the FlatBuffers runtime, shared by test_flatbuffers.lua and
-- test_flatbuffers_jit.lua. lua/t/fbtest_interop.py builds and checks the same cases in Python:
-- keep the two in step.
--
--   M.build(builder, name)   build case `name` with the generated fbtest code and finish it
--   M.check(buf, name)       check every field of case `name` in buf (a flatbuffers.binaryArray)
--   M.walk(buf)              read every field without checking values (fuzzing)

local ffi = require "ffi"
local fb = require "flatbuffers"

local Root = require "fbtest.Root"
local Scalars = require "fbtest.Scalars"
local Defaults = require "fbtest.Defaults"
local Leaf = require "fbtest.Leaf"
local Sword = require "fbtest.Sword"
local Shield = require "fbtest.Shield"
local Vec3 = require "fbtest.Vec3"
local Pair = require "fbtest.Pair"
local Pose = require "fbtest.Pose"
local Color = require "fbtest.Color"
local Level = require "fbtest.Level"
local Equipment = require "fbtest.Equipment"

local M = {}

M.names = { "full", "minimal", "union_leaf", "union_shield", "big" }
M.identifier = { full = "FBT1", union_leaf = "FBT1", union_shield = "FBT1" }

local inf, nan = math.huge, 0 / 0
local I64_MIN, I64_MAX = -0x8000000000000000LL, 0x7fffffffffffffffLL
local U64_MAX, U64_HALF = 0xffffffffffffffffULL, 0x8000000000000000ULL

local S_MAX = { b = true, i8 = 127, u8 = 255, i16 = 32767, u16 = 65535, i32 = 2147483647,
                u32 = 4294967295, i64 = I64_MAX, u64 = U64_MAX, f32 = inf, f64 = nan }
local S_MIN = { b = false, i8 = -128, u8 = 0, i16 = -32768, u16 = 0, i32 = -2147483648,
                u32 = 0, i64 = I64_MIN, u64 = 0, f32 = -inf, f64 = 2 ^ -1074 }
local SCALAR_FIELDS = { "b", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64" }
local SCALAR_GETTERS = { "B", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "F32", "F64" }

-- Defaults as declared in fbtest.fbs, and values that differ from all of them.
local D_DEFAULT = { b = true, i8 = -8, u8 = 200, i16 = -1600, u16 = 60000, i32 = -320000,
                    u32 = 4000000000, i64 = -6400000000, u64 = 12800000000, f32 = 1.5,
                    f64 = -2.25, color = Color.Blue, level = Level.Low }
local D_SET = { b = false, i8 = 0, u8 = 0, i16 = 0, u16 = 0, i32 = 0, u32 = 0, i64 = 0, u64 = 0,
                f32 = 0, f64 = 0, color = Color.Red, level = Level.High }
-- What D_SET reads back as: flatc emits ulong enum values >= 2^63 as negative numbers
-- (Level.High == -1); the runtime stores them right, but a uint64_t read compares equal to a
-- negative Lua number only in compiled code, so compare with cdata.
local D_SET_READ = setmetatable({ level = U64_MAX }, { __index = D_SET })
local D_FIELDS = { "b", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64",
                   "color", "level" }
local D_GETTERS = { "B", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "F32", "F64",
                    "Color", "Level" }

local I8S = { -128, -1, 0, 1, 127 }
local BOOLS = { true, false, true }
local I16S = { -32768, 0, 32767 }
local U16S = { 0, 1, 65535 }
local I32S = { -2147483648, 0, 2147483647 }
local U32S = { 0, 1, 4294967295 }
local I64S = { I64_MIN, -1LL, 0LL, 9007199254740993LL, I64_MAX }
local U64S = { 0ULL, 1ULL, U64_HALF, U64_MAX }
local F32S = { 1.5, -0.0, inf, -inf, nan, 3.4028234663852886e38, 2 ^ -149 }
local F64S = { 0.1, -0.0, inf, -inf, nan, 1.7976931348623157e308, 2 ^ -1074 }
local STRINGS = { "", "a", "h\xc3\xa9llo w\xc3\xb6rld", "nul\0inside", string.rep("x", 1000) }
local COLORS = { Color.Red, Color.Green, Color.Blue }

local function pattern(n, mul, add)
    local mem = ffi.new("uint8_t[?]", n)
    for i = 0, n - 1 do
        mem[i] = (i * mul + add) % 256
    end
    return ffi.string(mem, n)
end

local PAYLOAD = pattern(256, 1, 0)
M.BIG_LEN = 1024 * 1024
local BIG = pattern(M.BIG_LEN, 31, 7)

------------------------------------------------------------------------------------------------
-- comparisons

-- Same value: NaN equals NaN, -0 differs from +0, cdata 64-bit integers compare by value.
local function same(a, b)
    if type(a) == "number" and type(b) == "number" then
        if a ~= a then
            return b ~= b
        end
        if a == 0 and b == 0 then
            return 1 / a == 1 / b
        end
        return a == b
    end
    return a == b
end

local function eq(got, want, what)
    if not same(got, want) then
        error(string.format("%s: got %s, want %s", what, tostring(got), tostring(want)), 2)
    end
end
M.eq = eq

local function is_absent(view, vo, what)
    if view:Offset(vo) ~= 0 then
        error(what .. ": expected absent", 2)
    end
end

local function is_present(view, vo, what)
    if view:Offset(vo) == 0 then
        error(what .. ": expected present", 2)
    end
end

------------------------------------------------------------------------------------------------
-- build

local function build_scalars(b, s)
    Scalars.Start(b)
    Scalars.AddB(b, s.b)
    Scalars.AddI8(b, s.i8)
    Scalars.AddU8(b, s.u8)
    Scalars.AddI16(b, s.i16)
    Scalars.AddU16(b, s.u16)
    Scalars.AddI32(b, s.i32)
    Scalars.AddU32(b, s.u32)
    Scalars.AddI64(b, s.i64)
    Scalars.AddU64(b, s.u64)
    Scalars.AddF32(b, s.f32)
    Scalars.AddF64(b, s.f64)
    return Scalars.End(b)
end

local function build_defaults_set(b)
    local name = b:CreateString("")
    Defaults.Start(b)
    Defaults.AddB(b, D_SET.b)
    Defaults.AddI8(b, D_SET.i8)
    Defaults.AddU8(b, D_SET.u8)
    Defaults.AddI16(b, D_SET.i16)
    Defaults.AddU16(b, D_SET.u16)
    Defaults.AddI32(b, D_SET.i32)
    Defaults.AddU32(b, D_SET.u32)
    Defaults.AddI64(b, D_SET.i64)
    Defaults.AddU64(b, D_SET.u64)
    Defaults.AddF32(b, D_SET.f32)
    Defaults.AddF64(b, D_SET.f64)
    Defaults.AddColor(b, D_SET.color)
    Defaults.AddLevel(b, D_SET.level)
    Defaults.AddName(b, name)
    return Defaults.End(b)
end

local function build_leaf(b, name, value)
    local n = name and b:CreateString(name)
    Leaf.Start(b)
    if n then
        Leaf.AddName(b, n)
    end
    if value then
        Leaf.AddValue(b, value)
    end
    return Leaf.End(b)
end

local function scalar_vector(b, start, prepend, t)
    start(b, #t)
    for i = #t, 1, -1 do
        prepend(b, t[i])
    end
    return b:EndVector(#t)
end

local function offset_vector(b, start, offs)
    start(b, #offs)
    for i = #offs, 1, -1 do
        b:PrependUOffsetTRelative(offs[i])
    end
    return b:EndVector(#offs)
end

local function build_full(b)
    -- grandchild: a Leaf in the union, non-default colour
    local gid = b:CreateString("grandchild")
    local gleaf = build_leaf(b, "leaf-in-union", 42)
    Root.Start(b)
    Root.AddId(b, gid)
    Root.AddColor(b, Color.Blue)
    Root.AddEquipmentType(b, Equipment.Leaf)
    Root.AddEquipment(b, gleaf)
    local grandchild = Root.End(b)

    -- child: minimum scalars, every default overridden, present-but-empty vectors, a Shield
    local cid = b:CreateString("child")
    local cscalars = build_scalars(b, S_MIN)
    local cdefaults = build_defaults_set(b)
    local empty_payload = b:CreateByteVectorFromPtr(ffi.cast("const uint8_t *", ""), 0)
    local empty_i32s = scalar_vector(b, Root.StartI32sVector, b.PrependInt32, {})
    local empty_strings = offset_vector(b, Root.StartStringsVector, {})
    local empty_leaves = offset_vector(b, Root.StartLeavesVector, {})
    Shield.Start(b)
    Shield.AddArmor(b, -3)
    Shield.AddPose(b, Pose.CreatePose(b, 7, 8, 9, Color.Green, -0.5))
    local shield = Shield.End(b)
    local cnote = b:CreateString("")
    Root.Start(b)
    Root.AddId(b, cid)
    Root.AddScalars(b, cscalars)
    Root.AddDefaults(b, cdefaults)
    Root.AddPayload(b, empty_payload)
    Root.AddI32s(b, empty_i32s)
    Root.AddStrings(b, empty_strings)
    Root.AddLeaves(b, empty_leaves)
    Root.AddEquipmentType(b, Equipment.Shield)
    Root.AddEquipment(b, shield)
    Root.AddNote(b, cnote)
    Root.AddChild(b, grandchild)
    local child = Root.End(b)

    -- root: everything
    local id = b:CreateString("root-full")
    local scalars = build_scalars(b, S_MAX)
    local dname = b:CreateString("defaults-absent")
    Defaults.Start(b)
    Defaults.AddName(b, dname)
    local defaults = Defaults.End(b)
    local payload = b:CreateByteVector(PAYLOAD)
    local i8s = scalar_vector(b, Root.StartI8sVector, b.PrependInt8, I8S)
    local bools = scalar_vector(b, Root.StartBoolsVector, b.PrependBool, BOOLS)
    local i16s = scalar_vector(b, Root.StartI16sVector, b.PrependInt16, I16S)
    local u16s = scalar_vector(b, Root.StartU16sVector, b.PrependUint16, U16S)
    local i32s = scalar_vector(b, Root.StartI32sVector, b.PrependInt32, I32S)
    local u32s = scalar_vector(b, Root.StartU32sVector, b.PrependUint32, U32S)
    local i64s = scalar_vector(b, Root.StartI64sVector, b.PrependInt64, I64S)
    local u64s = scalar_vector(b, Root.StartU64sVector, b.PrependUint64, U64S)
    local f32s = scalar_vector(b, Root.StartF32sVector, b.PrependFloat32, F32S)
    local f64s = scalar_vector(b, Root.StartF64sVector, b.PrependFloat64, F64S)
    local soffs = {}
    for i = 1, #STRINGS do
        soffs[i] = b:CreateString(STRINGS[i])
    end
    local strings = offset_vector(b, Root.StartStringsVector, soffs)
    local leaves = offset_vector(b, Root.StartLeavesVector, {
        build_leaf(b, "l0", 0), build_leaf(b, nil, nil), build_leaf(b, "", -1) })
    Root.StartVecsVector(b, 2)
    Vec3.CreateVec3(b, -1.5, 0.5, 65536)
    Vec3.CreateVec3(b, 1, 2, 3)
    local vecs = b:EndVector(2)
    Root.StartPairsVector(b, 2)
    Pair.CreatePair(b, 32767, I64_MAX, 0)
    Pair.CreatePair(b, -1, I64_MIN, 255)
    local pairs_ = b:EndVector(2)
    local colors = scalar_vector(b, Root.StartColorsVector, b.PrependInt8, COLORS)
    local sname = b:CreateString("excalibur")
    Sword.Start(b)
    Sword.AddDamage(b, -5)
    Sword.AddName(b, sname)
    local sword = Sword.End(b)
    local note = b:CreateString("note")

    Root.Start(b)
    Root.AddId(b, id)
    Root.AddScalars(b, scalars)
    Root.AddDefaults(b, defaults)
    Root.AddPayload(b, payload)
    Root.AddI8s(b, i8s)
    Root.AddBools(b, bools)
    Root.AddI16s(b, i16s)
    Root.AddU16s(b, u16s)
    Root.AddI32s(b, i32s)
    Root.AddU32s(b, u32s)
    Root.AddI64s(b, i64s)
    Root.AddU64s(b, u64s)
    Root.AddF32s(b, f32s)
    Root.AddF64s(b, f64s)
    Root.AddStrings(b, strings)
    Root.AddLeaves(b, leaves)
    Root.AddVecs(b, vecs)
    Root.AddPairs(b, pairs_)
    Root.AddColors(b, colors)
    Root.AddPos(b, Vec3.CreateVec3(b, 1.25, -2.5, 0.75))
    Root.AddPair(b, Pair.CreatePair(b, -2, 2 ^ 40, 7))
    Root.AddPose(b, Pose.CreatePose(b, 4, 5, 6, Color.Blue, 2.5))
    Root.AddColor(b, Color.Red)
    Root.AddEquipmentType(b, Equipment.Sword)
    Root.AddEquipment(b, sword)
    Root.AddChild(b, child)
    Root.AddNote(b, note)
    return Root.End(b)
end

local function build_root_with(b, id, etype, e)
    local ido = b:CreateString(id)
    Root.Start(b)
    Root.AddId(b, ido)
    if etype then
        Root.AddEquipmentType(b, etype)
        Root.AddEquipment(b, e)
    end
    return Root.End(b)
end

function M.build(b, name)
    local root
    if name == "full" then
        root = build_full(b)
    elseif name == "minimal" then
        root = build_root_with(b, "")
    elseif name == "union_leaf" then
        root = build_root_with(b, "u-leaf", Equipment.Leaf, build_leaf(b, "leaf", -7))
    elseif name == "union_shield" then
        Shield.Start(b)
        root = build_root_with(b, "u-shield", Equipment.Shield, Shield.End(b))
    elseif name == "big" then
        -- reserve the vector and fill it in place: one ffi.copy into the builder's memory
        local p = b:StartByteVectorInPlace(#BIG)
        ffi.copy(p, BIG, #BIG)
        local payload = b:EndVector(#BIG)
        local id = b:CreateString("big")
        Root.Start(b)
        Root.AddId(b, id)
        Root.AddPayload(b, payload)
        root = Root.End(b)
    else
        error("unknown case " .. tostring(name))
    end
    local fid = M.identifier[name]
    if fid then
        return b:FinishWithIdentifier(root, fid)
    end
    return b:Finish(root)
end

------------------------------------------------------------------------------------------------
-- check

local function check_scalars(s, want, what)
    for i = 1, #SCALAR_FIELDS do
        local f = SCALAR_FIELDS[i]
        eq(s[SCALAR_GETTERS[i]](s), want[f], what .. "." .. f)
    end
end

local function check_defaults(d, want, name, what)
    for i = 1, #D_FIELDS do
        local f = D_FIELDS[i]
        eq(d[D_GETTERS[i]](d), want[f], what .. "." .. f)
    end
    eq(d:Name(), name, what .. ".name")
end

local function check_vector(r, getter, want, what)
    eq(r[getter .. "Length"](r), #want, what .. " length")
    local get = r[getter]
    for i = 1, #want do
        eq(get(r, i), want[i], what .. "[" .. i .. "]")
    end
end

local function check_vec3(v, x, y, z, what)
    eq(v:X(), x, what .. ".x")
    eq(v:Y(), y, what .. ".y")
    eq(v:Z(), z, what .. ".z")
end

local function check_pair(p, a, b, c, what)
    eq(p:A(), a, what .. ".a")
    eq(p:B(), b, what .. ".b")
    eq(p:C(), c, what .. ".c")
end

local function union_as(r, class)
    local u = r:Equipment()
    local obj = class.New()
    obj:Init(u.bytes, u.pos)
    return obj
end

-- Every field of a Root left at its default / absent, except those listed in `set`.
local ROOT_VECTORS = { Payload = 10, I8s = 12, Bools = 14, I16s = 16, U16s = 18, I32s = 20,
                       U32s = 22, I64s = 24, U64s = 26, F32s = 28, F64s = 30, Strings = 32,
                       Leaves = 34, Vecs = 36, Pairs = 38, Colors = 40 }
local ROOT_VECTOR_NAMES = { "Payload", "I8s", "Bools", "I16s", "U16s", "I32s", "U32s", "I64s",
                            "U64s", "F32s", "F64s", "Strings", "Leaves", "Vecs", "Pairs", "Colors" }

local function check_absent_rest(r, set, what)
    local v = r.view
    for i = 1, #ROOT_VECTOR_NAMES do
        local name = ROOT_VECTOR_NAMES[i]
        if not set[name] then
            is_absent(v, ROOT_VECTORS[name], what .. "." .. name)
            eq(r[name .. "Length"](r), 0, what .. "." .. name .. " length")
        end
    end
    if not set.Scalars then eq(r:Scalars(), nil, what .. ".scalars") end
    if not set.Defaults then eq(r:Defaults(), nil, what .. ".defaults") end
    if not set.Pos then eq(r:Pos(), nil, what .. ".pos") end
    if not set.Pair then eq(r:Pair(), nil, what .. ".pair") end
    if not set.Pose then eq(r:Pose(), nil, what .. ".pose") end
    if not set.Color then eq(r:Color(), Color.Green, what .. ".color") end
    if not set.Equipment then
        eq(r:EquipmentType(), Equipment.NONE, what .. ".equipment_type")
        eq(r:Equipment(), nil, what .. ".equipment")
    end
    if not set.Child then eq(r:Child(), nil, what .. ".child") end
    if not set.Note then eq(r:Note(), nil, what .. ".note") end
end

local function check_full(r)
    eq(r:Id(), "root-full", "id")
    check_scalars(r:Scalars(), S_MAX, "scalars")
    check_defaults(r:Defaults(), D_DEFAULT, "defaults-absent", "defaults")

    eq(r:PayloadLength(), #PAYLOAD, "payload length")
    eq(r:PayloadAsString(), PAYLOAD, "payload as string")
    eq(r:PayloadAsString(2, 4), PAYLOAD:sub(2, 4), "payload as string 2..4")
    for i = 1, #PAYLOAD do
        eq(r:Payload(i), PAYLOAD:byte(i), "payload[" .. i .. "]")
    end
    local p, n = r.view:VectorPtr(r.view:Offset(10))
    eq(n, #PAYLOAD, "payload VectorPtr length")
    eq(ffi.string(p, n), PAYLOAD, "payload VectorPtr bytes")

    check_vector(r, "I8s", I8S, "i8s")
    eq(r:BoolsLength(), #BOOLS, "bools length")
    for i = 1, #BOOLS do
        eq(r:Bools(i) ~= 0, BOOLS[i], "bools[" .. i .. "]")
    end
    check_vector(r, "I16s", I16S, "i16s")
    check_vector(r, "U16s", U16S, "u16s")
    check_vector(r, "I32s", I32S, "i32s")
    check_vector(r, "U32s", U32S, "u32s")
    check_vector(r, "I64s", I64S, "i64s")
    check_vector(r, "U64s", U64S, "u64s")
    check_vector(r, "F32s", F32S, "f32s")
    check_vector(r, "F64s", F64S, "f64s")
    check_vector(r, "Strings", STRINGS, "strings")
    check_vector(r, "Colors", COLORS, "colors")

    eq(r:LeavesLength(), 3, "leaves length")
    eq(r:Leaves(1):Name(), "l0", "leaves[1].name")
    eq(r:Leaves(1):Value(), 0, "leaves[1].value")
    eq(r:Leaves(2):Name(), nil, "leaves[2].name")
    eq(r:Leaves(2):Value(), 7, "leaves[2].value")
    eq(r:Leaves(3):Name(), "", "leaves[3].name")
    eq(r:Leaves(3):Value(), -1, "leaves[3].value")

    eq(r:VecsLength(), 2, "vecs length")
    check_vec3(r:Vecs(1), 1, 2, 3, "vecs[1]")
    check_vec3(r:Vecs(2), -1.5, 0.5, 65536, "vecs[2]")
    eq(r:PairsLength(), 2, "pairs length")
    check_pair(r:Pairs(1), -1, I64_MIN, 255, "pairs[1]")
    check_pair(r:Pairs(2), 32767, I64_MAX, 0, "pairs[2]")

    check_vec3(r:Pos(), 1.25, -2.5, 0.75, "pos")
    check_pair(r:Pair(), -2, 2 ^ 40, 7, "pair")
    local pose = r:Pose()
    check_vec3(pose:Pos(Vec3.New()), 4, 5, 6, "pose.pos")
    eq(pose:Color(), Color.Blue, "pose.color")
    eq(pose:Weight(), 2.5, "pose.weight")
    eq(r:Color(), Color.Red, "color")

    eq(r:EquipmentType(), Equipment.Sword, "equipment_type")
    local sword = union_as(r, Sword)
    eq(sword:Damage(), -5, "sword.damage")
    eq(sword:Name(), "excalibur", "sword.name")
    eq(r:Note(), "note", "note")

    -- child
    local c = r:Child()
    eq(c:Id(), "child", "child.id")
    check_scalars(c:Scalars(), S_MIN, "child.scalars")
    check_defaults(c:Defaults(), D_SET_READ, "", "child.defaults")
    is_present(c.view, 10, "child.payload")
    eq(c:PayloadLength(), 0, "child.payload length")
    eq(c:PayloadAsString(), "", "child.payload as string")
    local cp, cn = c.view:VectorPtr(c.view:Offset(10))
    eq(cn, 0, "child.payload VectorPtr length")
    eq(type(cp), "cdata", "child.payload VectorPtr ptr")
    is_present(c.view, 20, "child.i32s")
    eq(c:I32sLength(), 0, "child.i32s length")
    is_present(c.view, 32, "child.strings")
    eq(c:StringsLength(), 0, "child.strings length")
    is_present(c.view, 34, "child.leaves")
    eq(c:LeavesLength(), 0, "child.leaves length")
    eq(c:EquipmentType(), Equipment.Shield, "child.equipment_type")
    local shield = union_as(c, Shield)
    eq(shield:Armor(), -3, "child.shield.armor")
    local sp = shield:Pose()
    check_vec3(sp:Pos(Vec3.New()), 7, 8, 9, "child.shield.pose.pos")
    eq(sp:Color(), Color.Green, "child.shield.pose.color")
    eq(sp:Weight(), -0.5, "child.shield.pose.weight")
    eq(c:Note(), "", "child.note")
    check_absent_rest(c, { Scalars = true, Defaults = true, Payload = true, I32s = true,
                           Strings = true, Leaves = true, Equipment = true, Note = true,
                           Child = true }, "child")

    -- grandchild
    local g = c:Child()
    eq(g:Id(), "grandchild", "grandchild.id")
    eq(g:Color(), Color.Blue, "grandchild.color")
    eq(g:EquipmentType(), Equipment.Leaf, "grandchild.equipment_type")
    local leaf = union_as(g, Leaf)
    eq(leaf:Name(), "leaf-in-union", "grandchild.leaf.name")
    eq(leaf:Value(), 42, "grandchild.leaf.value")
    check_absent_rest(g, { Color = true, Equipment = true }, "grandchild")
end

function M.check(buf, name)
    local fid = M.identifier[name]
    if fid then
        eq(buf:Slice(4, 8), fid, "file identifier")
    end
    local r = Root.GetRootAsRoot(buf, 0)
    if name == "full" then
        check_full(r)
    elseif name == "minimal" then
        eq(r:Id(), "", "id")
        check_absent_rest(r, {}, "minimal")
    elseif name == "union_leaf" then
        eq(r:Id(), "u-leaf", "id")
        eq(r:EquipmentType(), Equipment.Leaf, "equipment_type")
        local leaf = union_as(r, Leaf)
        eq(leaf:Name(), "leaf", "leaf.name")
        eq(leaf:Value(), -7, "leaf.value")
        check_absent_rest(r, { Equipment = true }, "union_leaf")
    elseif name == "union_shield" then
        eq(r:Id(), "u-shield", "id")
        eq(r:EquipmentType(), Equipment.Shield, "equipment_type")
        local shield = union_as(r, Shield)
        eq(shield:Armor(), 10, "shield.armor")
        eq(shield:Pose(), nil, "shield.pose")
        check_absent_rest(r, { Equipment = true }, "union_shield")
    elseif name == "big" then
        eq(r:Id(), "big", "id")
        local p, n = r.view:VectorPtr(r.view:Offset(10))
        eq(n, M.BIG_LEN, "payload length")
        eq(r:PayloadLength(), M.BIG_LEN, "payload length (generated)")
        eq(ffi.string(p, n) == BIG, true, "payload bytes")
        eq(r:Payload(1), BIG:byte(1), "payload[1]")
        eq(r:Payload(M.BIG_LEN), BIG:byte(M.BIG_LEN), "payload[last]")
        check_absent_rest(r, { Payload = true }, "big")
    else
        error("unknown case " .. tostring(name))
    end
end

------------------------------------------------------------------------------------------------
-- walk: touch every accessor (for fuzzing); values are not checked

local walk_root

local function walk_union(r)
    local t = r:EquipmentType()
    local u = r:Equipment()
    if not u then
        return
    end
    if t == Equipment.Leaf then
        local o = union_as(r, Leaf)
        o:Name(); o:Value()
    elseif t == Equipment.Sword then
        local o = union_as(r, Sword)
        o:Name(); o:Damage()
    elseif t == Equipment.Shield then
        local o = union_as(r, Shield)
        o:Armor()
        local p = o:Pose()
        if p then
            p:Pos(Vec3.New()):X(); p:Color(); p:Weight()
        end
    end
end

walk_root = function(r, depth)
    r:Id()
    local s = r:Scalars()
    if s then
        for i = 1, #SCALAR_GETTERS do
            s[SCALAR_GETTERS[i]](s)
        end
    end
    local d = r:Defaults()
    if d then
        for i = 1, #D_GETTERS do
            d[D_GETTERS[i]](d)
        end
        d:Name()
    end
    r:PayloadAsString()
    local o = r.view:Offset(10)
    if o ~= 0 then
        r.view:VectorPtr(o)
    end
    local scalar_vectors = { "Payload", "I8s", "Bools", "I16s", "U16s", "I32s", "U32s", "I64s",
                             "U64s", "F32s", "F64s", "Strings", "Colors" }
    for k = 1, #scalar_vectors do
        local name = scalar_vectors[k]
        local get = r[name]
        for i = 1, r[name .. "Length"](r) do
            get(r, i)
        end
    end
    for i = 1, r:LeavesLength() do
        local l = r:Leaves(i)
        l:Name(); l:Value()
    end
    for i = 1, r:VecsLength() do
        local v = r:Vecs(i)
        v:X(); v:Y(); v:Z()
    end
    for i = 1, r:PairsLength() do
        local p = r:Pairs(i)
        p:A(); p:B(); p:C()
    end
    local v = r:Pos()
    if v then v:X(); v:Y(); v:Z() end
    local p = r:Pair()
    if p then p:A(); p:B(); p:C() end
    local pose = r:Pose()
    if pose then pose:Pos(Vec3.New()):Z(); pose:Color(); pose:Weight() end
    r:Color()
    walk_union(r)
    r:Note()
    if depth < 4 then
        local c = r:Child()
        if c then
            walk_root(c, depth + 1)
        end
    end
end

function M.walk(buf)
    walk_root(Root.GetRootAsRoot(buf, 0), 0)
end

return M
