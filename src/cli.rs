//! The command line of DESIGN.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "riskgate", version, about = "Anti-fraud risk-scoring gateway for marketing campaigns")]
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
        /// State backend: `memory` (Redis arrives with the scale-out work).
        #[arg(long, default_value = "memory")]
        state: String,
    },
    /// Validate a config file (and its list files) and print what it does.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
}
