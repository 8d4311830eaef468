//! Measurements and the report: latency histograms (HDR, microseconds, 3 significant
//! digits), status codes, errors by kind; rendered as text or JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::schedule::Phase;

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The TCP connection or HTTP handshake could not be made.
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The server closed the connection before answering.
    Closed,
    /// The response body could not be read.
    Body,
    /// Any other HTTP-level failure.
    Http,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Body => "body",
            ErrorKind::Http => "http",
        }
    }
}

/// Highest latency recorded exactly (60 s, in µs); above is clamped.
const MAX_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// What one worker (or one phase) measured. Merged at the end, so workers never share
/// a lock.
#[derive(Debug, Clone)]
pub struct Tally {
    /// From the intended send time (open loop) or the actual send (closed loop).
    pub latency: Histogram<u64>,
    /// From the actual send: what the server took, without the generator's queueing.
    pub service: Histogram<u64>,
    pub status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Requests sent more than 1 ms after their intended time: the generator or its
    /// connections could not keep up (their latency still counts from the intended time).
    pub late: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: histogram(),
            service: histogram(),
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            late: 0,
        }
    }
}

impl Tally {
    pub fn answered(&mut self, status: u16, latency_us: u64, service_us: u64) {
        *self.status.entry(status).or_default() += 1;
        self.record(latency_us, service_us);
    }

    /// A failed request still has a latency: the time until it failed.
    pub fn failed(&mut self, kind: ErrorKind, latency_us: u64, service_us: u64) {
        *self.errors.entry(kind).or_default() += 1;
        self.record(latency_us, service_us);
    }

    fn record(&mut self, latency_us: u64, service_us: u64) {
        self.latency.saturating_record(latency_us.clamp(1, MAX_US));
        self.service.saturating_record(service_us.clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        for (k, v) in &other.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        self.late += other.late;
    }

    pub fn requests(&self) -> u64 {
        self.status.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One phase of a fixed-rate run (the spike is one).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub seconds: f64,
    pub offered_rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Percentiles,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "fixed" or "max".
    pub mode: &'static str,
    pub target: String,
    pub connections: usize,
    pub seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors_total: u64,
    /// Answers (any status) per second of wall time.
    pub throughput_rps: f64,
    pub offered_rps: Option<f64>,
    pub latency_us: Percentiles,
    pub service_us: Percentiles,
    pub status: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub late_sends: u64,
    pub phases: Vec<PhaseReport>,
}

impl Report {
    pub fn new(
        mode: &'static str,
        target: String,
        connections: usize,
        seconds: f64,
        all: &Tally,
        phases: &[(Phase, Tally)],
        offered_rps: Option<f64>,
    ) -> Report {
        let answered: u64 = all.status.values().sum();
        let ok = all
            .status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let errors_total = all.errors.values().sum();
        Report {
            mode,
            target,
            connections,
            seconds: (seconds * 1000.0).round() / 1000.0,
            requests: all.requests(),
            ok,
            errors_total,
            throughput_rps: if seconds > 0.0 {
                (answered as f64 / seconds).round()
            } else {
                0.0
            },
            offered_rps,
            latency_us: Percentiles::of(&all.latency),
            service_us: Percentiles::of(&all.service),
            status: all.status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            errors: all.errors.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect(),
            late_sends: all.late,
            phases: phases
                .iter()
                .map(|(p, t)| PhaseReport {
                    seconds: p.seconds,
                    offered_rps: p.rate,
                    requests: t.requests(),
                    errors: t.errors.values().sum(),
                    latency_us: Percentiles::of(&t.latency),
                })
                .collect(),
        }
    }

    /// A few lines for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &self.latency_us;
        s += &format!(
            "{} load on {} over {} connections, {:.1} s\n",
            self.mode, self.target, self.connections, self.seconds
        );
        if let Some(r) = self.offered_rps {
            s += &format!("offered    {r:.0} req/s\n");
        }
        s += &format!(
            "throughput {:.0} req/s ({} requests, {} 2xx, {} errors, {} sent late)\n",
            self.throughput_rps, self.requests, self.ok, self.errors_total, self.late_sends
        );
        s += &format!(
            "latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        s += &format!("status     {:?}\n", self.status);
        if !self.errors.is_empty() {
            s += &format!("errors     {:?}\n", self.errors);
        }
        for (i, p) in self.phases.iter().enumerate().filter(|_| self.phases.len() > 1) {
            s += &format!(
                "phase {i}    {:.1} s at {:.0} req/s: {} requests, {} errors, p50 {:.3} ms p99 {:.3} ms max {:.3} ms\n",
                p.seconds,
                p.offered_rps,
                p.requests,
                p.errors,
                ms(p.latency_us.p50),
                ms(p.latency_us.p99),
                ms(p.latency_us.max)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut t = Tally::default();
        for us in 1..=10_000u64 {
            t.answered(200, us, us);
        }
        t.failed(ErrorKind::Timeout, 5_000_000, 5_000_000);
        let mut other = Tally::default();
        other.answered(503, 10, 10);
        t.merge(&other);
        let r = Report::new("max", "t".into(), 1, 2.0, &t, &[], None);
        assert_eq!(r.requests, 10_002);
        assert_eq!(r.ok, 10_000);
        assert_eq!(r.errors_total, 1);
        assert_eq!(r.status["503"], 1);
        assert_eq!(r.errors["timeout"], 1);
        // 10,001 answers (the timeout is not one) in 2 s.
        assert_eq!(r.throughput_rps, 5_001.0);
        // Three significant digits.
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.002 + 1.0;
        assert!(near(r.latency_us.p50, 5_000), "{:?}", r.latency_us);
        assert!(near(r.latency_us.p90, 9_000), "{:?}", r.latency_us);
        assert!(near(r.latency_us.p99, 9_900), "{:?}", r.latency_us);
        assert!(near(r.latency_us.p999, 9_990), "{:?}", r.latency_us);
        assert!(near(r.latency_us.max, 5_000_000), "{:?}", r.latency_us);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency_us"]["p99"], r.latency_us.p99);
    }
}
