//! The in-process state backend: bounded maps of windows, distinct sets and GCRA cells.

use std::cell::Cell;
use std::sync::Arc;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore as GovernorStore;
use governor::RateLimiter;
use smallvec::SmallVec;

use super::bounded::{BoundedMap, HeapSize, Layout};
use super::cluster::{self, ClusterEntry, ClusterStep};
use super::window::{DistinctSet, HourDay, Windows, DISTINCT_CAP};
use super::{
    combine, fingerprint, KeyKind, LimitCheck, LimitOutcome, Observation, Readout, StateError, StateStore, TableStats,
    COUNTED, DISTINCT, DISTINCT_WINDOWS_S, POPULATION, TAG_ASSISTED, TAG_BLIND_INVITEES, TAG_CLUSTER, TAG_HASTY,
    TAG_INVITEE_SUBNETS, TAG_IP_NEW_DEVICES, TAG_NEW_DEVICES, TAG_NEW_FIRST, TAG_NEW_INVITEES, TAG_PREFIX_NEW_DEVICES,
    TAG_WIFI_NETWORKS, TAG_WIFI_NEW_DEVICES,
};

/// Per identity (global across routes): when it was first seen, the timing of its
/// requests, the distinct members related to it (accounts on a device, devices of an
/// account, invitees of an inviter, …), and what else the request reads of it, kept
/// in the same entry so that one lookup serves them all.
#[derive(Debug, Clone, Default)]
pub struct IdentityEntry {
    first_seen_ms: u64,
    last_ms: u64,
    last_gap_ms: u32,
    /// Consecutive gaps within 5 % of the previous one: a timer, not a person.
    regular: u32,
    members: DistinctSet,
    /// The cluster this graph node (account, device, phone, payment account) points at
    /// (`cluster.rs`); 0 for none.
    cluster: u64,
    /// The identity's derived counter: accounts first seen on this device, IP or
    /// subnet; an account's browsing requests.
    counter: HourDay,
    /// Its requests per route (counted kinds only), by route key. Routes come from the
    /// config, so this is as bounded as the config; most identities use one.
    routes: SmallVec<[RouteCounts; 1]>,
}

/// An identity's requests on one route, and the GCRA cell (theoretical arrival time,
/// 0 for none) of the route's first limit keyed by this kind of identity.
#[derive(Debug, Clone, Default)]
struct RouteCounts {
    route: u64,
    windows: Windows,
    tat: u64,
}

/// What one touch of an identity entry reads.
struct Touched {
    distinct: [u32; 2],
    age_ms: u64,
    new: bool,
    regular: u32,
    cluster: u64,
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

    /// Counts a request on `obs.route` and returns its windows; tests (and consumes)
    /// the route's limit on this kind of identity kept here, if any, into `limits`.
    fn count(&mut self, obs: &Observation, kind: KeyKind, limits: &mut [LimitOutcome]) -> [u32; 4] {
        let i = match self.routes.iter().position(|r| r.route == obs.route) {
            Some(i) => i,
            None => {
                self.routes.push(RouteCounts {
                    route: obs.route,
                    ..RouteCounts::default()
                });
                self.routes.len() - 1
            }
        };
        let counts = &mut self.routes[i];
        if let Some(j) = obs.limits.iter().position(|c| colocated(c) && c.kind == kind) {
            let cell = EntryCell(Cell::from_mut(&mut counts.tat));
            limits[j] = gcra(cell, obs.limits[j].quota, obs.ts_ms);
        }
        counts.windows.bump(obs.ts_ms)
    }

    /// One request of (or about) this identity: first seen, timing when `timed`, and
    /// its member when the request has one.
    fn touch(&mut self, new: bool, now: u64, timed: bool, member: Option<u32>) -> Touched {
        if new {
            self.first_seen_ms = now;
        }
        if timed {
            self.time(now);
        }
        let now_s = (now / 1_000) as u32;
        let distinct = match member {
            Some(fp) => self.members.add(fp, now_s, DISTINCT_WINDOWS_S),
            None => self.members.count(now_s, DISTINCT_WINDOWS_S),
        };
        Touched {
            distinct,
            age_ms: now.saturating_sub(self.first_seen_ms),
            new,
            regular: self.regular,
            cluster: self.cluster,
        }
    }
}

impl HeapSize for IdentityEntry {
    const HAS_HEAP: bool = true;

    fn heap_bytes(&self) -> usize {
        let routes = if self.routes.spilled() {
            self.routes.capacity() * std::mem::size_of::<RouteCounts>()
        } else {
            0
        };
        self.members.heap_bytes() + routes
    }
}

/// A device: its identity entry, the subnets and user agents it came with, and the
/// Wi-Fi lines its accounts used.
#[derive(Debug, Clone, Default)]
pub struct DeviceEntry {
    id: IdentityEntry,
    subnets: DistinctSet,
    uas: DistinctSet,
    lines: LineHandoff,
}

/// How long a device's previous account's line counts for `LineHandoff`.
const HANDOFF_WINDOW_S: u32 = 86_400;

/// A device's last Wi-Fi request and the last one by another account: the account and
/// the IP (fingerprints), and when (event seconds). A family's shared phone changes
/// hands at home, on one line; a crew's pooled phone is handed to the next account at
/// another of the crew's lines.
#[derive(Debug, Clone, Copy, Default)]
struct LineHandoff {
    user: u32,
    ip: u32,
    at_s: Option<u32>,
    other_ip: u32,
    other_at_s: Option<u32>,
}

impl LineHandoff {
    /// A Wi-Fi request by `user` from `ip`: whether the device's previous account used
    /// it, within `HANDOFF_WINDOW_S`, from another IP.
    fn observe(&mut self, user: u32, ip: u32, now_s: u32) -> bool {
        if let Some(at) = self.at_s {
            if self.user != user {
                (self.other_ip, self.other_at_s) = (self.ip, Some(at));
            }
        }
        (self.user, self.ip) = (user, ip);
        self.at_s = Some(self.at_s.map_or(now_s, |at| at.max(now_s)));
        self.other_at_s
            .is_some_and(|at| now_s.saturating_sub(at) < HANDOFF_WINDOW_S && self.other_ip != ip)
    }
}

impl HeapSize for DeviceEntry {
    const HAS_HEAP: bool = true;

    fn heap_bytes(&self) -> usize {
        self.id.heap_bytes() + self.subnets.heap_bytes() + self.uas.heap_bytes()
    }
}

/// All state in this process, within a memory budget.
pub struct MemoryState {
    counters: BoundedMap<Windows>,
    /// Identities other than devices, and the referral sets keyed by an identity and a tag.
    identities: BoundedMap<IdentityEntry>,
    devices: BoundedMap<DeviceEntry>,
    limits: Arc<BoundedMap<u64>>,
    /// Merged and live clusters (`cluster.rs`); the nodes' pointers live in their entries.
    clusters: BoundedMap<ClusterEntry>,
    budget_bytes: u64,
}

/// How the budget is shared: identities carry most of the state (their per-route
/// counts included), the counters table only the hot campaign and route keys and the
/// derived counters of user agents, device-id prefixes and inviters.
const COUNTERS_SHARE: f64 = 0.15;
const IDENTITIES_SHARE: f64 = 0.45;
const DEVICES_SHARE: f64 = 0.25;
const CLUSTERS_SHARE: f64 = 0.07;
const LIMITS_SHARE: f64 = 1.0 - COUNTERS_SHARE - IDENTITIES_SHARE - DEVICES_SHARE - CLUSTERS_SHARE;

/// The order identities are touched in: the account first, since whether it is new
/// decides what its device, IP and subnet count (indexes into `DISTINCT`).
const TOUCH_ORDER: [usize; 8] = [1, 0, 2, 3, 4, 5, 6, 7];

impl MemoryState {
    /// `ttl_ms` is how long an untouched key is kept at least (it is gone after twice that).
    pub fn new(budget_bytes: u64, ttl_ms: u64) -> Self {
        let part = |share: f64| (budget_bytes as f64 * share) as usize;
        // In the order spare budget goes to them: the tables a flood of new device ids or
        // accounts fills first.
        let shared = [
            BoundedMap::<DeviceEntry>::layout(part(DEVICES_SHARE)),
            BoundedMap::<IdentityEntry>::layout(part(IDENTITIES_SHARE)),
            BoundedMap::<ClusterEntry>::layout(part(CLUSTERS_SHARE)),
            BoundedMap::<Windows>::layout(part(COUNTERS_SHARE)),
            BoundedMap::<u64>::layout(part(LIMITS_SHARE)),
        ];
        // Power-of-two tables leave part of each share unused, as heap room that most
        // values never need. Trimmed to their quarter of heap, the tables leave room to
        // double some of them; those that do not grow get their full share back.
        let mut layouts = shared.map(Layout::trimmed);
        let fits = |l: &[Layout; 5]| l.iter().map(Layout::bytes).sum::<usize>() <= budget_bytes as usize;
        for i in 0..3 {
            let mut grown = layouts;
            grown[i] = layouts[i].doubled();
            if fits(&grown) {
                layouts = grown;
            }
        }
        for (i, full) in shared.iter().enumerate() {
            let mut restored = layouts;
            restored[i] = *full;
            if layouts[i] == full.trimmed() && fits(&restored) {
                layouts = restored;
            }
        }
        let [devices, identities, clusters, counters, limits] = layouts;
        MemoryState {
            counters: BoundedMap::with_layout(counters, ttl_ms),
            identities: BoundedMap::with_layout(identities, ttl_ms),
            devices: BoundedMap::with_layout(devices, ttl_ms),
            limits: Arc::new(BoundedMap::with_layout(limits, ttl_ms)),
            clusters: BoundedMap::with_layout(clusters, ttl_ms),
            budget_bytes,
        }
    }

    /// The synchronous core of `observe`, for callers outside an async context.
    pub fn observe_now(&self, obs: &Observation) -> Readout {
        let mut out = Readout {
            limits: obs.limits.iter().map(|_| LimitOutcome::Allowed).collect(),
            ..Readout::default()
        };
        let now = obs.ts_ms;
        let now_s = (now / 1_000) as u32;
        let key = |kind: KeyKind| obs.keys[kind as usize];
        // Start every entry's cache misses at once; each lookup below would otherwise
        // wait for its own in turn (see `state::table`).
        for (on, _) in DISTINCT {
            if let Some(k) = key(on) {
                match on {
                    KeyKind::Device => self.devices.prefetch(k),
                    _ => self.identities.prefetch(k),
                }
            }
        }
        // Counted kinds with an identity entry are counted there; the campaign and the
        // route (one hot key each) here.
        for kind in [KeyKind::Campaign, KeyKind::Route] {
            if let Some(k) = key(kind) {
                out.counts[kind as usize] = self.counters.update(combine(k, obs.route), now, |w, _| w.bump(now));
            }
        }

        // One entry per identity: first seen, timing, distinct members, its derived
        // counter and its cluster pointer, all read and written in one lookup.
        let mut user_new = false;
        let mut device_new = false;
        // The cluster pointers of the account, device, phone and payment account.
        let mut pointers = [0u64; 4];
        let subnet_fp = key(KeyKind::Subnet).map(fingerprint);
        let ua_fp = key(KeyKind::UserAgent).map(fingerprint);
        for i in TOUCH_ORDER {
            let (on, member) = DISTINCT[i];
            let Some(on_key) = key(on) else { continue };
            // Fingerprints are the hash's top half; entry keys carry no route, so they
            // never meet the counters' keys.
            let member_fp = key(member).map(fingerprint);
            let t = match on {
                KeyKind::Device => self.devices.update(on_key, now, |d, new| {
                    let t = d.id.touch(new, now, true, member_fp);
                    out.counts[on as usize] = d.id.count(obs, on, &mut out.limits);
                    out.new_users[0] = d.id.counter.bump_if(user_new, now);
                    if let Some(fp) = subnet_fp {
                        out.subnets_per_device = d.subnets.add(fp, now_s, DISTINCT_WINDOWS_S);
                    }
                    if let Some(fp) = ua_fp {
                        out.uas_per_device = d.uas.add(fp, now_s, DISTINCT_WINDOWS_S);
                    }
                    if let (true, Some(user), Some(ip)) = (obs.wifi, key(KeyKind::User), key(KeyKind::Ip)) {
                        out.device_line_handoff = d.lines.observe(fingerprint(user), fingerprint(ip), now_s);
                    }
                    t
                }),
                _ => self.identities.update(on_key, now, |e, new| {
                    let t = e.touch(new, now, on == KeyKind::User, member_fp);
                    if (on as usize) < COUNTED {
                        out.counts[on as usize] = e.count(obs, on, &mut out.limits);
                    }
                    match on {
                        KeyKind::User => out.browse = e.counter.bump_if(obs.browse, now),
                        KeyKind::Ip => out.new_users[1] = e.counter.bump_if(user_new, now),
                        KeyKind::Subnet => out.new_users[2] = e.counter.bump_if(user_new, now),
                        _ => {}
                    }
                    t
                }),
            };
            out.distinct[i] = t.distinct;
            match on {
                KeyKind::User => {
                    (out.user_age_ms, out.user_regular, user_new) = (Some(t.age_ms), t.regular, t.new);
                    pointers[0] = t.cluster;
                }
                KeyKind::Device => {
                    (out.device_age_ms, out.device_regular, device_new) = (Some(t.age_ms), t.regular, t.new);
                    pointers[1] = t.cluster;
                }
                KeyKind::Phone => pointers[2] = t.cluster,
                KeyKind::PayAccount => pointers[3] = t.cluster,
                _ => {}
            }
        }

        out.cluster = self.cluster(obs, &out, pointers);

        // Derived counters of their own: bumped when this request is the event they
        // count, read otherwise. Most read their (1 h, 24 h) windows, the last two of the
        // four; new devices per IP its 1-minute one.
        let windows = |k: u64, tag: u64, bump: bool| {
            if bump {
                self.counters.update(combine(k, tag), now, |w, _| w.bump(now))
            } else {
                self.counters.peek(combine(k, tag), |w| w.read(now)).unwrap_or_default()
            }
        };
        let counter = |k: u64, tag: u64, bump: bool| {
            let w = windows(k, tag, bump);
            [w[2], w[3]]
        };
        if let Some(ip) = key(KeyKind::Ip) {
            out.ip_new_devices = windows(ip, TAG_IP_NEW_DEVICES, device_new)[1];
        }
        // New phones on Wi-Fi per network, against the whole population's in the same
        // minute: a network counts once while it has had one in the last minute.
        if let Some(subnet) = key(KeyKind::Subnet) {
            let bump = obs.wifi && device_new;
            let here = windows(subnet, TAG_WIFI_NEW_DEVICES, bump)[1];
            let all = windows(POPULATION, TAG_WIFI_NEW_DEVICES, bump)[1];
            let networks = windows(POPULATION, TAG_WIFI_NETWORKS, bump && here == 1)[1];
            out.wifi_new_devices = [here, all, networks];
        }
        if let Some(prefix) = obs.device_prefix {
            out.prefix_new_devices = counter(prefix, TAG_PREFIX_NEW_DEVICES, device_new);
        }
        if let Some(ua) = key(KeyKind::UserAgent) {
            out.ua_new_devices = counter(ua, TAG_NEW_DEVICES, device_new);
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
            let seen = |e: &IdentityEntry| e.members.contains(inviter_fp, now_s, day);
            out.inviter_on_device = key(KeyKind::Device)
                .and_then(|k| self.devices.peek(k, |d| seen(&d.id)))
                .unwrap_or(false);
            out.inviter_on_subnet = key(KeyKind::Subnet)
                .and_then(|k| self.identities.peek(k, seen))
                .unwrap_or(false);
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

        for (j, check) in obs.limits.iter().enumerate() {
            if !colocated(check) {
                let cells = LimitCells {
                    map: &self.limits,
                    key: check.key,
                    now_ms: now,
                };
                out.limits[j] = gcra(cells, check.quota, now);
            }
        }
        out
    }

    /// The account's cluster: unions the clusters of the request's account and of the
    /// identities that link accounts (device, phone, payment account). Addresses do not:
    /// one office or one parcel locker receives many unrelated people's orders.
    fn cluster(&self, obs: &Observation, out: &Readout, pointers: [u64; 4]) -> [u32; 3] {
        let step = cluster_step(obs, out, pointers);
        let device = obs.keys[KeyKind::Device as usize];
        let repoint = |node: u64, id: u64| {
            if Some(node) == device {
                self.devices.update(node, obs.ts_ms, |d, _| d.id.cluster = id);
            } else {
                self.identities.update(node, obs.ts_ms, |e, _| e.cluster = id);
            }
        };
        cluster::step(repoint, &self.clusters, &step, obs.ts_ms)
    }
}

/// Whether a limit's cell lives in its identity's entry: the route's first limit on a
/// kind whose entry counts per route. The others (campaign, route, a second limit on
/// one kind) live in the limits table.
fn colocated(check: &LimitCheck) -> bool {
    check.first_of_kind
        && matches!(
            check.kind,
            KeyKind::User | KeyKind::Device | KeyKind::Ip | KeyKind::Subnet | KeyKind::Phone | KeyKind::Inviter
        )
}

/// Tests one GCRA limit at event time `now_ms` on the cell `store` holds, consuming
/// it when the request conforms.
fn gcra<S: GovernorStore<Key = u64>>(store: S, quota: governor::Quota, now_ms: u64) -> LimitOutcome {
    // governor measures time from the clock's reading at construction; reading 0 then
    // and the event time now keeps every cell on one event-time axis across limiters.
    let limiter: RateLimiter<u64, _, _, NoOpMiddleware<Nanos>> =
        RateLimiter::new(quota, store, EventClock(Cell::new(Nanos::from(0))));
    let now = Nanos::from(now_ms.saturating_mul(1_000_000));
    limiter.clock().0.set(now);
    match limiter.check_key(&0) {
        Ok(()) => LimitOutcome::Allowed,
        Err(not_until) => LimitOutcome::Exceeded {
            retry_after_ms: not_until.wait_time_from(now).as_millis().max(1) as u64,
        },
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
            ("devices", self.devices.stats()),
            ("limits", self.limits.stats()),
            ("clusters", self.clusters.stats()),
        ]
        .into_iter()
        .map(|(table, s)| TableStats {
            table,
            keys: s.keys,
            bytes: s.bytes,
            entry_bytes: s.entry_bytes,
            evictions: s.evictions,
        })
        .collect()
    }

    fn budget_bytes(&self) -> Option<u64> {
        Some(self.budget_bytes)
    }
}

/// Each identity that links accounts in the cluster graph: its `Readout::distinct`
/// index and its place in `observe_now`'s pointers.
const LINKS: [(KeyKind, usize, usize); 3] = [
    (KeyKind::Device, 0, 1),
    (KeyKind::Phone, 4, 2),
    (KeyKind::PayAccount, 6, 3),
];

/// The id of a cluster this request would form: from its first graph node and its time.
pub(crate) fn new_cluster_id(obs: &Observation) -> u64 {
    let creator = [KeyKind::User, KeyKind::Device, KeyKind::Phone, KeyKind::PayAccount]
        .into_iter()
        .find_map(|kind| obs.keys[kind as usize])
        .unwrap_or(0);
    combine(combine(creator, TAG_CLUSTER), obs.ts_ms) | 1
}

/// The cluster step of one request (`redis.lua` does the same inside the script).
/// `pointers`: the account's, device's, phone's and payment account's.
fn cluster_step(obs: &Observation, out: &Readout, pointers: [u64; 4]) -> ClusterStep {
    let key = |kind: KeyKind| obs.keys[kind as usize];
    let mut step = ClusterStep::default();
    let user = key(KeyKind::User);
    if let Some(user) = user {
        step.nodes.push((user, pointers[0]));
        step.has_account = true;
        step.account_new = out.user_age_ms.unwrap_or(0) < cluster::NEW_ACCOUNT_MS;
    }
    for (kind, rel, at) in LINKS {
        // A saturated id (a placeholder many people share) links nobody.
        if let Some(k) = key(kind).filter(|_| (out.distinct[rel][1] as usize) < DISTINCT_CAP) {
            step.nodes.push((k, pointers[at]));
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

/// governor's view of one GCRA cell (theoretical arrival time in ns) of the limits
/// table: the limiter's own key is ignored.
struct LimitCells<'a> {
    map: &'a BoundedMap<u64>,
    key: u64,
    now_ms: u64,
}

impl GovernorStore for LimitCells<'_> {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, _: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A new cell is 0, which `EntryCell` reads as none yet.
        self.map.update(self.key, self.now_ms, |tat, _| {
            EntryCell(Cell::from_mut(tat)).measure_and_replace(&0, f)
        })
    }
}

/// governor's view of a GCRA cell kept in an identity's entry (0: none yet).
struct EntryCell<'a>(&'a Cell<u64>);

impl GovernorStore for EntryCell<'_> {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, _: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let prev = self.0.get();
        let (out, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
        self.0.set(next.as_u64());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KeyHasher;
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
            wifi: false,
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
    fn the_budget_left_by_power_of_two_tables_goes_to_devices_first() {
        for budget in [1u64 << 20, 16 << 20, 256 << 20, 1 << 30, 2 << 30] {
            let s = MemoryState::new(budget, 90_000_000);
            let tables = [
                s.counters.max_bytes(),
                s.identities.max_bytes(),
                s.devices.max_bytes(),
                s.limits.max_bytes(),
                s.clusters.max_bytes(),
            ];
            assert!(tables.iter().sum::<usize>() as u64 <= budget, "{budget}: {tables:?}");
            let plain = BoundedMap::<DeviceEntry>::new((budget as f64 * DEVICES_SHARE) as usize, 1);
            assert!(s.devices.capacity() >= plain.capacity(), "{budget}");
        }
        // The default budget: the devices table holds twice its plain share's devices.
        let s = MemoryState::new(256 << 20, 90_000_000);
        let plain = BoundedMap::<DeviceEntry>::new(((256 << 20) as f64 * DEVICES_SHARE) as usize, 1);
        assert_eq!(s.devices.capacity(), 2 * plain.capacity());
    }

    #[test]
    fn gcra_limit_in_event_time() {
        let h = KeyHasher::seeded(1);
        let s = MemoryState::new(8 << 20, 90_000_000);
        let quota = governor::Quota::per_minute(NonZeroU32::new(6).unwrap()).allow_burst(NonZeroU32::new(2).unwrap());
        // The device limit's cell lives in the device's entry, the second account limit's
        // in the limits table (the first account limit is a looser one): both count alike.
        let check = |ts| {
            let mut o = obs(&h, ts, "u", "d");
            let loose = governor::Quota::per_second(NonZeroU32::new(100).unwrap());
            o.limits.push(LimitCheck {
                key: 41,
                quota,
                kind: KeyKind::Device,
                first_of_kind: true,
            });
            o.limits.push(LimitCheck {
                key: 42,
                quota: loose,
                kind: KeyKind::User,
                first_of_kind: true,
            });
            o.limits.push(LimitCheck {
                key: 43,
                quota,
                kind: KeyKind::User,
                first_of_kind: false,
            });
            let r = s.observe_now(&o);
            assert_eq!(r.limits[1], LimitOutcome::Allowed);
            assert_eq!(r.limits[0], r.limits[2], "at {ts}");
            r.limits[0]
        };
        assert_eq!(check(T0), LimitOutcome::Allowed);
        assert_eq!(check(T0 + 1), LimitOutcome::Allowed);
        assert!(matches!(check(T0 + 2), LimitOutcome::Exceeded { retry_after_ms } if retry_after_ms > 9_000));
        // One cell replenishes every 10 s of event time.
        assert_eq!(check(T0 + 10_001), LimitOutcome::Allowed);
        assert!(matches!(check(T0 + 10_002), LimitOutcome::Exceeded { .. }));
        assert_eq!(
            s.limits.stats().keys,
            1,
            "only the second account limit is in the table"
        );
    }

    #[test]
    fn line_handoff_compares_the_previous_accounts_line() {
        let mut l = LineHandoff::default();
        // (account, IP, second) → whether the device's previous account was elsewhere.
        let mut at = |user, ip, s| l.observe(user, ip, s);
        assert!(!at(1, 10, 100), "a device's first account");
        assert!(!at(1, 11, 200), "one account moving between lines is not a hand-off");
        assert!(!at(2, 11, 300), "the next account on the line the last one used");
        assert!(at(3, 12, 400), "account 2 was on line 11");
        assert!(at(3, 13, 500), "still account 2's line to compare with");
        assert!(at(1, 12, 600), "account 3 was last on line 13");
        // A late event (seconds go back) compares, and does not move the clock back.
        assert!(at(2, 10, 590));
        assert!(!at(4, 10, 590 + HANDOFF_WINDOW_S), "account 2, on the same line");
        assert!(!at(5, 20, 600 + 2 * HANDOFF_WINDOW_S), "account 4 was over a day ago");
    }
}
