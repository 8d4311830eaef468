//! The command line of DESIGN.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "riskgate",
    version,
    about = "Anti-fraud risk-scoring gateway for marketing campaigns"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: proxy listener, admin listener (/metrics, /healthz, /readyz).
    Serve {
        /// The TOML config file (see config/riskgate.toml).
        #[arg(long, default_value = "config/riskgate.toml")]
        config: PathBuf,
        /// Proxy listen address, overriding server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listen address, overriding server.admin_listen.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Upstream URL for every route, overriding the config's upstreams.
        #[arg(long)]
        upstream: Option<String>,
        /// Decide, record and count, but forward everything.
        #[arg(long)]
        shadow: bool,
        /// State backend: `memory` or `redis://HOST:PORT`, instead of the config's
        /// `[state] backend` (which is used when this is absent).
        #[arg(long)]
        state: Option<String>,
    },
    /// Validate a config file (and its list files) and print what it does.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Run events through the pipeline in event time: one decision record per event.
    /// With --baseline, also report what changes between the two configs (a backtest).
    Replay {
        /// The config to replay with (the candidate, when --baseline is given).
        #[arg(long)]
        config: PathBuf,
        /// Events, JSONL (`.jsonl.gz` is decompressed; `-` is stdin).
        #[arg(long)]
        input: String,
        /// Decision records, JSONL (`.gz` is compressed; `-` is stdout).
        #[arg(long)]
        output: String,
        /// The config in production now: report the decisions that would flip.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Also write the summary (and diff) as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Fail on the first line that is not an event, instead of skipping it.
        #[arg(long)]
        strict: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Also write each scored request's features as CSV (for analysis and training).
        #[arg(long)]
        features_out: Option<PathBuf>,
        /// State backend: `memory` (the default) or `redis://HOST:PORT` (a fresh key
        /// namespace on that server; decisions match the memory backend's).
        #[arg(long)]
        state: Option<String>,
    },
    /// Generate labelled synthetic campaign traffic as events (JSONL).
    Simulate {
        /// A built-in scenario (default, demo, small) or a scenario TOML file.
        #[arg(long, default_value = "default")]
        scenario: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write events (`.gz` is compressed; `-` is stdout).
        #[arg(long)]
        out: String,
        /// Multiply population and crew sizes.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Event time of the scenario's start, in ms since the epoch.
        #[arg(long, default_value_t = 1_762_819_200_000)]
        start_ms: u64,
    },
    /// Train the classifier on labelled traffic and write a model file (see models/README.md).
    Train {
        /// Labelled events (`riskgate simulate` output), or audit-log decision records with
        /// embedded events (`[audit] capture_events = true`); JSONL, `.gz`, `-`. Repeatable.
        #[arg(long, required = true)]
        input: Vec<String>,
        /// request id → label, JSONL: `{"request_id": "r-1", "fraud": true, "kind": "refunded_order"}`;
        /// overrides labels carried by the input.
        #[arg(long)]
        labels: Option<String>,
        /// Where to write the model file (JSON).
        #[arg(long)]
        out: PathBuf,
        /// The config whose routes, identities and signal settings build the features.
        #[arg(long, default_value = "config/riskgate.toml")]
        config: PathBuf,
        /// Seed of the forest and of the training subsample.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Earliest share of labelled requests used for training (the rest evaluates).
        #[arg(long, default_value_t = 0.7)]
        train_share: f64,
        /// Training rows kept at most (deterministic subsample, fraud first).
        #[arg(long, default_value_t = 60_000)]
        max_train_rows: usize,
        /// Trees in the random forest.
        #[arg(long, default_value_t = 40)]
        trees: u16,
        /// Depth limit of each tree.
        #[arg(long, default_value_t = 12)]
        max_depth: u16,
        /// Take requests without a label as legitimate (default: leave them out of the
        /// rows; they still shape the features of the others).
        #[arg(long)]
        unlabelled_legit: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Watch the gateway catch fraud: a stub backend, the gateway on the default config,
    /// and a short simulated campaign over real HTTP.
    Demo {
        /// Wall-clock length of the campaign, in seconds.
        #[arg(long, default_value_t = 50)]
        duration: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The scenario to send.
        #[arg(long, default_value = "demo")]
        scenario: String,
    },
}
