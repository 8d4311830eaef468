//! `riskgate simulate`: labelled synthetic campaign traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use riskgate::event::Event;
use riskgate::simulate::{census, generate, Scenario, ATTACKS, SEGMENTS};

const START: u64 = 1_762_819_200_000;

fn small() -> Scenario {
    Scenario::builtin("small").expect("small is built in")
}

fn jsonl(events: &[Event]) -> String {
    let mut s = String::new();
    for e in events {
        s.push_str(&serde_json::to_string(e).expect("serialises"));
        s.push('\n');
    }
    s
}

fn body_str<'e>(e: &'e Event, field: &str) -> Option<&'e str> {
    e.body.as_ref()?.get(field)?.as_str()
}

fn actor(e: &Event) -> &str {
    e.label.as_ref().and_then(|l| l.actor.as_deref()).unwrap_or("")
}

fn kind(e: &Event) -> &str {
    e.label.as_ref().and_then(|l| l.kind.as_deref()).unwrap_or("")
}

#[test]
fn same_seed_same_bytes_different_seed_different() {
    let s = small();
    let a = jsonl(&generate(&s, 42, START));
    let b = jsonl(&generate(&s, 42, START));
    assert_eq!(a, b, "same scenario + seed + start must give byte-identical output");
    let c = jsonl(&generate(&s, 43, START));
    assert_ne!(a, c, "another seed gives other traffic");
}

#[test]
fn adding_a_crew_leaves_everyone_else_alone() {
    let s = small();
    let mut more = s.clone();
    more.attacks.device_farm.crews += 1;
    let strip = |events: Vec<Event>| -> Vec<String> {
        events
            .into_iter()
            .filter(|e| actor(e) != format!("device_farm-{}", s.attacks.device_farm.crews))
            .map(|mut e| {
                e.headers.remove("x-request-id");
                serde_json::to_string(&e).unwrap()
            })
            .collect()
    };
    let base = strip(generate(&s, 7, START));
    let with = strip(generate(&more, 7, START));
    assert_eq!(
        base, with,
        "the other actors' traffic must not change when a crew is added"
    );
}

#[test]
fn events_follow_the_contract() {
    let s = small();
    let events = generate(&s, 1, START);
    let text = jsonl(&events);
    let end = START + s.time.duration_s * 1000;
    let mut ids = BTreeSet::new();
    let mut last = 0;
    for line in text.lines() {
        let e: Event = serde_json::from_str(line).expect("every line parses back as an Event");
        assert!(e.ts_ms >= START && e.ts_ms < end, "ts {} outside the scenario", e.ts_ms);
        assert!(e.ts_ms >= last, "events sorted by ts_ms");
        last = e.ts_ms;
        let label = e.label.as_ref().expect("every event is labelled");
        assert!(label.kind.is_some() && label.actor.is_some(), "{line}");
        for (k, v) in &e.headers {
            assert_eq!(k, &k.to_ascii_lowercase(), "header names are lower case");
            assert!(!v.is_empty(), "{k} empty in {line}");
        }
        let rid = e.header("x-request-id").expect("x-request-id").to_string();
        assert!(rid.starts_with("sim-1-"), "{rid}");
        assert!(ids.insert(rid), "x-request-id unique");
        assert!(e.header("x-user-id").is_some(), "{line}");
        let required: &[&str] = match (e.method.as_str(), e.path.as_str()) {
            ("POST", "/api/coupon/claim") => &["campaign_id", "coupon_id"],
            ("POST", "/api/checkin") => &["campaign_id"],
            ("POST", "/api/referral/assist") => &["campaign_id", "inviter_id"],
            ("POST", "/api/redpacket/open") => &["campaign_id", "packet_id"],
            ("POST", "/api/order/submit") => &["campaign_id", "order_id", "amount", "address_hash", "pay_account_hash"],
            ("GET", "/api/campaign/detail") => {
                assert!(e.query.starts_with("campaign_id=c-"), "{line}");
                &[]
            }
            ("GET", "/api/item/view") => {
                assert!(e.query.starts_with("item_id=i-"), "{line}");
                &[]
            }
            other => panic!("not a route of the reference API: {other:?}"),
        };
        if e.method == "POST" {
            let body = e
                .body
                .as_ref()
                .and_then(|b| b.as_object())
                .expect("POST has a JSON object body");
            for f in required {
                assert!(body.contains_key(*f), "{} lacks {f}: {line}", e.path);
            }
            assert_eq!(e.header("content-type"), Some("application/json"));
            if e.path == "/api/order/submit" {
                assert!(body["amount"].as_f64().is_some_and(|a| a > 0.0), "{line}");
            }
        } else {
            assert!(e.body.is_none(), "GET has no body: {line}");
        }
    }
    assert_eq!(ids.len(), events.len());
}

#[test]
fn legitimate_clients_look_like_wechat_and_scripts_do_not() {
    let events = generate(&small(), 3, START);
    let mut legit = 0;
    for e in events.iter().filter(|e| !e.label.as_ref().unwrap().fraud) {
        let ua = e.header("user-agent").expect("legit traffic has a user agent");
        assert!(ua.contains("MicroMessenger/") && ua.ends_with("miniProgram"), "{ua}");
        assert!(e.header("x-device-id").is_some() && e.header("x-app-version").is_some());
        legit += 1;
    }
    assert!(legit > 1000);
    let scripts: Vec<&Event> = events.iter().filter(|e| kind(e) == "script").collect();
    assert!(
        scripts.iter().all(|e| e.method == "POST"),
        "scripts skip the browsing funnel"
    );
    assert!(scripts
        .iter()
        .all(|e| !e.header("user-agent").is_some_and(|u| u.ends_with("miniProgram"))));
    // Machine-regular timing: inter-arrival spread tiny next to the period.
    let gaps: Vec<i64> = scripts
        .windows(2)
        .map(|w| w[1].ts_ms as i64 - w[0].ts_ms as i64)
        .collect();
    let mean = gaps.iter().sum::<i64>() as f64 / gaps.len() as f64;
    let sd = (gaps.iter().map(|g| (*g as f64 - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    assert!(sd < mean * 0.1, "script timing regular: mean {mean} sd {sd}");
}

#[test]
fn every_segment_and_attack_kind_is_present() {
    for name in ["small", "demo"] {
        let s = Scenario::builtin(name).unwrap();
        let c = census(&generate(&s, 5, START));
        let has = |k: &str, fraud: bool| c.iter().any(|(kk, f, n)| kk == k && *f == fraud && *n > 0);
        for seg in SEGMENTS {
            assert!(s.segment(seg) > 0, "{name} configures {seg}");
            assert!(has(seg, false), "{name}: legit segment {seg} missing from {c:?}");
        }
        assert!(has("invitee", false), "{name}: invitees missing");
        for kind in ATTACKS {
            assert!(s.crews(kind) > 0, "{name} configures {kind}");
            assert!(has(kind, true), "{name}: attack {kind} missing from {c:?}");
        }
    }
}

#[test]
fn device_farm_has_many_accounts_on_few_devices() {
    let s = small();
    let events = generate(&s, 11, START);
    for crew in 0..s.attacks.device_farm.crews {
        let name = format!("device_farm-{crew}");
        let mine: Vec<&Event> = events.iter().filter(|e| actor(e) == name).collect();
        let users: BTreeSet<&str> = mine.iter().filter_map(|e| e.header("x-user-id")).collect();
        let devices: BTreeSet<&str> = mine.iter().filter_map(|e| e.header("x-device-id")).collect();
        assert!(
            users.len() >= s.attacks.device_farm.size[0] as usize - 2,
            "{name}: {} accounts",
            users.len()
        );
        assert!(
            devices.len() <= s.attacks.device_farm.devices[1] as usize,
            "{name}: {} devices",
            devices.len()
        );
        assert!(
            users.len() >= 4 * devices.len(),
            "{name}: {} accounts on {} devices",
            users.len(),
            devices.len()
        );
    }
    // Legit people, by contrast, use one or two devices.
    let mut per_user: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in events.iter().filter(|e| kind(e) == "normal") {
        per_user
            .entry(e.header("x-user-id").unwrap())
            .or_default()
            .insert(e.header("x-device-id").unwrap());
    }
    assert!(per_user.values().all(|d| d.len() <= 2));
}

#[test]
fn device_spoofing_has_one_user_agent_and_a_device_per_account() {
    let events = generate(&small(), 12, START);
    let mine: Vec<&Event> = events.iter().filter(|e| kind(e) == "device_spoofing").collect();
    let users: BTreeSet<&str> = mine.iter().filter_map(|e| e.header("x-user-id")).collect();
    let devices: BTreeSet<&str> = mine.iter().filter_map(|e| e.header("x-device-id")).collect();
    let uas: BTreeSet<String> = mine
        .iter()
        .filter_map(|e| e.header("user-agent"))
        .map(|u| u.replace("NetType/4G", "NetType/WIFI"))
        .collect();
    assert_eq!(users.len(), devices.len());
    assert_eq!(uas.len(), 1, "one model, one user agent: {uas:?}");
}

#[test]
fn ip_rotation_changes_address_every_request_on_few_devices() {
    let events = generate(&small(), 13, START);
    let mine: Vec<&Event> = events.iter().filter(|e| kind(e) == "ip_rotation").collect();
    let ips: BTreeSet<_> = mine.iter().map(|e| e.client_ip).collect();
    let devices: BTreeSet<&str> = mine.iter().filter_map(|e| e.header("x-device-id")).collect();
    assert!(
        ips.len() * 10 >= mine.len() * 9,
        "{} addresses for {} requests",
        ips.len(),
        mine.len()
    );
    assert!(devices.len() <= 4);
}

#[test]
fn referral_ring_closes_a_cycle() {
    let s = small();
    let events = generate(&s, 21, START);
    for crew in 0..s.attacks.referral_ring.crews {
        let name = format!("referral_ring-{crew}");
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| actor(e) == name && e.path == "/api/referral/assist")
        {
            edges
                .entry(e.header("x-user-id").unwrap())
                .or_default()
                .insert(body_str(e, "inviter_id").unwrap());
        }
        // Follow assists from some member: a self-invite ring comes back to where it started.
        let found = edges.keys().any(|&start| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![start];
            while let Some(u) = stack.pop() {
                for &v in edges.get(u).into_iter().flatten() {
                    if v == start {
                        return true;
                    }
                    if seen.insert(v) {
                        stack.push(v);
                    }
                }
            }
            false
        });
        assert!(found, "{name}: no assist cycle in {edges:?}");
        // Invitees share devices with the ring.
        let ring_devices: BTreeSet<&str> = events
            .iter()
            .filter(|e| actor(e) == name)
            .filter_map(|e| e.header("x-device-id"))
            .collect();
        assert!(ring_devices.len() <= s.attacks.referral_ring.devices[1] as usize);
    }
}

#[test]
fn fake_orders_sit_just_above_the_threshold_and_share_addresses() {
    let s = small();
    let events = generate(&s, 31, START);
    let band = s.attacks.fake_order.amount;
    let orders: Vec<&Event> = events
        .iter()
        .filter(|e| kind(e) == "fake_order" && e.path == "/api/order/submit")
        .collect();
    assert!(!orders.is_empty());
    let mut users = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for e in &orders {
        let amount = e.body.as_ref().unwrap()["amount"].as_f64().unwrap();
        assert!(
            amount >= band[0] && amount <= band[1],
            "amount {amount} outside {band:?}"
        );
        assert!(
            (amount * 100.0 - (amount * 100.0).round()).abs() < 1e-6,
            "cents: {amount}"
        );
        assert_eq!(body_str(e, "coupon_id"), Some(s.campaign.threshold_coupon.as_str()));
        users.insert(e.header("x-user-id").unwrap());
        addresses.insert(body_str(e, "address_hash").unwrap());
    }
    assert!(addresses.len() <= s.attacks.fake_order.addresses[1] as usize);
    assert!(users.len() > addresses.len());
    // Legit orders spread widely.
    let legit: Vec<f64> = events
        .iter()
        .filter(|e| e.path == "/api/order/submit" && !e.label.as_ref().unwrap().fraud)
        .map(|e| e.body.as_ref().unwrap()["amount"].as_f64().unwrap())
        .collect();
    let (lo, hi) = legit.iter().fold((f64::MAX, 0f64), |(l, h), &a| (l.min(a), h.max(a)));
    assert!(
        legit.len() > 20 && lo < 30.0 && hi > 200.0,
        "{} legit orders in [{lo}, {hi}]",
        legit.len()
    );
}

#[test]
fn crowdsourced_helpers_assist_one_inviter_in_a_burst() {
    let events = generate(&small(), 41, START);
    let assists: Vec<&Event> = events
        .iter()
        .filter(|e| kind(e) == "crowdsourced" && e.path == "/api/referral/assist")
        .collect();
    let inviters: BTreeSet<&str> = assists.iter().map(|e| body_str(e, "inviter_id").unwrap()).collect();
    let devices: BTreeSet<&str> = assists.iter().filter_map(|e| e.header("x-device-id")).collect();
    assert_eq!(inviters.len(), 1);
    assert_eq!(devices.len(), assists.len(), "every helper on their own phone");
    let span = assists.last().unwrap().ts_ms - assists.first().unwrap().ts_ms;
    assert!(span <= 200_000, "burst spans {span} ms");
    // Helpers do nothing but (look and) assist.
    assert!(events
        .iter()
        .filter(|e| kind(e) == "crowdsourced")
        .filter(|e| Some(e.header("x-user-id").unwrap()) != inviters.first().copied())
        .all(|e| e.path == "/api/referral/assist" || e.path == "/api/campaign/detail"));
}

#[test]
fn low_and_slow_accounts_age_before_claiming() {
    let s = small();
    let events = generate(&s, 51, START);
    let age_end = START + (s.attacks.low_and_slow.age_fraction * s.time.duration_s as f64 * 1000.0) as u64;
    let mine: Vec<&Event> = events.iter().filter(|e| kind(e) == "low_and_slow").collect();
    let early: BTreeSet<&str> = mine
        .iter()
        .filter(|e| e.ts_ms < age_end)
        .map(|e| e.header("x-user-id").unwrap())
        .collect();
    let claims: Vec<&&Event> = mine.iter().filter(|e| e.path == "/api/coupon/claim").collect();
    assert!(!claims.is_empty());
    assert!(claims.iter().all(|e| e.ts_ms >= age_end), "claims only after ageing");
    assert!(
        claims.iter().all(|e| early.contains(e.header("x-user-id").unwrap())),
        "claimers were seen early"
    );
}

#[test]
fn legit_users_browse_before_they_claim() {
    let events = generate(&small(), 61, START);
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let (mut claims, mut browsed) = (0, 0);
    for e in events.iter().filter(|e| kind(e) == "normal") {
        let u = e.header("x-user-id").unwrap();
        if e.method == "GET" {
            seen.insert(u);
        } else if e.path == "/api/coupon/claim" {
            claims += 1;
            browsed += seen.contains(u) as usize;
        }
    }
    assert!(
        claims > 50 && browsed == claims,
        "{browsed} of {claims} claims after browsing"
    );
}

#[test]
fn retries_resend_the_same_body_with_a_new_request_id() {
    let events = generate(&small(), 71, START);
    let mut by_body: BTreeMap<(String, String), Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| kind(e) == "retry" && e.method == "POST") {
        let key = (
            e.header("x-user-id").unwrap().to_string(),
            serde_json::to_string(&e.body).unwrap(),
        );
        by_body.entry(key).or_default().push(e);
    }
    let retried: Vec<&Vec<&Event>> = by_body.values().filter(|v| v.len() > 1).collect();
    assert!(!retried.is_empty(), "some requests are retried");
    for v in retried {
        let ids: BTreeSet<&str> = v.iter().map(|e| e.header("x-request-id").unwrap()).collect();
        assert_eq!(ids.len(), v.len());
        assert!(v.last().unwrap().ts_ms - v[0].ts_ms < 20_000, "retries within seconds");
    }
}

#[test]
fn carrier_nat_users_share_few_addresses() {
    let s = small();
    let events = generate(&s, 81, START);
    let nat: Vec<&Event> = events.iter().filter(|e| kind(e) == "carrier_nat").collect();
    let ips: BTreeSet<_> = nat.iter().map(|e| e.client_ip).collect();
    let users: BTreeSet<&str> = nat.iter().map(|e| e.header("x-user-id").unwrap()).collect();
    assert!(ips.len() <= s.behaviour.nat_ips as usize);
    assert!(users.len() >= 30);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let text = "name = \"x\"\n[attacks.device_farm]\ncrews = 1\nsizes = [1, 2]\n";
    let err = Scenario::from_toml(text).unwrap_err().to_string();
    assert!(err.contains("sizes"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    let err = Scenario::from_toml("name = \"x\"\nfraud_share = 0.1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("fraud_share"), "{err}");
}

#[test]
fn load_takes_builtin_names_and_files() {
    assert_eq!(Scenario::load("small").unwrap(), small());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "name = \"mine\"\n[population]\nnormal = 5\n").unwrap();
    let s = Scenario::load(path.to_str().unwrap()).unwrap();
    assert_eq!(s.name, "mine");
    assert!(!generate(&s, 1, 0).is_empty());
    assert!(Scenario::load("no-such-scenario").is_err());
    assert!(Scenario::builtin_names().contains(&"default"));
}

#[test]
fn scaled_half_roughly_halves_events() {
    let s = small();
    let full = generate(&s, 9, START).len() as f64;
    let half = generate(&s.scaled(0.5), 9, START).len() as f64;
    let ratio = half / full;
    assert!((0.38..0.62).contains(&ratio), "scaled(0.5): {half} / {full} = {ratio}");
    assert_eq!(s.scaled(0.5).time, s.time, "duration unchanged");
}

fn fraud_share(events: &[Event]) -> f64 {
    events.iter().filter(|e| e.label.as_ref().unwrap().fraud).count() as f64 / events.len() as f64
}

#[test]
fn builtin_sizes() {
    let small_events = generate(&small(), 1, START);
    assert!(
        (2000..=5000).contains(&small_events.len()),
        "small: {}",
        small_events.len()
    );
    let demo = Scenario::builtin("demo").unwrap();
    let demo_events = generate(&demo, 1, START);
    assert_eq!(demo.time.duration_s, 50);
    assert!(
        (3000..=6000).contains(&demo_events.len()),
        "demo: {}",
        demo_events.len()
    );
    for (name, events) in [("small", &small_events), ("demo", &demo_events)] {
        let f = fraud_share(events);
        assert!((0.08..0.40).contains(&f), "{name}: fraud share {f}");
    }
}

/// Prints the census of every built-in and the generation time of "default"
/// (`cargo test --release --test simulate -- --nocapture default_scenario`).
#[test]
fn default_scenario_size_mix_and_speed() {
    let s = Scenario::builtin("default").unwrap();
    let t = Instant::now();
    let events = generate(&s, 1, START);
    let took = t.elapsed();
    println!("default: {} events in {:.2?}", events.len(), took);
    for name in Scenario::builtin_names() {
        let other;
        let ev = if *name == "default" {
            &events
        } else {
            other = generate(&Scenario::builtin(name).unwrap(), 1, START);
            &other
        };
        println!("{name}: {} events, fraud share {:.3}", ev.len(), fraud_share(ev));
        for (kind, fraud, n) in census(ev) {
            println!("  {kind:<16} {:<5} {n}", if fraud { "fraud" } else { "legit" });
        }
    }
    assert!((150_000..=300_000).contains(&events.len()), "default: {}", events.len());
    let f = fraud_share(&events);
    assert!((0.10..=0.20).contains(&f), "default: fraud share {f}");
    assert!(events.last().unwrap().ts_ms - START < s.time.duration_s * 1000);
}
