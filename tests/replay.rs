//! Replay and the backtest diff through the binary, on hand-made event files.

mod common;

use std::process::Command;

use common::ConfigDir;

fn riskgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_riskgate"))
}

/// A device farm (five accounts on one phone) and five honest users, labelled, taking
/// turns: each views the campaign page twice, then claims, six seconds apart; plus a bad
/// line and an unrouted path.
fn events() -> String {
    let mut lines = vec![];
    let t0 = 1_762_819_200_000u64;
    let who = |i: u64, farm: bool| {
        if farm {
            (
                format!("farm-u{i}"),
                "farm-phone".to_string(),
                format!("198.51.100.{i}"),
                r#"{"fraud":true,"kind":"device_farm","actor":"farm-1"}"#,
            )
        } else {
            (
                format!("user-{i}"),
                format!("phone-{i}"),
                format!("203.0.113.{i}"),
                r#"{"fraud":false,"kind":"normal"}"#,
            )
        }
    };
    let mut ts = t0;
    for i in 0..5u64 {
        for farm in [true, false] {
            let (user, device, ip, label) = who(i, farm);
            for _ in 0..2 {
                ts += 6_000;
                lines.push(format!(
                    r#"{{"ts_ms":{ts},"method":"GET","path":"/api/campaign/detail","query":"campaign_id=c-1","client_ip":"{ip}","headers":{{"x-user-id":"{user}","x-device-id":"{device}","x-app-version":"8.0.47"}},"label":{label}}}"#
                ));
            }
            ts += 6_000;
            let id = if farm { format!("farm-{i}") } else { format!("ok-{i}") };
            lines.push(format!(
                r#"{{"ts_ms":{ts},"method":"POST","path":"/api/coupon/claim","query":"","client_ip":"{ip}","headers":{{"x-request-id":"{id}","x-user-id":"{user}","x-device-id":"{device}","x-app-version":"8.0.47"}},"body":{{"campaign_id":"c-1"}},"label":{label}}}"#
            ));
        }
    }
    lines.insert(3, "this is not json".to_string());
    lines.push(r#"{"ts_ms":1762819300000,"method":"GET","path":"/favicon.ico","client_ip":"203.0.113.9"}"#.to_string());
    lines.join("\n") + "\n"
}

fn replay(cfg: &ConfigDir, extra: &[&str]) -> (std::process::Output, String) {
    let dir = cfg.dir.path();
    std::fs::write(dir.join("events.jsonl"), events()).unwrap();
    let out_path = dir.join("decisions.jsonl");
    let out = riskgate()
        .arg("replay")
        .arg("--config")
        .arg(cfg.path())
        .arg("--input")
        .arg(dir.join("events.jsonl"))
        .arg("--output")
        .arg(&out_path)
        .args(extra)
        .output()
        .unwrap();
    (out, std::fs::read_to_string(out_path).unwrap_or_default())
}

#[test]
fn replay_writes_one_record_per_event_deterministically_with_a_summary() {
    let cfg = ConfigDir::default_rules_only();
    let (out, first) = replay(
        &cfg,
        &["--report", cfg.dir.path().join("report.json").to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The bad line is reported with its number and skipped.
    assert!(stderr.contains("events.jsonl:4: skipped, not an event"), "{stderr}");
    let all: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        all.len(),
        31,
        "20 page views + 10 claims + 1 unrouted, the bad line skipped"
    );
    let (views, records): (Vec<_>, Vec<_>) = all.iter().partition(|r| r["route"] == "campaign_detail");
    assert_eq!(views.len(), 20);
    assert!(views.iter().all(|r| r["decision"] == "allow"));
    let decisions: Vec<&str> = records.iter().map(|r| r["decision"].as_str().unwrap()).collect();
    // Farm requests are at even positions: accounts 1-2 pass, 3 is reviewed, 4-5 blocked.
    assert_eq!(
        decisions[..10],
        ["allow", "allow", "allow", "allow", "review", "allow", "block", "allow", "block", "allow"]
    );
    assert_eq!(records[6]["request_id"], "farm-3");
    assert_eq!(records[6]["reasons"][0], "device_many_accounts");
    assert_eq!(records[6]["label"]["kind"], "device_farm");
    assert_eq!(records[6]["identities"]["device"], "farm-phone");
    assert_eq!(records[6]["mode"], "enforce");
    assert_eq!(records[10]["route"], "unmatched");
    assert_eq!(records[10]["request_id"], "line-32");

    // Summary: 2 of 5 farm requests stopped, 0 of 5 normal ones.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.dir.path().join("report.json")).unwrap()).unwrap();
    let s = &report["summary"];
    assert_eq!(s["bad_lines"], 1);
    assert_eq!(s["confusion"]["true_positive"], 2);
    assert_eq!(s["confusion"]["false_negative"], 3);
    assert_eq!(s["confusion"]["false_positive"], 0);
    assert_eq!(s["confusion"]["true_negative"], 5);
    assert_eq!(s["by_kind"]["device_farm"]["block"], 2);
    assert_eq!(s["by_reason"]["device_many_accounts"], 2);
    assert!(
        stderr.contains("precision 1.0000  recall 0.4000  false-positive rate 0.0000%"),
        "{stderr}"
    );

    // Same input, same config: byte-identical output.
    let (_, second) = replay(&cfg, &[]);
    assert_eq!(first, second);
}

#[test]
fn strict_replay_fails_on_a_bad_line() {
    let cfg = ConfigDir::default_config();
    let (out, _) = replay(&cfg, &["--strict"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("events.jsonl:4: not an event"));
}

#[test]
fn replay_reads_and_writes_gzip_and_stdio() {
    use std::io::Write;
    let cfg = ConfigDir::default_config();
    let dir = cfg.dir.path();
    let gz = dir.join("events.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(events().as_bytes()).unwrap();
    enc.finish().unwrap();
    let out = riskgate()
        .arg("replay")
        .arg("--config")
        .arg(cfg.path())
        .arg("--input")
        .arg(&gz)
        .args(["--output", "-", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 31);
}

#[test]
fn backtest_diff_reports_a_known_flip() {
    let cfg = ConfigDir::default_rules_only();
    let base = std::fs::read_to_string(cfg.path()).unwrap();
    // The candidate blocks at three accounts per device instead of four.
    let candidate = base.replace(
        "when = \"users_per_device_24h >= 4\"",
        "when = \"users_per_device_24h >= 3\"",
    );
    assert_ne!(base, candidate);
    cfg.write("baseline.toml", &base);
    cfg.write("riskgate.toml", &candidate);
    let baseline = cfg.dir.path().join("baseline.toml");
    let report = cfg.dir.path().join("diff.json");
    let (out, _) = replay(
        &cfg,
        &[
            "--baseline",
            baseline.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("backtest diff: 1 requests change decision"), "{stderr}");
    assert!(stderr.contains("examples review->block: farm-2"), "{stderr}");
    assert!(stderr.contains("recall 0.4000 -> 0.6000"), "{stderr}");
    let diff: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(diff["diff"]["by_change"]["review->block"], 1);
    assert_eq!(diff["diff"]["by_route"]["coupon_claim"], 1);
    assert_eq!(diff["diff"]["by_reason"]["+device_many_accounts"], 1);
}
