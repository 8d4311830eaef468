//! Extract: an event and a route's identity spec → the identities the signals key on.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::LazyLock;

use http::HeaderName;
use ipnet::IpNet;
use memchr::memmem;
use serde::{Deserialize, Deserializer, Serialize};

use crate::body_fields::{BodyFields, FieldValues};
use crate::event::Event;

/// Where one identity is read from, as written in config: `header:NAME`, `query:NAME`,
/// `json:/pointer`, `cookie:NAME` or `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Parsed once, at config load: a request looks it up without re-validating the name.
    Header(http::HeaderName),
    Query(String),
    Json(JsonPointer),
    Cookie(String),
    Ip,
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "ip" {
            return Ok(Source::Ip);
        }
        let (kind, arg) = s.split_once(':').ok_or_else(|| {
            format!("identity source `{s}` must be `header:NAME`, `query:NAME`, `json:/pointer`, `cookie:NAME` or `ip`")
        })?;
        if arg.is_empty() {
            return Err(format!("identity source `{s}` names nothing after `{kind}:`"));
        }
        match kind {
            "header" => http::HeaderName::from_bytes(arg.to_ascii_lowercase().as_bytes())
                .map(Source::Header)
                .map_err(|_| format!("`{arg}` in `{s}` is not a valid HTTP header name")),
            "query" => Ok(Source::Query(arg.to_string())),
            "cookie" => Ok(Source::Cookie(arg.to_string())),
            "json" if arg.starts_with('/') => Ok(Source::Json(arg.into())),
            "json" => Err(format!(
                "JSON pointer in `{s}` must start with `/`, e.g. `json:/inviter_id`"
            )),
            _ => Err(format!(
                "unknown identity source kind `{kind}` in `{s}`; allowed: header, query, json, cookie, ip"
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Header(n) => write!(f, "header:{n}"),
            Source::Query(n) => write!(f, "query:{n}"),
            Source::Json(p) => write!(f, "json:{p}"),
            Source::Cookie(n) => write!(f, "cookie:{n}"),
            Source::Ip => f.write_str("ip"),
        }
    }
}

/// An RFC 6901 JSON pointer (`/a/b`), split into its unescaped reference tokens once,
/// at config load, so that a request walks the body without scanning the pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl From<&str> for JsonPointer {
    /// `pointer` starts with `/` (the parser checks); "" would be the whole document.
    fn from(pointer: &str) -> Self {
        let tokens = match pointer.strip_prefix('/') {
            Some(rest) => rest
                .split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
            None => Vec::new(),
        };
        JsonPointer {
            text: pointer.to_string(),
            tokens,
        }
    }
}

impl JsonPointer {
    /// The pointer's reference tokens, unescaped.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where each identity of a route comes from. A missing source means the route has
/// no such identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentitySpec {
    pub user: Option<Source>,
    pub device: Option<Source>,
    pub phone: Option<Source>,
    pub campaign: Option<Source>,
    pub inviter: Option<Source>,
    pub amount: Option<Source>,
    pub pay_account: Option<Source>,
    pub address: Option<Source>,
    pub user_agent: Option<Source>,
    pub app_version: Option<Source>,
}

impl IdentitySpec {
    /// The JSON pointers of the identities read from the body (which must then be
    /// buffered and read).
    pub fn json_pointers(&self) -> impl Iterator<Item = &JsonPointer> {
        self.sources().filter_map(|s| match s {
            Source::Json(pointer) => Some(pointer),
            _ => None,
        })
    }

    /// Every configured source.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.kinds().into_iter().flatten()
    }

    /// The source of each identity kind, configured or not, indexed by the `kind`
    /// constants.
    fn kinds(&self) -> [&Option<Source>; IDENTITY_KINDS] {
        [
            &self.user,
            &self.device,
            &self.phone,
            &self.campaign,
            &self.inviter,
            &self.amount,
            &self.pay_account,
            &self.address,
            &self.user_agent,
            &self.app_version,
        ]
    }
}

/// The index of each identity kind in `IdentitySpec::kinds`.
mod kind {
    pub const USER: usize = 0;
    pub const DEVICE: usize = 1;
    pub const PHONE: usize = 2;
    pub const CAMPAIGN: usize = 3;
    pub const INVITER: usize = 4;
    pub const AMOUNT: usize = 5;
    pub const PAY_ACCOUNT: usize = 6;
    pub const ADDRESS: usize = 7;
    pub const USER_AGENT: usize = 8;
    pub const APP_VERSION: usize = 9;
}

/// Why a request's identities cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ambiguity {
    /// An identity header, query parameter or cookie appears more than once.
    Repeated(Source),
    /// An identity header is not valid UTF-8.
    NotUtf8(Source),
}

/// The identity headers of a request, each looked up once, by [`checked_headers`]:
/// (name, its one value) in the slot of its identity kind, so that extraction finds it
/// again without a lookup.
/// (A plain array, one slot per identity: nothing to drop, so it can borrow the body.)
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHeaders<'a> {
    found: [Option<(&'a HeaderName, Option<&'a str>)>; IDENTITY_KINDS],
}

/// The identities an `IdentitySpec` names (`kinds` lists them in an array this long).
const IDENTITY_KINDS: usize = 10;

impl<'a> IdentityHeaders<'a> {
    /// The value of identity `kind`'s header `name` as `checked_headers` found it;
    /// `None` when it did not look (the name is checked, by address first: both come
    /// from the same spec).
    fn get(&self, kind: usize, name: &HeaderName) -> Option<Option<&'a str>> {
        let (n, value) = (*self.found.get(kind)?)?;
        (std::ptr::eq(n, name) || n == name).then_some(value)
    }
}

/// Checks that every identity the route reads from headers, the query or cookies is
/// given at most once and, for headers, as UTF-8. Gateways and backends disagree on
/// which of two values counts (first, last, joined), so a client that repeats
/// `x-device-id` could be keyed on one value here and served on another there: the
/// proxy refuses such a request (400) instead of guessing. Hands back the identity
/// headers it read, for [`Live::new`].
pub fn checked_headers<'a>(
    spec: &'a IdentitySpec,
    headers: &'a http::HeaderMap,
    query: &str,
) -> Result<IdentityHeaders<'a>, Ambiguity> {
    let mut checked = IdentityHeaders::default();
    for (slot, source) in spec.kinds().into_iter().enumerate() {
        let Some(source) = source else {
            continue;
        };
        let repeated = match source {
            Source::Header(name) => {
                let mut values = headers.get_all(name).iter();
                let first = match values.next().map(|v| std::str::from_utf8(v.as_bytes())) {
                    Some(Err(_)) => return Err(Ambiguity::NotUtf8(source.clone())),
                    Some(Ok(text)) => Some(text),
                    None => None,
                };
                checked.found[slot] = Some((name, first));
                values.next().is_some()
            }
            Source::Query(name) => {
                form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == name)
                    .take(2)
                    .count()
                    > 1
            }
            Source::Cookie(name) => {
                headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                    .filter(|pair| {
                        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
                        key.trim_ascii() == name.as_bytes()
                    })
                    .take(2)
                    .count()
                    > 1
            }
            Source::Json(_) | Source::Ip => false,
        };
        if repeated {
            return Err(Ambiguity::Repeated(source.clone()));
        }
    }
    Ok(checked)
}

/// The identities of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identities {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub ip: IpAddr,
    #[serde(skip)]
    pub subnet: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inviter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip)]
    pub user_agent: Option<String>,
    #[serde(skip)]
    pub app_version: Option<String>,
    /// The whole user agent (before it is cut) reports a Wi-Fi connection.
    #[serde(skip)]
    pub wifi: bool,
}

/// Longest identity value kept; longer values are cut so that a hostile client cannot
/// make every later stage hash and log megabytes.
const MAX_IDENTITY_LEN: usize = 256;

/// What extraction reads of a request. An [`Event`] (replay, training) and the live
/// request ([`Live`], in the proxy) read alike, through [`header_text`], so that a
/// request has the same identities live and replayed, while the proxy builds an event
/// only when the audit log captures it.
pub trait RequestView {
    /// The text of header `name`, repeated values joined as [`header_text`] joins them.
    fn header(&self, name: &HeaderName) -> Option<Cow<'_, str>>;
    /// The text of identity `kind`'s header `name`: as [`RequestView::header`], or what
    /// an earlier check already read of it.
    fn identity_header(&self, _kind: usize, name: &HeaderName) -> Option<Cow<'_, str>> {
        self.header(name)
    }
    /// The query string, without the `?`.
    fn query(&self) -> &str;
    /// The text of the JSON body's scalar at `pointer` (a number as serde_json prints
    /// it); `None` when there is no body, no such field or it is not a scalar.
    fn json(&self, pointer: &JsonPointer) -> Option<Cow<'_, str>>;
    /// The socket peer (before X-Forwarded-For is resolved).
    fn peer(&self) -> IpAddr;
}

impl RequestView for Event {
    fn header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        Event::header(self, name.as_str()).map(Cow::Borrowed)
    }

    fn query(&self) -> &str {
        &self.query
    }

    fn json(&self, pointer: &JsonPointer) -> Option<Cow<'_, str>> {
        crate::body_fields::scalar_text(pointer.resolve(self.body.as_ref()?)?)
    }

    fn peer(&self) -> IpAddr {
        self.client_ip
    }
}

/// A live request as extraction reads it: borrowed from the request itself, nothing
/// copied but the identities.
pub struct Live<'a> {
    headers: &'a http::HeaderMap,
    identity_headers: IdentityHeaders<'a>,
    query: &'a str,
    body: Option<(&'a BodyFields, &'a FieldValues<'a>)>,
    peer: IpAddr,
}

impl<'a> Live<'a> {
    /// `identity_headers` is what [`checked_headers`] read of the request (or nothing:
    /// every header is then looked up); `body` is what a route that reads its JSON body
    /// found in it: the route's fields and their values.
    pub fn new(
        parts: &'a http::request::Parts,
        identity_headers: IdentityHeaders<'a>,
        body: Option<(&'a BodyFields, &'a FieldValues<'a>)>,
        peer: IpAddr,
    ) -> Live<'a> {
        Live {
            headers: &parts.headers,
            identity_headers,
            query: parts.uri.query().unwrap_or(""),
            body,
            peer,
        }
    }
}

impl RequestView for Live<'_> {
    fn header(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        header_text(self.headers, name)
    }

    fn identity_header(&self, kind: usize, name: &HeaderName) -> Option<Cow<'_, str>> {
        match self.identity_headers.get(kind, name) {
            Some(value) => value.map(Cow::Borrowed),
            None => header_text(self.headers, name),
        }
    }

    fn query(&self) -> &str {
        self.query
    }

    fn json(&self, pointer: &JsonPointer) -> Option<Cow<'_, str>> {
        let (fields, values) = self.body?;
        values.get(fields, pointer).map(Cow::Borrowed)
    }

    fn peer(&self) -> IpAddr {
        self.peer
    }
}

/// The text of header `name` as an event records it: the one value borrowed; repeated
/// values joined as one list (RFC 9110 §5.3), cookies with `; `; bytes that are not
/// UTF-8 replaced (the proxy refuses such identity headers before extraction).
pub fn header_text<'h>(headers: &'h http::HeaderMap, name: &HeaderName) -> Option<Cow<'h, str>> {
    // `from_utf8` first: its ASCII fast path is several times quicker than the
    // byte-at-a-time scan of `from_utf8_lossy`, and header values are ASCII.
    let text = |v: &'h http::HeaderValue| match std::str::from_utf8(v.as_bytes()) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(v.as_bytes()),
    };
    let mut values = headers.get_all(name).iter();
    let first = text(values.next()?);
    let Some(second) = values.next() else {
        return Some(first);
    };
    let separator = if name == http::header::COOKIE { "; " } else { ", " };
    let mut joined = first.into_owned();
    for value in std::iter::once(second).chain(values) {
        joined.push_str(separator);
        joined.push_str(&text(value));
    }
    Some(Cow::Owned(joined))
}

/// The header a trusted proxy names the client in (the proxy appends to it too).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Reads the identities of `request` as `spec` says, resolving the client IP through
/// `trusted_proxies`.
pub fn identities(spec: &IdentitySpec, request: &impl RequestView, trusted_proxies: &[IpNet]) -> Identities {
    // Without trusted proxies the peer is the client: no X-Forwarded-For lookup.
    let xff = match trusted_proxies {
        [] => None,
        _ => request.header(&X_FORWARDED_FOR),
    };
    let ip = client_ip(request.peer(), xff.as_deref(), trusted_proxies);
    let text = |k: usize, s: &Option<Source>| s.as_ref().and_then(|s| source_text(k, s, request, ip));
    let read = |k: usize, s: &Option<Source>| text(k, s).as_deref().and_then(kept).map(str::to_string);
    let user_agent = text(kind::USER_AGENT, &spec.user_agent);
    Identities {
        user: read(kind::USER, &spec.user),
        device: read(kind::DEVICE, &spec.device),
        ip,
        subnet: subnet_of(ip),
        phone: read(kind::PHONE, &spec.phone),
        campaign: read(kind::CAMPAIGN, &spec.campaign),
        inviter: read(kind::INVITER, &spec.inviter),
        amount: text(kind::AMOUNT, &spec.amount)
            .as_deref()
            .and_then(kept)
            .and_then(|a| a.parse::<f64>().ok())
            .filter(|a| a.is_finite()),
        pay_account: read(kind::PAY_ACCOUNT, &spec.pay_account),
        address: read(kind::ADDRESS, &spec.address),
        user_agent: user_agent.as_deref().and_then(kept).map(str::to_string),
        app_version: read(kind::APP_VERSION, &spec.app_version),
        wifi: user_agent.as_deref().is_some_and(on_wifi),
    }
}

/// The /24 (IPv4) or /64 (IPv6) around an address: the unit a crew's proxy pool or a
/// carrier NAT shares.
pub fn subnet_of(ip: IpAddr) -> IpNet {
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The socket peer, unless it is a trusted proxy: then the right-most X-Forwarded-For
/// entry that is not itself a trusted proxy (nginx's `real_ip_recursive on`). The
/// left-most entries are whatever the client wrote and are never trusted blindly.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut current = peer;
    let Some(xff) = xff else { return peer };
    for entry in xff.rsplit(',') {
        let Ok(hop) = entry.trim().parse::<IpAddr>() else {
            // A malformed hop ends the chain: nothing left of it can be trusted.
            return current;
        };
        current = hop;
        if !is_trusted(&hop) {
            return hop;
        }
    }
    current
}

/// The value of `source` as the request has it: borrowed where it is already text.
fn source_text<'r>(kind: usize, source: &Source, request: &'r impl RequestView, ip: IpAddr) -> Option<Cow<'r, str>> {
    Some(match source {
        Source::Header(name) => request.identity_header(kind, name)?,
        Source::Query(name) => {
            form_urlencoded::parse(request.query().as_bytes())
                .find(|(k, _)| k == name)?
                .1
        }
        Source::Cookie(name) => match request.header(&http::header::COOKIE)? {
            Cow::Borrowed(all) => Cow::Borrowed(cookie(all, name)?),
            Cow::Owned(all) => Cow::Owned(cookie(&all, name)?.to_string()),
        },
        Source::Json(pointer) => request.json(pointer)?,
        Source::Ip => Cow::Owned(ip.to_string()),
    })
}

/// The value of cookie `name` in a Cookie header.
fn cookie<'c>(cookies: &'c str, name: &str) -> Option<&'c str> {
    cookies.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// What an identity keeps of a value: trimmed (`None` when nothing is left) and cut to
/// `MAX_IDENTITY_LEN` bytes at a character boundary.
fn kept(value: &str) -> Option<&str> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let mut end = value.len().min(MAX_IDENTITY_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(&value[..end])
}

/// The user agent reports a Wi-Fi connection: WeChat and Alipay mini programs append
/// `NetType/WIFI` (or `NetType/4G`, `5G`, ...) to their user agents, near the end of
/// strings often longer than an identity is kept.
pub fn on_wifi(ua: &str) -> bool {
    // A searcher built once: `str::find` sets up a two-way searcher per call, which
    // cost more than the search of a user agent itself.
    static NET_TYPE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("NetType/"));
    NET_TYPE.find(ua.as_bytes()).is_some_and(|at| {
        ua.as_bytes()
            .get(at + 8..at + 12)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"wifi"))
    })
}

/// `token` as an array index, as serde_json's `Value::pointer` reads one: decimal,
/// without a sign or a leading zero (or `0` itself).
pub(crate) fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || token.starts_with('+') {
        return None;
    }
    token.parse().ok()
}

impl JsonPointer {
    /// `Value::pointer` (RFC 6901) over the pre-split tokens: no allocation and no scan
    /// of the pointer per request.
    pub(crate) fn resolve<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        let mut target = value;
        for token in &self.tokens {
            target = match target {
                serde_json::Value::Object(map) => map.get(token.as_str())?,
                serde_json::Value::Array(list) => list.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn wifi_is_read_from_the_mini_program_network_type() {
        let wechat = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49(0x18003137) NetType/WIFI Language/zh_CN";
        assert!(on_wifi(wechat));
        assert!(on_wifi("AlipayClient/10.5.36 NetType/wifi"));
        assert!(!on_wifi(&wechat.replace("NetType/WIFI", "NetType/4G")));
        assert!(!on_wifi(&wechat.replace("NetType/WIFI", "NetType/5G")));
        assert!(!on_wifi("Mozilla/5.0 (Windows NT 10.0; Win64; x64) WIFI"));
        assert!(!on_wifi("okhttp/4.9.3 NetType/"));
        assert!(!on_wifi("NetType/WIF"));
        // Read from the whole header: an Android user agent is longer than an identity
        // is kept, and its network type comes last.
        let android = format!("{} NetType/WIFI Language/zh_CN ABI/arm64 miniProgram", "x".repeat(400));
        let ev = event(&[("user-agent", &android)], "", None);
        let spec = IdentitySpec {
            user_agent: Some("header:user-agent".parse().unwrap()),
            ..IdentitySpec::default()
        };
        let ids = identities(&spec, &ev, &[]);
        assert!(ids.wifi);
        assert_eq!(ids.user_agent.map(|ua| ua.len()), Some(MAX_IDENTITY_LEN));
    }

    #[test]
    fn identity_headers_are_found_again_in_the_slot_of_their_kind() {
        // Every kind read from its own header, some of them absent: the checked slots
        // must hand each kind its own header's value, as a plain lookup does.
        let name = |k: usize| format!("x-id-{k}");
        let source = |k: usize| Some(format!("header:{}", name(k)).parse::<Source>().unwrap());
        let spec = IdentitySpec {
            user: source(kind::USER),
            device: source(kind::DEVICE),
            phone: source(kind::PHONE),
            campaign: source(kind::CAMPAIGN),
            inviter: source(kind::INVITER),
            amount: source(kind::AMOUNT),
            pay_account: source(kind::PAY_ACCOUNT),
            address: source(kind::ADDRESS),
            user_agent: source(kind::USER_AGENT),
            app_version: source(kind::APP_VERSION),
        };
        let mut req = http::Request::builder();
        for k in (0..IDENTITY_KINDS).filter(|k| k % 3 != 1) {
            req = req.header(name(k), format!("{k}"));
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        let checked = checked_headers(&spec, &parts.headers, "").unwrap();
        // Each slot holds its kind's header, found or not (no lookup left to make).
        for (k, source) in spec.kinds().into_iter().enumerate() {
            let Some(Source::Header(header)) = source else {
                unreachable!()
            };
            let want = (k % 3 != 1).then(|| k.to_string());
            assert_eq!(
                checked.get(k, header).map(|v| v.map(str::to_string)),
                Some(want),
                "kind {k}"
            );
        }
        let found = identities(&spec, &Live::new(&parts, checked, None, peer), &[]);
        let looked_up = identities(&spec, &Live::new(&parts, IdentityHeaders::default(), None, peer), &[]);
        assert_eq!(found, looked_up);
        let text = |k: usize| (k % 3 != 1).then(|| k.to_string());
        assert_eq!(found.user, text(kind::USER));
        assert_eq!(found.device, text(kind::DEVICE));
        assert_eq!(found.phone, text(kind::PHONE));
        assert_eq!(found.campaign, text(kind::CAMPAIGN));
        assert_eq!(found.inviter, text(kind::INVITER));
        assert_eq!(found.amount, Some(5.0));
        assert_eq!(found.pay_account, text(kind::PAY_ACCOUNT));
        assert_eq!(found.address, text(kind::ADDRESS));
        assert_eq!(found.user_agent, text(kind::USER_AGENT));
        assert_eq!(found.app_version, text(kind::APP_VERSION));
    }

    #[test]
    fn json_pointers_resolve_as_serde_json_does() {
        let doc: serde_json::Value = serde_json::json!({
            "a": {"b": [10, {"c": "x"}], "": 1, "m~n": 2, "s/t": 3, "07": 4},
            "list": [1, 2, 3],
        });
        for p in [
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/",
            "/a/m~0n",
            "/a/s~1t",
            "/a/07",
            "/list/00",
            "/list/+1",
            "/list/-",
            "/list/2",
            "/list/3",
            "/missing",
            "/a/b/1/c/d",
        ] {
            assert_eq!(JsonPointer::from(p).resolve(&doc), doc.pointer(p), "{p}");
        }
    }

    fn event(headers: &[(&str, &str)], query: &str, body: Option<serde_json::Value>) -> Event {
        Event {
            ts_ms: 0,
            method: "POST".into(),
            path: "/x".into(),
            query: query.into(),
            client_ip: "198.51.100.9".parse().unwrap(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            body,
            label: None,
        }
    }

    /// An identity read from `source` as `identities` reads one.
    fn read_source(source: &Source, ev: &Event, ip: IpAddr) -> Option<String> {
        kept(&source_text(kind::USER, source, ev, ip)?).map(str::to_string)
    }

    fn check_source(src: &str, ev: &Event, expect: Option<&str>) {
        let source: Source = src.parse().unwrap();
        assert_eq!(read_source(&source, ev, ev.client_ip).as_deref(), expect, "{src}");
    }

    #[test]
    fn sources_read_their_values() {
        let ev = event(
            &[("x-user-id", "u1"), ("cookie", "a=1; sid=s-9;b=2"), ("x-empty", "  ")],
            "uid=q%201&x=2",
            Some(serde_json::json!({"campaign_id": "c-1", "amount": 10.5, "nested": {"id": 7}})),
        );
        check_source("header:X-User-Id", &ev, Some("u1"));
        check_source("header:x-missing", &ev, None);
        check_source("header:x-empty", &ev, None);
        check_source("query:uid", &ev, Some("q 1"));
        check_source("query:nope", &ev, None);
        check_source("cookie:sid", &ev, Some("s-9"));
        check_source("cookie:b", &ev, Some("2"));
        check_source("json:/campaign_id", &ev, Some("c-1"));
        check_source("json:/amount", &ev, Some("10.5"));
        check_source("json:/nested/id", &ev, Some("7"));
        check_source("json:/nested", &ev, None);
        check_source("ip", &ev, Some("198.51.100.9"));
    }

    #[test]
    fn bad_sources_are_explained() {
        for (src, needle) in [
            ("header", "must be"),
            ("header:", "names nothing"),
            ("json:campaign", "must start with `/`"),
            ("body:x", "unknown identity source kind `body`"),
            ("header:x user", "not a valid HTTP header name"),
        ] {
            let err = src.parse::<Source>().unwrap_err();
            assert!(err.contains(needle), "{src}: {err}");
        }
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(400);
        let ev = event(&[("x-user-id", &long)], "", None);
        let v = read_source(
            &Source::Header(http::HeaderName::from_static("x-user-id")),
            &ev,
            ev.client_ip,
        )
        .unwrap();
        assert!(v.len() <= MAX_IDENTITY_LEN && v.chars().all(|c| c == 'é'));
    }

    fn check_ip(peer: &str, xff: Option<&str>, expect: &str) {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()];
        assert_eq!(
            client_ip(peer.parse().unwrap(), xff, &trusted),
            expect.parse::<IpAddr>().unwrap(),
            "{peer} {xff:?}"
        );
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_peers() {
        check_ip("203.0.113.5", Some("1.2.3.4"), "203.0.113.5");
        check_ip("127.0.0.1", Some("1.2.3.4"), "1.2.3.4");
        check_ip("127.0.0.1", None, "127.0.0.1");
        check_ip("127.0.0.1", Some("6.6.6.6, 1.2.3.4, 10.1.1.1"), "1.2.3.4");
        check_ip("127.0.0.1", Some("10.2.2.2, 10.1.1.1"), "10.2.2.2");
        check_ip("127.0.0.1", Some("garbage, 10.1.1.1"), "10.1.1.1");
        check_ip("127.0.0.1", Some(" 2001:db8::1 "), "2001:db8::1");
    }

    #[test]
    fn subnets_are_24_and_64() {
        assert_eq!(subnet_of("203.0.113.77".parse().unwrap()).to_string(), "203.0.113.0/24");
        assert_eq!(
            subnet_of("2001:db8:1:2:3::9".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn ambiguous_identities() {
        let spec = IdentitySpec {
            device: Some(Source::Header(http::HeaderName::from_static("x-device-id"))),
            inviter: Some(Source::Query("inviter".into())),
            phone: Some(Source::Cookie("ph".into())),
            campaign: Some(Source::Json("/campaign_id".into())),
            ..IdentitySpec::default()
        };
        let check = |headers: &[(&str, &[u8])], query: &str, expect: Option<&str>| {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            let got = checked_headers(&spec, &map, query).err().map(|a| match a {
                Ambiguity::Repeated(s) => format!("repeated {s}"),
                Ambiguity::NotUtf8(s) => format!("not utf-8 {s}"),
            });
            assert_eq!(got.as_deref(), expect, "{headers:?} {query}");
        };
        check(&[("x-device-id", b"d1")], "inviter=a&x=1&x=2", None);
        check(
            &[("x-device-id", b"d1"), ("x-device-id", b"d2")],
            "",
            Some("repeated header:x-device-id"),
        );
        check(&[("x-device-id", b"d\xff")], "", Some("not utf-8 header:x-device-id"));
        check(&[("x-device-id", "设备".as_bytes())], "", None);
        check(&[], "inviter=a&inviter=a", Some("repeated query:inviter"));
        check(&[], "inviter=a&inviter2=b", None);
        check(&[("cookie", b"ph=1; sid=2")], "", None);
        check(&[("cookie", b"ph=1;ph=2")], "", Some("repeated cookie:ph"));
        check(
            &[("cookie", b"ph=1"), ("cookie", b" ph=2")],
            "",
            Some("repeated cookie:ph"),
        );
        check(&[("cookie", b"xph=1; php=2")], "", None);
        check(&[("accept", b"a"), ("accept", b"b")], "", None);
    }
}
