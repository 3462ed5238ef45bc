//! The Node.js loader (`libffi_nodejs.so`) on a real nginx with a real Node.js.

use testkit::{Nginx, NginxBuilder};

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

fn runtimes_dir() -> String {
    testkit::repo_root()
        .join("t/runtimes/nodejs")
        .display()
        .to_string()
}

fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    NginxBuilder::new(name)
        .workers(workers)
        .env("NODE_PATH", &runtimes_dir())
        .http_conf(&format!(
            "init_by_lua_block {{ {} }}\n{INIT}",
            testkit::LUA_PAYLOAD
        ))
        .server_conf(server)
        .start()
}

#[test]
fn smoke() {
    let n = nginx(
        "node-smoke",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local rt, rc = ngx.load_ffi("ffi_nodejs", "echo,init")
                if not rt then return ngx.say("load failed: ", rc) end
                local ok, res = rt:echo("hello")
                ngx.say(tostring(ok), " ", tostring(res))
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "true hello\n");
    eprintln!("{}", n.error_log());
    n.assert_log_clean(&[]);
}
