//! The worker's JVM: found, started and used on one thread of its own (`resty-ffi-jvm`).
//!
//! - libjvm is `$JAVA_HOME/lib/server/libjvm.so` when nginx passes `JAVA_HOME` (`env
//!   JAVA_HOME;`), else Debian's `/usr/lib/jvm/default-java/lib/server/libjvm.so`; it is
//!   dlopened (`RTLD_NOW | RTLD_GLOBAL`, as the `java` launcher does), never linked, so the
//!   loader itself needs no rpath and a worker without a JVM still loads it.
//! - Options: `-Xrs` (the JVM leaves SIGQUIT, SIGHUP, SIGINT and SIGTERM to nginx; a later
//!   `-XX:-ReduceSignalUsage` in `JAVA_OPTS` undoes it), `-Djava.class.path=$CLASSPATH` (with
//!   `dir/*` expanded to the jars in `dir`, as the launcher does), then `JAVA_OPTS` split at
//!   whitespace, after the `abort` and `vfprintf` hooks (see `hooks`). `_JAVA_SR_SIGNUM` (the
//!   signal HotSpot suspends threads with, SIGUSR2 by default, which nginx owns) is set to
//!   [`SR_SIGNUM`] unless set.
//! - The thread is spawned with nginx's signals blocked, and every JVM thread descends from it,
//!   so process-directed signals reach the nginx main thread only. It is never the nginx thread:
//!   the nginx thread is never attached to the JVM, so nothing the JVM does to attached threads
//!   (signal masks, safepoints, stack guard pages) touches it.
//! - `JNI_CreateJavaVM` can end the process on some start-up errors (a heap it cannot reserve,
//!   `-Xmx1k`); the `abort` hook keeps the worker alive then (see `hooks`).
//! - A failed start is final for the worker: every later `libffi_init` returns [`RC_NO_JVM`]
//!   with the same reason (a JVM cannot be created twice in one process).
//! - The JVM is never destroyed: at worker exit the process ends with its threads (poll threads
//!   are daemon threads blocked in the host's poll, which returns once the host finishes the
//!   queues), so `DestroyJavaVM` never waits for anything.

use std::ffi::{c_int, c_void, CString};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::thread;

use jni::objects::JValue;
use jni::sys;
use jni::{jni_sig, jni_str, Env, JavaVM};

use crate::cfg::Cfg;
use crate::{classes, hooks, log, RC_INTERNAL, RC_NO_JVM};

/// Debian's default JDK (`default-jdk-headless`).
pub const DEFAULT_JAVA_HOME: &str = "/usr/lib/jvm/default-java";
/// Where libjvm is under a JDK 9+ home.
const LIBJVM: &str = "lib/server/libjvm.so";
/// `_JAVA_SR_SIGNUM` unless the environment sets it: SIGRTMIN + 5 (glibc), no nginx signal.
pub const SR_SIGNUM: c_int = 39;
/// Stack of the JVM thread (the JVM's "main" thread, which runs every init method).
const JVM_STACK: usize = 8 << 20;

/// One `libffi_init` for the JVM thread.
struct Job {
    cfg: Cfg,
    tq: usize,
    reply: SyncSender<c_int>,
}

/// The started JVM, as `libffi_init` sees it: a queue of jobs for its thread.
struct Jvm {
    jobs: Mutex<Sender<Job>>,
}

static JVM: OnceLock<Result<Jvm, String>> = OnceLock::new();

/// Runs `cfg`'s init method with `tq` (starting the JVM first if this is the worker's first
/// init) and returns its result. Nginx main thread.
pub fn init(cfg: Cfg, tq: usize) -> c_int {
    let jvm = match JVM.get_or_init(start) {
        Ok(jvm) => jvm,
        Err(e) => {
            log::error(&format!(
                "resty_ffi_java: cannot run {},{}: the JVM did not start: {e}",
                cfg.class, cfg.method
            ));
            return RC_NO_JVM;
        }
    };
    let what = format!("{},{}", cfg.class, cfg.method);
    let (reply, rc) = mpsc::sync_channel(1);
    let sent = jvm
        .jobs
        .lock()
        .map(|jobs| jobs.send(Job { cfg, tq, reply }).is_ok())
        .unwrap_or(false);
    if !sent {
        log::error(&format!(
            "resty_ffi_java: cannot run {what}: the JVM thread is gone"
        ));
        return RC_INTERNAL;
    }
    rc.recv().unwrap_or_else(|_| {
        log::error(&format!(
            "resty_ffi_java: {what}: the JVM thread ended during the call"
        ));
        RC_INTERNAL
    })
}

/// Spawns the JVM thread and waits until the JVM runs (or failed to start).
fn start() -> Result<Jvm, String> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let (jobs_tx, jobs_rx) = mpsc::channel();
    hooks::report_aborts_to(ready_tx.clone());
    let spawned = with_nginx_signals_blocked(|| {
        thread::Builder::new()
            .name("resty-ffi-jvm".to_owned())
            .stack_size(JVM_STACK)
            .spawn(move || jvm_thread(ready_tx, jobs_rx))
    });
    if let Err(e) = spawned {
        hooks::stop_reporting_aborts();
        return Err(format!("cannot spawn the JVM thread: {e}"));
    }
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Jvm {
            jobs: Mutex::new(jobs_tx),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the JVM thread ended during start-up".to_owned()),
    }
}

fn jvm_thread(ready: SyncSender<Result<(), String>>, jobs: Receiver<Job>) {
    let started = std::panic::catch_unwind(|| {
        let vm = create()?;
        let boot = vm
            .attach_current_thread(classes::install)
            .map_err(|e| format!("cannot install the resty.ffi classes: {e}"))?;
        Ok::<_, String>((vm, boot))
    })
    .unwrap_or_else(|_| Err("panic while starting the JVM".to_owned()));
    let (vm, boot) = match started {
        Ok(ok) => {
            let _ = ready.send(Ok(()));
            ok
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    for job in jobs {
        let rc = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vm.attach_current_thread(|env| call_init(env, &boot, &job))
                .unwrap_or_else(|e: jni::errors::Error| {
                    log::error(&format!(
                        "resty_ffi_java: {},{}: JNI error: {e}",
                        job.cfg.class, job.cfg.method
                    ));
                    RC_INTERNAL
                })
        }))
        .unwrap_or_else(|_| {
            log::error("resty_ffi_java: panic while calling an init method");
            RC_INTERNAL
        });
        let _ = job.reply.send(rc);
    }
}

/// `resty.ffi.Boot.init(class, fresh, method, rest, tq)`.
fn call_init(env: &mut Env, boot: &classes::Boot, job: &Job) -> jni::errors::Result<c_int> {
    let class = env.new_string(&job.cfg.class)?;
    let method = env.new_string(&job.cfg.method)?;
    let rest = env.new_string(&job.cfg.rest)?;
    let r = env.call_static_method(
        &boot.class,
        jni_str!("init"),
        jni_sig!("(Ljava/lang/String;ZLjava/lang/String;Ljava/lang/String;J)I"),
        &[
            JValue::Object(&class),
            JValue::Bool(job.cfg.fresh),
            JValue::Object(&method),
            JValue::Object(&rest),
            JValue::Long(job.tq as i64),
        ],
    );
    match r.and_then(|v| v.i()) {
        Ok(rc) => Ok(rc),
        Err(e) => {
            if env.exception_check() {
                env.exception_describe();
                env.exception_clear();
            }
            Err(e)
        }
    }
}

/// Loads libjvm and creates the JVM (this thread becomes its "main" thread).
fn create() -> Result<JavaVM, String> {
    let home = std::env::var_os("JAVA_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_JAVA_HOME));
    let libjvm = home.join(LIBJVM);
    let path = CString::new(libjvm.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("bad libjvm path {}", libjvm.display()))?;
    // SAFETY: a NUL-terminated path; libjvm's initialisers are safe to run on any thread.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(format!(
            "cannot load {}: {} (set JAVA_HOME, and `env JAVA_HOME;` in nginx.conf, or install \
             default-jdk-headless)",
            libjvm.display(),
            loader_common::pin::dlerror()
        ));
    }
    // SAFETY: a NUL-terminated symbol name looked up in the handle just opened.
    let sym = unsafe { libc::dlsym(handle, c"JNI_CreateJavaVM".as_ptr()) };
    if sym.is_null() {
        return Err(format!("{} has no JNI_CreateJavaVM", libjvm.display()));
    }
    type CreateFn =
        unsafe extern "system" fn(*mut *mut sys::JavaVM, *mut *mut c_void, *mut c_void) -> c_int;
    // SAFETY: JNI_CreateJavaVM has this signature (JNI invocation API).
    let create_vm = unsafe { std::mem::transmute::<*mut c_void, CreateFn>(sym) };

    if std::env::var_os("_JAVA_SR_SIGNUM").is_none() {
        // The JVM reads it in JNI_CreateJavaVM. The nginx thread waits for us and no other thread
        // of this loader runs yet; another library's thread reading the environment right now
        // is setenv's one risk (`env _JAVA_SR_SIGNUM=39;` in nginx.conf avoids it).
        std::env::set_var("_JAVA_SR_SIGNUM", SR_SIGNUM.to_string());
    }
    let strings = options();
    // The hooks first: HotSpot takes options in order, and complains about a bad one at once.
    let mut opts = hooks::options();
    opts.extend(strings.iter().map(|s| sys::JavaVMOption {
        optionString: s.as_ptr() as *mut _,
        extraInfo: std::ptr::null_mut(),
    }));
    let mut args = sys::JavaVMInitArgs {
        version: sys::JNI_VERSION_1_8,
        nOptions: opts.len() as c_int,
        options: opts.as_mut_ptr(),
        ignoreUnrecognized: false,
    };
    let mut vm: *mut sys::JavaVM = std::ptr::null_mut();
    let mut env: *mut c_void = std::ptr::null_mut();
    hooks::creating(true);
    // SAFETY: `args` and the option strings it points to live across the call; the out
    // pointers are writable. Called once per process (JVM is a OnceLock).
    let rc = unsafe { create_vm(&mut vm, &mut env, &mut args as *mut _ as *mut c_void) };
    hooks::creating(false);
    hooks::stop_reporting_aborts();
    let said = hooks::take_startup_output();
    if rc != sys::JNI_OK || vm.is_null() {
        return Err(format!(
            "JNI_CreateJavaVM failed ({}; options {:?}){}",
            jni_error_name(rc),
            strings,
            said
        ));
    }
    hooks::log_startup_output(&said);
    // SAFETY: a JavaVM just created by JNI_CreateJavaVM (JNI 1.8); this thread is attached.
    Ok(unsafe { JavaVM::from_raw(vm) })
}

/// The JVM's options: `-Xrs`, the class path, `JAVA_OPTS`.
fn options() -> Vec<CString> {
    let mut v = vec!["-Xrs".to_owned()];
    if let Some(cp) = std::env::var_os("CLASSPATH") {
        v.push(format!(
            "-Djava.class.path={}",
            expand_class_path(&cp.to_string_lossy())
        ));
    }
    if let Some(o) = std::env::var_os("JAVA_OPTS") {
        v.extend(o.to_string_lossy().split_whitespace().map(str::to_owned));
    }
    v.into_iter().filter_map(|s| CString::new(s).ok()).collect()
}

/// `CLASSPATH` with each `dir/*` entry replaced by the jars in `dir` (sorted), as the `java`
/// launcher does; the invocation API does not expand them.
pub fn expand_class_path(cp: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for entry in cp.split(':') {
        let dir = if entry == "*" {
            Some(".")
        } else {
            entry.strip_suffix("/*")
        };
        match dir {
            Some(dir) => {
                let mut jars: Vec<String> =
                    std::fs::read_dir(if dir.is_empty() { "/" } else { dir })
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jar")))
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect();
                jars.sort();
                out.extend(jars);
            }
            None => out.push(entry.to_owned()),
        }
    }
    out.join(":")
}

fn jni_error_name(rc: c_int) -> String {
    match rc {
        sys::JNI_ERR => "JNI_ERR".into(),
        sys::JNI_EVERSION => "JNI_EVERSION".into(),
        sys::JNI_ENOMEM => "JNI_ENOMEM".into(),
        sys::JNI_EEXIST => "JNI_EEXIST".into(),
        sys::JNI_EINVAL => "JNI_EINVAL: an invalid option".into(),
        n => format!("rc {n}"),
    }
}

/// Runs `f` with nginx's signals blocked in the calling thread, so threads spawned by `f`
/// inherit a mask that leaves those signals to the nginx main thread.
fn with_nginx_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let _blocked = loader_common::signals::Blocked::new();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_path_wildcards() {
        let dir = std::env::temp_dir().join(format!("resty-ffi-java-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b.jar", "a.JAR", "c.txt"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let d = dir.display();
        assert_eq!(
            expand_class_path(&format!("/x:{d}/*:/y.jar")),
            format!("/x:{d}/a.JAR:{d}/b.jar:/y.jar")
        );
        assert_eq!(expand_class_path("/nonexistent/*"), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
