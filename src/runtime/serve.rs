//! The poll thread: its two loops, and one task's way through the runtime.
//!
//! ```text
//! take (a loop)  ─► claim  ─► run (command.rs)  ─► answer: reply delivered (reply.rs), or the
//!   host queue      Desc,      verify envelope,  │    failure; echo, Connect, errors
//!                   request    read command      ├─► launch: gRPC operation on the event loop;
//!                   slot R                       │     grpc_done answers (reply.rs)
//!                                                └─► later: echo test hook's delay thread
//! ```
//!
//! - `serve_async`: the event loop (a current-thread tokio runtime), when the host can be polled
//!   asynchronously: tasks and the gRPC calls they start run on this thread; it spins, busy-polls
//!   (`busy.rs`) and sleeps on the queue's eventfd ([`crate::queue::Readable`]).
//! - `serve_blocking`: lua-resty-ffi's blocking `task_poll`, gRPC calls on a tokio runtime of
//!   their own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::answer::{Answer, RC_ABANDONED, RC_BAD_REQUEST};
use super::busy::{BusyPoll, Next, Plan};
use super::calls;
use super::command::{Claimed, Delays, Run};
use super::trial::Switched;
use super::Instance;
use crate::arena::Handle;
use crate::grpc::Op;
use crate::guard::guard;
use crate::log;
use crate::queue::{Desc, HeldWakes, Task, TaskQueue, TryPoll};
use crate::timer::Timer;
use futures_util::future::Either;

/// Tasks served before the calls in flight get a turn.
const BATCH: usize = 64;

impl Instance {
    /// The poll thread's body: the event loop when the host can be polled asynchronously, else
    /// the blocking loop. Returns when the queue is finished.
    pub(super) fn poll_thread(self: &Arc<Self>, queue: TaskQueue) {
        if queue.poll_fd().is_some() {
            // Answers given on this thread wake nginx once per turn of the event loop (the
            // loop below flushes each turn), and always before the thread sleeps.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(HeldWakes::flusher())
                .build()
            {
                Ok(rt) => {
                    let _ = self.io.set(rt.handle().clone());
                    rt.block_on(self.serve_async(queue));
                    log!(Info, self.origin(), "finished");
                    return;
                }
                Err(e) => log!(Warn, self.origin(), "no event loop ({e}): blocking poll"),
            }
        }
        self.serve_blocking(queue);
        log!(Info, self.origin(), "finished");
    }

    /// Serves tasks until the queue is finished, blocking in the host's `task_poll`.
    fn serve_blocking(self: &Arc<Self>, mut queue: TaskQueue) {
        while let Some(task) = queue.poll() {
            self.serve_task(task);
        }
    }

    /// The poll thread as an event loop (current-thread tokio runtime): serves the queued tasks,
    /// runs the gRPC calls they start, and waits on the host's eventfd when there is nothing
    /// to do. Before it sleeps it spins: while no gRPC operation is in flight, for the next
    /// task, as the blocking poll does (`poll_spin_us`); while some are, it busy-polls the
    /// network as its plan says (`busy.rs`): from the last task (always, or when measured
    /// cheaper than sleeping: `trial.rs`), or from a timer set shortly
    /// before the answers it expects.
    async fn serve_async(self: &Arc<Self>, mut queue: TaskQueue) {
        let readable = match queue.readable() {
            Ok(r) => r,
            Err(e) => {
                log!(Alert, self.origin(), "cannot watch the host queue: {e}");
                return;
            }
        };
        let mut busy = self.busy_poll();
        let mut timer = match busy.plan() {
            Plan::Ahead => match Timer::new() {
                Ok(t) => Some(t),
                Err(e) => {
                    log!(
                        Warn,
                        self.origin(),
                        "no timer for busy polling ({e}): polling from the last task"
                    );
                    busy = BusyPoll::new(Plan::FromLastTask, self.config.busy_poll);
                    None
                }
            },
            _ => None,
        };
        let _ = self.busy_plan.set(busy.plan());
        let finished = || self.finished.load(Ordering::Relaxed);
        let switched = |s: Option<Switched>| {
            if let Some(s) = s {
                log!(
                    Info,
                    self.origin(),
                    "busy polling: measured, now {} (per answer, CPU + waiting: polling {:.1} + {:.1} us, sleeping {:.1} + {:.1} us)",
                    s.to.name(),
                    s.poll.cpu / 1000.0,
                    s.poll.waited / 1000.0,
                    s.sleep.cpu / 1000.0,
                    s.sleep.waited / 1000.0
                );
            }
        };
        // Whether the loop last woke for its timer (not for a task).
        let mut woke_by_timer = false;
        let wakes = HeldWakes::hold();
        loop {
            // The answers of the last turn (tasks served, calls that ended) wake nginx once.
            wakes.flush();
            let mut served = 0;
            while served < BATCH {
                match queue.try_poll() {
                    TryPoll::Task(task) => {
                        self.serve_task(task);
                        served += 1;
                    }
                    TryPoll::Empty => break,
                    TryPoll::Finished => return,
                }
            }
            if served > 0 {
                woke_by_timer = false;
                switched(busy.tasks_served(&self.seen(), || self.in_flight()));
                tokio::task::yield_now().await;
                continue;
            }
            let mut sleep_for = None;
            if self.idle() {
                switched(busy.all_done(&self.seen()));
                // A timer that fired after its answer came is no reason to wait for a task.
                if !woke_by_timer && queue.spin_poll() {
                    continue;
                }
            } else {
                match busy.next(finished()) {
                    Next::Poll => {
                        // Busy polling: a yielded event loop polls its I/O driver without
                        // sleeping, so an answer is seen without the wake-up of a sleeping
                        // thread (35-70 µs between vCPUs here; docs/benchmarks.md).
                        // sched_yield first lets any other thread that is runnable on this CPU
                        // (the server, the nginx worker) go before us.
                        let round = Instant::now();
                        thread::yield_now();
                        tokio::task::yield_now().await;
                        let ns = u64::try_from(round.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        self.busy_polled_ns.fetch_add(ns, Ordering::Relaxed);
                        continue;
                    }
                    Next::SleepFor(after) => sleep_for = Some(after),
                    Next::Sleep => {}
                }
            }
            if let Some(t) = timer.as_mut() {
                let set = match sleep_for {
                    Some(after) => t.arm(after),
                    None => t.disarm(),
                };
                if let Err(e) = set {
                    log!(Warn, self.origin(), "busy polling timer: {e}");
                }
            }
            if !queue.arm() {
                continue;
            }
            woke_by_timer = false;
            let woke = match timer.as_mut() {
                Some(t) if t.is_armed() => {
                    let task = std::pin::pin!(readable.wait());
                    let fired = std::pin::pin!(t.fired());
                    match futures_util::future::select(task, fired).await {
                        Either::Left((r, _)) => r,
                        Either::Right((r, _)) => {
                            woke_by_timer = true;
                            busy.timer_fired();
                            r
                        }
                    }
                }
                _ => readable.wait().await,
            };
            if let Err(e) = woke {
                log!(Alert, self.origin(), "waiting on the host queue: {e}");
                return;
            }
        }
    }

    /// The busy-polling plan, logged once with where this thread runs (its CPUs against the
    /// worker's, the cgroup's CPU quota).
    fn busy_poll(&self) -> BusyPoll {
        let mine = crate::cpu::current_affinity().unwrap_or_default();
        let quota = crate::cpu::cgroup_quota();
        let plan = Plan::choose(
            self.config.busy_poll_mode,
            self.config.busy_poll,
            quota.is_some(),
        );
        log!(
            Info,
            self.origin(),
            "busy polling: {} (busy_poll={:?}, up to {} us; CPUs {:?}, worker's {:?}, cgroup CPU quota {})",
            plan.name(),
            self.config.busy_poll_mode,
            self.config.busy_poll.as_micros(),
            mine,
            self.worker_cpus,
            quota.map_or("none".to_string(), |q| format!("{q:.2}"))
        );
        BusyPoll::new(plan, self.config.busy_poll)
    }

    /// One task: claim its request, run it, then answer it, launch its gRPC operation or delay
    /// it. A panic on the way is logged; the task is then answered by its `Drop` (`RC_DROPPED`).
    fn serve_task(self: &Arc<Self>, task: Task) {
        let what = "serving a task (answered with an error)";
        guard(&self.origin(), what, (), || {
            let claimed = match self.claim(task.request()) {
                Ok(c) => c,
                Err(answer) => return answer.send(task),
            };
            let req = claimed.req;
            match self.run(claimed, Delays::Honour) {
                Ok(Run::Grpc(op)) => self.launch(task, req, op),
                Ok(Run::Later(delay, claimed)) => self.later(task, delay, claimed),
                ran => self.answer(&req, ran).send(task),
            }
        })
    }

    /// Serves one request descriptor synchronously (delays of the test hook are ignored) and
    /// returns the answer the task would get. The poll thread's path, minus the host queue;
    /// tests drive it directly.
    pub fn serve_request(&self, request: &[u8]) -> Answer {
        match self.claim(request) {
            Ok(claimed) => {
                let req = claimed.req;
                self.answer(&req, self.run(claimed, Delays::Ignore))
            }
            Err(answer) => answer,
        }
    }

    /// The answer to a request that ran: its reply handed to the call, or its failure.
    /// Operations that need the host queue (gRPC, delays) fail here.
    fn answer(&self, req: &Handle, ran: Result<Run, Answer>) -> Answer {
        match ran {
            Ok(Run::Reply(lease, len)) => self.delivered(req, Ok((lease, len))),
            Ok(Run::Grpc(_) | Run::Later(..)) => self.delivered(
                req,
                Err(Answer::Error(
                    RC_BAD_REQUEST,
                    "calls need the host queue".into(),
                )),
            ),
            Err(answer) => self.delivered(req, Err(answer)),
        }
    }

    /// Decodes the descriptor and takes ownership of the request slot.
    fn claim(&self, request: &[u8]) -> Result<Claimed, Answer> {
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

    /// Starts a gRPC operation; `grpc_done` answers the task when it finishes.
    fn launch(self: &Arc<Self>, task: Task, req: Handle, op: Op) {
        let grpc = match self.grpc() {
            Ok(g) => g,
            Err(answer) => {
                self.calls.failed(&req);
                return answer.send(task);
            }
        };
        let inst = Arc::clone(self);
        let began = self.launched_at();
        // Registered before the operation can finish: grpc_done takes it out.
        let mut running = self.running();
        let abort = grpc.start(op, move |result| inst.grpc_done(task, &req, result, began));
        running.insert(calls::key(&req), abort);
    }

    /// The echo test hook (`Echo.delay_ms`): answers after `delay`, from a thread of its own.
    fn later(self: &Arc<Self>, task: Task, delay: Duration, claimed: Claimed) {
        let inst = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("grpc_zc-delay".into())
            .spawn(move || {
                thread::sleep(delay);
                let req = claimed.req;
                inst.answer(&req, inst.run(claimed, Delays::Ignore))
                    .send(task)
            });
        if spawned.is_err() {
            log!(Error, self.origin(), "cannot start a delay thread");
        }
    }
}
