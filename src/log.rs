//! The runtime's one logging path: every line it logs goes through [`log!`](crate::log!).
//!
//! ```text
//! log!(Error, origin, "text {x}")  ── one String, formatted on the calling thread
//!        │
//!        ├─ host exports resty_ffi_log (this project's host) ─► its bounded list ─► nginx main
//!        │    thread: ngx_log_error_core ─► "2026/12/01 20:56:20 [error] 1234#1234: resty_grpc_zc: …"
//!        └─ it does not (lua-resty-ffi's host) ─► stderr "[error] resty_grpc_zc: …" (nginx points
//!             a worker's stderr at its error log)
//! ```
//!
//! Levels are nginx's ([`Level`]). Every line starts with `resty_grpc_zc: instance <name>:`, then,
//! where known, `target <t>` and `method <m>`, then the text ([`Origin`]). No call blocks: the
//! host copies the line into a bounded list (dropping it when the list is full) and logs it from
//! nginx's main thread.

use std::fmt::{self, Write as _};

use crate::queue::host;

/// A line's level, numbered as nginx's (`NGX_LOG_ALERT` ...), so the host logs it as such and
/// nginx's `error_log` level filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A bug or a broken invariant (a caught panic, the event loop gone).
    Alert = 2,
    /// An operation failed and the operator should know (an instance did not start).
    Error = 4,
    /// Worked, but not as configured (a fallback was taken), or a backend failing.
    Warn = 5,
    /// A change the operator may want to see at nginx's default level (an endpoint added,
    /// removed, unhealthy).
    Notice = 6,
    /// Lifecycle news (an instance finished).
    Info = 7,
}

impl Level {
    /// nginx's name of the level, as it prints it between brackets.
    pub fn name(self) -> &'static str {
        match self {
            Level::Alert => "alert",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Notice => "notice",
            Level::Info => "info",
        }
    }
}

/// What a line is about: the instance (its cfg `instance` name, `?` before it is known) and,
/// where known, the call's target and method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    instance: Option<&'a str>,
    target: Option<&'a str>,
    method: Option<&'a str>,
}

impl<'a> Origin<'a> {
    /// A line about instance `name`.
    pub fn instance(name: &'a str) -> Origin<'a> {
        Origin {
            instance: Some(name),
            ..Origin::default()
        }
    }

    /// The instance named (empty if none).
    pub fn instance_name(&self) -> &'a str {
        self.instance.unwrap_or_default()
    }

    /// A line written before any instance is known (a cfg that did not parse).
    pub fn unknown() -> Origin<'static> {
        Origin::default()
    }

    /// The same, about a call to `target`.
    pub fn target(self, target: &'a str) -> Origin<'a> {
        Origin {
            target: Some(target),
            ..self
        }
    }

    /// The same, about a call of `method` (its gRPC path).
    pub fn method(self, method: &'a str) -> Origin<'a> {
        Origin {
            method: Some(method),
            ..self
        }
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resty_grpc_zc: instance {}:",
            self.instance.unwrap_or("?")
        )?;
        if let Some(t) = self.target {
            write!(f, " target {t}")?;
        }
        if let Some(m) = self.method {
            write!(f, " method {m}")?;
        }
        if self.target.is_some() || self.method.is_some() {
            f.write_str(":")?;
        }
        Ok(())
    }
}

/// The text of a line: its origin, then `text`.
pub fn line(origin: &Origin<'_>, text: fmt::Arguments<'_>) -> String {
    let mut s = String::with_capacity(96);
    // Writing into a String cannot fail.
    let _ = write!(s, "{origin} {text}");
    s
}

/// Logs one line (use [`log!`](crate::log!)): to the host's log when it has one, else to stderr
/// as `[level] line`.
pub fn write(level: Level, origin: &Origin<'_>, text: fmt::Arguments<'_>) {
    let line = line(origin, text);
    if host::log(level as i32, line.as_bytes()).is_none() {
        eprintln!("[{}] {line}", level.name());
    }
}

/// Logs a line: `log!(Level, origin, "format", args...)`, `Level` one of `Alert`, `Error`,
/// `Warn`, `Info`, `origin` a [`log::Origin`](Origin).
#[macro_export]
macro_rules! log {
    ($level:ident, $origin:expr, $($text:tt)+) => {
        $crate::log::write($crate::log::Level::$level, &$origin, format_args!($($text)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_instance_then_target_and_method_when_known() {
        let o = Origin::instance("w1");
        assert_eq!(
            line(&o, format_args!("finished")),
            "resty_grpc_zc: instance w1: finished"
        );
        assert_eq!(
            line(
                &o.target("127.0.0.1:50051").method("/p.S/M"),
                format_args!("x {}", 1)
            ),
            "resty_grpc_zc: instance w1: target 127.0.0.1:50051 method /p.S/M: x 1"
        );
        assert_eq!(
            line(&o.method("/p.S/M"), format_args!("y")),
            "resty_grpc_zc: instance w1: method /p.S/M: y"
        );
        assert_eq!(
            line(&Origin::unknown(), format_args!("bad cfg")),
            "resty_grpc_zc: instance ?: bad cfg"
        );
    }

    #[test]
    fn levels_are_nginx_numbers_and_names() {
        let all = [
            Level::Alert,
            Level::Error,
            Level::Warn,
            Level::Notice,
            Level::Info,
        ];
        let numbers: Vec<i32> = all.iter().map(|&l| l as i32).collect();
        let names: Vec<&str> = all.iter().map(|l| l.name()).collect();
        assert_eq!(numbers, [2, 4, 5, 6, 7]);
        assert_eq!(names, ["alert", "error", "warn", "notice", "info"]);
    }

    #[test]
    fn without_the_host_export_lines_go_to_stderr() {
        // The unit test binary has no `resty_ffi_log`: the fallback path runs (and returns).
        assert!(host::log(Level::Info as i32, b"probe").is_none());
        crate::log!(Info, Origin::instance("test"), "fallback line {}", 1);
    }
}
