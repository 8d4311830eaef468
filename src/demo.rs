//! Demo: a stub campaign backend, the gateway on the embedded default config, and a
//! short simulated campaign sent through real HTTP, with a live table of what was stopped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::decide::Decision;
use crate::event::Event;
use crate::report::Tally;
use crate::server::{self, Overrides};
use crate::simulate::{self, Scenario};

#[derive(Debug, Clone)]
pub struct Options {
    /// Wall-clock length of the simulated campaign.
    pub duration: Duration,
    pub seed: u64,
    pub scenario: String,
    /// Seconds between live tables.
    pub every: Duration,
}

/// A stand-in campaign backend: answers every request 200 `{"ok":true}`.
pub async fn stub_backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the demo and returns the final tally (by label kind, from the HTTP answers).
pub async fn run(opts: &Options) -> anyhow::Result<Tally> {
    let dir = tempfile_dir()?;
    // The repository's layout, so that the config's relative model path holds.
    let config_dir = dir.join("config");
    let config_path = config_dir.join("riskgate.toml");
    std::fs::create_dir_all(config_dir.join("lists"))?;
    std::fs::create_dir_all(dir.join("models"))?;
    std::fs::write(&config_path, demo_config(crate::config::DEFAULT_TOML))?;
    std::fs::write(
        dir.join("models").join("riskgate-default.model.json"),
        crate::config::DEFAULT_MODEL,
    )?;
    for list in ["blocked_devices.txt", "blocked_ips.txt", "allowed_users.txt"] {
        std::fs::write(config_dir.join("lists").join(list), "")?;
    }
    let backend = stub_backend().await?;
    let overrides = Overrides {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        upstream: Some(format!("http://{backend}")),
        shadow: false,
        // The driver speaks for many simulated clients through one loopback socket and
        // names each in X-Forwarded-For, as a load balancer would.
        trusted_proxies: Some(vec!["127.0.0.1/32".parse()?]),
    };
    let running = server::start(config_path, overrides)
        .await
        .context("starting the gateway")?;
    let scenario = Scenario::load(&opts.scenario).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start_ms = now_ms();
    let mut events = simulate::generate(&scenario, opts.seed, start_ms);
    let span_ms = events
        .last()
        .map(|e| e.ts_ms.saturating_sub(start_ms))
        .unwrap_or(0)
        .max(1);
    let stretch = opts.duration.as_millis() as f64 / span_ms as f64;
    for e in &mut events {
        e.ts_ms = start_ms + ((e.ts_ms - start_ms) as f64 * stretch) as u64;
    }

    eprintln!(
        "riskgate demo: gateway http://{}  backend http://{backend}  metrics http://{}/metrics",
        running.addr, running.admin_addr
    );
    eprintln!(
        "sending {} simulated requests over {:.0} s (scenario `{}`, seed {})",
        events.len(),
        opts.duration.as_secs_f64(),
        opts.scenario,
        opts.seed
    );
    eprintln!(
        "the trained model and {} run in shadow here: a campaign squeezed into seconds is not the traffic they were made for\n",
        SQUEEZED_RULES.join(", ")
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let inflight = Arc::new(Semaphore::new(256));
    let origin = Instant::now();
    let mut next_table = origin + opts.every;
    let mut sends = tokio::task::JoinSet::new();
    // The gateway's own routes say which requests it scores (browsing is only counted).
    let rt = running.gateway.runtime.load_full();
    for event in events {
        let route = http::Method::from_bytes(event.method.as_bytes())
            .ok()
            .and_then(|m| rt.route(&m, &event.path));
        let (route_name, scored) = match route {
            Some(i) => (rt.routes[i].name.clone(), rt.routes[i].scored),
            None => ("unmatched".to_string(), false),
        };
        let due = origin + Duration::from_millis(event.ts_ms - start_ms);
        while next_table < due {
            tokio::time::sleep_until(next_table).await;
            print_table(&tally, origin);
            next_table += opts.every;
        }
        tokio::time::sleep_until(due).await;
        let permit = inflight.clone().acquire_owned().await?;
        let (client, tally, errors, addr) = (client.clone(), tally.clone(), errors.clone(), running.addr);
        sends.spawn(async move {
            let outcome = send(&client, addr, &event).await;
            drop(permit);
            match outcome {
                Ok(decision) => lock(&tally).add(&route_name, decision, &[], event.label.as_ref(), scored),
                Err(e) => *lock(&errors).entry(e).or_default() += 1,
            }
        });
    }
    while sends.join_next().await.is_some() {}
    running.shutdown().await;
    let tally = lock(&tally).clone();
    println!(
        "\nfinal: {} requests in {:.1} s\n{}",
        tally.events,
        origin.elapsed().as_secs_f64(),
        tally.render_kinds()
    );
    let c = tally.confusion;
    println!(
        "fraud requests stopped: {:.1}%   legitimate requests wrongly stopped: {:.2}%",
        c.recall() * 100.0,
        c.false_positive_rate() * 100.0
    );
    let errors = lock(&errors);
    if !errors.is_empty() {
        println!("transport errors: {errors:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(tally)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn print_table(tally: &Mutex<Tally>, origin: Instant) {
    let t = lock(tally);
    println!(
        "t = {:>4.0} s, {} requests\n{}",
        origin.elapsed().as_secs_f64(),
        t.events,
        t.render_kinds()
    );
}

/// Sends one event as the client it describes; the answer's status tells the decision.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    e: &Event,
) -> Result<Decision, String> {
    let query = if e.query.is_empty() {
        String::new()
    } else {
        format!("?{}", e.query)
    };
    let mut req = Request::builder()
        .method(e.method.as_str())
        .uri(format!("http://{addr}{}{query}", e.path));
    for (k, v) in &e.headers {
        req = req.header(k, v);
    }
    req = req.header("x-forwarded-for", e.client_ip.to_string());
    let body = e.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    match status {
        200..=299 => Ok(Decision::Allow),
        428 => Ok(Decision::Challenge),
        403 | 429 => Ok(Decision::Block),
        other => Err(format!("status {other}")),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The default config with its model in shadow: the demo squeezes a campaign into
/// seconds, a pace the model never saw in training (its per-minute counts and gaps are
/// far from real traffic's), so it is scored and recorded but does not act — the way
/// a new model is watched before it is promoted.
/// The default config with the model and `SQUEEZED_RULES` in shadow.
fn demo_config(default: &str) -> String {
    let mut text = default.to_string();
    for rule in SQUEEZED_RULES {
        let name = format!("\nname = \"{rule}\"\n");
        if let Some(at) = text.find(&name) {
            text.insert_str(at + name.len(), "shadow = true\n");
        }
    }
    let Some(at) = text.find("\n[model]\n") else {
        return text;
    };
    let (head, tail) = text.split_at(at);
    format!(
        "{head}{}",
        tail.replacen("\nmode = \"enforce\"", "\nmode = \"shadow\"", 1)
    )
}

/// Rules that compare one network's last minute with everyone's: squeezed a thousandfold,
/// a minute of the demo holds hours of the campaign, and an office's day of new phones
/// looks like a crew's minute.
const SQUEEZED_RULES: [&str; 1] = ["new_phones_on_one_network"];

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("riskgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_shadows_the_model_and_the_squeezed_rules_only() {
        let text = super::demo_config(crate::config::DEFAULT_TOML);
        let model = &text[text.find("\n[model]\n").unwrap()..];
        assert!(model.contains("\nmode = \"shadow\""), "{model}");
        assert!(
            text.contains("\nmode = \"enforce\"\n"),
            "server and routes keep their mode"
        );
        assert_eq!(text.matches("\nmode = \"shadow\"").count(), 1);
        for rule in super::SQUEEZED_RULES {
            let at = text
                .find(&format!("\nname = \"{rule}\"\n"))
                .expect("the rule is in the default config");
            let block = &text[at..text[at + 1..].find("\n[").map_or(text.len(), |end| at + 1 + end)];
            assert!(block.contains("\nshadow = true\n"), "{block}");
        }
        crate::config::parse(std::path::Path::new("riskgate.toml"), &text).expect("the demo config is valid");
    }
}
