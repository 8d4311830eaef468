//! `loadtest`: HTTP/1.1 load against a loopback target; see `loadtest --help` and
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadtest::run::{self, Mode, Options};
use loadtest::schedule::Phase;
use loadtest::workload::{Dist, Synthetic, Workload};

#[derive(Parser)]
#[command(
    about = "HTTP/1.1 load generator for riskgate (loopback targets only)",
    after_help = "Examples:\n  loadtest --target http://127.0.0.1:8080 --max --connections 64 --duration 10\n  \
                  loadtest --target http://127.0.0.1:8080 --rate 5000 --duration 20 --json\n  \
                  loadtest --target http://127.0.0.1:8080 --rate 1000 --duration 12 --spike 10000 --spike-at 5 --spike-for 2\n  \
                  loadtest --target http://127.0.0.1:8080 --events events.jsonl --rate 2000 --duration 10"
)]
struct Args {
    /// http://HOST:PORT, HOST a loopback address or localhost.
    #[arg(long)]
    target: String,
    /// Closed loop: every connection sends back to back (maximum throughput).
    #[arg(long, conflicts_with = "rate")]
    max: bool,
    /// Open loop at this many requests per second, latency from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// With --rate: step to this rate at --spike-at for --spike-for seconds, then back.
    #[arg(long, requires = "rate")]
    spike: Option<f64>,
    #[arg(long, default_value_t = 5.0)]
    spike_at: f64,
    #[arg(long, default_value_t = 2.0)]
    spike_for: f64,
    /// Connections (also the most requests in flight).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Replay requests from this simulator event file (JSONL) instead of the synthetic space.
    #[arg(long)]
    events: Option<PathBuf>,
    /// At most this many events are read from --events.
    #[arg(long, default_value_t = 2_000_000)]
    events_limit: usize,
    /// Synthetic: number of accounts (x-user-id).
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Synthetic: number of devices (x-device-id).
    #[arg(long, default_value_t = 50_000)]
    devices: u32,
    /// Synthetic: how users are drawn: zipf or uniform.
    #[arg(long, default_value = "zipf")]
    dist: String,
    /// Synthetic: the Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Synthetic: every request carries a never-seen device id (a flood).
    #[arg(long)]
    unique_devices: bool,
    /// Synthetic: the request path (POST).
    #[arg(long, default_value = "/api/coupon/claim")]
    path: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator threads (1: a single-threaded runtime, the cheapest per request).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match real_main(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(a: Args) -> Result<ExitCode, String> {
    let target = loadtest::target::parse(&a.target)?;
    let mode = match (a.max, a.rate) {
        (true, _) => Mode::Max(Duration::from_secs_f64(a.duration.clamp(0.001, run::MAX_SECONDS))),
        (false, Some(rate)) => Mode::Fixed(phases(rate, a.duration, a.spike, a.spike_at, a.spike_for)?),
        (false, None) => return Err("give --max or --rate N".into()),
    };
    let workload = match &a.events {
        Some(path) => Workload::events(path, &target, a.events_limit)?,
        None => {
            let dist = match a.dist.as_str() {
                "zipf" => Dist::Zipf,
                "uniform" => Dist::Uniform,
                other => return Err(format!("--dist {other}: zipf or uniform")),
            };
            Workload::synthetic(
                &Synthetic {
                    users: a.users,
                    devices: a.devices,
                    dist,
                    zipf_s: a.zipf_s,
                    unique_devices: a.unique_devices,
                    seed: a.seed,
                    path: a.path.clone(),
                },
                &target,
            )?
        }
    };
    let opts = Options {
        target,
        mode,
        connections: a.connections,
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
    };
    // The servers' runtimes: its many connections open at once without stalling on the
    // kernel's descriptor-table growth.
    let rt = if a.threads <= 1 {
        loadtest::current_thread()
    } else {
        loadtest::runtime(a.threads)
    }
    .map_err(|e| e.to_string())?;
    let report = rt.block_on(run::run(opts, workload))?;
    if a.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The open-loop phases: constant, or constant with a spike in the middle.
fn phases(rate: f64, duration: f64, spike: Option<f64>, at: f64, len: f64) -> Result<Vec<Phase>, String> {
    let Some(peak) = spike else {
        return Ok(vec![Phase {
            seconds: duration,
            rate,
        }]);
    };
    if !(at > 0.0 && len > 0.0 && at + len < duration) {
        return Err("--spike-at and --spike-for must fall inside --duration".into());
    }
    Ok(vec![
        Phase { seconds: at, rate },
        Phase {
            seconds: len,
            rate: peak,
        },
        Phase {
            seconds: duration - at - len,
            rate,
        },
    ])
}
