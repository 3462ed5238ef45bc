//! A real nginx (Debian's `/usr/sbin/nginx` with lua-nginx-module) on a private prefix.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{Client, Resp};
use crate::procfs;

/// The nginx binary.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";
/// Module directory of Debian's nginx.
pub const MODULES_DIR: &str = "/usr/lib/nginx/modules";

/// How long `start` and `reload` wait for nginx to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a port race is retried with a new port.
const START_ATTEMPTS: usize = 3;

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// Builds an nginx configuration and starts it; see the crate docs for the generated file.
#[derive(Debug, Clone)]
pub struct NginxBuilder {
    name: String,
    workers: usize,
    main_conf: String,
    http_conf: String,
    server_conf: String,
    env: Vec<(String, String)>,
    error_log_level: String,
    /// Another build to run instead of this tree's: its libraries and, when it has one, its
    /// `lua/` tree (`None`: [`crate::lib_dir`] and `<repo>/lua`).
    build_dir: Option<PathBuf>,
}

impl NginxBuilder {
    /// `name` names the prefix directory `target/t-nginx/<name>-<pid>-<n>`: use one name per
    /// test (letters, digits, `_` and `-`).
    pub fn new(name: &str) -> NginxBuilder {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "nginx instance name {name:?}: use letters, digits, '_' and '-'"
        );
        NginxBuilder {
            name: name.to_owned(),
            workers: 1,
            main_conf: String::new(),
            http_conf: String::new(),
            server_conf: String::new(),
            env: Vec::new(),
            error_log_level: "notice".to_owned(),
            build_dir: None,
        }
    }

    /// `worker_processes` (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        assert!(n >= 1, "at least one worker");
        self.workers = n;
        self
    }

    /// Appends top-level directives (e.g. `worker_shutdown_timeout 3s;`).
    pub fn main_conf(mut self, conf: &str) -> Self {
        push_conf(&mut self.main_conf, conf);
        self
    }

    /// Appends directives inside `http {}` (e.g. `init_worker_by_lua_block { ... }`).
    pub fn http_conf(mut self, conf: &str) -> Self {
        push_conf(&mut self.http_conf, conf);
        self
    }

    /// Appends directives inside the single `server {}` (the `location` blocks).
    pub fn server_conf(mut self, conf: &str) -> Self {
        push_conf(&mut self.server_conf, conf);
        self
    }

    /// Sets an environment variable of the nginx process and declares it with `env NAME;` so
    /// workers see it too. `LD_LIBRARY_PATH` overrides the default [`crate::lib_dir`].
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs another build: the libraries in `dir` (the host's through `lua_package_cpath`, the
    /// runtimes' through `LD_LIBRARY_PATH`) and the Lua modules of `dir/lua` when it exists, so a
    /// benchmark can pair an old build against this one (`scripts/grpc-ab.sh`).
    pub fn build_dir(mut self, dir: &Path) -> Self {
        self.build_dir = Some(dir.to_owned());
        self.env("LD_LIBRARY_PATH", &dir.to_string_lossy())
    }

    /// `error_log` level (default `notice`, which shows every `[warn]` and worse line plus
    /// nginx's start, signal and exit notices).
    pub fn error_log_level(mut self, level: &str) -> Self {
        self.error_log_level = level.to_owned();
        self
    }

    /// The nginx.conf this builder writes for `port`.
    pub fn config_text(&self, prefix: &Path, port: u16) -> String {
        // Another build's directory goes first on the cpath, this tree's libraries after it
        // (a directory with only libresty_grpc_zc.so still finds this tree's host).
        let (lua_root, cpath) = match &self.build_dir {
            Some(d) => (
                if d.join("lua").is_dir() {
                    d.clone()
                } else {
                    crate::repo_root()
                },
                format!(
                    "{}/lib?.so;{}/lib?.so",
                    d.display(),
                    crate::lib_dir().display()
                ),
            ),
            None => (
                crate::repo_root(),
                format!("{}/lib?.so", crate::lib_dir().display()),
            ),
        };
        let tmp = prefix.join("tmp");
        let mut c = String::new();
        let _ = writeln!(c, "load_module {MODULES_DIR}/ndk_http_module.so;");
        let _ = writeln!(c, "load_module {MODULES_DIR}/ngx_http_lua_module.so;");
        let _ = writeln!(c, "daemon off;\nmaster_process on;");
        let _ = writeln!(c, "worker_processes {};", self.workers);
        if procfs::is_root() {
            let _ = writeln!(c, "user root;");
        }
        let _ = writeln!(c, "error_log logs/error.log {};", self.error_log_level);
        let _ = writeln!(c, "pid logs/nginx.pid;");
        let _ = writeln!(c, "env LD_LIBRARY_PATH;");
        for (k, _) in self.env.iter().filter(|(k, _)| k != "LD_LIBRARY_PATH") {
            let _ = writeln!(c, "env {k};");
        }
        c.push_str(&self.main_conf);
        let _ = writeln!(c, "events {{\n    worker_connections 4096;\n}}");
        let _ = writeln!(c, "http {{\n    access_log off;");
        // Request bodies of up to 1 MiB stay in memory (`ngx.req.get_body_data()` sees them);
        // override both in `server_conf`, not in `http_conf` (a duplicate there is an error).
        let _ = writeln!(
            c,
            "    client_max_body_size 64m;\n    client_body_buffer_size 1m;"
        );
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let _ = writeln!(c, "    {kind}_temp_path {};", tmp.join(kind).display());
        }
        let _ = writeln!(
            c,
            "    lua_package_path \"{}/lua/?.lua;;\";",
            lua_root.display()
        );
        let _ = writeln!(c, "    lua_package_cpath \"{cpath};;\";");
        // User text goes in verbatim: indenting it would change Lua long strings.
        c.push_str(&self.http_conf);
        let _ = writeln!(c, "    server {{\n        listen 127.0.0.1:{port};");
        c.push_str(&self.server_conf);
        let _ = writeln!(c, "    }}\n}}");
        c
    }

    /// Starts nginx and waits until it accepts connections and all workers run. Panics with the
    /// error log when it does not come up within 10 s.
    pub fn start(&self) -> Nginx {
        for attempt in 1..=START_ATTEMPTS {
            match self.try_start() {
                Ok(nginx) => return nginx,
                Err(Failure::AddrInUse(log)) if attempt < START_ATTEMPTS => {
                    eprintln!("testkit: nginx {}: port taken, retrying:\n{log}", self.name);
                }
                Err(Failure::AddrInUse(log) | Failure::Other(log)) => {
                    panic!("nginx {} did not start:\n{log}", self.name)
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn try_start(&self) -> Result<Nginx, Failure> {
        let prefix = self.fresh_prefix();
        let port = free_port();
        fs::write(
            prefix.join("conf/nginx.conf"),
            self.config_text(&prefix, port),
        )
        .expect("writing nginx.conf");
        let logs = prefix.join("logs");
        let stdout = fs::File::create(logs.join("stdout.log")).expect("creating stdout.log");
        let stderr = fs::File::create(logs.join("stderr.log")).expect("creating stderr.log");
        let mut cmd = Command::new(NGINX_BIN);
        cmd.arg("-p")
            .arg(&prefix)
            .args(["-e", "logs/error.log", "-c", "conf/nginx.conf"])
            .env("LD_LIBRARY_PATH", crate::lib_dir())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {NGINX_BIN}: {e}"));
        // From here on, Drop stops the process whatever happens.
        let mut nginx = Nginx {
            child,
            exit: None,
            prefix,
            port,
            workers: self.workers,
            client: Client::new(),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = nginx.child.try_wait().expect("waiting for nginx") {
                nginx.exit = Some(status);
                let log = nginx.startup_report(&format!("nginx exited during startup: {status}"));
                return Err(if log.contains("Address already in use") {
                    Failure::AddrInUse(log)
                } else {
                    Failure::Other(log)
                });
            }
            // Workers are forked after the listening socket is bound, so a full set of our own
            // workers also proves that the port answering is ours.
            if nginx.worker_pids().len() == self.workers
                && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                return Ok(nginx);
            }
            if Instant::now() >= deadline {
                return Err(Failure::Other(
                    nginx.startup_report("nginx did not come up within 10 s"),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates `target/t-nginx/<name>-<pid>-<n>/{conf,logs,tmp}` after removing the prefixes of
    /// earlier runs with the same name (those of processes that are gone).
    fn fresh_prefix(&self) -> PathBuf {
        let root = crate::repo_root().join("target/t-nginx");
        fs::create_dir_all(&root).expect("creating target/t-nginx");
        let me = std::process::id();
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(rest) = file_name
                    .to_str()
                    .and_then(|n| n.strip_prefix(&self.name))
                    .and_then(|n| n.strip_prefix('-'))
                else {
                    continue;
                };
                let Some((pid, n)) = rest.split_once('-') else {
                    continue;
                };
                let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
                    continue;
                };
                if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let prefix = root.join(format!("{}-{me}-{n}", self.name));
        let _ = fs::remove_dir_all(&prefix);
        for sub in ["conf", "logs", "tmp"] {
            fs::create_dir_all(prefix.join(sub)).expect("creating the nginx prefix");
        }
        prefix
    }
}

enum Failure {
    AddrInUse(String),
    Other(String),
}

fn push_conf(dst: &mut String, conf: &str) {
    dst.push_str(conf);
    if !conf.ends_with('\n') {
        dst.push('\n');
    }
}

/// A port that was free a moment ago (bind to port 0, read it, close).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A running nginx master with its workers. Dropping it stops nginx (SIGTERM, SIGKILL after
/// 5 s); the prefix directory is kept for post-mortem.
pub struct Nginx {
    child: Child,
    exit: Option<ExitStatus>,
    prefix: PathBuf,
    port: u16,
    workers: usize,
    client: Client,
}

impl Nginx {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `target/t-nginx/<name>-<pid>-<n>`.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path`; panics on a transport error (use [`Nginx::try_get`] to see it).
    pub fn get(&self, path: &str) -> Resp {
        self.try_get(path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// POST `body` to `path`; panics on a transport error.
    pub fn post(&self, path: &str, body: &[u8]) -> Resp {
        self.try_post(path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// GET `path`, asserting status 200; the body as text.
    pub fn get_ok(&self, path: &str) -> String {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.text()
    }

    /// Opens `count` connections that send `GET path` and hang up `after` later, without
    /// reading the reply (clients aborting mid-request).
    pub fn hang_up(&self, path: &str, count: usize, after: Duration) {
        use std::io::Write;
        let socks: Vec<TcpStream> = (0..count)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to nginx");
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .expect("send request");
                s
            })
            .collect();
        thread::sleep(after);
        drop(socks);
    }

    pub fn try_get(&self, path: &str) -> Result<Resp, String> {
        self.client.get(&self.url(path))
    }

    pub fn try_post(&self, path: &str, body: &[u8]) -> Result<Resp, String> {
        self.client.post(&self.url(path), body)
    }

    pub fn master_pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Live workers serving requests (children of the master titled `worker process`), without
    /// those that are gracefully shutting down after a reload or quit.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers_where(|title| !title.contains("shutting down"))
    }

    /// Old workers still finishing their requests after a reload or quit.
    pub fn shutting_down_pids(&self) -> Vec<i32> {
        self.workers_where(|title| title.contains("shutting down"))
    }

    fn workers_where(&self, keep: impl Fn(&str) -> bool) -> Vec<i32> {
        if self.exit.is_some() {
            return Vec::new();
        }
        procfs::children(self.master_pid())
            .into_iter()
            .filter(|&pid| {
                procfs::cmdline(pid)
                    .is_some_and(|title| title.contains("worker process") && keep(&title))
            })
            .collect()
    }

    /// VmRSS of `pid` in KiB; `None` if it is gone.
    pub fn rss_kb(&self, pid: i32) -> Option<u64> {
        procfs::rss_kb(pid)
    }

    /// `nginx -s reload` (SIGHUP to the master); returns once a full set of new workers runs
    /// and the old ones stopped serving. The old workers may still be shutting down (see
    /// [`Nginx::shutting_down_pids`] and [`Nginx::wait_pids_gone`]). Panics with the error log
    /// when no new workers appear within 10 s (for instance, a bad config).
    pub fn reload(&mut self) {
        let old = self.worker_pids();
        self.signal_reload_and_wait(&old);
        // The old workers get SIGQUIT once the new ones run and retitle themselves "worker
        // process is shutting down" on their next event-loop turn; wait for that so that
        // `worker_pids()` lists only the new workers. A worker blocked outside its event loop
        // never retitles: after 10 s, return anyway.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.worker_pids().iter().any(|p| old.contains(p)) {
            if Instant::now() >= deadline {
                eprintln!("testkit: old workers {old:?} still serving 10 s after reload");
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal_reload_and_wait(&mut self, old: &[i32]) {
        assert!(
            procfs::signal(self.master_pid(), libc::SIGHUP),
            "SIGHUP to the nginx master failed"
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let fresh = self
                .worker_pids()
                .into_iter()
                .filter(|p| !old.contains(p))
                .count();
            if fresh >= self.workers {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("waiting for nginx") {
                self.exit = Some(status);
                panic!(
                    "nginx exited during reload ({status}):\n{}",
                    self.error_log()
                );
            }
            if Instant::now() >= deadline {
                panic!("no new workers 10 s after reload:\n{}", self.error_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until none of `pids` is alive; false on timeout.
    pub fn wait_pids_gone(&self, pids: &[i32], timeout: Duration) -> bool {
        procfs::wait_pids_gone(pids, timeout)
    }

    /// `nginx -s quit` (SIGQUIT: graceful shutdown) and waits for the master to exit. On timeout
    /// kills everything with SIGKILL and panics.
    pub fn quit(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_and_wait(libc::SIGQUIT, timeout)
            .unwrap_or_else(|| {
                self.kill_all();
                panic!(
                    "nginx did not quit within {timeout:?}; killed:\n{}",
                    self.error_log()
                )
            })
    }

    /// [`quit`](Self::quit), asserting that the master exits successfully within `limit` (the
    /// graceful quit that tests with calls in flight expect); returns how long it took.
    pub fn quit_within(&mut self, limit: Duration) -> Duration {
        let started = std::time::Instant::now();
        let status = self.quit(Duration::from_secs(10));
        let took = started.elapsed();
        assert!(status.success(), "master exit status {status}");
        assert!(took < limit, "nginx quit in {took:?}, more than {limit:?}");
        took
    }

    /// `nginx -s stop` (SIGTERM: fast shutdown) and waits for the master to exit (SIGKILL after
    /// 5 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
            .unwrap_or_else(|| self.kill_all())
    }

    /// Sends `sig` to the master; `None` when it is still running after `timeout`.
    fn signal_and_wait(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        procfs::signal(self.master_pid(), sig);
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return Some(status);
                }
                Ok(None) => {}
                // Only possible if someone else reaped it; there is nothing left to wait for.
                Err(_) => return Some(self.lost()),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the master and every worker (workers outlive a killed master), then reap.
    fn kill_all(&mut self) -> ExitStatus {
        let workers = procfs::children(self.master_pid());
        procfs::signal(self.master_pid(), libc::SIGKILL);
        for pid in workers {
            procfs::signal(pid, libc::SIGKILL);
        }
        match self.child.wait() {
            Ok(status) => {
                self.exit = Some(status);
                status
            }
            Err(_) => self.lost(),
        }
    }

    /// The master can no longer be waited for: record it as killed.
    fn lost(&mut self) -> ExitStatus {
        let status = ExitStatus::from_raw(libc::SIGKILL);
        self.exit = Some(status);
        status
    }

    /// The whole `logs/error.log`.
    pub fn error_log(&self) -> String {
        let raw = fs::read(self.prefix.join("logs/error.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Waits up to `timeout` for error.log to contain `needle`; returns the log either way.
    /// For lines written by a runtime's own threads, which may land after the response.
    pub fn wait_log_contains(&self, needle: &str, timeout: Duration) -> (bool, String) {
        let until = Instant::now() + timeout;
        loop {
            let log = self.error_log();
            if log.contains(needle) {
                return (true, log);
            }
            if Instant::now() >= until {
                return (false, log);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics, printing the log, if error.log has an `[alert]`, `[crit]` or `[emerg]` line, or
    /// an `[error]` line that contains none of `allowed_errors`.
    pub fn assert_log_clean(&self, allowed_errors: &[&str]) {
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("[alert]")
                    || l.contains("[crit]")
                    || l.contains("[emerg]")
                    || (l.contains("[error]") && !allowed_errors.iter().any(|a| l.contains(a)))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "error.log of {} has {} bad line(s):\n{}\n--- full log ---\n{log}",
            self.prefix.display(),
            bad.len(),
            bad.join("\n")
        );
    }

    fn startup_report(&self, what: &str) -> String {
        let stderr = fs::read(self.prefix.join("logs/stderr.log")).unwrap_or_default();
        format!(
            "{what}\nprefix: {}\n--- error.log ---\n{}--- stderr ---\n{}",
            self.prefix.display(),
            self.error_log(),
            String::from_utf8_lossy(&stderr)
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.exit.is_none()
            && self
                .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
                .is_none()
        {
            self.kill_all();
        }
    }
}
