//! Shared by the gRPC test binaries: nginx set-up, the test Lua helpers (hand-written protobuf
//! for the test messages) and the arena usage check.
#![allow(dead_code)]

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use testkit::{Nginx, NginxBuilder};

/// Held by every test of a binary that has tests timing the runtime's own behaviour: those take
/// it alone ([`alone`]), the rest share it ([`shared`]). The tests run two at a time on 2
/// cores, and a second test's nginx and servers beside a timing test stretch its 2 ms answers
/// to 6 ms and more, past the window the test measures polling in.
static MACHINE: RwLock<()> = RwLock::new(());

/// For a test that times the runtime: no other test of the binary runs while it holds this.
pub fn alone() -> RwLockWriteGuard<'static, ()> {
    // A test that failed holding the lock poisons it; the next test still runs.
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// For any other test of a binary that has tests taking [`alone`].
pub fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Lua for the tests: protobuf encoding of the test messages by hand (field numbers from
/// testkit/proto/*.proto) and the arena usage check.
const HELPERS: &str = r#"
init_by_lua_block {
    @VARINT@
    local function bytes_field(num, s)
        return string.char(num * 8 + 2) .. varint(#s) .. s
    end
    local function int_field(num, v)
        return string.char(num * 8) .. varint(v)
    end
    -- zctest.EchoRequest
    function echo_req(o)
        local t = {}
        if o.payload then t[#t + 1] = bytes_field(1, o.payload) end
        if o.status then t[#t + 1] = int_field(2, o.status) end
        if o.message then t[#t + 1] = bytes_field(3, o.message) end
        if o.sleep_ms then t[#t + 1] = int_field(4, o.sleep_ms) end
        if o.count then t[#t + 1] = int_field(5, o.count) end
        if o.size then t[#t + 1] = int_field(6, o.size) end
        if o.details then t[#t + 1] = bytes_field(7, o.details) end
        return table.concat(t)
    end
    -- helloworld.HelloRequest / the payload field of zctest.EchoReply
    function hello_req(name) return bytes_field(1, name) end
    function field1(msg)
        if msg == "" then return "" end
        assert(msg:byte(1) == 10, "field 1 expected")
        local len, shift, i = 0, 1, 2
        while true do
            local b = msg:byte(i)
            len = len + (b % 128) * shift
            i = i + 1
            if b < 128 then break end
            shift = shift * 128
        end
        return msg:sub(i, i + len - 1)
    end
    -- zctest.EchoReply → payload, index
    function echo_reply(msg)
        local payload, index, i = "", 0, 1
        local function varint()
            local v, shift = 0, 1
            while true do
                local b = msg:byte(i)
                i = i + 1
                v = v + (b % 128) * shift
                if b < 128 then return v end
                shift = shift * 128
            end
        end
        while i <= #msg do
            local tag = varint()
            if tag == 10 then
                local len = varint()
                payload = msg:sub(i, i + len - 1)
                i = i + len
            elseif tag == 16 then
                index = varint()
            else
                error("unexpected tag " .. tag)
            end
        end
        return payload, index
    end
    function usage()
        local s = assert(require("resty.grpc_zc").stats())
        return string.format("slots=%d bytes=%d calls=%d streams=%d", s.slots_in_use,
                             s.bytes_in_use, s.calls_in_flight, s.streams_open)
    end
}
"#;

/// [`HELPERS`] with the varint encoder spliced in.
pub fn helpers() -> String {
    HELPERS.replace("@VARINT@", testkit::LUA_VARINT)
}

pub const IDLE: &str = "slots=0 bytes=0 calls=0 streams=0";

pub fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(workers)
        .http_conf(&format!(
            "{}\nlua_check_client_abort on;\ninit_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}",
            helpers()
        ))
        .server_conf(server)
        .start()
}

/// [`nginx`] with more Lua in the `init_by_lua_block` (after the helpers).
pub fn nginx_with(name: &str, workers: usize, init_lua: &str, server: &str) -> Nginx {
    let helpers = helpers();
    let helpers = helpers
        .trim_end()
        .strip_suffix('}')
        .expect("HELPERS ends its init_by_lua_block");
    NginxBuilder::new(name)
        .workers(workers)
        .http_conf(&format!(
            "{helpers}\n{init_lua}\n}}\nlua_check_client_abort on;\ninit_worker_by_lua_block {{ assert(require(\"resty.grpc_zc\").init()) }}"
        ))
        .server_conf(server)
        .start()
}

/// A location that connects to `target` (passed as ?t=) and runs `body` with `conn` in scope.
pub fn location(path: &str, body: &str) -> String {
    format!(
        r#"
        location {path} {{
            content_by_lua_block {{
                local grpc = require "resty.grpc_zc"
                local ok, conn = grpc.connect(ngx.var.arg_t, {{ connect_timeout = 1000 }})
                assert(ok, conn)
                {body}
            }}
        }}
        "#
    )
}
