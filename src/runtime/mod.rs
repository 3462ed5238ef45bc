//! One runtime instance per `ngx.load_ffi("resty_grpc_zc", cfg)` in a worker: its arena, its
//! calls in flight, and the poll thread that serves the host queue.
//!
//! ```text
//! poll thread: task ─► Desc ─► claim request slot ─► verify envelope ─► command
//!                                                                   │ Echo: lease reply slot,
//!                                                                   │ write Reply (one copy)
//!              respond(Desc of reply) ◄── calls.replied ◄───────────┘
//! ```

mod busy;
mod calls;

use std::ffi::c_int;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::arena::{Arena, ArenaConfig, Handle, Lease, Stats};
use crate::codec::{Inbound, INBOUND_VECTOR_AT};
use crate::config::Config;
use crate::grpc::{CallSpec, ConnectOpts, Grpc, Kind, Op, OpResult, Received};
use crate::queue::{Desc, Task, TaskQueue, TryPoll};
use crate::wire::{self, CallKind, Command, ReplyParts, Request};
use tonic::Status;

pub(crate) use calls::Finished;
use calls::{Calls, Deliver};

/// rc of a request the runtime could not use (bad descriptor, stale slot, invalid envelope).
pub const RC_BAD_REQUEST: c_int = 2;
/// rc when the arena has no room for the reply.
pub const RC_EXHAUSTED: c_int = 3;
/// rc of a call that Lua abandoned before the runtime saw it (nobody reads it).
pub const RC_ABANDONED: c_int = 4;

/// Room for the envelope around a message of `max_message` bytes: the arena's largest slot is
/// this much bigger, so a payload of exactly `max_message` fits (except at the 64 MiB limit,
/// where the largest payload is 64 MiB - 4 KiB). `resty/grpc_zc.lua` subtracts the same amount
/// from the arena header's `max_message`.
pub const ENVELOPE_SLACK: usize = 4096;

/// tokio worker threads per instance (network I/O; the poll thread stays separate).
const GRPC_THREADS: usize = 1;

/// Calls the table holds without reallocating (more still work; they allocate).
const CALLS_CAPACITY: usize = 4096;

/// How a task is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// rc 0 and the reply's descriptor.
    Reply(Desc),
    /// rc and an error text.
    Error(c_int, String),
    /// rc and no response.
    Empty(c_int),
}

impl Answer {
    fn send(self, task: Task) {
        match self {
            Answer::Reply(d) => task.respond(0, Some(&d.encode())),
            Answer::Error(rc, msg) => task.respond_error(rc, &msg),
            Answer::Empty(rc) => task.respond(rc, None),
        }
    }
}

/// Where a command's reply is.
enum Outcome {
    /// In a new slot, this long.
    New(Lease, u32),
    /// In the request's own slot, around the byte vector at `vector_at` (an echo's payload).
    InRequestSlot { vector_at: usize },
    /// A gRPC operation to run asynchronously; its message (if it has one) is `payload` bytes
    /// of the request slot.
    Grpc {
        op: Box<Op>,
        payload: std::ops::Range<usize>,
    },
}

/// What [`Instance::execute`] did.
enum Executed {
    Done(Answer),
    /// The echo test hook asked for a delay: run it again later.
    Delayed(Duration, Claimed),
    /// A gRPC operation to start; its answer comes from the tokio runtime.
    Grpc(Box<Op>, Handle),
}

/// A request whose slot the runtime owns now.
struct Claimed {
    lease: Lease,
    desc: Desc,
    req: Handle,
}

/// A runtime instance: shared by its poll thread and the Lua side (through `src/ffi`).
pub struct Instance {
    pub(crate) config: Config,
    pub(crate) arena: Arena,
    calls: Calls,
    grpc: std::sync::OnceLock<Grpc>,
    /// gRPC operations running, by call key, to cancel them (and the stream they work on)
    /// when Lua gives up.
    aborts: Mutex<std::collections::HashMap<u64, (tokio::task::AbortHandle, Option<u64>)>>,
    /// The poll thread's event loop, when the host can be polled asynchronously: gRPC calls run
    /// on it, so a call goes nginx → this thread → nginx with no other hand-off.
    io: std::sync::OnceLock<tokio::runtime::Handle>,
    /// gRPC operations finished so far (busy polling judges its windows by it).
    finished: std::sync::atomic::AtomicU64,
    /// Time the poll thread has spent busy-polling, in ns.
    busy_polled_ns: std::sync::atomic::AtomicU64,
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
            grpc: std::sync::OnceLock::new(),
            aborts: Mutex::new(std::collections::HashMap::new()),
            io: std::sync::OnceLock::new(),
            finished: std::sync::atomic::AtomicU64::new(0),
            busy_polled_ns: std::sync::atomic::AtomicU64::new(0),
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
                if queue.poll_fd().is_some() {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = served.io.set(rt.handle().clone());
                            rt.block_on(served.serve_async(queue));
                            eprintln!(
                                "resty_grpc_zc: instance {} finished",
                                served.config.instance
                            );
                            return;
                        }
                        Err(e) => eprintln!("resty_grpc_zc: no event loop ({e}): blocking poll"),
                    }
                }
                Instance::serve(&served, queue)
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
            let running = self
                .aborts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&calls::key(req));
            if let Some((a, stream)) = running {
                // Lua gave up on a call still on the wire: cancel it (RST_STREAM CANCEL), and
                // the stream it worked on, as grpc-go cancels a stream with its context. The
                // task is dropped, which answers the host; the call's entry goes here.
                a.abort();
                if let (Some(id), Some(g)) = (stream, self.grpc.get()) {
                    g.cancel_stream(id);
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

    /// The poll thread: serves tasks until the queue is finished.
    fn serve(self: &Arc<Self>, mut queue: TaskQueue) {
        while let Some(task) = queue.poll() {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(task)));
            if r.is_err() {
                // The task was answered by its Drop while unwinding.
                eprintln!(
                    "[alert] resty_grpc_zc: panic while serving a task (answered with an error)"
                );
            }
        }
        eprintln!("resty_grpc_zc: instance {} finished", self.config.instance);
    }

    /// The poll thread as an event loop (current-thread tokio runtime): serves the queued tasks,
    /// runs the gRPC calls they start, and waits on the host's eventfd when there is nothing
    /// to do. Before it sleeps it spins: while no gRPC operation is in flight, for the next
    /// task, as the blocking poll does (`poll_spin_us`); while some are, it busy-polls the
    /// network for up to `busy_poll_us` after the last task, backing off when servers answer
    /// later than that (`busy.rs`).
    async fn serve_async(self: &Arc<Self>, mut queue: TaskQueue) {
        use std::os::fd::{AsRawFd, FromRawFd};
        use tokio::io::unix::AsyncFd;
        let Some(fd) = queue.poll_fd() else {
            return;
        };
        // Our own descriptor of the host's eventfd: the host closes its own when the queue goes,
        // which may happen before this loop drops its registration.
        // SAFETY: dup of a descriptor the host keeps open at least until the finish marker.
        let own = unsafe { libc::dup(fd) };
        if own < 0 {
            eprintln!("[alert] resty_grpc_zc: cannot watch the host queue: dup failed");
            return;
        }
        // SAFETY: `own` is a fresh descriptor that nothing else owns.
        let own = unsafe { std::os::fd::OwnedFd::from_raw_fd(own) };
        let fd = own.as_raw_fd();
        // SAFETY: `own` stays open, and is the same descriptor, for as long as the AsyncFd that
        // owns it lives.
        let registered =
            unsafe { AsyncFd::register_with_interest(own, tokio::io::Interest::READABLE) };
        let afd = match registered {
            Ok(a) => a,
            Err(e) => {
                eprintln!("[alert] resty_grpc_zc: cannot watch the host queue: {e}");
                return;
            }
        };
        /// Tasks served before the calls in flight get a turn.
        const BATCH: usize = 64;
        let mut busy = busy::BusyPoll::new(self.config.busy_poll);
        let finished = || self.finished.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            let mut served = 0;
            while served < BATCH {
                match queue.try_poll() {
                    TryPoll::Task(task) => {
                        self.handle_guarded(task);
                        served += 1;
                    }
                    TryPoll::Empty => break,
                    TryPoll::Finished => return,
                }
            }
            if served > 0 {
                busy.tasks_served(finished());
                tokio::task::yield_now().await;
                continue;
            }
            if self.idle() {
                busy.all_done(finished());
                if queue.spin_poll() {
                    continue;
                }
            } else if busy.poll_again(finished()) {
                // Busy polling: a yielded event loop polls its I/O driver without sleeping, so
                // an answer is seen without the wake-up of a sleeping thread (35-70 µs between
                // vCPUs here; docs/benchmarks.md). sched_yield first lets any other thread that
                // is runnable on this CPU (the server, the nginx worker) go before us.
                let round = std::time::Instant::now();
                // SAFETY: sched_yield takes no arguments and touches no memory.
                unsafe { libc::sched_yield() };
                tokio::task::yield_now().await;
                let ns = u64::try_from(round.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.busy_polled_ns
                    .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            if !queue.arm() {
                continue;
            }
            match afd.readable().await {
                Ok(mut ready) => {
                    let mut v = 0u64;
                    // SAFETY: reading 8 bytes into a live u64 from the host's non-blocking
                    // eventfd (EAGAIN when another wake-up already drained it).
                    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
                    ready.clear_ready();
                }
                Err(e) => {
                    eprintln!("[alert] resty_grpc_zc: waiting on the host queue: {e}");
                    return;
                }
            }
        }
    }

    /// No gRPC operation is waiting on the network.
    fn idle(&self) -> bool {
        self.aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn handle_guarded(self: &Arc<Self>, task: Task) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(task)));
        if r.is_err() {
            // The task was answered by its Drop while unwinding.
            eprintln!("[alert] resty_grpc_zc: panic while serving a task (answered with an error)");
        }
    }

    fn handle(self: &Arc<Self>, task: Task) {
        let claimed = match self.accept(task.request()) {
            Ok(c) => c,
            Err(answer) => return answer.send(task),
        };
        match self.execute(claimed, true) {
            Executed::Done(answer) => answer.send(task),
            Executed::Grpc(op, req) => {
                let inst = Arc::clone(self);
                match self.grpc() {
                    Ok(grpc) => {
                        // Registered before the operation can finish: grpc_done takes it out.
                        let mut aborts = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
                        let running =
                            grpc.start(*op, move |result| inst.grpc_done(task, &req, result));
                        aborts.insert(calls::key(&req), running);
                    }
                    Err(answer) => {
                        self.calls.failed(&req);
                        answer.send(task)
                    }
                }
            }
            Executed::Delayed(delay, claimed) => {
                // Test hook (Echo.delay_ms): answer later from another thread.
                let inst = Arc::clone(self);
                let spawned =
                    thread::Builder::new()
                        .name("grpc_zc-delay".into())
                        .spawn(move || {
                            thread::sleep(delay);
                            inst.execute_now(claimed).send(task)
                        });
                if spawned.is_err() {
                    eprintln!("resty_grpc_zc: cannot start a delay thread");
                }
            }
        }
    }

    /// Serves one request descriptor synchronously (delays of the test hook are ignored) and
    /// returns the answer the task would get. The poll thread's path, minus the host queue;
    /// tests drive it directly.
    pub fn serve_request(&self, request: &[u8]) -> Answer {
        match self.accept(request) {
            Ok(c) => self.execute_now(c),
            Err(a) => a,
        }
    }

    /// Decodes the descriptor and takes ownership of the request slot.
    fn accept(&self, request: &[u8]) -> Result<Claimed, Answer> {
        let bad = || Answer::Error(RC_BAD_REQUEST, "bad request descriptor".into());
        let desc = Desc::decode(request).ok_or_else(bad)?;
        let used = desc.buf_offset.checked_add(desc.buf_len).ok_or_else(bad)?;
        let req = Handle {
            offset: desc.slot_offset,
            len: used,
            gen: desc.slot_gen,
        };
        let lease = self
            .arena
            .claim(req)
            .map_err(|e| Answer::Error(RC_BAD_REQUEST, format!("request slot: {e}")))?;
        if !self.calls.start(&req) {
            return Err(Answer::Empty(RC_ABANDONED));
        }
        Ok(Claimed { lease, desc, req })
    }

    /// [`execute`](Self::execute) without the delay hook.
    fn execute_now(&self, c: Claimed) -> Answer {
        match self.execute(c, false) {
            Executed::Done(a) => a,
            Executed::Grpc(_, req) => {
                self.calls.failed(&req);
                Answer::Error(RC_BAD_REQUEST, "calls need the host queue".into())
            }
            // Not produced without `allow_delay`; answering now is the right fallback anyway.
            Executed::Delayed(_, c) => self.execute_now(c),
        }
    }

    /// Verifies the envelope, runs the command, frees the request slot. With `allow_delay`, an
    /// echo with `delay_ms` comes back untouched with its delay.
    fn execute(&self, c: Claimed, allow_delay: bool) -> Executed {
        let outcome = match self.parse(&c.lease, &c.desc) {
            Err(e) => Err(e),
            Ok(req) => match echo_delay(&req).filter(|_| allow_delay) {
                Some(delay) => return Executed::Delayed(delay, c),
                None => self.run(&c.lease, req),
            },
        };
        let Claimed { mut lease, req, .. } = c;
        let reply = match outcome {
            Ok(Outcome::Grpc { mut op, payload }) => {
                // The request slot lives on as the payload's owner until tonic has sent it.
                let msg = || bytes::Bytes::from_owner(lease).slice(payload);
                match &mut *op {
                    Op::Call(call) => call.payload = msg(),
                    Op::Send { payload, .. } => *payload = msg(),
                    Op::Recv { .. } | Op::CloseSend { .. } => {}
                }
                return Executed::Grpc(op, req);
            }
            Ok(Outcome::New(reply, len)) => {
                drop(lease);
                Ok((reply, len))
            }
            Ok(Outcome::InRequestSlot { vector_at }) => {
                match wire::write_reply_around(lease.as_mut_slice(), vector_at) {
                    Ok(len) => Ok((lease, len as u32)),
                    Err(e) => Err((RC_BAD_REQUEST, e.to_string())),
                }
            }
            Err(e) => Err(e),
        };
        Executed::Done(match reply {
            Ok((reply, len)) => self.deliver(&req, reply, len),
            Err((rc, msg)) => {
                self.calls.failed(&req);
                Answer::Error(rc, msg)
            }
        })
    }

    /// The verified envelope inside the request slot.
    fn parse<'a>(&self, lease: &'a Lease, desc: &Desc) -> Result<Request<'a>, (c_int, String)> {
        let bytes = lease
            .as_slice()
            .get(desc.buf_offset as usize..)
            .ok_or_else(|| (RC_BAD_REQUEST, "envelope outside its slot".to_owned()))?;
        wire::parse_request(bytes, self.config.max_message)
            .map_err(|e| (RC_BAD_REQUEST, e.to_string()))
    }

    /// Runs a command; returns where its reply is.
    fn run(&self, slot: &Lease, req: Request<'_>) -> Result<Outcome, (c_int, String)> {
        match req.command_type() {
            Command::Echo => {
                let payload = req.command_as_echo().and_then(|e| e.payload());
                let Some(payload) = payload else {
                    return self.reply(ReplyParts {
                        payload: Some(&[]),
                        ..Default::default()
                    });
                };
                // The payload already lies in the request's slot, which the runtime owns now:
                // answer in that slot, writing the reply's fixed part in front of the payload,
                // when Lua left room for it (resty.grpc_zc does). Otherwise copy it.
                let vector_at = (payload.bytes().as_ptr() as usize)
                    .wrapping_sub(slot.as_slice().as_ptr() as usize)
                    .wrapping_sub(4);
                if vector_at >= wire::REPLY_HEADER_LEN && vector_at < slot.len() {
                    return Ok(Outcome::InRequestSlot { vector_at });
                }
                self.reply(ReplyParts {
                    payload: Some(payload.bytes()),
                    ..Default::default()
                })
            }
            Command::Connect => {
                let Some(c) = req.command_as_connect() else {
                    return Err((RC_BAD_REQUEST, "Connect without a table".into()));
                };
                let ms = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
                let opts = ConnectOpts {
                    target: c.target().to_owned(),
                    authority: c.authority().map(str::to_owned),
                    connect_timeout: ms(c.connect_timeout_ms()),
                    default_timeout: ms(c.default_timeout_ms()),
                    keepalive_interval: ms(c.keepalive_interval_ms()),
                    keepalive_timeout: ms(c.keepalive_timeout_ms()),
                    ca_pem: c.ca_pem().map(|v| v.bytes().to_vec()),
                    cert_pem: c.cert_pem().map(|v| v.bytes().to_vec()),
                    key_pem: c.key_pem().map(|v| v.bytes().to_vec()),
                    insecure: c.insecure(),
                    max_send: c.max_send_msg_size() as usize,
                    max_recv: c.max_recv_msg_size() as usize,
                    compression: c.compression().map(str::to_owned),
                };
                let result = self
                    .grpc()
                    .map_err(|_| Status::internal("no tokio runtime"));
                match result.and_then(|g| g.connect(&opts)) {
                    Ok(id) => self.reply(ReplyParts {
                        handle: id,
                        ..Default::default()
                    }),
                    Err(st) => self.reply(status_parts(&st)),
                }
            }
            Command::Close => {
                let id = req.command_as_close().map_or(0, |c| c.conn());
                if let Some(g) = self.grpc.get() {
                    g.close(id);
                }
                self.reply(ReplyParts::default())
            }
            Command::Call => {
                let Some(c) = req.command_as_call() else {
                    return Err((RC_BAD_REQUEST, "Call without a table".into()));
                };
                let kind = match c.kind() {
                    CallKind::Unary => Kind::Unary,
                    CallKind::ClientStreaming => Kind::ClientStreaming,
                    CallKind::ServerStreaming => Kind::ServerStreaming,
                    CallKind::Bidi => Kind::Bidi,
                    other => {
                        return self.reply(ReplyParts {
                            status: Some((3, &format!("unknown call kind {}", other.0))),
                            ..Default::default()
                        })
                    }
                };
                let metadata = c
                    .metadata()
                    .iter()
                    .flatten()
                    .map(|m| {
                        let v = m.value().map_or(Vec::new(), |v| v.bytes().to_vec());
                        (m.key().to_owned(), v)
                    })
                    .collect();
                let call = CallSpec {
                    conn: c.conn(),
                    kind,
                    path: c.path().to_owned(),
                    timeout: (c.timeout_ms() > 0)
                        .then(|| Duration::from_millis(u64::from(c.timeout_ms()))),
                    metadata,
                    payload: bytes::Bytes::new(),
                    want_metadata: c.want_metadata(),
                    compression: c.compression().map(str::to_owned),
                };
                Ok(Outcome::Grpc {
                    op: Box::new(Op::Call(Box::new(call))),
                    payload: vector_range(slot, c.payload()),
                })
            }
            Command::StreamSend => {
                let Some(c) = req.command_as_stream_send() else {
                    return Err((RC_BAD_REQUEST, "StreamSend without a table".into()));
                };
                Ok(Outcome::Grpc {
                    op: Box::new(Op::Send {
                        stream: c.stream(),
                        payload: bytes::Bytes::new(),
                    }),
                    payload: vector_range(slot, c.payload()),
                })
            }
            Command::StreamRecv => {
                let Some(c) = req.command_as_stream_recv() else {
                    return Err((RC_BAD_REQUEST, "StreamRecv without a table".into()));
                };
                Ok(Outcome::Grpc {
                    op: Box::new(Op::Recv {
                        stream: c.stream(),
                        headers_only: c.headers_only(),
                    }),
                    payload: 0..0,
                })
            }
            Command::StreamCloseSend => {
                let Some(c) = req.command_as_stream_close_send() else {
                    return Err((RC_BAD_REQUEST, "StreamCloseSend without a table".into()));
                };
                Ok(Outcome::Grpc {
                    op: Box::new(Op::CloseSend {
                        stream: c.stream(),
                        finish: c.finish(),
                    }),
                    payload: 0..0,
                })
            }
            Command::StreamCancel => {
                let id = req.command_as_stream_cancel().map_or(0, |c| c.stream());
                self.cancel_stream(id);
                self.reply(ReplyParts::default())
            }
            other => self.reply(ReplyParts {
                status: Some((12, &format!("UNIMPLEMENTED: command {other:?}"))),
                ..Default::default()
            }),
        }
    }

    /// The instance's gRPC runtime, started on first use.
    fn grpc(&self) -> Result<&Grpc, Answer> {
        if let Some(g) = self.grpc.get() {
            return Ok(g);
        }
        let max_message = self.arena.max_message() - ENVELOPE_SLACK;
        let g = match self.io.get() {
            Some(rt) => Grpc::with_handle(self.arena.clone(), max_message, rt.clone()),
            None => Grpc::new(
                self.arena.clone(),
                max_message,
                GRPC_THREADS,
                self.config.cpus.clone(),
            )
            .map_err(|e| Answer::Error(RC_EXHAUSTED, format!("cannot start tokio: {e}")))?,
        };
        Ok(self.grpc.get_or_init(|| g))
    }

    /// A gRPC operation finished (tokio thread): write the reply and answer the task.
    fn grpc_done(&self, task: Task, req: &Handle, result: OpResult) {
        self.aborts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&calls::key(req));
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opened = result.as_ref().map_or(0, |r| r.handle);
        let reply = match result {
            Ok(Received {
                message: Some(Inbound { lease }),
                handle,
                headers,
                trailers,
            }) => {
                let parts = ReplyParts {
                    handle,
                    headers: headers.as_deref(),
                    trailers: trailers.as_deref(),
                    ..Default::default()
                };
                self.reply_around(lease, &parts)
            }
            Ok(Received {
                message: None,
                handle,
                headers,
                trailers,
            }) => self.reply_slot(ReplyParts {
                handle,
                headers: headers.as_deref(),
                trailers: trailers.as_deref(),
                ..Default::default()
            }),
            Err(st) => {
                let trailers = crate::grpc::metadata_list(st.metadata());
                let details = (!st.details().is_empty()).then(|| st.details());
                self.reply_slot(ReplyParts {
                    details,
                    trailers: (!trailers.is_empty()).then_some(&trailers[..]),
                    ..status_parts(&st)
                })
            }
        };
        let answer = match reply {
            Ok((lease, len)) => self.deliver(req, lease, len),
            Err((rc, msg)) => {
                self.calls.failed(req);
                Answer::Error(rc, msg)
            }
        };
        if opened != 0 && answer == Answer::Empty(RC_ABANDONED) {
            // Nobody will learn this stream's id.
            self.cancel_stream(opened);
        }
        answer.send(task)
    }

    /// Cancels (and forgets) a stream; false when it is unknown.
    pub fn cancel_stream(&self, id: u64) -> bool {
        self.grpc.get().is_some_and(|g| g.cancel_stream(id))
    }

    /// Microseconds the poll thread has spent busy-polling (`busy_poll_us`) so far.
    pub fn busy_polled_us(&self) -> u64 {
        self.busy_polled_ns
            .load(std::sync::atomic::Ordering::Relaxed)
            / 1000
    }

    /// Streams open in this instance.
    pub fn streams_open(&self) -> usize {
        self.grpc.get().map_or(0, |g| g.streams_open())
    }

    /// A reply around a received message: in its own slot when the tail fits there, else
    /// copied into a bigger slot (only when metadata makes the tail large).
    fn reply_around(
        &self,
        mut lease: Lease,
        parts: &ReplyParts<'_>,
    ) -> Result<(Lease, u32), (c_int, String)> {
        let at = INBOUND_VECTOR_AT;
        let len = {
            let b = lease.as_slice();
            u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
        };
        let need = wire::reply_around_len(at, len, parts);
        if need > lease.len() {
            let mut bigger = self
                .arena
                .lease(need)
                .map_err(|e| (RC_EXHAUSTED, format!("RESOURCE_EXHAUSTED: reply: {e}")))?;
            bigger.as_mut_slice()[at..at + 4 + len]
                .copy_from_slice(&lease.as_slice()[at..at + 4 + len]);
            lease = bigger;
        }
        match wire::write_reply_around_with(lease.as_mut_slice(), at, parts) {
            Ok(n) => Ok((lease, n as u32)),
            Err(e) => Err((RC_BAD_REQUEST, e.to_string())),
        }
    }

    /// Leases a slot and writes a reply into it.
    fn reply_slot(&self, parts: ReplyParts<'_>) -> Result<(Lease, u32), (c_int, String)> {
        let need = wire::reply_len(&parts);
        let mut lease = self
            .arena
            .lease(need)
            .map_err(|e| (RC_EXHAUSTED, format!("RESOURCE_EXHAUSTED: reply: {e}")))?;
        let len = wire::write_reply(lease.as_mut_slice(), &parts)
            .map_err(|e| (RC_EXHAUSTED, e.to_string()))?;
        Ok((lease, len as u32))
    }

    /// [`reply_slot`](Self::reply_slot) as a command's outcome.
    fn reply(&self, parts: ReplyParts<'_>) -> Result<Outcome, (c_int, String)> {
        self.reply_slot(parts).map(|(l, n)| Outcome::New(l, n))
    }

    /// Hands the reply to the call (or frees it when Lua is gone).
    fn deliver(&self, req: &Handle, reply: Lease, len: u32) -> Answer {
        let h = reply.into_handle();
        match self.calls.replied(req, h) {
            Deliver::Send => Answer::Reply(Desc {
                slot_offset: h.offset,
                slot_gen: h.gen,
                buf_offset: 0,
                buf_len: len,
            }),
            Deliver::Drop => {
                let _ = self.arena.release(h);
                Answer::Empty(RC_ABANDONED)
            }
        }
    }
}

/// The delay of an `Echo` request with `delay_ms` (a test hook).
fn echo_delay(req: &Request<'_>) -> Option<Duration> {
    let ms = req.command_as_echo()?.delay_ms();
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// Where a byte vector of the request lies in its slot.
fn vector_range(slot: &Lease, v: Option<flatbuffers::Vector<'_, u8>>) -> std::ops::Range<usize> {
    let base = slot.as_slice().as_ptr() as usize;
    v.map_or(0..0, |p| {
        let start = p.bytes().as_ptr() as usize - base;
        start..start + p.len()
    })
}

/// A gRPC status as reply parts (the message with its code name first, as Lua reports it).
fn status_parts(st: &Status) -> ReplyParts<'_> {
    ReplyParts {
        status: Some((st.code() as i32, st.message())),
        ..Default::default()
    }
}
