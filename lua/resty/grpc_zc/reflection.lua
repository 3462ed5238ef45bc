-- resty.grpc_zc.reflection: message types from a server that offers gRPC server reflection
-- (grpc.reflection.v1.ServerReflection, or v1alpha), registered with resty.grpc_zc.pb so that
-- calls take and return Lua tables without any .proto file on the nginx side.
--
--     local ok, err = grpc.load_reflection(conn, "routeguide.RouteGuide")
--
-- One bidi stream: file_containing_symbol for each service, then file_by_filename for every
-- dependency the server did not send along, until the set is complete; the files are
-- registered together with pb.load_descriptor. The few reflection messages are encoded and
-- decoded by hand here (field numbers from reflection.proto), so nothing has to be loaded first.

local pb = require "resty.grpc_zc.pb"

local byte, char, sub = string.byte, string.char, string.sub
local concat = table.concat

local _M = {}

local PATHS = {
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}
-- Files a server may refer to without sending (well-known types are found by name only if the
-- server sends them; protoc-generated servers do).
local MAX_FILES = 1000


local function varint(n)
    local t = {}
    repeat
        local b = n % 128
        n = (n - b) / 128
        t[#t + 1] = char(n > 0 and b + 128 or b)
    until n == 0
    return concat(t)
end


local function field(num, s)
    return char(num * 8 + 2) .. varint(#s) .. s
end


-- Iterates over the fields of message `s` between `i` and `j`: returns (num, wire type, value
-- or start, stop) for each; raises on malformed input (caught by the caller's pcall).
local function fields(s, i, j)
    i, j = i or 1, j or #s
    return function()
        if i > j then
            return nil
        end
        local function get()
            local v, mul = 0, 1
            while true do
                local b = byte(s, i)
                if b == nil or i > j then
                    error("truncated reflection message")
                end
                i = i + 1
                v = v + (b % 128) * mul
                if b < 128 then
                    return v
                end
                mul = mul * 128
            end
        end
        local tag = get()
        local num, wt = math.floor(tag / 8), tag % 8
        if wt == 0 then
            return num, wt, get()
        elseif wt == 2 then
            local len = get()
            local a = i
            i = i + len
            if i - 1 > j then
                error("truncated reflection message")
            end
            return num, wt, a, i - 1
        elseif wt == 1 then
            i = i + 8
            return num, wt
        elseif wt == 5 then
            i = i + 4
            return num, wt
        end
        error("unexpected wire type " .. wt .. " in a reflection message")
    end
end


-- The file descriptors (serialized FileDescriptorProto strings) of a ServerReflectionResponse,
-- or nil, err.
local function files_of(res)
    local out = {}
    for num, wt, a, b in fields(res) do
        if num == 4 and wt == 2 then             -- file_descriptor_response
            for n2, w2, c, d in fields(res, a, b) do
                if n2 == 1 and w2 == 2 then      -- repeated bytes file_descriptor_proto
                    out[#out + 1] = sub(res, c, d)
                end
            end
        elseif num == 7 and wt == 2 then         -- error_response
            local code, msg = 0, ""
            for n2, w2, c, d in fields(res, a, b) do
                if n2 == 1 and w2 == 0 then
                    code = c
                elseif n2 == 2 and w2 == 2 then
                    msg = sub(res, c, d)
                end
            end
            return nil, "reflection error " .. code .. ": " .. msg
        end
    end
    return out
end


-- name and dependencies of a serialized FileDescriptorProto.
local function file_info(fd)
    local name, deps = nil, {}
    for num, wt, a, b in fields(fd) do
        if wt == 2 and num == 1 then
            name = sub(fd, a, b)
        elseif wt == 2 and num == 3 then
            deps[#deps + 1] = sub(fd, a, b)
        end
    end
    return name, deps
end


-- Asks one question on the stream and returns the files of the answer, or nil, err.
local function ask(stream, req)
    local ok, err = stream:send(req)
    if not ok then
        return nil, err
    end
    local res
    ok, res = stream:recv()
    if not ok then
        return nil, res
    end
    if res == nil then
        return nil, "the reflection stream ended early"
    end
    local pok, files, ferr = pcall(files_of, res)
    if not pok then
        return nil, files
    end
    return files, ferr
end


-- load(conn, services, call_opts) -> true | nil, err
function _M.load(conn, services, call_opts)
    if type(services) == "string" then
        services = { services }
    elseif type(services) ~= "table" then
        error("bad services: a name or a list of names expected", 3)
    end
    local opts = { raw = true }
    for k, v in pairs(call_opts or {}) do
        opts[k] = v
    end
    local stream, err
    for _, path in ipairs(PATHS) do
        local ok
        ok, stream, err = conn:new_stream(path, opts)
        if not ok then
            return nil, stream
        end
        local files
        files, err = ask(stream, field(4, services[1]))
        if files then
            -- this version of the service answers: go on with it
            local got, seen, order = {}, {}, {}
            local function add(list)
                for _, fd in ipairs(list) do
                    local pok, name, deps = pcall(file_info, fd)
                    if not pok then
                        return nil, name
                    end
                    if name and not seen[name] then
                        seen[name] = true
                        order[#order + 1] = fd
                        for _, d in ipairs(deps) do
                            got[#got + 1] = d
                        end
                    end
                end
                return true
            end
            -- asks for `request` and adds the files of the answer: true, or nil, err
            local function fetch(request)
                local more, ferr = ask(stream, request)
                if not more then
                    return nil, ferr
                end
                return add(more)
            end
            local ok2, aerr = add(files)
            if not ok2 then
                stream:close()
                return nil, aerr
            end
            for i = 2, #services do
                ok2, aerr = fetch(field(4, services[i]))
                if not ok2 then
                    stream:close()
                    return nil, aerr
                end
            end
            -- dependencies the server did not send along
            local i = 1
            while i <= #got do
                local dep = got[i]
                i = i + 1
                if not seen[dep] then
                    if #order >= MAX_FILES then
                        stream:close()
                        return nil, "more than " .. MAX_FILES .. " files"
                    end
                    ok2, aerr = fetch(field(3, dep))
                    if not ok2 then
                        stream:close()
                        return nil, aerr
                    end
                    -- not sent under that name: do not ask again (loading then names it)
                    seen[dep] = true
                end
            end
            stream:close()
            -- FileDescriptorSet: repeated FileDescriptorProto file = 1
            local set = {}
            for k, fd in ipairs(order) do
                set[k] = field(1, fd)
            end
            return pb.load_descriptor(concat(set))
        end
        stream:close()
        if not (type(err) == "string" and err:find("^UNIMPLEMENTED")) then
            return nil, err
        end
    end
    return nil, err
end


return _M
