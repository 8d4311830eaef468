//! The SRE kit against the real tools: a real Prometheus server (Debian's `prometheus`
//! package, installed by .ci/run) scrapes a running gateway on loopback and its HTTP API
//! returns riskgate's series; `promtool check metrics` accepts /metrics; `promtool test
//! rules` passes the alert unit tests; every metric the alerts and the dashboard name is
//! one riskgate exports. Skipped with a message when the binaries are absent.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn have(binary: &str) -> bool {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!(
            "SKIPPED: `{binary}` not found; install it with `apt-get install -y prometheus` (.ci/run does) to run this test"
        );
    }
    found
}

/// Some traffic so that every kind of series has a value: allowed, blocked and browsed.
async fn traffic(c: &TestClient, addr: std::net::SocketAddr) {
    browse(c, addr, "u1", "d1").await;
    assert_eq!(claim(c, addr, "u1", "d1", &[]).await.status, 200);
    // Four accounts on one device: the default device-farm rule stops them.
    let mut stopped = 0;
    for i in 0..8 {
        let user = format!("farm-{i}");
        browse(c, addr, &user, "farm-device").await;
        if claim(c, addr, &user, "farm-device", &[]).await.status.is_client_error() {
            stopped += 1;
        }
    }
    assert!(stopped > 0, "the device farm was never stopped");
}

/// The default config's gateway after `traffic`; the upstream and config dir must live
/// as long as the gateway.
async fn with_traffic() -> (Upstream, ConfigDir, riskgate::server::Running, TestClient) {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::default_config();
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    traffic(&c, gw.addr).await;
    (up, cfg, gw, c)
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_the_alert_tests_pass() {
    if !have("promtool") {
        return;
    }
    let (_up, _cfg, gw, c) = with_traffic().await;
    let text = metrics(&c, gw.admin_addr).await;
    gw.shutdown().await;

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus");
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names (`riskgate_…`) used in a text, with histogram suffixes taken off.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("riskgate_") {
        // Recording-rule names (`riskgate:…`) and label values are not metrics.
        if i > 0 && text.as_bytes()[i - 1] == b':' {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map(str::to_string)
            .unwrap_or(name);
        names.insert(name);
    }
    names
}

#[tokio::test]
async fn alerts_and_dashboard_name_only_exported_metrics() {
    let (_up, _cfg, gw, c) = with_traffic().await;
    let exported = names_in(
        &metrics(&c, gw.admin_addr)
            .await
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    gw.shutdown().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for file in ["prometheus/alerts.yml", "grafana/riskgate.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = names_in(&text);
        assert!(!used.is_empty(), "{file}");
        for name in used {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which riskgate does not export"
            );
        }
    }
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana/riskgate.json")).unwrap()).unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "Decisions by route",
        "Block and challenge",
        "Score distribution",
        "Gateway overhead vs upstream",
        "Tracked keys",
        "Evictions",
        "reloads",
        "Model",
        "Top offenders",
    ] {
        assert!(
            titles.iter().any(|t| t.to_lowercase().contains(&wanted.to_lowercase())),
            "no panel for {wanted}: {titles:?}"
        );
    }
}

/// Asks Prometheus' HTTP API for an instant query; the `data.result` array.
async fn query(c: &TestClient, prom: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "http://{prom}/api/v1/query?query={}",
        form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    // Prometheus may not listen yet: a refused connection is an empty answer.
    let req = http::Request::get(url).body(Default::default()).unwrap();
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), c.request(req)).await else {
        return Vec::new();
    };
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway() {
    if !have("prometheus") {
        return;
    }
    let (_up, _cfg, gw, c) = with_traffic().await;

    // Prometheus on a free loopback port, scraping the admin listener every second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prom_addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/alerts.yml");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: riskgate\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            gw.admin_addr
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();

    // Wait (bounded) until a scrape has landed: `up` is 1 and requests are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut requests = Vec::new();
    while Instant::now() < deadline {
        let upq = query(&c, &prom_addr, r#"up{job="riskgate"}"#).await;
        if upq.first().map(value) == Some(1.0) {
            requests = query(&c, &prom_addr, "riskgate_requests_total").await;
            if requests.iter().any(|s| value(s) > 0.0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        !requests.is_empty(),
        "Prometheus never scraped the gateway; its log:\n{}",
        log()
    );

    // Sane values: the allowed and stopped coupon claims, and the browsing, as sent.
    let sum = |route: &str, decisions: &[&str]| -> f64 {
        requests
            .iter()
            .filter(|s| s["metric"]["route"] == route && decisions.iter().any(|d| s["metric"]["decision"] == *d))
            .map(value)
            .sum()
    };
    assert_eq!(
        sum("coupon_claim", &["allow", "review", "challenge", "block"]),
        9.0,
        "{requests:?}"
    );
    assert!(sum("coupon_claim", &["challenge", "block"]) >= 1.0, "{requests:?}");
    assert!(requests.iter().all(|s| s["metric"]["job"] == "riskgate"));
    let keys = query(&c, &prom_addr, "sum(riskgate_state_tracked_keys)").await;
    assert!(keys.first().map(value).unwrap_or(0.0) > 0.0, "{keys:?}");
    let budget = query(&c, &prom_addr, "riskgate_state_memory_budget_bytes").await;
    assert_eq!(budget.first().map(value), Some((256u64 << 20) as f64), "{budget:?}");
    let p99 = query(
        &c,
        &prom_addr,
        "histogram_quantile(0.99, sum by (le) (riskgate_decision_duration_seconds_bucket))",
    )
    .await;
    let p99 = p99.first().map(value).unwrap_or(f64::NAN);
    assert!(p99 > 0.0 && p99 <= 0.01, "decision p99 {p99}");
    let offenders = query(
        &c,
        &prom_addr,
        r#"riskgate_top_offender_stopped{kind="device",rank="1"}"#,
    )
    .await;
    assert!(offenders.first().map(value).unwrap_or(0.0) >= 1.0, "{offenders:?}");
    // The alert rules loaded and evaluate.
    let a = send(&c, "GET", &format!("http://{prom_addr}/api/v1/rules"), &[], "").await;
    assert!(
        a.body.contains("RiskgateBlockRateJump") && a.body.contains(r#""health":"ok""#),
        "{}",
        a.body
    );

    let _ = prom.kill();
    let _ = prom.wait();
    gw.shutdown().await;
}
