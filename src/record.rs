//! The decision record of DESIGN.md: one per scored request, in the audit log and in
//! replay output.

use std::net::IpAddr;

use serde::Serialize;

use crate::decide::Decision;
use crate::event::{Event, Label};
use crate::extract::Identities;
use crate::ip_text::IpText;
use crate::score::Reason;

#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub ts_ms: u64,
    pub request_id: &'a str,
    pub route: &'a str,
    pub action: &'static str,
    pub decision: Decision,
    /// Rounded to three decimals, as in the `x-risk-score` header.
    pub score: f64,
    pub reasons: &'a [Reason],
    pub identities: &'a Identities,
    pub mode: &'static str,
    /// The classifier's calibrated score (three decimals), when a model scored the
    /// request, enforced or in shadow; the score above already includes it when enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a Label>,
    /// The whole event, when the audit log captures traffic for later replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a Event>,
}

impl DecisionRecord<'_> {
    /// Appends the record as one JSON object, byte for byte what `serde_json` writes for
    /// it (the derive above stays the reference, tested against): written by hand because
    /// it is on every request's path, where serde's per-byte string escaping and the
    /// formatting machinery for the IP cost more than the rest of the record.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts_ms\":");
        number(out, self.ts_ms);
        field(out, b",\"request_id\":", self.request_id);
        field(out, b",\"route\":", self.route);
        quoted(out, b",\"action\":", self.action);
        quoted(out, b",\"decision\":", self.decision.as_str());
        out.extend_from_slice(b",\"score\":");
        number(out, self.score);
        out.extend_from_slice(b",\"reasons\":[");
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, r);
        }
        out.extend_from_slice(b"],\"identities\":");
        identities(out, self.identities);
        quoted(out, b",\"mode\":", self.mode);
        if let Some(m) = self.model_score {
            out.extend_from_slice(b",\"model_score\":");
            number(out, m);
        }
        if let Some(label) = self.label {
            out.extend_from_slice(b",\"label\":{\"fraud\":");
            out.extend_from_slice(if label.fraud { b"true" } else { b"false" });
            optional(out, b",\"kind\":", &label.kind);
            optional(out, b",\"actor\":", &label.actor);
            out.push(b'}');
        }
        if let Some(event) = self.event {
            out.extend_from_slice(b",\"event\":");
            // Captured traffic only: the rare path keeps serde.
            let _ = serde_json::to_writer(&mut *out, event);
        }
        out.push(b'}');
    }
}

fn identities(out: &mut Vec<u8>, ids: &Identities) {
    // `ip` is always there: the fields before it open the object themselves.
    let mut open = b'{';
    for (key, v) in [(&b"\"user\":"[..], &ids.user), (b"\"device\":", &ids.device)] {
        if let Some(v) = v {
            out.push(open);
            field(out, key, v);
            open = b',';
        }
    }
    out.push(open);
    out.extend_from_slice(b"\"ip\":");
    ip(out, ids.ip);
    optional(out, b",\"phone\":", &ids.phone);
    optional(out, b",\"campaign\":", &ids.campaign);
    optional(out, b",\"inviter\":", &ids.inviter);
    if let Some(amount) = ids.amount {
        out.extend_from_slice(b",\"amount\":");
        number(out, amount);
    }
    optional(out, b",\"pay_account\":", &ids.pay_account);
    optional(out, b",\"address\":", &ids.address);
    out.push(b'}');
}

/// `key` (`,"name":`, written as given) and the value as a JSON string.
fn field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    string(out, value);
}

/// `field`, when there is a value.
fn optional(out: &mut Vec<u8>, key: &[u8], value: &Option<String>) {
    if let Some(v) = value {
        field(out, key, v);
    }
}

/// `key` and one of the gateway's own names (an action, a decision, a mode: lower-case
/// ASCII words, as their `'static` type says), quoted without a scan for escapes.
fn quoted(out: &mut Vec<u8>, key: &[u8], word: &'static str) {
    debug_assert!(!needs_escape(word.as_bytes()), "{word}");
    out.extend_from_slice(key);
    out.push(b'"');
    out.extend_from_slice(word.as_bytes());
    out.push(b'"');
}

/// A JSON string: copied whole when nothing in it needs escaping (the usual case),
/// else escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs any byte of `s` escaped: a control character, `"` or `\`. Eight
/// bytes at a time (the strings here are short: a per-byte loop cost more than the copy).
fn needs_escape(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        if special_in(u64::from_le_bytes(chunk.try_into().unwrap_or_default())) {
            return true;
        }
    }
    // The tail, padded with a byte that needs no escape.
    let tail = chunks.remainder();
    let mut padded = [b'a'; 8];
    padded[..tail.len()].copy_from_slice(tail);
    special_in(u64::from_le_bytes(padded))
}

/// Whether any byte of `w` is below 0x20, `"` or `\`: the exact "has a byte less than
/// n" and "has a zero byte" tests of Bit Twiddling Hacks (bytes of 0x80 and above,
/// UTF-8's, never match).
fn special_in(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
    (control | zero_in(quote) | zero_in(backslash)) & HIGH != 0
}

/// A number as serde_json writes it (a float that is not finite as `null`).
fn number<T: Serialize>(out: &mut Vec<u8>, n: T) {
    let _ = serde_json::to_writer(&mut *out, &n);
}

/// An IP address as a JSON string (no character in one needs escaping).
fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    out.extend_from_slice(IpText::of(ip).as_str().as_bytes());
    out.push(b'"');
}

/// The score as the contract prints it: three decimals.
pub fn round_score(score: f64) -> f64 {
    (score * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ip: &str, user: Option<&str>, amount: Option<f64>) -> Identities {
        let ip: IpAddr = ip.parse().unwrap();
        Identities {
            user: user.map(str::to_string),
            device: Some("d-1".into()),
            ip,
            subnet: ipnet::IpNet::from(ip),
            phone: None,
            campaign: Some("c-\u{4e2d}".into()),
            inviter: user.map(|u| format!("{u}\\inv")),
            amount,
            pay_account: Some("p".into()),
            address: None,
            user_agent: Some("not written".into()),
            app_version: None,
            wifi: true,
        }
    }

    #[test]
    fn the_hand_written_record_is_what_serde_writes() {
        let event: Event = serde_json::from_str(
            r#"{"ts_ms":5,"method":"POST","path":"/c","client_ip":"10.0.0.1","headers":{"x":"\"y\""},"body":{"a":[1,2.5]}}"#,
        )
        .unwrap();
        let labels = [
            None,
            Some(Label {
                fraud: true,
                kind: Some("device_farm".into()),
                actor: Some("crew \"7\"".into()),
            }),
            Some(Label {
                fraud: false,
                kind: None,
                actor: None,
            }),
        ];
        let reasons: Vec<Reason> = vec!["rule_a".into(), "model:users_per_device_24h".into(), "tab\there".into()];
        let mut cases = 0;
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.1.20.199",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            for user in [None, Some("o6_\u{1F600}\"quoted\""), Some("ctl\u{1}\u{1f}\u{7f}")] {
                for amount in [None, Some(0.0), Some(88.88), Some(f64::NAN)] {
                    let identities = ids(ip, user, amount);
                    for (i, label) in labels.iter().enumerate() {
                        let record = DecisionRecord {
                            ts_ms: 1_762_819_200_007 + i as u64,
                            request_id: if i == 1 { "req\\1" } else { "sim-11-0" },
                            route: "coupon_claim",
                            action: "coupon",
                            decision: Decision::ALL[i],
                            score: [0.0, 0.35, 1.0][i],
                            reasons: &reasons[..i * 3 / 2],
                            identities: &identities,
                            mode: "enforce",
                            model_score: [None, Some(0.975), Some(f64::INFINITY)][i],
                            label: label.as_ref(),
                            event: (i == 2).then_some(&event),
                        };
                        let mut mine = Vec::new();
                        record.write_json(&mut mine);
                        let serde = serde_json::to_vec(&record).unwrap();
                        assert_eq!(String::from_utf8(mine).unwrap(), String::from_utf8(serde).unwrap());
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 3 * 4 * 3);
    }

    #[test]
    fn the_escape_scan_finds_every_byte_json_escapes_at_every_position() {
        let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    // A UTF-8-like neighbourhood: high bytes around the probe.
                    let mut s = vec![0xC3u8; len];
                    s[at] = b;
                    assert_eq!(needs_escape(&s), naive(&s), "byte {b:#x} at {at} of {len}");
                    s.iter_mut().for_each(|c| *c = b'z');
                    s[at] = b;
                    assert_eq!(needs_escape(&s), naive(&s), "byte {b:#x} at {at} of {len}");
                }
            }
            assert!(!needs_escape(&vec![b'~'; len]));
        }
    }
}
