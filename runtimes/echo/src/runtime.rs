//! The runtime's threads: one poll thread per instance, plus one timer thread when `delay_ms` is
//! set; both restricted to the cfg's `cpus` when it has them.

use std::io;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread;
use std::time::Instant;

use crate::config::{pin_current_thread, Config, RspMode};
use crate::host::{self, CancelledFn, Queue, Response, Task, RC_NO_MEMORY};
use crate::timer::Timer;

/// How each task is answered.
#[derive(Clone, Copy)]
struct Answer {
    rc: c_int,
    mode: RspMode,
}

impl Answer {
    /// Builds the response for `req`, or the rc to use instead when allocation failed.
    fn response(self, req: Option<&[u8]>) -> (c_int, Response) {
        let built = match (self.mode, req) {
            (RspMode::Nil, _) | (_, None) => Ok(Response::nil()),
            (RspMode::Echo, Some(req)) => Response::bytes(req),
            (RspMode::CStr, Some(req)) => Response::c_str(req),
        };
        match built {
            Ok(rsp) => (self.rc, rsp),
            Err(host::AllocError) => {
                eprintln!("resty_ffi_echo: cannot allocate the response");
                (RC_NO_MEMORY, Response::nil())
            }
        }
    }
}

/// A task waiting on the timer, with its response already built (the request is copied at poll
/// time, so nothing borrowed from the task is kept).
struct Delayed {
    task: Task,
    rc: c_int,
    rsp: Response,
}

/// Starts the instance's threads and returns at once. `cfg_text` is only used in log lines.
pub fn start(cfg_text: String, config: Config, queue: Queue) -> io::Result<()> {
    let answer = Answer {
        rc: config.rc,
        mode: config.rsp,
    };
    let timer = if config.delay.is_zero() {
        None
    } else {
        let probe = if config.check_cancel {
            host::lookup_cancelled()
        } else {
            None
        };
        let (timer, _detached) = Timer::start("echo-timer", &config.cpus, move |job: Delayed| {
            answer_delayed(job, probe)
        })?;
        Some(timer)
    };
    let delay = config.delay;
    let poll_delay = config.poll_delay;
    let cpus = config.cpus;
    let (pinned_tx, pinned) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("echo-poll".to_owned())
        .spawn(move || {
            let _ = pinned_tx.send(pin_current_thread(&cpus));
            // Poll even when pinning failed: the host still appends its finish marker.
            let mut queue = queue;
            loop {
                let step = catch_unwind(AssertUnwindSafe(|| {
                    if !poll_delay.is_zero() {
                        thread::sleep(poll_delay);
                    }
                    let task = queue.poll()?;
                    let polled_at = Instant::now();
                    let (rc, rsp) = answer.response(task.request());
                    match &timer {
                        Some(timer) => timer.schedule(polled_at + delay, Delayed { task, rc, rsp }),
                        None => task.respond(rc, rsp),
                    }
                    Some(())
                }));
                match step {
                    Ok(Some(())) => {}
                    Ok(None) => break,
                    // The task, if any, was dropped while unwinding, which answered it.
                    Err(_) => eprintln!("resty_ffi_echo: panic in the poll thread, continuing"),
                }
            }
            // Dropping the timer lets it answer the delayed tasks still queued, then exit.
            drop(timer);
            eprintln!("resty_ffi_echo: finished cfg={cfg_text}");
        })?;
    match pinned.recv() {
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("cpus: sched_setaffinity: {e}"),
        )),
        _ => Ok(()),
    }
}

fn answer_delayed(job: Delayed, probe: Option<CancelledFn>) {
    if let Some(probe) = probe {
        if job.task.is_cancelled(probe) {
            eprintln!("resty_ffi_echo: task cancelled");
        }
    }
    // Answer even a cancelled task: every task is answered exactly once.
    job.task.respond(job.rc, job.rsp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockQueue;
    use std::os::raw::c_void;
    use std::time::Duration;

    fn run(cfg: &str, reqs: &[Option<&[u8]>]) -> (Vec<host::mock::Answer>, &'static MockQueue) {
        let q: &'static MockQueue = Box::leak(Box::default());
        // SAFETY: a live mock queue, wrapped once.
        let queue = unsafe { Queue::from_raw(q as *const MockQueue as *mut c_void) }.unwrap();
        start(cfg.to_owned(), Config::parse(cfg).unwrap(), queue).unwrap();
        for (id, req) in reqs.iter().enumerate() {
            q.post(id, *req);
        }
        q.finish();
        let answers = q.wait_answers(reqs.len());
        assert_eq!(answers.len(), reqs.len());
        (answers, q)
    }

    #[test]
    fn echoes_bytes_nil_and_empty() {
        let (a, q) = run("", &[Some(b"hello\0world"), None, Some(b"")]);
        assert_eq!(a[0].body.as_deref(), Some(&b"hello\0world"[..]));
        assert_eq!(a[0].raw_len, 11);
        assert_eq!(a[0].rc, 0);
        assert_eq!(a[1].body, None);
        assert_eq!(a[2].body.as_deref(), Some(&b""[..]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !q.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(q.is_finished());
    }

    #[test]
    fn rc_and_shapes() {
        let (a, _) = run("rc=5,rsp=nil", &[Some(b"x")]);
        assert_eq!((a[0].rc, a[0].body.clone()), (5, None));
        let (a, _) = run("rsp=cstr", &[Some(b"ab\0cd"), None]);
        assert_eq!(a[0].body.as_deref(), Some(&b"ab"[..]));
        assert_eq!(a[0].raw_len, 0);
        assert_eq!(a[1].body, None);
    }

    #[test]
    fn poll_delay_spaces_out_polls() {
        let (a, _) = run("poll_delay_ms=30", &[Some(b"a"), Some(b"b")]);
        assert_eq!(a[0].body.as_deref(), Some(&b"a"[..]));
        assert_eq!(a[1].body.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn delayed_tasks_are_concurrent_and_drained_after_finish() {
        let reqs: Vec<Vec<u8>> = (0..1000).map(|i| format!("r{i}").into_bytes()).collect();
        let reqs: Vec<Option<&[u8]>> = reqs.iter().map(|r| Some(&r[..])).collect();
        let t0 = Instant::now();
        let (a, _) = run("delay_ms=200,check_cancel=1", &reqs);
        // Serial answers would take 200 s; concurrent ones finish in about one delay.
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
        for (i, ans) in a.iter().enumerate() {
            assert_eq!(ans.body.as_deref(), Some(format!("r{i}").as_bytes()));
            assert!(
                ans.latency >= Duration::from_millis(200),
                "{:?}",
                ans.latency
            );
        }
    }
}
