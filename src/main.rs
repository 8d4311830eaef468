//! The `riskgate` binary: parses the command line and hands over to the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use riskgate::cli::{Cli, Command};
use riskgate::config::LogFormat;
use riskgate::server::{self, Overrides};
use riskgate::state::KeyHasher;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                if let Some(error) = rt.model_error() {
                    print!("{}", rt.summary());
                    eprintln!("{}: the model file is refused: {error}", file.display());
                    return Ok(ExitCode::from(1));
                }
                println!("{}: ok", file.display());
                print!("{}", rt.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Replay {
            config,
            input,
            output,
            baseline,
            report,
            strict,
            quiet,
            features_out,
            state,
        } => {
            let opts = riskgate::replay::Options {
                config,
                input,
                output,
                baseline,
                report,
                strict,
                progress: !quiet,
                features_out,
                state,
            };
            let outcome = riskgate::replay::run(&opts)?;
            eprint!("{}", outcome.summary.render());
            if let Some(diff) = &outcome.diff {
                eprint!("\n{}", diff.render());
            }
            eprintln!(
                "\nreplayed {} events in {:.2} s ({:.0} events/s)",
                outcome.summary.events, outcome.seconds, outcome.events_per_second
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            scenario,
            seed,
            out,
            scale,
            start_ms,
        } => {
            let started = std::time::Instant::now();
            let mut sc = riskgate::simulate::Scenario::load(&scenario).map_err(|e| anyhow::anyhow!("{e}"))?;
            if scale != 1.0 {
                anyhow::ensure!(scale > 0.0 && scale.is_finite(), "--scale must be above 0");
                sc = sc.scaled(scale);
            }
            eprintln!("generating scenario `{scenario}` (seed {seed}, scale {scale})...");
            let events = riskgate::simulate::generate(&sc, seed, start_ms);
            let mut w = riskgate::replay::open_output(&out)?;
            for e in &events {
                serde_json::to_writer(&mut w, e)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            drop(w);
            eprintln!("{:<24} {:>6} {:>9}", "label kind", "fraud", "events");
            for (kind, fraud, n) in riskgate::simulate::census(&events) {
                eprintln!("{kind:<24} {fraud:>6} {n:>9}");
            }
            eprintln!(
                "{} events written to {out} in {:.1} s",
                events.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            input,
            labels,
            out,
            config,
            seed,
            train_share,
            max_train_rows,
            trees,
            max_depth,
            unlabelled_legit,
            quiet,
        } => {
            let opts = riskgate::train::Options {
                inputs: input,
                labels,
                config,
                out,
                seed,
                train_share,
                max_train_rows,
                trees,
                max_depth,
                unlabelled_legit,
                progress: !quiet,
            };
            let outcome = riskgate::train::run(&opts)?;
            let test = &outcome.test[&outcome.chosen];
            eprintln!(
                "trained {} in {:.1} s: test PR-AUC {:.4}, ROC-AUC {:.4}, recall at 0.5% FPR {:.4}",
                outcome.chosen, outcome.seconds, test.pr_auc, test.roc_auc, test.recall_at_fpr_0_5pct
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            duration,
            seed,
            scenario,
        } => {
            init_logging(LogFormat::Text, "warn");
            // While this is the only thread: `fd_table`.
            let fds = riskgate::fd_table::prepare();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            report_fds(fds);
            let opts = riskgate::demo::Options {
                duration: std::time::Duration::from_secs(duration.max(1)),
                seed,
                scenario,
                every: std::time::Duration::from_secs(if duration <= 10 { 2 } else { 10 }),
            };
            rt.block_on(riskgate::demo::run(&opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            config,
            listen,
            admin_listen,
            upstream,
            shadow,
            state,
        } => {
            // While this is the only thread: `fd_table`.
            let fds = riskgate::fd_table::prepare();
            let rt = serve_runtime()?;
            rt.block_on(async move {
                let overrides = Overrides {
                    listen,
                    admin_listen,
                    upstream,
                    shadow,
                    trusted_proxies: None,
                };
                // Logging is set up from the file before the full load, so that load
                // problems are reported in the configured format.
                let log = riskgate::config::parse(&config, &std::fs::read_to_string(&config).unwrap_or_default())
                    .map(|f| f.log)
                    .unwrap_or_default();
                init_logging(log.format, &log.level);
                report_fds(fds);
                let stopping = shutdown_signal();
                let running = server::start_on(config, overrides, state).await?;
                let stop = running.stopper();
                tokio::spawn(async move {
                    stopping.await;
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

fn report_fds(p: riskgate::fd_table::Prepared) {
    if p.room == 0 {
        tracing::warn!(
            open_files_limit = p.limit,
            "cannot grow the descriptor table up front; it grows on demand"
        );
    } else {
        tracing::info!(
            open_files_limit = p.limit,
            raised_from = p.limit_before,
            descriptor_room = p.room,
            "descriptor table prepared"
        );
    }
}

/// The serving runtime: one worker per core, or `RISKGATE_WORKERS` workers (the
/// benchmark pins riskgate to one core with one worker). One worker is a
/// current-thread runtime: the same single thread without the work-stealing
/// scheduler's bookkeeping and cross-thread wake-ups (about 3 µs of CPU per request
/// less in BENCHMARKS.md).
fn serve_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Ok(v) = std::env::var("RISKGATE_WORKERS") {
        let n: usize = v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow::anyhow!("RISKGATE_WORKERS={v}: a number above 0"))?;
        if n == 1 {
            return Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?);
        }
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().build()?)
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM or SIGINT, registered when called rather than when first polled: it is
/// called before the gateway listens, so a SIGTERM that arrives as soon as it accepts
/// connections drains them instead of killing the process. (CI once saw the gateway
/// die of a SIGTERM, which only a signal that arrives before registration can do.)
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use riskgate::reload::delivered;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = delivered(&mut term) => {}
                _ = delivered(&mut int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
