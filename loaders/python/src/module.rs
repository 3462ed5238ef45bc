//! Under the GIL: find the module (import, or reload with `?`), find the function, call
//! `func(cfg, tq)` and turn its result into `libffi_init`'s.

use std::ffi::CString;
use std::os::raw::c_int;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::cfg::Spec;
use crate::{INIT_BAD_RESULT, INIT_IMPORT_FAILED, INIT_NO_FUNC, INIT_RAISED};

/// Why a module could not be started: the rc for Lua and the line (with traceback) for
/// error.log.
#[derive(Debug)]
pub struct Failure {
    pub rc: c_int,
    pub msg: String,
}

/// Imports (or reloads) `spec.module` and returns what `spec.func(cfg, tq)` returned.
///
/// `cfg` is lua-resty-ffi's: the address of a NUL-terminated copy of `spec.rest` (valid during
/// the call), or 0 without one; `tq` the queue's address. The interpreter must be running.
pub fn start(spec: &Spec, tq: usize) -> Result<c_int, Failure> {
    // A C string can hold no NUL, and `rest` came from one.
    let rest = spec
        .rest
        .as_ref()
        .map(|r| CString::new(r.clone()).unwrap_or_default());
    let cfg = rest.as_ref().map_or(0, |r| r.as_ptr() as usize);
    let name = format!("{}.{}", spec.module, spec.func);
    Python::attach(|py| {
        let module = import(py, spec).map_err(|e| Failure {
            rc: INIT_IMPORT_FAILED,
            msg: format!("cannot import {}:\n{}", spec.module, traceback(py, &e)),
        })?;
        let func = match module.getattr(spec.func.as_str()) {
            Ok(f) if f.is_callable() => f,
            Ok(f) => {
                return Err(Failure {
                    rc: INIT_NO_FUNC,
                    msg: format!("{name} is not callable: {}", repr(&f)),
                })
            }
            Err(e) => {
                return Err(Failure {
                    rc: INIT_NO_FUNC,
                    msg: format!("module {} has no function {}: {e}", spec.module, spec.func),
                })
            }
        };
        let result = func.call1((cfg, tq)).map_err(|e| Failure {
            rc: INIT_RAISED,
            msg: format!("{name}() raised:\n{}", traceback(py, &e)),
        })?;
        result.extract::<c_int>().map_err(|_| Failure {
            rc: INIT_BAD_RESULT,
            msg: format!("{name}() returned {}, not an int", repr(&result)),
        })
    })
}

fn import<'py>(py: Python<'py>, spec: &Spec) -> PyResult<Bound<'py, PyAny>> {
    let sys = py.import("sys")?;
    if let Some(dir) = &spec.dir {
        // First on sys.path, once.
        let path = sys.getattr("path")?;
        while path.call_method1("count", (dir,))?.extract::<usize>()? > 0 {
            path.call_method1("remove", (dir,))?;
        }
        path.call_method1("insert", (0, dir))?;
    }
    let importlib = py.import("importlib")?;
    // Files created since the last import are found.
    importlib.call_method0("invalidate_caches")?;
    let loaded = sys
        .getattr("modules")?
        .call_method1("get", (spec.module.as_str(),))?;
    if loaded.is_none() {
        importlib.call_method1("import_module", (spec.module.as_str(),))
    } else if spec.reload {
        importlib.call_method1("reload", (loaded,))
    } else {
        Ok(loaded)
    }
}

/// `traceback.format_exception` of `err`, or its one-line form when that fails.
fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract()
    })();
    match formatted {
        Ok(text) => text.trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}
