//! Metrics: the Prometheus series riskgate exports. Label values come only from
//! config-bounded sets (route, decision, rule, limit, list names) and fixed enums;
//! never an account, device, phone or IP.

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::decide::Decision;
use crate::pipeline::Assessment;
use crate::runtime::Runtime;
use crate::score::Hit;
use crate::state::TableStats;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub decision_seconds: HistogramVec,
    /// Scores of scored requests, by route (buckets of 0.1: the dashboard's distribution).
    pub scores: HistogramVec,
    pub upstream_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub rule_hits: IntCounterVec,
    pub limit_hits: IntCounterVec,
    pub list_hits: IntCounterVec,
    pub rejected: IntCounterVec,
    pub state_errors: IntCounter,
    pub state_degraded: IntCounterVec,
    state_backend_up: IntGauge,
    state_backend_calls: IntCounterVec,
    pub tracked_keys: IntGaugeVec,
    pub state_bytes: IntGaugeVec,
    pub state_budget_bytes: IntGauge,
    evictions: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub inflight: IntGauge,
    audit_records: IntCounterVec,
    audit_errors: IntCounter,
    audit_flushes: IntCounter,
    audit_queued: IntGauge,
    /// Admin calls refused for a missing or wrong bearer token.
    pub admin_denied: IntCounter,
    /// 1 while a trained model is loaded (`set_model`).
    pub model_loaded: IntGauge,
    /// 1 when the config asks for a model; the alert fires only where one is missing.
    pub model_required: IntGauge,
    /// Model file loads at start and on reload, by outcome (success, failure).
    pub model_reloads: IntCounterVec,
    /// 1 for the loaded model's version (its content hash): one series at a time.
    model_info: IntGaugeVec,
    /// Calibrated model scores by route and mode (enforce, shadow): how a shadowed
    /// model would act, before it is promoted.
    pub model_scores: HistogramVec,
    /// Stopped requests of the rank-th top offender per identity kind (no identity in
    /// the labels: kind × rank 1..=TOP_RANKS series at most).
    top_offenders: IntGaugeVec,
    /// The per-request series of the running config, resolved once per (re)load so
    /// that counting a request looks up no label values.
    handles: ArcSwap<Handles>,
}

/// Series handles of one config, by index; each keeps its label value, so that a
/// request still running on an older config after a reload is never counted under
/// another name (it falls back to a label lookup).
#[derive(Default)]
struct Handles {
    routes: Vec<RouteHandles>,
    /// By rule index: [enforce, shadow].
    rules: Vec<(String, [Lazy<IntCounter>; 2])>,
    lists: Vec<(String, IntCounter)>,
}

struct RouteHandles {
    name: String,
    /// By `Decision::ALL` order.
    requests: [IntCounter; 4],
    decision_seconds: Lazy<Histogram>,
    scores: Lazy<Histogram>,
    upstream_seconds: Lazy<Histogram>,
    /// The route's model mode when the handles were made, and its score series.
    model_mode: &'static str,
    model_scores: Lazy<Histogram>,
    /// By limit index: (name, [enforce, shadow]).
    limits: Vec<(String, [Lazy<IntCounter>; 2])>,
}

/// A series created on its first use, as a label lookup would (so the exposition
/// shows the same series as before any request).
type Lazy<T> = std::sync::OnceLock<T>;

/// Why a request is refused before scoring (`riskgate_rejected_requests_total{reason}`).
pub const REJECT_REASONS: [&str; 5] = ["body_too_large", "unmatched", "bad_request", "bad_json", "bad_identity"];

/// Ranks exported in `riskgate_top_offender_stopped` (the full list is on /top).
pub const TOP_RANKS: usize = 10;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Names and help texts are literals, so registration cannot fail at run time; the
    // `expect`s above only guard against a typo in this function.
    pub fn new() -> Self {
        let r = Registry::new();
        let decision_buckets = vec![
            0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        ];
        let upstream_buckets = vec![
            0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Metrics {
            requests: counter(
                &r,
                "riskgate_requests_total",
                "Requests by route and decision (unmatched and rejected included).",
                &["route", "decision"],
            ),
            decision_seconds: histogram(
                &r,
                "riskgate_decision_duration_seconds",
                "Time the gateway spent deciding (extract, signals, score, decide), excluding the upstream.",
                &["route"],
                decision_buckets,
            ),
            scores: histogram(
                &r,
                "riskgate_score",
                "Risk scores of scored requests (0 to 1), by route.",
                &["route"],
                vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
            ),
            upstream_seconds: histogram(
                &r,
                "riskgate_upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response headers.",
                &["route"],
                upstream_buckets,
            ),
            upstream_errors: counter(
                &r,
                "riskgate_upstream_errors_total",
                "Upstream failures by kind: connect (refused, 502), timeout (504), other (502).",
                &["route", "kind"],
            ),
            rule_hits: counter(
                &r,
                "riskgate_rule_hits_total",
                "Requests a rule matched; mode is enforce or shadow.",
                &["rule", "mode"],
            ),
            limit_hits: counter(
                &r,
                "riskgate_limit_hits_total",
                "Requests over a rate limit; mode is enforce or shadow.",
                &["route", "limit", "mode"],
            ),
            list_hits: counter(
                &r,
                "riskgate_list_hits_total",
                "Requests that matched a block or allow list.",
                &["list"],
            ),
            rejected: counter(
                &r,
                "riskgate_rejected_requests_total",
                "Requests refused before scoring, by reason (body_too_large, unmatched, bad_request, bad_json, bad_identity).",
                &["reason"],
            ),
            state_errors: plain_counter(
                &r,
                "riskgate_state_errors_total",
                "Requests whose state call failed or timed out; the route's degradation policy decided them.",
            ),
            state_degraded: counter(
                &r,
                "riskgate_state_degraded_total",
                "Requests decided by the route's degradation policy (allow, deny, local) because the state backend failed or was too slow.",
                &["route", "policy"],
            ),
            state_backend_up: gauge(
                &r,
                "riskgate_state_backend_up",
                "1 while the state backend answers (always 1 for the in-memory backend), 0 after a failed or timed-out call.",
            ),
            state_backend_calls: counter(
                &r,
                "riskgate_state_backend_calls_total",
                "Calls to a remote state backend by outcome: ok, error, timeout, skipped (not tried: a call had just failed).",
                &["outcome"],
            ),
            tracked_keys: gauge_vec(
                &r,
                "riskgate_state_tracked_keys",
                "Keys held by the state backend, by table.",
                &["table"],
            ),
            state_bytes: gauge_vec(
                &r,
                "riskgate_state_memory_bytes",
                "Bytes used by the state backend, by table.",
                &["table"],
            ),
            state_budget_bytes: gauge(
                &r,
                "riskgate_state_memory_budget_bytes",
                "The configured state memory budget.",
            ),
            evictions: counter(
                &r,
                "riskgate_state_evictions_total",
                "Keys evicted to stay within the memory budget or TTL, by table.",
                &["table"],
            ),
            reloads: counter(
                &r,
                "riskgate_config_reloads_total",
                "Config reloads by outcome (success, failure).",
                &["outcome"],
            ),
            config_last_reload_success: gauge(
                &r,
                "riskgate_config_last_reload_successful",
                "1 when the last reload attempt succeeded, 0 when the running config is older than the file.",
            ),
            inflight: gauge(&r, "riskgate_inflight_requests", "Requests being handled right now."),
            audit_records: counter(
                &r,
                "riskgate_audit_records_total",
                "Decision records by outcome: written, or dropped (queue full or disk failing).",
                &["outcome"],
            ),
            audit_errors: plain_counter(&r, "riskgate_audit_errors_total", "Audit log open, write and rotation failures."),
            audit_flushes: plain_counter(
                &r,
                "riskgate_audit_flushes_total",
                "Audit log flushes that handed records to the OS; under load far fewer than records.",
            ),
            audit_queued: gauge(
                &r,
                "riskgate_audit_queue_records",
                "Decision records waiting for the audit writer.",
            ),
            admin_denied: plain_counter(&r, "riskgate_admin_unauthorized_total", "Privileged admin calls refused for a missing or wrong bearer token."),
            model_loaded: gauge(
                &r,
                "riskgate_model_loaded",
                "1 while a trained model is loaded, else 0.",
            ),
            model_required: gauge(
                &r,
                "riskgate_model_required",
                "1 when the config asks for a trained model ([model] section), else 0.",
            ),
            model_reloads: counter(
                &r,
                "riskgate_model_reloads_total",
                "Model file loads at start and on reload by outcome: success, or failure (corrupt file, feature-list mismatch: the previous model keeps serving).",
                &["outcome"],
            ),
            model_info: gauge_vec(
                &r,
                "riskgate_model_info",
                "1 for the loaded model; version is its content hash (as in the logs and check-config).",
                &["version", "kind"],
            ),
            model_scores: histogram(
                &r,
                "riskgate_model_score",
                "Calibrated model scores (0 to 1) by route and mode (enforce, or shadow: recorded, not acted on).",
                &["route", "mode"],
                vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
            ),
            top_offenders: gauge_vec(
                &r,
                "riskgate_top_offender_stopped",
                "Stopped requests of the rank-th most stopped identity of a kind over the last one to two top windows (identities on the admin /top endpoint).",
                &["kind", "rank"],
            ),
            registry: r,
            handles: ArcSwap::from_pointee(Handles::default()),
        }
    }

    /// Counts one assessed request.
    pub fn observe(&self, rt: &Runtime, a: &Assessment, seconds: f64) {
        let route = &rt.routes[a.route];
        let handles = self.handles.load();
        let resolved = handles.routes.get(a.route).filter(|h| h.name == route.name);
        match resolved {
            Some(h) => {
                h.requests[a.decision as usize].inc();
                h.decision_seconds
                    .get_or_init(|| self.decision_seconds.with_label_values(&[&route.name]))
                    .observe(seconds);
                if route.scored {
                    h.scores
                        .get_or_init(|| self.scores.with_label_values(&[&route.name]))
                        .observe(a.score.value);
                }
            }
            None => {
                self.requests
                    .with_label_values(&[&route.name, a.decision.as_str()])
                    .inc();
                self.decision_seconds.with_label_values(&[&route.name]).observe(seconds);
                if route.scored {
                    self.scores.with_label_values(&[&route.name]).observe(a.score.value);
                }
            }
        }
        if let Some(p) = a.score.model {
            let mode = route.model.as_str();
            match resolved.filter(|h| h.model_mode == mode) {
                Some(h) => h
                    .model_scores
                    .get_or_init(|| self.model_scores.with_label_values(&[&route.name, mode]))
                    .observe(p),
                None => self.model_scores.with_label_values(&[&route.name, mode]).observe(p),
            }
        }
        if a.state_error {
            self.state_errors.inc();
        }
        if let Some(policy) = a.degraded {
            self.state_degraded
                .with_label_values(&[&route.name, policy.as_str()])
                .inc();
        }
        for hit in &a.score.hits {
            match *hit {
                Hit::Rule { index, shadow } => {
                    let name = &rt.rules[index].name;
                    match handles.rules.get(index).filter(|(n, _)| n == name) {
                        Some((_, c)) => c[usize::from(shadow)]
                            .get_or_init(|| self.rule_hits.with_label_values(&[name, mode(shadow)]))
                            .inc(),
                        None => self.rule_hits.with_label_values(&[name, mode(shadow)]).inc(),
                    }
                }
                Hit::Limit { index, shadow } => {
                    let name = &route.limits[index].name;
                    match resolved.and_then(|h| h.limits.get(index)).filter(|(n, _)| n == name) {
                        Some((_, c)) => c[usize::from(shadow)]
                            .get_or_init(|| self.limit_hits.with_label_values(&[&route.name, name, mode(shadow)]))
                            .inc(),
                        None => self
                            .limit_hits
                            .with_label_values(&[&route.name, name, mode(shadow)])
                            .inc(),
                    }
                }
                Hit::List(index) => {
                    let name = &rt.lists[index].name;
                    match handles.lists.get(index).filter(|(n, _)| n == name) {
                        Some((_, c)) => c.inc(),
                        None => self.list_hits.with_label_values(&[name]).inc(),
                    }
                }
            }
        }
    }

    /// The time a route's upstream took to answer (response headers).
    pub fn observe_upstream(&self, route_name: &str, seconds: f64) {
        let handles = self.handles.load();
        match handles.routes.iter().find(|h| h.name == route_name) {
            Some(h) => h
                .upstream_seconds
                .get_or_init(|| self.upstream_seconds.with_label_values(&[route_name]))
                .observe(seconds),
            None => self.upstream_seconds.with_label_values(&[route_name]).observe(seconds),
        }
    }

    /// Pre-creates the series of a config at zero, so dashboards and alerts see them
    /// before the first hit.
    pub fn register_config(&self, rt: &Runtime) {
        self.handles.store(std::sync::Arc::new(Handles {
            routes: rt
                .routes
                .iter()
                .map(|route| RouteHandles {
                    name: route.name.clone(),
                    requests: Decision::ALL.map(|d| self.requests.with_label_values(&[&route.name, d.as_str()])),
                    decision_seconds: Lazy::new(),
                    scores: Lazy::new(),
                    upstream_seconds: Lazy::new(),
                    model_mode: route.model.as_str(),
                    model_scores: Lazy::new(),
                    limits: route
                        .limits
                        .iter()
                        .map(|l| (l.name.clone(), Default::default()))
                        .collect(),
                })
                .collect(),
            rules: rt.rules.iter().map(|r| (r.name.clone(), Default::default())).collect(),
            lists: rt
                .lists
                .iter()
                .map(|l| (l.name.clone(), self.list_hits.with_label_values(&[&l.name])))
                .collect(),
        }));
        for route in &rt.routes {
            for d in Decision::ALL {
                self.requests.with_label_values(&[&route.name, d.as_str()]);
            }
        }
        for rule in &rt.rules {
            self.rule_hits.with_label_values(&[&rule.name, mode(rule.shadow)]);
        }
        for list in &rt.lists {
            self.list_hits.with_label_values(&[&list.name]);
        }
        for route in &rt.routes {
            for limit in &route.limits {
                self.limit_hits
                    .with_label_values(&[&route.name, &limit.name, mode(limit.shadow)]);
            }
            for kind in ["connect", "timeout", "other"] {
                self.upstream_errors.with_label_values(&[&route.name, kind]);
            }
        }
        for outcome in ["success", "failure"] {
            self.reloads.with_label_values(&[outcome]);
            self.model_reloads.with_label_values(&[outcome]);
        }
        self.set_model(rt);
        for reason in REJECT_REASONS {
            self.rejected.with_label_values(&[reason]);
        }
        for route in &rt.routes {
            self.state_degraded
                .with_label_values(&[&route.name, route.on_state_error.as_str()]);
        }
    }

    /// Copies a remote state backend's call counts and health into the metrics
    /// (`None`: the in-memory backend, always up).
    pub fn update_backend(&self, health: Option<crate::state::BackendHealth>) {
        let Some(h) = health else {
            self.state_backend_up.set(1);
            return;
        };
        self.state_backend_up.set(i64::from(h.up));
        for (outcome, total) in [
            ("ok", h.ok),
            ("error", h.errors),
            ("timeout", h.timeouts),
            ("skipped", h.skipped),
        ] {
            follow(&self.state_backend_calls.with_label_values(&[outcome]), total);
        }
    }

    /// Copies the state backend's own accounting into the gauges and counters.
    pub fn update_state(&self, tables: &[TableStats], budget: Option<u64>) {
        for t in tables {
            self.tracked_keys.with_label_values(&[t.table]).set(t.keys as i64);
            self.state_bytes.with_label_values(&[t.table]).set(t.bytes as i64);
            follow(&self.evictions.with_label_values(&[t.table]), t.evictions);
        }
        if let Some(b) = budget {
            self.state_budget_bytes.set(b as i64);
        }
    }

    /// Copies the audit writer's counters into the metrics.
    pub fn update_audit(&self, stats: &crate::audit::AuditStats) {
        follow(&self.audit_records.with_label_values(&["written"]), stats.written);
        follow(&self.audit_records.with_label_values(&["dropped"]), stats.dropped);
        follow(&self.audit_errors, stats.errors);
        follow(&self.audit_flushes, stats.flushes);
        self.audit_queued.set(stats.queued as i64);
    }

    /// Copies the top offenders' counts (not their identities) into the rank gauges.
    pub fn update_offenders(&self, offenders: &crate::offenders::Offenders, now_ms: u64) {
        for kind in crate::offenders::Kind::ALL {
            let top = offenders.top(kind, TOP_RANKS, now_ms);
            for (i, rank) in RANKS.iter().enumerate() {
                let stopped = top.get(i).map_or(0, |o| o.stopped);
                self.top_offenders
                    .with_label_values(&[kind.as_str(), rank])
                    .set(stopped as i64);
            }
        }
    }

    /// The model gauges of the runtime now serving.
    pub fn set_model(&self, rt: &Runtime) {
        let slot = rt.model.as_ref();
        let loaded = slot.and_then(|s| s.loaded.as_ref());
        // `mode = "off"` everywhere asks for no model, whatever the section says.
        let required = slot.is_some() && rt.routes.iter().any(|r| r.model != crate::config::ModelMode::Off);
        self.model_required.set(i64::from(required));
        self.model_loaded.set(i64::from(loaded.is_some()));
        self.model_info.reset();
        if let Some(m) = loaded {
            self.model_info.with_label_values(&[&m.id, m.kind]).set(1);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Raises a counter to a total kept elsewhere (the state backend, the audit writer),
/// so that it stays monotonic whatever order scrapes arrive in.
fn follow(counter: &prometheus::IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

const RANKS: [&str; TOP_RANKS] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

fn mode(shadow: bool) -> &'static str {
    if shadow {
        "shadow"
    } else {
        "enforce"
    }
}
