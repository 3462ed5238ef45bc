//! Lines for nginx's error log, from any thread, in nginx's own format.
//!
//! nginx's logger (`ngx_log_error_core`) may only run on the worker's main thread. So a line
//! logged there is written at once, and a line from any other thread is copied into a bounded
//! list and the host's eventfd is signalled; its handler, on the main thread, calls [`drain`].
//! Either way the line reaches `ngx_cycle->log` as `2026/12/01 20:56:20 [error] 1234#1234: text`
//! and obeys the `error_log` level.
//!
//! ```text
//! any thread ── write ──► LineList (≤ 1024 lines; full: dropped, counted) ── wake::signal
//!                                                                               │
//! main thread ◄── ngx_log_error_core ◄── drain ("N log lines dropped" first) ◄──┘
//! main thread ── write ──► ngx_log_error_core
//! ```
//!
//! Before the host attached to the event loop ([`open`]) and after the worker-exit cleanup
//! ([`close`], which drains what is pending) lines go to stderr as `[level] text`: nginx points
//! a worker's stderr at its error log.
//!
//! This module does not call nginx itself: [`open`] is given the function that does (the
//! `nginx` module's), so the bounded list and its counting run in plain unit tests.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::wake;

/// Lines waiting for the main thread, at most.
pub(crate) const CAPACITY: usize = 1024;
/// Bytes of a line that are kept: nginx cuts a whole error-log line at `NGX_MAX_ERROR_STR`
/// (2048 bytes) anyway.
pub(crate) const MAX_LINE: usize = 2048;

/// A severity in nginx's numbering (`NGX_LOG_ALERT` 2 … `NGX_LOG_DEBUG` 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Level(u8);

impl Level {
    pub(crate) const ALERT: Level = Level(2);
    pub(crate) const ERROR: Level = Level(4);

    /// A level from C: anything outside 2..=8 is clamped into it (`NGX_LOG_EMERG` and
    /// `NGX_LOG_STDERR` are nginx's own).
    pub(crate) fn from_raw(level: i32) -> Level {
        Level(level.clamp(2, 8) as u8)
    }

    /// nginx's number of the level.
    pub(crate) fn raw(self) -> u8 {
        self.0
    }

    /// nginx's name of the level, as in `[error]`.
    pub(crate) fn name(self) -> &'static str {
        ["alert", "crit", "error", "warn", "notice", "info", "debug"][usize::from(self.0 - 2)]
    }
}

/// One line copied for the main thread.
struct Line {
    level: Level,
    text: Box<[u8]>,
}

/// What [`LineList::push`] did with a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for the main thread.
    Queued,
    /// The list was full: dropped and counted.
    Dropped,
    /// The list is not open (before [`open`] or after [`close`]): the caller writes it itself.
    Closed,
}

struct Lines {
    open: bool,
    lines: Vec<Line>,
}

/// A bounded list of lines with a count of the lines it refused.
pub(crate) struct LineList {
    inner: Mutex<Lines>,
    capacity: usize,
    dropped: AtomicU64,
}

impl LineList {
    /// A closed list that holds up to `capacity` lines once open.
    pub(crate) const fn new(capacity: usize) -> LineList {
        LineList {
            inner: Mutex::new(Lines {
                open: false,
                lines: Vec::new(),
            }),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        // The guarded state is a plain list that a panic cannot leave half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on [`LineList::push`] queues lines.
    pub(crate) fn open(&self) {
        self.lock().open = true;
    }

    /// Copies a line into the list (the copy is made before the lock is taken).
    pub(crate) fn push(&self, level: Level, text: &[u8]) -> Pushed {
        let line = Line {
            level,
            text: text.into(),
        };
        let mut inner = self.lock();
        if !inner.open {
            return Pushed::Closed;
        }
        if inner.lines.len() >= self.capacity {
            drop(inner);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Pushed::Dropped;
        }
        inner.lines.push(line);
        Pushed::Queued
    }

    /// Hands every queued line to `sink`, in order, outside the lock; first a line
    /// `resty_ffi: N log lines dropped` when lines were refused since the last drain.
    pub(crate) fn drain(&self, sink: impl FnMut(Level, &[u8])) {
        let lines = std::mem::take(&mut self.lock().lines);
        self.deliver(lines, sink);
    }

    /// [`LineList::drain`], and the list takes no more lines (they go to the caller's fallback).
    pub(crate) fn close(&self, sink: impl FnMut(Level, &[u8])) {
        let lines = {
            let mut inner = self.lock();
            inner.open = false;
            std::mem::take(&mut inner.lines)
        };
        self.deliver(lines, sink);
    }

    fn deliver(&self, lines: Vec<Line>, mut sink: impl FnMut(Level, &[u8])) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let text = format!("resty_ffi: {dropped} log lines dropped");
            sink(Level::ERROR, text.as_bytes());
        }
        for line in lines {
            sink(line.level, &line.text);
        }
    }
}

/// Writes one line through nginx's logger; main thread only.
pub(crate) type Writer = fn(Level, &[u8]);

/// The lines of this worker.
static LINES: LineList = LineList::new(CAPACITY);
/// nginx's logger, given to [`open`].
static WRITER: OnceLock<Writer> = OnceLock::new();

thread_local! {
    /// Set on the nginx main thread by [`open`]: lines logged here are written at once.
    static ON_MAIN: Cell<bool> = const { Cell::new(false) };
}

/// Main thread, when the host attached to the event loop (its eventfd is set): lines are
/// written with `writer` from now on.
pub(crate) fn open(writer: Writer) {
    ON_MAIN.with(|m| m.set(true));
    WRITER.get_or_init(|| writer);
    LINES.open();
}

/// Main thread, in the eventfd handler: writes the lines other threads queued.
pub(crate) fn drain() {
    LINES.drain(to_log);
}

/// Main thread, in the worker-exit cleanup: writes what is pending; later lines go to stderr.
pub(crate) fn close() {
    LINES.close(to_log);
}

/// Main thread: nginx's logger once [`open`] gave it, else stderr.
fn to_log(level: Level, text: &[u8]) {
    match WRITER.get() {
        Some(writer) => writer(level, text),
        None => to_stderr(level, text),
    }
}

/// Any thread: logs `text` (cut at [`MAX_LINE`] bytes). Returns false when it was dropped.
pub(crate) fn write(level: Level, text: &[u8]) -> bool {
    let text = &text[..text.len().min(MAX_LINE)];
    if ON_MAIN.with(Cell::get) {
        if LINES.lock().open {
            to_log(level, text);
        } else {
            to_stderr(level, text);
        }
        return true;
    }
    match LINES.push(level, text) {
        Pushed::Queued => {
            wake::signal();
            true
        }
        Pushed::Dropped => false,
        Pushed::Closed => {
            to_stderr(level, text);
            true
        }
    }
}

/// Any thread: one of the host's own lines, `resty_ffi: msg`.
pub(crate) fn host(level: Level, msg: &str) {
    write(level, format!("resty_ffi: {msg}").as_bytes());
}

/// Any thread: `[level] text` on stderr.
fn to_stderr(level: Level, text: &[u8]) {
    eprintln!("[{}] {}", level.name(), String::from_utf8_lossy(text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn collect(list: &LineList) -> Vec<(Level, String)> {
        let mut out = Vec::new();
        list.drain(|level, text| out.push((level, String::from_utf8_lossy(text).into_owned())));
        out
    }

    #[test]
    fn levels_are_clamped_and_named() {
        assert_eq!(Level::from_raw(-5), Level::ALERT);
        assert_eq!(Level::from_raw(0), Level::ALERT);
        assert_eq!(Level::from_raw(4), Level::ERROR);
        assert_eq!(Level::from_raw(99).name(), "debug");
        let names: Vec<_> = (2..=8).map(|l| Level::from_raw(l).name()).collect();
        assert_eq!(
            names,
            ["alert", "crit", "error", "warn", "notice", "info", "debug"]
        );
    }

    #[test]
    fn closed_until_opened_and_after_close() {
        let list = LineList::new(4);
        assert_eq!(list.push(Level::from_raw(5), b"early"), Pushed::Closed);
        list.open();
        assert_eq!(list.push(Level::from_raw(5), b"a"), Pushed::Queued);
        let mut closed = Vec::new();
        list.close(|_, text| closed.push(text.to_vec()));
        assert_eq!(closed, [b"a".to_vec()], "close drains what is pending");
        assert_eq!(list.push(Level::from_raw(5), b"late"), Pushed::Closed);
        assert!(collect(&list).is_empty());
    }

    #[test]
    fn full_list_drops_and_counts_then_reports_first() {
        let list = LineList::new(3);
        list.open();
        for i in 0..5 {
            let want = if i < 3 {
                Pushed::Queued
            } else {
                Pushed::Dropped
            };
            assert_eq!(
                list.push(Level::from_raw(7), format!("l{i}").as_bytes()),
                want
            );
        }
        let got = collect(&list);
        assert_eq!(
            got,
            [
                (Level::ERROR, "resty_ffi: 2 log lines dropped".to_owned()),
                (Level::from_raw(7), "l0".to_owned()),
                (Level::from_raw(7), "l1".to_owned()),
                (Level::from_raw(7), "l2".to_owned()),
            ]
        );
        // The count starts again, and the list has room again.
        assert_eq!(list.push(Level::ALERT, b"next"), Pushed::Queued);
        assert_eq!(collect(&list), [(Level::ALERT, "next".to_owned())]);
    }

    #[test]
    fn concurrent_writers_lose_nothing_uncounted() {
        let list = Arc::new(LineList::new(CAPACITY));
        list.open();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let list = list.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|i| {
                            list.push(Level::from_raw(5), format!("{t}:{i}").as_bytes())
                                == Pushed::Queued
                        })
                        .count()
                })
            })
            .collect();
        let queued: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let got = collect(&list);
        assert_eq!(queued, CAPACITY);
        assert_eq!(got.len(), CAPACITY + 1);
        assert_eq!(
            got[0].1,
            format!("resty_ffi: {} log lines dropped", 4000 - CAPACITY)
        );
    }

    #[test]
    fn off_the_main_thread_before_open_goes_to_stderr() {
        // The worker's list is closed in a test process: the line is written, not queued.
        assert!(write(Level::from_raw(5), b"resty_ffi test: to stderr"));
        assert!(collect(&LINES).is_empty());
    }
}
