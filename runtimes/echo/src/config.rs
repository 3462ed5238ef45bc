//! The `cfg` string given to `libffi_init`: `key=value` pairs separated by `,`, and applying
//! its CPU list to a thread.
//!
//! This module knows nothing about the host; its only unsafe code is the `sched_setaffinity`
//! call of `pin_current_thread`.

use std::fmt;
use std::io;
use std::os::raw::c_int;
use std::time::Duration;

/// Shape of the response handed to `ngx_http_lua_ffi_respond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RspMode {
    /// A malloc'd copy of the request with its real length (NULL, 0 for a nil request).
    #[default]
    Echo,
    /// Always NULL, 0: Lua sees `nil`.
    Nil,
    /// A NUL-terminated malloc'd copy with `rsp_len = 0` (the C-string convention).
    CStr,
}

/// Parsed configuration of one runtime instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Respond this long after the task was polled; zero answers at once from the poll thread.
    pub delay: Duration,
    /// The rc passed to `respond`.
    pub rc: c_int,
    /// The response shape.
    pub rsp: RspMode,
    /// When set, `libffi_init` returns this value and starts nothing.
    pub init_rc: Option<c_int>,
    /// Ask the host extension `ngx_http_lua_ffi_task_cancelled` before answering a delayed task.
    pub check_cancel: bool,
    /// The poll thread sleeps this long before each poll, so tasks pile up in the host's queue
    /// (to test `max_queue`).
    pub poll_delay: Duration,
    /// CPUs the instance's threads run on (`cpus=1`, `2-3`, `0:2-3`); empty: the worker's.
    pub cpus: Vec<usize>,
}

/// Why a cfg string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A pair without `=`.
    Malformed(String),
    /// A key this runtime does not know.
    UnknownKey(String),
    /// A known key with a value it does not accept.
    BadValue { key: String, value: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Malformed(pair) => write!(f, "malformed pair {pair:?} (want key=value)"),
            ConfigError::UnknownKey(key) => write!(f, "unknown key {key:?}"),
            ConfigError::BadValue { key, value } => {
                write!(f, "bad value {value:?} for key {key:?}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses `key=value[,key=value...]`. Empty segments and spaces around keys and values are
    /// ignored; a later pair overrides an earlier one with the same key.
    pub fn parse(cfg: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for pair in cfg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| ConfigError::Malformed(pair.to_owned()))?;
            let bad = || ConfigError::BadValue {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            match key {
                "delay_ms" => {
                    config.delay = Duration::from_millis(value.parse().map_err(|_| bad())?)
                }
                "rc" => config.rc = value.parse().map_err(|_| bad())?,
                "rsp" => {
                    config.rsp = match value {
                        "nil" => RspMode::Nil,
                        "cstr" => RspMode::CStr,
                        "echo" => RspMode::Echo,
                        _ => return Err(bad()),
                    }
                }
                "init_rc" => config.init_rc = Some(value.parse().map_err(|_| bad())?),
                "check_cancel" => {
                    config.check_cancel = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad()),
                    }
                }
                "poll_delay_ms" => {
                    config.poll_delay = Duration::from_millis(value.parse().map_err(|_| bad())?)
                }
                "cpus" => config.cpus = cpu_list(value).ok_or_else(bad)?,
                "tag" => {}
                _ => return Err(ConfigError::UnknownKey(key.to_owned())),
            }
        }
        Ok(config)
    }
}

/// Largest CPU number `cpus` accepts (+1): the size of a `cpu_set_t`.
pub const MAX_CPUS: usize = 1024;

/// A CPU list: numbers and `lo-hi` ranges separated by `:` (`,` separates cfg pairs).
fn cpu_list(v: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for item in v.split(':').map(str::trim) {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ),
            None => (item.parse::<usize>().ok()?, item.parse::<usize>().ok()?),
        };
        if lo > hi || hi >= MAX_CPUS {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Restricts the calling thread to `cpus`, a list from [`Config::parse`] (nothing to do when
/// empty).
pub(crate) fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the cfg parser keeps CPUs below MAX_CPUS (CPU_SETSIZE): inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is an initialized cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse(" , ,").unwrap(), Config::default());
    }

    #[test]
    fn all_keys() {
        let c = Config::parse(
            "delay_ms=250,rc=-3,rsp=cstr,init_rc=7,check_cancel=1,poll_delay_ms=5,cpus=3:0-1,tag=x=y",
        )
        .unwrap();
        assert_eq!(
            c,
            Config {
                delay: Duration::from_millis(250),
                rc: -3,
                rsp: RspMode::CStr,
                init_rc: Some(7),
                check_cancel: true,
                poll_delay: Duration::from_millis(5),
                cpus: vec![0, 1, 3],
            }
        );
        assert_eq!(Config::parse("rsp=nil").unwrap().rsp, RspMode::Nil);
        assert_eq!(Config::parse("rsp=echo").unwrap().rsp, RspMode::Echo);
    }

    #[test]
    fn spaces_and_overrides() {
        let c = Config::parse(" rc = 1 , rc=2 ,").unwrap();
        assert_eq!(c.rc, 2);
    }

    #[test]
    fn tag_value_is_free_form() {
        assert_eq!(Config::parse("tag=").unwrap(), Config::default());
        assert_eq!(Config::parse("tag=a b&c").unwrap(), Config::default());
    }

    #[test]
    fn errors() {
        assert_eq!(
            Config::parse("bogus=1"),
            Err(ConfigError::UnknownKey("bogus".into()))
        );
        assert_eq!(
            Config::parse("rc"),
            Err(ConfigError::Malformed("rc".into()))
        );
        let bad_values = [
            "delay_ms=-1",
            "rc=abc",
            "rsp=json",
            "check_cancel=yes",
            "poll_delay_ms=x",
        ];
        let bad_cpus = ["cpus=", "cpus=a", "cpus=2-1", "cpus=1024", "cpus=1:"];
        for bad in bad_values.into_iter().chain(bad_cpus) {
            assert!(
                matches!(Config::parse(bad), Err(ConfigError::BadValue { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Config::parse("init_rc=99999999999"),
            Err(ConfigError::BadValue { .. })
        ));
    }
}
