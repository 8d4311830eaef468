//! The in-process state backend: bounded maps of windows, distinct sets and GCRA cells.

use std::cell::Cell;
use std::sync::Arc;

use governor::clock::Clock;
use governor::nanos::Nanos;
use governor::state::StateStore as GovernorStore;
use governor::middleware::NoOpMiddleware;
use governor::RateLimiter;

use super::bounded::{BoundedMap, HeapSize};
use super::window::{DistinctSet, Windows};
use super::{
    combine, KeyKind, LimitOutcome, Observation, Readout, StateError, StateStore, TableStats, DISTINCT,
    DISTINCT_WINDOWS_S,
};

/// Per identity (global across routes): when it was first seen, and the distinct
/// members related to it (accounts on a device, devices of an account, …).
#[derive(Debug, Clone, Default)]
pub struct IdentityEntry {
    first_seen_ms: u64,
    members: DistinctSet,
}

impl HeapSize for IdentityEntry {
    const HAS_HEAP: bool = true;

    fn heap_bytes(&self) -> usize {
        self.members.heap_bytes()
    }
}

/// All state in this process, within a memory budget.
pub struct MemoryState {
    counters: BoundedMap<Windows>,
    identities: BoundedMap<IdentityEntry>,
    limits: Arc<BoundedMap<u64>>,
    budget_bytes: u64,
}

/// How the budget is shared: counters are per route, so they get the largest part.
const COUNTERS_SHARE: f64 = 0.5;
const IDENTITIES_SHARE: f64 = 0.4;

impl MemoryState {
    /// `ttl_ms` is how long an untouched key is kept at least (it is gone after twice that).
    pub fn new(budget_bytes: u64, ttl_ms: u64) -> Self {
        let part = |share: f64| (budget_bytes as f64 * share) as usize;
        MemoryState {
            counters: BoundedMap::new(part(COUNTERS_SHARE), ttl_ms),
            identities: BoundedMap::new(part(IDENTITIES_SHARE), ttl_ms),
            limits: Arc::new(BoundedMap::new(part(1.0 - COUNTERS_SHARE - IDENTITIES_SHARE), ttl_ms)),
            budget_bytes,
        }
    }

    /// The synchronous core of `observe`, for callers outside an async context.
    pub fn observe_now(&self, obs: &Observation) -> Readout {
        let mut out = Readout::default();
        let now = obs.ts_ms;
        for (i, key) in obs.keys.iter().enumerate() {
            if let Some(key) = key {
                out.counts[i] = self.counters.update(combine(*key, obs.route), now, |w, _| w.bump(now));
            }
        }
        let now_s = (now / 1_000) as u32;
        for (i, (on, member)) in DISTINCT.iter().enumerate() {
            let (Some(on_key), Some(member_key)) = (obs.keys[*on as usize], obs.keys[*member as usize]) else {
                continue;
            };
            // Fingerprints are the hash's top half; the entry key differs from the
            // counters' (no route mixed in), so the two tables never collide.
            let fp = (member_key >> 32) as u32;
            let (counts, age) = self.identities.update(on_key, now, |e, new| {
                if new {
                    e.first_seen_ms = now;
                }
                (e.members.add(fp, now_s, DISTINCT_WINDOWS_S), now.saturating_sub(e.first_seen_ms))
            });
            out.distinct[i] = counts;
            match on {
                KeyKind::Device => out.device_age_ms = Some(age),
                KeyKind::User => out.user_age_ms = Some(age),
                _ => {}
            }
        }
        // An account or device with nothing to relate to still has an age.
        for (kind, slot) in [(KeyKind::User, &mut out.user_age_ms), (KeyKind::Device, &mut out.device_age_ms)] {
            if let (None, Some(key)) = (*slot, obs.keys[kind as usize]) {
                *slot = Some(self.identities.update(key, now, |e, new| {
                    if new {
                        e.first_seen_ms = now;
                    }
                    now.saturating_sub(e.first_seen_ms)
                }));
            }
        }
        for check in &obs.limits {
            out.limits.push(self.check_limit(check.key, check.quota, now));
        }
        out
    }

    fn check_limit(&self, key: u64, quota: governor::Quota, now_ms: u64) -> LimitOutcome {
        // governor measures time from the clock's reading at construction; reading 0 then
        // and the event time now keeps every cell on one event-time axis across limiters.
        let limiter: RateLimiter<u64, _, _, NoOpMiddleware<Nanos>> = RateLimiter::new(quota, LimitCells { map: &self.limits, now_ms }, EventClock(Cell::new(Nanos::from(0))));
        let now = Nanos::from(now_ms.saturating_mul(1_000_000));
        limiter.clock().0.set(now);
        match limiter.check_key(&key) {
            Ok(()) => LimitOutcome::Allowed,
            Err(not_until) => LimitOutcome::Exceeded {
                retry_after_ms: not_until.wait_time_from(now).as_millis().max(1) as u64,
            },
        }
    }
}

impl StateStore for MemoryState {
    fn observe(&self, obs: &Observation) -> impl std::future::Future<Output = Result<Readout, StateError>> + Send {
        std::future::ready(Ok(self.observe_now(obs)))
    }

    fn stats(&self) -> Vec<TableStats> {
        [("counters", self.counters.stats()), ("identities", self.identities.stats()), ("limits", self.limits.stats())]
            .into_iter()
            .map(|(table, s)| TableStats { table, keys: s.keys, bytes: s.bytes, evictions: s.evictions })
            .collect()
    }

    fn budget_bytes(&self) -> Option<u64> {
        Some(self.budget_bytes)
    }
}

/// The event time, as governor's clock.
struct EventClock(Cell<Nanos>);

impl Clock for EventClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        self.0.get()
    }
}

/// governor's view of our bounded GCRA cells (theoretical arrival times in ns).
struct LimitCells<'a> {
    map: &'a BoundedMap<u64>,
    now_ms: u64,
}

impl GovernorStore for LimitCells<'_> {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.map.update(*key, self.now_ms, |tat, new| {
            let prev = if new { None } else { Some(Nanos::from(*tat)) };
            let (out, next) = f(prev)?;
            *tat = next.as_u64();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KeyHasher, LimitCheck};
    use smallvec::smallvec;
    use std::num::NonZeroU32;

    const T0: u64 = 1_762_819_200_000;

    fn obs(h: &KeyHasher, ts_ms: u64, user: &str, device: &str) -> Observation {
        let mut keys = [None; 7];
        keys[KeyKind::User as usize] = Some(h.key(KeyKind::User, user));
        keys[KeyKind::Device as usize] = Some(h.key(KeyKind::Device, device));
        keys[KeyKind::Route as usize] = Some(h.key(KeyKind::Route, "coupon"));
        Observation { ts_ms, route: h.key(KeyKind::Route, "coupon"), keys, limits: smallvec![] }
    }

    #[test]
    fn accounts_per_device_and_ages() {
        let h = KeyHasher::seeded(1);
        let s = MemoryState::new(8 << 20, 90_000_000);
        for (i, user) in ["a", "b", "c", "a"].iter().enumerate() {
            let r = s.observe_now(&obs(&h, T0 + i as u64 * 1_000, user, "farm-phone"));
            let users_on_device = r.distinct[0];
            assert_eq!(users_on_device, [(i.min(2) + 1) as u32; 2]);
        }
        let r = s.observe_now(&obs(&h, T0 + 10_000, "a", "farm-phone"));
        assert_eq!(r.user_age_ms, Some(10_000));
        assert_eq!(r.device_age_ms, Some(10_000));
        assert_eq!(r.counts[KeyKind::Device as usize][1], 5);
        assert_eq!(r.counts[KeyKind::User as usize][1], 3);
        assert_eq!(r.counts[KeyKind::Ip as usize], [0; 4]);
    }

    #[test]
    fn gcra_limit_in_event_time() {
        let h = KeyHasher::seeded(1);
        let s = MemoryState::new(8 << 20, 90_000_000);
        let quota = governor::Quota::per_minute(NonZeroU32::new(6).unwrap()).allow_burst(NonZeroU32::new(2).unwrap());
        let check = |ts| {
            let mut o = obs(&h, ts, "u", "d");
            o.limits.push(LimitCheck { key: 42, quota });
            s.observe_now(&o).limits[0]
        };
        assert_eq!(check(T0), LimitOutcome::Allowed);
        assert_eq!(check(T0 + 1), LimitOutcome::Allowed);
        assert!(matches!(check(T0 + 2), LimitOutcome::Exceeded { retry_after_ms } if retry_after_ms > 9_000));
        // One cell replenishes every 10 s of event time.
        assert_eq!(check(T0 + 10_001), LimitOutcome::Allowed);
        assert!(matches!(check(T0 + 10_002), LimitOutcome::Exceeded { .. }));
    }
}
