//! The JVM's invocation hooks (`JavaVMOption`s `abort` and `vfprintf`).
//!
//! - `abort`: HotSpot calls it before it ends the process after a fatal error, including some
//!   start-up errors (a heap it cannot reserve, `-Xmx1k`). On the JVM thread during
//!   `JNI_CreateJavaVM` it reports the failure to the waiting `libffi_init` and parks that thread
//!   for good instead, so the worker keeps serving (`ngx.load_ffi` returns `nil, 3`). Later
//!   aborts (fatal JVM errors) go on to end the process, as a crash would.
//! - `vfprintf`: everything the VM itself prints (warnings, start-up errors, `-Xlog` to
//!   stdout; not `System.out`/`System.err`, which write fds 1 and 2 directly) would go to the
//!   worker's stdout or stderr, which nginx points at /dev/null or the error log. The hook
//!   makes lines of it: during start-up they are kept and become part of the start-up error
//!   (or are logged at `[warn]` once the JVM runs); later lines go to the error log at
//!   `[warn]`, prefixed `resty_ffi_java: jvm: `. Only on x86_64 and aarch64 Linux, where a
//!   `va_list` argument is passed as a pointer that can be handed on to `vsnprintf`.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;
use std::thread;

use jni::sys;

use crate::log;

/// nginx's `NGX_LOG_WARN`.
const WARN: c_int = 5;
/// Longest piece of VM output formatted at once (longer ones are cut).
const CHUNK: usize = 4096;

/// Where the abort hook reports a failed start (set while `JNI_CreateJavaVM` runs).
static ABORT_REPORT: Mutex<Option<SyncSender<Result<(), String>>>> = Mutex::new(None);

/// VM output not yet logged: the unfinished line, and whether lines are kept for the start-up
/// report.
struct Output {
    partial: String,
    starting: bool,
    startup: Vec<String>,
}

static OUTPUT: Mutex<Output> = Mutex::new(Output {
    partial: String::new(),
    starting: true,
    startup: Vec::new(),
});

thread_local! {
    /// True on the JVM thread while `JNI_CreateJavaVM` runs.
    static CREATING: Cell<bool> = const { Cell::new(false) };
}

/// The hook options for `JNI_CreateJavaVM`.
pub fn options() -> Vec<sys::JavaVMOption> {
    let mut v = vec![sys::JavaVMOption {
        optionString: c"abort".as_ptr() as *mut c_char,
        extraInfo: on_abort as *mut c_void,
    }];
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    v.push(sys::JavaVMOption {
        optionString: c"vfprintf".as_ptr() as *mut c_char,
        extraInfo: on_vfprintf as *mut c_void,
    });
    v
}

/// An abort during start-up sends its error to `to`.
pub fn report_aborts_to(to: SyncSender<Result<(), String>>) {
    if let Ok(mut r) = ABORT_REPORT.lock() {
        *r = Some(to);
    }
}

/// Aborts no longer report (start-up is over).
pub fn stop_reporting_aborts() {
    if let Ok(mut r) = ABORT_REPORT.lock() {
        r.take();
    }
}

/// Marks the calling thread as the one inside `JNI_CreateJavaVM`.
pub fn creating(yes: bool) {
    CREATING.with(|c| c.set(yes));
}

/// What the VM printed during start-up, as `": line; line"` (empty when nothing); later output
/// is logged as it comes.
pub fn take_startup_output() -> String {
    let Ok(mut out) = OUTPUT.lock() else {
        return String::new();
    };
    out.starting = false;
    let mut lines = std::mem::take(&mut out.startup);
    let rest = std::mem::take(&mut out.partial);
    if !rest.trim().is_empty() {
        lines.push(rest);
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("; "))
    }
}

/// Logs what [`take_startup_output`] returned (a JVM that started with warnings).
pub fn log_startup_output(said: &str) {
    if let Some(text) = said.strip_prefix(": ") {
        log::write(WARN, &format!("resty_ffi_java: jvm: {text}"));
    }
}

fn vm_output(text: &str) {
    let Ok(mut out) = OUTPUT.lock() else {
        return;
    };
    out.partial.push_str(text);
    while let Some(nl) = out.partial.find('\n') {
        let line: String = out.partial.drain(..=nl).collect();
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if out.starting {
            out.startup.push(line.to_owned());
        } else {
            log::write(WARN, &format!("resty_ffi_java: jvm: {line}"));
        }
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
extern "C" {
    /// libc's, with the `va_list` taken as the pointer it is passed as on these targets.
    fn vsnprintf(s: *mut c_char, n: usize, format: *const c_char, ap: *mut c_void) -> c_int;
}

/// `jint vfprintf(FILE *fp, const char *format, va_list args)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
extern "C" fn on_vfprintf(_fp: *mut c_void, format: *const c_char, ap: *mut c_void) -> c_int {
    std::panic::catch_unwind(|| {
        let mut buf = [0u8; CHUNK];
        // SAFETY: `format` and `ap` are the VM's printf arguments, handed on unchanged (a
        // `va_list` parameter is a pointer on x86_64 and aarch64); `buf` has CHUNK bytes.
        let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), CHUNK, format, ap) };
        if n < 0 {
            return n;
        }
        let len = (n as usize).min(CHUNK - 1);
        vm_output(&String::from_utf8_lossy(&buf[..len]));
        n
    })
    .unwrap_or(-1)
}

/// `void abort(void)`: see the module docs.
extern "C" fn on_abort() {
    let creating = CREATING.try_with(|c| c.get()).unwrap_or(false);
    if !creating {
        return;
    }
    let report = ABORT_REPORT.lock().ok().and_then(|mut r| r.take());
    if let Some(report) = report {
        let said = take_startup_output();
        let _ = report.send(Err(format!(
            "the JVM aborted while starting{said} (its thread is parked for good)"
        )));
    }
    loop {
        thread::park();
    }
}
