//! The in-process state backend: bounded maps of windows, distinct sets and GCRA cells.

use std::cell::Cell;
use std::sync::Arc;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore as GovernorStore;
use governor::RateLimiter;

use super::bounded::{BoundedMap, HeapSize};
use super::cluster::{self, ClusterEntry, ClusterStep};
use super::window::{DistinctSet, Windows, DISTINCT_CAP};
use super::{
    combine, fingerprint, KeyKind, LimitOutcome, Observation, Readout, StateError, StateStore, TableStats, COUNTED,
    DISTINCT, DISTINCT_WINDOWS_S, TAG_ASSISTED, TAG_BLIND_INVITEES, TAG_BROWSE, TAG_CLUSTER, TAG_HASTY,
    TAG_INVITEE_SUBNETS, TAG_NEW_DEVICES, TAG_NEW_FIRST, TAG_NEW_INVITEES, TAG_NEW_USERS, TAG_PREFIX_NEW_DEVICES,
    TAG_SUBNETS, TAG_UAS,
};

/// Per identity (global across routes): when it was first seen, the timing of its
/// requests, and the distinct members related to it (accounts on a device, devices of
/// an account, invitees of an inviter, …).
#[derive(Debug, Clone, Default)]
pub struct IdentityEntry {
    first_seen_ms: u64,
    last_ms: u64,
    last_gap_ms: u32,
    /// Consecutive gaps within 5 % of the previous one: a timer, not a person.
    regular: u32,
    members: DistinctSet,
}

impl IdentityEntry {
    fn time(&mut self, now: u64) {
        if self.last_ms > 0 && now > self.last_ms {
            let gap = (now - self.last_ms).min(u64::from(u32::MAX)) as u32;
            let tolerance = (gap / 20).max(25);
            if self.last_gap_ms > 0 && gap.abs_diff(self.last_gap_ms) <= tolerance {
                self.regular = self.regular.saturating_add(1);
            } else {
                self.regular /= 2;
            }
            self.last_gap_ms = gap;
        }
        self.last_ms = self.last_ms.max(now);
    }
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
    /// Graph node → its cluster, and the clusters (`cluster.rs`).
    pointers: BoundedMap<u64>,
    clusters: BoundedMap<ClusterEntry>,
    budget_bytes: u64,
}

/// How the budget is shared: counters are per route, so they get the largest part.
const COUNTERS_SHARE: f64 = 0.45;
const IDENTITIES_SHARE: f64 = 0.35;
const POINTERS_SHARE: f64 = 0.05;
const CLUSTERS_SHARE: f64 = 0.07;
const LIMITS_SHARE: f64 = 1.0 - COUNTERS_SHARE - IDENTITIES_SHARE - POINTERS_SHARE - CLUSTERS_SHARE;

impl MemoryState {
    /// `ttl_ms` is how long an untouched key is kept at least (it is gone after twice that).
    pub fn new(budget_bytes: u64, ttl_ms: u64) -> Self {
        let part = |share: f64| (budget_bytes as f64 * share) as usize;
        MemoryState {
            counters: BoundedMap::new(part(COUNTERS_SHARE), ttl_ms),
            identities: BoundedMap::new(part(IDENTITIES_SHARE), ttl_ms),
            limits: Arc::new(BoundedMap::new(part(LIMITS_SHARE), ttl_ms)),
            pointers: BoundedMap::new(part(POINTERS_SHARE), ttl_ms),
            clusters: BoundedMap::new(part(CLUSTERS_SHARE), ttl_ms),
            budget_bytes,
        }
    }

    /// The synchronous core of `observe`, for callers outside an async context.
    pub fn observe_now(&self, obs: &Observation) -> Readout {
        let mut out = Readout::default();
        let now = obs.ts_ms;
        let now_s = (now / 1_000) as u32;
        let key = |kind: KeyKind| obs.keys[kind as usize];
        for (i, k) in obs.keys[..COUNTED].iter().enumerate() {
            if let Some(k) = k {
                out.counts[i] = self.counters.update(combine(*k, obs.route), now, |w, _| w.bump(now));
            }
        }

        // One identity entry per identity: first seen, timing, distinct members.
        let mut user_new = false;
        let mut device_new = false;
        for (i, (on, member)) in DISTINCT.iter().enumerate() {
            let Some(on_key) = key(*on) else { continue };
            // Fingerprints are the hash's top half; entry keys carry no route, so they
            // never meet the counters' keys.
            let member_fp = key(*member).map(fingerprint);
            let timed = matches!(on, KeyKind::User | KeyKind::Device);
            let (counts, age, new, regular) = self.identities.update(on_key, now, |e, new| {
                if new {
                    e.first_seen_ms = now;
                }
                if timed {
                    e.time(now);
                }
                let counts = match member_fp {
                    Some(fp) => e.members.add(fp, now_s, DISTINCT_WINDOWS_S),
                    None => e.members.count(now_s, DISTINCT_WINDOWS_S),
                };
                (counts, now.saturating_sub(e.first_seen_ms), new, e.regular)
            });
            out.distinct[i] = counts;
            match on {
                KeyKind::User => (out.user_age_ms, out.user_regular, user_new) = (Some(age), regular, new),
                KeyKind::Device => (out.device_age_ms, out.device_regular, device_new) = (Some(age), regular, new),
                _ => {}
            }
        }

        out.cluster = self.cluster(obs, &out);

        // Derived counters: bumped when this request is the event they count, read
        // otherwise. The (1 h, 24 h) windows are the last two of the four.
        let counter = |k: u64, tag: u64, bump: bool| {
            let w = if bump {
                self.counters.update(combine(k, tag), now, |w, _| w.bump(now))
            } else {
                self.counters.peek(combine(k, tag), |w| w.read(now)).unwrap_or_default()
            };
            [w[2], w[3]]
        };
        if let Some(user) = key(KeyKind::User) {
            out.browse = counter(user, TAG_BROWSE, obs.browse);
        }
        for (i, kind) in [KeyKind::Device, KeyKind::Ip, KeyKind::Subnet].into_iter().enumerate() {
            if let Some(k) = key(kind) {
                out.new_users[i] = counter(k, TAG_NEW_USERS, user_new);
            }
        }
        if let (Some(device), Some(subnet)) = (key(KeyKind::Device), key(KeyKind::Subnet)) {
            out.subnets_per_device = self.identities.update(combine(device, TAG_SUBNETS), now, |e, _| {
                e.members.add(fingerprint(subnet), now_s, DISTINCT_WINDOWS_S)
            });
        }
        if let Some(prefix) = obs.device_prefix {
            out.prefix_new_devices = counter(prefix, TAG_PREFIX_NEW_DEVICES, device_new);
        }
        if let Some(ua) = key(KeyKind::UserAgent) {
            out.ua_new_devices = counter(ua, TAG_NEW_DEVICES, device_new);
            if let Some(device) = key(KeyKind::Device) {
                out.uas_per_device = self.identities.update(combine(device, TAG_UAS), now, |e, _| {
                    e.members.add(fingerprint(ua), now_s, DISTINCT_WINDOWS_S)
                });
            }
        }

        // A new device's first request on this route: hasty when its account browsed at
        // most once. A cloned device profile sends hasty first requests one after another.
        let device_day = out.counts[KeyKind::Device as usize][3];
        let new_device = out.device_age_ms.is_some_and(|age| age < obs.new_account_ms);
        if let (Some(ua), false, 1, true) = (key(KeyKind::UserAgent), obs.browse, device_day, new_device) {
            let hasty = out.browse[0] <= 1;
            let ua_route = combine(ua, obs.route);
            out.first_requests = [
                counter(ua_route, TAG_HASTY, hasty)[0],
                counter(ua_route, TAG_NEW_FIRST, true)[0],
                counter(obs.route, TAG_HASTY, hasty)[0],
                counter(obs.route, TAG_NEW_FIRST, true)[0],
            ];
        }

        // The referral graph: who assisted whom, and where the inviter was seen.
        if let (Some(inviter), Some(inviter_user), Some(user)) =
            (key(KeyKind::Inviter), obs.inviter_as_user, key(KeyKind::User))
        {
            let brand_new = out.user_age_ms.unwrap_or(0) < obs.new_account_ms;
            out.inviter_new_invitees = counter(inviter, TAG_NEW_INVITEES, brand_new);
            out.inviter_blind_invitees = counter(inviter, TAG_BLIND_INVITEES, out.browse[0] == 0);
            let day = DISTINCT_WINDOWS_S[1];
            let inviter_fp = fingerprint(inviter_user);
            let seen_with = |k: Option<u64>| {
                k.and_then(|k| self.identities.peek(k, |e| e.members.contains(inviter_fp, now_s, day)))
                    .unwrap_or(false)
            };
            out.inviter_on_device = seen_with(key(KeyKind::Device));
            out.inviter_on_subnet = seen_with(key(KeyKind::Subnet));
            let (ring, chain) = self
                .identities
                .peek(combine(inviter_user, TAG_ASSISTED), |e| {
                    (
                        e.members.contains(fingerprint(user), now_s, day),
                        e.members.count(now_s, DISTINCT_WINDOWS_S)[1] > 0,
                    )
                })
                .unwrap_or((false, false));
            (out.referral_ring, out.inviter_is_invitee) = (ring, chain);
            out.inviter_age_ms = self
                .identities
                .peek(inviter_user, |e| now.saturating_sub(e.first_seen_ms));
            self.identities.update(combine(user, TAG_ASSISTED), now, |e, _| {
                e.members.add(inviter_fp, now_s, DISTINCT_WINDOWS_S);
            });
            if let Some(subnet) = key(KeyKind::Subnet) {
                out.inviter_invitee_subnets =
                    self.identities
                        .update(combine(inviter, TAG_INVITEE_SUBNETS), now, |e, _| {
                            e.members.add(fingerprint(subnet), now_s, DISTINCT_WINDOWS_S)
                        });
            }
        }

        for check in &obs.limits {
            out.limits.push(self.check_limit(check.key, check.quota, now));
        }
        out
    }

    /// The account's cluster: unions the clusters of the request's account and of the
    /// identities that link accounts (device, phone, payment account). Addresses do not:
    /// one office or one parcel locker receives many unrelated people's orders.
    fn cluster(&self, obs: &Observation, out: &Readout) -> [u32; 3] {
        let step = cluster_step(obs, out, |k| self.pointers.update(k, obs.ts_ms, |p, _| *p));
        cluster::step(&self.pointers, &self.clusters, &step, obs.ts_ms)
    }

    fn check_limit(&self, key: u64, quota: governor::Quota, now_ms: u64) -> LimitOutcome {
        // governor measures time from the clock's reading at construction; reading 0 then
        // and the event time now keeps every cell on one event-time axis across limiters.
        let limiter: RateLimiter<u64, _, _, NoOpMiddleware<Nanos>> = RateLimiter::new(
            quota,
            LimitCells {
                map: &self.limits,
                now_ms,
            },
            EventClock(Cell::new(Nanos::from(0))),
        );
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
        [
            ("counters", self.counters.stats()),
            ("identities", self.identities.stats()),
            ("limits", self.limits.stats()),
            ("graph_pointers", self.pointers.stats()),
            ("clusters", self.clusters.stats()),
        ]
        .into_iter()
        .map(|(table, s)| TableStats {
            table,
            keys: s.keys,
            bytes: s.bytes,
            evictions: s.evictions,
        })
        .collect()
    }

    fn budget_bytes(&self) -> Option<u64> {
        Some(self.budget_bytes)
    }
}

/// Readout index of each identity that links accounts in the cluster graph.
const LINKS: [(KeyKind, usize); 3] = [(KeyKind::Device, 0), (KeyKind::Phone, 4), (KeyKind::PayAccount, 6)];

/// The id of a cluster this request would form: from its first graph node and its time.
pub(crate) fn new_cluster_id(obs: &Observation) -> u64 {
    let creator = [KeyKind::User, KeyKind::Device, KeyKind::Phone, KeyKind::PayAccount]
        .into_iter()
        .find_map(|kind| obs.keys[kind as usize])
        .unwrap_or(0);
    combine(combine(creator, TAG_CLUSTER), obs.ts_ms) | 1
}

/// The cluster step of one request (`redis.lua` does the same inside the script).
fn cluster_step(obs: &Observation, out: &Readout, mut pointer: impl FnMut(u64) -> u64) -> ClusterStep {
    let key = |kind: KeyKind| obs.keys[kind as usize];
    let mut step = ClusterStep::default();
    let user = key(KeyKind::User);
    if let Some(user) = user {
        let k = combine(user, TAG_CLUSTER);
        step.nodes.push((k, pointer(k)));
        step.has_account = true;
        step.account_new = out.user_age_ms.unwrap_or(0) < cluster::NEW_ACCOUNT_MS;
    }
    for (kind, rel) in LINKS {
        // A saturated id (a placeholder many people share) links nobody.
        if let Some(k) = key(kind).filter(|_| (out.distinct[rel][1] as usize) < DISTINCT_CAP) {
            let k = combine(k, TAG_CLUSTER);
            step.nodes.push((k, pointer(k)));
        }
    }
    step.new_id = new_cluster_id(obs);
    if let Some(campaign) = key(KeyKind::Campaign) {
        let fp = fingerprint(combine(campaign, obs.route));
        step.campaign = Some(fp);
        let first_here = user.is_some() && out.counts[KeyKind::User as usize][3] == 1;
        if !obs.browse && first_here {
            step.claim = Some(fp);
        }
    }
    step
}

/// Runs a future of the in-memory state, which never waits, to its end: offline
/// callers (replay, benches) need no async runtime for it.
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        // MemoryState's futures are `std::future::ready`; nothing else is polled here.
        std::task::Poll::Pending => unreachable!("the in-memory state never waits"),
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
        let mut keys = [None; crate::state::KINDS];
        keys[KeyKind::User as usize] = Some(h.key(KeyKind::User, user));
        keys[KeyKind::Device as usize] = Some(h.key(KeyKind::Device, device));
        keys[KeyKind::Route as usize] = Some(h.key(KeyKind::Route, "coupon"));
        Observation {
            ts_ms,
            route: h.key(KeyKind::Route, "coupon"),
            keys,
            inviter_as_user: None,
            device_prefix: None,
            browse: false,
            new_account_ms: 600_000,
            limits: smallvec![],
            timeout_ms: None,
        }
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
