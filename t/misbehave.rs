//! Servers that break the protocol, through a real nginx: `testkit`'s [`RogueServer`] answers
//! each call with one [`Misbehaviour`] (HTTP errors, content that is not gRPC, lying frame
//! prefixes, missing or bad trailers, RST_STREAM, GOAWAY, hang-ups) and a second listener
//! speaks no HTTP/2 at all. Every misbehaviour is called as a unary call, a server stream
//! (`recv` to the end) and a bidi stream (`send`, then `recv` to the end), and each must end in
//! a status error promptly (well before the call's 3 s deadline) — never `ok == true` where the
//! call cannot have succeeded, never a hang, never a dead worker: the worker's pid is the same
//! afterwards, a call to a real server still works, the arena is idle, and error.log is clean
//! (no `[alert]`: no panic was caught on the way).
//!
//! The expected codes are tonic's (the transport this runtime is built on) after the runtime's
//! own mapping (`local_status` in src/grpc/status.rs); where grpc-go says otherwise the case says
//! so and which one is followed.

use testkit::{GrpcServer, GrpcServerOpts, Misbehaviour, RogueServer};

mod common;
use common::{nginx, IDLE};

/// `/call?t=&kind=unary|server|bidi&m=<path>`: one call with a 3 s deadline, printed as
/// `ok|code|messages|seconds|err or last value`. Stream messages must all be the rogue's
/// well-formed reply.
const SERVER_CONF: &str = r#"
    location /call {
        content_by_lua_block {
            local grpc = require "resty.grpc_zc"
            local ok, conn = grpc.connect(ngx.var.arg_t, { connect_timeout = 1000 })
            assert(ok, conn)
            local kind, path = ngx.var.arg_kind, ngx.var.arg_m
            local opts = { timeout = 3000 }
            ngx.update_time()
            local t0 = ngx.now()
            local ok, res, st
            local msgs = 0
            if kind == "unary" then
                ok, res, st = conn:unary(path, hello_req("x"), opts)
                if ok then msgs, res = 1, field1(res) end
            else
                local s
                if kind == "server" then
                    ok, s, st = conn:server_stream(path, hello_req("x"), opts)
                else
                    ok, s, st = conn:new_stream(path, opts)
                end
                -- Opening only posts the call: whatever the server does comes later.
                assert(ok, s)
                if kind == "bidi" then
                    ok, res, st = s:send(hello_req("x"))
                end
                if ok then
                    repeat
                        ok, res, st = s:recv()
                        if ok and res then
                            assert(field1(res) == "rogue", "message " .. msgs + 1)
                            msgs = msgs + 1
                        end
                    until not ok or res == nil
                end
                s:close()
            end
            ngx.update_time()
            ngx.say(tostring(ok), "|", st and st.code or "-", "|", msgs, "|",
                    string.format("%.3f", ngx.now() - t0), "|", tostring(res))
        }
    }
    location /good {
        content_by_lua_block {
            local grpc = require "resty.grpc_zc"
            local ok, conn = grpc.connect(ngx.var.arg_t)
            assert(ok, conn)
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", hello_req("still"),
                                       { timeout = 3000 })
            ngx.say(ok and field1(res) or res)
        }
    }
    location /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
    location /usage { content_by_lua_block { collectgarbage() collectgarbage() ngx.say(usage()) } }
"#;

/// What a call must end with.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// `ok == false` with this code, after this many stream messages; the error string starts
    /// with the code's name and contains the text.
    Fails(i32, usize, &'static str),
    /// `ok == true` after this many messages (for a stream: a clean end).
    Succeeds(usize),
}
use Want::{Fails, Succeeds};

const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const UNIMPLEMENTED: i32 = 12;
const UNKNOWN: i32 = 2;
const RESOURCE_EXHAUSTED: i32 = 8;

fn code_name(code: i32) -> &'static str {
    match code {
        2 => "UNKNOWN",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        _ => unreachable!("code {code} is not expected here"),
    }
}

/// The outcome of each misbehaviour as [unary, server stream, bidi stream], and why.
fn expected(m: Misbehaviour) -> [Want; 3] {
    use Misbehaviour as M;
    let all = |w: Want| [w, w, w];
    match m {
        // Not gRPC (the response head has no gRPC content type and no grpc-status): tonic
        // would read "<html" as a gRPC frame ('<' (60) is no valid compressed flag: INTERNAL);
        // grpc-go looks at the head first, and so does the runtime (src/grpc/response.rs):
        // UNKNOWN for a 200.
        M::NotGrpc => all(Fails(UNKNOWN, 0, "unexpected content-type \"text/html\"")),
        // No grpc-status: the HTTP status mapped as grpc-go maps it (the spec's
        // http-grpc-status-mapping.md; tonic's `infer_grpc_status` alike).
        M::Http503 => all(Fails(
            UNAVAILABLE,
            0,
            "status code received from server: 503",
        )),
        M::Http404 => all(Fails(
            UNIMPLEMENTED,
            0,
            "status code received from server: 404",
        )),
        // A proxy's 502 page: UNAVAILABLE from the head, as grpc-go (tonic alone would read the
        // HTML body as frames first: INTERNAL, and a retry on UNAVAILABLE would miss it).
        M::ProxyError => all(Fails(UNAVAILABLE, 0, "502 (Bad Gateway)")),
        // Trailers (grpc-status 0) while 90 announced bytes are missing: INTERNAL, as grpc-go.
        // tonic alone ends the message stream at the trailers without looking at what it has
        // buffered (a stream would end cleanly, the partial message lost without a word); the
        // runtime follows the framing of the body (src/grpc/response.rs, `FrameCheck`).
        M::Truncated => all(Fails(
            INTERNAL,
            0,
            "trailers in the middle of a message (90 bytes missing)",
        )),
        // The same without trailers: the body ends mid-message (tonic and grpc-go: INTERNAL).
        M::TruncatedEof => all(Fails(INTERNAL, 0, "Unexpected EOF decoding stream")),
        // gRPC compression spec: MUST fail with INTERNAL (tonic and grpc-go alike).
        M::CompressedNoEncoding => all(Fails(INTERNAL, 0, "no grpc-encoding")),
        // Over the 4 MiB receive limit: RESOURCE_EXHAUSTED as in grpc-go (tonic says
        // OUT_OF_RANGE; `local_status` maps it). Nothing of the 2 GiB is waited for.
        M::Huge => all(Fails(
            RESOURCE_EXHAUSTED,
            0,
            "received message larger than max",
        )),
        // The body ends without grpc-status: UNKNOWN (tonic; grpc-go since grpc-go#8702).
        // Streams have their message first.
        M::NoTrailers => [
            Fails(UNKNOWN, 0, "missing grpc-status trailer"),
            Fails(UNKNOWN, 1, "missing grpc-status trailer"),
            Fails(UNKNOWN, 1, "missing grpc-status trailer"),
        ],
        // A unary call with two messages: grpc-go fails it (INTERNAL "cardinality
        // violation"); tonic's `trailers()` drops the second unseen, and so did this runtime
        // (ok == true) until `unary` looked for it. Two messages are fine on streams.
        M::TwoMessages => [
            Fails(INTERNAL, 0, "cardinality violation"),
            Succeeds(2),
            Succeeds(2),
        ],
        // grpc-status 0 without a message: INTERNAL for a unary call (grpc-go: "cardinality
        // violation: received no response message"); an empty stream is a stream.
        M::NoMessage => [
            Fails(INTERNAL, 0, "missing response message"),
            Succeeds(0),
            Succeeds(0),
        ],
        // grpc-status "abc": tonic parses it as UNKNOWN, as statuscodes.md says for "error
        // parsing returned status"; grpc-go says INTERNAL ("malformed grpc-status"). We follow
        // tonic.
        M::BadStatus => [
            Fails(UNKNOWN, 0, ""),
            Fails(UNKNOWN, 1, ""),
            Fails(UNKNOWN, 1, ""),
        ],
        // RST_STREAM INTERNAL_ERROR: INTERNAL (PROTOCOL-HTTP2.md's mapping, grpc-go alike;
        // tonic maps it only when built with its `server` feature, so the runtime does it,
        // `transport_is_unavailable`).
        M::Reset => all(Fails(
            INTERNAL,
            0,
            "stream terminated by RST_STREAM with error code: INTERNAL_ERROR",
        )),
        // The connection goes mid-call (after a message): UNAVAILABLE, as grpc-go says for a
        // transport that closed (tonic says UNKNOWN; `transport_is_unavailable` maps it).
        M::GoAway | M::Hangup => [
            Fails(UNAVAILABLE, 0, "error reading a body from connection"),
            Fails(UNAVAILABLE, 1, "error reading a body from connection"),
            Fails(UNAVAILABLE, 1, "error reading a body from connection"),
        ],
    }
}

/// The calls' deadline is 3 s: a prompt error comes in well under a second (GoAway and Hangup
/// wait 20 ms on the server's side).
const PROMPT: f64 = 1.0;

fn check(out: &str, want: Want, what: &str) {
    let f: Vec<&str> = out.trim_end().splitn(5, '|').collect();
    let [ok, code, msgs, secs, res] = f[..] else {
        panic!("{what}: bad output {out:?}");
    };
    let msgs: usize = msgs.parse().unwrap();
    let secs: f64 = secs.parse().unwrap();
    assert!(secs < PROMPT, "{what}: took {secs} s (deadline 3 s): {out}");
    match want {
        Fails(c, n, text) => {
            assert_eq!(ok, "false", "{what}: must fail: {out}");
            assert_eq!(code, c.to_string(), "{what}: {out}");
            assert_eq!(msgs, n, "{what}: messages before the error: {out}");
            let prefix = format!("{}: ", code_name(c));
            let text_ok = res.starts_with(&prefix) || res == prefix.trim_end();
            assert!(text_ok, "{what}: error string {res:?}");
            assert!(res.contains(text), "{what}: {res:?} lacks {text:?}");
        }
        Succeeds(n) => {
            assert_eq!(ok, "true", "{what}: {out}");
            assert_eq!(msgs, n, "{what}: messages: {out}");
        }
    }
}

#[test]
fn misbehaving_servers_become_status_errors() {
    let rogue = RogueServer::start();
    let good = GrpcServer::start(GrpcServerOpts::default());
    let n = nginx("misbehave", 1, SERVER_CONF);
    let pid = n.get_ok("/pid");
    let still = format!("/good?t={}", good.addr());
    assert_eq!(n.get_ok(&still), "Hello still\n");
    let kinds = ["unary", "server", "bidi"];

    let mut cases: Vec<(String, String, [Want; 3])> = Misbehaviour::ALL
        .iter()
        .map(|&m| {
            (
                m.to_string(),
                format!("t={}&m={}", rogue.addr(), m.path()),
                expected(m),
            )
        })
        .collect();
    // Not HTTP/2 at all: h2 reads the HTTP/1.1 answer as a frame too large, a connection
    // error. Depending on whether the request was on the wire by then, tonic said INTERNAL
    // ("h2 protocol error", the FRAME_SIZE_ERROR) or CANCELLED ("operation was canceled");
    // `transport_is_unavailable` makes both UNAVAILABLE, as grpc-go says for a connection that
    // failed ("error reading server preface").
    cases.push((
        "Garbage".into(),
        format!("t={}&m=/rogue.Rogue/Garbage", rogue.garbage_addr()),
        [Fails(UNAVAILABLE, 0, ""); 3],
    ));

    for (name, query, want) in &cases {
        for (kind, want) in kinds.iter().zip(want) {
            let what = format!("{name} {kind}");
            let out = n.get_ok(&format!("/call?kind={kind}&{query}"));
            eprintln!("{what}: {}", out.trim_end());
            check(&out, *want, &what);
            // After each: the same worker, serving real calls, its arena idle.
            assert_eq!(n.get_ok("/pid"), pid, "{what}: the worker died");
            assert_eq!(n.get_ok(&still), "Hello still\n", "{what}");
            assert_eq!(n.get_ok("/usage"), format!("{IDLE}\n"), "{what}");
        }
    }
    // GoAway and Hangup each took the connection down (3 calls each), and the client made a
    // new one for the next call.
    let out = n.get_ok(&format!(
        "/call?kind=server&t={}&m={}",
        rogue.addr(),
        Misbehaviour::TwoMessages.path()
    ));
    check(&out, Succeeds(2), "TwoMessages server, last");
    assert!(
        rogue.connections() >= 7,
        "{} connections",
        rogue.connections()
    );
    assert_eq!(n.worker_pids().len(), 1);
    n.assert_log_clean(&[]);
}
