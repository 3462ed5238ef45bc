//! One runtime instance per `ngx.load_ffi("resty_grpc_zc", cfg)` in a worker: its arena, its
//! calls in flight, and the poll thread that serves the host queue. This module holds the
//! instance and the registry Lua finds it in, and what Lua calls on it directly (begin and
//! finish a call, stats, cancel a stream); the rest lives in one room per job:
//!
//! | file | job |
//! |---|---|
//! | `serve.rs` | the poll thread's two loops; one task: take → claim → run → answer / launch |
//! | `command.rs` | wire command → operation (the message `Bytes` over the request slot) |
//! | `reply.rs` | replies written into arena slots and handed to the call; a gRPC result's reply |
//! | `answer.rs` | how a task is answered: the rc codes and [`Answer`] |
//! | `calls.rs` | the call table: which slots a call holds, and who frees them |
//! | `busy.rs` | when the event loop busy-polls the network instead of sleeping |
//! | `trial.rs` | the default plan's experiment: polling against sleeping, by cost per answer |
//!
//! ```text
//! poll thread: task ─► Desc ─► claim request slot ─► verify envelope ─► command
//!                                                                   │ Echo: reply around the
//!                                                                   │ payload, in its slot
//!              respond(Desc of reply) ◄── calls.replied ◄───────────┘
//! ```
#![forbid(unsafe_code)]

mod answer;
mod busy;
mod calls;
mod command;
mod reply;
mod serve;
mod trial;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Instant;

use crate::arena::{Arena, ArenaConfig, Handle, Stats};
use crate::config::Config;
use crate::grpc::Grpc;
use crate::log::{self, Origin};
use crate::queue::TaskQueue;

pub use answer::{Answer, RC_ABANDONED, RC_BAD_REQUEST, RC_EXHAUSTED};
use calls::Calls;
pub(crate) use calls::Finished;

/// Room for the envelope around a message of `max_message` bytes: the arena's largest slot is
/// this much bigger, so a payload of exactly `max_message` fits (except at the 64 MiB limit,
/// where the largest payload is 64 MiB - 4 KiB). `lua/resty/grpc_zc/lib.lua` has the same
/// `ENVELOPE_SLACK` and subtracts it from the arena header's `max_message`.
pub const ENVELOPE_SLACK: usize = 4096;

/// tokio worker threads per instance (network I/O; the poll thread stays separate).
const GRPC_THREADS: usize = 1;

/// Calls the table holds without reallocating (more still work; they allocate).
const CALLS_CAPACITY: usize = 4096;

/// A gRPC operation running: its abort handle and the stream it works on.
type Running = (tokio::task::AbortHandle, Option<u64>);

/// A runtime instance: shared by its poll thread and the Lua side (through `src/ffi`).
pub struct Instance {
    pub(crate) config: Config,
    pub(crate) arena: Arena,
    calls: Calls,
    grpc: OnceLock<Grpc>,
    /// gRPC operations running, by call key, to cancel them (and the stream they work on)
    /// when Lua gives up.
    running: Mutex<HashMap<u64, Running>>,
    /// The poll thread's event loop, when the host can be polled asynchronously: gRPC calls run
    /// on it, so a call goes nginx → this thread → nginx with no other hand-off.
    io: OnceLock<tokio::runtime::Handle>,
    /// gRPC operations finished so far (busy polling judges its windows by it).
    finished: AtomicU64,
    /// Their times from launch to finish, each capped (`wait_cap`): the measured plan weighs
    /// them, and tells noise from a difference by their squares (only summed under it).
    waits: trial::SampleSums,
    /// The times from an answer to the next launch, capped the same way: the part of a call
    /// the runtime does not see (the nginx thread, Lua, the host queue), where calls follow
    /// answers (only under the measured plan).
    gaps: trial::SampleSums,
    /// The part of those gaps beyond the cap, in ns: time nothing was asked (only under the
    /// measured plan).
    idle_ns: AtomicU64,
    /// Those gaps of at least `trial::PAUSE`: lulls after which the load may differ (only
    /// under the measured plan).
    pauses: AtomicU64,
    /// When the last operation finished, in ns after `epoch` (`u64::MAX`: none since the last
    /// launch; only under the measured plan).
    last_finish_ns: AtomicU64,
    /// Time the poll thread has spent busy-polling, in ns.
    busy_polled_ns: AtomicU64,
    /// When the first operation finished since busy polling last looked, in ns after
    /// `epoch` (`u64::MAX`: none did).
    first_finish_ns: AtomicU64,
    epoch: Instant,
    /// The CPUs of the thread that started the instance (the nginx worker's main thread).
    worker_cpus: Vec<usize>,
    /// How the poll thread busy-polls (`busy.rs`), once it has chosen.
    busy_plan: OnceLock<busy::Plan>,
}

/// Every instance of this process, by name, for Lua to find. Instances live until the process
/// exits: Lua keeps raw pointers to them.
static INSTANCES: Mutex<Vec<Arc<Instance>>> = Mutex::new(Vec::new());

/// Why an instance could not start.
#[derive(Debug)]
pub struct StartError(pub(crate) String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Instance {
    /// Creates an instance (its arena and call table) without serving any queue.
    pub fn new(config: Config) -> Result<Arc<Instance>, StartError> {
        let arena = Arena::new(ArenaConfig {
            size: config.arena_size,
            max_message: (config.max_message + ENVELOPE_SLACK).min(crate::arena::MAX_MESSAGE_LIMIT),
        })
        .map_err(|e| StartError(format!("arena: {e}")))?;
        Ok(Arc::new(Instance {
            config,
            arena,
            calls: Calls::with_capacity(CALLS_CAPACITY),
            grpc: OnceLock::new(),
            running: Mutex::new(HashMap::new()),
            io: OnceLock::new(),
            finished: AtomicU64::new(0),
            waits: trial::SampleSums::default(),
            gaps: trial::SampleSums::default(),
            idle_ns: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            last_finish_ns: AtomicU64::new(u64::MAX),
            busy_polled_ns: AtomicU64::new(0),
            first_finish_ns: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            worker_cpus: crate::cpu::current_affinity().unwrap_or_default(),
            busy_plan: OnceLock::new(),
        }))
    }

    /// Creates the instance, registers it under its name and starts its poll thread.
    pub fn start(config: Config, queue: TaskQueue) -> Result<Arc<Instance>, StartError> {
        let inst = Instance::new(config)?;
        let served = inst.clone();
        let (pinned_tx, pinned) = std::sync::mpsc::channel();
        thread::Builder::new()
            .name("grpc_zc-poll".into())
            .spawn(move || {
                // cfg `cpus`: the poll thread first (threads it starts inherit the mask).
                let pin = served.config.cpus.as_ref().map(|c| c.pin_current_thread());
                let _ = pinned_tx.send(pin);
                // Serve even when pinning failed: the host still appends its finish marker.
                served.poll_thread(queue)
            })
            .map_err(|e| StartError(format!("cannot start the poll thread: {e}")))?;
        if let Ok(Some(Err(e))) = pinned.recv() {
            return Err(StartError(format!(
                "cpus={}: sched_setaffinity: {e}",
                inst.config
                    .cpus
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            )));
        }
        INSTANCES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(inst.clone());
        Ok(inst)
    }

    /// The instance's arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The most recent instance registered under `name`.
    pub fn find(name: &str) -> Option<Arc<Instance>> {
        INSTANCES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|i| i.config.instance == name)
            .cloned()
    }

    /// Where this instance's log lines come from.
    pub fn origin(&self) -> Origin<'_> {
        log::Origin::instance(&self.config.instance)
    }

    /// Arena usage figures.
    pub fn stats(&self) -> Stats {
        self.arena.stats()
    }

    /// Calls tracked (leased by Lua and not yet finished).
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Lua: leases a request slot for a new call.
    pub fn begin_call(&self, len: usize) -> Result<Handle, crate::arena::ArenaError> {
        let h = self.arena.lease_raw(len)?;
        self.calls.begin(&h);
        Ok(h)
    }

    /// Lua: finished with a call (reply read, or error seen).
    pub fn finish_call(&self, req: &Handle, posted: bool, abandoned: bool) {
        if abandoned {
            let running = self.running().remove(&calls::key(req));
            if let Some((abort, stream_id)) = running {
                // Lua gave up on a call still on the wire: cancel it (RST_STREAM CANCEL), and
                // the stream it worked on, as grpc-go cancels a stream with its context. The
                // task is dropped, which answers the host; the call's entry goes here.
                abort.abort();
                if let Some(id) = stream_id {
                    self.cancel_stream(id);
                }
                self.calls.failed(req);
                return;
            }
        }
        let what = if abandoned || !posted {
            self.calls.abandon(req, posted)
        } else {
            self.calls.done(req)
        };
        match what {
            Finished::Nothing => {}
            Finished::Reply(h) => {
                let _ = self.arena.release(h);
            }
            Finished::Request => {
                let _ = self.arena.release(*req);
            }
        }
    }

    /// The gRPC operations running, by call key (the abort bookkeeping).
    fn running(&self) -> MutexGuard<'_, HashMap<u64, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No gRPC operation is waiting on the network.
    fn idle(&self) -> bool {
        self.running().is_empty()
    }

    /// The instance's gRPC runtime, started on first use.
    fn grpc(&self) -> Result<&Grpc, Answer> {
        if let Some(g) = self.grpc.get() {
            return Ok(g);
        }
        let max_message = self.arena.max_message() - ENVELOPE_SLACK;
        let g = match self.io.get() {
            Some(rt) => Grpc::with_handle(
                self.arena.clone(),
                &self.config.instance,
                max_message,
                rt.clone(),
            ),
            None => Grpc::new(
                self.arena.clone(),
                &self.config.instance,
                max_message,
                GRPC_THREADS,
                self.config.cpus.clone(),
            )
            .map_err(|e| Answer::Error(RC_EXHAUSTED, format!("cannot start tokio: {e}")))?,
        };
        Ok(self.grpc.get_or_init(|| g))
    }

    /// Cancels (and forgets) a stream; false when it is unknown.
    pub fn cancel_stream(&self, stream_id: u64) -> bool {
        self.grpc.get().is_some_and(|g| g.cancel_stream(stream_id))
    }

    /// How the poll thread busy-polls: `off`, `from the last task`, `measured (...)`, `ahead of
    /// the answers` (None until its event loop has started).
    pub fn busy_plan(&self) -> Option<&'static str> {
        self.busy_plan.get().map(|p| p.name())
    }

    /// The longest a wait or a gap counts for the measured plan: 64 windows, at most 100 ms.
    /// A call's wait is its latency as the runtime sees it, windows beyond the one polling
    /// covers included: where calls queue (16 in flight, each 35-50 µs, waits of 0.6-0.9 ms)
    /// polling shortens them all, and a cap at one window hid that (calls took 52 % longer
    /// measured). The cap keeps a stream waiting seconds for its peer from swamping a stretch.
    fn wait_cap(&self) -> std::time::Duration {
        (self.config.busy_poll * 64).min(std::time::Duration::from_millis(100))
    }

    /// When an operation launched now began, if the plan weighs how long operations wait
    /// (only the measured plan pays for reading the clock). The first launch after an answer
    /// adds the gap since it.
    fn launched_at(&self) -> Option<Instant> {
        if self.busy_plan.get() != Some(&busy::Plan::Measured) {
            return None;
        }
        let now = Instant::now();
        let last = self.last_finish_ns.swap(u64::MAX, Ordering::Relaxed);
        if last != u64::MAX {
            let at = self.epoch + std::time::Duration::from_nanos(last);
            let gap = now.saturating_duration_since(at);
            let cap = self.wait_cap();
            self.gaps.add(gap.min(cap));
            if let Some(idle) = gap.checked_sub(cap) {
                let ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
                self.idle_ns.fetch_add(ns, Ordering::Relaxed);
            }
            if gap >= trial::PAUSE {
                self.pauses.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(now)
    }

    /// An operation launched at `began` (see `launched_at`) finished now. Only the `ahead`
    /// plan learns answer times (from the first one to finish), so only it pays for reading
    /// the clock for that.
    fn finished_one(&self, began: Option<Instant>) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        if let Some(began) = began {
            // One clock read for both: when it finished, and how long it took.
            let now = Instant::now();
            let since_epoch = now.saturating_duration_since(self.epoch).as_nanos();
            let ns = u64::try_from(since_epoch).unwrap_or(u64::MAX - 1);
            self.last_finish_ns.store(ns, Ordering::Relaxed);
            self.waits
                .add(now.saturating_duration_since(began).min(self.wait_cap()));
        }
        if self.busy_plan.get() == Some(&busy::Plan::Ahead) {
            let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.first_finish_ns.fetch_min(ns, Ordering::Relaxed);
        }
    }

    /// The counters busy polling judges by, as they stand (the first finish taken).
    fn seen(&self) -> trial::Seen {
        trial::Seen {
            finished: self.finished.load(Ordering::Relaxed),
            waits: self.waits.load(),
            gaps: self.gaps.load(),
            idle_ns: self.idle_ns.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            first_finish: self.take_first_finish(),
        }
    }

    /// gRPC operations running now.
    fn in_flight(&self) -> usize {
        self.running().len()
    }

    /// When the first operation finished since the last call, if one did.
    fn take_first_finish(&self) -> Option<Instant> {
        if self.busy_plan.get() != Some(&busy::Plan::Ahead) {
            return None;
        }
        match self.first_finish_ns.swap(u64::MAX, Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(self.epoch + std::time::Duration::from_nanos(ns)),
        }
    }

    /// Microseconds the poll thread has spent busy-polling (`busy_poll_us`) so far.
    pub fn busy_polled_us(&self) -> u64 {
        self.busy_polled_ns.load(Ordering::Relaxed) / 1000
    }

    /// Streams open in this instance.
    pub fn streams_open(&self) -> usize {
        self.grpc.get().map_or(0, |g| g.streams_open())
    }
}
