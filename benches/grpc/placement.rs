//! Where the clients and the server run (`GRPC_BENCH_PIN=1`: pinned), and pinning a thread.

use resty_grpc_zc::config::CpuList;
use testkit::bench::pin_process;

/// Where the clients and the server run (`GRPC_BENCH_PIN=1`: pinned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Left to the scheduler.
    Unpinned,
    /// Each client (the nginx worker with its runtime's threads, or the native client with
    /// its runtime) on CPU 0, the server on CPU 1: `worker_cpu_affinity`, as nginx users run
    /// it, with the server on another core as it would be on another machine.
    Pinned,
}

impl Placement {
    pub fn from_env(cpus: usize) -> Placement {
        let pin = std::env::var("GRPC_BENCH_PIN").is_ok_and(|v| v == "1");
        assert!(!pin || cpus >= 2, "GRPC_BENCH_PIN=1 needs two CPUs");
        if pin {
            Placement::Pinned
        } else {
            Placement::Unpinned
        }
    }

    pub fn worker_conf(self) -> &'static str {
        match self {
            Placement::Unpinned => "",
            Placement::Pinned => "worker_cpu_affinity 0001;",
        }
    }

    /// The suffix of this placement's JSON file and docs section.
    pub fn suffix(self) -> &'static str {
        match self {
            Placement::Unpinned => "",
            Placement::Pinned => "-pinned",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::Unpinned => "one nginx worker, unpinned; native clients unpinned",
            Placement::Pinned => {
                "pinned: the nginx worker (its runtime's threads inherit the mask) and the \
                 native clients on CPU 0, the server on CPU 1"
            }
        }
    }
}

impl Placement {
    /// Pinned: every thread of the server (tokio's blocking pool included) on CPU 1.
    pub fn pin_server(self, pid: i32) {
        if self == Placement::Pinned {
            assert!(pin_process(pid, "1"), "taskset of the server failed");
        }
    }

    /// Pinned: the native clients on CPU 0 like the nginx worker (the multi-thread runtime's
    /// workers inherit the calling thread's mask).
    pub fn pin_native_clients(self) {
        if self == Placement::Pinned {
            pin_thread(&[0]);
        }
    }
}

/// Pins the calling thread to `cpus`.
pub fn pin_thread(cpus: &[usize]) {
    let list = CpuList::new(cpus.iter().copied()).unwrap_or_else(|e| panic!("{e}"));
    list.pin_current_thread()
        .unwrap_or_else(|e| panic!("sched_setaffinity: {e}"));
}
