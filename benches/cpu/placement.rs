//! Where the clients and the server run: pinned as `worker_cpu_affinity` puts a worker (as in
//! benches/grpc's `GRPC_BENCH_PIN=1`), everything on one CPU, or left to the scheduler.

use testkit::bench::pin_process;

/// Where the clients (the nginx worker with its runtime's threads, or this process with the
/// native clients' runtimes) and the server run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The clients on CPU 0 (`worker_cpu_affinity 0001;`: the runtime's threads inherit the
    /// mask), the server on CPU 1, as on another machine.
    Pinned,
    /// The clients and the server on CPU 0.
    OneCpu,
    /// Left to the scheduler.
    Unpinned,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Pinned, Placement::OneCpu, Placement::Unpinned];

    /// The placement's key in the JSON and in nginx prefixes.
    pub fn key(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::OneCpu => "one_cpu",
            Placement::Unpinned => "unpinned",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::OneCpu => "one CPU",
            Placement::Unpinned => "unpinned",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::Pinned => {
                "the nginx worker (`worker_cpu_affinity 0001;`, its runtime's threads inherit \
                 the mask) and the native clients on CPU 0, the server on CPU 1"
            }
            Placement::OneCpu => {
                "the nginx worker (`worker_cpu_affinity 0001;`), the native clients and the \
                 server, all on CPU 0"
            }
            Placement::Unpinned => "nginx worker, native clients and server left to the scheduler",
        }
    }

    pub fn worker_conf(self) -> &'static str {
        match self {
            Placement::Pinned | Placement::OneCpu => "worker_cpu_affinity 0001;",
            Placement::Unpinned => "",
        }
    }

    /// Moves the server (every thread of it) and this process (the native clients' threads)
    /// where this placement has them; `all` is the CPU list this process started with (a
    /// `taskset -c` list). The nginx workers stay where their configuration put them.
    pub fn apply(self, server: i32, all: &str) {
        let (clients, server_cpus) = match self {
            Placement::Pinned => ("0", "1"),
            Placement::OneCpu => ("0", "0"),
            Placement::Unpinned => (all, all),
        };
        assert!(
            pin_process(server, server_cpus),
            "taskset of the server failed"
        );
        assert!(
            pin_process(std::process::id() as i32, clients),
            "taskset of the bench process failed"
        );
    }
}
