//! The trained classifier: `riskgate train` on generated traffic (deterministic, and the
//! feedback loop of audit records plus a labels file), the model serving in the real
//! gateway (reasons, shadow, a refused feature list), and a hot swap under load.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use riskgate::event::Event;
use riskgate::features::{self, Feature, FEATURE_SET_VERSION};
use riskgate::model::{Classifier, Model, ModelFile, Platt, Tree, FORMAT};
use riskgate::state::memory::ready;
use riskgate::state::{KeyHasher, MemoryState};

fn riskgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_riskgate"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    stderr
}

/// Crews of a few kinds starting all along an hour, beside a small population, so that
/// the later part of the hour has crews training never saw (the split keeps them apart).
const SCENARIO: &str = r#"
name = "train-test"
[time]
duration_s = 3600
pace = 0.25
[population]
normal = 500
carrier_nat = 60
office = 40
family = 30
heavy_referrer = 1
retry = 20
flash_surge = 60
[attacks.device_farm]
crews = 8
size = [10, 20]
devices = [2, 3]
window = [0.0, 1.0]
[attacks.device_spoofing]
crews = 4
size = [10, 20]
window = [0.0, 1.0]
[attacks.ip_rotation]
crews = 4
size = [10, 20]
window = [0.0, 1.0]
[attacks.script]
crews = 4
size = [3, 6]
requests = [40, 80]
window = [0.0, 1.0]
"#;

/// That scenario's events for `seed`.
fn simulated(dir: &Path, seed: u64) -> PathBuf {
    let scenario = dir.join("scenario.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let path = dir.join(format!("events-{seed}.jsonl"));
    run_ok(
        riskgate()
            .arg("simulate")
            .arg("--scenario")
            .arg(&scenario)
            .args(["--seed", &seed.to_string(), "--out"])
            .arg(&path),
    );
    path
}

fn train(input: &[&Path], labels: Option<&Path>, out: &Path) -> String {
    let mut cmd = riskgate();
    cmd.arg("train").arg("--out").arg(out).args(["--trees", "15"]);
    for i in input {
        cmd.arg("--input").arg(i);
    }
    if let Some(l) = labels {
        cmd.arg("--labels").arg(l);
    }
    run_ok(&mut cmd)
}

fn event(ts_ms: u64, path: &str, user: &str, device: &str, ip: &str) -> Event {
    let mut e: Event = serde_json::from_str(&format!(
        r#"{{"ts_ms": {ts_ms}, "method": "POST", "path": "{path}", "client_ip": "{ip}",
            "headers": {{"x-user-id": "{user}", "x-device-id": "{device}", "x-app-version": "8.0.47",
                        "user-agent": "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47"}},
            "body": {{"campaign_id": "c-1111", "coupon_id": "new-user-50"}}}}"#
    ))
    .unwrap();
    if path.ends_with("detail") {
        e.method = "GET".into();
        e.body = None;
    }
    e
}

#[test]
fn training_separates_a_farm_from_legitimate_traffic_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulated(dir.path(), 3);
    let (a, b) = (dir.path().join("a.model.json"), dir.path().join("b.model.json"));
    let progress = train(&[&events], None, &a);
    for needle in [
        "event-time order",
        "split: train",
        "random forest",
        "logistic regression",
        "chosen:",
    ] {
        assert!(progress.contains(needle), "no `{needle}` in the progress:\n{progress}");
    }
    train(&[&events], None, &b);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "the same input and seed must give the same model file, byte for byte"
    );

    let file: ModelFile = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    assert_eq!(file.feature_set_version, FEATURE_SET_VERSION);
    assert_eq!(file.features.len(), features::COUNT);
    let test = &file.evaluation["test"];
    for kind in ["random_forest", "logistic_regression"] {
        let roc = test[kind]["roc_auc"].as_f64().unwrap();
        assert!(roc > 0.8, "{kind} ROC-AUC {roc} on the test slice");
    }
    assert!(file.training["train"]["rows"].as_u64().unwrap() > 100);

    // An obvious farm (twelve fresh accounts claiming from one phone, no browsing) and
    // a person (browses, then claims from their own phone), through the same pipeline.
    let model = Model::load(&a).unwrap();
    let hasher = KeyHasher::seeded(1);
    let rt = riskgate::runtime::load_config(Path::new("config/riskgate.toml"), &hasher).unwrap();
    let state = MemoryState::new(64 << 20, 90_000_000);
    let t0 = 1_762_830_000_000;
    let score = |e: &Event| {
        let a = ready(riskgate::pipeline::assess(&rt, &state, &hasher, e)).unwrap();
        model.score(a.features.as_ref().unwrap())
    };
    let mut farm = 0.0;
    for i in 0..12 {
        farm = score(&event(
            t0 + i * 5_000,
            "/api/coupon/claim",
            &format!("farm-{i}"),
            "farm-phone",
            "198.51.100.9",
        ));
    }
    for k in 0..2 {
        score(&event(
            t0 + 1_000 + k * 9_000,
            "/api/campaign/detail",
            "alice",
            "alice-phone",
            "203.0.113.20",
        ));
    }
    let person = score(&event(
        t0 + 30_000,
        "/api/coupon/claim",
        "alice",
        "alice-phone",
        "203.0.113.20",
    ));
    assert!(farm > 0.5 && person < 0.5, "farm {farm}, person {person}");
}

#[test]
fn the_feedback_loop_trains_from_audit_records_and_a_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulated(dir.path(), 4);
    // What production gives: decision records with embedded events but no labels, and
    // a separate file of reviewed outcomes by request id.
    let audit = dir.path().join("audit.jsonl");
    let labels = dir.path().join("labels.jsonl");
    let (mut a, mut l) = (
        std::fs::File::create(&audit).unwrap(),
        std::fs::File::create(&labels).unwrap(),
    );
    for line in std::fs::read_to_string(&events).unwrap().lines() {
        let mut e: Event = serde_json::from_str(line).unwrap();
        let id = e.header("x-request-id").unwrap().to_string();
        let label = e.label.take().unwrap();
        let record = serde_json::json!({"ts_ms": e.ts_ms, "request_id": id, "route": "x", "decision": "allow",
                                        "score": 0.0, "reasons": [], "mode": "enforce", "event": e});
        writeln!(a, "{record}").unwrap();
        writeln!(
            l,
            "{}",
            serde_json::json!({"request_id": id, "fraud": label.fraud, "kind": label.kind, "actor": label.actor})
        )
        .unwrap();
    }
    drop((a, l));
    let from_events = dir.path().join("e.model.json");
    let from_audit = dir.path().join("a.model.json");
    train(&[&events], None, &from_events);
    train(&[&audit], Some(&labels), &from_audit);
    let e: ModelFile = serde_json::from_str(&std::fs::read_to_string(&from_events).unwrap()).unwrap();
    let a: ModelFile = serde_json::from_str(&std::fs::read_to_string(&from_audit).unwrap()).unwrap();
    // The same traffic and labels, by another road: the same model.
    assert_eq!(a.classifier, e.classifier);
    assert_eq!(a.calibration, e.calibration);
    assert_eq!(a.evaluation, e.evaluation);
    assert_eq!(a.training["labels"], "labels.jsonl");

    // Records without their event cannot train.
    let bare = dir.path().join("bare.jsonl");
    std::fs::write(
        &bare,
        r#"{"ts_ms": 1, "request_id": "r-1", "route": "x", "decision": "allow"}"#,
    )
    .unwrap();
    let out = riskgate()
        .args(["train", "--input"])
        .arg(&bare)
        .arg("--out")
        .arg(dir.path().join("x.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capture_events"));
}

/// A one-split forest on `users_per_device_24h > 3`: `low` below, `high` above.
fn stump(low: f64, high: f64) -> ModelFile {
    ModelFile {
        format: FORMAT.into(),
        feature_set_version: FEATURE_SET_VERSION.into(),
        features: features::ALL.iter().map(|f| f.name().to_string()).collect(),
        classifier: Classifier::RandomForest {
            trees: vec![Tree {
                feature: vec![Feature::UsersPerDevice24h as u16, 0, 0],
                threshold: vec![3.0, 0.0, 0.0],
                left: vec![1, 0, 0],
                right: vec![2, 0, 0],
                value: vec![(low + high) / 2.0, low, high],
            }],
        },
        // Identity calibration: the score is the leaf's share.
        calibration: Platt { a: 1.0, b: 0.0 },
        training: serde_json::Value::Null,
        evaluation: serde_json::Value::Null,
    }
}

/// The small config with a `[model]` section naming `model.json` beside it.
fn model_config(extra: &str) -> String {
    small_config("").replacen(
        "[[routes]]",
        &format!("[model]\npath = \"model.json\"\n{extra}\n\n[[routes]]"),
        1,
    )
}

fn write_model(cfg: &ConfigDir, file: &ModelFile) {
    cfg.write("model.json", &serde_json::to_string(file).unwrap());
}

async fn farm(c: &TestClient, addr: std::net::SocketAddr, device: &str, n: usize) -> Vec<Answer> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(claim(c, addr, &format!("{device}-u{i}"), device, &[]).await);
    }
    out
}

#[tokio::test]
async fn the_model_scores_explains_and_can_run_in_shadow() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&model_config("reason_threshold = 0.5"));
    write_model(&cfg, &stump(0.05, 0.9));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let answers = farm(&c, gw.addr, "phone-a", 5).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    // No rules: three accounts pass on the model's 0.05, the fourth and fifth hit 0.9.
    assert_eq!(statuses, [200, 200, 200, 403, 403]);
    let seen = up.seen();
    assert_eq!(seen[0].header("x-risk-score"), Some("0.050"));
    assert_eq!(seen[0].header("x-risk-reasons"), None);
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(metric(&m, "riskgate_model_loaded"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "riskgate_model_required"), Some(1.0));
    assert_eq!(
        metric(&m, r#"riskgate_model_reloads_total{outcome="success"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"riskgate_model_score_count{mode="enforce",route="coupon_claim"}"#),
        Some(5.0),
        "{m}"
    );
    gw.shutdown().await;

    // In shadow the model is scored and explained but changes nothing.
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&model_config("mode = \"shadow\""));
    write_model(&cfg, &stump(0.05, 0.9));
    let gw = gateway(&cfg, &up.url(), false).await;
    let answers = farm(&c, gw.addr, "phone-b", 5).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let seen = up.seen();
    assert_eq!(seen[4].header("x-risk-score"), Some("0.000"));
    assert_eq!(seen[4].header("x-risk-decision"), Some("allow"));
    assert_eq!(
        seen[4].header("x-risk-reasons"),
        Some("shadow:model:users_per_device_24h")
    );
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_model_score_count{mode="shadow",route="coupon_claim"}"#),
        Some(5.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_enforced_reason_names_the_feature_and_the_audit_record_has_the_model_score() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&model_config("weight = 0.7\ncombine = \"max\""));
    write_model(&cfg, &stump(0.05, 0.9));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let answers = farm(&c, gw.addr, "phone-c", 5).await;
    // max(rules 0, 0.7 × 0.9 = 0.63): a challenge, not a block.
    assert_eq!(answers[4].status, 428);
    gw.shutdown().await;
    let audit = std::fs::read_to_string(cfg.dir.path().join("riskgate-audit.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["decision"], "challenge");
    assert_eq!(last["model_score"], 0.9);
    assert_eq!(last["score"], 0.63);
    assert_eq!(last["reasons"], serde_json::json!(["model:users_per_device_24h"]));
}

#[tokio::test]
async fn a_mismatched_or_corrupt_model_is_refused_and_the_old_one_keeps_serving() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&model_config(""));
    // At start: a model trained on another feature list is refused; rules only.
    let mut other = stump(0.05, 0.9);
    other.features[0] = "user_reqs_1w".into();
    write_model(&cfg, &other);
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(metric(&m, "riskgate_model_loaded"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "riskgate_model_required"), Some(1.0));
    assert_eq!(
        metric(&m, r#"riskgate_model_reloads_total{outcome="failure"}"#),
        Some(1.0)
    );
    assert!(farm(&c, gw.addr, "phone-d", 5).await.iter().all(|a| a.status == 200));

    // A good model arrives: swapped in.
    write_model(&cfg, &stump(0.05, 0.9));
    assert!(eventually(|| gw.gateway.runtime.load().model.as_ref().unwrap().loaded.is_some()).await);
    let good = gw
        .gateway
        .runtime
        .load()
        .model
        .as_ref()
        .unwrap()
        .loaded
        .clone()
        .unwrap();
    assert_eq!(claim(&c, gw.addr, "phone-d-u9", "phone-d", &[]).await.status, 403);

    // A corrupt file, then a mismatched one: refused, the good model stays, and says why.
    for bad in [
        "{\"format\": \"riskgate-model/1\", \"feat".to_string(),
        serde_json::to_string(&other).unwrap(),
    ] {
        let failures =
            |gw: &riskgate::server::Running| gw.gateway.metrics.model_reloads.with_label_values(&["failure"]).get();
        let before = failures(&gw);
        cfg.write("model.json", &bad);
        assert!(eventually(|| failures(&gw) > before).await, "the bad file is noticed");
        let rt = gw.gateway.runtime.load();
        let slot = rt.model.as_ref().unwrap();
        assert!(
            Arc::ptr_eq(slot.loaded.as_ref().unwrap(), &good),
            "the good model keeps serving"
        );
        let why = slot.error.clone().unwrap();
        assert!(
            why.contains("not a riskgate model") || why.contains("feature set"),
            "{why}"
        );
        assert_eq!(
            claim(&c, gw.addr, &format!("phone-d-x{before}"), "phone-d", &[])
                .await
                .status,
            403
        );
    }
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(metric(&m, "riskgate_model_loaded"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, r#"riskgate_model_reloads_total{outcome="failure"}"#),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, r#"riskgate_model_reloads_total{outcome="success"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(r#"riskgate_model_info{{kind="random_forest",version="{}"}}"#, good.id)
        ),
        Some(1.0),
        "{m}"
    );
    // check-config says why, too.
    let out = riskgate().arg("check-config").arg(cfg.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user_reqs_1w"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swapping_the_model_under_load_loses_no_request() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&model_config(""));
    // Two models that disagree about every request: one lets all pass, one blocks all.
    let (pass, block) = (stump(0.01, 0.01), stump(0.99, 0.99));
    write_model(&cfg, &pass);
    let gw = gateway(&cfg, &up.url(), false).await;
    let addr = gw.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered_by = Arc::new([(); 2].map(|_| std::sync::atomic::AtomicUsize::new(0)));
    let clients = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..clients {
        let stop = stop.clone();
        let answered_by = answered_by.clone();
        tasks.spawn(async move {
            let c = client();
            let mut out = Vec::new();
            // Until the swaps are done, and at most 3,000 requests each.
            for i in 0..3_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) && i >= 20 {
                    break;
                }
                let id = format!("req-{t}-{i}");
                let a = claim(
                    &c,
                    addr,
                    &format!("user-{t}-{i}"),
                    &format!("dev-{t}-{i}"),
                    &[("x-request-id", &id)],
                )
                .await;
                answered_by[usize::from(a.status == 403)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.push((id, a));
            }
            out
        });
    }
    // Swap back and forth while the clients run, waiting for each swap to land.
    let swaps = 6;
    for n in 0..swaps {
        let (next, target) = if n % 2 == 0 { (&block, 0.99) } else { (&pass, 0.01) };
        write_model(&cfg, next);
        let landed = eventually(|| {
            let rt = gw.gateway.runtime.load();
            rt.model
                .as_ref()
                .and_then(|m| m.loaded.as_ref())
                .is_some_and(|m| (m.score(&riskgate::features::Features::default()) - target).abs() < 1e-6)
        })
        .await;
        assert!(landed, "swap {n} landed");
        // Let the new model answer some requests before the next swap.
        let side = usize::from(target > 0.5);
        let before = answered_by[side].load(std::sync::atomic::Ordering::Relaxed);
        assert!(eventually(|| answered_by[side].load(std::sync::atomic::Ordering::Relaxed) > before + 10).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    let mut by_status = std::collections::BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (id, a) in done.unwrap() {
            assert_eq!(
                a.headers.get("x-request-id").and_then(|v| v.to_str().ok()),
                Some(id.as_str())
            );
            assert!(a.status == 200 || a.status == 403, "{id}: {} {}", a.status, a.body);
            *by_status.entry(a.status.as_u16()).or_insert(0) += 1;
            answered += 1;
        }
    }
    assert!(answered >= clients * 20);
    // Both models answered some requests: the swaps happened under load.
    assert!(by_status.len() == 2, "{by_status:?}");
    assert_eq!(up.seen().len(), by_status.get(&200).copied().unwrap_or(0));
    let m = metrics(&client(), gw.admin_addr).await;
    let successes = metric(&m, r#"riskgate_model_reloads_total{outcome="success"}"#).unwrap();
    assert!(successes >= 1.0 + swaps as f64, "{m}");
    assert_eq!(
        metric(&m, r#"riskgate_model_reloads_total{outcome="failure"}"#),
        Some(0.0)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_shipped_model_stops_a_farm_sooner_than_the_rules_alone_and_says_why() {
    let c = client();
    let mut outcomes = Vec::new();
    for cfg in [ConfigDir::default_rules_only(), ConfigDir::default_config()] {
        let up = Upstream::start(Duration::ZERO).await;
        let gw = gateway(&cfg, &up.url(), false).await;
        let mut statuses = Vec::new();
        for user in ["farm-1", "farm-2", "farm-3", "farm-4", "farm-5"] {
            statuses.push(farm_visit(&c, gw.addr, user, "farm-phone").await.status.as_u16());
        }
        let m = metrics(&c, gw.admin_addr).await;
        outcomes.push((statuses, metric(&m, "riskgate_model_required")));
        gw.shutdown().await;
        if outcomes.len() == 2 {
            let audit = std::fs::read_to_string(cfg.dir.path().join("riskgate-audit.jsonl")).unwrap();
            let claims: Vec<serde_json::Value> = audit
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|r| r["route"] == "coupon_claim")
                .collect();
            assert!(claims.iter().all(|r| r["model_score"].is_number()), "{claims:?}");
            let stopped: Vec<_> = claims.iter().filter(|r| r["decision"] == "block").collect();
            assert!(!stopped.is_empty());
            for r in stopped {
                let reasons = r["reasons"].as_array().unwrap();
                assert!(
                    reasons
                        .iter()
                        .any(|x| x.as_str().is_some_and(|x| x.starts_with("model:"))),
                    "a model block names its features: {r}"
                );
            }
        }
    }
    let (rules, model) = (&outcomes[0], &outcomes[1]);
    assert_eq!(
        rules.0,
        [200, 200, 200, 403, 403],
        "rules alone: device_many_accounts from the fourth"
    );
    assert_eq!(rules.1, Some(0.0), "mode = off everywhere asks for no model");
    assert_eq!(model.1, Some(1.0));
    let first_stop = |s: &[u16]| s.iter().position(|x| *x != 200).unwrap();
    assert!(
        first_stop(&model.0) < first_stop(&rules.0),
        "{:?} vs {:?}",
        model.0,
        rules.0
    );
    assert!(
        model.0.iter().skip(first_stop(&model.0)).all(|s| *s == 403),
        "{:?}",
        model.0
    );
}
