//! The Redis state backend: several replicas share counters, distinct sets, graphs and
//! rate limits through one Redis server or Redis Cluster.
//!
//! One request is one round trip: `redis.lua` receives every key the request touches and
//! returns everything the `Readout` needs (EVALSHA; the script is loaded on NOSCRIPT).
//! The script mirrors the in-memory backend step for step — the same two-bucket windows,
//! distinct sets of up to 32 (fingerprint, last-seen second) pairs in insertion order,
//! first-seen ages and timing regularity, the same GCRA (governor's algorithm, in
//! microseconds of event time) — so both backends give the same decisions on the same
//! events. Each value is a small packed string (40 bytes a window, 8 bytes a set
//! member): the script reads all of a request's keys with one MGET and writes each
//! changed one with SET PX. Differences, all outside normal operation:
//!
//! - Expiry: every key gets a TTL of `state.ttl_s` in Redis' clock (GCRA cells: until
//!   their cell is full again). The memory backend forgets idle keys after one to two
//!   TTLs of event time, and evicts the coldest keys when over its budget; Redis keeps
//!   everything until its TTL (size Redis' `maxmemory` with `volatile-ttl` or
//!   `allkeys-lru` for floods).
//! - GCRA intervals are rounded to whole microseconds (exact for every rate of the
//!   form N/s, N/min, N/h, N/day whose interval is a whole number of microseconds).
//!
//! Cluster: a script's keys must share a hash slot, so with `redis_nodes` every key is
//! tagged `{prefix}:…` and one deployment's state lives on one shard (with its
//! replicas for failover). Splitting a request per slot would cost a round trip per
//! dependent step (new-account counters depend on the account's entry, the referral
//! checks on the device's set), which is the cost this design avoids.
//!
//! Time is the event's timestamp, as everywhere: replicas need synchronised clocks
//! (NTP), as limits are enforced in the time the replicas stamp.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Script, Value};

use super::memory::{new_cluster_id, MemoryState};
use super::{
    combine, fingerprint, KeyKind, LimitOutcome, Observation, Readout, StateError, StateStore, TableStats, COUNTED,
    DISTINCT, POPULATION, TAG_ASSISTED, TAG_BLIND_INVITEES, TAG_BROWSE, TAG_CLUSTER, TAG_HASTY, TAG_INVITEE_SUBNETS,
    TAG_IP_NEW_DEVICES, TAG_LINES, TAG_NEW_DEVICES, TAG_NEW_FIRST, TAG_NEW_INVITEES, TAG_NEW_USERS,
    TAG_PREFIX_NEW_DEVICES, TAG_SUBNETS, TAG_UAS, TAG_WIFI_NETWORKS, TAG_WIFI_NEW_DEVICES,
};
use crate::config::StateConfig;

const SCRIPT: &str = include_str!("redis.lua");

/// Fixed slots of the script before the limit cells (see `redis.lua`).
const FIXED_SLOTS: usize = 45;

/// After a failed call (or `TIMEOUTS_BEFORE_SKIPPING` timeouts in a row), requests
/// skip Redis for this long and degrade at once, so that an outage costs one failed call
/// per period instead of one per request. A single slow answer does not trigger it.
const RETRY_AFTER: Duration = Duration::from_millis(200);
const TIMEOUTS_BEFORE_SKIPPING: u64 = 3;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How the backend has been doing, for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendHealth {
    /// The last call succeeded (or none failed yet).
    pub up: bool,
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Requests that did not try Redis because a call had just failed.
    pub skipped: u64,
}

#[derive(Default)]
struct Health {
    down: AtomicBool,
    ok: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    skipped: AtomicU64,
    timeouts_in_a_row: AtomicU64,
    /// Milliseconds since `epoch` before which calls are skipped.
    retry_at_ms: AtomicU64,
}

pub struct RedisState {
    conn: Conn,
    script: Script,
    /// `prefix:` (single server) or `{prefix}:` (Cluster: one hash slot).
    prefix: String,
    ttl_ms: u64,
    timeout: Duration,
    /// The in-memory state the `local` degradation policy decides from.
    local: MemoryState,
    health: Health,
    epoch: Instant,
    /// The key seed this replica hashes identities with (kept in Redis for the others).
    seed: u64,
}

/// Where the hasher seed shared by every replica is kept. It expires like the state:
/// every request's script call extends it by the TTL, so it can only expire after all
/// the keys it derived have.
const SEED_KEY: &str = "seed";

impl RedisState {
    /// Connects (Redis must be reachable at start) and returns the backend and the key
    /// seed every replica on this Redis and prefix shares: the first replica to start
    /// picks it at random, the others read it, so that the same identity gets the same
    /// key everywhere while clients still cannot precompute collisions.
    pub async fn connect(cfg: &StateConfig) -> Result<(RedisState, u64), StateError> {
        let unavailable = |e: ::redis::RedisError| StateError::Unavailable(e.to_string());
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let response_timeout = Duration::from_millis(cfg.timeout_ms.max(1_000));
        let (conn, prefix) = if cfg.redis_nodes.is_empty() {
            let client = ::redis::Client::open(cfg.redis_url.as_str()).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(response_timeout)
                .set_number_of_retries(2)
                .set_factor(50)
                .set_max_delay(1_000);
            let manager = tokio::time::timeout(connect_timeout * 2, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| StateError::Timeout)?
                .map_err(unavailable)?;
            (Conn::Single(manager), format!("{}:", cfg.key_prefix))
        } else {
            let client = ClusterClientBuilder::new(cfg.redis_nodes.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                .retries(1)
                .build()
                .map_err(unavailable)?;
            let conn = tokio::time::timeout(connect_timeout * 2, client.get_async_connection())
                .await
                .map_err(|_| StateError::Timeout)?
                .map_err(unavailable)?;
            (Conn::Cluster(conn), format!("{{{}}}:", cfg.key_prefix))
        };
        let state = RedisState {
            conn,
            script: Script::new(SCRIPT),
            prefix,
            ttl_ms: cfg.ttl_s * 1_000,
            timeout: Duration::from_millis(cfg.timeout_ms),
            local: MemoryState::new(cfg.memory_budget_mb * 1024 * 1024, cfg.ttl_s * 1_000),
            health: Health::default(),
            epoch: Instant::now(),
            seed: 0,
        };
        let seed = state.shared_seed().await?;
        Ok((RedisState { seed, ..state }, seed))
    }

    /// The same backend under another key prefix (replay runs in a fresh namespace).
    pub fn with_prefix(mut self, prefix: &str) -> RedisState {
        self.prefix = match self.conn {
            Conn::Single(_) => format!("{prefix}:"),
            Conn::Cluster(_) => format!("{{{prefix}}}:"),
        };
        self
    }

    /// Sets the per-call timeout (replay waits longer than a live request would).
    pub fn with_timeout(mut self, timeout: Duration) -> RedisState {
        self.timeout = timeout;
        self
    }

    async fn shared_seed(&self) -> Result<u64, StateError> {
        let key = format!("{}{SEED_KEY}", self.prefix);
        let candidate = super::KeyHasher::random_seed();
        let mut set = ::redis::cmd("SET");
        set.arg(&key)
            .arg(candidate.to_string())
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms);
        let mut get = ::redis::cmd("GET");
        get.arg(&key);
        let _: Value = self.query(&set).await?;
        let seed: Option<String> = self.query(&get).await?;
        seed.and_then(|s| s.parse().ok())
            .ok_or_else(|| StateError::Unavailable(format!("{key} does not hold a seed")))
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, StateError> {
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => cmd.query_async(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), call).await {
            Ok(r) => r.map_err(|e| StateError::Unavailable(e.to_string())),
            Err(_) => Err(StateError::Timeout),
        }
    }

    /// The in-memory state used by the `local` degradation policy.
    pub fn local(&self) -> &MemoryState {
        &self.local
    }

    pub fn health(&self) -> BackendHealth {
        let h = &self.health;
        BackendHealth {
            up: !h.down.load(Ordering::Relaxed),
            ok: h.ok.load(Ordering::Relaxed),
            errors: h.errors.load(Ordering::Relaxed),
            timeouts: h.timeouts.load(Ordering::Relaxed),
            skipped: h.skipped.load(Ordering::Relaxed),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn key(&self, kind: char, key: u64) -> String {
        format!("{}{kind}:{key:016x}", self.prefix)
    }

    /// The script invocation for one observation: KEYS in slot order, ARGV as
    /// `redis.lua` documents.
    pub fn invocation(&self, obs: &Observation) -> ::redis::ScriptInvocation<'_> {
        let key = |kind: KeyKind| obs.keys[kind as usize];
        let mut slots: Vec<Option<String>> = Vec::with_capacity(FIXED_SLOTS + obs.limits.len());
        // 1-8: per-route counters.
        for k in &obs.keys[..COUNTED] {
            slots.push(k.map(|k| self.key('w', combine(k, obs.route))));
        }
        // 9-10: device and account entries; 11-18: member sets per relation.
        slots.push(key(KeyKind::Device).map(|k| self.key('e', k)));
        slots.push(key(KeyKind::User).map(|k| self.key('e', k)));
        for (on, _) in DISTINCT {
            slots.push(key(on).map(|k| self.key('m', k)));
        }
        // 19-24: derived counters and the subnets-per-device set.
        let derived = |k: Option<u64>, tag: u64| k.map(|k| self.key('w', combine(k, tag)));
        slots.push(derived(key(KeyKind::User), TAG_BROWSE));
        for kind in [KeyKind::Device, KeyKind::Ip, KeyKind::Subnet] {
            slots.push(derived(key(kind), TAG_NEW_USERS));
        }
        slots.push(match (key(KeyKind::Device), key(KeyKind::Subnet)) {
            (Some(device), Some(_)) => Some(self.key('m', combine(device, TAG_SUBNETS))),
            _ => None,
        });
        slots.push(derived(key(KeyKind::UserAgent), TAG_NEW_DEVICES));
        // 25-27: the referral graph.
        let referral = match (key(KeyKind::Inviter), obs.inviter_as_user, key(KeyKind::User)) {
            (Some(inviter), Some(inviter_user), Some(user)) => Some((inviter, inviter_user, user)),
            _ => None,
        };
        slots.push(referral.map(|(inviter, _, _)| self.key('w', combine(inviter, TAG_NEW_INVITEES))));
        slots.push(referral.map(|(_, inviter_user, _)| self.key('m', combine(inviter_user, TAG_ASSISTED))));
        slots.push(referral.map(|(_, _, user)| self.key('m', combine(user, TAG_ASSISTED))));
        // 28: the device's user agents; 29-32: the cluster pointers of the account,
        // device, phone and payment account (`cluster.rs`).
        slots.push(match (key(KeyKind::Device), key(KeyKind::UserAgent)) {
            (Some(device), Some(_)) => Some(self.key('m', combine(device, TAG_UAS))),
            _ => None,
        });
        for kind in [KeyKind::User, KeyKind::Device, KeyKind::Phone, KeyKind::PayAccount] {
            slots.push(key(kind).map(|k| self.key('p', combine(k, TAG_CLUSTER))));
        }
        // 33: the subnets the inviter's invitees came from.
        slots.push(match (referral, key(KeyKind::Subnet)) {
            (Some((inviter, _, _)), Some(_)) => Some(self.key('m', combine(inviter, TAG_INVITEE_SUBNETS))),
            _ => None,
        });
        // 34: new devices per device-id prefix.
        slots.push(derived(obs.device_prefix, TAG_PREFIX_NEW_DEVICES));
        // 35-38: first requests of new devices on this route (the script decides
        // whether this is one), per user agent and route-wide.
        let first_requests = match (key(KeyKind::Device), key(KeyKind::UserAgent)) {
            (Some(_), Some(ua)) if !obs.browse => Some(combine(ua, obs.route)),
            _ => None,
        };
        for (k, tag) in [
            (first_requests, TAG_HASTY),
            (first_requests, TAG_NEW_FIRST),
            (first_requests.map(|_| obs.route), TAG_HASTY),
            (first_requests.map(|_| obs.route), TAG_NEW_FIRST),
        ] {
            slots.push(derived(k, tag));
        }
        // 39: the inviter's assists by accounts that browsed nothing.
        slots.push(derived(referral.map(|(inviter, _, _)| inviter), TAG_BLIND_INVITEES));
        // 40: the inviter's account entry (its first-seen time, read only).
        slots.push(referral.map(|(_, inviter_user, _)| self.key('e', inviter_user)));
        // 41: devices first seen from this client IP (1 min).
        slots.push(derived(key(KeyKind::Ip), TAG_IP_NEW_DEVICES));
        // 42: the device's Wi-Fi lines, for a Wi-Fi request with an account.
        slots.push(
            match (key(KeyKind::Device), key(KeyKind::User), key(KeyKind::Ip), obs.wifi) {
                (Some(device), Some(_), Some(_), true) => Some(self.key('m', combine(device, TAG_LINES))),
                _ => None,
            },
        );
        // 43-45: new Wi-Fi devices (1 min) from this subnet, from anywhere, and the
        // networks they came from.
        let subnet = key(KeyKind::Subnet);
        slots.push(derived(subnet, TAG_WIFI_NEW_DEVICES));
        slots.push(derived(subnet.map(|_| POPULATION), TAG_WIFI_NEW_DEVICES));
        slots.push(derived(subnet.map(|_| POPULATION), TAG_WIFI_NETWORKS));
        // 46-: limit cells.
        for l in &obs.limits {
            slots.push(Some(self.key('l', l.key)));
        }

        let mut inv = self.script.prepare_invoke();
        let mask: String = slots.iter().map(|s| if s.is_some() { '1' } else { '0' }).collect();
        for k in slots.into_iter().flatten() {
            inv.key(k);
        }
        inv.key(format!("{}{SEED_KEY}", self.prefix));
        let fp = |k: Option<u64>| k.map(|k| fingerprint(k).to_string()).unwrap_or_default();
        inv.arg(obs.ts_ms)
            .arg(self.ttl_ms)
            .arg(obs.new_account_ms)
            .arg(u8::from(obs.browse))
            .arg(mask);
        for (_, member) in DISTINCT {
            inv.arg(fp(key(member)));
        }
        inv.arg(fp(obs.inviter_as_user))
            .arg(fp(key(KeyKind::User)))
            .arg(fp(key(KeyKind::Subnet)))
            .arg(obs.limits.len());
        for l in &obs.limits {
            let t = l.quota.replenish_interval().as_micros().max(1) as u64;
            let tau = t * u64::from(l.quota.burst_size().get() - 1);
            inv.arg(t).arg(tau);
        }
        let campaign = key(KeyKind::Campaign).map(|c| fingerprint(combine(c, obs.route)).to_string());
        inv.arg(format!("{:016x}", new_cluster_id(obs)))
            .arg(campaign.unwrap_or_default())
            .arg(fp(key(KeyKind::UserAgent)))
            .arg(&self.prefix)
            .arg(fp(key(KeyKind::Ip)))
            .arg(u8::from(obs.wifi));
        inv.arg(self.seed.to_string());
        inv
    }

    async fn call(&self, obs: &Observation) -> Result<Vec<i64>, StateError> {
        let inv = self.invocation(obs);
        let call = async {
            match self.conn.clone() {
                Conn::Single(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        let timeout = obs.timeout_ms.map(Duration::from_millis).unwrap_or(self.timeout);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StateError::Unavailable(e.to_string())),
            Err(_) => Err(StateError::Timeout),
        }
    }

    async fn observe_remote(&self, obs: &Observation) -> Result<Readout, StateError> {
        let h = &self.health;
        if self.now_ms() < h.retry_at_ms.load(Ordering::Relaxed) {
            h.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(StateError::Unavailable(
                "redis failed just now; retrying shortly".into(),
            ));
        }
        match self.call(obs).await {
            Ok(values) => {
                h.ok.fetch_add(1, Ordering::Relaxed);
                h.timeouts_in_a_row.store(0, Ordering::Relaxed);
                h.down.store(false, Ordering::Relaxed);
                readout(&values, obs.limits.len())
            }
            Err(e) => {
                let skip = match e {
                    StateError::Timeout => {
                        h.timeouts.fetch_add(1, Ordering::Relaxed);
                        h.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_SKIPPING
                    }
                    StateError::Unavailable(_) => {
                        h.errors.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                };
                h.down.store(true, Ordering::Relaxed);
                if skip {
                    h.retry_at_ms
                        .store(self.now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

/// The script's flat reply → a `Readout`.
fn readout(v: &[i64], limits: usize) -> Result<Readout, StateError> {
    const FIXED: usize = 32 + 16 + 4 + 2 + 6 + 2 + 2 + 2 + 4 + 2 + 3 + 2 + 2 + 4 + 2 + 1 + 1 + 1 + 3;
    if v.len() != FIXED + limits {
        return Err(StateError::Unavailable(format!(
            "the state script answered {} values, expected {}",
            v.len(),
            FIXED + limits
        )));
    }
    let n = |i: usize| v[i].clamp(0, i64::from(u32::MAX)) as u32;
    let pair = |i: usize| [n(i), n(i + 1)];
    let age = |i: usize| u64::try_from(v[i]).ok();
    let mut r = Readout::default();
    for (kind, counts) in r.counts.iter_mut().enumerate() {
        *counts = [n(kind * 4), n(kind * 4 + 1), n(kind * 4 + 2), n(kind * 4 + 3)];
    }
    for (rel, d) in r.distinct.iter_mut().enumerate() {
        *d = pair(32 + rel * 2);
    }
    let mut i = 48;
    r.user_age_ms = age(i);
    r.device_age_ms = age(i + 1);
    r.user_regular = n(i + 2);
    r.device_regular = n(i + 3);
    i += 4;
    r.browse = pair(i);
    r.new_users = [pair(i + 2), pair(i + 4), pair(i + 6)];
    r.subnets_per_device = pair(i + 8);
    r.ua_new_devices = pair(i + 10);
    r.inviter_new_invitees = pair(i + 12);
    i += 14;
    (
        r.inviter_on_device,
        r.inviter_on_subnet,
        r.referral_ring,
        r.inviter_is_invitee,
    ) = (v[i] == 1, v[i + 1] == 1, v[i + 2] == 1, v[i + 3] == 1);
    i += 4;
    r.uas_per_device = pair(i);
    r.cluster = [n(i + 2), n(i + 3), n(i + 4)];
    r.inviter_invitee_subnets = pair(i + 5);
    r.prefix_new_devices = pair(i + 7);
    r.first_requests = [n(i + 9), n(i + 10), n(i + 11), n(i + 12)];
    r.inviter_blind_invitees = pair(i + 13);
    r.inviter_age_ms = age(i + 15);
    r.ip_new_devices = n(i + 16);
    r.device_line_handoff = v[i + 17] != 0;
    r.wifi_new_devices = [n(i + 18), n(i + 19), n(i + 20)];
    i += 21;
    r.limits = v[i..]
        .iter()
        .map(|ms| match *ms {
            0 => LimitOutcome::Allowed,
            ms => LimitOutcome::Exceeded {
                retry_after_ms: ms.max(1) as u64,
            },
        })
        .collect();
    Ok(r)
}

impl StateStore for RedisState {
    fn observe(&self, obs: &Observation) -> impl std::future::Future<Output = Result<Readout, StateError>> + Send {
        self.observe_remote(obs)
    }

    /// The local fallback's tables (Redis keeps its own accounting: INFO, DBSIZE).
    fn stats(&self) -> Vec<TableStats> {
        let mut tables = self.local.stats();
        for t in &mut tables {
            t.table = match t.table {
                "counters" => "local_counters",
                "identities" => "local_identities",
                "devices" => "local_devices",
                "clusters" => "local_clusters",
                _ => "local_limits",
            };
        }
        tables
    }

    fn budget_bytes(&self) -> Option<u64> {
        self.local.budget_bytes()
    }

    fn local(&self) -> Option<&MemoryState> {
        Some(&self.local)
    }

    fn health(&self) -> Option<BackendHealth> {
        Some(RedisState::health(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readout_layout_round_trips() {
        let mut v: Vec<i64> = (0..91).collect();
        v[48] = -1; // no account
        v.push(0);
        v.push(1_500);
        let r = readout(&v, 2).unwrap();
        assert_eq!(r.uas_per_device, [70, 71]);
        assert_eq!(r.cluster, [72, 73, 74]);
        assert_eq!(r.inviter_invitee_subnets, [75, 76]);
        assert_eq!(r.prefix_new_devices, [77, 78]);
        assert_eq!(r.first_requests, [79, 80, 81, 82]);
        assert_eq!(r.inviter_blind_invitees, [83, 84]);
        assert_eq!(r.inviter_age_ms, Some(85));
        assert_eq!(r.ip_new_devices, 86);
        assert!(r.device_line_handoff);
        assert_eq!(r.wifi_new_devices, [88, 89, 90]);
        assert_eq!(r.counts[0], [0, 1, 2, 3]);
        assert_eq!(r.counts[7], [28, 29, 30, 31]);
        assert_eq!(r.distinct[0], [32, 33]);
        assert_eq!(r.distinct[7], [46, 47]);
        assert_eq!(r.user_age_ms, None);
        assert_eq!(r.device_age_ms, Some(49));
        assert_eq!((r.user_regular, r.device_regular), (50, 51));
        assert_eq!(r.browse, [52, 53]);
        assert_eq!(r.new_users, [[54, 55], [56, 57], [58, 59]]);
        assert_eq!(r.subnets_per_device, [60, 61]);
        assert_eq!(r.ua_new_devices, [62, 63]);
        assert_eq!(r.inviter_new_invitees, [64, 65]);
        assert!(!r.inviter_on_device && !r.referral_ring);
        assert_eq!(
            r.limits.as_slice(),
            [LimitOutcome::Allowed, LimitOutcome::Exceeded { retry_after_ms: 1_500 }]
        );
        assert!(readout(&v, 3).is_err());
    }
}
