//! Memory under a device-id flood: `pipeline::assess` on a config (default
//! config/riskgate.toml, its memory budget and TTL) for N requests that each carry a
//! device id never seen before, as an attacker rotating device fingerprints would send.
//! Prints the state's accounted bytes, evictions and the process's RSS as it goes, and
//! the peak RSS (VmHWM) at the end. Exits 1 if the accounted state ever exceeds the budget.
//!
//! `cargo run --release -p riskgate-loadtest --bin flood -- --events 10000000`

use std::path::PathBuf;

use clap::Parser;
use riskgate::event::Event;
use riskgate::state::memory::ready;
use riskgate::state::{KeyHasher, MemoryState, StateStore};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "config/riskgate.toml")]
    config: PathBuf,
    /// New device ids to send (at most 100 million).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Accounts the flood comes from (the attacker's pool; user ids are reused).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Overrides the config's state.memory_budget_mb.
    #[arg(long)]
    budget_mb: Option<u64>,
    /// Requests per simulated second (the pipeline's clock is the event time).
    #[arg(long, default_value_t = 20_000)]
    per_second: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.events <= 100_000_000, "--events: at most 100 million");
    anyhow::ensure!(
        a.users > 0 && a.per_second > 0,
        "--users and --per-second must be above 0"
    );
    let hasher = KeyHasher::seeded(7);
    let rt = riskgate::runtime::load(&a.config, &hasher).map_err(|e| anyhow::anyhow!("{e}"))?;
    let budget_mb = a.budget_mb.unwrap_or(rt.state.memory_budget_mb);
    let budget = budget_mb * 1024 * 1024;
    let state = MemoryState::new(budget, rt.state.ttl_s * 1_000);
    let mut e: Event = serde_json::from_str(
        r#"{"ts_ms": 0, "method": "POST", "path": "/api/coupon/claim", "client_ip": "198.51.100.7",
            "headers": {"user-agent": "Mozilla/5.0 (Linux; Android 13) MicroMessenger/8.0.47",
                        "x-app-version": "8.0.47", "content-type": "application/json"},
            "body": {"campaign_id": "c-1111", "coupon_id": "new-user-50"}}"#,
    )?;
    let t0 = 1_762_819_200_000u64;
    let rss0 = status_kb("VmRSS");
    eprintln!(
        "flood: {} new device ids from {} accounts, budget {budget_mb} MiB, ttl {} s; RSS at start {} MiB",
        a.events,
        a.users,
        rt.state.ttl_s,
        rss0 / 1024
    );
    println!("events,state_mib,state_keys,evictions,rss_mib");
    let started = std::time::Instant::now();
    let mut over_budget = false;
    let step = (a.events / 20).max(1);
    for i in 0..a.events {
        e.ts_ms = t0 + i * 1_000 / a.per_second;
        e.client_ip = std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        e.headers.insert("x-user-id".into(), format!("u{}", i % a.users));
        e.headers.insert("x-device-id".into(), format!("flood-{i:x}"));
        let _ = ready(riskgate::pipeline::assess(&rt, &state, &hasher, &e));
        if (i + 1) % step == 0 || i + 1 == a.events {
            let tables = state.stats();
            let bytes: u64 = tables.iter().map(|t| t.bytes).sum();
            let keys: u64 = tables.iter().map(|t| t.keys).sum();
            let evictions: u64 = tables.iter().map(|t| t.evictions).sum();
            over_budget |= bytes > budget;
            println!(
                "{},{:.1},{keys},{evictions},{}",
                i + 1,
                bytes as f64 / 1048576.0,
                status_kb("VmRSS") / 1024
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for t in state.stats() {
        eprintln!(
            "  {:<10} {:>9} keys {:>7.1} MiB {:>10} evictions",
            t.table,
            t.keys,
            t.bytes as f64 / 1048576.0,
            t.evictions
        );
    }
    eprintln!(
        "done in {secs:.1} s ({:.0} events/s); peak RSS {} MiB (VmHWM), budget {budget_mb} MiB; state within budget: {}",
        a.events as f64 / secs,
        status_kb("VmHWM") / 1024,
        !over_budget
    );
    if over_budget {
        std::process::exit(1);
    }
    Ok(())
}

/// A field of /proc/self/status in KiB (0 where it cannot be read).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
