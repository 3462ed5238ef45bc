//! The panic guard every callback from C runs under: a panic must never unwind into nginx.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::log::{self, Level};

/// Runs `f`, turning a panic into a logged alert and `on_panic`.
pub(crate) fn guard<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            log::host(Level::ALERT, &format!("panic in {what}: {msg}"));
            on_panic
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback_value() {
        assert_eq!(guard("ok", 0, || 7), 7);
        assert_eq!(guard("boom", -1, || panic!("boom")), -1);
        assert_eq!(
            guard("boom", -1, || panic!("{}", String::from("owned"))),
            -1
        );
    }
}
