-- resty.grpc_zc.rpc: starting a gRPC call on a connection (unary, or a stream's opening).
--
-- Checks the call options, builds the Call command (path, deadline, metadata, compression,
-- the request message) in a request slot and posts it; the reply is the unary response or the
-- stream's id. Shared by resty.grpc_zc.conn and resty.grpc_zc.stream.

local Call = require "resty.grpc_zc.wire.Call"
local Command = require "resty.grpc_zc.wire.Command"
local Metadata = require "resty.grpc_zc.wire.Metadata"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"
local tables = require "resty.grpc_zc.tables"
local check = require "resty.grpc_zc.check"

local type = type
local error = error
local pairs = pairs
local ms = check.ms
local builder = call.builder

local _M = { version = "0.1.0" }

-- Extra host wait beyond a call's deadline, so the runtime's DEADLINE_EXCEEDED wins.
_M.DEADLINE_GRACE_MS = 1000
local DEADLINE_GRACE_MS = _M.DEADLINE_GRACE_MS
-- Most metadata entries a call takes: each is a table of the envelope, whose verifier allows
-- 8,192 of them in all.
_M.MAX_METADATA = 4096
local MAX_METADATA = _M.MAX_METADATA


function _M.check_path(path)
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
        error("bad path: \"/package.Service/Method\" expected", 3)
    end
end


-- Checks call options; returns the call's timeout (whole ms > 0, check.ms, or nil: none), the metadata table, the bytes the metadata takes in the request and
-- its number of entries.
function _M.check_call_opts(conn, call_opts)
    if call_opts == nil then
        return conn.timeout, nil, 0, 0
    end
    if type(call_opts) ~= "table" then
        error("bad call options: table expected", 3)
    end
    local md = call_opts.metadata
    local need, nmd = 0, 0
    if md ~= nil then
        if type(md) ~= "table" then
            error("bad metadata: table expected", 3)
        end
        for k, v in pairs(md) do
            if type(k) ~= "string" or type(v) ~= "string" then
                error("bad metadata: string keys and values expected", 3)
            end
            need = need + #k + #v + 32
            nmd = nmd + 1
        end
    end
    if call_opts.compression ~= nil and type(call_opts.compression) ~= "string" then
        error("bad option compression: string expected", 3)
    end
    local timeout = conn.timeout
    if call_opts.timeout ~= nil then
        -- 0: the connection's default deadline, or none (as the runtime reads a 0); never a
        -- host wait of only the grace period.
        timeout = ms(call_opts.timeout, "timeout", 3)
        if timeout == 0 then
            timeout = conn.timeout
        end
    end
    return timeout, md, need, nmd
end


-- The metadata vector of a Call, built from table `md`; returns its offset.
local function put_metadata(md)
    local offs, m = {}, 0
    for k, v in pairs(md) do
        local kv = builder:CreateString(k)
        local vv = builder:CreateByteVector(v)
        Metadata.Start(builder)
        Metadata.AddKey(builder, kv)
        Metadata.AddValue(builder, vv)
        m = m + 1
        offs[m] = Metadata.End(builder)
    end
    Call.StartMetadataVector(builder, m)
    for i = m, 1, -1 do
        builder:PrependUOffsetTRelative(offs[i])
    end
    return builder:EndVector(m)
end


-- Builds and posts a Call of `kind` on connection `conn`; returns the reply and the call
-- (still to be finished), or false, err, status. `types`: the method's types when `req` is a
-- table; timeout, md, need, nmd: from check_call_opts. A closed connection (conn:close) and
-- too many metadata entries fail here, before anything is leased.
function _M.post_call(conn, kind, path, req, call_opts, timeout, md, need, nmd, types)
    if conn.closed then
        return reply.local_failure(reply.FAILED_PRECONDITION, "connection closed")
    end
    if nmd > MAX_METADATA then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, "metadata of " .. nmd
                                   .. " entries, more than " .. MAX_METADATA)
    end
    local n, err
    if type(req) == "table" then
        req, n, err = tables.encode_size(types.input, req)
        if req == nil then
            return reply.local_failure(reply.INTERNAL, err)
        end
    else
        n = req and #req or 0
    end
    if n > conn.max_send then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, "trying to send message larger than max ("
                             .. n .. " vs. " .. conn.max_send .. ")")
    end
    local h
    h, err = call.begin_build(n + #path + need + 256)
    if not h then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, err)
    end
    local pv = req and tables.put_message(types, req, n)
    local pathv = builder:CreateString(path)
    local comp = call_opts and call_opts.compression
    comp = comp and builder:CreateString(comp)
    local mdv = md and put_metadata(md)
    Call.Start(builder)
    Call.AddConn(builder, conn.id)
    Call.AddKind(builder, kind)
    Call.AddPath(builder, pathv)
    if timeout then
        Call.AddTimeoutMs(builder, timeout)
    end
    if mdv then
        Call.AddMetadata(builder, mdv)
    end
    if comp then
        Call.AddCompression(builder, comp)
    end
    if pv then
        Call.AddPayload(builder, pv)
    end
    if call_opts and call_opts.response_metadata then
        Call.AddWantMetadata(builder, true)
    end
    call.finish_request(Command.Call, Call.End(builder))

    local wait = timeout and { timeout = timeout + DEADLINE_GRACE_MS } or nil
    local r, rerr = call.roundtrip(h, wait)
    if not r then
        return false, rerr
    end
    local serr, status = reply.status_of(r)
    if serr then
        call.finish(h, 1, 0)
        return false, serr, status
    end
    return r, h
end


return _M
