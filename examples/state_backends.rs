//! Measures the gateway end to end on loopback with the memory and the Redis state
//! backend in the same run: throughput, p50/p99 latency seen by the client, and Redis
//! commands per request (INFO commandstats deltas). BENCHMARKS.md quotes its output.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release --example state_backends -- redis://127.0.0.1:6390 [SECONDS] [CONCURRENCY]
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use riskgate::server::{self, Overrides};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let redis_url = args.get(1).cloned().unwrap_or_else(|| "redis://127.0.0.1:6390".into());
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);

    // A stub campaign backend that answers at once.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_url = format!("http://{}", upstream.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    // The default config without the audit log (the disk is not what is measured).
    let dir = tempfile::tempdir()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = std::fs::read_to_string(root.join("riskgate.toml"))?.replace("enabled = true", "enabled = false");
    std::fs::create_dir_all(dir.path().join("lists"))?;
    for entry in std::fs::read_dir(root.join("lists"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join("lists").join(entry.file_name()))?;
    }
    let config = dir.path().join("riskgate.toml");
    std::fs::write(&config, text)?;

    let redis = redis::Client::open(redis_url.as_str())?;
    let mut con = redis.get_multiplexed_async_connection().await?;
    println!(
        "| backend | requests | requests/s | p50 | p99 | Redis round trips / request | Redis commands / request |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for state in ["memory".to_string(), redis_url.clone()] {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse()?),
            admin_listen: Some("127.0.0.1:0".parse()?),
            upstream: Some(upstream_url.clone()),
            ..Overrides::default()
        };
        let running = server::start_on(config.clone(), overrides, Some(state.clone())).await?;
        let addr = running.addr;
        // Warm up (connections, script cache), then measure.
        drive(addr, concurrency, Duration::from_secs(1), 0).await;
        let before = commandstats(&mut con).await?;
        let (latencies, elapsed) = drive(addr, concurrency, Duration::from_secs(seconds), 1_000_000).await;
        let after = commandstats(&mut con).await?;
        running.shutdown().await;

        let n = latencies.len();
        let mut sorted = latencies;
        sorted.sort_unstable();
        let pct = |p: f64| sorted.get(((n as f64 * p) as usize).min(n.saturating_sub(1))).copied();
        let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        let commands: u64 = after.keys().filter(|k| !k.starts_with("info")).map(|k| delta(k)).sum();
        let round_trips = delta("evalsha") + delta("eval");
        println!(
            "| {} | {n} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.1} |",
            if state == "memory" { "memory" } else { "redis" },
            n as f64 / elapsed.as_secs_f64(),
            pct(0.50).unwrap_or(0) as f64 / 1_000.0,
            pct(0.99).unwrap_or(0) as f64 / 1_000.0,
            round_trips as f64 / n.max(1) as f64,
            commands as f64 / n.max(1) as f64,
        );
    }
    Ok(())
}

/// `concurrency` keep-alive clients sending coupon claims for `duration`; returns each
/// request's latency in microseconds. Users and devices cycle over a population large
/// enough that limits stop only a few.
async fn drive(addr: std::net::SocketAddr, concurrency: usize, duration: Duration, seed: u64) -> (Vec<u64>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut latencies = Vec::new();
            let mut i = seed + w as u64 * 1_000_003;
            while started.elapsed() < duration {
                i += 1;
                let req = hyper::Request::post(format!("http://{addr}/api/coupon/claim"))
                    .header("x-user-id", format!("u-{}", i % 50_000))
                    .header("x-device-id", format!("d-{}", i % 40_000))
                    .header("x-app-version", "8.0.47")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        b"{\"campaign_id\":\"c-1\",\"coupon_id\":\"new-user-50\"}",
                    )))
                    .expect("valid request");
                let t = Instant::now();
                if let Ok(resp) = client.request(req).await {
                    let _ = resp.into_body().collect().await;
                    latencies.push(t.elapsed().as_micros() as u64);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    (all, started.elapsed())
}

/// Calls per command from INFO commandstats.
async fn commandstats(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(con).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}
