//! Simulate: labelled synthetic campaign traffic (a legitimate population and attack crews) as events.
//!
//! A [`Scenario`] (TOML, see `config/scenarios/*.toml`) describes a campaign, a legitimate
//! population in segments and attack crews by kind; [`generate`] turns it into events of the
//! reference campaign API (DESIGN.md), each with a [`Label`](crate::event::Label):
//!
//! - legitimate segments (`fraud = false`, `kind` = segment, `actor` = person or household):
//!   `normal`, `carrier_nat`, `office`, `family`, `heavy_referrer` (and their `invitee`s),
//!   `retry`, `flash_surge`;
//! - attack crews (`fraud = true`, `kind` = attack, `actor` = crew id such as
//!   `device_farm-2`): `device_farm`, `device_spoofing`, `script`, `ip_rotation`,
//!   `referral_ring`, `fake_order`, `low_and_slow`, `crowdsourced`.
//!
//! Output is a pure function of (scenario, seed, start): every actor draws from its own
//! ChaCha8 stream seeded from (seed, actor kind, actor index), so adding a crew leaves every
//! other actor's traffic unchanged; events are sorted by time, ties broken by actor stream and
//! the actor's own sequence; request ids are `sim-{seed}-{n}` in output order.
//!
//! Client addresses come from documentation and benchmarking ranges (198.18.0.0/15,
//! 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) laid out like an internet
//! of homes, carriers, offices and hosting providers. They are data, never network targets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::Event;

mod crews;
mod legit;
mod world;

/// Built-in scenarios: (name, TOML text).
const BUILTINS: &[(&str, &str)] = &[
    ("default", include_str!("../config/scenarios/default.toml")),
    ("demo", include_str!("../config/scenarios/demo.toml")),
    ("small", include_str!("../config/scenarios/small.toml")),
    ("shifted", include_str!("../config/scenarios/shifted.toml")),
];

const BUILTIN_NAMES: &[&str] = &["default", "demo", "small", "shifted"];

/// The legitimate segments, in generation order.
pub const SEGMENTS: &[&str] = &[
    "normal",
    "carrier_nat",
    "office",
    "family",
    "heavy_referrer",
    "retry",
    "flash_surge",
];

/// The attack kinds, in generation order.
pub const ATTACKS: &[&str] = &[
    "device_farm",
    "device_spoofing",
    "script",
    "ip_rotation",
    "referral_ring",
    "fake_order",
    "low_and_slow",
    "crowdsourced",
];

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The TOML did not parse or has unknown keys (the message names the line and key).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value is out of range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    /// Neither a built-in scenario nor a readable file.
    #[error("scenario `{name}`: not a built-in ({builtins}) and cannot be read: {source}")]
    Read {
        name: String,
        builtins: String,
        #[source]
        source: std::io::Error,
    },
}

/// A simulation scenario: the campaign, the legitimate population and the attack crews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in summaries.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Simulated time.
    #[serde(default)]
    pub time: TimeSpec,
    /// The campaign under attack.
    #[serde(default)]
    pub campaign: CampaignSpec,
    /// How many of each legitimate segment.
    #[serde(default)]
    pub population: Population,
    /// How the legitimate population behaves.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Attack crews by kind.
    #[serde(default)]
    pub attacks: Attacks,
}

/// Simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeSpec {
    /// Length of the scenario in seconds; every event falls in [start, start + duration).
    pub duration_s: u64,
    /// Local hour of day (0–24, fractions allowed) at the start, for the day curve.
    pub start_hour: f64,
    /// Whether legitimate activity follows the day curve (quiet at night, lunch and evening
    /// peaks); false = flat.
    pub diurnal: bool,
    /// Multiplies every human and crew pacing duration (think times and every `*_s` pacing
    /// knob below; not `flash_*`, retry gaps or script `interval_ms`): 1.0 is real human
    /// speed, 0.1 compresses behaviour ten-fold (the demo).
    pub pace: f64,
    /// Median human think time between two steps of a session, seconds (log-normal).
    pub think_median_s: f64,
    /// Spread (sigma of the log) of think times.
    pub think_sigma: f64,
}

impl Default for TimeSpec {
    fn default() -> Self {
        TimeSpec {
            duration_s: 1800,
            start_hour: 20.0,
            diurnal: true,
            pace: 1.0,
            think_median_s: 8.0,
            think_sigma: 0.9,
        }
    }
}

/// The campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignSpec {
    /// Campaign ids (campaign_id); the first gets most traffic, crews pick one.
    pub ids: Vec<String>,
    /// Coupons users claim (coupon_id), the first being the headline (flash-sale) coupon.
    pub coupons: Vec<String>,
    /// The spend-threshold coupon used on orders ("100 off 20").
    pub threshold_coupon: String,
    /// Its threshold: orders of at least this amount may use it.
    pub threshold: f64,
    /// The coupon an inviter claims as the referral reward.
    pub referral_reward: String,
    /// Number of items (item ids i-1..i-N, Zipf popularity).
    pub items: u32,
    /// Number of red packets (packet ids rp-1..rp-N).
    pub packets: u32,
}

impl Default for CampaignSpec {
    fn default() -> Self {
        CampaignSpec {
            ids: vec!["c-1111".into()],
            coupons: vec!["new-user-50".into(), "full-100-minus-20".into(), "free-shipping".into()],
            threshold_coupon: "full-100-minus-20".into(),
            threshold: 100.0,
            referral_reward: "invite-reward-10".into(),
            items: 200,
            packets: 5,
        }
    }
}

/// Legitimate segments: how many of each.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Population {
    /// Ordinary users on home broadband or mobile, their own addresses.
    pub normal: u32,
    /// Users of one mobile carrier behind a NAT: many unrelated accounts on few IPs.
    pub carrier_nat: u32,
    /// Users at companies and campuses: many accounts on one /24 per office.
    pub office: u32,
    /// Households: 2–3 accounts sharing one phone (and a home address).
    pub family: u32,
    /// Influencers who invite many real friends (their friends are labelled `invitee`).
    pub heavy_referrer: u32,
    /// Users on flaky networks who resend the same request (new request id, same body).
    pub retry: u32,
    /// Real users arriving in a burst at the flash-sale start.
    pub flash_surge: u32,
}

/// How the legitimate population behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Behaviour {
    /// Sessions per user over the scenario, [min, max].
    pub sessions: [u32; 2],
    /// Probability that a user has a second device (a tablet, a new phone).
    pub second_device: f64,
    /// Probability that a session is on cellular rather than home Wi-Fi.
    pub mobile_share: f64,
    /// Of cellular sessions, the share over IPv6.
    pub ipv6_share: f64,
    /// Item pages viewed per session, [min, max].
    pub items_per_session: [u32; 2],
    /// Probability that a session claims a coupon not yet claimed.
    pub claim_prob: f64,
    /// Probability that a user checks in on a given day (once a day at most).
    pub checkin_prob: f64,
    /// Probability that a session opens a red packet.
    pub redpacket_prob: f64,
    /// Probability that a session ends with an order.
    pub order_prob: f64,
    /// Median order amount (yuan); amounts are log-normal, spread widely.
    pub order_median: f64,
    /// Probability that a user assists a friend's invitation (friends of real inviters).
    pub assist_prob: f64,
    /// Share of normal users who invite friends (and later claim the referral reward).
    pub inviter_share: f64,
    /// Public addresses of the carrier NAT shared by `carrier_nat` users.
    pub nat_ips: u32,
    /// Users per office (one /24 each).
    pub office_size: u32,
    /// Friends each heavy referrer brings, [min, max].
    pub invitees: [u32; 2],
    /// Median delay from an influencer's post to a friend's assist, seconds (log-normal).
    pub invitee_delay_median_s: f64,
    /// Extra sends of a request by `retry` users, [min, max], seconds apart.
    pub retries: [u32; 2],
    /// Flash-sale start, seconds from the scenario start.
    pub flash_at_s: f64,
    /// The flash-sale crowd arrives within this many seconds.
    pub flash_window_s: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            sessions: [1, 3],
            second_device: 0.15,
            mobile_share: 0.4,
            ipv6_share: 0.5,
            items_per_session: [0, 4],
            claim_prob: 0.5,
            checkin_prob: 0.6,
            redpacket_prob: 0.25,
            order_prob: 0.1,
            order_median: 79.0,
            assist_prob: 0.06,
            inviter_share: 0.04,
            nat_ips: 6,
            office_size: 120,
            invitees: [20, 80],
            invitee_delay_median_s: 1800.0,
            retries: [1, 3],
            flash_at_s: 0.0,
            flash_window_s: 60.0,
        }
    }
}

/// Attack crews by kind. A kind with `crews = 0` is absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attacks {
    pub device_farm: DeviceFarm,
    pub device_spoofing: DeviceSpoofing,
    pub script: Script,
    pub ip_rotation: IpRotation,
    pub referral_ring: ReferralRing,
    pub fake_order: FakeOrder,
    pub low_and_slow: LowAndSlow,
    pub crowdsourced: Crowdsourced,
}

/// Many accounts on few phones, claiming in waves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceFarm {
    /// Number of crews.
    pub crews: u32,
    /// Accounts per crew, [min, max].
    pub size: [u32; 2],
    /// Phones per crew, [min, max].
    pub devices: [u32; 2],
    /// Claim waves per crew, [min, max].
    pub waves: [u32; 2],
    /// Seconds a phone takes to switch to its next account, [min, max].
    pub switch_s: [f64; 2],
    /// When waves happen, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for DeviceFarm {
    fn default() -> Self {
        DeviceFarm {
            crews: 0,
            size: [20, 60],
            devices: [2, 6],
            waves: [2, 4],
            switch_s: [4.0, 20.0],
            window: [0.0, 1.0],
        }
    }
}

/// A fresh device id per account from a spoofing tool, one model and user agent, new accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSpoofing {
    /// Number of crews.
    pub crews: u32,
    /// Accounts (and device ids) per crew, [min, max].
    pub size: [u32; 2],
    /// Seconds between two accounts, [min, max].
    pub gap_s: [f64; 2],
    /// When a crew starts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for DeviceSpoofing {
    fn default() -> Self {
        DeviceSpoofing {
            crews: 0,
            size: [30, 100],
            gap_s: [15.0, 90.0],
            window: [0.0, 0.8],
        }
    }
}

/// Scripts calling the API directly: no browsing, machine-regular timing, odd clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Script {
    /// Number of crews.
    pub crews: u32,
    /// Accounts a script cycles through, [min, max].
    pub size: [u32; 2],
    /// Requests per crew, [min, max].
    pub requests: [u32; 2],
    /// Period between two requests, ms [min, max] (one period per crew; not paced).
    pub interval_ms: [u64; 2],
    /// Timing jitter, ± ms.
    pub jitter_ms: u64,
    /// When a crew starts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for Script {
    fn default() -> Self {
        Script {
            crews: 0,
            size: [5, 40],
            requests: [300, 1200],
            interval_ms: [600, 2500],
            jitter_ms: 25,
            window: [0.0, 0.8],
        }
    }
}

/// Dial-up / proxy IP rotation: a new address per request, a small reused phone pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRotation {
    /// Number of crews.
    pub crews: u32,
    /// Accounts per crew, [min, max].
    pub size: [u32; 2],
    /// Phones per crew, [min, max].
    pub devices: [u32; 2],
    /// Seconds between two accounts, [min, max].
    pub gap_s: [f64; 2],
    /// When a crew starts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for IpRotation {
    fn default() -> Self {
        IpRotation {
            crews: 0,
            size: [30, 80],
            devices: [2, 4],
            gap_s: [10.0, 60.0],
            window: [0.0, 0.8],
        }
    }
}

/// Self-invite rings: members assist each other's invitations in a cycle, plus brand-new
/// invitees on the inviter's devices and subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferralRing {
    /// Number of rings.
    pub crews: u32,
    /// Members per ring, [min, max] (at least 3).
    pub size: [u32; 2],
    /// Brand-new invitee accounts per member, [min, max].
    pub invitees: [u32; 2],
    /// Phones the ring shares, [min, max].
    pub devices: [u32; 2],
    /// Seconds between two steps of the ring, [min, max].
    pub step_s: [f64; 2],
    /// When a ring starts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for ReferralRing {
    fn default() -> Self {
        ReferralRing {
            crews: 0,
            size: [5, 12],
            invitees: [2, 6],
            devices: [2, 4],
            step_s: [10.0, 90.0],
            window: [0.0, 0.7],
        }
    }
}

/// Orders just above the coupon threshold, sharing addresses and pay accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeOrder {
    /// Number of crews.
    pub crews: u32,
    /// Accounts per crew, [min, max].
    pub size: [u32; 2],
    /// Order amount band [min, max] (yuan), just above the threshold.
    pub amount: [f64; 2],
    /// Orders per account, [min, max].
    pub orders: [u32; 2],
    /// Shipping addresses the crew shares, [min, max].
    pub addresses: [u32; 2],
    /// Pay accounts the crew shares, [min, max].
    pub pay_accounts: [u32; 2],
    /// Seconds between two accounts, [min, max].
    pub gap_s: [f64; 2],
    /// When a crew starts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for FakeOrder {
    fn default() -> Self {
        FakeOrder {
            crews: 0,
            size: [10, 30],
            amount: [100.0, 103.0],
            orders: [1, 3],
            addresses: [1, 3],
            pay_accounts: [1, 2],
            gap_s: [20.0, 120.0],
            window: [0.0, 0.8],
        }
    }
}

/// Aged accounts: normal-looking browsing early on, then slow claims from a shared phone pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LowAndSlow {
    /// Number of crews.
    pub crews: u32,
    /// Accounts per crew, [min, max].
    pub size: [u32; 2],
    /// Phones in the shared pool, [min, max].
    pub devices: [u32; 2],
    /// The accounts age (browse, check in) during this first fraction of the duration.
    pub age_fraction: f64,
    /// Seconds between two claims of the crew, [min, max].
    pub claim_gap_s: [f64; 2],
}

impl Default for LowAndSlow {
    fn default() -> Self {
        LowAndSlow {
            crews: 0,
            size: [30, 60],
            devices: [8, 15],
            age_fraction: 0.25,
            claim_gap_s: [120.0, 480.0],
        }
    }
}

/// Real people paid to assist one inviter: a burst after a lull, brand-new accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crowdsourced {
    /// Number of crews (one inviter each).
    pub crews: u32,
    /// Paid helpers per crew, [min, max].
    pub size: [u32; 2],
    /// Seconds between the inviter's post and the task going out, [min, max].
    pub lull_s: [f64; 2],
    /// Seconds over which the helpers arrive, [min, max].
    pub burst_s: [f64; 2],
    /// When the inviter posts, as fractions of the duration [from, to].
    pub window: [f64; 2],
}

impl Default for Crowdsourced {
    fn default() -> Self {
        Crowdsourced {
            crews: 0,
            size: [30, 80],
            lull_s: [600.0, 2400.0],
            burst_s: [60.0, 300.0],
            window: [0.0, 0.7],
        }
    }
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        let (_, text) = BUILTINS.iter().find(|(n, _)| *n == name)?;
        Some(Self::parse(text, &format!("built-in scenario `{name}`")).expect("built-in scenarios are valid"))
    }

    /// Names of the built-in scenarios.
    pub fn builtin_names() -> &'static [&'static str] {
        BUILTIN_NAMES
    }

    /// Parses and validates a scenario.
    pub fn from_toml(text: &str) -> Result<Scenario, SimulateError> {
        Self::parse(text, "scenario")
    }

    /// A built-in scenario by name, else a TOML file.
    pub fn load(name_or_path: &str) -> Result<Scenario, SimulateError> {
        if let Some(s) = Self::builtin(name_or_path) {
            return Ok(s);
        }
        let text = std::fs::read_to_string(Path::new(name_or_path)).map_err(|source| SimulateError::Read {
            name: name_or_path.to_string(),
            builtins: BUILTIN_NAMES.join(", "),
            source,
        })?;
        Self::parse(&text, name_or_path)
    }

    fn parse(text: &str, origin: &str) -> Result<Scenario, SimulateError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| SimulateError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        sc.validate().map_err(|(key, message)| SimulateError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        })?;
        Ok(sc)
    }

    /// The same scenario with population and crew sizes multiplied by `factor` (durations,
    /// pacing and the number of crews unchanged; every non-empty segment or crew keeps at
    /// least its structural minimum).
    pub fn scaled(&self, factor: f64) -> Scenario {
        let f = if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        };
        let n = |x: u32| {
            if x == 0 {
                0
            } else {
                ((x as f64 * f).round() as u32).max(1)
            }
        };
        let r = |x: [u32; 2], min: u32| [n(x[0]).max(min), n(x[1]).max(min)];
        let mut s = self.clone();
        let p = &mut s.population;
        for c in [
            &mut p.normal,
            &mut p.carrier_nat,
            &mut p.office,
            &mut p.family,
            &mut p.heavy_referrer,
            &mut p.retry,
            &mut p.flash_surge,
        ] {
            *c = n(*c);
        }
        let a = &mut s.attacks;
        a.device_farm.size = r(a.device_farm.size, 2);
        a.device_farm.devices = r(a.device_farm.devices, 1);
        a.device_spoofing.size = r(a.device_spoofing.size, 1);
        a.script.size = r(a.script.size, 1);
        a.script.requests = r(a.script.requests, 1);
        a.ip_rotation.size = r(a.ip_rotation.size, 1);
        a.ip_rotation.devices = r(a.ip_rotation.devices, 1);
        a.referral_ring.size = r(a.referral_ring.size, 3);
        a.referral_ring.invitees = r(a.referral_ring.invitees, 0);
        a.fake_order.size = r(a.fake_order.size, 2);
        a.low_and_slow.size = r(a.low_and_slow.size, 2);
        a.low_and_slow.devices = r(a.low_and_slow.devices, 1);
        a.crowdsourced.size = r(a.crowdsourced.size, 2);
        s
    }

    /// Checks ranges; the error is (key, message).
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        let prob = |k: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                err(k, "must be between 0 and 1")
            }
        };
        let range = |k: &str, r: [u32; 2], min: u32| {
            if r[0] > r[1] {
                err(k, "[min, max] with min > max")
            } else if r[0] < min {
                Err((k.to_string(), format!("must be at least {min}")))
            } else {
                Ok(())
            }
        };
        let secs = |k: &str, r: [f64; 2]| {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] >= 0.0 && r[0] <= r[1]) {
                err(k, "[min, max] seconds, 0 <= min <= max")
            } else {
                Ok(())
            }
        };
        let window = |k: &str, w: [f64; 2]| {
            if !(0.0..=1.0).contains(&w[0]) || !(0.0..=1.0).contains(&w[1]) || w[0] > w[1] {
                err(k, "[from, to] fractions of the duration, 0 <= from <= to <= 1")
            } else {
                Ok(())
            }
        };
        let t = &self.time;
        if t.duration_s == 0 || t.duration_s > 30 * 86400 {
            return err("time.duration_s", "must be between 1 and 2592000 (30 days)");
        }
        if !(0.0..24.0).contains(&t.start_hour) {
            return err("time.start_hour", "must be in [0, 24)");
        }
        if !(t.pace.is_finite() && t.pace > 0.0) {
            return err("time.pace", "must be positive");
        }
        if !(t.think_median_s.is_finite() && t.think_median_s > 0.0) {
            return err("time.think_median_s", "must be positive");
        }
        if !(t.think_sigma.is_finite() && (0.0..=3.0).contains(&t.think_sigma)) {
            return err("time.think_sigma", "must be between 0 and 3");
        }
        let c = &self.campaign;
        if c.ids.is_empty() || c.ids.iter().any(|s| s.is_empty()) {
            return err("campaign.ids", "needs at least one non-empty campaign id");
        }
        if c.coupons.is_empty() || c.coupons.iter().any(|s| s.is_empty()) {
            return err("campaign.coupons", "needs at least one non-empty coupon id");
        }
        if c.threshold_coupon.is_empty() {
            return err("campaign.threshold_coupon", "must not be empty");
        }
        if c.referral_reward.is_empty() {
            return err("campaign.referral_reward", "must not be empty");
        }
        if !(c.threshold.is_finite() && c.threshold >= 0.0) {
            return err("campaign.threshold", "must be a non-negative amount");
        }
        if c.items == 0 {
            return err("campaign.items", "must be at least 1");
        }
        if c.packets == 0 {
            return err("campaign.packets", "must be at least 1");
        }
        let b = &self.behaviour;
        range("behaviour.sessions", b.sessions, 1)?;
        range("behaviour.items_per_session", b.items_per_session, 0)?;
        range("behaviour.invitees", b.invitees, 0)?;
        range("behaviour.retries", b.retries, 1)?;
        for (k, p) in [
            ("behaviour.second_device", b.second_device),
            ("behaviour.mobile_share", b.mobile_share),
            ("behaviour.ipv6_share", b.ipv6_share),
            ("behaviour.claim_prob", b.claim_prob),
            ("behaviour.checkin_prob", b.checkin_prob),
            ("behaviour.redpacket_prob", b.redpacket_prob),
            ("behaviour.order_prob", b.order_prob),
            ("behaviour.assist_prob", b.assist_prob),
            ("behaviour.inviter_share", b.inviter_share),
        ] {
            prob(k, p)?;
        }
        if !(b.order_median.is_finite() && b.order_median > 0.0) {
            return err("behaviour.order_median", "must be positive");
        }
        if b.nat_ips == 0 || b.nat_ips > 254 {
            return err("behaviour.nat_ips", "must be between 1 and 254");
        }
        if b.office_size == 0 {
            return err("behaviour.office_size", "must be at least 1");
        }
        if !(b.invitee_delay_median_s.is_finite() && b.invitee_delay_median_s > 0.0) {
            return err("behaviour.invitee_delay_median_s", "must be positive");
        }
        if !(b.flash_at_s.is_finite() && b.flash_at_s >= 0.0) {
            return err("behaviour.flash_at_s", "must be >= 0");
        }
        if !(b.flash_window_s.is_finite() && b.flash_window_s > 0.0) {
            return err("behaviour.flash_window_s", "must be positive");
        }
        let a = &self.attacks;
        range("attacks.device_farm.size", a.device_farm.size, 2)?;
        range("attacks.device_farm.devices", a.device_farm.devices, 1)?;
        range("attacks.device_farm.waves", a.device_farm.waves, 1)?;
        secs("attacks.device_farm.switch_s", a.device_farm.switch_s)?;
        window("attacks.device_farm.window", a.device_farm.window)?;
        range("attacks.device_spoofing.size", a.device_spoofing.size, 1)?;
        secs("attacks.device_spoofing.gap_s", a.device_spoofing.gap_s)?;
        window("attacks.device_spoofing.window", a.device_spoofing.window)?;
        range("attacks.script.size", a.script.size, 1)?;
        range("attacks.script.requests", a.script.requests, 1)?;
        if a.script.interval_ms[0] == 0 || a.script.interval_ms[0] > a.script.interval_ms[1] {
            return err("attacks.script.interval_ms", "[min, max] ms with 0 < min <= max");
        }
        if a.script.jitter_ms >= a.script.interval_ms[0] {
            return err("attacks.script.jitter_ms", "must be below interval_ms's min");
        }
        window("attacks.script.window", a.script.window)?;
        range("attacks.ip_rotation.size", a.ip_rotation.size, 1)?;
        range("attacks.ip_rotation.devices", a.ip_rotation.devices, 1)?;
        secs("attacks.ip_rotation.gap_s", a.ip_rotation.gap_s)?;
        window("attacks.ip_rotation.window", a.ip_rotation.window)?;
        range("attacks.referral_ring.size", a.referral_ring.size, 3)?;
        range("attacks.referral_ring.invitees", a.referral_ring.invitees, 0)?;
        range("attacks.referral_ring.devices", a.referral_ring.devices, 1)?;
        secs("attacks.referral_ring.step_s", a.referral_ring.step_s)?;
        window("attacks.referral_ring.window", a.referral_ring.window)?;
        range("attacks.fake_order.size", a.fake_order.size, 1)?;
        let am = a.fake_order.amount;
        if !(am[0].is_finite() && am[1].is_finite() && am[0] > 0.0 && am[0] <= am[1]) {
            return err("attacks.fake_order.amount", "[min, max] amount with 0 < min <= max");
        }
        range("attacks.fake_order.orders", a.fake_order.orders, 1)?;
        range("attacks.fake_order.addresses", a.fake_order.addresses, 1)?;
        range("attacks.fake_order.pay_accounts", a.fake_order.pay_accounts, 1)?;
        secs("attacks.fake_order.gap_s", a.fake_order.gap_s)?;
        window("attacks.fake_order.window", a.fake_order.window)?;
        range("attacks.low_and_slow.size", a.low_and_slow.size, 1)?;
        range("attacks.low_and_slow.devices", a.low_and_slow.devices, 1)?;
        if !(a.low_and_slow.age_fraction > 0.0 && a.low_and_slow.age_fraction < 1.0) {
            return err("attacks.low_and_slow.age_fraction", "must be strictly between 0 and 1");
        }
        secs("attacks.low_and_slow.claim_gap_s", a.low_and_slow.claim_gap_s)?;
        range("attacks.crowdsourced.size", a.crowdsourced.size, 1)?;
        secs("attacks.crowdsourced.lull_s", a.crowdsourced.lull_s)?;
        secs("attacks.crowdsourced.burst_s", a.crowdsourced.burst_s)?;
        window("attacks.crowdsourced.window", a.crowdsourced.window)?;
        Ok(())
    }

    /// Number of crews configured for an attack kind (0 if unknown).
    pub fn crews(&self, kind: &str) -> u32 {
        let a = &self.attacks;
        match kind {
            "device_farm" => a.device_farm.crews,
            "device_spoofing" => a.device_spoofing.crews,
            "script" => a.script.crews,
            "ip_rotation" => a.ip_rotation.crews,
            "referral_ring" => a.referral_ring.crews,
            "fake_order" => a.fake_order.crews,
            "low_and_slow" => a.low_and_slow.crews,
            "crowdsourced" => a.crowdsourced.crews,
            _ => 0,
        }
    }

    /// Number of members configured for a legitimate segment (0 if unknown).
    pub fn segment(&self, name: &str) -> u32 {
        let p = &self.population;
        match name {
            "normal" => p.normal,
            "carrier_nat" => p.carrier_nat,
            "office" => p.office,
            "family" => p.family,
            "heavy_referrer" => p.heavy_referrer,
            "retry" => p.retry,
            "flash_surge" => p.flash_surge,
            _ => 0,
        }
    }
}

/// Every event of the scenario, sorted by ts_ms (ties broken deterministically), starting at `start_ms`.
pub fn generate(scenario: &Scenario, seed: u64, start_ms: u64) -> Vec<Event> {
    let ctx = world::Ctx::new(scenario, seed);
    let mut sink = world::Sink::default();
    legit::generate(&ctx, &mut sink);
    crews::generate(&ctx, &mut sink);
    let (offsets, mut events) = sink.into_sorted();
    for (n, (ev, offset)) in events.iter_mut().zip(offsets).enumerate() {
        ev.ts_ms = start_ms + offset;
        ev.headers.insert("x-request-id".to_string(), format!("sim-{seed}-{n}"));
    }
    events
}

/// Summary for progress/docs: events per label kind (fraud and legit), sorted by kind.
pub fn census(events: &[Event]) -> Vec<(String, bool, usize)> {
    let mut counts: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for ev in events {
        let (kind, fraud) = match &ev.label {
            Some(l) => (
                l.kind
                    .clone()
                    .unwrap_or_else(|| if l.fraud { "fraud" } else { "legit" }.to_string()),
                l.fraud,
            ),
            None => ("unlabelled".to_string(), false),
        };
        *counts.entry((kind, fraud)).or_default() += 1;
    }
    counts.into_iter().map(|((k, f), n)| (k, f, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_are_listed() {
        for name in Scenario::builtin_names() {
            let s = Scenario::builtin(name).unwrap_or_else(|| panic!("built-in {name}"));
            assert_eq!(&s.name, name);
        }
        assert_eq!(BUILTINS.len(), BUILTIN_NAMES.len());
        assert!(Scenario::builtin("nope").is_none());
    }

    /// Every knob of the scenario format is explained in the comment block of every
    /// built-in file.
    #[test]
    fn every_knob_is_documented_in_every_builtin() {
        let full = toml::Value::try_from(Scenario {
            name: "x".into(),
            description: "x".into(),
            time: TimeSpec::default(),
            campaign: CampaignSpec::default(),
            population: Population::default(),
            behaviour: Behaviour::default(),
            attacks: Attacks::default(),
        })
        .unwrap();
        let mut keys = Vec::new();
        fn walk(v: &toml::Value, keys: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    keys.push(k.clone());
                    walk(v, keys);
                }
            }
        }
        walk(&full, &mut keys);
        for (name, text) in BUILTINS {
            let comments: String = text
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            for k in &keys {
                assert!(
                    comments.contains(k.as_str()),
                    "scenario {name}: knob `{k}` is not explained in its comments"
                );
            }
        }
    }

    #[test]
    fn validation_names_the_key() {
        let e = Scenario::from_toml("name = \"x\"\n[attacks.referral_ring]\ncrews = 1\nsize = [2, 4]\n").unwrap_err();
        assert!(e.to_string().contains("attacks.referral_ring.size"), "{e}");
        let e = Scenario::from_toml("name = \"x\"\n[behaviour]\nclaim_prob = 1.5\n").unwrap_err();
        assert!(e.to_string().contains("behaviour.claim_prob"), "{e}");
        let e = Scenario::from_toml("name = \"x\"\n[time]\nduration_s = 0\n").unwrap_err();
        assert!(e.to_string().contains("time.duration_s"), "{e}");
    }

    #[test]
    fn load_reports_missing_files() {
        let e = Scenario::load("/nonexistent/scenario.toml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/scenario.toml") && msg.contains("default"),
            "{msg}"
        );
    }

    #[test]
    fn census_counts_by_kind() {
        let s = Scenario::builtin("small").unwrap();
        let events = generate(&s, 1, 0);
        let c = census(&events);
        assert_eq!(c.iter().map(|x| x.2).sum::<usize>(), events.len());
        let mut sorted = c.clone();
        sorted.sort();
        assert_eq!(c, sorted);
    }
}
