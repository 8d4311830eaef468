//! The simulated world: deterministic identities, the address plan, WeChat user agents,
//! the day curve and the event emitter shared by the legitimate population and the crews.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Zipf};
use serde_json::{json, Value};

use super::Scenario;
use crate::event::{Event, Label};

// ---------------------------------------------------------------------------------------
// Deterministic mixing: every actor gets its own random stream from (seed, stream id), so
// adding or removing one actor never changes what the others do.

/// SplitMix64 finaliser: a good 64-bit mixer.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a name: stable across Rust versions and platforms (unlike std's hasher).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The stream id of actor `index` of a segment or attack kind.
pub(crate) fn stream_id(kind: &str, index: u64) -> u64 {
    mix(fnv1a(kind) ^ mix(index.wrapping_add(0x5151)))
}

/// The random generator of one actor.
pub(crate) fn actor_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut bytes = [0u8; 32];
    let mut s = mix(seed) ^ stream;
    for chunk in bytes.chunks_mut(8) {
        s = mix(s);
        chunk.copy_from_slice(&s.to_le_bytes());
    }
    ChaCha8Rng::from_seed(bytes)
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `n` lower-case hex digits.
pub(crate) fn hex(rng: &mut impl Rng, n: usize) -> String {
    (0..n).map(|_| HEX[rng.random_range(0..16)] as char).collect()
}

/// A WeChat-style openid: the mini program's fixed prefix, then 22 url-safe characters.
/// Derived from (seed, stream, k) alone, so that other actors can name a real user (a
/// friend's inviter) without running that user's generator.
pub(crate) fn openid(seed: u64, stream: u64, k: u64) -> String {
    let base = mix(mix(seed ^ 0x0bad_cafe) ^ stream ^ mix(k));
    let mut out = String::with_capacity(28);
    out.push_str("o6_bmJ");
    let mut bits = 0;
    for i in 0..22u64 {
        if i % 10 == 0 {
            bits = mix(base.wrapping_add(i));
        }
        out.push(B64[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    out
}

// ---------------------------------------------------------------------------------------
// The address plan. Every address is DATA ONLY, never a network target. All come from
// ranges reserved for documentation and benchmarking (RFC 5737, RFC 2544, RFC 3849), laid
// out like a real internet:
//
//   198.18.0.0/16     residential broadband (home Wi-Fi; also what dial-up 秒拨 pools recycle)
//   198.19.0.0/17     mobile carrier IPv4 egress (a new address per session)
//   198.19.128.0/18   enterprise and campus networks, one /24 per office
//   198.19.192.0/18   hosting / IDC / commercial proxy pools
//   203.0.113.0/24    one mobile carrier's NAT, shared by many subscribers
//   192.0.2.0/24      a cloud provider's VMs (scripts)
//   198.51.100.0/24   another hosting provider (scripts)
//   2001:db8::/32     mobile carrier IPv6 (a /64 per attach)

pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A home broadband address.
pub(crate) fn residential(rng: &mut impl Rng) -> IpAddr {
    v4(198, 18, rng.random(), rng.random_range(1..=254))
}

/// An address in residential /24 number `sub` (198.18.sub.0/24).
pub(crate) fn residential_in(sub: u8, rng: &mut impl Rng) -> IpAddr {
    v4(198, 18, sub, rng.random_range(1..=254))
}

/// A mobile carrier IPv4 egress address.
pub(crate) fn mobile_v4(rng: &mut impl Rng) -> IpAddr {
    v4(198, 19, rng.random_range(0..128), rng.random_range(1..=254))
}

/// A mobile IPv6 address: a fresh /64 per attach, a random interface id.
pub(crate) fn mobile_v6(rng: &mut impl Rng) -> IpAddr {
    let seg = |rng: &mut dyn rand::RngCore| (rng.next_u32() & 0xffff) as u16;
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0x0db8,
        0x4000 | (seg(rng) & 0x3fff),
        seg(rng),
        seg(rng),
        seg(rng),
        seg(rng),
        seg(rng).max(1),
    ))
}

/// A host on office number `k`'s /24.
pub(crate) fn office_host(k: u32, host: u8) -> IpAddr {
    v4(198, 19, 128 + (k % 64) as u8, host.max(1))
}

/// A proxy-pool / IDC address from many /24s.
pub(crate) fn proxy(rng: &mut impl Rng) -> IpAddr {
    v4(198, 19, rng.random_range(192..=255), rng.random_range(1..=254))
}

/// A cloud VM address (what scripts run on).
pub(crate) fn cloud(rng: &mut impl Rng) -> IpAddr {
    match rng.random_range(0..3) {
        0 => v4(192, 0, 2, rng.random_range(1..=254)),
        1 => v4(198, 51, 100, rng.random_range(1..=254)),
        _ => proxy(rng),
    }
}

// ---------------------------------------------------------------------------------------
// Clients: user agents, app versions, devices, accounts.

/// The network a request went over, as WeChat reports it in the user agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Net {
    Wifi,
    G4,
    G5,
}

impl Net {
    fn as_str(self) -> &'static str {
        match self {
            Net::Wifi => "WIFI",
            Net::G4 => "4G",
            Net::G5 => "5G",
        }
    }

    pub(crate) fn cellular(rng: &mut impl Rng) -> Net {
        if rng.random_bool(0.55) {
            Net::G5
        } else {
            Net::G4
        }
    }
}

/// A user agent: WeChat ones carry the network type in the middle.
#[derive(Debug, Clone)]
pub(crate) enum Ua {
    /// `head` + "NetType/<net>" + `tail`.
    Wechat { head: String, tail: &'static str },
    /// A fixed string (scripts, tools).
    Raw(String),
    /// No user-agent header at all.
    None,
}

impl Ua {
    fn render(&self, net: Net) -> Option<String> {
        match self {
            Ua::Wechat { head, tail } => {
                let mut s = String::with_capacity(head.len() + tail.len() + 12);
                s.push_str(head);
                s.push_str("NetType/");
                s.push_str(net.as_str());
                s.push_str(tail);
                Some(s)
            }
            Ua::Raw(s) => Some(s.clone()),
            Ua::None => None,
        }
    }
}

/// iOS versions seen in the wild, with rough weights.
const IOS: &[(&str, u32)] = &[
    ("18_3_2", 10),
    ("18_3", 6),
    ("18_2_1", 8),
    ("18_1_1", 7),
    ("18_0", 4),
    ("17_6_1", 12),
    ("17_5_1", 9),
    ("17_4_1", 7),
    ("17_4", 5),
    ("17_1_2", 4),
    ("16_7_10", 5),
    ("16_6_1", 4),
    ("15_8_3", 2),
];

/// WeChat versions: (iOS version, iOS build code, Android version, Android build code, weight).
const WECHAT: &[(&str, &str, &str, &str, u32)] = &[
    ("8.0.56", "0x18003830", "8.0.56.2800", "0x28003835", 14),
    ("8.0.54", "0x18003637", "8.0.54.2760", "0x28003634", 22),
    ("8.0.53", "0x18003531", "8.0.53.2740", "0x28003539", 14),
    ("8.0.50", "0x1800323d", "8.0.50.2701", "0x28003235", 16),
    ("8.0.49", "0x18003137", "8.0.49.2600", "0x28003133", 11),
    ("8.0.47", "0x18002f2f", "8.0.47.2560", "0x28002F35", 10),
    ("8.0.44", "0x18002c2d", "8.0.44.2502", "0x28002C51", 7),
    ("8.0.40", "0x18002831", "8.0.40.2420", "0x28002837", 6),
];

/// Android handsets common in China: (model, Android version, build id, weight).
const ANDROID: &[(&str, &str, &str, u32)] = &[
    ("V2243A", "13", "TP1A.220624.014", 7),
    ("V2309A", "14", "UP1A.231005.007", 6),
    ("V2054A", "11", "RP1A.200720.012", 3),
    ("PHB110", "13", "TP1A.220905.001", 6),
    ("PGEM10", "11", "RP1A.200720.011", 3),
    ("PJZ110", "14", "UKQ1.230924.001", 4),
    ("2211133C", "14", "UKQ1.230804.001", 7),
    ("23049RAD8C", "14", "UKQ1.230917.001", 8),
    ("22081212C", "13", "TKQ1.220829.002", 5),
    ("M2012K11AC", "12", "SKQ1.211006.001", 4),
    ("23127PN0CC", "14", "UKQ1.231003.002", 6),
    ("NOH-AN00", "12", "HUAWEINOH-AN00", 6),
    ("ALN-AL00", "12", "HUAWEIALN-AL00", 8),
    ("JAD-AL50", "12", "HUAWEIJAD-AL50", 4),
    ("ANY-AN00", "12", "HONORANY-AN00", 4),
    ("PGT-AN10", "14", "HONORPGT-AN10", 3),
    ("SM-S9180", "14", "UP1A.231005.007", 3),
    ("RMX3706", "14", "UKQ1.230917.001", 3),
];

/// XWEB engine builds with the Chrome version they report.
const XWEB: &[(&str, &str)] = &[
    ("1160117", "116.0.0.0"),
    ("1220133", "122.0.6261.120"),
    ("1300333", "130.0.6723.103"),
    ("1110081", "111.0.5563.116"),
];

const MMWEBSDK: &[&str] = &["20231002", "20240301", "20240404", "20240802", "20241103"];

/// The mini program's own releases: (x-app-version, page-frame build in the referer, weight).
const APP_VERSIONS: &[(&str, u32, u32)] = &[
    ("3.12.1", 187, 55),
    ("3.12.0", 186, 22),
    ("3.11.4", 181, 12),
    ("3.10.2", 175, 8),
    ("3.9.0", 168, 3),
];

/// Releases too old to still be in use: what captured-and-replayed scripts send.
const STALE_APP_VERSIONS: &[&str] = &["2.9.0", "3.0.1", "3.2.5", "1.0.0"];

/// What scripts that call the API directly look like.
const SCRIPT_UAS: &[&str] = &[
    "okhttp/4.12.0",
    "okhttp/3.14.9",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "Apache-HttpClient/4.5.14 (Java/1.8.0_381)",
    "axios/1.6.8",
    "Mozilla/5.0 (Linux; Android 9; MI 6) AppleWebKit/537.36 MicroMessenger/7.0.20",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Dalvik/2.1.0 (Linux; U; Android 10; Redmi Note 8 Pro MIUI/V12.0.3.0.QGGCNXM)",
];

const MINI_APPID: &str = "wx8f2a6c3d1e4b5a79";

fn weighted<'t, T>(rng: &mut impl Rng, table: &'t [T], w: impl Fn(&T) -> u32) -> &'t T {
    let total: u32 = table.iter().map(&w).sum();
    let mut x = rng.random_range(0..total);
    for item in table {
        let wi = w(item);
        if x < wi {
            return item;
        }
        x -= wi;
    }
    &table[table.len() - 1]
}

/// A handset (or what claims to be one).
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// x-device-id (the SDK fingerprint); None when the client sent none.
    pub id: Option<String>,
    pub ua: Ua,
    pub app_version: Option<String>,
    /// The mini program's page-frame referer, which real clients send.
    pub referer: Option<String>,
}

impl Device {
    /// A real phone running the mini program inside WeChat, with a realistic spread of
    /// OS, model and versions.
    pub(crate) fn phone(rng: &mut impl Rng) -> Device {
        let wechat = weighted(rng, WECHAT, |w| w.4);
        let ua = if rng.random_bool(0.3) {
            let ios = weighted(rng, IOS, |i| i.1).0;
            Ua::Wechat {
                head: format!(
                    "Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                     Mobile/15E148 MicroMessenger/{}({}) ",
                    wechat.0, wechat.1
                ),
                tail: " Language/zh_CN miniProgram",
            }
        } else {
            let (model, android, build, _) = weighted(rng, ANDROID, |a| a.3);
            let (xweb, chrome) = XWEB.choose(rng).copied().unwrap_or(XWEB[0]);
            let sdk = MMWEBSDK.choose(rng).copied().unwrap_or(MMWEBSDK[0]);
            let webid: u32 = rng.random_range(1000..10000);
            Ua::Wechat {
                head: format!(
                    "Mozilla/5.0 (Linux; Android {android}; {model} Build/{build}; wv) AppleWebKit/537.36 \
                     (KHTML, like Gecko) Version/4.0 Chrome/{chrome} Mobile Safari/537.36 XWEB/{xweb} \
                     MMWEBSDK/{sdk} MMWEBID/{webid} MicroMessenger/{}({}) WeChat/arm64 Weixin ",
                    wechat.2, wechat.3
                ),
                tail: " Language/zh_CN ABI/arm64 miniProgram",
            }
        };
        let (ver, build, _) = weighted(rng, APP_VERSIONS, |a| a.2);
        Device {
            id: Some(hex(rng, 32)),
            ua,
            app_version: Some(ver.to_string()),
            referer: Some(referer(*build)),
        }
    }

    /// The same model, OS and app (one user agent), with a new device id.
    pub(crate) fn sibling(&self, rng: &mut impl Rng) -> Device {
        Device {
            id: Some(hex(rng, 32)),
            ..self.clone()
        }
    }

    /// On the latest mini program release (crews keep their tools current).
    pub(crate) fn latest(mut self) -> Device {
        self.app_version = Some(APP_VERSIONS[0].0.to_string());
        self.referer = Some(referer(APP_VERSIONS[0].1));
        self
    }

    /// A script calling the API directly: a generic or odd user agent, a missing or
    /// stale app version, no referer.
    pub(crate) fn script(rng: &mut impl Rng) -> Device {
        let ua = if rng.random_bool(0.1) {
            Ua::None
        } else {
            Ua::Raw(SCRIPT_UAS.choose(rng).copied().unwrap_or(SCRIPT_UAS[0]).to_string())
        };
        let app_version = if rng.random_bool(0.6) {
            None
        } else {
            STALE_APP_VERSIONS.choose(rng).map(|v| v.to_string())
        };
        Device {
            id: None,
            ua,
            app_version,
            referer: None,
        }
    }
}

fn referer(build: u32) -> String {
    format!("https://servicewechat.com/{MINI_APPID}/{build}/page-frame.html")
}

/// An account (a WeChat user of the mini program).
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub user: String,
    /// x-phone-hash: the bound phone number, hashed.
    pub phone: Option<String>,
    pub address: String,
    pub pay: String,
}

impl Account {
    /// Account number `k` of actor `stream`: the user id is derived, the rest is drawn.
    pub(crate) fn new(ctx: &Ctx, stream: u64, k: u64, rng: &mut impl Rng) -> Account {
        Account {
            user: openid(ctx.seed, stream, k),
            phone: Some(hex(rng, 32)),
            address: hex(rng, 16),
            pay: hex(rng, 16),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Time and the campaign.

/// Relative activity of a mini program by local hour (China): quiet at night, peaks at
/// lunch and in the evening.
const DAY_CURVE: [f64; 24] = [
    0.45, 0.25, 0.15, 0.10, 0.08, 0.10, 0.20, 0.45, 0.65, 0.70, 0.75, 0.85, 1.00, 0.85, 0.70, 0.70, 0.72, 0.78, 0.85,
    0.95, 1.00, 1.00, 0.85, 0.65,
];

/// Everything the actors share: the scenario, the seed, time, the campaign, the shared
/// networks.
pub(crate) struct Ctx<'s> {
    pub sc: &'s Scenario,
    pub seed: u64,
    /// Scenario length in ms: every event is in [0, dur_ms) from the start.
    pub dur_ms: u64,
    pub pace: f64,
    think: LogNormal<f64>,
    zipf: Zipf<f64>,
    wmax: f64,
    /// The carrier NAT's public addresses.
    pub nat_pool: Vec<IpAddr>,
}

impl<'s> Ctx<'s> {
    pub(crate) fn new(sc: &'s Scenario, seed: u64) -> Ctx<'s> {
        let dur_ms = sc.time.duration_s.saturating_mul(1000).max(1);
        let think = LogNormal::new(sc.time.think_median_s.max(0.01).ln(), sc.time.think_sigma.max(0.0))
            .unwrap_or_else(|_| LogNormal::new(2.0, 0.9).expect("valid"));
        let zipf =
            Zipf::new(sc.campaign.items.max(1) as f64, 1.1).unwrap_or_else(|_| Zipf::new(1.0, 1.1).expect("valid"));
        let mut ctx = Ctx {
            sc,
            seed,
            dur_ms,
            pace: sc.time.pace,
            think,
            zipf,
            wmax: 1.0,
            nat_pool: Vec::new(),
        };
        // The day curve's maximum over the scenario, for rejection sampling.
        let steps = 200u64;
        ctx.wmax = (0..=steps).map(|i| ctx.weight(dur_ms * i / steps)).fold(0.01, f64::max);
        let mut rng = actor_rng(seed, stream_id("world", 0));
        let mut hosts: Vec<u8> = (1..=254).collect();
        for i in 0..hosts.len() {
            let j = rng.random_range(i..hosts.len());
            hosts.swap(i, j);
        }
        let n = (sc.behaviour.nat_ips.clamp(1, 254)) as usize;
        ctx.nat_pool = hosts[..n].iter().map(|&h| v4(203, 0, 113, h)).collect();
        ctx
    }

    /// Activity weight at offset `t` ms.
    fn weight(&self, t: u64) -> f64 {
        if !self.sc.time.diurnal {
            return 1.0;
        }
        let h = (self.sc.time.start_hour + t as f64 / 3_600_000.0).rem_euclid(24.0);
        let i = h.floor() as usize % 24;
        let f = h - h.floor();
        DAY_CURVE[i] * (1.0 - f) + DAY_CURVE[(i + 1) % 24] * f
    }

    /// A time in [lo, hi) ms drawn from the day curve.
    pub(crate) fn when(&self, rng: &mut impl Rng, lo: u64, hi: u64) -> u64 {
        let hi = hi.min(self.dur_ms).max(lo + 1);
        for _ in 0..64 {
            let t = rng.random_range(lo..hi);
            if rng.random::<f64>() * self.wmax <= self.weight(t) {
                return t;
            }
        }
        rng.random_range(lo..hi)
    }

    /// A human think time between two steps, in ms (log-normal, scaled by pace).
    pub(crate) fn think(&self, rng: &mut impl Rng) -> u64 {
        let s = self.think.sample(rng).clamp(0.5, 900.0);
        ((s * self.pace * 1000.0) as u64).max(150)
    }

    /// A duration drawn uniformly from a range in seconds, scaled by pace, in ms.
    pub(crate) fn paced(&self, rng: &mut impl Rng, range: [f64; 2]) -> u64 {
        let s = if range[1] > range[0] {
            rng.random_range(range[0]..range[1])
        } else {
            range[0]
        };
        ((s * self.pace * 1000.0) as u64).max(50)
    }

    /// A time in the window `[w0, w1]` (fractions of the duration), in ms.
    pub(crate) fn in_window(&self, rng: &mut impl Rng, window: [f64; 2]) -> u64 {
        let lo = (window[0] * self.dur_ms as f64) as u64;
        let hi = ((window[1] * self.dur_ms as f64) as u64).max(lo + 1);
        rng.random_range(lo..hi)
    }

    /// Which calendar day (local) offset `t` falls on: check-in is once a day.
    pub(crate) fn day(&self, t: u64) -> u64 {
        ((self.sc.time.start_hour * 3600.0 + t as f64 / 1000.0) / 86400.0).floor() as u64
    }

    /// A campaign: most traffic goes to the first.
    pub(crate) fn campaign(&self, rng: &mut impl Rng) -> &'s str {
        let ids = &self.sc.campaign.ids;
        if ids.len() == 1 || rng.random_bool(0.8) {
            &ids[0]
        } else {
            &ids[rng.random_range(0..ids.len())]
        }
    }

    /// An item, by Zipf popularity.
    pub(crate) fn item(&self, rng: &mut impl Rng) -> u32 {
        (self.zipf.sample(rng) as u32).clamp(1, self.sc.campaign.items.max(1))
    }

    pub(crate) fn packet(&self, rng: &mut impl Rng) -> u32 {
        rng.random_range(1..=self.sc.campaign.packets.max(1))
    }
}

/// Uniform integer in an inclusive `[lo, hi]` range.
pub(crate) fn pick(rng: &mut impl Rng, r: [u32; 2]) -> u32 {
    if r[1] > r[0] {
        rng.random_range(r[0]..=r[1])
    } else {
        r[0]
    }
}

// ---------------------------------------------------------------------------------------
// Emitting events.

/// One call of the reference campaign API.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call<'x> {
    Detail,
    Item(u32),
    Claim(&'x str),
    Checkin,
    Assist(&'x str),
    Packet(u32),
    Order { amount: f64, coupon: Option<&'x str> },
}

/// Who sends a request, from where.
#[derive(Clone, Copy)]
pub(crate) struct Who<'x> {
    pub acc: &'x Account,
    pub dev: &'x Device,
    pub ip: IpAddr,
    pub net: Net,
}

/// Events as actors write them, with their sort keys kept apart (small, cheap to sort).
#[derive(Default)]
pub(crate) struct Sink {
    /// (offset ms, actor stream, actor sequence, index into `events`).
    pub keys: Vec<(u64, u64, u32, u32)>,
    pub events: Vec<Event>,
}

impl Sink {
    /// The events in (offset, stream, sequence) order, and their offsets; the sort is
    /// stable, so equal keys keep generation order, itself deterministic.
    pub(crate) fn into_sorted(self) -> (Vec<u64>, Vec<Event>) {
        let Sink { mut keys, mut events } = self;
        keys.sort_by_key(|k| (k.0, k.1, k.2));
        // Apply the permutation in place: position i takes the event at keys[i].3.
        const DONE: u32 = u32::MAX;
        let mut perm: Vec<u32> = keys.iter().map(|k| k.3).collect();
        for i in 0..perm.len() {
            let mut j = i;
            while perm[j] != DONE {
                let k = perm[j] as usize;
                perm[j] = DONE;
                if k == i {
                    break;
                }
                events.swap(j, k);
                j = k;
            }
        }
        (keys.into_iter().map(|k| k.0).collect(), events)
    }
}

#[cfg(test)]
mod sink_tests {
    use super::*;

    #[test]
    fn sorting_permutes_events_in_place() {
        let mut sink = Sink::default();
        let ev = |n: u64| Event {
            ts_ms: n,
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            client_ip: v4(192, 0, 2, 1),
            headers: BTreeMap::new(),
            body: None,
            label: None,
        };
        let order = [5u64, 3, 9, 1, 3, 7, 0, 2];
        for (i, &t) in order.iter().enumerate() {
            sink.keys.push((t, 1, i as u32, i as u32));
            sink.events.push(ev(i as u64));
        }
        let (ts, events) = sink.into_sorted();
        assert_eq!(ts, vec![0, 1, 2, 3, 3, 5, 7, 9]);
        let idx: Vec<u64> = events.iter().map(|e| e.ts_ms).collect();
        assert_eq!(idx, vec![6, 3, 7, 1, 4, 0, 5, 2]);
    }
}

/// One actor (a person, a household or a crew) writing its events.
pub(crate) struct Actor<'a, 's> {
    pub ctx: &'a Ctx<'s>,
    pub rng: ChaCha8Rng,
    pub stream: u64,
    seq: u32,
    out: &'a mut Sink,
}

impl<'a, 's> Actor<'a, 's> {
    pub(crate) fn new(ctx: &'a Ctx<'s>, kind: &str, index: u64, out: &'a mut Sink) -> Actor<'a, 's> {
        let stream = stream_id(kind, index);
        Actor {
            ctx,
            rng: actor_rng(ctx.seed, stream),
            stream,
            seq: 0,
            out,
        }
    }

    /// The event for `call`, without time or request id.
    pub(crate) fn build(&mut self, who: Who<'_>, campaign: &str, call: Call<'_>, label: &Label) -> Event {
        let (method, path, query, body): (&str, &str, String, Option<Value>) = match call {
            Call::Detail => ("GET", "/api/campaign/detail", format!("campaign_id={campaign}"), None),
            Call::Item(i) => ("GET", "/api/item/view", format!("item_id=i-{i}"), None),
            Call::Claim(coupon) => (
                "POST",
                "/api/coupon/claim",
                String::new(),
                Some(json!({"campaign_id": campaign, "coupon_id": coupon})),
            ),
            Call::Checkin => (
                "POST",
                "/api/checkin",
                String::new(),
                Some(json!({"campaign_id": campaign})),
            ),
            Call::Assist(inviter) => (
                "POST",
                "/api/referral/assist",
                String::new(),
                Some(json!({"campaign_id": campaign, "inviter_id": inviter})),
            ),
            Call::Packet(p) => (
                "POST",
                "/api/redpacket/open",
                String::new(),
                Some(json!({"campaign_id": campaign, "packet_id": format!("rp-{p}")})),
            ),
            Call::Order { amount, coupon } => {
                let mut b = json!({
                    "campaign_id": campaign,
                    "order_id": format!("ord-{}", hex(&mut self.rng, 16)),
                    "amount": (amount * 100.0).round() / 100.0,
                    "address_hash": who.acc.address,
                    "pay_account_hash": who.acc.pay,
                });
                if let (Some(c), Some(map)) = (coupon, b.as_object_mut()) {
                    map.insert("coupon_id".to_string(), Value::String(c.to_string()));
                }
                ("POST", "/api/order/submit", String::new(), Some(b))
            }
        };
        let mut headers = BTreeMap::new();
        headers.insert("x-user-id".to_string(), who.acc.user.clone());
        if let Some(d) = &who.dev.id {
            headers.insert("x-device-id".to_string(), d.clone());
        }
        if matches!(
            call,
            Call::Claim(_) | Call::Assist(_) | Call::Packet(_) | Call::Order { .. }
        ) {
            if let Some(p) = &who.acc.phone {
                headers.insert("x-phone-hash".to_string(), p.clone());
            }
        }
        if let Some(v) = &who.dev.app_version {
            headers.insert("x-app-version".to_string(), v.clone());
        }
        if let Some(ua) = who.dev.ua.render(who.net) {
            headers.insert("user-agent".to_string(), ua);
        }
        if let Some(r) = &who.dev.referer {
            headers.insert("referer".to_string(), r.clone());
        }
        if body.is_some() {
            headers.insert("content-type".to_string(), "application/json".to_string());
        }
        Event {
            ts_ms: 0,
            method: method.to_string(),
            path: path.to_string(),
            query,
            client_ip: who.ip,
            headers,
            body,
            label: Some(label.clone()),
        }
    }

    /// Records `ev` at offset `t` ms (dropped when past the end of the scenario).
    pub(crate) fn push(&mut self, t: u64, ev: Event) {
        if t < self.ctx.dur_ms {
            let idx = u32::try_from(self.out.events.len()).expect("fewer than 4 billion events");
            self.out.keys.push((t, self.stream, self.seq, idx));
            self.out.events.push(ev);
            self.seq += 1;
        }
    }

    /// Builds and records one call at `t`.
    pub(crate) fn emit(&mut self, t: u64, who: Who<'_>, campaign: &str, call: Call<'_>, label: &Label) {
        if t < self.ctx.dur_ms {
            let ev = self.build(who, campaign, call, label);
            self.push(t, ev);
        }
    }
}

/// A label.
pub(crate) fn label(fraud: bool, kind: &str, actor: String) -> Label {
    Label {
        fraud,
        kind: Some(kind.to_string()),
        actor: Some(actor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_ids_are_stable_and_distinct() {
        assert_eq!(stream_id("normal", 3), stream_id("normal", 3));
        assert_ne!(stream_id("normal", 3), stream_id("normal", 4));
        assert_ne!(stream_id("normal", 3), stream_id("office", 3));
        let a = openid(7, stream_id("normal", 1), 0);
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("o6_bmJ"));
        assert_eq!(a, openid(7, stream_id("normal", 1), 0));
        assert_ne!(a, openid(8, stream_id("normal", 1), 0));
        // No shared tails: every part of the id varies.
        let tails: std::collections::BTreeSet<String> = (0..200)
            .map(|k| openid(7, stream_id("normal", k), 0)[16..].to_string())
            .collect();
        assert_eq!(tails.len(), 200);
    }

    #[test]
    fn phones_look_like_wechat_mini_programs() {
        let mut rng = actor_rng(1, 2);
        let mut ios = 0;
        for _ in 0..200 {
            let d = Device::phone(&mut rng);
            let ua = d.ua.render(Net::Wifi).unwrap();
            assert!(ua.contains("MicroMessenger/8.0."), "{ua}");
            assert!(ua.contains("NetType/WIFI Language/zh_CN"), "{ua}");
            assert!(ua.ends_with("miniProgram"), "{ua}");
            if ua.contains("iPhone") {
                ios += 1;
            }
        }
        assert!((30..100).contains(&ios), "iOS share {ios}/200");
    }

    #[test]
    fn addresses_stay_in_reserved_ranges() {
        let mut rng = actor_rng(3, 4);
        for _ in 0..1000 {
            for ip in [
                residential(&mut rng),
                mobile_v4(&mut rng),
                proxy(&mut rng),
                cloud(&mut rng),
                mobile_v6(&mut rng),
            ] {
                let ok = match ip {
                    IpAddr::V4(a) => {
                        let o = a.octets();
                        (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                            || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                            || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                            || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                    }
                    IpAddr::V6(a) => a.segments()[0] == 0x2001 && a.segments()[1] == 0x0db8,
                };
                assert!(ok, "{ip}");
            }
        }
    }
}
