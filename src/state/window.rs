//! Per-key counters: sliding-window request counts and small distinct-member sets.

use smallvec::SmallVec;

use super::bounded::HeapSize;

/// The four windows every key is counted over, in milliseconds: 1 s, 1 min, 1 h, 24 h.
pub const WINDOWS_MS: [u64; 4] = [1_000, 60_000, 3_600_000, 86_400_000];

/// Sliding-window counters (Cloudflare's two-bucket estimate) for `N` of the four
/// windows, from `WINDOWS_MS[FROM]` on:
/// `current + previous × (share of the previous bucket still inside the window)`.
/// 8 bytes per window and key instead of a log of timestamps; the estimate is exact
/// when traffic is even and off by at most the previous bucket's count otherwise.
/// Windows are independent of each other, so `HourDay` reads what `Windows` would in
/// its last two.
#[derive(Debug, Clone, PartialEq)]
pub struct Sliding<const N: usize, const FROM: usize> {
    last_ms: u64,
    current: [u32; N],
    previous: [u32; N],
}

/// All four windows: what every key counts per route.
pub type Windows = Sliding<4, 0>;
/// 1 h and 24 h: the derived counters an identity carries (accounts first seen on a
/// device, an account's browsing), read over those two windows only.
pub type HourDay = Sliding<2, 2>;

impl<const N: usize, const FROM: usize> Default for Sliding<N, FROM> {
    fn default() -> Self {
        Sliding {
            last_ms: 0,
            current: [0; N],
            previous: [0; N],
        }
    }
}

impl<const N: usize, const FROM: usize> HeapSize for Sliding<N, FROM> {}

impl<const N: usize, const FROM: usize> Sliding<N, FROM> {
    /// Counts one request at `now_ms` and returns the estimated counts per window,
    /// this request included. A late (out-of-order) event counts as at the latest time seen.
    pub fn bump(&mut self, now_ms: u64) -> [u32; N] {
        let now = now_ms.max(self.last_ms);
        let mut out = [0; N];
        for (w, out) in out.iter_mut().enumerate() {
            let len = WINDOWS_MS[FROM + w];
            let (bucket, last_bucket) = (now / len, self.last_ms / len);
            if bucket == last_bucket + 1 {
                self.previous[w] = self.current[w];
                self.current[w] = 0;
            } else if bucket > last_bucket + 1 {
                self.previous[w] = 0;
                self.current[w] = 0;
            }
            self.current[w] = self.current[w].saturating_add(1);
            let remaining = len - now % len;
            let carried = (u64::from(self.previous[w]) * remaining / len) as u32;
            *out = self.current[w].saturating_add(carried);
        }
        self.last_ms = now;
        out
    }

    /// The counts at `now_ms` without counting anything.
    pub fn read(&self, now_ms: u64) -> [u32; N] {
        let now = now_ms.max(self.last_ms);
        let mut out = [0; N];
        for (w, out) in out.iter_mut().enumerate() {
            let len = WINDOWS_MS[FROM + w];
            let (bucket, last_bucket) = (now / len, self.last_ms / len);
            let (current, previous) = if bucket == last_bucket {
                (self.current[w], self.previous[w])
            } else if bucket == last_bucket + 1 {
                (0, self.current[w])
            } else {
                (0, 0)
            };
            let remaining = len - now % len;
            *out = current.saturating_add((u64::from(previous) * remaining / len) as u32);
        }
        out
    }

    /// `bump` when `count`, else `read`.
    pub fn bump_if(&mut self, count: bool, now_ms: u64) -> [u32; N] {
        if count {
            self.bump(now_ms)
        } else {
            self.read(now_ms)
        }
    }
}

/// Most members a distinct set remembers; counts saturate here. A device with 32
/// accounts is a farm whatever the exact number.
pub const DISTINCT_CAP: usize = 32;

/// Distinct members (by 32-bit fingerprint) with the second each was last seen, so one
/// set answers both the 1 h and the 24 h distinct count. When full, the member seen
/// longest ago makes room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DistinctSet {
    members: SmallVec<[(u32, u32); 2]>,
}

impl HeapSize for DistinctSet {
    const HAS_HEAP: bool = true;

    fn heap_bytes(&self) -> usize {
        if self.members.spilled() {
            self.members.capacity() * std::mem::size_of::<(u32, u32)>()
        } else {
            0
        }
    }
}

impl DistinctSet {
    /// Whether `member` was seen within `window_s` of `now_s`.
    pub fn contains(&self, member: u32, now_s: u32, window_s: u32) -> bool {
        self.members
            .iter()
            .any(|(m, seen)| *m == member && now_s.saturating_sub(*seen) < window_s)
    }

    /// Members seen within each window, without adding one.
    pub fn count(&self, now_s: u32, windows_s: [u32; 2]) -> [u32; 2] {
        windows_s.map(|w| {
            self.members
                .iter()
                .filter(|(_, seen)| now_s.saturating_sub(*seen) < w)
                .count() as u32
        })
    }

    /// Records `member` at `now_s` and returns the distinct members seen within each of
    /// `windows_s` (member included).
    pub fn add(&mut self, member: u32, now_s: u32, windows_s: [u32; 2]) -> [u32; 2] {
        let len = self.members.len();
        match self.members.iter().position(|(m, _)| *m == member) {
            Some(i) => self.members[i].1 = self.members[i].1.max(now_s),
            None if len < DISTINCT_CAP => self.members.push((member, now_s)),
            None => {
                if let Some(oldest) = self.members.iter_mut().min_by_key(|(_, seen)| *seen) {
                    *oldest = (member, now_s);
                }
            }
        }
        self.count(now_s, windows_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A naive model: keep every timestamp and count those inside each window.
    fn exact(times: &[u64], now: u64) -> [u32; 4] {
        WINDOWS_MS.map(|len| times.iter().filter(|t| now - **t < len).count() as u32)
    }

    #[test]
    fn counts_match_an_exact_log_for_even_traffic() {
        let mut w = Windows::default();
        let mut times = vec![];
        // One request every 250 ms for two minutes, from a minute boundary (the
        // two-bucket estimate assumes the previous bucket's traffic was even).
        for i in 0..480u64 {
            let now = 1_699_999_980_000 + i * 250;
            times.push(now);
            let got = w.bump(now);
            let want = exact(&times, now);
            for k in 0..4 {
                let diff = (i64::from(got[k]) - i64::from(want[k])).abs();
                assert!(diff <= 1, "window {k} at {i}: got {got:?} want {want:?}");
            }
        }
    }

    #[test]
    fn buckets_reset_after_a_gap() {
        let mut w = Windows::default();
        let t = 1_700_000_000_000;
        for _ in 0..10 {
            w.bump(t);
        }
        assert_eq!(w.bump(t), [11, 11, 11, 11]);
        // Two seconds later the 1 s window has forgotten everything.
        assert_eq!(w.bump(t + 2_000)[0], 1);
        // Two days later everything has.
        assert_eq!(w.bump(t + 2 * 86_400_000), [1, 1, 1, 1]);
    }

    #[test]
    fn read_matches_bump_without_counting() {
        let mut w = Windows::default();
        let t = 1_699_999_980_000;
        for i in 0..100 {
            w.bump(t + i * 700);
        }
        for later in [0, 500, 30_000, 90_000, 4_000_000, 90_000_000] {
            let now = t + 99 * 700 + later;
            let mut probe = w.clone();
            let bumped = probe.bump(now);
            assert_eq!(w.read(now), bumped.map(|c| c - 1), "{later}");
        }
    }

    #[test]
    fn hour_day_reads_what_the_last_two_windows_read() {
        let (mut all, mut two) = (Windows::default(), HourDay::default());
        let mut t = 1_699_999_980_000;
        for i in 0..2_000u64 {
            // Uneven gaps, from milliseconds to hours, so that buckets roll and reset.
            t += (i * 7_919) % 5_000_000;
            let (a, b) = if i % 3 == 0 {
                (all.read(t), two.read(t))
            } else {
                (all.bump(t), two.bump(t))
            };
            assert_eq!([a[2], a[3]], b, "at {i}");
        }
    }

    #[test]
    fn late_events_count_at_the_latest_time() {
        let mut w = Windows::default();
        let t = 1_700_000_000_000;
        w.bump(t);
        assert_eq!(w.bump(t - 5_000), [2, 2, 2, 2]);
    }

    #[test]
    fn distinct_counts_per_window() {
        let mut s = DistinctSet::default();
        let w = [3_600, 86_400];
        assert_eq!(s.add(1, 1_000, w), [1, 1]);
        assert_eq!(s.add(1, 1_010, w), [1, 1]);
        assert_eq!(s.add(2, 1_020, w), [2, 2]);
        // Two hours on: members 1 and 2 have left the 1 h window only.
        assert_eq!(s.add(3, 1_020 + 7_200, w), [1, 3]);
        assert!(s.contains(3, 1_020 + 7_200, 3_600));
        assert!(!s.contains(1, 1_020 + 7_200, 3_600));
        assert!(s.contains(1, 1_020 + 7_200, 86_400));
        assert_eq!(s.count(1_020 + 7_200, w), [1, 3]);
        assert_eq!(s.heap_bytes() > 0, s.members.spilled());
    }

    #[test]
    fn distinct_counts_saturate_at_the_cap() {
        let mut s = DistinctSet::default();
        let mut last = [0; 2];
        for m in 0..1_000u32 {
            last = s.add(m, 5_000 + m, [3_600, 86_400]);
        }
        assert_eq!(last, [DISTINCT_CAP as u32; 2]);
        assert!(s.heap_bytes() <= DISTINCT_CAP * 8 * 2);
    }
}
