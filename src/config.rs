//! Config: the TOML file as written (serde, unknown keys refused), and `validate` into
//! the runtime form with every problem reported at once, each with file, line and key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::extract::Source;

/// The whole file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub headers: HeaderNamesConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub signals: SignalsConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    pub responses: ResponsesConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub lists: Vec<ListConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The trained classifier; absent = rules only.
    #[serde(default)]
    pub model: Option<ModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_timeout_ms: u64,
    pub upstream_idle_timeout_ms: u64,
    pub upstream_max_idle_per_host: usize,
    pub shutdown_grace_ms: u64,
    pub reload_poll_ms: u64,
    pub unmatched: Unmatched,
    pub mode: Mode,
    pub http2: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 10_000,
            upstream_connect_timeout_ms: 1_000,
            upstream_timeout_ms: 10_000,
            upstream_idle_timeout_ms: 30_000,
            upstream_max_idle_per_host: 256,
            shutdown_grace_ms: 10_000,
            reload_poll_ms: 1_000,
            unmatched: Unmatched::Forward,
            mode: Mode::Enforce,
            http2: true,
        }
    }
}

/// What happens to a request no route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Forwarded to the `default` upstream without scoring.
    Forward,
    /// Answered 404 by the gateway.
    Reject,
}

/// Enforce decisions, or only record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderNamesConfig {
    pub request_id: String,
    pub score: String,
    pub decision: String,
    pub reasons: String,
}

impl Default for HeaderNamesConfig {
    fn default() -> Self {
        HeaderNamesConfig {
            request_id: "x-request-id".into(),
            score: "x-risk-score".into(),
            decision: "x-risk-decision".into(),
            reasons: "x-risk-reasons".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// The memory backend's budget; with Redis, the budget of the local fallback state.
    pub memory_budget_mb: u64,
    pub ttl_s: u64,
    /// A single Redis server (`redis://HOST:PORT[/DB]`), used when `redis_nodes` is empty.
    pub redis_url: String,
    /// Redis Cluster seed nodes (`redis://HOST:PORT` each); set to use Cluster.
    pub redis_nodes: Vec<String>,
    /// Every Redis key starts with this, so that several deployments can share a server.
    pub key_prefix: String,
    /// How long a request waits for the state backend before the route's degradation
    /// policy applies.
    pub timeout_ms: u64,
    /// How long connecting to Redis may take (at start and on reconnects).
    pub connect_timeout_ms: u64,
    /// What a route does when the state backend fails or is too slow, unless the route
    /// says otherwise (`on_state_error` on the route).
    pub on_error: OnStateError,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Memory,
            memory_budget_mb: 256,
            ttl_s: 25 * 3600,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_nodes: Vec::new(),
            key_prefix: "rg".into(),
            timeout_ms: 50,
            connect_timeout_ms: 1_000,
            on_error: OnStateError::Allow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    Memory,
    Redis,
}

/// The degradation policy: what a route does when its state call fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStateError {
    /// Decide without signals (score 0, reason `state_unavailable`): fail open.
    Allow,
    /// Answer with the block response (reason `state_unavailable`): fail closed.
    Deny,
    /// Decide from this replica's own in-memory state (reason `state_local`).
    Local,
}

impl OnStateError {
    pub const ALL: [OnStateError; 3] = [OnStateError::Allow, OnStateError::Deny, OnStateError::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            OnStateError::Allow => "allow",
            OnStateError::Deny => "deny",
            OnStateError::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The audit log: one decision record per scored request, written off the hot path.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// The current file; rotated files get `.1`, `.2`, … appended (`.1` is the newest).
    pub path: PathBuf,
    /// Records waiting for the writer; when full, new records are dropped and counted.
    pub queue_capacity: usize,
    /// Rotate when the current file reaches this size.
    pub max_file_mb: u64,
    /// Rotated files kept besides the current one.
    pub keep_files: usize,
    /// Embed the full event in each record, so captured traffic can be replayed.
    pub capture_events: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            path: PathBuf::from("riskgate-audit.jsonl"),
            queue_capacity: 65_536,
            max_file_mb: 256,
            keep_files: 8,
            capture_events: false,
        }
    }
}

/// The admin listener's privileged calls (POST /reload, GET /top) and the top-offenders
/// sketch behind /top.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer token itself. Prefer `token_env`: a file is easier to leak than an
    /// environment variable.
    pub token: Option<String>,
    /// The environment variable holding the bearer token (read at start and reload);
    /// used when `token` is not set.
    pub token_env: String,
    /// Stopped requests are counted per identity in windows of this length; /top reports
    /// the current and the previous window (so between one and two of these).
    pub top_window_s: u64,
    /// Identities tracked per kind and window (Space-Saving counters): the memory bound.
    pub top_capacity: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            token_env: "RISKGATE_ADMIN_TOKEN".into(),
            top_window_s: 300,
            top_capacity: 512,
        }
    }
}

// Never print the token, not even in a debug dump of the config.
impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .field("top_window_s", &self.top_window_s)
            .field("top_capacity", &self.top_capacity)
            .finish()
    }
}

/// `[model]`: the trained classifier and how its score joins the rules'.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model file `riskgate train` wrote, relative to the config file.
    pub path: Spanned<PathBuf>,
    /// `enforce`: the model's score counts; `shadow`: scored and recorded only.
    /// A route's own `model` key overrides it.
    #[serde(default = "default_model_mode")]
    pub mode: ModelMode,
    /// How the model's score joins the rules' score.
    #[serde(default)]
    pub combine: Combine,
    /// The model's calibrated probability is multiplied by this before combining.
    #[serde(default = "default_model_weight")]
    pub weight: f64,
    /// The model's score counts only from this value up (below it, the model is not
    /// sure enough to add to the rules): a floor on its own evidence.
    #[serde(default)]
    pub min_score: f64,
    /// `model:FEATURE` reasons are added when the model's score is at least this.
    #[serde(default = "default_reason_threshold")]
    pub reason_threshold: f64,
    /// How many `model:FEATURE` reasons at most.
    #[serde(default = "default_top_features")]
    pub top_features: usize,
}

fn default_model_mode() -> ModelMode {
    ModelMode::Enforce
}
fn default_model_weight() -> f64 {
    1.0
}
fn default_reason_threshold() -> f64 {
    0.5
}
fn default_top_features() -> usize {
    3
}

/// Whether a route uses the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelMode {
    Enforce,
    Shadow,
    Off,
}

impl ModelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelMode::Enforce => "enforce",
            ModelMode::Shadow => "shadow",
            ModelMode::Off => "off",
        }
    }
}

/// How the model's score and the rules' score make the request's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Independent evidence, like rules: 1 − (1 − rules)(1 − weight × model).
    #[default]
    NoisyOr,
    /// The larger of the two.
    Max,
}

impl Combine {
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::NoisyOr => "noisy_or",
            Combine::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: Spanned<String>,
}

/// An identity field in config: a source, or `"none"` to switch a default off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityField {
    Off,
    From(Source),
}

impl<'de> Deserialize<'de> for IdentityField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(IdentityField::Off);
        }
        s.parse().map(IdentityField::From).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub user: Option<IdentityField>,
    pub device: Option<IdentityField>,
    pub phone: Option<IdentityField>,
    pub campaign: Option<IdentityField>,
    pub inviter: Option<IdentityField>,
    pub amount: Option<IdentityField>,
    pub pay_account: Option<IdentityField>,
    pub address: Option<IdentityField>,
    pub user_agent: Option<IdentityField>,
    pub app_version: Option<IdentityField>,
}

/// Knobs of the signals stage that depend on the campaign.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    /// Spend thresholds of the campaign's coupons ("100 off 20" → 100).
    pub order_thresholds: Vec<f64>,
    /// An amount within this fraction above a threshold is "just above" it.
    pub just_above_ratio: f64,
    /// An account younger than this (seconds) is brand new when it assists an inviter.
    pub new_account_s: u64,
    /// The oldest app release still in use ("3.9.0"); older or unparseable versions are
    /// stale (captured requests replayed by a script). Empty: nothing is stale.
    pub min_app_version: AppVersionFloor,
    /// Leading characters of a device id that device-id generators leave alike; 0 turns
    /// `prefix_new_devices_*` off.
    pub device_prefix_len: usize,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            order_thresholds: Vec::new(),
            just_above_ratio: 0.05,
            new_account_s: 600,
            min_app_version: AppVersionFloor::default(),
            device_prefix_len: 8,
        }
    }
}

/// `signals.min_app_version` as written, and parsed once, when the config is read:
/// every request with an app version is compared with it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppVersionFloor {
    /// Empty: nothing is stale.
    pub text: String,
    /// `text` as a version; `None` when it is empty or not one (the config check refuses
    /// the latter).
    pub parts: Option<[u32; 4]>,
}

impl<'de> Deserialize<'de> for AppVersionFloor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let parts = crate::signals::version_parts(&text);
        Ok(AppVersionFloor { text, parts })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub mode: Option<Mode>,
    pub review: f64,
    pub challenge: f64,
    pub block: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    pub block: ResponseConfig,
    pub challenge: ResponseConfig,
    pub rate_limit: ResponseConfig,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            block: ResponseConfig {
                status: 403,
                code: "blocked".into(),
                message: "request refused".into(),
            },
            challenge: ResponseConfig {
                status: 428,
                code: "challenge_required".into(),
                message: "verification required".into(),
            },
            rate_limit: ResponseConfig {
                status: 429,
                code: "rate_limited".into(),
                message: "too many requests".into(),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    pub status: u16,
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The kind of campaign action a route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Coupon,
    Checkin,
    Referral,
    Redpacket,
    Order,
    Browse,
    Other,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Coupon => "coupon",
            Action::Checkin => "checkin",
            Action::Referral => "referral",
            Action::Redpacket => "redpacket",
            Action::Order => "order",
            Action::Browse => "browse",
            Action::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    pub action: Action,
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Overrides `state.on_error` for this route.
    #[serde(default)]
    pub on_state_error: Option<OnStateError>,
    /// Overrides `state.timeout_ms` for this route.
    #[serde(default)]
    pub state_timeout_ms: Option<u64>,
    /// Overrides `[model] mode` for this route (`enforce`, `shadow` or `off`).
    #[serde(default)]
    pub model: Option<Spanned<ModelMode>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub key: Spanned<String>,
    pub rate: Rate,
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
    #[serde(default = "default_limit_decision")]
    pub decision: Spanned<String>,
    #[serde(default)]
    pub shadow: bool,
}

fn default_limit_decision() -> Spanned<String> {
    Spanned::new(0..0, "block".to_string())
}

/// A rate written as `N/s`, `N/min`, `N/h` or `N/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per_ms: u64,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("rate `{s}` must look like `10/s`, `30/min`, `100/h` or `500/day` with a count above 0");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count = n.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        let per_ms = match unit.trim() {
            "s" | "sec" | "second" => 1_000,
            "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            "day" | "d" => 86_400_000,
            _ => return Err(bad()),
        };
        Ok(Rate { count, per_ms })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "min",
            3_600_000 => "h",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Spanned<String>,
    pub when: Spanned<String>,
    pub score: Spanned<f64>,
    #[serde(default)]
    pub description: String,
    /// Route names the rule applies to; all scored routes when absent.
    #[serde(default)]
    pub routes: Option<Vec<Spanned<String>>>,
    /// Action kinds the rule applies to; all when absent.
    #[serde(default)]
    pub actions: Option<Vec<Action>>,
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    pub name: Spanned<String>,
    pub kind: ListKind,
    pub action: ListAction,
    pub file: Spanned<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    User,
    Device,
    Phone,
    Ip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListAction {
    Allow,
    Block,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Everything wrong with a config file, each problem with its line and key.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} problem{} in {}",
            n,
            if n == 1 { "" } else { "s" },
            self.file.display()
        )?;
        for p in &self.problems {
            let at = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            let key = if p.key.is_empty() {
                String::new()
            } else {
                format!(" {}:", p.key)
            };
            write!(f, "\n  {}{at}:{key} {}", self.file.display(), p.message)?;
        }
        Ok(())
    }
}

/// Parses config text. `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str::<ConfigFile>(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line,
                key: String::new(),
                message: e.message().trim().to_string(),
            }],
        }
    })
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The default config for the reference campaign API, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/riskgate.toml");

/// The shipped model the default config names, embedded for the demo.
pub const DEFAULT_MODEL: &str = include_str!("../models/riskgate-default.model.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("10/s".parse::<Rate>().unwrap().per_ms, 1_000);
        assert_eq!("30/min".parse::<Rate>().unwrap().count.get(), 30);
        assert_eq!("5 / day".parse::<Rate>().unwrap().per_ms, 86_400_000);
        for bad in ["0/s", "10", "x/min", "10/week"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_errors_name_line_and_key() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n";
        let err = parse(Path::new("x.toml"), text).unwrap_err();
        assert_eq!(err.problems[0].line, Some(3));
        assert!(err.problems[0].message.contains("unknown field `lisen`"), "{err}");
        assert!(err.to_string().contains("x.toml:3:"), "{err}");
    }

    #[test]
    fn bad_sources_fail_at_their_line() {
        let text = "[identity]\nuser = \"header:x-user-id\"\ndevice = \"body:x\"\n";
        let err = parse(Path::new("x.toml"), text).unwrap_err();
        assert_eq!(err.problems[0].line, Some(3));
        assert!(
            err.problems[0].message.contains("unknown identity source kind"),
            "{err}"
        );
    }
}
