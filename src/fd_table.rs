//! Room for file descriptors, made before the server starts its threads.
//!
//! Linux keeps a process's open descriptors in a table that it doubles when full, and
//! once the process has a second thread each doubling waits for an RCU grace period
//! (milliseconds) inside the `socket()` or `accept()` call that needed the room. On a
//! one-worker runtime every request waits with it. In the benchmark's first 10x burst
//! after a start, the ~160 upstream connections it opened paid several such waits
//! (`synchronize_rcu` under `expand_files`, traced with `perf sched`): p99 during the
//! burst was 24-33 ms where the next burst took about 1.5 ms. Grown once while the
//! process has one thread, the table costs no wait, and it never shrinks.
//!
//! The soft limit on open files is raised to the hard one as well (as Go's runtime
//! does): a gateway holds a socket per client and per upstream connection, and the
//! common soft default of 1,024 would leave new connections waiting in a promotion's
//! surge.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Table slots made at most: 64 Ki descriptors take ~0.5 MiB of kernel memory.
pub const MAX_PREPARED: u64 = 1 << 16;

/// What [`prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The soft limit on open files before, and now (`u64::MAX`: none).
    pub limit_before: u64,
    pub limit: u64,
    /// Descriptors the table has room for without growing (0: it could not be grown).
    pub room: u64,
}

/// Raises the soft open-files limit to the hard one and grows the descriptor table to
/// the smaller of that limit and [`MAX_PREPARED`]. Call it before any thread starts.
pub fn prepare() -> Prepared {
    let lim = getrlimit(Resource::Nofile);
    let limit_before = lim.current.unwrap_or(u64::MAX);
    let mut limit = limit_before;
    // `None` is unlimited (and `Option` orders it first, hence the second test).
    if lim.current < lim.maximum || (lim.current.is_some() && lim.maximum.is_none()) {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        // Refused (a hard limit above the kernel's nr_open): the soft one stays.
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = lim.maximum.unwrap_or(u64::MAX);
        }
    }
    Prepared {
        limit_before,
        limit,
        room: grow_table(limit.min(MAX_PREPARED)),
    }
}

/// Makes the table hold `slots` descriptors by duplicating one onto the highest of
/// them and closing it again. Returns the room made, 0 when it could not be.
fn grow_table(slots: u64) -> u64 {
    let Some(highest) = slots.checked_sub(1).and_then(|h| i32::try_from(h).ok()) else {
        return 0;
    };
    let Ok(file) = std::fs::File::open("/dev/null") else {
        return 0;
    };
    // The lowest free descriptor at or above `highest`; dropped (closed) at once.
    match rustix::io::fcntl_dupfd_cloexec(&file, highest) {
        Ok(_dup) => slots,
        Err(_) => 0,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn table_size() -> u64 {
        // The kernel reports the table's size as FDSize in /proc/self/status.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn grows_the_table_and_closes_what_it_opened() {
        let prepared = prepare();
        assert!(prepared.limit >= prepared.limit_before);
        assert_eq!(prepared.room, prepared.limit.min(MAX_PREPARED));
        assert!(
            table_size() >= prepared.room,
            "FDSize {} < {}",
            table_size(),
            prepared.room
        );
        let highest = format!("/proc/self/fd/{}", prepared.room - 1);
        assert!(std::fs::symlink_metadata(&highest).is_err(), "{highest} left open");
    }

    #[test]
    fn no_room_asked_is_none_made() {
        assert_eq!(grow_table(0), 0);
    }
}
