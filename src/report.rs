//! Report: tallies of decisions by route, reason and label, and the detection figures
//! (recall of "stopped" per attack kind, false-positive rate per legitimate segment)
//! that replay, the backtest diff and the demo print.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::decide::Decision;
use crate::event::Label;
use crate::score::Reason;

/// Counts of one group of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub allow: u64,
    pub review: u64,
    pub challenge: u64,
    pub block: u64,
}

impl Counts {
    pub fn add(&mut self, d: Decision) {
        self.requests += 1;
        match d {
            Decision::Allow => self.allow += 1,
            Decision::Review => self.review += 1,
            Decision::Challenge => self.challenge += 1,
            Decision::Block => self.block += 1,
        }
    }

    /// Challenged or blocked: what the gateway stopped.
    pub fn stopped(&self) -> u64 {
        self.challenge + self.block
    }

    /// Stopped share of requests, in [0, 1] (0 for no requests).
    pub fn stopped_rate(&self) -> f64 {
        ratio(self.stopped(), self.requests)
    }
}

/// Everything replay knows about its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub events: u64,
    pub bad_lines: u64,
    pub by_route: BTreeMap<String, Counts>,
    /// Requests each reason code appeared on.
    pub by_reason: BTreeMap<String, u64>,
    /// Per label kind (attack kind or legitimate segment); `fraud` tells which.
    pub by_kind: BTreeMap<String, KindCounts>,
    pub confusion: Confusion,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    pub fraud: bool,
    #[serde(flatten)]
    pub counts: Counts,
}

/// "Stopped" (challenge or block) against the label, over labelled requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub true_positive: u64,
    pub false_negative: u64,
    pub false_positive: u64,
    pub true_negative: u64,
}

impl Confusion {
    pub fn precision(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_positive)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_negative)
    }
    pub fn false_positive_rate(&self) -> f64 {
        ratio(self.false_positive, self.false_positive + self.true_negative)
    }
    pub fn labelled(&self) -> u64 {
        self.true_positive + self.false_negative + self.false_positive + self.true_negative
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Tally {
    /// Counts one decision record. `scored` is false for requests the gateway never
    /// scores (browsing, unmatched paths): they are counted per route but left out of
    /// the detection figures, which they could only dilute.
    pub fn add(&mut self, route: &str, decision: Decision, reasons: &[Reason], label: Option<&Label>, scored: bool) {
        self.events += 1;
        self.by_route.entry(route.to_string()).or_default().add(decision);
        for r in reasons {
            match self.by_reason.get_mut(&**r) {
                Some(n) => *n += 1,
                None => {
                    self.by_reason.insert(r.to_string(), 1);
                }
            }
        }
        if let (Some(label), true) = (label, scored) {
            let kind = label
                .kind
                .clone()
                .unwrap_or_else(|| if label.fraud { "fraud" } else { "legit" }.to_string());
            let entry = self.by_kind.entry(kind).or_default();
            entry.fraud = label.fraud;
            entry.counts.add(decision);
            let c = &mut self.confusion;
            match (label.fraud, decision.stops()) {
                (true, true) => c.true_positive += 1,
                (true, false) => c.false_negative += 1,
                (false, true) => c.false_positive += 1,
                (false, false) => c.true_negative += 1,
            }
        }
    }

    /// The summary as people read it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} events, {} bad lines skipped", self.events, self.bad_lines);
        let _ = writeln!(
            s,
            "\n{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "route", "requests", "allow", "review", "challenge", "block"
        );
        for (route, c) in &self.by_route {
            let _ = writeln!(
                s,
                "{route:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
                c.requests, c.allow, c.review, c.challenge, c.block
            );
        }
        if !self.by_reason.is_empty() {
            let _ = writeln!(s, "\n{:<40} {:>9}", "reason", "requests");
            let mut reasons: Vec<_> = self.by_reason.iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (reason, n) in reasons {
                let _ = writeln!(s, "{reason:<40} {n:>9}");
            }
        }
        if self.confusion.labelled() > 0 {
            s.push('\n');
            s.push_str(&self.render_kinds());
            let c = &self.confusion;
            let _ = writeln!(
                s,
                "\nstopped = challenge + block.  TP {}  FN {}  FP {}  TN {}\nprecision {:.4}  recall {:.4}  false-positive rate {:.4}%",
                c.true_positive,
                c.false_negative,
                c.false_positive,
                c.true_negative,
                c.precision(),
                c.recall(),
                c.false_positive_rate() * 100.0
            );
        }
        s
    }

    /// The per-kind table: attacks with the share stopped, legitimate segments with the
    /// share wrongly stopped.
    pub fn render_kinds(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>10}   {:<22} {:>9} {:>16}",
            "attack kind", "requests", "stopped", "legitimate segment", "requests", "wrongly stopped"
        );
        let attacks: Vec<_> = self.by_kind.iter().filter(|(_, k)| k.fraud).collect();
        let legit: Vec<_> = self.by_kind.iter().filter(|(_, k)| !k.fraud).collect();
        for i in 0..attacks.len().max(legit.len()) {
            let left = attacks
                .get(i)
                .map(|(k, c)| {
                    format!(
                        "{k:<22} {:>9} {:>9.1}%",
                        c.counts.requests,
                        c.counts.stopped_rate() * 100.0
                    )
                })
                .unwrap_or_else(|| format!("{:<22} {:>9} {:>10}", "", "", ""));
            let right = legit
                .get(i)
                .map(|(k, c)| {
                    format!(
                        "{k:<22} {:>9} {:>15.2}%",
                        c.counts.requests,
                        c.counts.stopped_rate() * 100.0
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(s, "{left}   {right}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(fraud: bool, kind: &str) -> Label {
        Label {
            fraud,
            kind: Some(kind.into()),
            actor: None,
        }
    }

    #[test]
    fn confusion_and_rates_by_hand() {
        let mut t = Tally::default();
        let farm = label(true, "device_farm");
        let normal = label(false, "normal");
        // 4 farm requests: 3 stopped (one challenge, two blocks), 1 reviewed only.
        for d in [Decision::Block, Decision::Block, Decision::Challenge, Decision::Review] {
            t.add("coupon_claim", d, &["device_many_accounts".into()], Some(&farm), true);
        }
        // 10 normal requests: 1 wrongly blocked.
        for i in 0..10 {
            let d = if i == 0 { Decision::Block } else { Decision::Allow };
            t.add("checkin", d, &[], Some(&normal), true);
        }
        t.add("checkin", Decision::Allow, &[], None, true);
        t.add("item_view", Decision::Allow, &[], Some(&farm), false);
        assert_eq!(t.events, 16);
        assert_eq!(
            t.confusion,
            Confusion {
                true_positive: 3,
                false_negative: 1,
                false_positive: 1,
                true_negative: 9
            }
        );
        assert_eq!(t.confusion.precision(), 0.75);
        assert_eq!(t.confusion.recall(), 0.75);
        assert_eq!(t.confusion.false_positive_rate(), 0.1);
        assert_eq!(t.by_kind["device_farm"].counts.stopped_rate(), 0.75);
        assert_eq!(t.by_route["checkin"].requests, 11);
        assert_eq!(t.by_route["item_view"].requests, 1);
        assert_eq!(t.by_reason["device_many_accounts"], 4);
        let text = t.render();
        assert!(text.contains("device_farm"), "{text}");
        assert!(text.contains("75.0%"), "{text}");
        assert!(text.contains("10.00%"), "{text}");
    }

    #[test]
    fn empty_groups_have_zero_rates() {
        let c = Confusion::default();
        assert_eq!((c.precision(), c.recall(), c.false_positive_rate()), (0.0, 0.0, 0.0));
        assert_eq!(Counts::default().stopped_rate(), 0.0);
    }
}
