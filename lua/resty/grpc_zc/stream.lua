-- resty.grpc_zc.stream: streaming calls (the Stream object of conn:new_stream,
-- conn:server_stream and conn:client_stream).
--
-- A stream is a driver task in the runtime under a stream id; every operation (send, recv,
-- close_send) is an ordinary call whose reply carries a message, headers, trailers or the
-- status. The stream is forgotten in the runtime as soon as Lua has seen its end or its
-- failure, on close(), or by the ffi.gc finalizer of a stream Lua dropped.

local ffi = require "ffi"
local Command = require "resty.grpc_zc.wire.Command"
local StreamSend = require "resty.grpc_zc.wire.StreamSend"
local StreamRecv = require "resty.grpc_zc.wire.StreamRecv"
local StreamCloseSend = require "resty.grpc_zc.wire.StreamCloseSend"
local lib = require "resty.grpc_zc.lib"
local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local call = require "resty.grpc_zc.call"
local tables = require "resty.grpc_zc.tables"
local rpc = require "resty.grpc_zc.rpc"
local C = assert(lib.load())

local ffi_new = ffi.new
local ffi_gc = ffi.gc
local type = type
local error = error
local setmetatable = setmetatable
local stream_cancel = C.grpc_zc_stream_cancel
local builder = call.builder
local S = instance.state

local stream_ref_t = ffi.typeof("grpc_zc_stream_ref_t")

local _M = { version = "0.1.0" }

-- Finalizer of a stream Lua dropped without closing it: cancel it on the wire.
local function stream_gc(ref)
    stream_cancel(S.inst, ref.id)
end

local Stream = {}
local Stream_mt = { __index = Stream }


-- Opens a stream of `kind` on connection `conn` (`req`: the request of a server stream, else
-- nil). Returns true, stream or false, err, status.
function _M.open(conn, kind, path, req, call_opts)
    local timeout, md, need, nmd = rpc.check_call_opts(conn, call_opts)
    -- Tables when the method's types are loaded (unless call_opts.raw, or a string request).
    local types
    if not (call_opts and call_opts.raw) and type(req) ~= "string" then
        local terr
        types, terr = tables.types_of(path)
        if types == nil and type(req) == "table" then
            return reply.local_failure(reply.INTERNAL, terr)
        end
    end
    local r, h, status = rpc.post_call(conn, kind, path, req, call_opts, timeout, md, need, nmd,
                                       types)
    if not r then
        return false, h, status
    end
    local id = reply.id_of(r)
    call.finish(h, 1, 0)
    local deadline = timeout and timeout > 0 and ngx.now() * 1000 + timeout or nil
    return true, setmetatable({
        id = id,
        ref = ffi_gc(ffi_new(stream_ref_t, id), stream_gc),
        kind = kind,
        deadline = deadline,
        max_send = conn.max_send,
        types = types,
        path = path,
    }, Stream_mt)
end


-- The stream is over (ended, failed or closed): forget it in the runtime.
local function forget(self)
    local ref = self.ref
    if ref ~= nil then
        self.ref = nil
        ffi_gc(ref, nil)
        stream_cancel(S.inst, self.id)
    end
end


-- The stream failed with (err, status): later operations report the same.
local function fail(self, err, status)
    self.err, self.status = err, status
    self.trls = status and status.metadata
    forget(self)
    return false, err, status
end


local function check_open(self)
    if self.err then
        return false, self.err, self.status
    end
    if self.ref == nil then
        return false, self.ended and "stream ended" or "stream closed"
    end
    return true
end


-- Starts a stream operation: checks the stream and leases a call slot of `need` bytes. Returns
-- the call, or false, err, status.
local function begin_op(self, need)
    local ok, err, status = check_open(self)
    if not ok then
        return ok, err, status
    end
    local h
    h, err = call.begin_build(need)
    if not h then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, err)
    end
    return h
end


-- Posts the stream operation built in the builder; returns the reply and its call, or
-- false, err, status (the stream has then failed).
local function stream_op(self, h, ctype, command)
    call.finish_request(ctype, command)
    local wait
    if self.deadline then
        local left = self.deadline - ngx.now() * 1000
        wait = { timeout = (left > 0 and left or 0) + rpc.DEADLINE_GRACE_MS }
    end
    local r, rerr = call.roundtrip(h, wait)
    if not r then
        return fail(self, rerr)
    end
    local serr, status = reply.status_of(r)
    if serr then
        call.finish(h, 1, 0)
        return fail(self, serr, status)
    end
    if self.hdrs == nil then
        self.hdrs = reply.metadata_of(r)
    end
    return r, h
end


-- stream:send(msg) -> true | false, err, status
function Stream:send(msg)
    local n
    local types = self.types
    if type(msg) == "table" then
        if types == nil then
            local terr
            types, terr = tables.types_of(self.path)
            if types == nil then
                return reply.local_failure(reply.INTERNAL, terr)
            end
        end
        local err
        msg, n, err = tables.encode_size(types.input, msg)
        if msg == nil then
            return reply.local_failure(reply.INTERNAL, err)
        end
    elseif type(msg) == "string" then
        n = #msg
    else
        error("bad message: string or table expected, got " .. type(msg), 2)
    end
    local ok, err, status = check_open(self)
    if not ok then
        return ok, err, status
    end
    if n > self.max_send then
        -- The stream goes on, as in grpc-go: nothing was sent.
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, "trying to send message larger than max ("
                             .. n .. " vs. " .. self.max_send .. ")")
    end
    local h
    h, err = call.begin_build(n + 128)
    if not h then
        return reply.local_failure(reply.RESOURCE_EXHAUSTED, err)
    end
    local pv = tables.put_message(types, msg, n)
    StreamSend.Start(builder)
    StreamSend.AddStream(builder, self.id)
    StreamSend.AddPayload(builder, pv)
    local r, rh, rstatus = stream_op(self, h, Command.StreamSend, StreamSend.End(builder))
    if not r then
        return false, rh, rstatus
    end
    call.finish(rh, 1, 0)
    return true
end


-- Posts a StreamRecv (`headers_only`: wait for the response headers only) and returns the reply
-- and its call, or false, err, status.
local function recv_op(self, headers_only)
    local h, err, status = begin_op(self, 64)
    if not h then
        return false, err, status
    end
    StreamRecv.Start(builder)
    StreamRecv.AddStream(builder, self.id)
    if headers_only then
        StreamRecv.AddHeadersOnly(builder, true)
    end
    return stream_op(self, h, Command.StreamRecv, StreamRecv.End(builder))
end


-- Posts a StreamCloseSend (`finish_call`: and wait for the response and the end of the call);
-- returns the reply and its call, or false, err, status.
local function close_send_op(self, finish_call)
    local h, err, status = begin_op(self, 64)
    if not h then
        return false, err, status
    end
    StreamCloseSend.Start(builder)
    StreamCloseSend.AddStream(builder, self.id)
    if finish_call then
        StreamCloseSend.AddFinish(builder, true)
    end
    return stream_op(self, h, Command.StreamCloseSend, StreamCloseSend.End(builder))
end


-- The stream ended normally with reply `r` (its trailers); `rh` is the reply's call.
local function ended(self, r, rh)
    self.trls = reply.metadata_of(r, true) or {}
    self.ended = true
    call.finish(rh, 1, 0)
    forget(self)
end


local function undecodable(self, err)
    local _, msg, status = reply.local_failure(reply.INTERNAL, err)
    return fail(self, msg, status)
end


-- stream:recv() -> true, msg | true, nil (end of stream) | false, err, status
function Stream:recv()
    if self.ended then
        return true, nil
    end
    local r, rh, status = recv_op(self, false)
    if not r then
        return false, rh, status
    end
    if not r:HasMessage() then
        ended(self, r, rh)
        return true, nil
    end
    local msg, err = tables.message_of(self.types, r)
    call.finish(rh, 1, 0)
    if msg == nil then
        return undecodable(self, err)
    end
    return true, msg
end


-- stream:close_send() -> true | false, err, status: no more messages from this side.
function Stream:close_send()
    local r, rh, status = close_send_op(self, false)
    if not r then
        return false, rh, status
    end
    call.finish(rh, 1, 0)
    return true
end


-- stream:finish() -> true, res | false, err, status: half-closes a client stream and returns
-- its one response once the call has ended (trailers then in stream:trailers()).
function Stream:finish()
    local r, rh, status = close_send_op(self, true)
    if not r then
        return false, rh, status
    end
    local res, err = tables.message_of(self.types, r)
    ended(self, r, rh)
    if res == nil then
        return undecodable(self, err)
    end
    return true, res
end


-- stream:headers() -> table | nil, err: the response headers (waits for them).
function Stream:headers()
    if self.hdrs then
        return self.hdrs
    end
    local r, rh = recv_op(self, true)
    if not r then
        return nil, rh
    end
    self.hdrs = self.hdrs or {}
    call.finish(rh, 1, 0)
    return self.hdrs
end


-- stream:trailers() -> table | nil: the trailers, once the stream has ended (or failed).
function Stream:trailers()
    return self.trls
end


-- stream:close() -> true: ends the stream; if it is still running, it is cancelled on the wire
-- (RST_STREAM CANCEL). A stream that is garbage-collected unclosed is cancelled the same way.
function Stream:close()
    forget(self)
    return true
end


return _M
