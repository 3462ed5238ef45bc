//! The part of Node-API (`node_api.h`, exported by libnode) the binding uses, and [`Env`], a thin
//! wrapper valid for the duration of one callback on the JavaScript thread.
//!
//! Node-API is a C ABI that stays stable across Node.js versions; only functions of
//! `NAPI_VERSION` 8 or older are declared here.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

#[repr(C)]
pub struct OpaqueEnv {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueValue {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueCallbackInfo {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueTsfn {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueRef {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueScope {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueAsyncContext {
    _p: [u8; 0],
}
#[repr(C)]
pub struct OpaqueLoop {
    _p: [u8; 0],
}

pub type RawEnv = *mut OpaqueEnv;
pub type RawValue = *mut OpaqueValue;
pub type RawCallbackInfo = *mut OpaqueCallbackInfo;
pub type RawTsfn = *mut OpaqueTsfn;
pub type RawRef = *mut OpaqueRef;
pub type RawAsyncContext = *mut OpaqueAsyncContext;
/// libuv's `uv_loop_t *`.
pub type RawLoop = *mut OpaqueLoop;
#[repr(C)]
pub struct OpaqueCleanup {
    _p: [u8; 0],
}
/// `napi_async_cleanup_hook_handle`.
pub type RawCleanup = *mut OpaqueCleanup;
pub type AsyncCleanupHook = unsafe extern "C" fn(handle: RawCleanup, arg: *mut c_void);

/// `napi_status`; 0 is `napi_ok`.
pub type Status = i32;
pub const OK: Status = 0;

/// `napi_valuetype`.
pub const T_UNDEFINED: i32 = 0;
pub const T_NULL: i32 = 1;
pub const T_NUMBER: i32 = 3;
pub const T_STRING: i32 = 4;
pub const T_FUNCTION: i32 = 7;

pub type Callback = unsafe extern "C" fn(env: RawEnv, info: RawCallbackInfo) -> RawValue;
pub type Finalize = unsafe extern "C" fn(env: RawEnv, data: *mut c_void, hint: *mut c_void);
pub type CallJs =
    unsafe extern "C" fn(env: RawEnv, js_cb: RawValue, context: *mut c_void, data: *mut c_void);

extern "C" {
    fn napi_create_function(
        env: RawEnv,
        name: *const c_char,
        len: usize,
        cb: Callback,
        data: *mut c_void,
        result: *mut RawValue,
    ) -> Status;
    fn napi_get_cb_info(
        env: RawEnv,
        info: RawCallbackInfo,
        argc: *mut usize,
        argv: *mut RawValue,
        this: *mut RawValue,
        data: *mut *mut c_void,
    ) -> Status;
    fn napi_set_named_property(
        env: RawEnv,
        object: RawValue,
        name: *const c_char,
        value: RawValue,
    ) -> Status;
    fn napi_get_named_property(
        env: RawEnv,
        object: RawValue,
        name: *const c_char,
        result: *mut RawValue,
    ) -> Status;
    fn napi_create_string_utf8(
        env: RawEnv,
        s: *const c_char,
        len: usize,
        result: *mut RawValue,
    ) -> Status;
    fn napi_get_value_string_utf8(
        env: RawEnv,
        value: RawValue,
        buf: *mut c_char,
        bufsize: usize,
        result: *mut usize,
    ) -> Status;
    fn napi_coerce_to_string(env: RawEnv, value: RawValue, result: *mut RawValue) -> Status;
    fn napi_create_double(env: RawEnv, v: f64, result: *mut RawValue) -> Status;
    fn napi_get_value_double(env: RawEnv, value: RawValue, result: *mut f64) -> Status;
    fn napi_get_boolean(env: RawEnv, v: bool, result: *mut RawValue) -> Status;
    fn napi_get_undefined(env: RawEnv, result: *mut RawValue) -> Status;
    fn napi_get_null(env: RawEnv, result: *mut RawValue) -> Status;
    fn napi_typeof(env: RawEnv, value: RawValue, result: *mut i32) -> Status;
    fn napi_is_buffer(env: RawEnv, value: RawValue, result: *mut bool) -> Status;
    fn napi_get_buffer_info(
        env: RawEnv,
        value: RawValue,
        data: *mut *mut c_void,
        len: *mut usize,
    ) -> Status;
    fn napi_create_buffer_copy(
        env: RawEnv,
        len: usize,
        data: *const c_void,
        result_data: *mut *mut c_void,
        result: *mut RawValue,
    ) -> Status;
    fn napi_is_typedarray(env: RawEnv, value: RawValue, result: *mut bool) -> Status;
    fn napi_get_typedarray_info(
        env: RawEnv,
        value: RawValue,
        kind: *mut i32,
        len: *mut usize,
        data: *mut *mut c_void,
        arraybuffer: *mut RawValue,
        byte_offset: *mut usize,
    ) -> Status;
    fn napi_is_dataview(env: RawEnv, value: RawValue, result: *mut bool) -> Status;
    fn napi_get_dataview_info(
        env: RawEnv,
        value: RawValue,
        byte_len: *mut usize,
        data: *mut *mut c_void,
        arraybuffer: *mut RawValue,
        byte_offset: *mut usize,
    ) -> Status;
    fn napi_is_arraybuffer(env: RawEnv, value: RawValue, result: *mut bool) -> Status;
    fn napi_get_arraybuffer_info(
        env: RawEnv,
        value: RawValue,
        data: *mut *mut c_void,
        byte_len: *mut usize,
    ) -> Status;
    fn napi_throw_error(env: RawEnv, code: *const c_char, msg: *const c_char) -> Status;
    fn napi_throw_type_error(env: RawEnv, code: *const c_char, msg: *const c_char) -> Status;
    fn napi_is_exception_pending(env: RawEnv, result: *mut bool) -> Status;
    fn napi_get_and_clear_last_exception(env: RawEnv, result: *mut RawValue) -> Status;
    fn napi_call_function(
        env: RawEnv,
        recv: RawValue,
        func: RawValue,
        argc: usize,
        argv: *const RawValue,
        result: *mut RawValue,
    ) -> Status;
    fn napi_create_threadsafe_function(
        env: RawEnv,
        func: RawValue,
        async_resource: RawValue,
        async_resource_name: RawValue,
        max_queue_size: usize,
        initial_thread_count: usize,
        thread_finalize_data: *mut c_void,
        thread_finalize_cb: Option<Finalize>,
        context: *mut c_void,
        call_js_cb: Option<CallJs>,
        result: *mut RawTsfn,
    ) -> Status;
    fn napi_create_object(env: RawEnv, result: *mut RawValue) -> Status;
    fn napi_create_reference(env: RawEnv, v: RawValue, count: u32, result: *mut RawRef) -> Status;
    fn napi_get_reference_value(env: RawEnv, r: RawRef, result: *mut RawValue) -> Status;
    fn napi_delete_reference(env: RawEnv, r: RawRef) -> Status;
    fn napi_open_handle_scope(env: RawEnv, result: *mut *mut OpaqueScope) -> Status;
    fn napi_close_handle_scope(env: RawEnv, scope: *mut OpaqueScope) -> Status;
    fn napi_async_init(
        env: RawEnv,
        resource: RawValue,
        name: RawValue,
        result: *mut RawAsyncContext,
    ) -> Status;
    fn napi_async_destroy(env: RawEnv, ctx: RawAsyncContext) -> Status;
    fn napi_open_callback_scope(
        env: RawEnv,
        resource: RawValue,
        ctx: RawAsyncContext,
        result: *mut *mut OpaqueScope,
    ) -> Status;
    fn napi_close_callback_scope(env: RawEnv, scope: *mut OpaqueScope) -> Status;
    fn napi_get_uv_event_loop(env: RawEnv, result: *mut RawLoop) -> Status;
    fn napi_add_async_cleanup_hook(
        env: RawEnv,
        hook: AsyncCleanupHook,
        arg: *mut c_void,
        remove_handle: *mut RawCleanup,
    ) -> Status;
    fn napi_remove_async_cleanup_hook(remove_handle: RawCleanup) -> Status;
    fn napi_call_threadsafe_function(tsfn: RawTsfn, data: *mut c_void, blocking: i32) -> Status;
    fn napi_release_threadsafe_function(tsfn: RawTsfn, mode: i32) -> Status;
}

/// A JavaScript value handle, valid in the callback (handle scope) that produced it.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Value(RawValue);

impl Value {
    /// # Safety
    /// `raw` is a handle Node-API gave the running callback.
    pub unsafe fn from_raw(raw: RawValue) -> Value {
        Value(raw)
    }

    pub fn raw(self) -> RawValue {
        self.0
    }
}

/// A failed Node-API call (a JavaScript exception may be pending).
#[derive(Debug)]
pub struct Failed(pub Status);

pub type Result<T> = std::result::Result<T, Failed>;

fn check(status: Status) -> Result<()> {
    if status == OK {
        Ok(())
    } else {
        Err(Failed(status))
    }
}

/// The `napi_env` of the callback being run.
#[derive(Clone, Copy)]
pub struct Env(RawEnv);

impl Env {
    /// # Safety
    /// `env` is the environment Node.js passed to the running callback (binding init, function
    /// callback, thread-safe function `call_js`), used on that callback's thread and only until
    /// it returns; values created through it are used in the same callback only.
    pub unsafe fn new(env: RawEnv) -> Env {
        Env(env)
    }

    pub fn raw(self) -> RawEnv {
        self.0
    }

    /// Up to `N` arguments of a function callback (missing ones are `undefined`).
    ///
    /// # Safety
    /// `info` is the callback info of the callback `self` was made for.
    pub unsafe fn args<const N: usize>(self, info: RawCallbackInfo) -> Result<[Value; N]> {
        let mut argv = [ptr::null_mut(); N];
        let mut argc = N;
        // SAFETY: `info` belongs to this callback (the caller's contract); `argv` has room for
        // `argc` values.
        check(unsafe {
            napi_get_cb_info(
                self.0,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })?;
        Ok(argv.map(Value))
    }

    pub fn function(self, name: &CStr, cb: Callback) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: a live env (Env::new's contract); `name` is NUL-terminated; `cb` is an
        // `extern "C"` function with Node-API's callback signature.
        check(unsafe {
            napi_create_function(
                self.0,
                name.as_ptr(),
                usize::MAX, // NAPI_AUTO_LENGTH
                cb,
                ptr::null_mut(),
                &mut out,
            )
        })?;
        Ok(Value(out))
    }

    pub fn set(self, object: Value, name: &CStr, value: Value) -> Result<()> {
        // SAFETY: live env and handles of this callback; NUL-terminated name.
        check(unsafe { napi_set_named_property(self.0, object.0, name.as_ptr(), value.0) })
    }

    pub fn get(self, object: Value, name: &CStr) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: as in `set`.
        check(unsafe { napi_get_named_property(self.0, object.0, name.as_ptr(), &mut out) })?;
        Ok(Value(out))
    }

    pub fn string(self, s: &str) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env; `s` is `len` bytes of UTF-8.
        check(unsafe { napi_create_string_utf8(self.0, s.as_ptr().cast(), s.len(), &mut out) })?;
        Ok(Value(out))
    }

    pub fn number(self, v: f64) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env.
        check(unsafe { napi_create_double(self.0, v, &mut out) })?;
        Ok(Value(out))
    }

    pub fn boolean(self, v: bool) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env.
        check(unsafe { napi_get_boolean(self.0, v, &mut out) })?;
        Ok(Value(out))
    }

    pub fn undefined(self) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env.
        check(unsafe { napi_get_undefined(self.0, &mut out) })?;
        Ok(Value(out))
    }

    pub fn null(self) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env.
        check(unsafe { napi_get_null(self.0, &mut out) })?;
        Ok(Value(out))
    }

    /// A new Buffer holding a copy of `bytes`.
    pub fn buffer_copy(self, bytes: &[u8]) -> Result<Value> {
        let mut out = ptr::null_mut();
        let mut data = ptr::null_mut();
        // SAFETY: live env; `bytes` is readable for its length.
        check(unsafe {
            napi_create_buffer_copy(
                self.0,
                bytes.len(),
                bytes.as_ptr().cast(),
                &mut data,
                &mut out,
            )
        })?;
        Ok(Value(out))
    }

    pub fn type_of(self, v: Value) -> Result<i32> {
        let mut out = 0;
        // SAFETY: live env and handle.
        check(unsafe { napi_typeof(self.0, v.0, &mut out) })?;
        Ok(out)
    }

    pub fn to_f64(self, v: Value) -> Result<f64> {
        let mut out = 0.0;
        // SAFETY: live env and handle.
        check(unsafe { napi_get_value_double(self.0, v.0, &mut out) })?;
        Ok(out)
    }

    /// `String(v)` as UTF-8 (lone surrogates become U+FFFD, as Node writes them).
    pub fn to_string_lossy(self, v: Value) -> Result<String> {
        let mut s = ptr::null_mut();
        // SAFETY: live env and handle.
        check(unsafe { napi_coerce_to_string(self.0, v.0, &mut s) })?;
        let s = Value(s);
        let mut buf = vec![0u8; self.utf8_len(s)? + 1];
        let n = self.write_utf8(s, &mut buf)?;
        buf.truncate(n);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Length in UTF-8 bytes of the string `v`.
    pub fn utf8_len(self, v: Value) -> Result<usize> {
        let mut len = 0;
        // SAFETY: live env and handle; a NULL buffer asks for the length only.
        check(unsafe { napi_get_value_string_utf8(self.0, v.0, ptr::null_mut(), 0, &mut len) })?;
        Ok(len)
    }

    /// Writes the string `v` as UTF-8 and a NUL into `buf` (room for `utf8_len + 1` bytes
    /// holds all of it); returns the bytes written, NUL excluded.
    pub fn write_utf8(self, v: Value, buf: &mut [u8]) -> Result<usize> {
        let mut written = 0;
        // SAFETY: `buf` has `buf.len()` writable bytes; Node-API writes at most bufsize - 1
        // bytes and a NUL.
        check(unsafe {
            napi_get_value_string_utf8(
                self.0,
                v.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut written,
            )
        })?;
        Ok(written)
    }

    /// Runs `f` on the bytes of a Buffer, TypedArray, DataView or ArrayBuffer; `None` (and `f`
    /// not run) for other values. `f` must not call back into JavaScript.
    pub fn with_bytes<R>(self, v: Value, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        let (mut is, mut data, mut len) = (false, ptr::null_mut::<c_void>(), 0usize);
        // SAFETY: live env and handle; the out-parameters are writable. Each `*_info` call is
        // made only for a value of its kind.
        unsafe {
            check(napi_is_buffer(self.0, v.0, &mut is))?;
            if is {
                check(napi_get_buffer_info(self.0, v.0, &mut data, &mut len))?;
            } else {
                check(napi_is_typedarray(self.0, v.0, &mut is))?;
                if is {
                    let (mut kind, mut n, mut off) = (0, 0usize, 0usize);
                    let mut ab = ptr::null_mut();
                    check(napi_get_typedarray_info(
                        self.0, v.0, &mut kind, &mut n, &mut data, &mut ab, &mut off,
                    ))?;
                    len = n * typed_array_element_size(kind);
                } else {
                    check(napi_is_dataview(self.0, v.0, &mut is))?;
                    if is {
                        let (mut ab, mut off) = (ptr::null_mut(), 0usize);
                        check(napi_get_dataview_info(
                            self.0, v.0, &mut len, &mut data, &mut ab, &mut off,
                        ))?;
                    } else {
                        check(napi_is_arraybuffer(self.0, v.0, &mut is))?;
                        if !is {
                            return Ok(None);
                        }
                        check(napi_get_arraybuffer_info(self.0, v.0, &mut data, &mut len))?;
                    }
                }
            }
        }
        if data.is_null() || len == 0 {
            return Ok(Some(f(&[])));
        }
        // SAFETY: Node-API reported `len` bytes at `data`, alive as long as the value, which
        // outlives `f` (no JavaScript runs meanwhile, so nothing can detach or free it).
        Ok(Some(f(unsafe {
            std::slice::from_raw_parts(data.cast(), len)
        })))
    }

    pub fn call(self, recv: Value, func: Value, args: &[Value]) -> Result<Value> {
        let mut out = ptr::null_mut();
        // SAFETY: live env and handles; `args` is a slice of handles (`Value` is a transparent
        // pointer wrapper laid out like `napi_value`).
        check(unsafe {
            napi_call_function(
                self.0,
                recv.0,
                func.0,
                args.len(),
                args.as_ptr().cast(),
                &mut out,
            )
        })?;
        Ok(Value(out))
    }

    /// Takes the pending exception, if any.
    pub fn take_exception(self) -> Option<Value> {
        let mut pending = false;
        // SAFETY: live env.
        if unsafe { napi_is_exception_pending(self.0, &mut pending) } != OK || !pending {
            return None;
        }
        let mut out = ptr::null_mut();
        // SAFETY: live env; an exception is pending.
        (unsafe { napi_get_and_clear_last_exception(self.0, &mut out) } == OK).then_some(Value(out))
    }

    /// Throws `Error(msg)` unless an exception is already pending.
    pub fn throw_error(self, msg: &str) {
        self.throw(msg, false)
    }

    /// Throws `TypeError(msg)` unless an exception is already pending.
    pub fn throw_type_error(self, msg: &str) {
        self.throw(msg, true)
    }

    fn throw(self, msg: &str, type_error: bool) {
        let mut pending = false;
        // SAFETY: live env.
        if unsafe { napi_is_exception_pending(self.0, &mut pending) } == OK && pending {
            return;
        }
        let msg = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: live env; NUL-terminated message; a NULL code is allowed.
        unsafe {
            if type_error {
                napi_throw_type_error(self.0, ptr::null(), msg.as_ptr());
            } else {
                napi_throw_error(self.0, ptr::null(), msg.as_ptr());
            }
        }
    }

    /// A thread-safe function calling `func` through `call_js` on this environment's thread.
    /// The finalizer gets `finalize_data` when the function is torn down (all threads released
    /// it, or the environment is freed).
    ///
    /// # Safety
    /// `call_js` and `finalize` must treat `context` and `finalize_data` as the types the
    /// caller passes here.
    pub unsafe fn threadsafe_function(
        self,
        func: Value,
        name: &str,
        finalize_data: *mut c_void,
        finalize: Finalize,
        context: *mut c_void,
        call_js: CallJs,
    ) -> Result<RawTsfn> {
        let name = self.string(name)?;
        let mut out = ptr::null_mut();
        // SAFETY: live env and handles; unlimited queue, one thread (the creator's share is
        // handed to the thread that calls it); the callbacks' contracts are the caller's.
        check(unsafe {
            napi_create_threadsafe_function(
                self.0,
                func.0,
                ptr::null_mut(),
                name.0,
                0,
                1,
                finalize_data,
                Some(finalize),
                context,
                Some(call_js),
                &mut out,
            )
        })?;
        Ok(out)
    }
}

/// State a native async source keeps between event-loop callbacks on one environment: the
/// environment, a persistent JavaScript function and an async context, so it can call the
/// function from a libuv callback as Node-API asks (a handle scope and a callback scope,
/// which runs the microtasks and `process.nextTick`s the calls queued when it closes).
pub struct Persistent {
    env: RawEnv,
    func: RawRef,
    resource: RawRef,
    ctx: RawAsyncContext,
}

impl Persistent {
    /// Keeps `func` alive for [`Persistent::enter`] calls from later event-loop callbacks.
    pub fn new(env: Env, func: Value, name: &str) -> Result<Persistent> {
        let (mut f, mut r, mut ctx, mut obj) = (
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        );
        let name = env.string(name)?;
        // SAFETY: live env and handles of the running callback; out-parameters writable.
        unsafe {
            check(napi_create_object(env.0, &mut obj))?;
            check(napi_create_reference(env.0, func.0, 1, &mut f))?;
            check(napi_create_reference(env.0, obj, 1, &mut r))?;
            check(napi_async_init(env.0, obj, name.0, &mut ctx))?;
        }
        Ok(Persistent {
            env: env.0,
            func: f,
            resource: r,
            ctx,
        })
    }

    /// The event loop this environment runs on.
    pub fn event_loop(&self) -> Result<RawLoop> {
        let mut l = ptr::null_mut();
        // SAFETY: the environment is alive (`Persistent` is dropped before it).
        check(unsafe { napi_get_uv_event_loop(self.env, &mut l) })?;
        Ok(l)
    }

    /// Runs `f` with the environment and the function inside fresh handle and callback scopes.
    ///
    /// # Safety
    /// On the environment's thread, from a libuv callback (no JavaScript on the stack), while
    /// the environment is alive.
    pub unsafe fn enter<R>(&self, f: impl FnOnce(Env, Value) -> R) -> Result<R> {
        let (mut hs, mut cs) = (ptr::null_mut(), ptr::null_mut());
        let (mut func, mut resource) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: the caller's contract; the scopes are closed in reverse order below.
        unsafe {
            check(napi_open_handle_scope(self.env, &mut hs))?;
            let opened = check(napi_get_reference_value(self.env, self.func, &mut func))
                .and_then(|()| {
                    check(napi_get_reference_value(
                        self.env,
                        self.resource,
                        &mut resource,
                    ))
                })
                .and_then(|()| {
                    check(napi_open_callback_scope(
                        self.env, resource, self.ctx, &mut cs,
                    ))
                });
            if let Err(e) = opened {
                napi_close_handle_scope(self.env, hs);
                return Err(e);
            }
            let r = f(Env(self.env), Value(func));
            napi_close_callback_scope(self.env, cs);
            napi_close_handle_scope(self.env, hs);
            Ok(r)
        }
    }

    /// Frees the references and the async context.
    ///
    /// # Safety
    /// On the environment's thread while it is alive, outside [`Persistent::enter`].
    pub unsafe fn release(self) {
        // SAFETY: the caller's contract; each handle is released once.
        unsafe {
            napi_async_destroy(self.env, self.ctx);
            napi_delete_reference(self.env, self.func);
            napi_delete_reference(self.env, self.resource);
        }
    }

    /// Calls `hook(handle, arg)` when the environment is torn down; Node.js then keeps running
    /// the event loop until [`remove_cleanup_hook`] is called with the returned handle (which
    /// may also be called earlier, to cancel the hook).
    ///
    /// # Safety
    /// `arg` stays valid until the hook ran or was removed.
    pub unsafe fn add_cleanup_hook(
        &self,
        hook: AsyncCleanupHook,
        arg: *mut c_void,
    ) -> Result<RawCleanup> {
        let mut h = ptr::null_mut();
        // SAFETY: the caller's contract; `h` is writable.
        check(unsafe { napi_add_async_cleanup_hook(self.env, hook, arg, &mut h) })?;
        Ok(h)
    }
}

/// Ends (or cancels) an async cleanup hook.
///
/// # Safety
/// `h` came from [`Persistent::add_cleanup_hook`] and is removed once, on the environment's
/// thread.
pub unsafe fn remove_cleanup_hook(h: RawCleanup) {
    // SAFETY: the caller's contract.
    unsafe { napi_remove_async_cleanup_hook(h) };
}

/// Queues `data` for the thread-safe function's `call_js` (non-blocking: the queue is
/// unbounded). Returns the Node-API status (`napi_closing` once the function is being torn
/// down); unless it is [`OK`], `data` was not taken.
///
/// # Safety
/// `tsfn` is alive: not yet finalized (see [`crate::binding`]'s gates) and not released by the
/// calling thread.
pub unsafe fn tsfn_call(tsfn: RawTsfn, data: *mut c_void) -> Status {
    // SAFETY: the caller's contract.
    unsafe { napi_call_threadsafe_function(tsfn, data, 0) }
}

/// Gives up the calling thread's share of the thread-safe function.
///
/// # Safety
/// As [`tsfn_call`]; the thread must not use `tsfn` afterwards.
pub unsafe fn tsfn_release(tsfn: RawTsfn) {
    // SAFETY: the caller's contract.
    unsafe { napi_release_threadsafe_function(tsfn, 0) };
}

fn typed_array_element_size(kind: i32) -> usize {
    match kind {
        0..=2 => 1,  // Int8, Uint8, Uint8Clamped
        3 | 4 => 2,  // Int16, Uint16
        5..=7 => 4,  // Int32, Uint32, Float32
        8..=10 => 8, // Float64, BigInt64, BigUint64
        _ => 1,
    }
}
