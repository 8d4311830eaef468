//! The inline path end to end: the real gateway between a test client and a stub
//! campaign backend, all on 127.0.0.1 with ephemeral ports.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn allowed_request_reaches_upstream_intact_with_risk_headers() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(""));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let body = r#"{"campaign_id":"c-1","coupon_id":"new-user-50"}"#;
    let a = send(
        &c,
        "POST",
        &format!("http://{}/api/coupon/claim?x=1&y=%20", gw.addr),
        &[
            ("x-user-id", "u1"),
            ("x-device-id", "d1"),
            ("x-app-version", "8.0.47"),
            ("x-request-id", "req-abc"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, r#"{"ok":true}"#);
    assert_eq!(a.headers["x-request-id"], "req-abc");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, "/api/coupon/claim?x=1&y=%20");
    assert_eq!(s.body, body.as_bytes());
    assert_eq!(s.header("x-user-id"), Some("u1"));
    assert_eq!(s.header("x-app-version"), Some("8.0.47"));
    assert_eq!(s.header("x-request-id"), Some("req-abc"));
    assert_eq!(s.header("x-risk-decision"), Some("allow"));
    assert_eq!(s.header("x-risk-score"), Some("0.000"));
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-hop"), None, "headers named in Connection are hop-by-hop");
    gw.shutdown().await;
}

#[tokio::test]
async fn client_sent_risk_headers_never_reach_upstream() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(""));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let forged = [
        ("x-risk-score", "0.000"),
        ("x-risk-decision", "allow"),
        ("x-risk-reasons", "trusted"),
    ];
    // On a scored route, and on a path no route matches (forwarded unscored).
    claim(&c, gw.addr, "u1", "d1", &forged).await;
    send(&c, "GET", &format!("http://{}/static/app.js", gw.addr), &forged, "").await;
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-risk-score"], vec!["0.000"]);
    assert_eq!(seen[0].headers.get("x-risk-reasons"), None);
    for s in &seen[1..] {
        for h in ["x-risk-score", "x-risk-decision", "x-risk-reasons"] {
            assert_eq!(s.headers.get(h), None, "{h} leaked to upstream on {}", s.path);
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_device_over_its_limit_is_stopped_on_the_next_request() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(
        r#"
[[routes.limits]]
key = "device"
rate = "3/h"
burst = 3
"#,
    ));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    for i in 0..3 {
        let a = claim(&c, gw.addr, &format!("u{i}"), "dev-limit", &[]).await;
        assert_eq!(a.status, 200, "request {i} is within the limit");
    }
    let a = claim(&c, gw.addr, "u9", "dev-limit", &[]).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        !a.body.contains("score") && !a.body.contains("limit:"),
        "no score or reason leaks: {}",
        a.body
    );
    // Another device is unaffected.
    assert_eq!(claim(&c, gw.addr, "u9", "dev-other", &[]).await.status, 200);
    assert_eq!(up.seen().len(), 4);
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            r#"riskgate_limit_hits_total{limit="coupon_claim_device",mode="enforce",route="coupon_claim"}"#
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_default_config_blocks_a_device_with_many_accounts() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::default_rules_only();
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let mut statuses = vec![];
    for user in ["farm-1", "farm-2", "farm-3", "farm-4", "farm-5"] {
        statuses.push(farm_visit(&c, gw.addr, user, "farm-phone").await.status.as_u16());
    }
    // Two accounts on one phone pass, the third is flagged for review (forwarded), the
    // fourth and later are blocked by device_many_accounts.
    assert_eq!(statuses, vec![200, 200, 200, 403, 403]);
    let claims: Vec<_> = up.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(claims.len(), 3);
    assert_eq!(claims[2].header("x-risk-decision"), Some("review"));
    assert_eq!(claims[2].header("x-risk-reasons"), Some("device_shared_accounts"));
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            r#"riskgate_rule_hits_total{mode="enforce",rule="device_many_accounts"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"riskgate_requests_total{decision="block",route="coupon_claim"}"#),
        Some(2.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn shadow_mode_forwards_everything_but_records_the_decision() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::default_rules_only();
    let gw = gateway(&cfg, &up.url(), true).await;
    let c = client();
    for user in ["s-1", "s-2", "s-3", "s-4", "s-5"] {
        assert_eq!(farm_visit(&c, gw.addr, user, "shadow-phone").await.status, 200);
    }
    let seen: Vec<_> = up.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(seen.len(), 5);
    // The upstream sees a stopped request as review, with its reasons.
    assert_eq!(seen[4].header("x-risk-decision"), Some("review"));
    assert!(seen[4]
        .header("x-risk-reasons")
        .unwrap()
        .contains("device_many_accounts"));
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_requests_total{decision="block",route="coupon_claim"}"#),
        Some(2.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let up = Upstream::start(Duration::ZERO).await;
    for (trusted, expect) in [("[]", 200), (r#"["127.0.0.1/32"]"#, 403)] {
        let toml = small_config(
            r#"
[[lists]]
name = "bad_ips"
kind = "ip"
action = "block"
file = "lists/bad_ips.txt"
"#,
        )
        .replace("[server]", &format!("[server]\ntrusted_proxies = {trusted}"));
        let cfg = ConfigDir::new(&toml);
        cfg.write("lists/bad_ips.txt", "# crew proxies\n203.0.113.0/24\n");
        let gw = gateway(&cfg, &up.url(), false).await;
        let c = client();
        // The left-most entry is client-written; only the right-most untrusted hop counts.
        let a = claim(
            &c,
            gw.addr,
            "u1",
            "d1",
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
        )
        .await;
        assert_eq!(a.status, expect, "trusted_proxies = {trusted}");
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config("").replace("[server]", "[server]\nmax_body_bytes = 1024"));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let big = format!(r#"{{"campaign_id":"{}"}}"#, "x".repeat(4096));
    let a = send(
        &c,
        "POST",
        &format!("http://{}/api/coupon/claim", gw.addr),
        &[("x-user-id", "u1")],
        &big,
    )
    .await;
    assert_eq!(a.status, 413);
    // Unmatched (streamed) paths too.
    let a = send(&c, "POST", &format!("http://{}/upload", gw.addr), &[], &big).await;
    assert_eq!(a.status, 413);
    assert!(up.seen().is_empty());
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_rejected_requests_total{reason="body_too_large"}"#),
        Some(2.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port that was just free: nothing listens there.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = ConfigDir::new(&small_config("").replace("[server]", "[server]\nupstream_timeout_ms = 300"));
    let gw = gateway(&cfg, &dead_url, false).await;
    let c = client();
    let a = claim(&c, gw.addr, "u1", "d1", &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(a.body.contains("upstream_unavailable"));
    gw.shutdown().await;

    let slow = Upstream::start(Duration::from_secs(3)).await;
    let gw = gateway(&cfg, &slow.url(), false).await;
    let started = std::time::Instant::now();
    let a = claim(&c, gw.addr, "u1", "d1", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(started.elapsed() < Duration::from_secs(3));
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            r#"riskgate_upstream_errors_total{kind="timeout",route="coupon_claim"}"#
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_good_reload_changes_a_threshold_live_and_a_bad_one_keeps_serving() {
    let up = Upstream::start(Duration::ZERO).await;
    let rule = r#"
[[rules]]
name = "no_device"
when = "has_device == 0"
score = 0.5
"#;
    let cfg = ConfigDir::new(&small_config(rule));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let no_device = |c: TestClient, addr| async move {
        send(
            &c,
            "POST",
            &format!("http://{addr}/api/coupon/claim"),
            &[("x-user-id", "u1")],
            r#"{"campaign_id":"c"}"#,
        )
        .await
    };
    // 0.5 is review under the default policy: forwarded.
    assert_eq!(no_device(c.clone(), gw.addr).await.status, 200);

    // Lower the block threshold: the same request is now blocked.
    cfg.write(
        "riskgate.toml",
        &small_config(rule).replace("challenge = 0.6\nblock = 0.85", "challenge = 0.4\nblock = 0.5"),
    );
    let reloaded = eventually(|| gw.gateway.runtime.load().routes[0].policy.block == 0.5).await;
    assert!(reloaded, "the new threshold was picked up");
    assert_eq!(no_device(c.clone(), gw.addr).await.status, 403);

    // A broken file: the running config stays, the failure is counted.
    cfg.write(
        "riskgate.toml",
        &small_config(rule).replace("block = 0.85", "block = \"high\""),
    );
    let counted = eventually(|| gw.gateway.metrics.reloads.with_label_values(&["failure"]).get() >= 1).await;
    assert!(counted);
    assert_eq!(
        no_device(c.clone(), gw.addr).await.status,
        403,
        "old config still serving"
    );
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_config_reloads_total{outcome="success"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "riskgate_config_last_reload_successful"), Some(0.0));

    // A list file change reloads too.
    cfg.write(
        "riskgate.toml",
        &(small_config(rule).replace("challenge = 0.6\nblock = 0.85", "challenge = 0.4\nblock = 0.5")
            + r#"
[[lists]]
name = "vip"
kind = "user"
action = "allow"
file = "lists/vip.txt"
"#),
    );
    cfg.write("lists/vip.txt", "");
    assert!(eventually(|| gw.gateway.runtime.load().lists.len() == 1).await);
    cfg.write("lists/vip.txt", "u1\n");
    assert!(eventually(|| gw.gateway.runtime.load().lists[0].values.contains("u1")).await);
    assert_eq!(no_device(c.clone(), gw.addr).await.status, 200, "allow-listed now");
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_expose_the_named_series() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::default_config();
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    browse(&c, gw.addr, "u1", "d1").await;
    claim(&c, gw.addr, "u1", "d1", &[]).await;
    let a = send(&c, "GET", &format!("http://{}/healthz", gw.admin_addr), &[], "").await;
    assert_eq!(a.status, 200);
    let a = send(&c, "GET", &format!("http://{}/readyz", gw.admin_addr), &[], "").await;
    assert_eq!(a.status, 200);
    let m = metrics(&c, gw.admin_addr).await;
    for series in [
        r#"riskgate_requests_total{decision="allow",route="coupon_claim"} 1"#,
        r#"riskgate_decision_duration_seconds_count{route="coupon_claim"} 1"#,
        r#"riskgate_upstream_duration_seconds_count{route="coupon_claim"} 1"#,
        r#"riskgate_rule_hits_total{mode="enforce",rule="device_many_accounts"} 0"#,
        r#"riskgate_state_tracked_keys{table="counters"}"#,
        r#"riskgate_state_evictions_total{table="counters"} 0"#,
        r#"riskgate_state_memory_budget_bytes 268435456"#,
        r#"riskgate_config_reloads_total{outcome="failure"} 0"#,
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }
    // Identities never become labels.
    for id in ["u1", "d1", "127.0.0.1"] {
        assert!(!m.contains(&format!("\"{id}\"")), "{id} in metrics");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_new_device_ids_stays_within_the_memory_budget() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config("").replace("[server]", "[state]\nmemory_budget_mb = 1\n[server]"));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let c = c.clone();
        let addr = gw.addr;
        tasks.spawn(async move {
            for i in 0..1_500 {
                let id = format!("flood-{worker}-{i}");
                claim(&c, addr, &id, &id, &[]).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let m = metrics(&c, gw.admin_addr).await;
    let used: f64 = ["counters", "identities", "devices", "limits", "clusters"]
        .iter()
        .map(|t| metric(&m, &format!("riskgate_state_memory_bytes{{table=\"{t}\"}}")).unwrap())
        .sum();
    assert!(used <= 1024.0 * 1024.0, "state uses {used} bytes, budget 1 MiB\n{m}");
    // Every request is a new account on a new device: both tables had to let keys go.
    assert!(
        metric(&m, r#"riskgate_state_evictions_total{table="identities"}"#).unwrap() > 0.0
            && metric(&m, r#"riskgate_state_evictions_total{table="devices"}"#).unwrap() > 0.0,
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let slow = Upstream::start(Duration::from_millis(500)).await;
    let cfg = ConfigDir::new(&small_config(""));
    let gw = gateway(&cfg, &slow.url(), false).await;
    let c = client();
    let addr = gw.addr;
    let inflight = tokio::spawn(async move { claim(&c, addr, "u1", "d1", &[]).await });
    assert!(eventually(|| slow.seen().len() == 1).await);
    gw.shutdown().await;
    assert_eq!(inflight.await.unwrap().status, 200);
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
