//! What is sent: requests built from a simulator event file, or coupon claims over a
//! synthetic key space. Everything is prepared up front so that making request `i` is a
//! few reference-count bumps, not string formatting: the generator must stay cheaper
//! than what it measures.

use std::io::BufRead;
use std::path::Path;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::Full;
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::target::Target;

/// How synthetic ids are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    Zipf,
    Uniform,
}

/// The synthetic key space: coupon claims by `users` accounts on `devices` devices.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub users: u32,
    pub devices: u32,
    pub dist: Dist,
    /// Zipf exponent (1.0: the most active user sends ~8% of 100k users' requests).
    pub zipf_s: f64,
    /// Every request carries a device id never seen before (a device-rotation flood).
    pub unique_devices: bool,
    pub seed: u64,
    pub path: String,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            users: 100_000,
            devices: 50_000,
            dist: Dist::Zipf,
            zipf_s: 1.0,
            unique_devices: false,
            seed: 1,
            path: "/api/coupon/claim".into(),
        }
    }
}

/// One prepared request.
#[derive(Debug, Clone)]
pub struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// A workload: request `i` for any `i`.
#[derive(Debug)]
pub enum Workload {
    /// Events replayed in file order, round and round.
    Events(Vec<Template>),
    Synthetic(Box<SyntheticSpace>),
}

/// The prepared synthetic key space.
#[derive(Debug)]
pub struct SyntheticSpace {
    base: Template,
    /// Header values per user: x-user-id, x-phone-hash.
    users: Vec<(HeaderValue, HeaderValue)>,
    devices: Vec<HeaderValue>,
    /// Drawn user ranks, replayed in order (a fixed pseudo-random walk).
    draws: Vec<u32>,
    unique_devices: bool,
    unique_prefix: u64,
}

/// Names sent by the reference client (DESIGN.md): the identity sources of the
/// default config/riskgate.toml.
const USER: HeaderName = HeaderName::from_static("x-user-id");
const DEVICE: HeaderName = HeaderName::from_static("x-device-id");
const PHONE: HeaderName = HeaderName::from_static("x-phone-hash");

impl Workload {
    /// The synthetic key space (draws 2^20 users up front).
    pub fn synthetic(s: &Synthetic, target: &Target) -> Result<Workload, String> {
        if s.users == 0 || s.devices == 0 {
            return Err("--users and --devices must be above 0".into());
        }
        let mut headers = HeaderMap::new();
        headers.insert(HOST, value(&target.host)?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 MicroMessenger/8.0.47",
            ),
        );
        headers.insert("x-app-version", HeaderValue::from_static("8.0.47"));
        let base = Template {
            method: Method::POST,
            uri: s.path.parse().map_err(|e| format!("{}: {e}", s.path))?,
            headers,
            body: Bytes::from_static(br#"{"campaign_id":"c-1111","coupon_id":"new-user-50"}"#),
        };
        let users = (0..s.users)
            .map(|u| Ok((value(&format!("u{u}"))?, value(&format!("p{:08x}", mix(u64::from(u))))?)))
            .collect::<Result<Vec<_>, String>>()?;
        let devices = (0..s.devices)
            .map(|d| value(&format!("d{d}")))
            .collect::<Result<Vec<_>, String>>()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
        let n = 1usize << 20;
        let draws: Vec<u32> = match s.dist {
            Dist::Uniform => {
                let d = rand_distr::Uniform::new(0, s.users).map_err(|e| e.to_string())?;
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
            Dist::Zipf => {
                let d = rand_distr::Zipf::new(f64::from(s.users), s.zipf_s).map_err(|e| e.to_string())?;
                // Zipf draws ranks 1..=n; rank r is user r-1 (user 0 is the most active).
                (0..n)
                    .map(|_| (d.sample(&mut rng) as u32).clamp(1, s.users) - 1)
                    .collect()
            }
        };
        Ok(Workload::Synthetic(Box::new(SyntheticSpace {
            base,
            users,
            devices,
            draws,
            unique_devices: s.unique_devices,
            unique_prefix: s.seed,
        })))
    }

    /// Events from a JSONL file as written by `riskgate simulate` (at most `limit`).
    /// Their timestamps are not used: the schedule sets the pace. The event's client
    /// address travels as X-Forwarded-For (believed only by a gateway that trusts loopback).
    pub fn events(path: &Path, target: &Target, limit: usize) -> Result<Workload, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            if out.len() >= limit {
                break;
            }
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let e: riskgate::event::Event =
                serde_json::from_str(&line).map_err(|err| format!("{}:{}: {err}", path.display(), n + 1))?;
            out.push(template_of(&e, target).map_err(|err| format!("{}:{}: {err}", path.display(), n + 1))?);
        }
        if out.is_empty() {
            return Err(format!("{}: no events", path.display()));
        }
        Ok(Workload::Events(out))
    }

    /// Request number `i`.
    pub fn request(&self, i: u64) -> Request<Full<Bytes>> {
        match self {
            Workload::Events(t) => build(&t[(i % t.len() as u64) as usize]),
            Workload::Synthetic(s) => {
                let mut req = build(&s.base);
                let user = s.draws[(i % s.draws.len() as u64) as usize] as usize;
                let (uid, phone) = &s.users[user];
                let h = req.headers_mut();
                h.insert(USER, uid.clone());
                h.insert(PHONE, phone.clone());
                let device = if s.unique_devices {
                    // Unique per run and request: a device-rotation flood.
                    HeaderValue::from_maybe_shared(Bytes::from(format!("f{:x}-{i:x}", s.unique_prefix)))
                        .unwrap_or_else(|_| HeaderValue::from_static("f"))
                } else {
                    // Each user keeps one device; devices are shared by about
                    // users/devices accounts, so device traffic follows the users' skew.
                    s.devices[(mix(user as u64) % s.devices.len() as u64) as usize].clone()
                };
                h.insert(DEVICE, device);
                req
            }
        }
    }
}

fn build(t: &Template) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(t.body.clone()));
    *req.method_mut() = t.method.clone();
    *req.uri_mut() = t.uri.clone();
    *req.headers_mut() = t.headers.clone();
    req
}

fn template_of(e: &riskgate::event::Event, target: &Target) -> Result<Template, String> {
    let method: Method = e.method.parse().map_err(|_| format!("bad method {}", e.method))?;
    let pq = if e.query.is_empty() {
        e.path.clone()
    } else {
        format!("{}?{}", e.path, e.query)
    };
    let uri: Uri = pq.parse().map_err(|err| format!("{pq}: {err}"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &e.headers {
        if matches!(
            k.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|err| format!("header {k}: {err}"))?;
        headers.append(name, value(v)?);
    }
    headers.insert(HOST, value(&target.host)?);
    headers.insert("x-forwarded-for", value(&e.client_ip.to_string())?);
    let body = match &e.body {
        None => Bytes::new(),
        Some(serde_json::Value::String(s)) => Bytes::from(s.clone()),
        Some(v) => Bytes::from(v.to_string()),
    };
    if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(Template {
        method,
        uri,
        headers,
        body,
    })
}

fn value(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|_| format!("not a header value: {s:?}"))
}

/// A fixed bijective scramble (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        crate::target::parse("http://127.0.0.1:9").unwrap()
    }

    #[test]
    fn zipf_users_are_skewed_and_devices_follow_users() {
        let w = Workload::synthetic(&Synthetic::default(), &target()).unwrap();
        let mut counts = std::collections::HashMap::<String, u32>::new();
        let mut device_of = std::collections::HashMap::<String, String>::new();
        for i in 0..100_000 {
            let req = w.request(i);
            assert_eq!(req.uri().path(), "/api/coupon/claim");
            let h = req.headers();
            let u = h["x-user-id"].to_str().unwrap().to_string();
            let d = h["x-device-id"].to_str().unwrap().to_string();
            assert_eq!(device_of.entry(u.clone()).or_insert_with(|| d.clone()), &d);
            *counts.entry(u).or_default() += 1;
        }
        // Zipf(s=1) over 100k: user 0 draws ~1/H(100k) = 8% of requests.
        let top = counts["u0"];
        assert!((6_000..10_000).contains(&top), "u0 sent {top}");
        assert!(counts.len() > 10_000, "{} distinct users", counts.len());
    }

    #[test]
    fn uniform_and_unique_devices() {
        let s = Synthetic {
            dist: Dist::Uniform,
            unique_devices: true,
            users: 10,
            ..Synthetic::default()
        };
        let w = Workload::synthetic(&s, &target()).unwrap();
        let devices: std::collections::HashSet<_> = (0..1000)
            .map(|i| w.request(i).headers()["x-device-id"].clone())
            .collect();
        assert_eq!(devices.len(), 1000);
    }
}
