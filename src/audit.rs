//! Audit log: decision records written as JSONL by a writer thread, behind a bounded queue that never delays a request.
//!
//! The request path only ever calls [`AuditLog::record`], which is a `try_send` into a
//! bounded `std::sync::mpsc::sync_channel` (its slots are allocated once, up front): when
//! the queue is full, or the writer is gone, the record is dropped and counted. A
//! dedicated OS thread ("riskgate-audit") owns the file: it appends one line per record
//! through a `BufWriter`, flushes whenever the queue is momentarily empty (and at least
//! every 200 ms under sustained load), then naps 5 ms instead of parking while traffic
//! flows (so requests do not wake it one by one), and rotates by size:
//!
//! ```text
//! path.(keep-1) → path.keep (the old path.keep is replaced, i.e. deleted)
//! …
//! path.1        → path.2
//! path          → path.1    (.1 is always the newest rotated file)
//! ```
//!
//! I/O failures never stop serving: an open, write, flush or rename error increments
//! `errors`, the records that could not be written are counted as `dropped`, and the
//! file is reopened on a later record after a backoff (at most one attempt per second),
//! so a full or unwritable disk costs one failed syscall per second, not a spin.
//!
//! Accounting: every record handed to `record()` ends up in exactly one of `written`,
//! `dropped` or `queued` (accepted, not yet durably handed to the OS), so
//! `written + dropped + queued` equals the number of `record()` calls at any quiet moment.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the writer thread (visible in `top -H`, debuggers and panic messages).
pub const WRITER_THREAD_NAME: &str = "riskgate-audit";
/// Under sustained load the writer flushes at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// When the queue runs dry, the writer naps this long before it looks again, up to
/// `IDLE_NAPS` times before it parks until the next record: records are then written
/// in batches, at most this much later.
const NAP: Duration = Duration::from_millis(5);
const IDLE_NAPS: u32 = 100;
/// After an I/O failure the writer waits this long before it opens the file again
/// (records arriving meanwhile are dropped and counted, without a syscall).
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Buffer of the file writer; a larger record bypasses it.
const WRITE_BUFFER: usize = 64 * 1024;

/// Counters of an audit log, read with [`AuditLog::stats`] (each field is read
/// independently, so a snapshot taken under load is approximate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records written and flushed to the file.
    pub written: u64,
    /// Records lost: queue full, writer gone, or an I/O error while writing them.
    pub dropped: u64,
    /// I/O errors (open, write, flush, rename, remove); at most about one per second
    /// while the file stays unusable.
    pub errors: u64,
    /// Completed size-based rotations.
    pub rotations: u64,
    /// Records accepted by `record()` and not yet written or dropped.
    pub queued: u64,
    /// Flushes that handed records to the OS (one write syscall each, or more for a
    /// buffer larger than the OS takes at once): under load, far fewer than records.
    pub flushes: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    rotations: AtomicU64,
    queued: AtomicU64,
    flushes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> AuditStats {
        AuditStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rotations: self.rotations.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }

    /// `n` accepted records are settled as written.
    fn settle_written(&self, n: u64) {
        if n > 0 {
            self.written.fetch_add(n, Ordering::Relaxed);
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// `n` accepted records are settled as dropped.
    fn settle_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The audit log: a bounded queue in front of a writer thread.
///
/// Not `Clone`: share it behind an `Arc<AuditLog>` (`record` takes `&self`). To stop it,
/// `Arc::try_unwrap` the last handle and call [`AuditLog::close`]; merely dropping it
/// lets the writer drain the queue and exit in the background, without waiting.
pub struct AuditLog {
    tx: SyncSender<Vec<u8>>,
    counters: Arc<Counters>,
    /// Set when the writer thread ends, however it ends.
    done: Arc<Done>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl AuditLog {
    /// Starts the writer (a dedicated OS thread named "riskgate-audit") for `cfg.path`,
    /// rotating at `cfg.max_file_mb` MiB (0 = never rotate) and keeping `cfg.keep_files`
    /// rotated files. Does not look at `cfg.enabled`: the caller decides whether to start
    /// an audit log at all. Never fails: problems with the file show up in the stats.
    pub fn start(cfg: &crate::config::AuditConfig) -> AuditLog {
        AuditLog::with_limits(
            cfg.path.clone(),
            cfg.queue_capacity,
            cfg.max_file_mb.saturating_mul(1024 * 1024),
            cfg.keep_files,
        )
    }

    /// Like [`AuditLog::start`], with the file size limit in bytes (0 = never rotate).
    /// A `queue_capacity` of 0 is taken as 1.
    pub fn with_limits(path: PathBuf, queue_capacity: usize, max_file_bytes: u64, keep_files: usize) -> AuditLog {
        AuditLog::spawn(path, queue_capacity, max_file_bytes, keep_files, RETRY_BACKOFF)
    }

    fn spawn(
        path: PathBuf,
        queue_capacity: usize,
        max_file_bytes: u64,
        keep_files: usize,
        retry_backoff: Duration,
    ) -> AuditLog {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(queue_capacity.max(1));
        let done = Arc::new(Done::default());
        let done_guard = DoneGuard(Arc::clone(&done));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            rx,
            counters: Arc::clone(&counters),
            path: path.clone(),
            max_file_bytes: if max_file_bytes == 0 { u64::MAX } else { max_file_bytes },
            keep_files,
            retry_backoff,
            file: None,
            size: 0,
            rotatable: false,
            pending: 0,
            last_flush: Instant::now(),
            retry_at: None,
            rotate_retry_at: None,
        };
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.to_string())
            .spawn(move || {
                // Signals `close` when this closure ends, however it ends.
                let _done = done_guard;
                writer.run();
            });
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(_) => {
                // The closure (and with it the receiver) is gone: every record will be
                // dropped and counted. Serving goes on.
                counters.error();
                None
            }
        };
        AuditLog {
            tx,
            counters,
            done,
            thread,
            path,
        }
    }

    /// Enqueues one record (one JSON line WITHOUT the trailing newline). Never blocks,
    /// never allocates beyond the line itself: when the queue is full (or the writer is
    /// gone) the record is dropped and counted.
    pub fn record(&self, line: Vec<u8>) {
        // Count first, so the writer can never settle a record before it is counted.
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(line).is_err() {
            self.counters.settle_dropped(1);
        }
    }

    /// The counters right now.
    pub fn stats(&self) -> AuditStats {
        self.counters.snapshot()
    }

    /// The current file (rotated files are this path with `.1`, `.2`, … appended).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes what is queued and stops the writer; waits at most `deadline`. Returns
    /// the final stats. A writer that is stuck (e.g. blocked opening a FIFO nobody
    /// reads, or on a hung disk) is detached, not joined: it finishes on its own if it
    /// ever gets unstuck, and the returned stats show what was still `queued`.
    pub fn close(self, deadline: Duration) -> AuditStats {
        let AuditLog {
            tx,
            counters,
            done,
            thread,
            path: _,
        } = self;
        // Disconnects the queue: the writer drains what is left, flushes and exits.
        drop(tx);
        if done.wait(deadline) {
            // The writer has finished: joining is immediate.
            if let Some(handle) = thread {
                let _ = handle.join();
            }
        } else {
            // Still busy or stuck: detach it.
            drop(thread);
        }
        counters.snapshot()
    }
}

/// "The writer thread has ended", waitable with a timeout (and `Sync`, unlike a
/// `Receiver`, so that `AuditLog` can be shared behind an `Arc`).
#[derive(Default)]
struct Done {
    ended: Mutex<bool>,
    cond: Condvar,
}

impl Done {
    /// Waits until the writer has ended or `deadline` has passed; returns whether it ended.
    fn wait(&self, deadline: Duration) -> bool {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let (ended, _) = self
            .cond
            .wait_timeout_while(ended, deadline, |ended| !*ended)
            .unwrap_or_else(PoisonError::into_inner);
        *ended
    }
}

/// Marks `Done` when dropped, i.e. when the writer thread's closure returns or unwinds.
struct DoneGuard(Arc<Done>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        *self.0.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.cond.notify_all();
    }
}

/// The writer thread's state. Owns the file exclusively.
struct Writer {
    rx: Receiver<Vec<u8>>,
    counters: Arc<Counters>,
    path: PathBuf,
    /// `u64::MAX` when rotation is off.
    max_file_bytes: u64,
    keep_files: usize,
    retry_backoff: Duration,
    file: Option<BufWriter<File>>,
    /// Bytes in the current file, including what is still buffered.
    size: u64,
    /// Only regular files are rotated (never a FIFO, /dev/stdout, …).
    rotatable: bool,
    /// Records in the buffer, not yet flushed (still counted as `queued`).
    pending: u64,
    last_flush: Instant,
    /// After a failure, no open attempt before this instant.
    retry_at: Option<Instant>,
    /// After a failed rotation, no new rotation attempt before this instant.
    rotate_retry_at: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut idle_naps = 0;
        loop {
            let line = match self.rx.try_recv() {
                Ok(line) => {
                    idle_naps = 0;
                    line
                }
                Err(TryRecvError::Empty) => {
                    // Momentarily idle: make everything so far visible, then wait.
                    self.flush();
                    if idle_naps < IDLE_NAPS {
                        // Under load, nap instead of parking on the queue: a parked
                        // receiver is woken by every record (a futex wake and a context
                        // switch per request, on the request path's core), a napping one
                        // picks up a batch.
                        idle_naps += 1;
                        std::thread::sleep(NAP);
                        continue;
                    }
                    match self.rx.recv() {
                        Ok(line) => {
                            // Traffic is back: nap again when the queue runs dry, or
                            // every later record would wake this thread on its own.
                            idle_naps = 0;
                            line
                        }
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.write_record(&line);
            drop(line);
            // The clock only every 64 records: under load that is a fraction of a ms.
            if self.pending % 64 == 0 && self.pending > 0 && self.last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
            }
        }
        self.flush();
        self.close_file();
    }

    fn write_record(&mut self, line: &[u8]) {
        let need = (line.len() as u64).saturating_add(1);
        if self.file.is_none() && !self.open() {
            self.counters.settle_dropped(1);
            return;
        }
        if self.rotatable
            && self.size > 0
            && self.size.saturating_add(need) > self.max_file_bytes
            && due(self.rotate_retry_at)
        {
            self.rotate();
            if self.file.is_none() {
                self.counters.settle_dropped(1);
                return;
            }
        }
        let result = match self.file.as_mut() {
            Some(w) => w.write_all(line).and_then(|()| w.write_all(b"\n")),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.pending += 1;
                self.size = self.size.saturating_add(need);
            }
            Err(_) => {
                // This record and everything buffered with it are lost.
                self.pending += 1;
                self.fail();
            }
        }
    }

    /// Opens (or reopens) the file unless a backoff is running. Returns whether a file
    /// is open. A failure is counted and starts the backoff.
    fn open(&mut self) -> bool {
        if !due(self.retry_at) {
            return false;
        }
        match open_append(&self.path) {
            Ok((file, meta)) => {
                self.retry_at = None;
                self.rotatable = meta.file_type().is_file();
                self.size = if self.rotatable { meta.len() } else { 0 };
                let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
                // A previous run (or a failed write) may have left a torn last line:
                // terminate it so the next record starts on a line of its own.
                if self.rotatable && self.size > 0 && !ends_with_newline(&self.path) {
                    if w.write_all(b"\n").is_err() {
                        self.file = Some(w);
                        self.fail();
                        return false;
                    }
                    self.size += 1;
                }
                self.file = Some(w);
                true
            }
            Err(_) => {
                self.counters.error();
                self.retry_at = Some(Instant::now() + self.retry_backoff);
                false
            }
        }
    }

    /// Flushes the buffer; on success the buffered records are settled as written.
    fn flush(&mut self) {
        self.last_flush = Instant::now();
        let Some(w) = self.file.as_mut() else {
            return;
        };
        if self.pending == 0 && w.buffer().is_empty() {
            return;
        }
        match w.flush() {
            Ok(()) => {
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                self.counters.settle_written(self.pending);
                self.pending = 0;
            }
            Err(_) => self.fail(),
        }
    }

    /// An I/O error on the open file: count it, drop the buffered records, abandon the
    /// file (without another flush attempt) and start the reopen backoff.
    fn fail(&mut self) {
        self.counters.error();
        self.counters.settle_dropped(self.pending);
        self.pending = 0;
        if let Some(w) = self.file.take() {
            // `into_parts` hands back the file without flushing the rest of the buffer.
            let (file, _unwritten) = w.into_parts();
            drop(file);
        }
        self.retry_at = Some(Instant::now() + self.retry_backoff);
    }

    /// Closes the file after a final flush (which the caller has done).
    fn close_file(&mut self) {
        if let Some(w) = self.file.take() {
            let (file, _unwritten) = w.into_parts();
            drop(file);
        }
    }

    /// Closes the full file, shifts the rotated files by one and reopens a fresh one.
    /// A failed rename keeps the current file (it grows past the limit) and retries the
    /// rotation after the backoff, rather than losing records.
    fn rotate(&mut self) {
        self.flush();
        if self.file.is_none() {
            return; // the flush failed; `fail` has run
        }
        self.close_file();
        match shift_files(&self.path, self.keep_files) {
            Ok(()) => {
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                self.rotate_retry_at = None;
            }
            Err(_) => {
                self.counters.error();
                self.rotate_retry_at = Some(Instant::now() + self.retry_backoff);
            }
        }
        // Reopen now (a fresh file after a rotation, the old one after a failure).
        self.retry_at = None;
        self.open();
    }
}

/// No deadline, or a deadline that has passed.
fn due(deadline: Option<Instant>) -> bool {
    match deadline {
        None => true,
        Some(at) => Instant::now() >= at,
    }
}

/// Opens `path` for appending, creating it (but not its directory).
fn open_append(path: &Path) -> io::Result<(File, fs::Metadata)> {
    let file = OpenOptions::new().append(true).create(true).open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Whether the regular file at `path` ends with '\n'. Unreadable counts as yes: the
/// check is a courtesy, never a reason to stop writing.
fn ends_with_newline(path: &Path) -> bool {
    let check = || -> io::Result<bool> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::End(-1))?;
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        Ok(last[0] == b'\n')
    };
    check().unwrap_or(true)
}

/// `path` with `.n` appended to its file name.
fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn exists(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// path.(k-1) → path.k, …, path → path.1; with `keep == 0` the current file is deleted.
/// Only the run of existing files from `.1` up to the first gap is shifted (a gap
/// absorbs the shift), so a large `keep` does not cost a rename per slot.
fn shift_files(path: &Path, keep: usize) -> io::Result<()> {
    if keep == 0 {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    // The slot that receives the shift: the first missing one, else `keep` (whose file,
    // the oldest, is replaced and so deleted).
    let top = (1..keep).find(|&n| !exists(&rotated_name(path, n))).unwrap_or(keep);
    for n in (1..top).rev() {
        fs::rename(rotated_name(path, n), rotated_name(path, n + 1))?;
    }
    fs::rename(path, rotated_name(path, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const WAIT: Duration = Duration::from_secs(10);

    fn lines_of(path: &Path) -> Vec<String> {
        match fs::read_to_string(path) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A fixed-width record: `{"i":000042}` (12 bytes, 13 with the newline).
    fn rec(i: usize) -> Vec<u8> {
        format!("{{\"i\":{i:06}}}").into_bytes()
    }

    fn rec_str(i: usize) -> String {
        format!("{{\"i\":{i:06}}}")
    }

    /// Waits (up to `WAIT`) until `n` records are written.
    fn wait_written(log: &AuditLog, n: u64) {
        let start = Instant::now();
        while log.stats().written < n && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn writes_records_one_per_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 4096, 1 << 30, 3);
        for i in 0..2000 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert!(stats.flushes >= 1);
        assert_eq!(
            stats,
            AuditStats {
                written: 2000,
                flushes: stats.flushes,
                ..AuditStats::default()
            }
        );
        let expected: Vec<String> = (0..2000).map(rec_str).collect();
        assert_eq!(lines_of(&path), expected);
        assert!(!rotated_name(&path, 1).exists());
    }

    #[test]
    fn start_uses_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::AuditConfig {
            path: dir.path().join("a.jsonl"),
            queue_capacity: 16,
            max_file_mb: 1,
            keep_files: 2,
            ..Default::default()
        };
        let log = AuditLog::start(&cfg);
        assert_eq!(log.path(), cfg.path.as_path());
        log.record(b"{}".to_vec());
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 1);
        assert_eq!(fs::read(&cfg.path).unwrap(), b"{}\n");
    }

    #[test]
    fn rotation_shifts_files_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // 13-byte lines, 100-byte files: 7 records per file.
        let log = AuditLog::with_limits(path.clone(), 10_000, 100, 3);
        for i in 0..25 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 25);
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.rotations, 3);
        // Oldest first: .3, .2, .1, current. Nothing was rotated away.
        let files = [
            rotated_name(&path, 3),
            rotated_name(&path, 2),
            rotated_name(&path, 1),
            path.clone(),
        ];
        let per_file: Vec<Vec<String>> = files.iter().map(|p| lines_of(p)).collect();
        assert_eq!(per_file[0], (0..7).map(rec_str).collect::<Vec<_>>());
        assert_eq!(per_file[1], (7..14).map(rec_str).collect::<Vec<_>>());
        assert_eq!(
            per_file[2],
            (14..21).map(rec_str).collect::<Vec<_>>(),
            ".1 is the newest rotated file"
        );
        assert_eq!(per_file[3], (21..25).map(rec_str).collect::<Vec<_>>());
        let all: Vec<String> = per_file.concat();
        assert_eq!(all.len() as u64, stats.written);
        assert_eq!(all, (0..25).map(rec_str).collect::<Vec<_>>());
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 100);
        }
        assert!(!rotated_name(&path, 4).exists());
    }

    #[test]
    fn rotation_keeps_exactly_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 10_000, 100, 3);
        for i in 0..200 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 200);
        assert_eq!(stats.rotations, 28); // ceil(200 / 7) - 1
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
        );
        // The surviving files hold the latest records, contiguous, without duplicates.
        let all: Vec<String> = [3, 2, 1]
            .iter()
            .map(|&n| lines_of(&rotated_name(&path, n)))
            .chain(std::iter::once(lines_of(&path)))
            .collect::<Vec<_>>()
            .concat();
        let first = 200 - all.len();
        assert_eq!(all, (first..200).map(rec_str).collect::<Vec<_>>());
        assert_eq!(all.len(), 3 * 7 + 4);
    }

    #[test]
    fn keep_zero_deletes_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 10_000, 100, 0);
        for i in 0..20 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 20);
        assert_eq!(stats.rotations, 2);
        assert_eq!(stats.errors, 0);
        assert_eq!(lines_of(&path), (14..20).map(rec_str).collect::<Vec<_>>());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn oversized_record_is_written_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 100, 50, 5);
        let big = format!("{{\"big\":\"{}\"}}", "x".repeat(200));
        log.record(rec(1));
        log.record(big.clone().into_bytes());
        log.record(rec(2));
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 3);
        assert_eq!(stats.rotations, 2);
        assert_eq!(lines_of(&rotated_name(&path, 2)), [rec_str(1)]);
        assert_eq!(lines_of(&rotated_name(&path, 1)), [big]);
        assert_eq!(lines_of(&path), [rec_str(2)]);
    }

    #[test]
    fn existing_file_counts_toward_the_limit_and_torn_line_is_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        fs::write(&path, b"{\"torn\":").unwrap();
        let log = AuditLog::with_limits(path.clone(), 100, 1000, 2);
        log.record(rec(1));
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 1);
        assert_eq!(lines_of(&path), ["{\"torn\":".to_string(), rec_str(1)]);

        // 95 bytes already there: the next 13-byte record goes to a fresh file.
        fs::write(&path, vec![b'\n'; 95]).unwrap();
        let log = AuditLog::with_limits(path.clone(), 100, 100, 2);
        log.record(rec(2));
        let stats = log.close(WAIT);
        assert_eq!(stats.rotations, 1);
        assert_eq!(fs::metadata(rotated_name(&path, 1)).unwrap().len(), 95);
        assert_eq!(lines_of(&path), [rec_str(2)]);
    }

    #[cfg(unix)]
    #[test]
    fn full_queue_drops_and_counts_and_close_detaches_a_stuck_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        // Nobody reads the FIFO: the writer blocks in open() on the first record.
        let log = AuditLog::with_limits(fifo.clone(), 16, 1 << 20, 3);
        for i in 0..10_000 {
            log.record(rec(i));
        }
        let during = log.stats();
        assert!(during.dropped > 0);
        assert_eq!(during.written, 0);
        assert_eq!(during.dropped + during.queued, 10_000);
        assert!(during.queued <= 17, "queue (16) + the one in the writer's hand");
        let stats = log.close(Duration::from_millis(200));
        assert_eq!(stats.written, 0);
        assert_eq!(stats.dropped + stats.queued, 10_000);

        // Unstick the detached writer: it writes what it had accepted, then exits.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let r = File::open(&fifo).and_then(|mut f| f.read_to_string(&mut text));
            let _ = tx.send(r.map(|_| text));
        });
        let text = rx.recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(text.lines().count() as u64, stats.queued);
        assert!(text.starts_with(&rec_str(0)));
    }

    #[test]
    fn unwritable_path_counts_errors_and_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 100, 1000, 2);
        for i in 0..50 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 0);
        assert_eq!(stats.dropped, 50);
        assert_eq!(stats.queued, 0);
        assert!(stats.errors >= 1);
        // The backoff bounds the attempts: not one per record.
        assert!(stats.errors < 50, "{stats:?}");
        assert!(!path.exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn write_errors_count_and_drop_and_devices_are_never_rotated() {
        // Every write to /dev/full fails with ENOSPC: a full disk.
        let log = AuditLog::with_limits(PathBuf::from("/dev/full"), 100, 10, 2);
        for i in 0..30 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 0);
        assert_eq!(stats.dropped, 30);
        assert_eq!(stats.queued, 0);
        assert_eq!(stats.rotations, 0);
        assert!(stats.errors >= 1 && stats.errors < 30, "{stats:?}");
        assert!(!Path::new("/dev/full.1").exists());
    }

    #[test]
    fn failed_rotation_keeps_writing_to_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // A non-empty directory where `.1` should go: the rename fails.
        let blocker = rotated_name(&path, 1);
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"x").unwrap();
        let log = AuditLog::with_limits(path.clone(), 100, 100, 1);
        for i in 0..20 {
            log.record(rec(i));
        }
        let stats = log.close(WAIT);
        assert_eq!(stats.written, 20);
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.rotations, 0);
        assert!(stats.errors >= 1 && stats.errors < 20, "{stats:?}");
        assert_eq!(lines_of(&path), (0..20).map(rec_str).collect::<Vec<_>>());
    }

    #[test]
    fn reopens_after_backoff_once_the_path_is_usable() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("later");
        let path = sub.join("audit.jsonl");
        let log = AuditLog::spawn(path.clone(), 100, 1000, 2, Duration::from_millis(50));
        log.record(rec(1));
        let start = Instant::now();
        while log.stats().errors == 0 && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(log.stats().errors, 1);
        fs::create_dir(&sub).unwrap();
        // Well past the 50 ms backoff, which starts a little after `errors` is counted.
        std::thread::sleep(Duration::from_millis(400));
        log.record(rec(2));
        let stats = log.close(WAIT);
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.dropped, 1);
        assert_eq!(stats.written, 1);
        assert_eq!(lines_of(&path), [rec_str(2)]);
    }

    #[test]
    fn close_flushes_everything_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 100_000, 1 << 30, 1);
        for i in 0..50_000 {
            log.record(rec(i));
        }
        // An unbounded deadline is fine too (no overflow, no panic).
        let stats = log.close(Duration::MAX);
        assert_eq!(stats.written, 50_000);
        assert_eq!(stats.dropped, 0);
        assert_eq!(stats.queued, 0);
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 50_000);
        assert_eq!(lines[49_999], rec_str(49_999));
    }

    #[test]
    fn drop_without_close_still_drains_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::with_limits(path.clone(), 100, 1 << 20, 1));
        let other = Arc::clone(&log);
        std::thread::spawn(move || other.record(rec(7))).join().unwrap();
        drop(log);
        let start = Instant::now();
        while lines_of(&path).is_empty() && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lines_of(&path), [rec_str(7)]);
    }

    #[test]
    fn batches_again_after_parking_on_an_idle_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 1000, 1 << 20, 1);
        log.record(rec(0));
        wait_written(&log, 1);
        // Idle for longer than all its naps: the writer parks on the queue.
        std::thread::sleep(NAP * IDLE_NAPS + Duration::from_millis(200));
        let before = log.stats().flushes;
        // A steady trickle, a record about every millisecond: the first one wakes the
        // writer, the rest must be picked up in batches, one flush per nap at most.
        let start = Instant::now();
        for i in 1..=200 {
            log.record(rec(i));
            std::thread::sleep(Duration::from_millis(1));
        }
        wait_written(&log, 201);
        let elapsed = start.elapsed();
        let flushes = log.stats().flushes - before;
        assert_eq!(log.stats().written, 201);
        // One flush on waking, then at most one per nap (a nap lasts at least NAP).
        let most = elapsed.as_millis() / NAP.as_millis() + 2;
        assert!(
            u128::from(flushes) <= most,
            "{flushes} flushes for 200 records in {elapsed:?}: the writer was woken record by record"
        );
        log.close(WAIT);
        assert_eq!(lines_of(&path).len(), 201);
    }

    #[test]
    fn flushes_when_the_queue_goes_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::with_limits(path.clone(), 100, 1 << 20, 1);
        log.record(rec(1));
        // The queue goes idle: the record reaches the file without close().
        wait_written(&log, 1);
        assert_eq!(log.stats().written, 1);
        assert_eq!(log.stats().queued, 0);
        assert_eq!(lines_of(&path), [rec_str(1)]);
        log.close(WAIT);
    }
}
