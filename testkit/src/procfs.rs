//! Process facts from `/proc`, and signals.

use std::fs;
use std::time::{Duration, Instant};

/// The parent pid of `pid`, from `/proc/<pid>/stat`; `None` if it is gone.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may itself contain spaces or
    // parentheses: "pid (comm) state ppid ...".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...); `None` if it is gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The command line of `pid` with NULs turned into spaces and trailing ones removed.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim_end().to_owned())
}

/// Every live (not zombie) child of `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| parent_pid(pid) == Some(parent) && state(pid) != Some('Z'))
        .collect();
    pids.sort_unstable();
    pids
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`); `None` if it is gone.
pub fn rss_kb(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z')
}

/// Waits until none of `pids` is alive; false on timeout.
pub fn wait_pids_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|&p| alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`; false if it failed (for instance, the process is gone).
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; `pid > 0` targets exactly one process,
    // never a process group.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_about_ourselves() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(rss_kb(me).unwrap() > 0);
        assert!(parent_pid(me).unwrap() > 0);
        assert!(cmdline(me).unwrap().contains("testkit"));
        assert!(children(me).is_empty() || !children(me).contains(&me));
        assert_eq!(rss_kb(-5), None);
    }
}
