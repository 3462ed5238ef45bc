-- resty.grpc_zc: the Lua side of the resty_grpc_zc runtime.
--
-- Requests are built as FlatBuffers directly in a slot of the runtime's shared arena and posted
-- through the lua-resty-ffi queue as a 16-byte descriptor; replies are read in place from
-- another slot. See docs/architecture.md and docs/grpc_zc.md.
--
-- gRPC calls (unary and the three streaming kinds) plus the transport self-test `echo`.
-- Conventions (lua-resty-core): misuse raises error(msg, 2); failures return
-- `false, err[, status]`. The API page is docs/grpc_zc.md.
--
-- This module is the facade; the work is done by the modules under resty/grpc_zc/, which
-- import one way:
--
--     resty.grpc_zc ─► conn ─► stream ─► rpc ─► tables ─► call ─► instance ─► lib (the C door)
--                  ├► echo ─────────────────────────────┤   └► reply        pb (codec)
--                  └► metrics ──────────────────────────┘
--     check (the one numeric check): a leaf used by instance, echo, rpc, conn and pb
--
--   conn      grpc.connect, Conn (unary, opening streams, close)
--   metrics   grpc.metrics, metrics_publish, metrics_sync, prometheus (client metrics)
--   stream    Stream (send, recv, close_send, finish, headers, trailers, close)
--   rpc       call options and the Call command shared by unary calls and streams
--   tables    messages as Lua tables (pb, or a user codec from grpc.set_codec)
--   echo      grpc.echo and its fast path, in-place replies
--   call      a call's life: slot lease, the shared builder, post, reply, finish, the pool
--   reply     reading replies in place; the gRPC status shape
--   instance  this worker's runtime instance (grpc.init, grpc.stats)
--   lib       the one ffi.load, every ffi.cdef, the ABI check, the big copy
--   check     the range check of every numeric option and length (NaN, inf, fractions)

local instance = require "resty.grpc_zc.instance"
local reply = require "resty.grpc_zc.reply"
local tables = require "resty.grpc_zc.tables"
local echo = require "resty.grpc_zc.echo"
local conn = require "resty.grpc_zc.conn"
local metrics = require "resty.grpc_zc.metrics"
local pb = require "resty.grpc_zc.pb"

local type = type
local error = error
local tostring = tostring

local _M = { version = "0.1.0" }

-- grpc.init(opts?): loads the runtime in this worker (once). Called implicitly by the first
-- call; call it from init_worker_by_lua to size the arena:
--   opts.arena_size (bytes, default 64 MiB), opts.max_message (bytes, default 4 MiB),
--   opts.cpus (CPUs for the runtime's own threads, e.g. 1, {2, 3} or "2-3"; default: the
--   worker's), opts.busy_poll_us (how long the runtime busy-polls for answers while calls are
--   in flight, default 500; 0: off).
_M.init = instance.init

-- grpc.echo(payload, opts?) -> true, reply | false, err (resty.grpc_zc.echo).
_M.echo = echo.echo

-- grpc.connect(target, opts?) -> true, conn | false, err, status (resty.grpc_zc.conn).
_M.connect = conn.connect

-- grpc.stats() -> table: arena usage, calls in flight, open streams, busy_polled_us.
_M.stats = instance.stats

-- grpc.metrics() -> table | nil, err: this worker's client metrics (gRFC A66 instruments per
-- target and method), decoded. grpc.metrics_publish(dict, interval_s?) stores them in a
-- lua_shared_dict; grpc.metrics_sync(dict, interval_s) does so every interval_s (call it from
-- init_worker_by_lua); grpc.prometheus(dict) -> text: every worker's, summed, in the
-- Prometheus text format (resty.grpc_zc.metrics).
_M.metrics = metrics.metrics
_M.metrics_publish = metrics.metrics_publish
_M.metrics_sync = metrics.metrics_sync
_M.prometheus = metrics.prometheus

-- grpc.codes: gRPC status code names to numbers.
_M.codes = reply.codes

-- grpc.load_proto(path_or_list, { import_paths = {...} }) -> true | nil, err: compiles .proto
-- files at run time (no protoc) and registers their messages and services, so calls can take
-- and return Lua tables. Per worker (per Lua VM); call it from init_by_lua (inherited by the
-- workers) or init_worker_by_lua. See docs/protobuf.md.
_M.load_proto = pb.load_proto

-- grpc.load_descriptor(bytes) / grpc.load_descriptor(ptr, len) -> true | nil, err: the same
-- from a serialized google.protobuf.FileDescriptorSet (protoc --descriptor_set_out
-- --include_imports); a NULL pointer or a bad length raises before anything is read.
_M.load_descriptor = pb.load_descriptor

-- grpc.load_reflection(conn, service_or_list, call_opts?) -> true | nil, err: the message types
-- of services from a server that offers gRPC server reflection (no .proto file needed).
function _M.load_reflection(c, services, call_opts)
    if not conn.is_conn(c) then
        error("bad conn: a connection from grpc.connect expected", 2)
    end
    return require("resty.grpc_zc.reflection").load(c, services, call_opts)
end

-- The codec module, for encoding or decoding messages by hand (pb.encode, pb.decode).
_M.pb = pb

-- grpc.set_codec{ encode = fn(type_name, tbl) -> string, decode = fn(type_name, s) -> tbl }
-- or grpc.set_codec(nil) (resty.grpc_zc.tables).
_M.set_codec = tables.set_codec


-- grpc.readfile(path) -> contents | nil, err: reads a file (PEM certificates and keys); a
-- folder or an unreadable file is nil, err too.
function _M.readfile(path)
    if type(path) ~= "string" then
        error("bad path: string expected", 2)
    end
    local f, err = io.open(path, "rb")
    if not f then
        return nil, err
    end
    local data, rerr = f:read("*a")
    f:close()
    if data == nil then
        -- e.g. a folder: open succeeds, read fails
        return nil, path .. ": " .. tostring(rerr or "cannot read")
    end
    return data
end


return _M
