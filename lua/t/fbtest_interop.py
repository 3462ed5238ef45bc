#!/usr/bin/env python3
"""Python side of the LuaJIT FlatBuffers runtime's cross-implementation test.

Builds the cases of lua/t/fbtest_cases.lua with the official `flatbuffers` package (25.12.19)
and checks buffers built by Lua. Keep the case data in step with fbtest_cases.lua.

    fbtest_interop.py GEN_DIR build OUT_DIR   # write OUT_DIR/<case>.bin
    fbtest_interop.py GEN_DIR check IN_DIR    # check every IN_DIR/<case>.bin

GEN_DIR holds the output of `flatc --python lua/t/fbtest.fbs` (package `fbtest`).
"""

import math
import os
import struct
import sys

NAMES = ["full", "minimal", "union_leaf", "union_shield", "big"]
IDENTIFIER = {"full": b"FBT1", "union_leaf": b"FBT1", "union_shield": b"FBT1"}

INF, NAN = math.inf, math.nan
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64_MAX = 2**64 - 1

S_MAX = dict(b=True, i8=127, u8=255, i16=32767, u16=65535, i32=2147483647, u32=4294967295,
             i64=I64_MAX, u64=U64_MAX, f32=INF, f64=NAN)
S_MIN = dict(b=False, i8=-128, u8=0, i16=-32768, u16=0, i32=-2147483648, u32=0, i64=I64_MIN,
             u64=0, f32=-INF, f64=2.0**-1074)
SCALAR_FIELDS = ["b", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64"]

D_DEFAULT = dict(b=True, i8=-8, u8=200, i16=-1600, u16=60000, i32=-320000, u32=4000000000,
                 i64=-6400000000, u64=12800000000, f32=1.5, f64=-2.25, color=2, level=0)
D_SET = dict(b=False, i8=0, u8=0, i16=0, u16=0, i32=0, u32=0, i64=0, u64=0, f32=0.0, f64=0.0,
             color=0, level=U64_MAX)
D_FIELDS = SCALAR_FIELDS + ["color", "level"]

I8S = [-128, -1, 0, 1, 127]
BOOLS = [True, False, True]
I16S = [-32768, 0, 32767]
U16S = [0, 1, 65535]
I32S = [-2147483648, 0, 2147483647]
U32S = [0, 1, 4294967295]
I64S = [I64_MIN, -1, 0, 2**53 + 1, I64_MAX]
U64S = [0, 1, 2**63, U64_MAX]
F32S = [1.5, -0.0, INF, -INF, NAN, 3.4028234663852886e38, 2.0**-149]
F64S = [0.1, -0.0, INF, -INF, NAN, 1.7976931348623157e308, 2.0**-1074]
STRINGS = [b"", b"a", "h\u00e9llo w\u00f6rld".encode(), b"nul\0inside", b"x" * 1000]
COLORS = [0, 1, 2]
PAYLOAD = bytes(range(256))
BIG_LEN = 1 << 20
BIG = bytes((i * 31 + 7) % 256 for i in range(BIG_LEN))


def load_generated(gen_dir):
    sys.path.insert(0, gen_dir)
    global flatbuffers, Root, Scalars, Defaults, Leaf, Sword, Shield, Vec3, Pair, Pose
    global Color, Level, Equipment
    import flatbuffers  # noqa: F401
    from fbtest import Root, Scalars, Defaults, Leaf, Sword, Shield, Vec3, Pair, Pose
    from fbtest.Color import Color
    from fbtest.Level import Level
    from fbtest.Equipment import Equipment


# ---------------------------------------------------------------------------------------------
# build

def cap(name):
    return name[0].upper() + name[1:]


def build_scalars(b, s):
    Scalars.Start(b)
    for f in SCALAR_FIELDS:
        getattr(Scalars, "Add" + cap(f))(b, s[f])
    return Scalars.End(b)


def build_defaults_set(b):
    name = b.CreateString("")
    Defaults.Start(b)
    for f in D_FIELDS:
        getattr(Defaults, "Add" + cap(f))(b, D_SET[f])
    Defaults.AddName(b, name)
    return Defaults.End(b)


def build_leaf(b, name, value):
    n = b.CreateString(name) if name is not None else None
    Leaf.Start(b)
    if n is not None:
        Leaf.AddName(b, n)
    if value is not None:
        Leaf.AddValue(b, value)
    return Leaf.End(b)


def scalar_vector(b, start, prepend, values):
    start(b, len(values))
    for v in reversed(values):
        prepend(v)
    return b.EndVector()


def offset_vector(b, start, offs):
    start(b, len(offs))
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def build_full(b):
    gid = b.CreateString("grandchild")
    gleaf = build_leaf(b, "leaf-in-union", 42)
    Root.Start(b)
    Root.AddId(b, gid)
    Root.AddColor(b, Color.Blue)
    Root.AddEquipmentType(b, Equipment.Leaf)
    Root.AddEquipment(b, gleaf)
    grandchild = Root.End(b)

    cid = b.CreateString("child")
    cscalars = build_scalars(b, S_MIN)
    cdefaults = build_defaults_set(b)
    empty_payload = b.CreateByteVector(b"")
    empty_i32s = scalar_vector(b, Root.StartI32sVector, b.PrependInt32, [])
    empty_strings = offset_vector(b, Root.StartStringsVector, [])
    empty_leaves = offset_vector(b, Root.StartLeavesVector, [])
    Shield.Start(b)
    Shield.AddArmor(b, -3)
    Shield.AddPose(b, Pose.CreatePose(b, 7, 8, 9, Color.Green, -0.5))
    shield = Shield.End(b)
    cnote = b.CreateString("")
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
    child = Root.End(b)

    rid = b.CreateString("root-full")
    scalars = build_scalars(b, S_MAX)
    dname = b.CreateString("defaults-absent")
    Defaults.Start(b)
    Defaults.AddName(b, dname)
    defaults = Defaults.End(b)
    payload = b.CreateByteVector(PAYLOAD)
    i8s = scalar_vector(b, Root.StartI8sVector, b.PrependInt8, I8S)
    bools = scalar_vector(b, Root.StartBoolsVector, b.PrependBool, BOOLS)
    i16s = scalar_vector(b, Root.StartI16sVector, b.PrependInt16, I16S)
    u16s = scalar_vector(b, Root.StartU16sVector, b.PrependUint16, U16S)
    i32s = scalar_vector(b, Root.StartI32sVector, b.PrependInt32, I32S)
    u32s = scalar_vector(b, Root.StartU32sVector, b.PrependUint32, U32S)
    i64s = scalar_vector(b, Root.StartI64sVector, b.PrependInt64, I64S)
    u64s = scalar_vector(b, Root.StartU64sVector, b.PrependUint64, U64S)
    f32s = scalar_vector(b, Root.StartF32sVector, b.PrependFloat32, F32S)
    f64s = scalar_vector(b, Root.StartF64sVector, b.PrependFloat64, F64S)
    soffs = [b.CreateString(s) for s in STRINGS]
    strings = offset_vector(b, Root.StartStringsVector, soffs)
    leaves = offset_vector(b, Root.StartLeavesVector, [
        build_leaf(b, "l0", 0), build_leaf(b, None, None), build_leaf(b, "", -1)])
    Root.StartVecsVector(b, 2)
    Vec3.CreateVec3(b, -1.5, 0.5, 65536)
    Vec3.CreateVec3(b, 1, 2, 3)
    vecs = b.EndVector()
    Root.StartPairsVector(b, 2)
    Pair.CreatePair(b, 32767, I64_MAX, 0)
    Pair.CreatePair(b, -1, I64_MIN, 255)
    pairs = b.EndVector()
    colors = scalar_vector(b, Root.StartColorsVector, b.PrependInt8, COLORS)
    sname = b.CreateString("excalibur")
    Sword.Start(b)
    Sword.AddDamage(b, -5)
    Sword.AddName(b, sname)
    sword = Sword.End(b)
    note = b.CreateString("note")

    Root.Start(b)
    Root.AddId(b, rid)
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
    Root.AddPairs(b, pairs)
    Root.AddColors(b, colors)
    Root.AddPos(b, Vec3.CreateVec3(b, 1.25, -2.5, 0.75))
    Root.AddPair(b, Pair.CreatePair(b, -2, 2**40, 7))
    Root.AddPose(b, Pose.CreatePose(b, 4, 5, 6, Color.Blue, 2.5))
    Root.AddColor(b, Color.Red)
    Root.AddEquipmentType(b, Equipment.Sword)
    Root.AddEquipment(b, sword)
    Root.AddChild(b, child)
    Root.AddNote(b, note)
    return Root.End(b)


def build_root_with(b, rid, etype=None, e=None):
    ido = b.CreateString(rid)
    Root.Start(b)
    Root.AddId(b, ido)
    if etype is not None:
        Root.AddEquipmentType(b, etype)
        Root.AddEquipment(b, e)
    return Root.End(b)


def build(name):
    b = flatbuffers.Builder(1024)
    if name == "full":
        root = build_full(b)
    elif name == "minimal":
        root = build_root_with(b, "")
    elif name == "union_leaf":
        root = build_root_with(b, "u-leaf", Equipment.Leaf, build_leaf(b, "leaf", -7))
    elif name == "union_shield":
        Shield.Start(b)
        root = build_root_with(b, "u-shield", Equipment.Shield, Shield.End(b))
    elif name == "big":
        payload = b.CreateByteVector(BIG)
        rid = b.CreateString("big")
        Root.Start(b)
        Root.AddId(b, rid)
        Root.AddPayload(b, payload)
        root = Root.End(b)
    else:
        raise ValueError(name)
    b.Finish(root, file_identifier=IDENTIFIER.get(name))
    return bytes(b.Output())


# ---------------------------------------------------------------------------------------------
# check

def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b and type(a) is type(b)


def eq(got, want, what):
    if not same(got, want):
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def check_scalars(s, want, what):
    for f in SCALAR_FIELDS:
        eq(getattr(s, cap(f))(), want[f], f"{what}.{f}")


def check_defaults(d, want, name, what):
    for f in D_FIELDS:
        eq(getattr(d, cap(f))(), want[f], f"{what}.{f}")
    eq(d.Name(), name, f"{what}.name")


def check_vector(r, getter, want, what):
    eq(getattr(r, getter + "Length")(), len(want), what + " length")
    eq(getattr(r, getter + "IsNone")(), False, what + " present")
    get = getattr(r, getter)
    for i, w in enumerate(want):
        eq(get(i), w, f"{what}[{i}]")


def check_vec3(v, x, y, z, what):
    eq(v.X(), float(x), what + ".x")
    eq(v.Y(), float(y), what + ".y")
    eq(v.Z(), float(z), what + ".z")


def check_pair(p, a, b, c, what):
    eq(p.A(), a, what + ".a")
    eq(p.B(), b, what + ".b")
    eq(p.C(), c, what + ".c")


def union_as(r, cls):
    t = r.Equipment()
    obj = cls()
    obj.Init(t.Bytes, t.Pos)
    return obj


VECTORS = ["Payload", "I8s", "Bools", "I16s", "U16s", "I32s", "U32s", "I64s", "U64s", "F32s",
           "F64s", "Strings", "Leaves", "Vecs", "Pairs", "Colors"]


def check_absent_rest(r, present, what):
    for name in VECTORS:
        if name not in present:
            eq(getattr(r, name + "IsNone")(), True, f"{what}.{name} absent")
            eq(getattr(r, name + "Length")(), 0, f"{what}.{name} length")
    for name in ["Scalars", "Defaults", "Pos", "Pair", "Pose", "Child", "Note"]:
        if name not in present:
            eq(getattr(r, name)(), None, f"{what}.{name}")
    if "Color" not in present:
        eq(r.Color(), Color.Green, what + ".color")
    if "Equipment" not in present:
        eq(r.EquipmentType(), Equipment.NONE, what + ".equipment_type")
        eq(r.Equipment(), None, what + ".equipment")


def check_full(r):
    eq(r.Id(), b"root-full", "id")
    check_scalars(r.Scalars(), S_MAX, "scalars")
    check_defaults(r.Defaults(), D_DEFAULT, b"defaults-absent", "defaults")
    check_vector(r, "Payload", list(PAYLOAD), "payload")
    check_vector(r, "I8s", I8S, "i8s")
    check_vector(r, "Bools", BOOLS, "bools")
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

    eq(r.LeavesLength(), 3, "leaves length")
    eq(r.Leaves(0).Name(), b"l0", "leaves[0].name")
    eq(r.Leaves(0).Value(), 0, "leaves[0].value")
    eq(r.Leaves(1).Name(), None, "leaves[1].name")
    eq(r.Leaves(1).Value(), 7, "leaves[1].value")
    eq(r.Leaves(2).Name(), b"", "leaves[2].name")
    eq(r.Leaves(2).Value(), -1, "leaves[2].value")

    eq(r.VecsLength(), 2, "vecs length")
    check_vec3(r.Vecs(0), 1, 2, 3, "vecs[0]")
    check_vec3(r.Vecs(1), -1.5, 0.5, 65536, "vecs[1]")
    eq(r.PairsLength(), 2, "pairs length")
    check_pair(r.Pairs(0), -1, I64_MIN, 255, "pairs[0]")
    check_pair(r.Pairs(1), 32767, I64_MAX, 0, "pairs[1]")

    check_vec3(r.Pos(), 1.25, -2.5, 0.75, "pos")
    check_pair(r.Pair(), -2, 2**40, 7, "pair")
    pose = r.Pose()
    check_vec3(pose.Pos(Vec3.Vec3()), 4, 5, 6, "pose.pos")
    eq(pose.Color(), Color.Blue, "pose.color")
    eq(pose.Weight(), 2.5, "pose.weight")
    eq(r.Color(), Color.Red, "color")

    eq(r.EquipmentType(), Equipment.Sword, "equipment_type")
    sword = union_as(r, Sword.Sword)
    eq(sword.Damage(), -5, "sword.damage")
    eq(sword.Name(), b"excalibur", "sword.name")
    eq(r.Note(), b"note", "note")

    c = r.Child()
    eq(c.Id(), b"child", "child.id")
    check_scalars(c.Scalars(), S_MIN, "child.scalars")
    check_defaults(c.Defaults(), D_SET, b"", "child.defaults")
    for name in ["Payload", "I32s", "Strings", "Leaves"]:
        eq(getattr(c, name + "IsNone")(), False, f"child.{name} present")
        eq(getattr(c, name + "Length")(), 0, f"child.{name} length")
    eq(c.EquipmentType(), Equipment.Shield, "child.equipment_type")
    shield = union_as(c, Shield.Shield)
    eq(shield.Armor(), -3, "child.shield.armor")
    sp = shield.Pose()
    check_vec3(sp.Pos(Vec3.Vec3()), 7, 8, 9, "child.shield.pose.pos")
    eq(sp.Color(), Color.Green, "child.shield.pose.color")
    eq(sp.Weight(), -0.5, "child.shield.pose.weight")
    eq(c.Note(), b"", "child.note")
    check_absent_rest(c, {"Scalars", "Defaults", "Payload", "I32s", "Strings", "Leaves",
                          "Equipment", "Note", "Child"}, "child")

    g = c.Child()
    eq(g.Id(), b"grandchild", "grandchild.id")
    eq(g.Color(), Color.Blue, "grandchild.color")
    eq(g.EquipmentType(), Equipment.Leaf, "grandchild.equipment_type")
    leaf = union_as(g, Leaf.Leaf)
    eq(leaf.Name(), b"leaf-in-union", "grandchild.leaf.name")
    eq(leaf.Value(), 42, "grandchild.leaf.value")
    check_absent_rest(g, {"Color", "Equipment"}, "grandchild")


def check(buf, name):
    fid = IDENTIFIER.get(name)
    if fid:
        eq(buf[4:8], fid, "file identifier")
        eq(Root.Root.RootBufferHasIdentifier(buf, 0), True, "RootBufferHasIdentifier")
    r = Root.Root.GetRootAs(buf, 0)
    if name == "full":
        check_full(r)
    elif name == "minimal":
        eq(r.Id(), b"", "id")
        check_absent_rest(r, set(), "minimal")
    elif name == "union_leaf":
        eq(r.Id(), b"u-leaf", "id")
        eq(r.EquipmentType(), Equipment.Leaf, "equipment_type")
        leaf = union_as(r, Leaf.Leaf)
        eq(leaf.Name(), b"leaf", "leaf.name")
        eq(leaf.Value(), -7, "leaf.value")
        check_absent_rest(r, {"Equipment"}, "union_leaf")
    elif name == "union_shield":
        eq(r.Id(), b"u-shield", "id")
        eq(r.EquipmentType(), Equipment.Shield, "equipment_type")
        shield = union_as(r, Shield.Shield)
        eq(shield.Armor(), 10, "shield.armor")
        eq(shield.Pose(), None, "shield.pose")
        check_absent_rest(r, {"Equipment"}, "union_shield")
    elif name == "big":
        eq(r.Id(), b"big", "id")
        eq(r.PayloadLength(), BIG_LEN, "payload length")
        eq(payload_bytes(r) == BIG, True, "payload bytes")
        eq(r.Payload(0), BIG[0], "payload[0]")
        eq(r.Payload(BIG_LEN - 1), BIG[-1], "payload[last]")
        check_absent_rest(r, {"Payload"}, "big")
    else:
        raise ValueError(name)


def payload_bytes(r):
    # Without numpy: locate the vector through the table API (no per-byte calls).
    tab = r._tab
    o = tab.Offset(10)
    start = tab.Vector(o)
    return bytes(tab.Bytes[start:start + tab.VectorLen(o)])


def main(argv):
    if len(argv) != 4 or argv[2] not in ("build", "check"):
        sys.exit(__doc__)
    load_generated(argv[1])
    cmd, folder = argv[2], argv[3]
    passed = 0
    if cmd == "build":
        os.makedirs(folder, exist_ok=True)
        for name in NAMES:
            buf = build(name)
            check(buf, name)  # the expectations hold for Python's own buffers
            with open(os.path.join(folder, name + ".bin"), "wb") as f:
                f.write(buf)
            print(f"ok - python built and checked {name} ({len(buf)} bytes)")
            passed += 1
    else:
        for name in NAMES:
            with open(os.path.join(folder, name + ".bin"), "rb") as f:
                buf = f.read()
            check(buf, name)
            print(f"ok - python read {name} built by Lua ({len(buf)} bytes)")
            passed += 1
    print(f"python {cmd}: {passed} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv)
