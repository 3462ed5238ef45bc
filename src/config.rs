//! The `cfg` string of `ngx.load_ffi("resty_grpc_zc", cfg)`: `key=value` pairs separated by `,`.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `instance` | (required) | name under which Lua finds this instance's arena (unique per worker) |
//! | `arena_size` | `64m` | size of the shared arena mapping (`k`, `m`, `g` suffixes) |
//! | `max_message` | `4m` | largest payload, at most `64m`; the arena must hold one |

use std::fmt;

/// Parsed runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub instance: String,
    pub arena_size: usize,
    pub max_message: usize,
}

use crate::arena::MAX_MESSAGE_LIMIT;

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: String::new(),
            arena_size: 64 << 20,
            max_message: 4 << 20,
        }
    }
}

/// A refused cfg string, with the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resty_grpc_zc cfg: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn size(key: &str, v: &str) -> Result<usize, ConfigError> {
    let bad = || ConfigError(format!("{key}: bad size {v:?} (want e.g. 4096, 64k, 4m)"));
    let (num, mult) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1usize << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

impl Config {
    /// Parses and validates a cfg string.
    pub fn parse(cfg: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for pair in cfg.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| ConfigError(format!("malformed pair {pair:?} (want key=value)")))?;
            match k {
                "instance" => c.instance = v.to_owned(),
                "arena_size" => c.arena_size = size(k, v)?,
                "max_message" => c.max_message = size(k, v)?,
                _ => return Err(ConfigError(format!("unknown key {k:?}"))),
            }
        }
        if c.instance.is_empty() {
            return Err(ConfigError("instance=<name> is required".into()));
        }
        if c.max_message == 0 || c.max_message > MAX_MESSAGE_LIMIT {
            return Err(ConfigError(format!(
                "max_message must be between 1 and {MAX_MESSAGE_LIMIT}"
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_defaults() {
        let c = Config::parse("instance=w1, arena_size=128m,max_message=64k").unwrap();
        assert_eq!(c.instance, "w1");
        assert_eq!(c.arena_size, 128 << 20);
        assert_eq!(c.max_message, 64 << 10);
        let d = Config::parse("instance=x").unwrap();
        assert_eq!((d.arena_size, d.max_message), (64 << 20, 4 << 20));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "arena_size=1m",
            "instance=x,arena_size=12q",
            "instance=x,max_message=65m",
            "instance=x,max_message=0",
            "instance=x,nope=1",
            "instance=x,novalue",
            "instance=x,arena_size=99999999999999999999g",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
