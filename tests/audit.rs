//! The audit log from the live gateway: one decision record per scored request, and a
//! stalled disk that never delays a request.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn every_scored_request_gets_a_decision_record_with_its_event() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(
        "[audit]\npath = \"audit/decisions.jsonl\"\ncapture_events = true\n",
    ));
    std::fs::create_dir_all(cfg.dir.path().join("audit")).unwrap();
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    claim(&c, gw.addr, "u1", "d1", &[("x-request-id", "audit-1")]).await;
    claim(&c, gw.addr, "u2", "d1", &[("x-request-id", "audit-2")]).await;
    send(&c, "GET", &format!("http://{}/not/scored", gw.addr), &[], "").await;
    gw.shutdown().await;
    let text = std::fs::read_to_string(cfg.dir.path().join("audit/decisions.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["request_id"], "audit-1");
    assert_eq!(records[1]["identities"]["user"], "u2");
    assert_eq!(records[1]["route"], "coupon_claim");
    assert_eq!(records[1]["action"], "coupon");
    assert_eq!(records[1]["decision"], "allow");
    // The embedded event replays: it is an Event as DESIGN.md defines it.
    let event: riskgate::event::Event = serde_json::from_value(records[1]["event"].clone()).unwrap();
    assert_eq!(event.header("x-device-id"), Some("d1"));
    assert_eq!(event.body.unwrap()["campaign_id"], "c-1");
}

#[tokio::test]
async fn a_stalled_audit_disk_never_delays_requests() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config("[audit]\npath = \"stalled.fifo\"\nqueue_capacity = 16\n"));
    // A FIFO nobody reads: the writer blocks forever opening it, like a hung disk.
    let fifo = cfg.dir.path().join("stalled.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    for i in 0..200 {
        let a = claim(&c, gw.addr, &format!("u{i}"), &format!("d{i}"), &[]).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(up.seen().len(), 200, "every request was served");
    let m = metrics(&c, gw.admin_addr).await;
    let dropped = metric(&m, r#"riskgate_audit_records_total{outcome="dropped"}"#).unwrap_or(0.0);
    assert!(
        dropped >= 200.0 - 17.0,
        "records beyond the queue are dropped and counted: {dropped}\n{m}"
    );
    assert_eq!(
        metric(&m, r#"riskgate_audit_records_total{outcome="written"}"#),
        Some(0.0)
    );
    // Shutdown is not held by the stalled writer either.
    tokio::time::timeout(Duration::from_secs(15), gw.shutdown())
        .await
        .expect("shutdown completes");
}
