//! The harness against the real nginx, with pure-Lua locations only (no host library needed).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use testkit::{get_many, procfs, NginxBuilder, UdsEcho};

const HELLO: &str = r#"
location = /hi {
    content_by_lua_block { ngx.say("hi") }
}
location = /echo {
    content_by_lua_block {
        ngx.req.read_body()
        ngx.print(ngx.req.get_body_data() or "")
    }
}
location = /arg {
    content_by_lua_block { ngx.print(ngx.var.arg_n) }
}
location = /pid {
    content_by_lua_block { ngx.print(ngx.worker.pid()) }
}
"#;

fn panic_text(err: Box<dyn std::any::Any + Send>) -> String {
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn serves_lua_and_quits_cleanly() {
    let mut nginx = NginxBuilder::new("harness-basic")
        .server_conf(HELLO)
        .start();
    let r = nginx.get("/hi");
    assert_eq!((r.status, r.text().as_str()), (200, "hi\n"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = nginx.post("/echo", &big);
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "echoed {} of {} bytes",
        r.body.len(),
        big.len()
    );
    assert_eq!(nginx.get("/nope").status, 404);
    assert!(nginx.url("/x").starts_with("http://127.0.0.1:"));
    assert!(nginx.prefix().join("conf/nginx.conf").exists());

    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 1);
    assert_eq!(nginx.get("/pid").text(), workers[0].to_string());
    assert!(nginx.rss_kb(workers[0]).unwrap() > 0);
    assert!(procfs::alive(nginx.master_pid()));

    let status = nginx.quit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(nginx.wait_pids_gone(&workers, Duration::from_secs(1)));
    // The 404 logs an [error] for the missing static file.
    nginx.assert_log_clean(&["html/nope\" failed"]);
    assert!(nginx.error_log().contains("exited with code 0"));
}

#[test]
fn reload_replaces_workers() {
    let mut nginx = NginxBuilder::new("harness-reload")
        .workers(2)
        .main_conf("worker_shutdown_timeout 3s;")
        .server_conf(HELLO)
        .start();
    let old = nginx.worker_pids();
    assert_eq!(old.len(), 2);
    nginx.reload();
    let new = nginx.worker_pids();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} {new:?}");
    assert!(nginx.wait_pids_gone(&old, Duration::from_secs(10)));
    assert!(nginx.shutting_down_pids().is_empty());
    assert_eq!(nginx.get("/hi").text(), "hi\n");
    let pid: i32 = nginx.get("/pid").text().parse().unwrap();
    assert!(new.contains(&pid));
    let status = nginx.stop();
    assert!(status.success(), "{status}");
    nginx.assert_log_clean(&[]);
}

#[test]
fn get_many_keeps_order() {
    let nginx = NginxBuilder::new("harness-many").server_conf(HELLO).start();
    let urls: Vec<String> = (0..300)
        .map(|i| nginx.url(&format!("/arg?n={i}")))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(get_many(urls, 32));
    assert_eq!(got.len(), 300);
    for (i, (status, body)) in got.iter().enumerate() {
        assert_eq!(*status, 200);
        assert_eq!(body, i.to_string().as_bytes());
    }
    // A refused connection is reported, not hidden.
    let dead = vec![format!("http://127.0.0.1:{}/", 1)];
    let got = testkit::get_many_blocking(dead, 4);
    assert_eq!(got[0].0, 0);
    nginx.assert_log_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_works_inside_async_tests() {
    let nginx = NginxBuilder::new("harness-async")
        .server_conf(HELLO)
        .start();
    assert_eq!(nginx.get("/hi").text(), "hi\n");
    let got = get_many(vec![nginx.url("/hi"); 3], 2).await;
    assert!(got.iter().all(|(s, b)| *s == 200 && b == b"hi\n"));
}

#[test]
fn env_http_conf_and_error_lines() {
    let nginx = NginxBuilder::new("harness-env")
        .env("TESTKIT_FOO", "bar")
        .http_conf("lua_shared_dict extra 1m;")
        .server_conf(
            r#"
location = /env {
    content_by_lua_block { ngx.print(os.getenv("TESTKIT_FOO"), " ", ngx.shared.extra ~= nil) }
}
location = /err {
    content_by_lua_block { ngx.log(ngx.ERR, "expected-boom"); ngx.say("logged") }
}
location = /lib {
    content_by_lua_block { ngx.print(os.getenv("LD_LIBRARY_PATH")) }
}
"#,
        )
        .start();
    assert_eq!(nginx.get("/env").text(), "bar true");
    assert_eq!(
        nginx.get("/lib").text(),
        testkit::lib_dir().display().to_string()
    );
    assert_eq!(nginx.get("/err").text(), "logged\n");
    nginx.assert_log_clean(&["expected-boom"]);
    let err = catch_unwind(AssertUnwindSafe(|| nginx.assert_log_clean(&[]))).unwrap_err();
    assert!(panic_text(err).contains("expected-boom"));
}

#[test]
fn bad_config_panics_with_the_log() {
    let err = catch_unwind(|| {
        NginxBuilder::new("harness-bad")
            .server_conf("no_such_directive on;")
            .start()
    })
    .err()
    .expect("start must fail");
    let text = panic_text(err);
    assert!(text.contains("unknown directive"), "{text}");
}

#[test]
fn uds_echo_roundtrip() {
    let dir = testkit::repo_root().join("target/t-nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join(format!("uds-echo-{}.sock", std::process::id()));
    std::fs::write(&sock, b"stale").unwrap();
    let echo = UdsEcho::start_bin(Path::new(env!("CARGO_BIN_EXE_uds-echo")), &sock);
    for size in [0usize, 1, 512, 100_000, 1_000_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        assert_eq!(echo.roundtrip(&payload).unwrap(), payload);
    }
    let pid = echo.pid();
    drop(echo);
    assert!(!sock.exists());
    assert!(procfs::wait_pids_gone(&[pid], Duration::from_secs(2)));
}
