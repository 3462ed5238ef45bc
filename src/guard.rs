//! The one panic guard: every `extern "C"` export (`src/ffi/`) and every task the poll thread
//! serves (`src/runtime/serve.rs`) runs under [`guard`], so a panic never unwinds into nginx or
//! ends the poll thread. It is logged as an `alert` and turned into the caller's fallback value.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::log::Origin;

/// Runs `f`; a panic is logged (`panic in <what>: <message>`) and becomes `on_panic`.
pub fn guard<T>(origin: &Origin<'_>, what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|e| {
        let msg = e
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| e.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown panic");
        crate::log!(Alert, origin, "panic in {what}: {msg}");
        on_panic
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback_and_a_value_passes_through() {
        let o = Origin::instance("test");
        assert_eq!(guard(&o, "ok", 0, || 7), 7);
        // The default hook prints the panic too; the guard's line follows it.
        assert_eq!(guard(&o, "a test", -1, || panic!("boom {}", 1)), -1);
        assert_eq!(guard(&o, "a test", -1, || panic!("boom")), -1);
    }
}
