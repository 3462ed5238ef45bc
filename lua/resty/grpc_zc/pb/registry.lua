-- resty.grpc_zc.pb.registry: the message types of this Lua VM.
--
-- Raw descriptors by full name (from pb.load_descriptor, or pb.load_proto through the runtime
-- library's protox compiler), prepared descriptors on demand (fields by number, wire types,
-- enums, maps, oneofs), and the bootstrap descriptor of the part of descriptor.proto that
-- loading a FileDescriptorSet needs. A set is loaded into a copy first: one with an
-- unresolvable reference changes nothing.

local ffi = require "ffi"
local lib = require "resty.grpc_zc.lib"
local wire = require "resty.grpc_zc.pb.wire"
local decode = require "resty.grpc_zc.pb.decode"

local ffi_new = ffi.new
local ffi_string = ffi.string
local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local pairs = pairs
local sub = string.sub
local byte = string.byte
local concat = table.concat
local sort = table.sort

local T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL, T_STRING,
      T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM = wire.types()
local WIRE, vsize, new_tab = wire.WIRE, wire.vsize, wire.new_tab
local L_OPTIONAL, L_REQUIRED, L_REPEATED = wire.L_OPTIONAL, wire.L_REQUIRED, wire.L_REPEATED
local decode_plain = decode.decode_plain
local check_buffer, check_string_len = wire.check_buffer, wire.check_string_len

local _M = { version = "0.1.0" }

local function new_registry()
    return { types = {}, services = {}, prepared = {}, methods = {} }
end

local reg = new_registry()

local function strip_dot(s)
    if byte(s, 1) == 46 then return sub(s, 2) end
    return s
end

-- Registers the messages, enums and services of one FileDescriptorProto table.
local function register_file(r, file)
    local pkg = file.package or ""
    local syntax = file.syntax
    if syntax == nil or syntax == "" then syntax = "proto2" end
    local function add_enums(prefix, list)
        for i = 1, list and #list or 0 do
            local e = list[i]
            r.types[prefix .. e.name] = { kind = "enum", raw = e, full = prefix .. e.name }
        end
    end
    local function add_msgs(prefix, list)
        for i = 1, list and #list or 0 do
            local m = list[i]
            local full = prefix .. m.name
            r.types[full] = { kind = "message", raw = m, full = full, syntax = syntax }
            add_msgs(full .. ".", m.nested_type)
            add_enums(full .. ".", m.enum_type)
        end
    end
    local prefix = pkg == "" and "" or pkg .. "."
    add_msgs(prefix, file.message_type)
    add_enums(prefix, file.enum_type)
    local svcs = file.service
    for i = 1, svcs and #svcs or 0 do
        local s = svcs[i]
        local full = prefix .. s.name
        r.services[full] = s
        local ms = s.method
        for j = 1, ms and #ms or 0 do
            local m = ms[j]
            r.methods["/" .. full .. "/" .. m.name] = { raw = m }
        end
    end
end

local function prepare_enum(r, name)
    local key = "enum " .. name
    local ed = r.prepared[key]
    if ed then return ed end
    local e = r.types[name]
    if e == nil or e.kind ~= "enum" then return nil end
    -- name_of: keyed by number + 0.5, so that the table is a pure hash (an integer key that
    -- misses the array part of a mixed table is "NYI: mixed sparse/dense table" for the JIT).
    ed = { name = name, by_name = {}, by_number = {}, values = {}, name_of = {} }
    local vals = e.raw.value or {}
    for i = 1, #vals do
        local v = vals[i]
        local num = v.number or 0
        ed.by_name[v.name] = num
        if ed.by_number[num] == nil then
            ed.by_number[num] = v.name
            ed.name_of[num + 0.5] = v.name
        end
        ed.values[i] = v.name
    end
    ed.first = vals[1] and vals[1].name
    r.prepared[key] = ed
    return ed
end

local prepare_message
local pending_maps = {}
local prep_depth = 0

local function prepare_field(r, md, raw, syntax)
    local ft = raw.type
    local tname = raw.type_name and strip_dot(raw.type_name)
    if ft == nil or ft == 0 then
        local e = tname and r.types[tname]
        if e == nil then
            return nil, md.name .. "." .. raw.name .. ": unresolved type " .. tostring(tname)
        end
        ft = e.kind == "enum" and T_ENUM or T_MESSAGE
    end
    if WIRE[ft] == nil then
        return nil, md.name .. "." .. raw.name .. ": unknown field type " .. tostring(ft)
    end
    local label = raw.label or L_OPTIONAL
    local opts = raw.options
    local f = {
        md = md, name = raw.name, number = raw.number, full = md.name .. "." .. raw.name,
        type = ft, wt = WIRE[ft], json_name = raw.json_name,
        repeated = label == L_REPEATED, required = label == L_REQUIRED,
        proto3_optional = raw.proto3_optional == true,
    }
    f.tag = f.number * 8 + f.wt
    f.tagsize = vsize(f.tag)
    f.ptag = f.number * 8 + 2
    f.ptagsize = vsize(f.ptag)
    f.packable = f.repeated and f.wt ~= 2 and f.wt ~= 3
    if f.repeated and f.packable then
        if opts and opts.packed ~= nil then
            f.packed = opts.packed
        else
            f.packed = syntax == "proto3" or syntax == "editions"
        end
    else
        f.packed = false
    end
    if ft == T_MESSAGE or ft == T_GROUP then
        local sub_md, err = prepare_message(r, tname)
        if sub_md == nil then
            return nil, err or (f.full .. ": unresolved message type " .. tostring(tname))
        end
        f.msg = sub_md
        if f.repeated and sub_md.map_entry then
            -- key and value are set once every type of the cycle is prepared (the entry may
            -- still be in preparation here: map<string, Self>)
            f.map = true
            pending_maps[#pending_maps + 1] = f
        end
    elseif ft == T_ENUM then
        f.enum = prepare_enum(r, tname)
        if f.enum == nil then
            return nil, f.full .. ": unresolved enum type " .. tostring(tname)
        end
    end
    -- proto3 fields without presence: singular scalars outside oneofs, not `optional`.
    f.implicit = syntax == "proto3" and not f.repeated and ft ~= T_MESSAGE and ft ~= T_GROUP
                 and raw.oneof_index == nil and not f.proto3_optional
    f.scalar = ft ~= T_MESSAGE and ft ~= T_GROUP
    f.default_text = raw.default_value
    f.oneof_index = raw.oneof_index
    return f
end

local prepare_message_

prepare_message = function(r, name)
    name = strip_dot(name)
    local md = r.prepared[name]
    if md then return md end
    local e = r.types[name]
    if e == nil or e.kind ~= "message" then return nil end
    local depth = prep_depth
    prep_depth = depth + 1
    local err
    md, err = prepare_message_(r, name, e)
    prep_depth = depth
    if depth > 0 then return md, err end
    local pending = pending_maps
    pending_maps = {}
    if md == nil then return nil, err end
    for i = 1, #pending do
        local f = pending[i]
        f.key = f.msg.by_number[1]
        f.value = f.msg.by_number[2]
        if f.key == nil or f.value == nil then
            return nil, f.full .. ": map entry without key or value"
        end
    end
    return md
end

prepare_message_ = function(r, name, e)
    local md
    local raw = e.raw
    local opts = raw.options
    md = { name = name, fields = {}, nfields = 0, by_number = {}, by_name = {}, oneofs = {},
           defaults = {}, syntax = e.syntax, map_entry = (opts and opts.map_entry) == true }
    r.prepared[name] = md -- before the fields: recursive types resolve to this table
    local rf = raw.field or {}
    local fields = {}
    for i = 1, #rf do
        local f, err = prepare_field(r, md, rf[i], e.syntax)
        if f == nil then
            r.prepared[name] = nil
            return nil, err
        end
        fields[i] = f
    end
    sort(fields, function(a, b) return a.number < b.number end)
    local decl = raw.oneof_decl or {}
    local groups = {}
    for i = 1, #fields do
        local f = fields[i]
        md.by_number[f.number] = f
        md.by_name[f.name] = f
        local oi = f.oneof_index
        if oi ~= nil and not f.proto3_optional then
            local o = groups[oi]
            if o == nil then
                o = { name = decl[oi + 1] and decl[oi + 1].name or tostring(oi) }
                groups[oi] = o
                md.oneofs[#md.oneofs + 1] = o
            end
            o[#o + 1] = f
            f.oneof = o
        end
        if f.scalar and not f.repeated and f.oneof == nil and not f.proto3_optional
           and (e.syntax ~= "proto3" or f.implicit) then
            md.defaults[#md.defaults + 1] = f
        end
    end
    md.fields = fields
    md.nfields = #fields
    -- Decoder's lookup by number: an array without holes (false for gaps) for numbers up to
    -- 256, a pure hash keyed by number + 0.5 above (see prepare_enum).
    local ndense = 0
    for i = 1, #fields do
        if fields[i].number <= 256 and fields[i].number > ndense then ndense = fields[i].number end
    end
    md.ndense = ndense
    md.dense = new_tab(ndense, 0)
    for i = 1, ndense do md.dense[i] = md.by_number[i] or false end
    md.sparse = {}
    for i = 1, #fields do
        if fields[i].number > ndense then md.sparse[fields[i].number + 0.5] = fields[i] end
    end
    return md
end

local function prepare_method(r, path)
    local m = r.methods[path]
    if m == nil then return nil end
    if m.prepared then return m.prepared end
    local raw = m.raw
    local input, e1 = prepare_message(r, raw.input_type or "")
    if input == nil then return nil, e1 or ("unresolved input type " .. tostring(raw.input_type)) end
    local output, e2 = prepare_message(r, raw.output_type or "")
    if output == nil then
        return nil, e2 or ("unresolved output type " .. tostring(raw.output_type))
    end
    m.prepared = { input = input, output = output, path = path,
                   client_streaming = raw.client_streaming == true,
                   server_streaming = raw.server_streaming == true }
    return m.prepared
end

----------------------------------------------------------------------------------------------
-- Bootstrap: the part of google/protobuf/descriptor.proto this module reads
----------------------------------------------------------------------------------------------

local function F(name, number, ftype, type_name, label)
    return { name = name, number = number, type = ftype, label = label or L_OPTIONAL,
             type_name = type_name }
end
local function R(name, number, ftype, type_name)
    return F(name, number, ftype, type_name, L_REPEATED)
end
local G = ".google.protobuf."
local BOOT = {
    name = "google/protobuf/descriptor.proto", package = "google.protobuf", syntax = "proto2",
    message_type = {
        { name = "FileDescriptorSet", field = { R("file", 1, T_MESSAGE, G .. "FileDescriptorProto") } },
        { name = "FileDescriptorProto", field = {
            F("name", 1, T_STRING), F("package", 2, T_STRING), R("dependency", 3, T_STRING),
            R("message_type", 4, T_MESSAGE, G .. "DescriptorProto"),
            R("enum_type", 5, T_MESSAGE, G .. "EnumDescriptorProto"),
            R("service", 6, T_MESSAGE, G .. "ServiceDescriptorProto"),
            F("syntax", 12, T_STRING) } },
        { name = "DescriptorProto", field = {
            F("name", 1, T_STRING), R("field", 2, T_MESSAGE, G .. "FieldDescriptorProto"),
            R("nested_type", 3, T_MESSAGE, G .. "DescriptorProto"),
            R("enum_type", 4, T_MESSAGE, G .. "EnumDescriptorProto"),
            F("options", 7, T_MESSAGE, G .. "MessageOptions"),
            R("oneof_decl", 8, T_MESSAGE, G .. "OneofDescriptorProto") } },
        { name = "MessageOptions", field = { F("map_entry", 7, T_BOOL) } },
        { name = "FieldDescriptorProto", field = {
            F("name", 1, T_STRING), F("number", 3, T_INT32), F("label", 4, T_INT32),
            F("type", 5, T_INT32), F("type_name", 6, T_STRING), F("default_value", 7, T_STRING),
            F("options", 8, T_MESSAGE, G .. "FieldOptions"), F("oneof_index", 9, T_INT32),
            F("json_name", 10, T_STRING), F("proto3_optional", 17, T_BOOL) } },
        { name = "FieldOptions", field = { F("packed", 2, T_BOOL) } },
        { name = "OneofDescriptorProto", field = { F("name", 1, T_STRING) } },
        { name = "EnumDescriptorProto", field = {
            F("name", 1, T_STRING), R("value", 2, T_MESSAGE, G .. "EnumValueDescriptorProto") } },
        { name = "EnumValueDescriptorProto", field = { F("name", 1, T_STRING), F("number", 2, T_INT32) } },
        { name = "ServiceDescriptorProto", field = {
            F("name", 1, T_STRING), R("method", 2, T_MESSAGE, G .. "MethodDescriptorProto") } },
        { name = "MethodDescriptorProto", field = {
            F("name", 1, T_STRING), F("input_type", 2, T_STRING), F("output_type", 3, T_STRING),
            F("client_streaming", 5, T_BOOL), F("server_streaming", 6, T_BOOL) } },
    },
}
local boot = new_registry()
register_file(boot, BOOT)
local FDS = assert(prepare_message(boot, "google.protobuf.FileDescriptorSet"))

-- Decodes a serialized FileDescriptorSet.
local function decode_descriptor(ptr, len)
    local set, err = decode_plain(FDS, ptr, len)
    if set == nil then
        return nil, "bad FileDescriptorSet: " .. err
    end
    return set
end

-- Registers a decoded FileDescriptorSet; checks that every message of it prepares.
local function register_set(set)
    local files = set.file or {}
    -- Into a copy first: a set with an unresolvable reference changes nothing.
    local r = new_registry()
    for k, v in pairs(reg.types) do r.types[k] = v end
    for k, v in pairs(reg.services) do r.services[k] = v end
    for k, v in pairs(reg.methods) do r.methods[k] = { raw = v.raw } end
    for i = 1, #files do
        register_file(r, files[i])
    end
    for name, e in pairs(r.types) do
        if e.kind == "message" then
            local md, err = prepare_message(r, name)
            if md == nil then
                return nil, err or ("cannot prepare " .. name)
            end
        end
    end
    reg = r
    return true
end

-- pb.load_descriptor(bytes[, len]) -> true | nil, err. bytes: a serialized
-- google.protobuf.FileDescriptorSet (Lua string, or a pointer with len; a NULL or non-pointer
-- cdata, or a bad length, raises before anything is read).
function _M.load_descriptor(bytes, len)
    if type(bytes) == "string" then
        len = len or #bytes
        check_string_len("load_descriptor", bytes, len, 2)
    elseif type(bytes) ~= "cdata" then
        error("bad argument #1 to pb.load_descriptor (string or pointer expected, got "
              .. type(bytes) .. ")", 2)
    else
        check_buffer("load_descriptor", bytes, len, 1)
    end
    local set, err = decode_descriptor(bytes, len)
    if set == nil then return nil, err end
    return register_set(set)
end

local proto_out = ffi_new("uint8_t *[1]")
local proto_len = ffi_new("size_t[1]")

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- pb.load_proto(path_or_list, { import_paths = {...} }) -> true | nil, err
function _M.load_proto(files, opts)
    if type(files) == "string" then
        files = { files }
    elseif type(files) ~= "table" then
        error("bad argument #1 to pb.load_proto (path or list of paths expected)", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #2 to pb.load_proto (table expected)", 2)
    end
    local imports = opts and opts.import_paths
    if imports == nil then -- protoc-like convenience: each file's directory
        imports = {}
        local seen = {}
        for i = 1, #files do
            local d = dirname(files[i])
            if not seen[d] then
                seen[d] = true
                imports[#imports + 1] = d
            end
        end
    elseif type(imports) == "string" then
        imports = { imports }
    end
    local l, err = lib.load()
    if l == nil then return nil, err end
    local rc = l.grpc_zc_proto_compile(concat(files, "\n"), concat(imports, "\n"),
                                       proto_out, proto_len)
    local out, n = proto_out[0], tonumber(proto_len[0])
    if rc ~= 0 then
        local msg = out ~= nil and ffi_string(out, n) or ("grpc_zc_proto_compile: error " .. rc)
        l.grpc_zc_free(out)
        return nil, msg
    end
    local set
    set, err = decode_descriptor(out, n)
    l.grpc_zc_free(out)
    if set == nil then return nil, err end
    return register_set(set)
end

-- pb.message(full_name) -> descriptor | nil[, err]
function _M.message(name)
    if type(name) ~= "string" then
        error("bad argument #1 to pb.message (string expected)", 2)
    end
    return prepare_message(reg, name)
end

-- pb.enum(full_name) -> { name, by_name = {NAME = n}, by_number = {[n] = NAME} } | nil
function _M.enum(name)
    if type(name) ~= "string" then
        error("bad argument #1 to pb.enum (string expected)", 2)
    end
    return prepare_enum(reg, strip_dot(name))
end

-- pb.method("/pkg.Service/Method") -> { input, output, client_streaming, server_streaming }
function _M.method(path)
    if type(path) ~= "string" then
        error("bad argument #1 to pb.method (string expected)", 2)
    end
    return prepare_method(reg, path)
end

-- pb.clear(): forgets every loaded type (tests).
function _M.clear()
    reg = new_registry()
end

return _M
