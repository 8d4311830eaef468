//! Identity extraction: identity sources as written in config, header values, the query,
//! the JSON body (pointers), cookies and X-Forwarded-For chains through trusted proxies.
//! The input is split on 0xFF bytes into: source spec, header value, query, body, XFF.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use riskgate::event::Event;
use riskgate::extract::{self, IdentitySpec, Source};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let mut next = || parts.next().unwrap_or_default();
    let (spec_text, header, query, body, xff) = (next(), next(), next(), next(), next());
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // A source written by a user: parsed, and when valid used for the device identity.
    let custom = std::str::from_utf8(spec_text).ok().and_then(|s| s.parse::<Source>().ok());
    let spec = IdentitySpec {
        user: Some(Source::Header(http::HeaderName::from_static("x-user-id"))),
        device: custom.or(Some(Source::Header(http::HeaderName::from_static("x-device-id")))),
        phone: Some(Source::Cookie("phone".into())),
        campaign: Some(Source::Json("/campaign_id".into())),
        inviter: Some(Source::Json("/inviter/0/id".into())),
        amount: Some(Source::Json("/amount".into())),
        pay_account: Some(Source::Query("pay".into())),
        address: Some(Source::Query("addr".into())),
        user_agent: Some(Source::Header(http::HeaderName::from_static("user-agent"))),
        app_version: Some(Source::Ip),
    };
    let mut headers = BTreeMap::new();
    for name in ["x-user-id", "x-device-id", "user-agent", "cookie", "x-forwarded-for"] {
        let value = if name == "x-forwarded-for" { xff } else { header };
        headers.insert(name.to_string(), lossy(value));
    }
    let event = Event {
        ts_ms: 0,
        method: "POST".into(),
        path: "/x".into(),
        query: lossy(query),
        client_ip: "127.0.0.1".parse().unwrap(),
        headers,
        body: serde_json::from_slice(body).ok(),
        label: None,
    };
    let trusted = ["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    let ids = extract::identities(&spec, &event, &trusted);
    for v in [&ids.user, &ids.device, &ids.phone, &ids.campaign, &ids.inviter].into_iter().flatten() {
        assert!(v.len() <= 256 && !v.is_empty());
    }
    assert!(ids.amount.is_none_or(f64::is_finite));
    assert!(ids.subnet.contains(&ids.ip));

    // The proxy's check for repeated or non-UTF-8 identity values, on raw header bytes.
    let mut map = http::HeaderMap::new();
    for chunk in header.split(|&b| b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(chunk) {
            map.append("x-device-id", v.clone());
            map.append(http::header::COOKIE, v);
        }
    }
    let _ = extract::ambiguity(&spec, &map, &event.query);
});
