-- resty.grpc_zc.conn: connections (grpc.connect) and their methods: unary calls, opening
-- streams (resty.grpc_zc.stream), close.
--
-- A connection is an id in the runtime's channel table plus the settings Lua applies itself
-- (default deadline, largest message to send) and whether this object has closed it.

local Command = require "resty.grpc_zc.wire.Command"
local Connect = require "resty.grpc_zc.wire.Connect"
local CallKind = require "resty.grpc_zc.wire.CallKind"
local Close = require "resty.grpc_zc.wire.Close"
local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"
local tables = require "resty.grpc_zc.tables"
local rpc = require "resty.grpc_zc.rpc"
local stream = require "resty.grpc_zc.stream"
local check = require "resty.grpc_zc.check"
-- A private instance: settings the application makes on the shared cjson module do not
-- change what is sent.
local cjson = require("cjson.safe").new()

local type = type
local error = error
local tostring = tostring
local ipairs = ipairs
local setmetatable = setmetatable
local getmetatable = getmetatable
local ms = check.ms
local size = check.size
local builder = call.builder
local S = instance.state

local _M = { version = "0.1.0" }

local Conn = {}
local Conn_mt = { __index = Conn }


-- Whether `v` is a connection from connect().
function _M.is_conn(v)
    return type(v) == "table" and getmetatable(v) == Conn_mt
end


-- The service_config option as JSON text (nil: none). A table is encoded here; the runtime
-- parses and checks the text itself, so a string goes as it is. Raises at level 3 (connect's
-- caller) on any other type or a table cjson cannot encode (a function, a sparse array, a
-- cycle).
-- A table's text is kept (weakly) by the table: Lua code that connects in every request with
-- one config table encodes it once. A table changed after its first connect must be a new
-- table to take effect.
local encoded = setmetatable({}, { __mode = "k" })

local function service_config_json(v)
    if v == nil or type(v) == "string" then
        return v
    end
    if type(v) ~= "table" then
        error("bad option service_config: JSON string or table expected", 3)
    end
    local json = encoded[v]
    if json then
        return json
    end
    local err
    json, err = cjson.encode(v)
    if not json then
        error("bad option service_config: " .. tostring(err), 3)
    end
    encoded[v] = json
    return json
end


-- grpc.connect(target, opts?) -> true, conn | false, err, status
--   target: "host:port", "[::1]:port", "http://host:port", "https://host:port", "unix:/path".
--   opts: host (authority and TLS server name), ca, cert, priv_key (PEM contents: TLS with
--   `ca` or for https targets, mTLS with cert + priv_key), insecure (plaintext regardless),
--   connect_timeout (the whole connection setup), timeout (default deadline of calls),
--   keepalive_interval, keepalive_timeout (milliseconds, check.ms), max_send_msg_size,
--   max_recv_msg_size (bytes, check.size; default: the arena's max_message and 4 MiB),
--   compression ("gzip"), service_config (gRFC A2: JSON text, or a Lua table encoded with
--   lua-cjson; arrays such as methodConfig or name must be Lua sequences, and an empty table
--   encodes as the object {}), resolve_interval (how often DNS names are resolved again,
--   milliseconds, check.ms; 0 or none: the runtime's default).
function _M.connect(target, opts)
    if type(target) ~= "string" or target == "" then
        error("bad target: non-empty string expected", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad opts: table expected", 2)
    end
    opts = opts or {}
    local ok, err = instance.ensure()
    if not ok then
        return false, err
    end
    for _, k in ipairs({ "host", "ca", "cert", "priv_key", "compression" }) do
        if opts[k] ~= nil and type(opts[k]) ~= "string" then
            error("bad option " .. k .. ": string expected", 2)
        end
    end
    -- Every numeric option checked before anything is leased.
    local connect_timeout = ms(opts.connect_timeout, "connect_timeout")
    -- 0: no default deadline, like no option.
    local default_timeout = opts.timeout ~= nil and ms(opts.timeout, "timeout") or nil
    if default_timeout == 0 then
        default_timeout = nil
    end
    local keepalive_interval = ms(opts.keepalive_interval, "keepalive_interval")
    local keepalive_timeout = ms(opts.keepalive_timeout, "keepalive_timeout")
    local max_send_opt = size(opts.max_send_msg_size, "max_send_msg_size")
    local max_recv_opt = size(opts.max_recv_msg_size, "max_recv_msg_size")
    local resolve_interval = ms(opts.resolve_interval, "resolve_interval")
    local service_config = service_config_json(opts.service_config)
    local h
    h, err = call.begin_build(#target + #(opts.host or "") + #(opts.ca or "") + #(opts.cert or "")
                         + #(opts.priv_key or "") + #(service_config or "") + 320)
    if not h then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, err)
    end
    local t = builder:CreateString(target)
    local a = opts.host and builder:CreateString(opts.host)
    local ca = opts.ca and builder:CreateByteVector(opts.ca)
    local cert = opts.cert and builder:CreateByteVector(opts.cert)
    local key = opts.priv_key and builder:CreateByteVector(opts.priv_key)
    local comp = opts.compression and builder:CreateString(opts.compression)
    local sc = service_config and builder:CreateString(service_config)
    Connect.Start(builder)
    Connect.AddTarget(builder, t)
    if a then
        Connect.AddAuthority(builder, a)
    end
    if ca then
        Connect.AddCaPem(builder, ca)
    end
    if cert then
        Connect.AddCertPem(builder, cert)
    end
    if key then
        Connect.AddKeyPem(builder, key)
    end
    if comp then
        Connect.AddCompression(builder, comp)
    end
    if sc then
        Connect.AddServiceConfig(builder, sc)
    end
    if opts.insecure then
        Connect.AddInsecure(builder, true)
    end
    Connect.AddConnectTimeoutMs(builder, connect_timeout)
    Connect.AddDefaultTimeoutMs(builder, default_timeout or 0)
    Connect.AddKeepaliveIntervalMs(builder, keepalive_interval)
    Connect.AddKeepaliveTimeoutMs(builder, keepalive_timeout)
    Connect.AddMaxSendMsgSize(builder, max_send_opt)
    Connect.AddMaxRecvMsgSize(builder, max_recv_opt)
    Connect.AddResolveIntervalMs(builder, resolve_interval)
    call.finish_request(Command.Connect, Connect.End(builder))

    local r, rerr = call.roundtrip(h, nil)
    if not r then
        return false, rerr
    end
    local serr, status = reply.status_of(r)
    local id = reply.id_of(r)
    call.finish(h, 1, 0)
    if serr then
        return false, serr, status
    end
    local max_send = S.max_payload
    if max_send_opt > 0 and max_send_opt < max_send then
        max_send = max_send_opt
    end
    return true, setmetatable({ id = id, target = target, timeout = default_timeout,
                                max_send = max_send }, Conn_mt)
end


-- conn:unary(path, req, call_opts?) -> true, res[, meta] | false, err, status
--   req: the protobuf-encoded request (string) or a table (types from grpc.load_proto);
--   res: the encoded response (string) or a table. call_opts: timeout (check.ms, sent as
--   grpc-timeout), metadata (table; "-bin" keys carry bytes), compression ("gzip" or
--   "identity"), response_metadata (true: a third value { headers = {...}, trailers = {...} }).
function Conn:unary(path, req, call_opts)
    rpc.check_path(path)
    local types, terr
    if type(req) == "table" then
        types, terr = tables.types_of(path)
        if types == nil then
            return reply.local_failure(reply.INTERNAL, terr)
        end
    elseif type(req) ~= "string" then
        error("bad request: string or table expected, got " .. type(req), 2)
    end
    local timeout, md, need, nmd = rpc.check_call_opts(self, call_opts)
    local r, h, status = rpc.post_call(self, CallKind.Unary, path, req, call_opts, timeout, md,
                                       need, nmd, types)
    if not r then
        return false, h, status
    end
    local res
    res, terr = tables.message_of(types, r)
    if res == nil then
        call.finish(h, 1, 0)
        return reply.local_failure(reply.INTERNAL, terr)
    end
    local meta
    if call_opts and call_opts.response_metadata then
        meta = { headers = reply.metadata_of(r) or {}, trailers = reply.metadata_of(r, true) or {} }
    end
    call.finish(h, 1, 0)
    return true, res, meta
end


-- conn:new_stream(path, call_opts?) -> true, stream | false, err, status   (bidi streaming)
function Conn:new_stream(path, call_opts)
    rpc.check_path(path)
    return stream.open(self, CallKind.Bidi, path, nil, call_opts)
end


-- conn:server_stream(path, req, call_opts?) -> true, stream | false, err, status
function Conn:server_stream(path, req, call_opts)
    rpc.check_path(path)
    if type(req) ~= "string" and type(req) ~= "table" then
        error("bad request: string or table expected, got " .. type(req), 2)
    end
    return stream.open(self, CallKind.ServerStreaming, path, req, call_opts)
end


-- conn:client_stream(path, call_opts?) -> true, stream | false, err, status
function Conn:client_stream(path, call_opts)
    rpc.check_path(path)
    return stream.open(self, CallKind.ClientStreaming, path, nil, call_opts)
end


-- conn:close(): forgets the connection (calls in flight finish). Each object owns one count
-- of its (shared) connection id and releases it once: a second close is a no-op, and calls on
-- a closed object fail locally (rpc.post_call), never touching an id other objects share.
function Conn:close()
    if self.closed then
        return true
    end
    local ok, err = instance.ensure()
    if not ok then
        return false, err
    end
    local h
    h, err = call.begin_build(64)
    if not h then
        return false, err
    end
    Close.Start(builder)
    Close.AddConn(builder, self.id)
    call.finish_request(Command.Close, Close.End(builder))
    local r, rerr = call.roundtrip(h, nil)
    if not r then
        return false, rerr
    end
    call.finish(h, 1, 0)
    self.closed = true
    return true
end


return _M
