//! Runtime: a validated config compiled for the request path (routes, limits, rules,
//! lists, responses), built whole at start-up and on every reload, then swapped in.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use ipnet::IpNet;

use crate::body_fields::BodyFields;
use crate::config::{
    self, Action, ConfigError, ConfigFile, IdentityConfig, IdentityField, ListAction, ListKind, Mode, Problem,
    ResponseConfig, Unmatched,
};
use crate::decide::{Decision, Policy};
use crate::expr::Expr;
use crate::extract::{IdentitySpec, Source};
use crate::features;
use crate::model::Model;
use crate::score::Reason;
use crate::state::{KeyHasher, KeyKind};

/// Everything the request path needs from config, compiled.
#[derive(Debug)]
pub struct Runtime {
    pub server: config::ServerConfig,
    pub state: config::StateConfig,
    pub log: config::LogConfig,
    pub audit: config::AuditConfig,
    pub signals: config::SignalsConfig,
    /// The admin bearer token (from `[admin] token` or the `token_env` variable) and the
    /// top-offenders settings.
    pub admin: Admin,
    pub headers: HeaderNames,
    pub routes: Vec<Route>,
    /// Exact paths per method, looked up without allocating.
    /// foldhash, not SipHash: the keys come from the config, so a request's path (the
    /// attacker's input) can only be looked up, never make the table collide.
    exact: RouteMap<Method, RouteMap<String, usize>>,
    prefixes: Vec<(Option<Method>, String, usize)>,
    pub rules: Vec<Rule>,
    pub lists: Vec<List>,
    pub responses: Responses,
    pub default_upstream: Option<Arc<Upstream>>,
    /// Files whose change triggers a reload (the config, every list file and the model
    /// file), with their fingerprints from just before they were read.
    pub watched: Vec<(PathBuf, Fingerprint)>,
    /// `[model]`: the classifier and how it joins the rules; `None` = rules only.
    pub model: Option<ModelSlot>,
}

/// The `[model]` section compiled, with its model file loaded or the reason it was not.
#[derive(Debug)]
pub struct ModelSlot {
    pub path: PathBuf,
    pub mode: config::ModelMode,
    pub combine: config::Combine,
    pub weight: f64,
    pub min_score: f64,
    pub reason_threshold: f64,
    pub top_features: usize,
    /// The model that scores requests; `None` while no file could be loaded.
    pub loaded: Option<Arc<Model>>,
    /// Why the model file on disk was refused (the loaded model, if any, is older).
    pub error: Option<String>,
    /// Of the file as it was when last read.
    pub fingerprint: Fingerprint,
    /// The file was read by this load (false: the previous runtime's model was reused).
    pub fresh: bool,
}

#[derive(Debug)]
pub struct Admin {
    /// `None`: privileged admin calls are refused (403) until a token is configured.
    pub token: Option<crate::admin::Token>,
    pub top_window_ms: u64,
    pub top_capacity: usize,
}

#[derive(Debug)]
pub struct HeaderNames {
    pub request_id: HeaderName,
    pub score: HeaderName,
    pub decision: HeaderName,
    pub reasons: HeaderName,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    /// `http://host:port`, no path.
    pub base: Uri,
    /// `host:port` to connect to (port 80 when the URL names none), derived once here
    /// rather than per forwarded request.
    pub connect_to: String,
}

impl Upstream {
    /// The upstream `name` at `url` (an `http://` URL with a host and no path).
    fn parse(name: &str, url: &str) -> Result<Upstream, String> {
        let base = parse_upstream(url)?;
        // Host and port only: an authority may also carry user-info (`user@host`).
        let connect_to = format!("{}:{}", base.host().unwrap_or_default(), base.port_u16().unwrap_or(80));
        Ok(Upstream {
            name: name.to_string(),
            base,
            connect_to,
        })
    }
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The route's key for route-scoped counters.
    pub key: u64,
    pub action: Action,
    pub upstream: Arc<Upstream>,
    pub identity: IdentitySpec,
    /// The JSON body fields its identities read; empty: the body is streamed through
    /// unread.
    pub body_fields: BodyFields,
    pub limits: Vec<Limit>,
    pub policy: Policy,
    pub mode: Mode,
    /// Indices into `Runtime::rules` of the rules that apply here.
    pub rules: Vec<usize>,
    /// Browse routes are counted (funnel signal) but never scored.
    pub scored: bool,
    /// What to do when the state backend fails or is too slow.
    pub on_state_error: config::OnStateError,
    /// How long this route waits for a remote state backend, when it overrides
    /// `state.timeout_ms`.
    pub state_timeout_ms: Option<u64>,
    /// Whether the model scores this route (`off` when there is no `[model]`).
    pub model: config::ModelMode,
}

#[derive(Debug)]
pub struct Limit {
    pub name: String,
    /// `limit:NAME` (`shadow:limit:NAME`), made once: requests share it.
    pub reason: Reason,
    pub key_kind: KeyKind,
    /// The route's first limit on `key_kind` (see `state::LimitCheck::first_of_kind`).
    pub first_of_kind: bool,
    /// Mixed with the identity's key: one GCRA cell per (route, limit, identity).
    pub id: u64,
    pub quota: governor::Quota,
    pub rate: config::Rate,
    pub burst: u32,
    pub decision: Decision,
    pub shadow: bool,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    /// `NAME` (`shadow:NAME`), made once: requests share it.
    pub reason: Reason,
    pub expr: Expr,
    pub score: f64,
    pub shadow: bool,
    pub description: String,
}

#[derive(Debug)]
pub struct List {
    pub name: String,
    /// `allowlist:NAME` or `blocklist:NAME`, made once: requests share it.
    pub reason: Reason,
    pub kind: ListKind,
    pub action: ListAction,
    pub path: PathBuf,
    pub values: HashSet<String>,
    pub ips: HashSet<IpAddr>,
    pub nets: Vec<IpNet>,
}

impl List {
    pub fn len(&self) -> usize {
        self.values.len() + self.ips.len() + self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains(&ip) || self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug)]
pub struct Responses {
    pub block: Response,
    pub challenge: Response,
    pub rate_limit: Response,
}

/// A local answer: status and the JSON body's code and message (the request id is
/// added per request).
#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub code: String,
    pub message: String,
}

/// What identifies a file's version without reading it: modification time, size and
/// inode (editors save by writing a new file and renaming it over the old one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Option<(std::time::SystemTime, u64, u64)>);

impl Fingerprint {
    pub fn of(meta: Option<std::fs::Metadata>) -> Fingerprint {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Fingerprint(meta.map(|m| {
            #[cfg(unix)]
            let ino = m.ino();
            #[cfg(not(unix))]
            let ino = 0;
            (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len(), ino)
        }))
    }

    /// Synchronous: for the loader, which runs on a blocking thread.
    pub fn read(path: &Path) -> Fingerprint {
        Fingerprint::of(std::fs::metadata(path).ok())
    }
}

/// Collects problems while validating.
struct Problems<'a> {
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Option<std::ops::Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let line = span.filter(|s| s.end > 0).map(|s| config::line_of(self.text, s.start));
        self.list.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Reads, parses and validates a config file and the list files it names.
/// Synchronous file I/O: call it at start-up or from a blocking task.
pub fn load(path: &Path, hasher: &KeyHasher) -> Result<Runtime, ConfigError> {
    load_reusing(path, hasher, None)
}

/// `load`, reusing `previous`'s model when its file has not changed (a reload caused by
/// a list file does not parse the model again). A model file that cannot be loaded is
/// not a config error: the runtime comes back with `model.error` set and no model, and
/// the caller decides (serve keeps the previous model, replay and check-config fail).
pub fn load_reusing(path: &Path, hasher: &KeyHasher, previous: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    let mut rt = load_config(path, hasher)?;
    if let Some(slot) = rt.model.as_mut() {
        let fingerprint = Fingerprint::read(&slot.path);
        let unchanged = previous
            .and_then(|p| p.model.as_ref())
            .filter(|old| old.path == slot.path && old.fingerprint == fingerprint && fingerprint.0.is_some());
        match unchanged {
            Some(old) => {
                slot.loaded = old.loaded.clone();
                slot.error = old.error.clone();
            }
            None => {
                slot.fresh = true;
                match Model::load(&slot.path) {
                    Ok(m) => slot.loaded = Some(Arc::new(m)),
                    Err(e) => slot.error = Some(e.to_string()),
                }
            }
        }
        slot.fingerprint = fingerprint.clone();
        rt.watched.push((slot.path.clone(), fingerprint));
    }
    Ok(rt)
}

/// `load` without the model: what training needs (features never depend on the model,
/// and the model file may be the one being replaced).
pub fn load_config(path: &Path, hasher: &KeyHasher) -> Result<Runtime, ConfigError> {
    let fingerprint = Fingerprint::read(path);
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    let file = config::parse(path, &text)?;
    let mut rt = build(&file, path, &text, hasher)?;
    rt.watched[0].1 = fingerprint;
    Ok(rt)
}

/// Validates a parsed file into a runtime. `text` locates problems; list paths are
/// relative to `path`'s directory.
pub fn build(file: &ConfigFile, path: &Path, text: &str, hasher: &KeyHasher) -> Result<Runtime, ConfigError> {
    let mut p = Problems { text, list: Vec::new() };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let header = |p: &mut Problems, key: &str, v: &str| {
        HeaderName::from_bytes(v.to_ascii_lowercase().as_bytes()).unwrap_or_else(|_| {
            p.at(
                None,
                format!("headers.{key}"),
                format!("`{v}` is not a valid header name"),
            );
            HeaderName::from_static("x-invalid")
        })
    };
    let headers = HeaderNames {
        request_id: header(&mut p, "request_id", &file.headers.request_id),
        score: header(&mut p, "score", &file.headers.score),
        decision: header(&mut p, "decision", &file.headers.decision),
        reasons: header(&mut p, "reasons", &file.headers.reasons),
    };

    let s = &file.server;
    if s.max_body_bytes == 0 {
        p.at(None, "server.max_body_bytes", "must be above 0");
    }
    if s.max_header_bytes < 1024 {
        p.at(None, "server.max_header_bytes", "must be at least 1024");
    }
    for (key, v) in [
        ("header_read_timeout_ms", s.header_read_timeout_ms),
        ("upstream_connect_timeout_ms", s.upstream_connect_timeout_ms),
        ("upstream_timeout_ms", s.upstream_timeout_ms),
        ("upstream_idle_timeout_ms", s.upstream_idle_timeout_ms),
        ("reload_poll_ms", s.reload_poll_ms),
    ] {
        if v == 0 {
            p.at(None, format!("server.{key}"), "must be above 0 milliseconds");
        }
    }
    if file.state.memory_budget_mb == 0 {
        p.at(None, "state.memory_budget_mb", "must be above 0");
    }
    if file.state.ttl_s < 86_400 {
        p.at(
            None,
            "state.ttl_s",
            "must be at least 86400 (the longest window is 24 h)",
        );
    }
    validate_state(&mut p, &file.state);
    let sig = &file.signals;
    if sig.order_thresholds.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
        p.at(None, "signals.order_thresholds", "thresholds must be positive amounts");
    }
    if !sig.min_app_version.text.is_empty() && sig.min_app_version.parts.is_none() {
        p.at(
            None,
            "signals.min_app_version",
            "must be a dotted version of up to four numbers, like \"3.9.0\"",
        );
    }
    if sig.device_prefix_len > 32 {
        p.at(None, "signals.device_prefix_len", "must be at most 32 (0 turns it off)");
    }
    if !(0.0..=1.0).contains(&sig.just_above_ratio) {
        p.at(None, "signals.just_above_ratio", "must be in [0, 1]");
    }
    if file.audit.queue_capacity == 0 {
        p.at(None, "audit.queue_capacity", "must be above 0");
    }
    let admin = admin_config(&file.admin, &mut p);
    if tracing_subscriber::EnvFilter::try_new(&file.log.level).is_err() {
        p.at(
            None,
            "log.level",
            format!(
                "`{}` is not a level or filter (e.g. `info`, `riskgate=debug`)",
                file.log.level
            ),
        );
    }

    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (name, u) in &file.upstreams {
        match Upstream::parse(name, u.url.get_ref()) {
            Ok(up) => {
                upstreams.insert(name, Arc::new(up));
            }
            Err(msg) => p.at(Some(u.url.span()), format!("upstreams.{name}.url"), msg),
        }
    }
    let upstream_names = || file.upstreams.keys().map(String::as_str).collect::<Vec<_>>().join(", ");

    let mut policies: HashMap<&str, Policy> = HashMap::new();
    for (name, pc) in &file.policies {
        let ok = [pc.review, pc.challenge, pc.block]
            .iter()
            .all(|v| (0.0..=1.0).contains(v))
            && pc.review <= pc.challenge
            && pc.challenge <= pc.block;
        if !ok {
            p.at(
                None,
                format!("policies.{name}"),
                format!(
                    "thresholds must lie in [0, 1] with review <= challenge <= block (got {}, {}, {})",
                    pc.review, pc.challenge, pc.block
                ),
            );
        }
        policies.insert(
            name,
            Policy {
                review: pc.review,
                challenge: pc.challenge,
                block: pc.block,
                mode: pc.mode,
            },
        );
    }

    let responses = Responses {
        block: response(&mut p, "block", &file.responses.block),
        challenge: response(&mut p, "challenge", &file.responses.challenge),
        rate_limit: response(&mut p, "rate_limit", &file.responses.rate_limit),
    };

    // Rules first, so that routes can pick the ones that apply to them.
    let mut rules = Vec::new();
    let mut rule_filters = Vec::new();
    let mut rule_names = HashSet::new();
    for (i, r) in file.rules.iter().enumerate() {
        let name = r.name.get_ref();
        let key = format!("rules[{i}]");
        if !is_label_safe(name) {
            p.at(
                Some(r.name.span()),
                format!("{key}.name"),
                format!("`{name}` must be 1-64 characters of a-z, 0-9 and _"),
            );
        }
        if !rule_names.insert(name.clone()) {
            p.at(
                Some(r.name.span()),
                format!("{key}.name"),
                format!("rule `{name}` is defined twice"),
            );
        }
        let score = *r.score.get_ref();
        if !(score > 0.0 && score <= 1.0) {
            p.at(
                Some(r.score.span()),
                format!("{key}.score"),
                format!("{score} must be in (0, 1]"),
            );
        }
        match Expr::compile(r.when.get_ref(), features::index_of) {
            Ok(expr) => {
                rules.push(Rule {
                    reason: if r.shadow {
                        format!("shadow:{name}").into()
                    } else {
                        name.as_str().into()
                    },
                    name: name.clone(),
                    expr,
                    score,
                    shadow: r.shadow,
                    description: r.description.clone(),
                });
                rule_filters.push((r.routes.clone(), r.actions.clone()));
            }
            Err(e) => p.at(
                Some(r.when.span()),
                format!("{key}.when"),
                format!(
                    "in `{}`: {e} (feature names are listed in ARCHITECTURE.md)",
                    r.when.get_ref()
                ),
            ),
        }
    }

    let model = file.model.as_ref().map(|mc| {
        if mc.path.get_ref().as_os_str().is_empty() {
            p.at(Some(mc.path.span()), "model.path", "must name the model file");
        }
        if !(mc.weight > 0.0 && mc.weight <= 1.0) {
            p.at(None, "model.weight", format!("{} must be in (0, 1]", mc.weight));
        }
        if !(0.0..=1.0).contains(&mc.min_score) {
            p.at(None, "model.min_score", format!("{} must be in [0, 1]", mc.min_score));
        }
        if !(0.0..=1.0).contains(&mc.reason_threshold) {
            p.at(
                None,
                "model.reason_threshold",
                format!("{} must be in [0, 1]", mc.reason_threshold),
            );
        }
        if mc.top_features > 10 {
            p.at(None, "model.top_features", "must be at most 10");
        }
        ModelSlot {
            path: base_dir.join(mc.path.get_ref()),
            mode: mc.mode,
            combine: mc.combine,
            weight: mc.weight,
            min_score: mc.min_score,
            reason_threshold: mc.reason_threshold,
            top_features: mc.top_features,
            loaded: None,
            error: None,
            fingerprint: Fingerprint(None),
            fresh: false,
        }
    });

    let mut routes: Vec<Route> = Vec::new();
    let mut exact: RouteMap<Method, RouteMap<String, usize>> = RouteMap::default();
    let mut prefixes = Vec::new();
    for (i, rc) in file.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let name = rc.name.get_ref().clone();
        if !is_label_safe(&name) {
            p.at(
                Some(rc.name.span()),
                format!("{key}.name"),
                format!("`{name}` must be 1-64 characters of a-z, 0-9 and _"),
            );
        }
        if routes.iter().any(|r| r.name == name) {
            p.at(
                Some(rc.name.span()),
                format!("{key}.name"),
                format!("route `{name}` is defined twice"),
            );
        }
        let method = match rc.method.get_ref().as_str() {
            "*" => None,
            m => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    p.at(
                        Some(rc.method.span()),
                        format!("{key}.method"),
                        format!("`{m}` is not an HTTP method (or `*`)"),
                    );
                    None
                }
            },
        };
        let path_pat = rc.path.get_ref();
        if !path_pat.starts_with('/') {
            p.at(
                Some(rc.path.span()),
                format!("{key}.path"),
                format!("`{path_pat}` must start with `/`"),
            );
        }
        let upstream_name = rc.upstream.as_ref().map(|u| u.get_ref().as_str()).unwrap_or("default");
        let upstream = match upstreams.get(upstream_name) {
            Some(u) => u.clone(),
            None => {
                let span = rc.upstream.as_ref().map(|u| u.span()).or(Some(rc.name.span()));
                p.at(
                    span,
                    format!("{key}.upstream"),
                    format!("unknown upstream `{upstream_name}`; defined: {}", upstream_names()),
                );
                continue;
            }
        };
        let policy_name = rc.policy.as_ref().map(|u| u.get_ref().as_str()).unwrap_or("default");
        let policy = match policies.get(policy_name) {
            Some(pol) => pol.clone(),
            None => {
                let span = rc.policy.as_ref().map(|u| u.span()).or(Some(rc.name.span()));
                let known = file.policies.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
                p.at(
                    span,
                    format!("{key}.policy"),
                    format!("unknown policy `{policy_name}`; defined: {known}"),
                );
                continue;
            }
        };
        let mode = if file.server.mode == Mode::Shadow {
            Mode::Shadow
        } else {
            rc.mode.or(policy.mode).unwrap_or(Mode::Enforce)
        };
        if rc.state_timeout_ms == Some(0) {
            p.at(
                Some(rc.name.span()),
                format!("{key}.state_timeout_ms"),
                "must be above 0 milliseconds",
            );
        }
        let route_model = match (&rc.model, &model) {
            (Some(m), Some(_)) => *m.get_ref(),
            (None, Some(slot)) => slot.mode,
            (Some(m), None) => {
                if *m.get_ref() != config::ModelMode::Off {
                    p.at(
                        Some(m.span()),
                        format!("{key}.model"),
                        "there is no [model] section to take the model from",
                    );
                }
                config::ModelMode::Off
            }
            (None, None) => config::ModelMode::Off,
        };
        let identity = merge_identity(&file.identity, &rc.identity);
        let route_key = hasher.key(KeyKind::Route, &name);
        let mut limits = Vec::new();
        for (j, lc) in rc.limits.iter().enumerate() {
            let lkey = format!("{key}.limits[{j}]");
            let Some(key_kind) = KeyKind::from_name(lc.key.get_ref()) else {
                p.at(
                    Some(lc.key.span()),
                    format!("{lkey}.key"),
                    format!("unknown key `{}`; allowed: user, device, ip, subnet, phone, campaign, route, inviter, pay_account, address, user_agent", lc.key.get_ref()),
                );
                continue;
            };
            let decision = match lc.decision.get_ref().as_str() {
                "block" => Decision::Block,
                "challenge" => Decision::Challenge,
                "review" => Decision::Review,
                other => {
                    p.at(
                        Some(lc.decision.span()),
                        format!("{lkey}.decision"),
                        format!("`{other}` must be block, challenge or review"),
                    );
                    continue;
                }
            };
            let lname = lc
                .name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .unwrap_or_else(|| format!("{}_{}", name, key_kind.name()));
            if !is_label_safe(&lname) {
                p.at(
                    lc.name.as_ref().map(|n| n.span()),
                    format!("{lkey}.name"),
                    format!("`{lname}` must be 1-64 characters of a-z, 0-9 and _"),
                );
            }
            let burst = lc.burst.unwrap_or(lc.rate.count);
            let period = Duration::from_millis(lc.rate.per_ms) / lc.rate.count.get();
            let Some(quota) = governor::Quota::with_period(period) else {
                p.at(None, format!("{lkey}.rate"), "rate is too fast to represent");
                continue;
            };
            limits.push(Limit {
                first_of_kind: limits.iter().all(|l: &Limit| l.key_kind != key_kind),
                id: hasher.key(KeyKind::Route, &format!("{name}/{lname}")),
                reason: if lc.shadow {
                    format!("shadow:limit:{lname}")
                } else {
                    format!("limit:{lname}")
                }
                .into(),
                name: lname,
                key_kind,
                quota: quota.allow_burst(burst),
                rate: lc.rate,
                burst: burst.get(),
                decision,
                shadow: lc.shadow,
            });
        }
        let route_rules = rule_filters
            .iter()
            .enumerate()
            .filter(|(_, (names, actions))| {
                names.as_ref().is_none_or(|n| n.iter().any(|n| n.get_ref() == &name))
                    && actions.as_ref().is_none_or(|a| a.contains(&rc.action))
            })
            .map(|(i, _)| i)
            .collect();
        let idx = routes.len();
        match path_pat.strip_suffix('*') {
            Some(prefix) => prefixes.push((method.clone(), prefix.to_string(), idx)),
            None => {
                for m in method.clone().map(|m| vec![m]).unwrap_or_else(all_methods) {
                    if exact
                        .entry(m.clone())
                        .or_default()
                        .insert(path_pat.clone(), idx)
                        .is_some()
                    {
                        p.at(
                            Some(rc.path.span()),
                            format!("{key}.path"),
                            format!("{m} {path_pat} is already taken by another route"),
                        );
                    }
                }
            }
        }
        routes.push(Route {
            body_fields: BodyFields::new(identity.json_pointers()),
            name,
            key: route_key,
            action: rc.action,
            upstream,
            identity,
            limits,
            policy,
            mode,
            rules: route_rules,
            scored: rc.action != Action::Browse,
            on_state_error: rc.on_state_error.unwrap_or(file.state.on_error),
            state_timeout_ms: rc.state_timeout_ms,
            model: if rc.action == Action::Browse {
                config::ModelMode::Off
            } else {
                route_model
            },
        });
    }
    for (i, r) in file.rules.iter().enumerate() {
        for rn in r.routes.iter().flatten() {
            if !file.routes.iter().any(|rc| rc.name.get_ref() == rn.get_ref()) {
                p.at(
                    Some(rn.span()),
                    format!("rules[{i}].routes"),
                    format!("unknown route `{}`", rn.get_ref()),
                );
            }
        }
    }

    let default_upstream = upstreams.get("default").cloned();
    if default_upstream.is_none() && file.server.unmatched == Unmatched::Forward {
        p.at(
            None,
            "upstreams.default",
            "an upstream named `default` is required while server.unmatched = \"forward\"",
        );
    }

    let mut lists = Vec::new();
    let mut watched = vec![(path.to_path_buf(), Fingerprint(None))];
    for (i, lc) in file.lists.iter().enumerate() {
        let key = format!("lists[{i}]");
        let name = lc.name.get_ref().clone();
        if !is_label_safe(&name) {
            p.at(
                Some(lc.name.span()),
                format!("{key}.name"),
                format!("`{name}` must be 1-64 characters of a-z, 0-9 and _"),
            );
        }
        let file_path = base_dir.join(lc.file.get_ref());
        watched.push((file_path.clone(), Fingerprint::read(&file_path)));
        match load_list(&file_path, lc.kind) {
            Ok((values, ips, nets)) => lists.push(List {
                reason: match lc.action {
                    ListAction::Allow => format!("allowlist:{name}"),
                    ListAction::Block => format!("blocklist:{name}"),
                }
                .into(),
                name,
                kind: lc.kind,
                action: lc.action,
                path: file_path,
                values,
                ips,
                nets,
            }),
            Err(msg) => p.at(Some(lc.file.span()), format!("{key}.file"), msg),
        }
    }

    if !p.list.is_empty() {
        p.list.sort_by_key(|problem| problem.line.unwrap_or(usize::MAX));
        return Err(ConfigError {
            file: path.to_path_buf(),
            problems: p.list,
        });
    }
    Ok(Runtime {
        server: file.server.clone(),
        state: file.state.clone(),
        log: file.log.clone(),
        audit: audit_config(file, &base_dir),
        signals: file.signals.clone(),
        admin,
        headers,
        routes,
        exact,
        prefixes,
        rules,
        lists,
        responses,
        default_upstream,
        watched,
        model,
    })
}

impl Runtime {
    /// Why the configured model could not be loaded, if it could not.
    pub fn model_error(&self) -> Option<&str> {
        self.model.as_ref().and_then(|m| m.error.as_deref())
    }

    /// The index of the route for a method and path: exact paths first, then the
    /// longest prefix.
    pub fn route(&self, method: &Method, path: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(method).and_then(|paths| paths.get(path)) {
            return Some(*i);
        }
        self.prefixes
            .iter()
            .filter(|(m, prefix, _)| m.as_ref().is_none_or(|m| m == method) && path.starts_with(prefix.as_str()))
            .max_by_key(|(_, prefix, _)| prefix.len())
            .map(|(_, _, i)| *i)
    }

    /// Replaces every upstream (the `--upstream` flag).
    pub fn override_upstream(&mut self, url: &str) -> Result<(), String> {
        let up = Arc::new(Upstream::parse("default", url)?);
        for r in &mut self.routes {
            r.upstream = up.clone();
        }
        self.default_upstream = Some(up);
        Ok(())
    }

    /// After a reload whose model file was refused: keep serving `previous`'s model (the
    /// error stays recorded). Returns whether an older model was kept.
    pub fn keep_previous_model(&mut self, previous: &Runtime) -> bool {
        let (Some(slot), Some(old)) = (self.model.as_mut(), previous.model.as_ref()) else {
            return false;
        };
        if slot.error.is_none() || slot.loaded.is_some() || old.loaded.is_none() {
            return false;
        }
        slot.loaded = old.loaded.clone();
        true
    }

    /// Puts every route in shadow mode (the `--shadow` flag).
    pub fn force_shadow(&mut self) {
        self.server.mode = Mode::Shadow;
        for r in &mut self.routes {
            r.mode = Mode::Shadow;
        }
    }

    /// A human summary of what this config does, for `check-config`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen {}  admin {}  mode {}",
            self.server.listen,
            self.server.admin_listen,
            self.server.mode.as_str()
        );
        let _ = writeln!(
            s,
            "state {}  timeout {} ms  on error {}",
            match self.state.backend {
                config::StateBackend::Memory => format!("memory ({} MB)", self.state.memory_budget_mb),
                config::StateBackend::Redis if self.state.redis_nodes.is_empty() => {
                    format!("redis {}", self.state.redis_url)
                }
                config::StateBackend::Redis => format!("redis cluster {}", self.state.redis_nodes.join(",")),
            },
            self.state.timeout_ms,
            self.state.on_error.as_str()
        );
        let _ = writeln!(s, "routes ({}):", self.routes.len());
        for r in &self.routes {
            let scoring = if r.scored {
                format!(
                    "review>={} challenge>={} block>={}  {}  {} rules",
                    r.policy.review,
                    r.policy.challenge,
                    r.policy.block,
                    r.mode.as_str(),
                    r.rules.len()
                )
            } else {
                "counted, not scored".to_string()
            };
            let _ = writeln!(
                s,
                "  {:<18} {:<9} -> {}  {scoring}  state error: {}{}",
                r.name,
                r.action.as_str(),
                r.upstream.name,
                r.on_state_error.as_str(),
                r.state_timeout_ms
                    .map(|ms| format!(" after {ms} ms"))
                    .unwrap_or_default()
            );
            for l in &r.limits {
                let _ = writeln!(
                    s,
                    "      limit {:<24} per {:<8} {} burst {} -> {}{}",
                    l.name,
                    l.key_kind.name(),
                    l.rate,
                    l.burst,
                    l.decision.as_str(),
                    if l.shadow { " (shadow)" } else { "" }
                );
            }
        }
        match &self.model {
            None => {
                let _ = writeln!(s, "model: none (rules only)");
            }
            Some(m) => {
                let state = match (&m.loaded, &m.error) {
                    (_, Some(e)) => format!("NOT LOADED: {e}"),
                    (Some(model), None) => format!("{} {} ({})", model.kind, model.id, model.feature_set_version),
                    (None, None) => "not loaded".to_string(),
                };
                let routes: Vec<String> = self
                    .routes
                    .iter()
                    .filter(|r| r.model != config::ModelMode::Off)
                    .map(|r| format!("{} ({})", r.name, r.model.as_str()))
                    .collect();
                let _ = writeln!(
                    s,
                    "model: {}  {state}\n      combine {} weight {} counted from {}  reasons at >= {} (top {})  routes: {}",
                    m.path.display(),
                    m.combine.as_str(),
                    m.weight,
                    m.min_score,
                    m.reason_threshold,
                    m.top_features,
                    routes.join(", ")
                );
            }
        }
        let _ = writeln!(s, "rules ({}):", self.rules.len());
        for r in &self.rules {
            let _ = writeln!(
                s,
                "  {:<28} +{:<5} {}{}",
                r.name,
                r.score,
                r.expr.source(),
                if r.shadow { "  (shadow)" } else { "" }
            );
        }
        let _ = writeln!(s, "lists ({}):", self.lists.len());
        for l in &self.lists {
            let _ = writeln!(
                s,
                "  {:<24} {:?} {:?}  {} entries from {}",
                l.name,
                l.kind,
                l.action,
                l.len(),
                l.path.display()
            );
        }
        s
    }
}

fn validate_state(p: &mut Problems, st: &config::StateConfig) {
    if st.timeout_ms == 0 {
        p.at(None, "state.timeout_ms", "must be above 0 milliseconds");
    }
    if st.connect_timeout_ms == 0 {
        p.at(None, "state.connect_timeout_ms", "must be above 0 milliseconds");
    }
    let prefix_ok = !st.key_prefix.is_empty()
        && st.key_prefix.len() <= 64
        && st
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if !prefix_ok {
        p.at(
            None,
            "state.key_prefix",
            format!(
                "`{}` must be 1-64 characters of A-Z, a-z, 0-9 and _ - . :",
                st.key_prefix
            ),
        );
    }
    let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("unix://");
    if !redis_url(&st.redis_url) {
        p.at(
            None,
            "state.redis_url",
            format!("`{}` must be a redis://HOST:PORT URL", st.redis_url),
        );
    }
    for n in st.redis_nodes.iter().filter(|n| !redis_url(n)) {
        p.at(
            None,
            "state.redis_nodes",
            format!("`{n}` must be a redis://HOST:PORT URL"),
        );
    }
}

/// The admin token comes from the file or, when the file has none, from the environment
/// variable it names; short tokens are refused (a bearer token must not be guessable).
fn admin_config(file: &config::AdminConfig, p: &mut Problems) -> Admin {
    let token = match &file.token {
        Some(t) => Some(("admin.token", t.clone())),
        None => std::env::var(&file.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| ("admin.token_env", t)),
    };
    let token = token.and_then(|(key, t)| match crate::admin::Token::new(&t) {
        Some(token) => Some(token),
        None => {
            p.at(
                None,
                key,
                format!(
                    "the admin token must be {} to 1024 visible ASCII characters",
                    crate::admin::Token::MIN_LEN
                ),
            );
            None
        }
    });
    if file.top_window_s == 0 {
        p.at(None, "admin.top_window_s", "must be above 0");
    }
    if !(1..=65_536).contains(&file.top_capacity) {
        p.at(None, "admin.top_capacity", "must be between 1 and 65536");
    }
    Admin {
        token,
        top_window_ms: file.top_window_s.saturating_mul(1_000).max(1),
        top_capacity: file.top_capacity.clamp(1, 65_536),
    }
}

/// The audit path is relative to the config file, like list files.
fn audit_config(file: &ConfigFile, base_dir: &Path) -> config::AuditConfig {
    let mut audit = file.audit.clone();
    audit.path = base_dir.join(&audit.path);
    audit
}

fn all_methods() -> Vec<Method> {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .to_vec()
}

fn response(p: &mut Problems, key: &str, rc: &ResponseConfig) -> Response {
    let status = match http::StatusCode::from_u16(rc.status) {
        Ok(s) if (400..600).contains(&rc.status) => s,
        _ => {
            p.at(
                None,
                format!("responses.{key}.status"),
                format!("{} must be an HTTP status from 400 to 599", rc.status),
            );
            http::StatusCode::FORBIDDEN
        }
    };
    Response {
        status,
        code: rc.code.clone(),
        message: rc.message.clone(),
    }
}

fn parse_upstream(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{url}` must be an http:// URL (TLS to upstreams is not supported)"
        ));
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` must have no path or query: requests keep their own path"
        ));
    }
    Ok(uri)
}

fn merge_identity(defaults: &IdentityConfig, route: &IdentityConfig) -> IdentitySpec {
    let pick = |r: &Option<IdentityField>, d: &Option<IdentityField>| -> Option<Source> {
        match r.as_ref().or(d.as_ref()) {
            Some(IdentityField::From(s)) => Some(s.clone()),
            _ => None,
        }
    };
    IdentitySpec {
        user: pick(&route.user, &defaults.user),
        device: pick(&route.device, &defaults.device),
        phone: pick(&route.phone, &defaults.phone),
        campaign: pick(&route.campaign, &defaults.campaign),
        inviter: pick(&route.inviter, &defaults.inviter),
        amount: pick(&route.amount, &defaults.amount),
        pay_account: pick(&route.pay_account, &defaults.pay_account),
        address: pick(&route.address, &defaults.address),
        user_agent: pick(&route.user_agent, &defaults.user_agent),
        app_version: pick(&route.app_version, &defaults.app_version),
    }
}

/// The route table's maps (see `Runtime::exact`).
type RouteMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

type ListEntries = (HashSet<String>, HashSet<IpAddr>, Vec<IpNet>);

fn load_list(path: &Path, kind: ListKind) -> Result<ListEntries, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read list file {}: {e}", path.display()))?;
    let (mut values, mut ips, mut nets) = (HashSet::new(), HashSet::new(), Vec::new());
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if kind == ListKind::Ip {
            if let Ok(ip) = line.parse::<IpAddr>() {
                ips.insert(ip);
            } else if let Ok(net) = line.parse::<IpNet>() {
                nets.push(net.trunc());
            } else {
                return Err(format!(
                    "{}:{}: `{line}` is not an IP address or CIDR",
                    path.display(),
                    n + 1
                ));
            }
        } else {
            values.insert(line.to_string());
        }
    }
    Ok((values, ips, nets))
}

/// Names that become metric label values: short and plain, so they are safe anywhere.
fn is_label_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnStateError;

    fn build_text(text: &str) -> Result<Runtime, ConfigError> {
        let path = Path::new("x.toml");
        build(&config::parse(path, text)?, path, text, &KeyHasher::seeded(1))
    }

    const ROUTES: &str = r#"
[upstreams.default]
url = "http://127.0.0.1:9"
[policies.default]
review = 0.3
challenge = 0.6
block = 0.85
[[routes]]
name = "coupon_claim"
method = "POST"
path = "/c"
action = "coupon"
[[routes]]
name = "checkin"
method = "POST"
path = "/k"
action = "checkin"
on_state_error = "deny"
state_timeout_ms = 30
"#;

    #[test]
    fn degradation_policy_per_route_with_a_global_default() {
        let rt = build_text(ROUTES).unwrap();
        let policies: Vec<_> = rt.routes.iter().map(|r| r.on_state_error).collect();
        assert_eq!(policies, [OnStateError::Allow, OnStateError::Deny]);
        let timeouts: Vec<_> = rt.routes.iter().map(|r| r.state_timeout_ms).collect();
        assert_eq!(timeouts, [None, Some(30)]);
        let rt = build_text(&format!("[state]\non_error = \"local\"\n{ROUTES}")).unwrap();
        let policies: Vec<_> = rt.routes.iter().map(|r| r.on_state_error).collect();
        assert_eq!(policies, [OnStateError::Local, OnStateError::Deny]);
        let err = build_text(&format!("[state]\non_error = \"maybe\"\n{ROUTES}")).unwrap_err();
        assert!(err.to_string().contains("unknown variant `maybe`"), "{err}");
    }

    #[test]
    fn an_upstream_connects_to_its_host_and_port() {
        let to = |url: &str| Upstream::parse("u", url).unwrap().connect_to;
        assert_eq!(to("http://127.0.0.1:8081"), "127.0.0.1:8081");
        assert_eq!(to("http://backend"), "backend:80");
        assert_eq!(to("http://user@backend:9000/"), "backend:9000");
        assert_eq!(to("http://[::1]:8081"), "[::1]:8081");
    }

    #[test]
    fn model_settings_are_validated_together() {
        let text = format!(
            "[model]\npath = \"m.json\"\nweight = 0.0\nmin_score = 2.0\nreason_threshold = -1.0\ntop_features = 11\n{ROUTES}"
        );
        let err = build_text(&text).unwrap_err().to_string();
        for needle in [
            "model.weight: 0 must be in (0, 1]",
            "model.min_score: 2 must be in [0, 1]",
            "model.reason_threshold: -1 must be in [0, 1]",
            "model.top_features: must be at most 10",
        ] {
            assert!(err.contains(needle), "missing `{needle}` in\n{err}");
        }
        let err = build_text(&format!("[model]\npath = \"m.json\"\ncombine = \"sum\"\n{ROUTES}")).unwrap_err();
        assert!(err.to_string().contains("unknown variant `sum`"), "{err}");
        let err = build_text(&format!("[model]\npath = \"m.json\"\nweigth = 1\n{ROUTES}")).unwrap_err();
        assert!(err.to_string().contains("unknown field `weigth`"), "{err}");
        // A route can opt out or into shadow; without a [model] section only "off" makes sense.
        let routes = ROUTES.replace("action = \"checkin\"", "action = \"checkin\"\nmodel = \"shadow\"");
        let rt = build_text(&format!("[model]\npath = \"m.json\"\n{routes}")).unwrap();
        let modes: Vec<_> = rt.routes.iter().map(|r| r.model).collect();
        assert_eq!(modes, [config::ModelMode::Enforce, config::ModelMode::Shadow]);
        assert_eq!(rt.model.as_ref().unwrap().path, Path::new("m.json"));
        let err = build_text(&routes).unwrap_err().to_string();
        assert!(err.contains("routes[1].model: there is no [model] section"), "{err}");
        let rt = build_text(ROUTES).unwrap();
        assert!(rt.model.is_none() && rt.routes.iter().all(|r| r.model == config::ModelMode::Off));
    }

    #[test]
    fn state_settings_are_validated_together() {
        let text = format!(
            "[state]\nbackend = \"redis\"\ntimeout_ms = 0\nkey_prefix = \"a b\"\nredis_url = \"http://x\"\nredis_nodes = [\"redis://n1:7000\", \"n2\"]\n{ROUTES}"
        );
        let err = build_text(&text).unwrap_err().to_string();
        for needle in [
            "state.timeout_ms: must be above 0",
            "state.key_prefix: `a b` must be",
            "state.redis_url: `http://x` must be a redis://HOST:PORT URL",
            "state.redis_nodes: `n2` must be",
        ] {
            assert!(err.contains(needle), "missing `{needle}` in\n{err}");
        }
        assert!(!err.contains("n1:7000"), "{err}");
    }
}
