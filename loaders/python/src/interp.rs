//! The worker's one interpreter: started by the first `libffi_init`, shared by every later one,
//! never finalized.
//!
//! Starting it, on the nginx main thread:
//!
//! 1. pin this library (`RTLD_NODELETE`: with `unpin = true` LuaJIT dlcloses it after
//!    `__unload`, and the interpreter's threads run code it depends on) and make libpython's
//!    symbols global (`RTLD_GLOBAL`: C extension modules such as cffi's `_cffi_backend` are
//!    not linked against libpython and expect its symbols in the global scope, which
//!    `ngx.load_ffi` without `is_global` does not give);
//! 2. `Py_InitializeFromConfig` with a Python configuration that honours the environment
//!    (`PYTHONPATH`, `PYTHONHOME`, ...) but installs no signal handler, leaves the C stdio and
//!    the process locale alone and parses no argv; `program_name` is the virtualenv's
//!    `bin/python3` when `VIRTUAL_ENV` names one, else the Python the crate was built against;
//! 3. `PyEval_SaveThread`: from then on the nginx thread holds no GIL; it attaches only inside
//!    `libffi_init`.
//!
//! A start that failed is remembered: later `libffi_init`s fail the same way without touching
//! Python again.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::ffi;

use crate::log;
use loader_common::pin;

/// The Python the crate was built against (`PYO3_PYTHON`), used as `program_name` outside a
/// virtualenv so that `sys.prefix` does not depend on `PATH`.
const BUILD_PYTHON: &str = match option_env!("PYO3_PYTHON") {
    Some(p) => p,
    None => "/usr/bin/python3",
};

enum State {
    NotStarted,
    Running,
    Failed(String),
}

static STATE: Mutex<State> = Mutex::new(State::NotStarted);

/// Starts the interpreter unless it runs already. Call on the nginx main thread.
pub fn ensure() -> Result<(), String> {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    match &*state {
        State::Running => Ok(()),
        State::Failed(why) => Err(format!("it failed earlier in this worker: {why}")),
        State::NotStarted => {
            let started = start();
            *state = match &started {
                Ok(()) => State::Running,
                Err(why) => State::Failed(why.clone()),
            };
            started
        }
    }
}

fn start() -> Result<(), String> {
    pin_libraries()?;
    // SAFETY: Py_IsInitialized may be called at any time, from any thread.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Another copy of this loader (or another embedder) started it: share it.
        log::log(
            log::NOTICE,
            "using the Python interpreter already running in this process",
        );
        return Ok(());
    }
    let program = program_name();
    // SAFETY: the interpreter is not initialized (checked above) and this is the only thread
    // starting it (STATE's lock is held); `program` outlives the call.
    unsafe { initialize(&program)? };
    // SAFETY: the interpreter is initialized and this thread holds the GIL (it just
    // initialized it); the returned thread state is kept by Python as this thread's, so
    // PyGILState_Ensure finds it again in later `libffi_init`s.
    unsafe { ffi::PyEval_SaveThread() };
    Ok(())
}

/// `$VIRTUAL_ENV/bin/python3` when `VIRTUAL_ENV` names a virtualenv (a folder with
/// `pyvenv.cfg`): Python then finds the venv as its own interpreter there would, with
/// `sys.prefix` the venv and its `site-packages` on `sys.path`. Else [`BUILD_PYTHON`].
fn program_name() -> CString {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let venv = PathBuf::from(venv);
        if venv.join("pyvenv.cfg").is_file() {
            let exe = venv.join("bin").join("python3");
            if let Ok(exe) = CString::new(exe.into_os_string().into_encoded_bytes()) {
                return exe;
            }
        }
        log::log(
            log::WARN,
            &format!(
                "VIRTUAL_ENV={} is not a virtualenv (no pyvenv.cfg): ignored",
                venv.display()
            ),
        );
    }
    CString::new(BUILD_PYTHON).unwrap_or_else(|_| c"python3".to_owned())
}

/// Pre-initializes and initializes CPython.
///
/// # Safety
///
/// The interpreter must not be initialized; one thread at a time.
unsafe fn initialize(program: &CStr) -> Result<(), String> {
    let mut pre = std::mem::MaybeUninit::<ffi::PyPreConfig>::uninit();
    let pre = pre.as_mut_ptr();
    // SAFETY: PyPreConfig_InitPythonConfig fills every field of `pre`; the fields written
    // next are plain ints of that initialized struct.
    unsafe {
        ffi::PyPreConfig_InitPythonConfig(pre);
        // nginx's locale stays "C" (Python then runs in UTF-8 mode); no LC_CTYPE coercion.
        (*pre).configure_locale = 0;
        (*pre).coerce_c_locale = 0;
        (*pre).coerce_c_locale_warn = 0;
        check(ffi::Py_PreInitialize(pre))?;
    }
    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
    let config = config.as_mut_ptr();
    // SAFETY: PyConfig_InitPythonConfig initializes `config`; PyConfig_SetBytesString copies
    // `program` into a field of it; PyConfig_Clear frees what the config owns, once, after
    // Py_InitializeFromConfig copied what it keeps.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config);
        (*config).install_signal_handlers = 0;
        (*config).parse_argv = 0;
        (*config).configure_c_stdio = 0;
        let status =
            ffi::PyConfig_SetBytesString(config, &raw mut (*config).program_name, program.as_ptr());
        let status = match check(status) {
            Ok(()) => check(ffi::Py_InitializeFromConfig(config)),
            Err(e) => Err(e),
        };
        ffi::PyConfig_Clear(config);
        status
    }
}

/// A PyStatus as a result.
fn check(status: ffi::PyStatus) -> Result<(), String> {
    // SAFETY: PyStatus_Exception only reads the struct passed by value.
    if unsafe { ffi::PyStatus_Exception(status) } == 0 {
        return Ok(());
    }
    let text = |p: *const c_char| {
        if p.is_null() {
            None
        } else {
            // SAFETY: PyStatus messages are static NUL-terminated strings of libpython.
            Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        }
    };
    // SAFETY: as above.
    if unsafe { ffi::PyStatus_IsExit(status) } != 0 {
        return Err(format!("Python exited with status {}", status.exitcode));
    }
    Err(match (text(status.func), text(status.err_msg)) {
        (Some(func), Some(msg)) => format!("{func}: {msg}"),
        (None, Some(msg)) => msg,
        _ => "unknown error".to_owned(),
    })
}

/// Pins this library and makes libpython global (the handles are kept forever).
fn pin_libraries() -> Result<(), String> {
    let own = pin::pin_self()?;
    // dlsym on a handle searches the library and its dependencies, libpython among them.
    let libpython = own.library_of(c"Py_IsInitialized")?;
    pin::pin_loaded(&libpython, true)
        .map(drop)
        .map_err(|e| format!("cannot make libpython global: {e}"))
}
