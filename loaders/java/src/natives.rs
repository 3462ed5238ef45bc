//! The natives of `resty.ffi.Host`: the only code that calls the host's task functions, and the
//! place that enforces the contract's ownership rules for Java (requests are copied into a Java
//! array, responses are copied into a libc `malloc` buffer the host frees, a task whose answer
//! cannot be built is still answered, with [`RC_NO_MEMORY`] or [`RC_NATIVE_FAILED`]).
//!
//! `poll` blocks in native code, where the JVM does not wait for the thread at safepoints.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use jni::errors::ThrowRuntimeExAndDefault;
use jni::objects::{JByteArray, JClass, JString};
use jni::sys::{jboolean, jint, jlong};
use jni::{jni_str, EnvUnowned, NativeMethod, Outcome};

use crate::log;

/// rc of a task whose response could not be allocated (Lua sees `false, -2`).
pub const RC_NO_MEMORY: c_int = -2;
/// rc of a task whose response could not be read from Java (Lua sees `false, -3`).
pub const RC_NATIVE_FAILED: c_int = -3;

extern "C" {
    // Resolved at load time from the host library, which was loaded RTLD_GLOBAL before us.
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
}

type CancelledFn = unsafe extern "C" fn(task: *mut c_void) -> c_int;

/// The host extension `ngx_http_lua_ffi_task_cancelled`, absent on the real lua-resty-ffi.
fn cancelled_fn() -> Option<CancelledFn> {
    static FN: OnceLock<Option<CancelledFn>> = OnceLock::new();
    *FN.get_or_init(|| {
        // SAFETY: a NUL-terminated name; dlsym only reads the global symbol table.
        let sym = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"ngx_http_lua_ffi_task_cancelled".as_ptr(),
            )
        };
        if sym.is_null() {
            None
        } else {
            // SAFETY: the host exports it as `int (void *task)`.
            Some(unsafe { std::mem::transmute::<*mut c_void, CancelledFn>(sym) })
        }
    })
}

/// Host's natives, for `RegisterNatives`.
pub fn methods() -> [NativeMethod<'static>; 5] {
    // SAFETY: each of the five functions has the JNI signature of a static native method (env,
    // class, then the arguments) with exactly the Java types of its descriptor:
    // poll (J)J, request (J)[B, respond (JI[B)V, cancelled (J)Z, log_line (ILjava/lang/String;)V.
    unsafe {
        [
            NativeMethod::from_raw_parts(jni_str!("poll"), jni_str!("(J)J"), poll as *mut c_void),
            NativeMethod::from_raw_parts(
                jni_str!("request"),
                jni_str!("(J)[B"),
                request as *mut c_void,
            ),
            NativeMethod::from_raw_parts(
                jni_str!("respond"),
                jni_str!("(JI[B)V"),
                respond as *mut c_void,
            ),
            NativeMethod::from_raw_parts(
                jni_str!("cancelled"),
                jni_str!("(J)Z"),
                cancelled as *mut c_void,
            ),
            NativeMethod::from_raw_parts(
                jni_str!("log"),
                jni_str!("(ILjava/lang/String;)V"),
                log_line as *mut c_void,
            ),
        ]
    }
}

/// `static native long poll(long tq)`.
extern "system" fn poll<'l>(_env: EnvUnowned<'l>, _class: JClass<'l>, tq: jlong) -> jlong {
    if tq == 0 {
        return 0;
    }
    // SAFETY: `tq` is the queue handed to the init method, polled by this one thread until
    // it returns NULL (the Java caller's contract, kept by resty.ffi.Server).
    unsafe { ngx_http_lua_ffi_task_poll(tq as *mut c_void) as jlong }
}

/// `static native byte[] request(long task)`: a copy, or null for a nil request.
extern "system" fn request<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    task: jlong,
) -> JByteArray<'l> {
    env.with_env(|env| -> jni::errors::Result<JByteArray<'l>> {
        if task == 0 {
            return Ok(JByteArray::default());
        }
        let mut len: c_int = 0;
        // SAFETY: a polled, unanswered task (the caller's contract); `len` is writable.
        let req = unsafe { ngx_http_lua_ffi_get_req(task as *mut c_void, &mut len) };
        if req.is_null() {
            return Ok(JByteArray::default());
        }
        // SAFETY: the host keeps `len` bytes at `req` until the task is answered, which cannot
        // happen during this call (one owner answers a task).
        let bytes = unsafe { std::slice::from_raw_parts(req as *const u8, len.max(0) as usize) };
        env.byte_array_from_slice(bytes)
    })
    .resolve::<ThrowRuntimeExAndDefault>()
}

/// `static native void respond(long task, int rc, byte[] rsp)`: answers with a malloc'd copy.
extern "system" fn respond<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    task: jlong,
    rc: jint,
    rsp: JByteArray<'l>,
) {
    if task == 0 {
        return;
    }
    let built = env
        .with_env(|env| -> jni::errors::Result<(c_int, *mut c_char, c_int)> {
            if rsp.is_null() {
                return Ok((rc, ptr::null_mut(), 0));
            }
            let n = rsp.len(env)?;
            // SAFETY: malloc has no preconditions; NULL is handled.
            let p = unsafe { libc::malloc(n + 1) } as *mut c_char;
            if p.is_null() {
                return Ok((RC_NO_MEMORY, ptr::null_mut(), 0));
            }
            // SAFETY: `p` holds n + 1 writable bytes, not aliased.
            let buf = unsafe { std::slice::from_raw_parts_mut(p.cast::<jni::sys::jbyte>(), n) };
            if let Err(e) = rsp.get_region(env, 0, buf) {
                // SAFETY: `p` came from malloc above and was not handed over.
                unsafe { libc::free(p as *mut c_void) };
                return Err(e);
            }
            // SAFETY: within the n + 1 bytes allocated. The NUL makes an empty body the empty
            // string (the host reads length 0 as a C string).
            unsafe { p.add(n).write(0) };
            Ok((rc, p, n as c_int))
        })
        .into_outcome();
    let (rc, p, n) = match built {
        Outcome::Ok(answer) => answer,
        Outcome::Err(_) | Outcome::Panic(_) => (RC_NATIVE_FAILED, ptr::null_mut(), 0),
    };
    // SAFETY: the task is polled and unanswered (the caller's contract); it is answered here
    // once; `p` is NULL or a malloc'd buffer of `n` bytes whose ownership passes to the host.
    unsafe { ngx_http_lua_ffi_respond(task as *mut c_void, rc, p, n) };
}

/// `static native boolean cancelled(long task)`.
extern "system" fn cancelled<'l>(
    _env: EnvUnowned<'l>,
    _class: JClass<'l>,
    task: jlong,
) -> jboolean {
    match cancelled_fn() {
        // SAFETY: a polled, unanswered task (the caller's contract).
        Some(f) if task != 0 => unsafe { f(task as *mut c_void) == 1 },
        _ => false,
    }
}

/// `static native void log(int level, String msg)`.
extern "system" fn log_line<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    level: jint,
    msg: JString<'l>,
) {
    env.with_env(|env| -> jni::errors::Result<()> {
        if msg.is_null() {
            return Ok(());
        }
        let text = msg.try_to_string(env)?;
        log::write(level, &text);
        Ok(())
    })
    .resolve::<ThrowRuntimeExAndDefault>()
}
