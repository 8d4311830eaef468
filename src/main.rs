//! The `riskgate` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use riskgate::cli::{Cli, Command};
use riskgate::config::LogFormat;
use riskgate::server::{self, Overrides};
use riskgate::state::KeyHasher;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("riskgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file } => match riskgate::runtime::load(&file, &KeyHasher::seeded(0)) {
            Ok(rt) => {
                println!("{}: ok", file.display());
                print!("{}", rt.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Serve { config, listen, admin_listen, upstream, shadow, state } => {
            if state != "memory" {
                anyhow::bail!("--state {state}: only `memory` is available in this build");
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let overrides = Overrides { listen, admin_listen, upstream, shadow };
                // Logging is set up from the file before the full load, so that load
                // problems are reported in the configured format.
                let log = riskgate::config::parse(&config, &std::fs::read_to_string(&config).unwrap_or_default())
                    .map(|f| f.log)
                    .unwrap_or_default();
                init_logging(log.format, &log.level);
                let running = server::start(config, overrides).await?;
                let stop = running.stopper();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    let _ = stop.send(true);
                });
                running.wait().await;
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
