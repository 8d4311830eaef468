//! The event record of DESIGN.md: one request as the pipeline sees it, live or replayed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One request. Header names are lower case; `body` is the parsed JSON body, a string
/// when the body is not JSON, or absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch: the pipeline's only clock.
    pub ts_ms: u64,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: String,
    /// The socket peer (extract resolves X-Forwarded-For from it).
    pub client_ip: IpAddr,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Ground truth for offline evaluation; never read by scoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
}

/// Ground truth attached to simulated or reviewed traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub fraud: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Event {
    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let line = r#"{"ts_ms": 1762819200123, "method": "POST", "path": "/api/coupon/claim",
 "query": "", "client_ip": "203.0.113.7",
 "headers": {"x-request-id": "r-1", "x-user-id": "u123", "x-device-id": "d456",
             "user-agent": "Mozilla/5.0 ... MicroMessenger/8.0.47"},
 "body": {"campaign_id": "c-1111", "coupon_id": "new-user-50"},
 "label": {"fraud": true, "kind": "device_farm"}}"#;
        let ev: Event = serde_json::from_str(line).expect("contract example parses");
        assert_eq!(ev.ts_ms, 1762819200123);
        assert_eq!(ev.header("x-device-id"), Some("d456"));
        assert_eq!(
            ev.body
                .as_ref()
                .and_then(|b| b.get("campaign_id"))
                .and_then(|v| v.as_str()),
            Some("c-1111")
        );
        assert_eq!(ev.label.as_ref().map(|l| l.fraud), Some(true));
        let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(back, ev);
    }
}
