//! Where the runtime runs and what it spends: the CPUs a thread may use, the CPU quota of its
//! cgroup (both logged with the busy-polling plan), and the process's CPU time (the adaptive
//! plan weighs polling against sleeping by it).
//!
//! Read by hand from `sched_getaffinity`, `clock_gettime` and cgroupfs: no crate does all
//! three, and each is a few lines.

use std::fs;
use std::io;
use std::time::Duration;

/// CPU time the whole process (all its threads) has spent so far, or `None` when the clock
/// cannot be read. A system call (about 0.3 µs here): read it per stretch of answers, not per
/// answer.
pub fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a writable timespec; CLOCK_PROCESS_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// The CPUs the calling thread may run on (its affinity mask), in ascending order.
pub fn current_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every index is below CPU_SETSIZE, inside `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The CPU quota of this process's cgroup, in CPUs (`cpu.max` "50000 100000" is 0.5), or
/// `None` when there is none (`max`) or it cannot be read. cgroup v2 first, then v1's
/// `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
pub fn cgroup_quota() -> Option<f64> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_from(&cgroups, |p| fs::read_to_string(p).ok())
}

/// `cgroup_quota` over `/proc/self/cgroup`'s text and a file reader (tests give both).
fn quota_from(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<f64> {
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            // v2: "0::/path". Limits of the parents apply too; the nearest set one is taken.
            let mut p = path.to_string();
            loop {
                if let Some(q) = read(&format!("/sys/fs/cgroup{p}/cpu.max")).and_then(|s| v2(&s)) {
                    return Some(q);
                }
                match p.rfind('/') {
                    Some(i) => p.truncate(i),
                    None => break,
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for dir in ["cpu,cpuacct", "cpu"] {
                let base = format!("/sys/fs/cgroup/{dir}{path}");
                let quota = read(&format!("{base}/cpu.cfs_quota_us"));
                let period = read(&format!("{base}/cpu.cfs_period_us"));
                if let (Some(q), Some(p)) = (quota, period) {
                    return v1(&q, &p);
                }
            }
        }
    }
    None
}

/// cgroup v2 `cpu.max`: "QUOTA PERIOD" or "max PERIOD".
fn v2(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    match quota {
        "max" => None,
        q => ratio(q.parse().ok()?, period),
    }
}

/// cgroup v1: quota -1 is none.
fn v1(quota: &str, period: &str) -> Option<f64> {
    let q: f64 = quota.trim().parse().ok()?;
    let p: f64 = period.trim().parse().ok()?;
    if q < 0.0 {
        return None;
    }
    ratio(q, p)
}

fn ratio(quota: f64, period: f64) -> Option<f64> {
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p| m.get(p).cloned()
    }

    #[test]
    fn v2_quota_of_the_group_or_its_nearest_parent() {
        let read = files(&[
            ("/sys/fs/cgroup/pod/ctr/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/pod/cpu.max", "150000 100000\n"),
        ]);
        assert_eq!(quota_from("0::/pod/ctr\n", &read), Some(1.5));
        let none = files(&[("/sys/fs/cgroup/cpu.max", "max 100000\n")]);
        assert_eq!(quota_from("0::/\n", &none), None);
        assert_eq!(quota_from("0::/x\n", files(&[])), None);
    }

    #[test]
    fn process_cpu_time_counts_this_process_spinning() {
        // Spins until the clock has counted 5 ms of CPU; a clock that does not move fails
        // after 10 s of wall time (a loaded machine may give this thread little CPU).
        let before = process_cpu_time().unwrap();
        let start = std::time::Instant::now();
        let mut spent = Duration::ZERO;
        while spent < Duration::from_millis(5) && start.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
            spent = process_cpu_time().unwrap() - before;
        }
        assert!(
            spent >= Duration::from_millis(5),
            "{spent:?} in {:?}",
            start.elapsed()
        );
        assert!(spent <= start.elapsed() * 64, "{spent:?}");
    }

    #[test]
    fn v1_quota() {
        let read = files(&[
            ("/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us", "50000\n"),
            (
                "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(
            quota_from("4:memory:/job\n3:cpu,cpuacct:/job\n", &read),
            Some(0.5)
        );
        let unlimited = files(&[
            ("/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_from("3:cpu:/job\n", &unlimited), None);
    }

    #[test]
    fn this_thread_has_cpus() {
        let cpus = current_affinity().unwrap();
        assert!(!cpus.is_empty());
    }
}
