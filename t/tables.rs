//! Lua tables in, Lua tables out: the seed article's examples (Greeter, and RouteGuide's four
//! methods) with `.proto` files compiled at run time by `grpc.load_proto`, against the real
//! test server; replies printed with `cjson.encode` and checked here as JSON. Plus field-path
//! errors, pass-through strings on the same methods, and a user codec.

use serde_json::{json, Value};
use testkit::{GrpcServer, GrpcServerOpts};

mod common;
use common::{nginx_with, IDLE};

/// Lua for the init_by_lua block: the protos compiled once in the master, inherited by the
/// workers.
fn conf() -> String {
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/proto");
    format!(
        r#"
        local grpc = require "resty.grpc_zc"
        assert(grpc.load_proto({{ "routeguide.proto", "helloworld.proto" }},
                               {{ import_paths = {{ "{protos}" }} }}))
        "#
    )
}

const LOCATIONS: &str = r#"
    location /seed {
        content_by_lua_block {
            local cjson = require "cjson"
            local grpc = require "resty.grpc_zc"
            local ok, conn = grpc.connect(ngx.var.arg_t)
            assert(ok, conn)

            local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "world" })
            assert(ok, res)
            ngx.say(cjson.encode(res))

            local ok, res = conn:unary("/routeguide.RouteGuide/GetFeature",
                                       { latitude = 400000000, longitude = -750000000 })
            assert(ok, res)
            ngx.say(cjson.encode(res))

            -- ListFeatures, as the article writes it: new_stream, send, close_send, recv
            local ok, stream = conn:new_stream("/routeguide.RouteGuide/ListFeatures")
            assert(ok, stream)
            assert(stream:send({ lo = { latitude = 400000000, longitude = -750000000 },
                                 hi = { latitude = 402600000, longitude = -747400000 } }))
            assert(stream:close_send())
            while true do
                local ok, res = stream:recv()
                assert(ok, res)
                if not res then break end
                ngx.say(cjson.encode(res))
            end

            -- RecordRoute
            local ok, stream = conn:client_stream("/routeguide.RouteGuide/RecordRoute")
            assert(ok, stream)
            for _, p in ipairs({ { latitude = 400000000, longitude = -750000000 },
                                 { latitude = 400007919, longitude = -748725271 },
                                 { latitude = 410000000, longitude = -740000000 } }) do
                assert(stream:send(p))
            end
            local ok, res = stream:finish()
            assert(ok, res)
            ngx.say(cjson.encode(res))

            -- RouteChat
            local ok, stream = conn:new_stream("/routeguide.RouteGuide/RouteChat")
            assert(ok, stream)
            local here = { latitude = 1, longitude = 2 }
            for i, m in ipairs({ "first", "second" }) do
                assert(stream:send({ location = here, message = m }))
                for j = 1, i do
                    local ok, note = stream:recv()
                    assert(ok and note, note)
                    ngx.say(cjson.encode(note))
                end
            end
            stream:close()
        }
    }

    location /errors {
        content_by_lua_block {
            local grpc = require "resty.grpc_zc"
            local ok, conn = grpc.connect(ngx.var.arg_t)
            -- bad input names the field; nothing is sent
            local ok, err, st = conn:unary("/routeguide.RouteGuide/GetFeature",
                                           { latitude = "north", longitude = 1 })
            ngx.say(tostring(ok), " ", err, " ", st.code)
            local ok, err = conn:server_stream("/routeguide.RouteGuide/ListFeatures",
                                               { lo = { latitude = true } })
            ngx.say(tostring(ok), " ", err)
            -- a method whose types were never loaded
            local ok, err = conn:unary("/zctest.Test/Unary", { payload = "x" })
            ngx.say(tostring(ok), " ", err)
            -- raw strings still pass through on a loaded method, both ways
            local ok, res = conn:unary("/routeguide.RouteGuide/GetFeature", "")
            assert(ok and type(res) == "string", type(res))
            local f = grpc.pb.decode(grpc.pb.message("routeguide.Feature"), res)
            ngx.say("raw ", f.location == nil and "no location" or "location", " ", #res)
            local ok, s = conn:new_stream("/routeguide.RouteGuide/RouteChat", { raw = true })
            assert(s:send(grpc.pb.encode(grpc.pb.message("routeguide.RouteNote"),
                                         { message = "raw" })))
            local ok, note = s:recv()
            ngx.say("raw stream ", type(note))
            s:close()
            ngx.say(usage())
        }
    }

    location /reflection {
        content_by_lua_block {
            local cjson = require "cjson"
            local grpc = require "resty.grpc_zc"
            grpc.pb.clear()   -- forget the types load_proto registered
            local ok, conn = grpc.connect(ngx.var.arg_t)
            local ok, err = conn:unary("/zctest.Test/Unary", { payload = "x" })
            ngx.say(tostring(ok))
            assert(grpc.load_reflection(conn, { "zctest.Test", "routeguide.RouteGuide" }))
            local ok, res = conn:unary("/zctest.Test/Unary", { payload = "by reflection" })
            assert(ok, res)
            ngx.say(res.payload)
            local ok, f = conn:unary("/routeguide.RouteGuide/GetFeature",
                                     { latitude = 400000000, longitude = -750000000 })
            assert(ok, f)
            ngx.say(f.name)
            local ok, err = grpc.load_reflection(conn, "no.Such")
            ngx.say(tostring(ok), " ", err)
            ngx.say(usage())
        }
    }

    location /codec {
        content_by_lua_block {
            local grpc = require "resty.grpc_zc"
            local pb = grpc.pb
            local calls = {}
            -- a user codec (here our own pb through its string API, as lua-protobuf would be)
            grpc.set_codec({
                encode = function(name, t)
                    calls[#calls + 1] = "encode " .. name
                    return pb.encode(pb.message(name), t)
                end,
                decode = function(name, s)
                    calls[#calls + 1] = "decode " .. name
                    return pb.decode(pb.message(name), s)
                end,
            })
            local ok, conn = grpc.connect(ngx.var.arg_t)
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "codec" })
            grpc.set_codec(nil)
            assert(ok, res)
            ngx.say(res.message, " ", table.concat(calls, ", "))
            local ok, err = pcall(grpc.set_codec, { encode = 1 })
            ngx.say(tostring(ok))
        }
    }
"#;

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn seed_examples_with_tables() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let n = nginx_with("grpc-tables", 1, &conf(), LOCATIONS);
    let t = server.addr();
    let got = lines(&n.get_ok(&format!("/seed?t={t}")));
    let point = |lat: i64, lon: i64| json!({ "latitude": lat, "longitude": lon });
    let mut want = vec![
        json!({ "message": "Hello world" }),
        json!({ "name": "Feature 0, row 0, column 0", "location": point(400000000, -750000000) }),
    ];
    // ListFeatures: the features of rows 0-1, columns 0-2 (see testkit's routeguide.rs).
    for i in [0i64, 1, 2, 8, 9, 10] {
        let (row, col) = (i / 8, i % 8);
        let lat = 400_000_000 + row * 2_500_000 + (i * 7_919) % 40_000;
        let lon = -750_000_000 + col * 1_250_000 + (i * 104_729) % 40_000;
        let name = if i % 5 == 4 {
            String::new()
        } else {
            format!("Feature {i}, row {row}, column {col}")
        };
        // proto3: an empty string is the default and is not in the decoded table.
        let mut f = json!({ "location": point(lat, lon) });
        if !name.is_empty() {
            f["name"] = json!(name);
        }
        want.push(f);
    }
    assert_eq!(&got[..2], &want[..2]);
    assert_eq!(&got[2..8], &want[2..8], "ListFeatures");
    let summary = &got[8];
    assert_eq!(summary["point_count"], json!(3));
    assert_eq!(summary["feature_count"], json!(2));
    assert!(summary["distance"].as_i64().unwrap() > 100_000, "{summary}");
    let note = |m: &str| json!({ "location": point(1, 2), "message": m });
    assert_eq!(&got[9..], &[note("first"), note("first"), note("second")]);
    n.assert_log_clean(&[]);
}

#[test]
fn types_from_server_reflection() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let n = nginx_with("grpc-reflection", 1, &conf(), LOCATIONS);
    let body = n.get_ok(&format!("/reflection?t={}", server.addr()));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[..3],
        ["false", "by reflection", "Feature 0, row 0, column 0"]
    );
    assert!(
        lines[3].starts_with("nil ") && lines[3].contains("no.Such"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], IDLE);
    n.assert_log_clean(&[]);
}

#[test]
fn errors_pass_through_and_user_codecs() {
    let server = GrpcServer::start(GrpcServerOpts::default());
    let n = nginx_with("grpc-tables-errors", 1, &conf(), LOCATIONS);
    let t = server.addr();
    assert_eq!(
        n.get_ok(&format!("/errors?t={t}")),
        format!(
            "false INTERNAL: error while marshaling: routeguide.Point.latitude: number expected, got string 13\n\
             false INTERNAL: error while marshaling: routeguide.Point.latitude: number expected, got boolean\n\
             false INTERNAL: no message types for /zctest.Test/Unary (load them with grpc.load_proto)\n\
             raw location 2\n\
             raw stream string\n\
             {IDLE}\n"
        )
    );
    assert_eq!(
        n.get_ok(&format!("/codec?t={t}")),
        "Hello codec encode helloworld.HelloRequest, decode helloworld.HelloReply\nfalse\n"
    );
    n.assert_log_clean(&[]);
}
