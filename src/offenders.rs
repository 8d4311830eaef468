//! Offenders: the devices, accounts, IPs and inviters stopped most often in the last
//! minutes, for the admin `/top` endpoint and the bounded `riskgate_top_offender_stopped`
//! gauge, so that during an incident SREs and security staff see who is attacking
//! without identities ever becoming metric labels.
//!
//! Each kind keeps a Space-Saving sketch (Metwally, Agrawal, El Abbadi 2005) of at most
//! `capacity` identities per window: a new identity that finds the sketch full takes the
//! slot of the smallest count and inherits that count as its possible over-count
//! (`error`). Any identity stopped more than `total / capacity` times in a window is
//! guaranteed to be in it. Two windows are kept (current and previous, each
//! `window_ms` long); a report adds them up, so it covers between one and two windows
//! and older stops age out without a timer. Memory is bounded by
//! 4 kinds × 2 windows × `capacity` × (identity ≤ 256 bytes + ~64 bytes of slot and index).
//!
//! One short `std::sync::Mutex` per kind, taken only inside synchronous calls (never
//! across an `.await`), and only for stopped requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::extract::Identities;
use crate::ip_text::IpText;

/// The identity kinds reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Device,
    Account,
    Ip,
    Inviter,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Device, Kind::Account, Kind::Ip, Kind::Inviter];

    /// The metric label value and the JSON field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Account => "account",
            Kind::Ip => "ip",
            Kind::Inviter => "inviter",
        }
    }
}

/// One identity in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offender {
    /// The raw identity value as the gateway read it (capped at 256 bytes).
    pub id: String,
    /// Stopped requests counted for it (an estimate: at most `error` too high).
    pub stopped: u64,
    /// The most `stopped` may over-count (0 = exact).
    pub error: u64,
}

#[derive(Debug)]
struct Slot {
    /// Shared with the index: one allocation per identity, not two.
    key: Arc<str>,
    count: u64,
    error: u64,
}

/// A Space-Saving sketch of at most `capacity` identities.
#[derive(Debug, Default)]
struct Sketch {
    slots: Vec<Slot>,
    /// Keyed by client input: foldhash with a random seed per process (as the state's
    /// keys are), cheaper than SipHash for short ids.
    index: HashMap<Arc<str>, usize, foldhash::quality::RandomState>,
    /// Once full: the slots that had the least count (`min`) at the last scan, highest
    /// index first, so the last valid one is the first slot with the least count. Counts
    /// only grow, so a slot that left the minimum never returns to it; the list is
    /// rebuilt when it runs out, not on every newcomer.
    at_min: Vec<usize>,
    min: u64,
}

impl Sketch {
    fn add(&mut self, key: &str, capacity: usize) {
        if let Some(&i) = self.index.get(key) {
            self.slots[i].count += 1;
            return;
        }
        let key: Arc<str> = key.into();
        if self.slots.len() < capacity {
            self.index.insert(key.clone(), self.slots.len());
            self.slots.push(Slot {
                key,
                count: 1,
                error: 0,
            });
            return;
        }
        // Full: the newcomer replaces the smallest count and inherits it as its error.
        // A linear scan over a few hundred slots costs less than keeping a heap in order
        // on every increment (measured in benches/offenders.rs).
        let Some((i, min)) = self.first_min() else {
            return;
        };
        let old = std::mem::replace(
            &mut self.slots[i],
            Slot {
                key: key.clone(),
                count: min + 1,
                error: min,
            },
        );
        self.index.remove(&old.key);
        self.index.insert(key, i);
    }

    /// The first slot with the least count, and that count (what a scan with
    /// `min_by_key` finds), taken off the minimum list: it is about to be replaced.
    fn first_min(&mut self) -> Option<(usize, u64)> {
        loop {
            match self.at_min.pop() {
                Some(i) if self.slots[i].count == self.min => return Some((i, self.min)),
                Some(_) => continue,
                None => {
                    self.min = self.slots.iter().map(|s| s.count).min()?;
                    let min = self.min;
                    let slots = &self.slots;
                    self.at_min.clear();
                    self.at_min
                        .extend((0..slots.len()).rev().filter(|&i| slots[i].count == min));
                }
            }
        }
    }
}

/// The current and previous windows of one kind.
#[derive(Debug, Default)]
struct Windows {
    /// Start of the current window (ms since the epoch, aligned to the window length).
    start_ms: u64,
    current: Sketch,
    previous: Sketch,
}

impl Windows {
    fn advance(&mut self, now_ms: u64, window_ms: u64) {
        let start = now_ms - now_ms % window_ms;
        if start <= self.start_ms {
            return;
        }
        self.previous = if start - self.start_ms == window_ms {
            std::mem::take(&mut self.current)
        } else {
            // More than one window passed: everything is old.
            self.current = Sketch::default();
            Sketch::default()
        };
        self.start_ms = start;
    }

    fn top(&self, k: usize) -> Vec<Offender> {
        let mut merged: HashMap<&str, (u64, u64)> = HashMap::with_capacity(self.current.slots.len() * 2);
        for s in self.current.slots.iter().chain(&self.previous.slots) {
            let e = merged.entry(&s.key).or_default();
            e.0 += s.count;
            e.1 += s.error;
        }
        let mut all: Vec<Offender> = merged
            .into_iter()
            .map(|(id, (stopped, error))| Offender {
                id: id.to_string(),
                stopped,
                error,
            })
            .collect();
        // Highest first; ties by id so that reports are stable.
        all.sort_unstable_by(|a, b| b.stopped.cmp(&a.stopped).then_with(|| a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }
}

/// Top offenders per kind over the last one to two windows.
#[derive(Debug)]
pub struct Offenders {
    kinds: [Mutex<Windows>; 4],
    capacity: usize,
    window_ms: u64,
}

/// A report: per kind, the top identities, highest first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window_s: u64,
    /// The report covers stops from this time (ms since the epoch) until now.
    pub since_ms: u64,
    pub devices: Vec<Offender>,
    pub accounts: Vec<Offender>,
    pub ips: Vec<Offender>,
    pub inviters: Vec<Offender>,
}

impl Offenders {
    /// `capacity` identities per kind and window (at least 1), windows of `window_ms`.
    pub fn new(capacity: usize, window_ms: u64) -> Offenders {
        Offenders {
            kinds: Default::default(),
            capacity: capacity.max(1),
            window_ms: window_ms.max(1),
        }
    }

    fn lock(&self, kind: Kind) -> MutexGuard<'_, Windows> {
        // Nothing panics while the lock is held; a poisoned lock still holds usable counts.
        self.kinds[kind as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one stopped request against each identity it carries, at event time `ts_ms`.
    pub fn record(&self, ids: &Identities, ts_ms: u64) {
        let ip = IpText::of(ids.ip);
        let values = [
            (Kind::Device, ids.device.as_deref()),
            (Kind::Account, ids.user.as_deref()),
            (Kind::Ip, Some(ip.as_str())),
            (Kind::Inviter, ids.inviter.as_deref()),
        ];
        for (kind, value) in values {
            let Some(value) = value else { continue };
            let mut w = self.lock(kind);
            w.advance(ts_ms, self.window_ms);
            w.current.add(value, self.capacity);
        }
    }

    /// The top `k` of one kind as of `now_ms`.
    pub fn top(&self, kind: Kind, k: usize, now_ms: u64) -> Vec<Offender> {
        let mut w = self.lock(kind);
        w.advance(now_ms, self.window_ms);
        w.top(k)
    }

    /// The top `k` of every kind as of `now_ms`.
    pub fn report(&self, k: usize, now_ms: u64) -> Report {
        let start = now_ms - now_ms % self.window_ms;
        Report {
            window_s: self.window_ms / 1_000,
            since_ms: start.saturating_sub(self.window_ms),
            devices: self.top(Kind::Device, k, now_ms),
            accounts: self.top(Kind::Account, k, now_ms),
            ips: self.top(Kind::Ip, k, now_ms),
            inviters: self.top(Kind::Inviter, k, now_ms),
        }
    }

    /// Identities tracked per kind and window.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// The sketch as it was before the minimum list: a scan per newcomer.
    fn scan_add(slots: &mut Vec<(String, u64, u64)>, key: &str, capacity: usize) {
        if let Some(s) = slots.iter_mut().find(|s| s.0 == key) {
            s.1 += 1;
            return;
        }
        if slots.len() < capacity {
            slots.push((key.to_string(), 1, 0));
            return;
        }
        let (i, min) = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.1))
            .min_by_key(|&(_, c)| c)
            .unwrap();
        slots[i] = (key.to_string(), min + 1, min);
    }

    #[test]
    fn the_minimum_list_replaces_the_same_slots_as_a_scan() {
        let mut sketch = Sketch::default();
        let mut scan = Vec::new();
        let mut x = 7u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Skewed keys: a few heavy ones, a long tail of newcomers.
            let key = format!("k{}", (x >> 33) % (1 + (x >> 60) * 40));
            sketch.add(&key, 16);
            scan_add(&mut scan, &key, 16);
            let mine: Vec<_> = sketch
                .slots
                .iter()
                .map(|s| (s.key.to_string(), s.count, s.error))
                .collect();
            assert_eq!(mine, scan);
        }
    }

    fn ids(device: &str, user: &str, ip: &str) -> Identities {
        let ip: IpAddr = ip.parse().unwrap();
        Identities {
            user: Some(user.into()),
            device: Some(device.into()),
            ip,
            subnet: crate::extract::subnet_of(ip),
            phone: None,
            campaign: None,
            inviter: None,
            amount: None,
            pay_account: None,
            address: None,
            user_agent: None,
            app_version: None,
            wifi: false,
        }
    }

    fn counts(v: &[Offender]) -> Vec<(&str, u64)> {
        v.iter().map(|o| (o.id.as_str(), o.stopped)).collect()
    }

    #[test]
    fn exact_below_capacity() {
        let o = Offenders::new(8, 60_000);
        for (n, d) in [(5, "farm"), (3, "spoof"), (1, "one")] {
            for _ in 0..n {
                o.record(&ids(d, "u", "203.0.113.7"), 1_000);
            }
        }
        assert_eq!(counts(&o.top(Kind::Device, 2, 1_000)), [("farm", 5), ("spoof", 3)]);
        assert_eq!(counts(&o.top(Kind::Ip, 5, 1_000)), [("203.0.113.7", 9)]);
        assert!(o.top(Kind::Inviter, 5, 1_000).is_empty());
        assert!(o.top(Kind::Device, 5, 1_000).iter().all(|x| x.error == 0));
    }

    #[test]
    fn heavy_hitters_survive_a_flood_of_one_off_ids() {
        let o = Offenders::new(16, 60_000);
        for i in 0..100_000u64 {
            let device = if i % 10 == 0 {
                "farm".to_string()
            } else {
                format!("spoofed-{i}")
            };
            o.record(&ids(&device, "u", "198.51.100.1"), 1_000);
        }
        let top = o.top(Kind::Device, 3, 1_000);
        assert_eq!(top[0].id, "farm");
        // Space-Saving never under-counts, and over-counts by at most `error`.
        assert!(
            top[0].stopped >= 10_000 && top[0].stopped - top[0].error <= 10_000,
            "{top:?}"
        );
        let w = o.lock(Kind::Device);
        assert!(w.current.slots.len() <= 16 && w.current.index.len() <= 16);
    }

    #[test]
    fn windows_age_out() {
        let o = Offenders::new(8, 60_000);
        o.record(&ids("old", "u", "10.0.0.1"), 10_000);
        o.record(&ids("new", "u", "10.0.0.1"), 70_000);
        // Previous and current window both count.
        assert_eq!(counts(&o.top(Kind::Device, 5, 70_000)), [("new", 1), ("old", 1)]);
        // One window later the old one is gone.
        assert_eq!(counts(&o.top(Kind::Device, 5, 130_000)), [("new", 1)]);
        // Long idle: everything is gone.
        assert!(o.top(Kind::Device, 5, 1_000_000).is_empty());
        // Events stamped in the past count in the current window rather than panicking.
        o.record(&ids("late", "u", "10.0.0.1"), 5);
        assert_eq!(counts(&o.top(Kind::Device, 5, 1_000_000)), [("late", 1)]);
    }

    #[test]
    fn ip_text_is_the_display_form() {
        for ip in [
            "203.0.113.7",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }
}
