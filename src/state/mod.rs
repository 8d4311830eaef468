//! State: what the signals stage remembers between requests, behind one trait.
//!
//! The pipeline hands a backend one `Observation` per request (every key it touches and
//! every limit it checks) and gets one `Readout` back, so a remote backend can answer in
//! a single round trip. Keys are keyed hashes of the identities: no raw account, device
//! or IP is stored, and a client cannot aim collisions at the maps.
//!
//! Two backends: `memory` (this process, within a byte budget) and `redis` (shared by
//! several replicas); `Backend` is whichever the config chose.

pub mod bounded;
pub mod cluster;
pub mod memory;
pub mod redis;
pub mod window;

use std::future::Future;
use std::hash::BuildHasher;

use smallvec::SmallVec;

pub use self::redis::{BackendHealth, RedisState};
pub use memory::MemoryState;

// Tags that derive the keys of derived counters and sets from an identity's key.
pub(crate) const TAG_BROWSE: u64 = 0xB0;
pub(crate) const TAG_NEW_USERS: u64 = 0xB1;
pub(crate) const TAG_NEW_DEVICES: u64 = 0xB2;
pub(crate) const TAG_NEW_INVITEES: u64 = 0xB3;
pub(crate) const TAG_ASSISTED: u64 = 0xB4;
pub(crate) const TAG_SUBNETS: u64 = 0xB5;
pub(crate) const TAG_CLUSTER: u64 = 0xB6;
pub(crate) const TAG_UAS: u64 = 0xB7;
pub(crate) const TAG_INVITEE_SUBNETS: u64 = 0xB8;

/// A member's fingerprint in a distinct set: the top half of its key.
pub(crate) fn fingerprint(key: u64) -> u32 {
    (key >> 32) as u32
}

/// The kinds of key the state knows. The first `COUNTED` are counted per route, in
/// `Readout::counts` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    User,
    Device,
    Ip,
    Subnet,
    Phone,
    Campaign,
    Route,
    Inviter,
    PayAccount,
    Address,
    UserAgent,
}

/// Kinds with per-route windows: user … inviter.
pub const COUNTED: usize = 8;
/// All kinds.
pub const KINDS: usize = 11;

impl KeyKind {
    pub const ALL: [KeyKind; KINDS] = [
        KeyKind::User,
        KeyKind::Device,
        KeyKind::Ip,
        KeyKind::Subnet,
        KeyKind::Phone,
        KeyKind::Campaign,
        KeyKind::Route,
        KeyKind::Inviter,
        KeyKind::PayAccount,
        KeyKind::Address,
        KeyKind::UserAgent,
    ];

    /// The name used in config (`key = "device"`) and feature names.
    pub const fn name(self) -> &'static str {
        match self {
            KeyKind::User => "user",
            KeyKind::Device => "device",
            KeyKind::Ip => "ip",
            KeyKind::Subnet => "subnet",
            KeyKind::Phone => "phone",
            KeyKind::Campaign => "campaign",
            KeyKind::Route => "route",
            KeyKind::Inviter => "inviter",
            KeyKind::PayAccount => "pay_account",
            KeyKind::Address => "address",
            KeyKind::UserAgent => "user_agent",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Distinct-count relations, in `Readout::distinct` order: (the key, what is counted on
/// it). Each key kind appears once on the left: one identity entry per identity.
pub const DISTINCT: [(KeyKind, KeyKind); 8] = [
    (KeyKind::Device, KeyKind::User),
    (KeyKind::User, KeyKind::Device),
    (KeyKind::Ip, KeyKind::User),
    (KeyKind::Subnet, KeyKind::User),
    (KeyKind::Phone, KeyKind::User),
    (KeyKind::Inviter, KeyKind::User),
    (KeyKind::PayAccount, KeyKind::User),
    (KeyKind::Address, KeyKind::User),
];

/// The distinct windows, in seconds: 1 h and 24 h.
pub const DISTINCT_WINDOWS_S: [u32; 2] = [3_600, 86_400];

/// Everything one request does to the state.
#[derive(Debug, Clone)]
pub struct Observation {
    pub ts_ms: u64,
    /// The route the counts are scoped to (a hash of its name).
    pub route: u64,
    /// Hashed identity per `KeyKind` (in `KeyKind::ALL` order), when the request has it.
    pub keys: [Option<u64>; KINDS],
    /// The inviter's id hashed as an account (`KeyKind::User`), to find it in the
    /// device and subnet graphs and in its own referral history.
    pub inviter_as_user: Option<u64>,
    /// A browsing request: it feeds the account's funnel counter.
    pub browse: bool,
    /// How young an account must be to count as brand new when it assists an inviter.
    pub new_account_ms: u64,
    pub limits: SmallVec<[LimitCheck; 4]>,
    /// How long a remote backend may take for this request (the route's
    /// `state_timeout_ms`); `None`: the backend's own `state.timeout_ms`.
    pub timeout_ms: Option<u64>,
}

/// One GCRA limit to test and, when it conforms, to consume.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck {
    pub key: u64,
    pub quota: governor::Quota,
}

/// Whether a limit let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    Allowed,
    Exceeded { retry_after_ms: u64 },
}

/// What the state says about one request, this request included. Pairs are (1 h, 24 h).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readout {
    /// Per counted `KeyKind`: requests in the 1 s, 1 min, 1 h and 24 h windows on this route.
    pub counts: [[u32; 4]; COUNTED],
    /// Per `DISTINCT` relation: distinct members over 1 h and 24 h.
    pub distinct: [[u32; 2]; 8],
    pub user_age_ms: Option<u64>,
    pub device_age_ms: Option<u64>,
    /// Consecutive machine-regular gaps between this account's (device's) requests.
    pub user_regular: u32,
    pub device_regular: u32,
    /// This account's browsing requests (any browse route).
    pub browse: [u32; 2],
    /// Accounts first seen on this device, IP and subnet.
    pub new_users: [[u32; 2]; 3],
    /// Distinct /24 or /64 subnets this device came from.
    pub subnets_per_device: [u32; 2],
    /// Devices first seen with this exact user agent.
    pub ua_new_devices: [u32; 2],
    /// Distinct user-agent strings this device sent.
    pub uas_per_device: [u32; 2],
    /// The account's cluster (`cluster.rs`): accounts, brand-new accounts that joined
    /// in the last hour, accounts that made their first request on this campaign × route.
    pub cluster: [u32; 3],
    /// Brand-new accounts that assisted this inviter.
    pub inviter_new_invitees: [u32; 2],
    /// The inviter's account was seen on this device / subnet.
    pub inviter_on_device: bool,
    pub inviter_on_subnet: bool,
    /// The inviter had assisted this account before (A→B→A).
    pub referral_ring: bool,
    /// The inviter itself assisted someone (a chain A→B→C).
    pub inviter_is_invitee: bool,
    /// Distinct /24 or /64 subnets this inviter's invitees assisted from.
    pub inviter_invitee_subnets: [u32; 2],
    /// One outcome per `Observation::limits`, in order.
    pub limits: SmallVec<[LimitOutcome; 4]>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("state backend timed out")]
    Timeout,
}

/// Accounting of one table of a backend, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    pub table: &'static str,
    pub keys: u64,
    pub bytes: u64,
    pub evictions: u64,
}

/// A state backend. Implementations must never block the calling task for long: the
/// in-memory one holds a shard lock for a few hundred nanoseconds, a remote one awaits.
pub trait StateStore: Send + Sync + 'static {
    fn observe(&self, obs: &Observation) -> impl Future<Output = Result<Readout, StateError>> + Send;
    fn stats(&self) -> Vec<TableStats>;
    /// The configured memory budget, when the backend has one.
    fn budget_bytes(&self) -> Option<u64>;
    /// The in-memory state the `local` degradation policy decides from, when the
    /// backend can fail (a remote one).
    fn local(&self) -> Option<&MemoryState> {
        None
    }
    /// How a remote backend has been answering; `None` for one that cannot fail.
    fn health(&self) -> Option<BackendHealth> {
        None
    }
}

/// The backend the config chose.
pub enum Backend {
    Memory(MemoryState),
    Redis(Box<RedisState>),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }
}

impl StateStore for Backend {
    async fn observe(&self, obs: &Observation) -> Result<Readout, StateError> {
        match self {
            Backend::Memory(m) => Ok(m.observe_now(obs)),
            Backend::Redis(r) => r.observe(obs).await,
        }
    }

    fn stats(&self) -> Vec<TableStats> {
        match self {
            Backend::Memory(m) => m.stats(),
            Backend::Redis(r) => r.stats(),
        }
    }

    fn budget_bytes(&self) -> Option<u64> {
        match self {
            Backend::Memory(m) => m.budget_bytes(),
            Backend::Redis(r) => StateStore::budget_bytes(r.as_ref()),
        }
    }

    fn local(&self) -> Option<&MemoryState> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.local()),
        }
    }

    fn health(&self) -> Option<BackendHealth> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.health()),
        }
    }
}

/// Turns identity strings into keys: a keyed hash per (kind, value).
#[derive(Debug, Clone)]
pub struct KeyHasher {
    state: foldhash::quality::FixedState,
}

impl KeyHasher {
    /// A hasher with a fixed seed: the same keys in every run (replay, tests).
    pub fn seeded(seed: u64) -> Self {
        KeyHasher {
            state: foldhash::quality::FixedState::with_seed(seed),
        }
    }

    /// A hasher with a random seed, so that clients cannot precompute collisions.
    pub fn random() -> Self {
        Self::seeded(Self::random_seed())
    }

    /// A fresh random seed.
    pub fn random_seed() -> u64 {
        std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
    }

    pub fn key(&self, kind: KeyKind, value: &str) -> u64 {
        self.state.hash_one((kind as u8, value))
    }

    /// The key of any hashable identity (an address, a subnet).
    pub fn key_of<T: std::hash::Hash>(&self, kind: KeyKind, value: &T) -> u64 {
        self.state.hash_one((kind as u8, value))
    }
}

/// Mixes two hashes into one (splitmix64's finaliser): keys scoped to a route.
pub fn combine(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
