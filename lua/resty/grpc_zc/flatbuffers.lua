-- FlatBuffers runtime for LuaJIT that reads and builds in place through FFI pointers.
--
-- It offers the API that `flatc --lua` (25.12.19) generated code calls (`flatbuffers.view`,
-- `flatbuffers.N`, `flatbuffers.binaryArray`, `flatbuffers.Builder`), backed by cdata memory
-- instead of Lua strings and tables, so a buffer in a shared-memory arena slot is read and
-- written where it lies:
--
--     arena slot (cdata) --binaryArray.FromPtr--> view --generated accessors--> Lua values
--     Lua values --generated Add*/Create*--> Builder.FromBuffer(slot, cap) --Bytes()--> ptr, len
--
-- Generated code does `require('flatbuffers')`; call `require("resty.grpc_zc.flatbuffers")
-- .preload()` once before requiring any generated module. See docs/flatbuffers-lua.md.
--
-- Conventions:
--   * Positions are 0-based byte offsets from the start of the buffer (as upstream).
--   * Every read is range-checked against the buffer length; a bad offset raises
--     "flatbuffers: out of bounds ...". Buffers may come from another thread or be garbage.
--   * Scalars are read and written with unaligned native loads/stores: correct on little-endian
--     CPUs that allow unaligned access (x86_64, aarch64), which is what this project runs on.
--   * 64-bit integers read back as int64_t / uint64_t cdata (exact); builders accept numbers or
--     cdata. Other scalars are Lua numbers. Bool reads give the stored byte (generated code
--     compares it with 0).
--   * Misuse (wrong argument types, unbalanced Start/End) raises error(msg, 2); data errors
--     (out of bounds, buffer full) raise a message starting with "flatbuffers: " and no
--     position prefix, for callers that pcall at their boundary.

local ffi = require "ffi"
local bit = require "bit"

local ffi_cast = ffi.cast
local ffi_copy = ffi.copy
local ffi_fill = ffi.fill
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_typeof = ffi.typeof
local band = bit.band
local error = error
local type = type
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local str_format = string.format

local _M = { version = "0.1.0" }

local u8p = ffi_typeof("uint8_t *")
local cu8p = ffi_typeof("const uint8_t *")
local cu16p = ffi_typeof("const uint16_t *")
local u16p = ffi_typeof("uint16_t *")
local cu32p = ffi_typeof("const uint32_t *")
local u32p = ffi_typeof("uint32_t *")
local ci32p = ffi_typeof("const int32_t *")
local i32p = ffi_typeof("int32_t *")
local u8arr = ffi_typeof("uint8_t[?]")
local i32arr = ffi_typeof("int32_t[?]")
local u16arr = ffi_typeof("uint16_t[?]")

-- Largest buffer a builder grows to (uoffset_t is 32-bit; upstream caps at 2 GiB as well).
local MAX_BUFFER_SIZE = 0x80000000

-- Cold error paths live in separate functions so traces only carry a guard and an exit.
local function oob(off, w, n)
    error(str_format("flatbuffers: out of bounds read of %d bytes at %s (buffer length %d)",
                     w, tostring(off), n), 0)
end

local function misuse(msg)
    error("flatbuffers: " .. msg, 3)
end

------------------------------------------------------------------------------------------------
-- Number types (flatbuffers.N)
------------------------------------------------------------------------------------------------

local NumType = {}
local NumType_mt = { __index = NumType }

local N = {}

-- Scratch memory for Pack.
local scratch = ffi_new(u8arr, 8)

local function def_num(name, ctype, width, lua_type, min_value, max_value)
    local ct = ffi_typeof(ctype)
    local rp = ffi_typeof("const $ *", ct)
    local wp = ffi_typeof("$ *", ct)
    local T = setmetatable({
        name = name,
        bytewidth = width,
        lua_type = lua_type,
        min_value = min_value,
        max_value = max_value,
        ctype = ct,
    }, NumType_mt)
    -- read(ptr, off) / write(ptr, off, x): no checks; callers check the range first.
    T.read = function(p, off)
        return ffi_cast(rp, p + off)[0]
    end
    T.write = function(p, off, x)
        ffi_cast(wp, p + off)[0] = x
    end
    return T
end

N.Uint8 = def_num("uint8", "uint8_t", 1, "number", 0, 0xff)
N.Uint16 = def_num("uint16", "uint16_t", 2, "number", 0, 0xffff)
N.Uint32 = def_num("uint32", "uint32_t", 4, "number", 0, 0xffffffff)
N.Uint64 = def_num("uint64", "uint64_t", 8, "cdata", 0, 0xffffffffffffffffULL)
N.Int8 = def_num("int8", "int8_t", 1, "number", -0x80, 0x7f)
N.Int16 = def_num("int16", "int16_t", 2, "number", -0x8000, 0x7fff)
N.Int32 = def_num("int32", "int32_t", 4, "number", -0x80000000, 0x7fffffff)
N.Int64 = def_num("int64", "int64_t", 8, "cdata", -0x8000000000000000LL, 0x7fffffffffffffffLL)
N.Float32 = def_num("float32", "float", 4, "number", nil, nil)
N.Float64 = def_num("float64", "double", 8, "number", nil, nil)

-- Bool reads the stored byte as a number (generated code does `Get(N.Bool, ...) ~= 0`) and
-- writes true / non-zero numbers as 1, false / nil / 0 as 0.
local function bool_byte(x)
    if x == true then
        return 1
    end
    if not x or x == 0 then
        return 0
    end
    return 1
end

N.Bool = def_num("bool", "uint8_t", 1, "boolean", false, true)
do
    local write_u8 = N.Uint8.write
    N.Bool.write = function(p, off, x)
        write_u8(p, off, bool_byte(x))
    end
end

-- LuaJIT converts a negative number to uint64_t differently in the interpreter (2^63) and in
-- compiled code (wraps). flatc emits ulong enum values >= 2^63 as negative numbers (e.g. -1),
-- so numbers below 2^63 are stored through int64_t, which wraps the same way everywhere.
do
    local i64wp = ffi_typeof("int64_t *")
    local u64wp = ffi_typeof("uint64_t *")
    N.Uint64.write = function(p, off, x)
        if type(x) == "number" and x < 9223372036854775808 then
            ffi_cast(i64wp, p + off)[0] = x
        else
            ffi_cast(u64wp, p + off)[0] = x
        end
    end
end

N.UOffsetT = N.Uint32
N.VOffsetT = N.Uint16
N.SOffsetT = N.Int32

-- T:Unpack(buf, pos): read one value at `pos` of a binaryArray (or a Lua string).
function NumType:Unpack(buf, pos)
    if type(buf) == "string" then
        buf = _M.binaryArray.New(buf)
    end
    local n = buf.size
    local w = self.bytewidth
    if not (pos >= 0 and pos <= n - w) then
        oob(pos, w, n)
    end
    return self.read(buf.ptr, pos)
end

-- T:Pack(x): the little-endian bytes of x as a Lua string.
function NumType:Pack(x)
    self.write(scratch, 0, x)
    local s = ffi_string(scratch, self.bytewidth)
    return s
end

function NumType:ValidNumber(x)
    local lo, hi = self.min_value, self.max_value
    if lo == nil or self == N.Bool then
        return true
    end
    return lo <= x and x <= hi
end

function NumType:EnforceNumber(x)
    if not self:ValidNumber(x) then
        error("flatbuffers: number is not in the valid range of " .. self.name, 2)
    end
end

function NumType:EnforceNumbers(a, b)
    if not (self:ValidNumber(a) and self:ValidNumber(b)) then
        error("flatbuffers: number is not in the valid range of " .. self.name, 2)
    end
end

function NumType:EnforceNumberAndPack(x)
    self:EnforceNumber(x)
    return self:Pack(x)
end

function NumType:ConvertType(x, other)
    if self.bytewidth ~= other.bytewidth then
        error("flatbuffers: cannot convert between types of different widths", 2)
    end
    if self == other then
        return x
    end
    self.write(scratch, 0, x)
    return other.read(scratch, 0)
end

_M.N = N

------------------------------------------------------------------------------------------------
-- Buffers (flatbuffers.binaryArray): a read-only window (ptr, size) over memory, with an anchor
-- that keeps the memory alive while views reference it.
------------------------------------------------------------------------------------------------

local BinaryArray = {}
local BinaryArray_mt = { __index = BinaryArray }
BinaryArray_mt.__len = function(self)
    return self.size
end

local binaryArray = {}

local function new_window(ptr, size, anchor)
    local w = setmetatable({ ptr = ptr, size = size, anchor = anchor }, BinaryArray_mt)
    return w
end

local EMPTY = new_window(ffi_cast(cu8p, ""), 0, "")

-- binaryArray.New(string): zero-copy window over the string's bytes.
-- binaryArray.New(n): n zeroed bytes owned by the window (n == 0 returns a shared empty one;
-- generated union accessors call New(0) as a placeholder).
function binaryArray.New(x)
    local t = type(x)
    if t == "string" then
        return new_window(ffi_cast(cu8p, x), #x, x)
    end
    if t == "number" then
        if x == 0 then
            return EMPTY
        end
        if not (x > 0 and x < MAX_BUFFER_SIZE) then
            error("flatbuffers: bad binaryArray size " .. tostring(x), 2)
        end
        local mem = ffi_new(u8arr, x)
        return new_window(ffi_cast(cu8p, mem), x, mem)
    end
    error("flatbuffers: binaryArray.New expects a string or a size", 2)
end

-- binaryArray.FromPtr(ptr, len [, anchor]): window over `len` bytes at cdata `ptr`, no copy.
-- `anchor` (any value) is kept referenced as long as the window is; the caller keeps the memory
-- valid and unchanged-in-layout for as long as views read it.
function binaryArray.FromPtr(ptr, len, anchor)
    if type(ptr) ~= "cdata" then
        error("flatbuffers: binaryArray.FromPtr expects a cdata pointer", 2)
    end
    if not (len >= 0 and len < 0x100000000) then
        error("flatbuffers: bad binaryArray length " .. tostring(len), 2)
    end
    return new_window(ffi_cast(cu8p, ptr), len, anchor or ptr)
end

-- buf:Slice(start, stop): copy of bytes [start, stop) as a Lua string (upstream semantics).
function BinaryArray:Slice(start, stop)
    start = start or 0
    stop = stop or self.size
    if not (start >= 0 and start <= stop and stop <= self.size) then
        oob(start, stop - start, self.size)
    end
    local s = ffi_string(self.ptr + start, stop - start)
    return s
end

_M.binaryArray = binaryArray

------------------------------------------------------------------------------------------------
-- Views (flatbuffers.view): a table or struct at `pos` of a buffer.
--   fields: bytes (the binaryArray), pos; private: _p (ptr), _n (size), _vt/_vtl (vtable cache)
------------------------------------------------------------------------------------------------

local View = {}
local View_mt = { __index = View }
local view = {}

function view.New(buf, pos)
    if type(buf) == "string" then
        buf = binaryArray.New(buf)
    end
    if getmetatable(buf) ~= BinaryArray_mt then
        error("flatbuffers: view.New expects a flatbuffers.binaryArray", 2)
    end
    local v = setmetatable({ bytes = buf, pos = pos, _p = buf.ptr, _n = buf.size,
                             _vt = false, _vtl = 0 }, View_mt)
    return v
end

-- view:Repoint(ptr, len, pos): make this view (and its binaryArray) read the table at `pos` of
-- the `len` bytes at cdata `ptr`, without allocating: for hot paths that read one buffer after
-- another through the same view. Views and objects made from it earlier see the new memory.
function View:Repoint(ptr, len, pos)
    ptr = ffi_cast(cu8p, ptr)
    local b = self.bytes
    b.ptr = ptr
    b.size = len
    b.anchor = ptr
    self._p = ptr
    self._n = len
    self.pos = pos
    self._vt = false
    self._vtl = 0
end

-- Locate and range-check the vtable once per view; after this every entry read with
-- `0 <= vo and vo + 2 <= _vtl` is inside the buffer.
local function load_vtable(self)
    local p, n, pos = self._p, self._n, self.pos
    if not (pos >= 0 and pos <= n - 4) then
        oob(pos, 4, n)
    end
    local vt = pos - ffi_cast(ci32p, p + pos)[0]
    if not (vt >= 0 and vt <= n - 4) then
        oob(vt, 4, n)
    end
    local vtl = ffi_cast(cu16p, p + vt)[0]
    if vt + vtl > n then
        oob(vt, vtl, n)
    end
    self._vt = vt
    self._vtl = vtl
    return vt
end

-- view:Offset(vo): the field offset stored in the vtable at byte `vo`, 0 when absent.
function View:Offset(vo)
    local vt = self._vt
    if not vt then
        vt = load_vtable(self)
    end
    if vo >= 0 and vo + 2 <= self._vtl then
        return ffi_cast(cu16p, self._p + vt + vo)[0]
    end
    return 0
end

-- view:Indirect(off): absolute position of the uoffset stored at absolute `off`, followed.
function View:Indirect(off)
    local n = self._n
    if not (off >= 0 and off <= n - 4) then
        oob(off, 4, n)
    end
    return off + ffi_cast(cu32p, self._p + off)[0]
end

-- Position of the first byte and the length of the string/vector referenced at absolute `off`,
-- with `len * elem` bytes checked to lie inside the buffer.
local function deref_vector(self, off, elem)
    local p, n = self._p, self._n
    if not (off >= 0 and off <= n - 4) then
        oob(off, 4, n)
    end
    local v = off + ffi_cast(cu32p, p + off)[0]
    if v > n - 4 then
        oob(v, 4, n)
    end
    local len = ffi_cast(cu32p, p + v)[0]
    local start = v + 4
    if start + len * elem > n then
        oob(start, len * elem, n)
    end
    return start, len
end

-- view:String(off): the string referenced at absolute `off`, copied into a Lua string.
function View:String(off)
    local start, len = deref_vector(self, off, 1)
    local s = ffi_string(self._p + start, len)
    return s
end

-- view:StringPtr(off) -> const uint8_t *ptr, len: the same string, not copied.
function View:StringPtr(off)
    local start, len = deref_vector(self, off, 1)
    return self._p + start, len
end

-- view:VectorLen(o): element count of the vector whose field offset is `o` (from Offset()).
function View:VectorLen(o)
    local off = o + self.pos
    local p, n = self._p, self._n
    if not (off >= 0 and off <= n - 4) then
        oob(off, 4, n)
    end
    local v = off + ffi_cast(cu32p, p + off)[0]
    if not (v <= n - 4) then
        oob(v, 4, n)
    end
    return ffi_cast(cu32p, p + v)[0]
end

-- view:Vector(o): absolute position of the first element of the vector at field offset `o`.
-- Elements are range-checked when read (Get/String/Indirect).
function View:Vector(o)
    local off = o + self.pos
    local n = self._n
    if not (off >= 0 and off <= n - 4) then
        oob(off, 4, n)
    end
    return off + ffi_cast(cu32p, self._p + off)[0] + 4
end

-- view:VectorPtr(o [, elemSize = 1]) -> const uint8_t *ptr, count: the vector at field offset
-- `o` in place, its whole extent (count * elemSize bytes) checked. For payload bytes.
function View:VectorPtr(o, elemSize)
    local start, len = deref_vector(self, o + self.pos, elemSize or 1)
    return self._p + start, len
end

-- view:VectorAsString(vo [, start [, stop]]): bytes start..stop (1-based, inclusive) of the
-- byte vector whose vtable entry is `vo`, copied into a Lua string; nil when absent.
function View:VectorAsString(vo, start, stop)
    local o = self:Offset(vo)
    if o == 0 then
        return nil
    end
    local first, len = deref_vector(self, o + self.pos, 1)
    start = start or 1
    stop = stop or len
    if not (start >= 1 and stop <= len) then
        oob(first + start - 1, stop - start + 1, self._n)
    end
    if stop < start then
        return ""
    end
    local s = ffi_string(self._p + first + start - 1, stop - start + 1)
    return s
end

-- view:Union(t2, o): point view `t2` at the table referenced at field offset `o`.
function View:Union(t2, o)
    if getmetatable(t2) ~= View_mt then
        error("flatbuffers: Union expects a flatbuffers.view", 2)
    end
    local off = o + self.pos
    local n = self._n
    if not (off >= 0 and off <= n - 4) then
        oob(off, 4, n)
    end
    t2.pos = off + ffi_cast(cu32p, self._p + off)[0]
    t2.bytes = self.bytes
    t2._p = self._p
    t2._n = n
    t2._vt = false
    t2._vtl = 0
end

-- view:Get(T, off): the scalar of number type T (flatbuffers.N.*) at absolute `off`.
function View:Get(T, off)
    local n = self._n
    local w = T.bytewidth
    if not (off >= 0 and off <= n - w) then
        oob(off, w, n)
    end
    return T.read(self._p, off)
end

function View:GetSlot(slot, d, T)
    local o = self:Offset(slot)
    if o == 0 then
        return d
    end
    return self:Get(T, self.pos + o)
end

function View:GetVOffsetTSlot(slot, d)
    local o = self:Offset(slot)
    if o == 0 then
        return d
    end
    return o
end

_M.view = view

------------------------------------------------------------------------------------------------
-- Builder: back to front into cdata memory, either owned and growing (Builder(n)) or fixed,
-- caller-provided (Builder.FromBuffer(ptr, cap)), where running out of room is an error.
--   _ptr (uint8_t *), _cap, head (first used byte), offsets are counted from the end (_cap).
------------------------------------------------------------------------------------------------

local B = {}
local Builder_mt = { __index = B }

local function init_state(self)
    self.head = self._cap
    self.minalign = 1
    self.nested = false
    self.finished = false
    self.objectEnd = 0
    self._vtn = -1 -- fields of the open object; -1 outside an object
    self._vtmax = 0 -- 1 + the highest slot set in the open object
    -- vtables written into this buffer: _vtcache[bytes] = offset, valid when _vtgen[bytes] == _gen
    self._gen = (self._gen or 0) + 1
end

local function new_builder(ptr, cap, anchor, growable)
    local self = setmetatable({
        _ptr = ptr, _cap = cap, _anchor = anchor, _growable = growable,
        _slots = ffi_new(i32arr, 16), _vtscratch = ffi_new(u16arr, 18), _nslots = 16,
        _vtcache = {}, _vtgen = {},
    }, Builder_mt)
    init_state(self)
    return self
end

local Builder = {}

-- Builder(initialSize) / Builder.New(initialSize): owned memory that doubles when full.
function Builder.New(initialSize)
    initialSize = initialSize or 1024
    if not (initialSize >= 0 and initialSize < MAX_BUFFER_SIZE) then
        error("flatbuffers: bad Builder size " .. tostring(initialSize), 2)
    end
    if initialSize < 8 then
        initialSize = 8
    end
    local mem = ffi_new(u8arr, initialSize)
    return new_builder(mem, initialSize, mem, true)
end

-- Builder.FromBuffer(ptr, cap [, anchor]): build into `cap` bytes at cdata `ptr` (an arena slot).
-- The finished buffer ends at ptr + cap; Bytes() tells where it starts. It never grows: a
-- buffer that does not fit raises "flatbuffers: buffer full".
function Builder.FromBuffer(ptr, cap, anchor)
    if type(ptr) ~= "cdata" then
        error("flatbuffers: Builder.FromBuffer expects a cdata pointer", 2)
    end
    if not (cap >= 0 and cap < MAX_BUFFER_SIZE) then
        error("flatbuffers: bad Builder capacity " .. tostring(cap), 2)
    end
    return new_builder(ffi_cast(u8p, ptr), cap, anchor or ptr, false)
end

setmetatable(Builder, { __call = function(_, initialSize) return Builder.New(initialSize) end })

-- Make head >= need: grow (owned memory) or fail (caller memory).
local function grow(self, need)
    local cap = self._cap
    local used = cap - self.head
    if not self._growable then
        error(str_format("flatbuffers: buffer full (capacity %d, used %d, need %d more)",
                         cap, used, need - self.head), 0)
    end
    local newcap = cap * 2
    while newcap < used + need do
        newcap = newcap * 2
    end
    if newcap > MAX_BUFFER_SIZE then
        if used + need > MAX_BUFFER_SIZE then
            error("flatbuffers: cannot grow buffer beyond 2 GiB", 0)
        end
        newcap = MAX_BUFFER_SIZE
    end
    local mem = ffi_new(u8arr, newcap)
    ffi_copy(mem + (newcap - used), self._ptr + self.head, used)
    self._ptr = mem
    self._anchor = mem
    self._cap = newcap
    self.head = newcap - used
end

-- Room for `additional` bytes and then one `size`-aligned item of `size` bytes, zero padding
-- so that the item lands aligned (alignment counted from the end of the buffer).
local function prep(self, size, additional)
    if size > self.minalign then
        self.minalign = size
    end
    local pad = band(-(self._cap - self.head + additional), size - 1)
    local need = pad + size + additional
    if self.head < need then
        grow(self, need)
    end
    if pad > 0 then
        local h = self.head - pad
        ffi_fill(self._ptr + h, pad, 0)
        self.head = h
    end
end

-- Room for `len` bytes, zero padding first so that they end `alignment`-aligned (no extra item).
local function prealign(self, len, alignment)
    if alignment > self.minalign then
        self.minalign = alignment
    end
    local pad = band(-(self._cap - self.head + len), alignment - 1)
    local need = pad + len
    if self.head < need then
        grow(self, need)
    end
    if pad > 0 then
        local h = self.head - pad
        ffi_fill(self._ptr + h, pad, 0)
        self.head = h
    end
end

function B:Prep(size, additionalBytes)
    prep(self, size, additionalBytes)
end

function B:Pad(n)
    if self.head < n then
        grow(self, n)
    end
    local h = self.head - n
    ffi_fill(self._ptr + h, n, 0)
    self.head = h
end

function B:Head()
    return self.head
end

function B:Offset()
    return self._cap - self.head
end

-- Remaining room before the builder must grow (or is full).
function B:Remaining()
    return self.head
end

-- Start over in the same memory.
function B:Clear()
    init_state(self)
end

-- Start over in other fixed memory (e.g. the next arena slot): no allocation.
function B:Reset(ptr, cap, anchor)
    if type(ptr) ~= "cdata" or not (cap >= 0 and cap < MAX_BUFFER_SIZE) then
        misuse("Reset expects a cdata pointer and a capacity")
    end
    self._ptr = ffi_cast(u8p, ptr)
    self._cap = cap
    self._anchor = anchor or ptr
    self._growable = false
    init_state(self)
end

-- Place without alignment: checked for room only.
function B:Place(x, T)
    local w = T.bytewidth
    if self.head < w then
        grow(self, w)
    end
    local h = self.head - w
    T.write(self._ptr, h, x)
    self.head = h
end

function B:PlaceVOffsetT(x) self:Place(x, N.VOffsetT) end
function B:PlaceSOffsetT(x) self:Place(x, N.SOffsetT) end
function B:PlaceUOffsetT(x) self:Place(x, N.UOffsetT) end

function B:Prepend(T, x)
    local w = T.bytewidth
    prep(self, w, 0)
    local h = self.head - w
    T.write(self._ptr, h, x)
    self.head = h
end

-- Record that field `slot` (0-based) of the open object starts at the current offset.
local function slot_here(self, slot)
    if not (slot >= 0 and slot < self._vtn) then
        misuse("slot " .. tostring(slot) .. " outside the open object")
    end
    self._slots[slot] = self._cap - self.head
    if slot >= self._vtmax then
        self._vtmax = slot + 1
    end
end

function B:Slot(slot)
    slot_here(self, slot)
end

-- Typed Prepend<T>(x) and Prepend<T>Slot(slot, x, default), one closure per type at load.
local function def_prepend(name, T)
    local w, write = T.bytewidth, T.write
    B["Prepend" .. name] = function(self, x)
        prep(self, w, 0)
        local h = self.head - w
        write(self._ptr, h, x)
        self.head = h
    end
    B["Prepend" .. name .. "Slot"] = function(self, slot, x, d)
        if x ~= d then
            prep(self, w, 0)
            local h = self.head - w
            write(self._ptr, h, x)
            self.head = h
            slot_here(self, slot)
        end
    end
end

def_prepend("Bool", N.Bool)
def_prepend("Byte", N.Uint8)
def_prepend("Uint8", N.Uint8)
def_prepend("Uint16", N.Uint16)
def_prepend("Uint32", N.Uint32)
def_prepend("Uint64", N.Uint64)
def_prepend("Int8", N.Int8)
def_prepend("Int16", N.Int16)
def_prepend("Int32", N.Int32)
def_prepend("Int64", N.Int64)
def_prepend("Float32", N.Float32)
def_prepend("Float64", N.Float64)
def_prepend("VOffsetT", N.VOffsetT)

function B:PrependSlot(T, slot, x, d)
    if x ~= d then
        self:Prepend(T, x)
        slot_here(self, slot)
    end
end

-- A uoffset to `off` (an offset returned by End*/Create*), relative to where it is written.
local function prepend_uoffset(self, off)
    prep(self, 4, 0)
    local h = self.head - 4
    local here = self._cap - h
    if not (off > 0 and off < here) then
        misuse("offset " .. tostring(off) .. " does not point back into the buffer")
    end
    ffi_cast(u32p, self._ptr + h)[0] = here - off
    self.head = h
end

function B:PrependUOffsetTRelative(off)
    prepend_uoffset(self, off)
end

function B:PrependSOffsetTRelative(off)
    prep(self, 4, 0)
    local h = self.head - 4
    local here = self._cap - h
    if not (off >= 0 and off < here) then
        misuse("offset " .. tostring(off) .. " does not point back into the buffer")
    end
    ffi_cast(i32p, self._ptr + h)[0] = here - off
    self.head = h
end

function B:PrependUOffsetTRelativeSlot(slot, x, d)
    if x ~= d then
        prepend_uoffset(self, x)
        slot_here(self, slot)
    end
end

-- Inline struct field: the struct was just written (Create<Struct>) and `x` is its offset.
-- flatc --lua 25.12.19 also emits this call for *table*-typed fields. An offset created before
-- the open object started (x <= objectEnd) cannot be an inline struct of it, so it is stored as
-- a uoffset reference, which is what readers (Indirect) expect for tables.
function B:PrependStructSlot(slot, x, d)
    if x ~= d then
        if x > self.objectEnd then
            if x ~= self._cap - self.head then
                misuse("a struct must be created immediately before it is added")
            end
            slot_here(self, slot)
        else
            prepend_uoffset(self, x)
            slot_here(self, slot)
        end
    end
end

function B:StartObject(numFields)
    if self.nested then
        misuse("StartObject inside an object or vector")
    end
    if not (numFields >= 0 and numFields <= 32766) then
        misuse("bad field count " .. tostring(numFields))
    end
    if numFields > self._nslots then
        self._slots = ffi_new(i32arr, numFields)
        self._vtscratch = ffi_new(u16arr, numFields + 2)
        self._nslots = numFields
    end
    ffi_fill(self._slots, numFields * 4, 0)
    self._vtn = numFields
    self._vtmax = 0
    self.objectEnd = self._cap - self.head
    self.nested = true
end

-- Close the open object: write its soffset and a vtable, or reuse an identical earlier vtable.
-- The candidate vtable is assembled in scratch memory; its bytes (as an interned string) key a
-- per-builder cache of the vtables already in this buffer, and only a new one is copied in, so
-- a reused vtable costs no room. One loop (the entries): no search loop and no early exits,
-- which LuaJIT handles poorly when trip counts are short.
function B:WriteVtable()
    -- soffset placeholder, patched below
    prep(self, 4, 0)
    self.head = self.head - 4
    local objectOffset = self._cap - self.head
    local objectSize = objectOffset - self.objectEnd
    if objectSize > 0xffff then
        error("flatbuffers: table larger than 64 KiB inline", 2)
    end
    local nf = self._vtmax
    local vbytes = (nf + 2) * 2
    local q = self._vtscratch
    q[0] = vbytes
    q[1] = objectSize
    local slots = self._slots
    for i = 0, nf - 1 do
        local f = slots[i]
        if f ~= 0 then
            f = objectOffset - f
        end
        q[i + 2] = f
    end
    local key = ffi_string(q, vbytes)
    local vto = self._vtcache[key]
    if vto == nil or self._vtgen[key] ~= self._gen then
        if self.head < vbytes then
            grow(self, vbytes)
        end
        local h = self.head - vbytes
        ffi_copy(self._ptr + h, q, vbytes)
        self.head = h
        vto = self._cap - h
        self._vtcache[key] = vto
        self._vtgen[key] = self._gen
    end
    -- soffset: object position minus vtable position
    ffi_cast(i32p, self._ptr + (self._cap - objectOffset))[0] = vto - objectOffset
    self._vtn = -1
    self.nested = false
    return objectOffset
end

function B:EndObject()
    if not self.nested or self._vtn < 0 then
        misuse("EndObject without StartObject")
    end
    return self:WriteVtable()
end

function B:StartVector(elemSize, numElements, alignment)
    if self.nested then
        misuse("StartVector inside an object or vector")
    end
    self.nested = true
    local bytes = elemSize * numElements
    prep(self, 4, bytes) -- the length, after the elements
    prealign(self, bytes, alignment or elemSize)
    return self._cap - self.head
end

function B:EndVector(numElements)
    if not self.nested or self._vtn >= 0 then
        misuse("EndVector without StartVector")
    end
    self.nested = false
    if self.head < 4 then
        grow(self, 4)
    end
    local h = self.head - 4
    ffi_cast(u32p, self._ptr + h)[0] = numElements
    self.head = h
    return self._cap - h
end

-- Length-prefixed bytes copied from `src` (a Lua string or a pointer), plus an optional NUL.
local function create_bytes(self, src, len, nul)
    if self.nested then
        misuse("Create* inside an object or vector")
    end
    local total = len + nul
    prep(self, 4, total)
    local h = self.head - total
    local ptr = self._ptr
    if nul == 1 then
        ptr[h + len] = 0
    end
    ffi_copy(ptr + h, src, len)
    h = h - 4
    ffi_cast(u32p, ptr + h)[0] = len
    self.head = h
    return self._cap - h
end

-- A string, or (ptr, len) for bytes already in cdata memory, as a vector (`nul`: 1 for a
-- string's terminating NUL); `what` names the caller in the misuse error.
local function create_from(self, x, len, nul, what)
    if type(x) == "string" then
        return create_bytes(self, x, #x, nul)
    end
    if type(x) == "cdata" and len and len >= 0 then
        return create_bytes(self, x, len, nul)
    end
    misuse(what .. " expects a string or (ptr, len)")
end

-- builder:CreateString(s): a Lua string, or (ptr, len) for bytes already in cdata memory.
function B:CreateString(s, len)
    return create_from(self, s, len, 1, "CreateString")
end

-- builder:CreateByteVector(s) for a Lua string, or (ptr, len): one ffi.copy into the buffer.
function B:CreateByteVector(x, len)
    return create_from(self, x, len, 0, "CreateByteVector")
end

function B:CreateByteVectorFromPtr(ptr, len)
    if type(ptr) ~= "cdata" or not (len and len >= 0) then
        misuse("CreateByteVectorFromPtr expects (ptr, len)")
    end
    return create_bytes(self, ptr, len, 0)
end

-- builder:StartByteVectorInPlace(len) -> uint8_t *ptr: reserve `len` bytes of a byte vector and
-- return where they are; fill them, then call builder:EndVector(len) for the vector's offset.
-- The bytes are not zeroed. `ptr` stays valid until the builder grows (a FromBuffer builder never
-- does).
function B:StartByteVectorInPlace(len)
    if self.nested then
        misuse("StartByteVectorInPlace inside an object or vector")
    end
    if not (len >= 0) then
        misuse("bad length " .. tostring(len))
    end
    self.nested = true
    prep(self, 4, len)
    local h = self.head - len
    self.head = h
    return self._ptr + h
end

local function finish(self, root, sizePrefix, fid)
    if self.nested then
        misuse("Finish inside an object or vector")
    end
    local extra = 4
    if fid ~= nil then
        if type(fid) ~= "string" or #fid ~= 4 then
            misuse("file identifier must be a 4-byte string")
        end
        extra = extra + 4
    end
    if sizePrefix then
        extra = extra + 4
    end
    local align = self.minalign
    if align < 4 then
        align = 4
    end
    prealign(self, extra, align)
    if fid ~= nil then
        local h = self.head - 4
        ffi_copy(self._ptr + h, fid, 4)
        self.head = h
    end
    prepend_uoffset(self, root)
    if sizePrefix then
        local size = self._cap - self.head
        local h = self.head - 4
        ffi_cast(u32p, self._ptr + h)[0] = size
        self.head = h
    end
    self.finished = true
    return self.head
end

function B:Finish(root)
    return finish(self, root, false, nil)
end

function B:FinishSizePrefixed(root)
    return finish(self, root, true, nil)
end

function B:FinishWithIdentifier(root, fid)
    return finish(self, root, false, fid)
end

function B:FinishSizePrefixedWithIdentifier(root, fid)
    return finish(self, root, true, fid)
end

-- builder:Bytes() -> uint8_t *ptr, len, start: the finished buffer in place; `start` is its
-- offset from the beginning of the builder's memory (ptr == base + start).
function B:Bytes()
    if not self.finished then
        misuse("Bytes before Finish")
    end
    local h = self.head
    return self._ptr + h, self._cap - h, h
end

-- builder:Output([full]): upstream-compatible copy as a Lua string (full: the whole memory).
function B:Output(full)
    if not self.finished then
        misuse("Output before Finish")
    end
    local s
    if full then
        s = ffi_string(self._ptr, self._cap)
    else
        s = ffi_string(self._ptr + self.head, self._cap - self.head)
    end
    return s
end

_M.Builder = Builder

------------------------------------------------------------------------------------------------

-- Make `require('flatbuffers')` (what generated code does) return this module. Call it before
-- requiring generated code; it refuses to replace a different module already loaded under that
-- name (e.g. the upstream string-based runtime).
function _M.preload()
    local cur = package.loaded.flatbuffers
    if cur ~= nil and cur ~= _M then
        error("flatbuffers: another module is already loaded as 'flatbuffers'", 2)
    end
    package.loaded.flatbuffers = _M
    return _M
end

return _M
