//! The Java loader (`libffi_java.so`) on a real nginx with Debian's JVM: the test runtimes of
//! `t/runtimes/java/rt/` (compiled here with Debian's javac against the loader's
//! `resty.ffi` sources) through `ngx.load_ffi("ffi_java", "rt.Class,method[,cfg]")`.
//!
//! Every test starts its own nginx (one JVM per worker) and checks that error.log has no
//! `[alert]`, `[crit]`, `[emerg]` and no unexpected `[error]`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{by_id, Nginx, NginxBuilder};

const JAVAC: &str = "/usr/lib/jvm/default-java/bin/javac";
/// Keeps each worker's JVM small: tests run two nginx instances with up to two JVMs each.
const JAVA_OPTS: &str = "-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData";

const INIT: &str = r#"init_worker_by_lua_block { require "resty_ffi" }"#;

/// `target/t-java/<pid>`: this run's compiled classes and scratch files.
fn scratch() -> PathBuf {
    testkit::repo_root()
        .join("target/t-java")
        .join(std::process::id().to_string())
}

/// Compiles `sources` into `out` with Debian's javac, against the loader's `resty.ffi` sources
/// (not copied into `out`: the loader defines those classes itself).
fn javac(out: &Path, sources: &[PathBuf]) {
    fs::create_dir_all(out).expect("creating the class directory");
    let api = testkit::repo_root().join("loaders/java/java");
    let r = Command::new(JAVAC)
        .args(["--release", "11", "-implicit:none", "-encoding", "UTF-8"])
        .arg("-sourcepath")
        .arg(&api)
        .arg("-d")
        .arg(out)
        .args(sources)
        .output()
        .expect("running javac");
    assert!(
        r.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The test runtimes, compiled once per test process.
fn rt_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = testkit::repo_root().join("t/runtimes/java/rt");
        let mut sources: Vec<PathBuf> = fs::read_dir(&src)
            .expect("t/runtimes/java/rt")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "java"))
            .collect();
        sources.sort();
        let out = scratch().join("classes");
        let _ = fs::remove_dir_all(&out);
        javac(&out, &sources);
        out
    })
}

/// Lua for `init_by_lua`: `payload(n, seed)` and `call(cfg, req)` (loads `ffi_java` with cfg).
fn helpers() -> String {
    format!(
        "init_by_lua_block {{ {}\n function java(cfg, opts) return assert(ngx.load_ffi(\"ffi_java\", cfg, opts)) end }}",
        testkit::LUA_PAYLOAD
    )
}

fn builder(name: &str, workers: usize, classpath: &str) -> NginxBuilder {
    NginxBuilder::new(name)
        .workers(workers)
        .env("CLASSPATH", classpath)
        .env("JAVA_OPTS", JAVA_OPTS)
        .http_conf(&format!("{}\n{INIT}", helpers()))
}

fn nginx(name: &str, workers: usize, server: &str) -> Nginx {
    builder(name, workers, &rt_classes().to_string_lossy())
        .server_conf(server)
        .start()
}

#[test]
fn echo_is_binary_safe() {
    let n = nginx(
        "java-binary",
        1,
        r#"
        location /sizes {
            content_by_lua_block {
                for _, cfg in ipairs({"rt.Echo,init", "rt.Echo,async", "rt.Raw,init"}) do
                    local rt = java(cfg)
                    for _, size in ipairs({0, 1, 2, 511, 4096, 65536, 1048576, 16 * 1048576}) do
                        local p = payload(size, size % 251)
                        local ok, res, err = rt:echo(p)
                        assert(ok == true and err == nil, cfg .. ": call failed at " .. size)
                        assert(type(res) == "string" and res == p,
                               cfg .. ": mismatch at size " .. size)
                    end
                    local ok, res, err = rt:echo(nil)
                    assert(ok == true and res == nil and err == nil, cfg .. ": nil request")
                    local ok, res = rt:echo("")
                    assert(ok == true and res == "", cfg .. ": empty request")
                    local ok, res = rt:echo("a\0b\0")
                    assert(ok == true and res == "a\0b\0", cfg .. ": NUL bytes")
                end
                ngx.say("ok")
            }
        }
        location /body {
            client_max_body_size 32m;
            client_body_buffer_size 32m;
            content_by_lua_block {
                ngx.req.read_body()
                local ok, res = java("rt.Echo,init"):echo(ngx.req.get_body_data())
                assert(ok)
                ngx.print(res)
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/sizes"), "ok\n");
    by_id::assert_bodies_echo(&n, "/body");
    n.assert_log_clean(&[]);
}

#[test]
fn article_style_runtime_with_the_articles_lua_lines() {
    // The article's lines, with the Java loader and a runtime written in the article's style
    // (a daemon thread polling the queue, answering with the request).
    let n = nginx(
        "java-article",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local demo = ngx.load_ffi("ffi_java", "rt.Raw?,init", {is_global = true, unpin = true})
                local ok, res = demo:echo("hello")
                assert(ok)
                assert(res == "hello")
                demo:__unload()
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "ok\n");
    let (found, log) = n.wait_log_contains("rt.Raw: queue finished", Duration::from_secs(5));
    assert!(found, "the raw poll loop saw the finished queue:\n{log}");
    // Loaded again after the unload (and the dlclose of unpin): the pinned loader and the
    // worker's JVM still serve.
    assert_eq!(n.get_ok("/t"), "ok\n");
    n.assert_log_clean(&[]);
}

#[test]
fn contract_return_values() {
    let n = nginx(
        "java-contract",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local a = java("rt.Echo,init")
                assert(java("rt.Echo,init") == a, "cached by lib and cfg")
                local b = java("rt.Echo,init,tag=b")
                assert(b ~= a, "cfg is part of the key")

                -- rc ~= 0: false, rc, rsp
                local e = java("rt.Echo,errors")
                local ok, rc, rsp = e:call("reply:7:seven")
                assert(ok == false and rc == 7 and rsp == "seven", "rc path")
                local ok, rc, rsp = e:call("reply:-3:")
                assert(ok == false and rc == -3 and rsp == "", "negative rc")
                -- a nil response
                local ok, res, err = e:call("nil")
                assert(ok == true and res == nil and err == nil, "nil response")

                -- the init method's own non-zero result: nil, rc
                local o, rc = ngx.load_ffi("ffi_java", "rt.Bad,returns7")
                assert(o == nil and rc == 7, "init result " .. tostring(rc))

                b:__unload()
                local ok, err = b:echo("x")
                assert(ok == false and err == "task queue is finished", tostring(err))
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "ok\n");
    let (found, log) = n.wait_log_contains("rt.Echo: finished init tag=b", Duration::from_secs(5));
    assert!(found, "the unloaded runtime's server finished:\n{log}");
    n.assert_log_clean(&[]);
}

/// The Lua location used by the load and lifecycle tests: echoes a payload derived from `id`
/// through `rt.Echo,<m>` (`m` = `init` unless given).
const ECHO_BY_ID: &str = r#"
location /id {
    content_by_lua_block {
        local id = tonumber(ngx.var.arg_id)
        local rt = java("rt.Echo," .. (ngx.var.arg_m or "init"))
        local p = payload(id % 3000, id % 256)
        local ok, res = rt:echo(p)
        if not ok then
            ngx.status = 500
            ngx.say("call failed: ", tostring(res))
            return
        end
        ngx.print(res)
    }
}
location /pid {
    content_by_lua_block { ngx.say(ngx.worker.pid()) }
}
"#;

#[test]
fn ten_thousand_calls_200_concurrent_2_workers() {
    let n = nginx("java-load", 2, ECHO_BY_ID);
    let urls: Vec<String> = (0..10_000)
        .map(|i| {
            let m = if i % 2 == 0 { "init" } else { "async" };
            n.url(&format!("/id?id={i}&m={m}"))
        })
        .collect();
    let replies = testkit::get_all_ok(urls, 200);
    assert_eq!(replies.len(), 10_000);
    for (i, body) in replies.iter().enumerate() {
        assert!(*body == by_id::payload_of(i), "reply {i} differs");
    }
    n.assert_log_clean(&[]);
}

#[test]
fn timeout_and_aborted_requests_are_seen_as_cancelled() {
    let n = nginx(
        "java-cancel",
        1,
        r#"
        lua_check_client_abort on;
        location /timeout {
            content_by_lua_block {
                local slow = java("rt.Echo,slow,300")
                ngx.update_time()
                local t0 = ngx.now()
                local ok, err = slow:echo("late", {timeout = 50})
                ngx.update_time()
                local took = ngx.now() - t0
                assert(ok == false and err == "timeout", tostring(err))
                assert(took >= 0.045 and took < 0.25, "timeout took " .. took)
                local ok, res = slow:echo("on time")
                assert(ok and res == "on time")
                ngx.say("ok")
            }
        }
        location /slow {
            content_by_lua_block {
                local ok, res = java("rt.Echo,slow,2000"):echo("never read")
                ngx.say(res)
            }
        }
        location /gc {
            content_by_lua_block {
                collectgarbage()
                collectgarbage()
                ngx.say(ngx.worker.pid())
            }
        }
        "#,
    );
    let pid = n.get_ok("/gc");
    assert_eq!(n.get_ok("/timeout"), "ok\n");
    let (found, log) = n.wait_log_contains("rt.Echo: task cancelled", Duration::from_secs(5));
    assert!(found, "the helper saw the timed-out call cancelled:\n{log}");
    // Clients that hang up mid-call; their calls are released (and so cancelled) when the Lua
    // GC collects the aborted requests' coroutines.
    n.hang_up("/slow", 20, Duration::from_millis(50));
    assert_eq!(n.get_ok("/gc"), pid, "same worker");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut cancelled = 0;
    while Instant::now() < deadline {
        cancelled = n.error_log().matches("rt.Echo: task cancelled").count();
        if cancelled >= 21 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cancelled >= 21,
        "aborted calls were reported cancelled to the helper ({cancelled}):\n{}",
        n.error_log()
    );
    assert_eq!(n.get_ok("/gc"), pid, "the worker survived");
    n.assert_log_clean(&[]);
}

/// Starts `count` slow calls (`rt.Echo,slow,<ms>`) in background threads.
fn slow_calls(n: &Nginx, count: usize, ms: u64) -> Vec<by_id::Call> {
    by_id::start(n, count, &format!("m=slow,{ms}"))
}

/// Waits until every worker answered a call, so each has its JVM running.
fn warm_up(n: &Nginx, m: &str) {
    let urls: Vec<String> = (0..40)
        .map(|i| n.url(&format!("/id?id={i}&m={m}")))
        .collect();
    testkit::get_all_ok(urls, 8);
}

#[test]
fn reload_with_calls_in_flight() {
    let mut n = nginx("java-reload", 2, ECHO_BY_ID);
    warm_up(&n, "slow,1");
    let old = n.worker_pids();
    let calls = slow_calls(&n, 40, 400);
    thread::sleep(Duration::from_millis(150));
    n.reload();
    by_id::assert_answered(calls, "in-flight call survives the reload");
    assert!(
        n.wait_pids_gone(&old, Duration::from_secs(5)),
        "old workers exit"
    );
    assert!(
        n.get("/id?id=7").body == by_id::payload_of(7),
        "new workers serve"
    );
    n.assert_log_clean(&[]);
}

#[test]
fn quit_with_calls_in_flight() {
    let mut n = nginx("java-quit", 2, ECHO_BY_ID);
    warm_up(&n, "slow,1");
    let calls = slow_calls(&n, 40, 400);
    thread::sleep(Duration::from_millis(150));
    n.quit_within(Duration::from_secs(3));
    by_id::assert_answered(calls, "in-flight call completes before quit");
    n.assert_log_clean(&[]);
}

#[test]
fn quit_respects_worker_shutdown_timeout() {
    let mut n = builder("java-shutdown-timeout", 1, &rt_classes().to_string_lossy())
        .main_conf("worker_shutdown_timeout 1s;")
        .server_conf(ECHO_BY_ID)
        .start();
    warm_up(&n, "slow,1");
    let calls = slow_calls(&n, 10, 30_000);
    thread::sleep(Duration::from_millis(200));
    n.quit_within(Duration::from_secs(4));
    for c in calls {
        // Closed by nginx: an error or an incomplete reply, never a hang.
        let _ = c.join().unwrap();
    }
    n.assert_log_clean(&[]);
}

#[test]
fn failing_runtimes_return_nil_rc_and_log_why() {
    let n = nginx(
        "java-failing",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local cases = {
                    {"rt.Nope,init", 4},
                    {"rt.BadStatic,init", 4},
                    {"rt.Bad,missing", 5},
                    {"rt.Bad,notStatic", 5},
                    {"rt.Bad,wrongReturn", 5},
                    {"rt.Bad,initThrows", 6},
                    {"rt.Bad?,initThrows", 6},
                    {"no method", 2},
                    {"rt..Bad,init", 2},
                }
                for _, c in ipairs(cases) do
                    local o, rc = ngx.load_ffi("ffi_java", c[1])
                    assert(o == nil and rc == c[2],
                           c[1] .. ": expected nil, " .. c[2] .. ", got " .. tostring(o) .. ", "
                           .. tostring(rc))
                end
                -- the worker and its JVM keep serving
                local ok, res = java("rt.Echo,init"):echo("still here")
                assert(ok and res == "still here")
                ngx.say("ok")
            }
        }
        "#,
    );
    assert_eq!(n.get_ok("/t"), "ok\n");
    let log = n.error_log();
    for needle in [
        "rt.Nope,init: class rt.Nope not found",
        "rt.BadStatic,init: cannot load class rt.BadStatic: java.lang.ExceptionInInitializerError",
        "Caused by: java.lang.IllegalStateException: static initializer boom",
        "rt.Bad,missing: no method static int missing(String, long) in rt.Bad",
        "must be static and return int",
        "rt.Bad,initThrows: init threw: java.lang.IllegalStateException: boom in init",
        "at rt.Bad.initThrows(Bad.java:",
        "rt.Bad?,initThrows: init threw",
        "bad cfg \"no method\"",
        "bad cfg \"rt..Bad,init\"",
    ] {
        assert!(log.contains(needle), "error.log lacks {needle:?}:\n{log}");
    }
    n.assert_log_clean(&["resty_ffi_java: "]);
}

#[test]
fn a_jvm_that_cannot_start_leaves_the_worker_serving() {
    let location = r#"
        location /t {
            content_by_lua_block {
                for i = 1, 2 do
                    local o, rc = ngx.load_ffi("ffi_java", "rt.Echo,init")
                    assert(o == nil and rc == 3, "expected nil, 3, got " .. tostring(rc))
                end
                local echo = assert(ngx.load_ffi("resty_ffi_echo"))
                local ok, res = echo:echo("served")
                ngx.say(res, " ", ngx.worker.pid())
            }
        }
    "#;
    let classpath = rt_classes().to_string_lossy().into_owned();
    // No libjvm where JAVA_HOME points; an option the JVM refuses; a heap the JVM cannot make
    // (HotSpot ends the process for that one: the abort hook keeps the worker).
    for (name, key, value, reason) in [
        (
            "java-nojvm-home",
            "JAVA_HOME",
            "/nonexistent",
            "cannot load /nonexistent/lib/server/libjvm.so",
        ),
        (
            "java-nojvm-opt",
            "JAVA_OPTS",
            "-XX:+NoSuchOptionAnywhere",
            "JNI_CreateJavaVM failed (JNI_EINVAL: an invalid option; options [\"-Xrs\", \"-Djava.\
             class.path=",
        ),
        (
            "java-nojvm-heap",
            "JAVA_OPTS",
            "-Xmx1k",
            "the JVM aborted while starting: Error occurred during initialization of VM; Too small \
             maximum heap",
        ),
    ] {
        let n = builder(name, 1, &classpath)
            .env(key, value)
            .server_conf(location)
            .start();
        let pid = n.worker_pids()[0];
        assert_eq!(n.get_ok("/t"), format!("served {pid}\n"), "{name}");
        assert_eq!(
            n.get_ok("/t"),
            format!("served {pid}\n"),
            "{name}: same worker"
        );
        let log = n.error_log();
        assert!(
            log.contains(reason),
            "{name}: error.log lacks {reason:?}:\n{log}"
        );
        if key == "JAVA_OPTS" && value.starts_with("-XX") {
            assert!(
                log.contains("\"-XX:+NoSuchOptionAnywhere\"]): Unrecognized VM option"),
                "{name}: the JVM's own message is in the reason:\n{log}"
            );
        }
        assert_eq!(
            log.matches("the JVM did not start").count(),
            4,
            "{name}: every load reports it:\n{log}"
        );
        n.assert_log_clean(&["resty_ffi_java: "]);
    }
}

#[test]
fn hot_reload_with_a_question_mark_picks_up_the_changed_class() {
    let dir = scratch().join("hot");
    let src = dir.join("src/hot");
    let classes = dir.join("classes");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&src).unwrap();
    let write_version = |v: &str| {
        let file = src.join("Hot.java");
        fs::write(
            &file,
            format!(
                "package hot;\n\
                 import resty.ffi.Server;\n\
                 public final class Hot {{\n\
                 \x20   public static int init(String cfg, long tq) {{\n\
                 \x20       Server.serve(tq, (req, call) -> (\"{v}:\" + new String(req)).getBytes());\n\
                 \x20       return 0;\n\
                 \x20   }}\n\
                 }}\n"
            ),
        )
        .unwrap();
        javac(&classes, &[file]);
    };
    write_version("v1");
    let classpath = format!("{}:{}", rt_classes().display(), classes.display());
    let n = builder("java-hot", 1, &classpath)
        .server_conf(
            r#"
            location /hot {
                content_by_lua_block {
                    local rt = java("hot.Hot?,init", {unpin = true})
                    local ok, res = rt:call("x")
                    assert(ok, tostring(res))
                    rt:__unload()
                    local plain = java("hot.Hot,init")
                    local ok, pres = plain:call("x")
                    ngx.say(res, " ", pres)
                }
            }
            "#,
        )
        .start();
    assert_eq!(n.get_ok("/hot"), "v1:x v1:x\n");
    write_version("v2");
    // `?` loads the changed class; the plain cfg (cached by nginx, its class by the JVM's
    // system class loader) keeps the old one.
    assert_eq!(n.get_ok("/hot"), "v2:x v1:x\n");
    write_version("v3");
    assert_eq!(n.get_ok("/hot"), "v3:x v1:x\n");
    n.assert_log_clean(&[]);
}

#[test]
fn helper_error_path() {
    let n = nginx(
        "java-errors",
        1,
        r#"
        location /t {
            content_by_lua_block {
                local e = java("rt.Echo,errors")
                local ok, rc, rsp = e:call("throw:bad input")
                assert(ok == false and rc == 1 and rsp == "bad input", tostring(rsp))
                local ok, rc, rsp = e:call("npe")
                assert(ok == false and rc == 1 and rsp:find("is null", 1, true), tostring(rsp))
                local ok, rc, rsp = e:call("reply:42:custom")
                assert(ok == false and rc == 42 and rsp == "custom")
                -- SIGSEGV-based null checks of JIT-compiled code, inside the worker
                local ok, res = e:call("npe-loop")
                assert(ok and res == "caught 100000", tostring(res))
                local a = java("rt.Echo,async")
                local ok, rc, rsp = a:call("fail:async failure")
                assert(ok == false and rc == 1 and rsp == "async failure", tostring(rsp))
                local ok, rc, rsp = a:call("throw")
                assert(ok == false and rc == 1 and rsp == "thrown before the future")
                local ok, res = a:call("fine")
                assert(ok and res == "fine")
                ngx.say("ok ", ngx.worker.pid())
            }
        }
        "#,
    );
    let pid = n.worker_pids()[0];
    assert_eq!(n.get_ok("/t"), format!("ok {pid}\n"));
    assert_eq!(n.get_ok("/t"), format!("ok {pid}\n"));
    n.assert_log_clean(&[]);
}

#[test]
fn nginx_keeps_its_signals() {
    let n = nginx("java-signals", 1, ECHO_BY_ID);
    warm_up(&n, "init");
    let pid = n.worker_pids()[0];
    // nginx ignores SIGHUP and SIGUSR2 in a worker and reopens its logs on SIGUSR1; a JVM that
    // took them would stop the worker (SIGHUP without -Xrs) or swallow them (SIGUSR2, HotSpot's
    // default suspend signal) without nginx's notice.
    for sig in [libc::SIGHUP, libc::SIGUSR2, libc::SIGUSR1] {
        assert!(testkit::procfs::signal(pid, sig));
        let name = match sig {
            libc::SIGHUP => "signal 1 (SIGHUP) received",
            libc::SIGUSR2 => "signal 12 (SIGUSR2) received",
            _ => "signal 10 (SIGUSR1) received",
        };
        let (found, log) =
            n.wait_log_contains(&format!("{pid}#{pid}: {name}"), Duration::from_secs(5));
        assert!(found, "nginx's handler took it:\n{log}");
    }
    assert!(n.get("/id?id=5").body == by_id::payload_of(5));
    assert_eq!(n.worker_pids(), vec![pid], "same worker");
    n.assert_log_clean(&[]);
}
