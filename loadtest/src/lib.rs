//! The riskgate load generator and its benchmark helpers.
//!
//! - [`target`]: where load may be sent (loopback only) and how the target is named.
//! - [`workload`]: what is sent: requests built from a simulator event file, or coupon
//!   claims over a synthetic key space (Zipf or uniform users and devices).
//! - [`schedule`]: when it is sent in the fixed-rate mode: the intended send time of
//!   every request, phase by phase (a spike is a phase).
//! - [`run`]: the two modes (open loop at a fixed rate, latency from the intended send
//!   time; maximum throughput over N connections) and their measurements.
//! - [`report`]: HDR-histogram percentiles, status codes, errors by kind, JSON.
//! - [`servers`]: the stub upstream and the bare hyper pass-through proxy (the floor of
//!   what any hyper proxy costs), run by the `stub-upstream` and `passthrough` binaries.

#![forbid(unsafe_code)]

pub mod report;
pub mod run;
pub mod schedule;
pub mod servers;
pub mod target;
pub mod workload;

/// The servers' runtime: multi-threaded with `workers` workers, the plain set-up a hyper
/// server starts with. (riskgate with one worker runs a current-thread runtime instead;
/// `current_thread` gives the pass-through the same, for comparison: BENCHMARKS.md.)
/// Like riskgate, each grows its descriptor table first (`riskgate::fd_table`), so that
/// no server of the bench stalls on the kernel when its connections first multiply.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    riskgate::fd_table::prepare();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

/// A single-threaded runtime.
pub fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    riskgate::fd_table::prepare();
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
