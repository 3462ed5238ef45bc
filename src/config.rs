//! The `cfg` string of `ngx.load_ffi("resty_grpc_zc", cfg)`: `key=value` pairs separated by `,`.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `instance` | (required) | name under which Lua finds this instance's arena (unique per worker) |
//! | `arena_size` | `64m` | size of the shared arena mapping (`k`, `m`, `g` suffixes) |
//! | `max_message` | `4m` | largest payload, at most `64m`; the arena must hold one |
//! | `cpus` | (the worker's) | CPUs the runtime's own threads (poll thread, tokio workers) may run on: numbers and ranges separated by `:`, e.g. `1`, `2-3`, `1:3` |
//! | `busy_poll_us` | `500` | while gRPC operations are in flight, the longest the poll thread keeps polling the network after its last task (yielding its CPU to any other runnable thread between polls) before it sleeps, backing off after windows that saw no answer; `0` turns it off. Only where the poll thread is the event loop (a host with asynchronous polling, as this project's) |
//! | `busy_poll` | `adaptive` | `adaptive`: measure both ways as it runs, polling from the last task and sleeping, and serve most answers the cheaper way by CPU + waiting per answer (src/runtime/trial.rs); under a cgroup CPU quota poll from the last task (measured cheaper there than sleeping: docs/benchmarks.md); `fixed`: always poll from the last task for up to `busy_poll_us`, backing off after windows that catch nothing (src/runtime/busy.rs); `ahead`: sleep until shortly before the answers it has learned to expect and poll from there (measured slower and dearer on these VMs; docs/benchmarks.md); `off` |

use std::fmt;
use std::io;
use std::time::Duration;

/// Parsed runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub instance: String,
    pub arena_size: usize,
    pub max_message: usize,
    /// CPUs for the runtime's threads; `None`: they inherit the worker's affinity.
    pub cpus: Option<CpuList>,
    /// How long the poll thread busy-polls for answers after its last task (see the module's
    /// table); zero: it sleeps as soon as it has nothing to do.
    pub busy_poll: Duration,
    /// How the busy-polling window is placed (`busy_poll`).
    pub busy_poll_mode: BusyPollMode,
}

/// `busy_poll`: how the poll thread places its busy-polling windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPollMode {
    /// The default: from the last task, with the back-off, or not at all, whichever way
    /// measures cheaper per answer as the loop runs (`runtime/trial.rs`); under a cgroup CPU
    /// quota, from the last task.
    Adaptive,
    /// Always from the last task, for the whole `busy_poll_us`, with the back-off.
    Fixed,
    /// Ahead of the learned answer times, woken by a timer.
    Ahead,
    /// Never.
    Off,
}

/// `busy_poll_us` default: a gRPC round trip to a server on the same host or rack fits in it.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(500);
/// `busy_poll_us` ceiling (1 s).
const MAX_BUSY_POLL_US: u64 = 1_000_000;

/// A set of CPUs for `sched_setaffinity`, parsed from `1`, `2-3`, `0:2-3` (`,` separates cfg
/// pairs, so list items are separated by `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// Parses a CPU list; CPUs must be below `CPU_SETSIZE` (1024).
    pub fn parse(v: &str) -> Result<CpuList, ConfigError> {
        let bad = || {
            ConfigError(format!(
                "cpus: bad CPU list {v:?} (want e.g. 1, 2-3, 0:2-3)"
            ))
        };
        let mut cpus = Vec::new();
        for item in v.split(':').map(str::trim) {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
                None => (item.parse::<usize>(), item.parse::<usize>()),
            };
            let (lo, hi) = (lo.map_err(|_| bad())?, hi.map_err(|_| bad())?);
            if lo > hi || hi >= libc::CPU_SETSIZE as usize {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        }
        CpuList::new(cpus)
    }

    /// A list of `cpus` (in any order, repeats allowed); every CPU must be below `CPU_SETSIZE`.
    pub fn new(cpus: impl IntoIterator<Item = usize>) -> Result<CpuList, ConfigError> {
        let mut cpus: Vec<usize> = cpus.into_iter().collect();
        if let Some(c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
            return Err(ConfigError(format!(
                "cpus: CPU {c} is not below {}",
                libc::CPU_SETSIZE
            )));
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Restricts the calling thread to these CPUs (threads it starts later inherit the mask).
    pub fn pin_current_thread(&self) -> io::Result<()> {
        // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &self.0 {
            // SAFETY: `new` keeps every CPU below CPU_SETSIZE, so CPU_SET stays inside `set`.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: `set` is an initialized cpu_set_t of the size passed; pid 0 is the calling
        // thread, whose affinity only the runtime's own thread setup changes.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            write!(f, "{}{c}", if i == 0 { "" } else { ":" })?;
        }
        Ok(())
    }
}

use crate::arena::MAX_MESSAGE_LIMIT;

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: String::new(),
            arena_size: 64 << 20,
            max_message: 4 << 20,
            cpus: None,
            busy_poll: DEFAULT_BUSY_POLL,
            busy_poll_mode: BusyPollMode::Adaptive,
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

fn busy_poll(v: &str) -> Result<Duration, ConfigError> {
    match v.parse::<u64>() {
        Ok(us) if us <= MAX_BUSY_POLL_US => Ok(Duration::from_micros(us)),
        _ => Err(ConfigError(format!(
            "busy_poll_us: bad value {v:?} (want microseconds, 0 to {MAX_BUSY_POLL_US})"
        ))),
    }
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
                "cpus" => c.cpus = Some(CpuList::parse(v)?),
                "busy_poll_us" => c.busy_poll = busy_poll(v)?,
                "busy_poll" => {
                    c.busy_poll_mode = match v {
                        "adaptive" => BusyPollMode::Adaptive,
                        "fixed" => BusyPollMode::Fixed,
                        "ahead" => BusyPollMode::Ahead,
                        "off" => BusyPollMode::Off,
                        _ => {
                            return Err(ConfigError(format!(
                                "busy_poll: bad value {v:?} (want adaptive, fixed, ahead or off)"
                            )))
                        }
                    }
                }
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
        assert_eq!(d.cpus, None);
        assert_eq!(d.busy_poll, DEFAULT_BUSY_POLL);
        assert_eq!(d.busy_poll_mode, BusyPollMode::Adaptive);
        let c = Config::parse("instance=x,busy_poll=fixed").unwrap();
        assert_eq!(c.busy_poll_mode, BusyPollMode::Fixed);
        let c = Config::parse("instance=x,busy_poll=ahead").unwrap();
        assert_eq!(c.busy_poll_mode, BusyPollMode::Ahead);
        let c = Config::parse("instance=x,busy_poll=off").unwrap();
        assert_eq!(c.busy_poll_mode, BusyPollMode::Off);
        assert!(Config::parse("instance=x,busy_poll=sometimes").is_err());
        let c = Config::parse("instance=x,busy_poll_us=0").unwrap();
        assert_eq!(c.busy_poll, Duration::ZERO);
        let c = Config::parse("instance=x,busy_poll_us=1000000").unwrap();
        assert_eq!(c.busy_poll, Duration::from_secs(1));
    }

    #[test]
    fn parses_cpu_lists() {
        let c = Config::parse("instance=w1,cpus=1").unwrap();
        assert_eq!(c.cpus.unwrap().cpus(), &[1]);
        let c = Config::parse("instance=w1,cpus=4-5:0:5").unwrap();
        let cpus = c.cpus.unwrap();
        assert_eq!(cpus.cpus(), &[0, 4, 5]);
        assert_eq!(cpus.to_string(), "0:4:5");
        for bad in [
            "cpus=",
            "cpus=x",
            "cpus=3-1",
            "cpus=1:",
            "cpus=1024",
            "cpus=-1",
        ] {
            assert!(
                Config::parse(&format!("instance=x,{bad}")).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn cpu_list_from_numbers() {
        assert_eq!(CpuList::new([3, 1, 1]).unwrap().cpus(), [1, 3]);
        assert_eq!(
            CpuList::new([3, 1]).unwrap(),
            CpuList::parse("1:3").unwrap()
        );
        assert!(CpuList::new([libc::CPU_SETSIZE as usize]).is_err());
    }

    #[test]
    fn pins_the_calling_thread() {
        // Pin a scratch thread to the first CPU this process may use, and read it back.
        std::thread::spawn(|| {
            // SAFETY: zeroed cpu_set_t is valid; pid 0 is this thread.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` is writable and of the size passed.
            let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
            assert_eq!(rc, 0);
            // SAFETY: every index is below CPU_SETSIZE.
            let first = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
                .unwrap();
            CpuList::parse(&first.to_string())
                .unwrap()
                .pin_current_thread()
                .unwrap();
            // SAFETY: as above.
            let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
            assert_eq!(rc, 0);
            // SAFETY: `set` is initialized; `first` is below CPU_SETSIZE.
            unsafe {
                assert_eq!(libc::CPU_COUNT(&set), 1);
                assert!(libc::CPU_ISSET(first, &set));
            }
        })
        .join()
        .unwrap();
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
            "instance=x,busy_poll_us=-1",
            "instance=x,busy_poll_us=1000001",
            "instance=x,busy_poll_us=5ms",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
