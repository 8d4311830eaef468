//! Each family of signals on hand-built event sequences (a farm, a family, a NAT, a
//! referral ring, a crowd, a script…), through the real pipeline and the default config's
//! rules (its model off).

use std::path::Path;

use riskgate::decide::Decision;
use riskgate::event::Event;
use riskgate::features;
use riskgate::pipeline::{self, Assessment};
use riskgate::runtime::{self, Runtime};
use riskgate::state::{KeyHasher, MemoryState};
use serde_json::json;

const T0: u64 = 1_762_819_200_000;

struct World {
    rt: Runtime,
    state: MemoryState,
    hasher: KeyHasher,
}

/// One request: who, from where, and what.
struct Req<'a> {
    ts: u64,
    path: &'a str,
    user: &'a str,
    device: Option<&'a str>,
    ip: &'a str,
    body: serde_json::Value,
    ua: &'a str,
    app: &'a str,
    phone: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn claim(ts: u64, user: &'a str, device: &'a str, ip: &'a str) -> Self {
        Req {
            ts,
            path: "/api/coupon/claim",
            user,
            device: Some(device),
            ip,
            body: json!({"campaign_id": "c-1", "coupon_id": "new-user-50"}),
            ua: "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47",
            app: "3.12.1",
            phone: None,
        }
    }
    fn assist(ts: u64, user: &'a str, device: &'a str, ip: &'a str, inviter: &str) -> Self {
        Req {
            path: "/api/referral/assist",
            body: json!({"campaign_id": "c-1", "inviter_id": inviter}),
            ..Req::claim(ts, user, device, ip)
        }
    }
    fn browse(ts: u64, user: &'a str, device: &'a str, ip: &'a str) -> Self {
        Req {
            path: "/api/campaign/detail",
            body: serde_json::Value::Null,
            ..Req::claim(ts, user, device, ip)
        }
    }
    fn order(ts: u64, user: &'a str, device: &'a str, amount: f64, pay: &str, address: &str) -> Self {
        Req {
            path: "/api/order/submit",
            body: json!({"campaign_id": "c-1", "order_id": format!("o-{ts}"), "amount": amount, "coupon_id": "full-100-minus-20", "address_hash": address, "pay_account_hash": pay}),
            ..Req::claim(ts, user, device, "198.51.100.20")
        }
    }
}

impl World {
    fn new() -> World {
        let hasher = KeyHasher::seeded(3);
        // The signals and the rules, without the trained model (tests/model.rs covers it):
        // these sequences check feature values and what the rules make of them.
        let rt = runtime::load_config(Path::new("config/riskgate.toml"), &hasher).unwrap();
        World {
            rt,
            state: MemoryState::new(64 << 20, 90_000_000),
            hasher,
        }
    }

    fn send(&self, r: Req) -> Assessment {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("x-user-id".to_string(), r.user.to_string());
        if let Some(d) = r.device {
            headers.insert("x-device-id".to_string(), d.to_string());
        }
        headers.insert("x-app-version".to_string(), r.app.to_string());
        if let Some(p) = r.phone {
            headers.insert("x-phone-hash".to_string(), p.to_string());
        }
        headers.insert("user-agent".to_string(), r.ua.to_string());
        let method = if r.body.is_null() { "GET" } else { "POST" };
        let event = Event {
            ts_ms: T0 + r.ts,
            method: method.into(),
            path: r.path.into(),
            query: String::new(),
            client_ip: r.ip.parse().unwrap(),
            headers,
            body: (!r.body.is_null()).then_some(r.body),
            label: None,
        };
        let fut = pipeline::assess(&self.rt, &self.state, &self.hasher, &event);
        riskgate::state::memory::ready(fut).expect("routed")
    }
}

fn f(a: &Assessment, name: &str) -> f64 {
    a.features
        .as_ref()
        .unwrap()
        .get(features::by_name(name).unwrap_or_else(|| panic!("no feature {name}")))
}

#[test]
fn a_device_farm_links_many_new_accounts_to_one_phone() {
    let w = World::new();
    let mut last = None;
    for i in 0..6 {
        let user = format!("farm-{i}");
        w.send(Req::browse(i * 20_000, &user, "farm-phone", "198.51.100.7"));
        last = Some(w.send(Req::claim(i * 20_000 + 5_000, &user, "farm-phone", "198.51.100.7")));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "users_per_device_24h"), 6.0);
    assert_eq!(f(&a, "device_new_users_24h"), 6.0);
    assert_eq!(f(&a, "linked_accounts_24h"), 6.0);
    assert_eq!(f(&a, "users_per_ip_1h"), 6.0);
    assert_eq!(a.decision, Decision::Block);
    assert!(a.score.reasons.iter().any(|r| &**r == "device_many_accounts"));
}

#[test]
fn a_family_sharing_a_phone_and_an_address_is_not_stopped() {
    let w = World::new();
    for (i, user) in ["mum", "dad"].iter().enumerate() {
        let t = i as u64 * 600_000;
        w.send(Req::browse(t, user, "family-phone", "198.51.100.8"));
        w.send(Req::browse(t + 9_000, user, "family-phone", "198.51.100.8"));
        let a = w.send(Req::order(
            t + 40_000,
            user,
            "family-phone",
            180.0,
            &format!("pay-{user}"),
            "home",
        ));
        assert_eq!(a.decision, Decision::Allow, "{user}: {:?}", a.score.reasons);
        assert_eq!(f(&a, "users_per_address_24h"), i as f64 + 1.0);
        assert_eq!(f(&a, "users_per_device_24h"), i as f64 + 1.0);
        assert_eq!(f(&a, "users_per_pay_24h"), 1.0);
    }
}

#[test]
fn two_accounts_on_one_handset_and_one_phone_number_are_a_farm_a_household_is_not() {
    let w = World::new();
    let claim = |ts, user, device, phone| Req {
        phone: Some(phone),
        ..Req::claim(ts, user, device, "198.51.100.80")
    };
    // A household: two accounts on one handset, each with its own number.
    for (ts, user, phone) in [(0, "K1", "num-k1"), (600_000, "K2", "num-k2")] {
        w.send(Req::browse(ts, user, "phone-k", "198.51.100.80"));
        w.send(Req::browse(ts + 20_000, user, "phone-k", "198.51.100.80"));
        let a = w.send(claim(ts + 90_000, user, "phone-k", phone));
        assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    }
    // A farm re-binding one virtual number to the next account on the same handset.
    for (ts, user) in [(1_000_000, "V1"), (1_600_000, "V2")] {
        w.send(Req::browse(ts, user, "phone-v", "198.51.100.80"));
        w.send(Req::browse(ts + 20_000, user, "phone-v", "198.51.100.80"));
        let a = w.send(claim(ts + 90_000, user, "phone-v", "num-pool-1"));
        let farm = user == "V2";
        assert_eq!(f(&a, "users_per_phone_24h"), if farm { 2.0 } else { 1.0 });
        assert_eq!(a.decision.stops(), farm, "{user}: {:?}", a.score.reasons);
        assert_eq!(a.score.reasons.iter().any(|r| &**r == "phone_shared_on_device"), farm);
    }
}

#[test]
fn a_carrier_nat_is_many_accounts_on_one_ip_but_nothing_else() {
    let w = World::new();
    let mut last = None;
    for i in 0..40u64 {
        // Unrelated people: their own phones, models and app builds.
        let (user, device, ua) = (
            format!("nat-user-{i}"),
            format!("nat-phone-{i}"),
            format!(
                "Mozilla/5.0 (Linux; Android 1{}; M{i}) MicroMessenger/8.0.4{}",
                i % 4,
                i % 7
            ),
        );
        w.send(Req {
            ua: &ua,
            ..Req::browse(i * 30_000, &user, &device, "203.0.113.9")
        });
        last = Some(w.send(Req {
            ua: &ua,
            ..Req::claim(i * 30_000 + 12_000, &user, &device, "203.0.113.9")
        }));
        let a = last.as_ref().unwrap();
        assert!(!a.decision.stops(), "user {i}: {:?}", a.score.reasons);
    }
    let a = last.unwrap();
    // Distinct sets saturate at 32 members.
    assert_eq!(f(&a, "users_per_ip_1h"), 32.0);
    assert_eq!(f(&a, "ip_new_users_1h"), 40.0);
    assert_eq!(f(&a, "users_per_device_24h"), 1.0);
    // Sharing an address is not sharing anything the cluster graph links.
    assert_eq!(f(&a, "cluster_accounts_24h"), 1.0);
}

#[test]
fn referral_rings_chains_and_self_invites_are_seen() {
    let w = World::new();
    // A is seen on her phone; B assists A from A's phone: inviting oneself.
    w.send(Req::claim(0, "A", "phone-a", "198.51.100.30"));
    let b = w.send(Req::assist(60_000, "B", "phone-a", "198.51.100.30", "A"));
    assert_eq!(f(&b, "inviter_on_device"), 1.0);
    assert_eq!(f(&b, "inviter_on_subnet"), 1.0);
    assert_eq!(f(&b, "referral_ring"), 0.0);
    // A assists B back: a ring A→B→A.
    let a = w.send(Req::assist(120_000, "A", "phone-a2", "203.0.113.77", "B"));
    assert_eq!(f(&a, "referral_ring"), 1.0);
    assert_eq!(f(&a, "inviter_is_invitee"), 1.0, "B had assisted A");
    assert!(a.decision.stops(), "{:?}", a.score.reasons);
    // C, unrelated, assists D who never assisted anyone: nothing to see.
    let c = w.send(Req::assist(180_000, "C", "phone-c", "192.0.2.50", "D"));
    for name in [
        "inviter_on_device",
        "inviter_on_subnet",
        "referral_ring",
        "inviter_is_invitee",
    ] {
        assert_eq!(f(&c, name), 0.0, "{name}");
    }
}

#[test]
fn a_ring_made_together_on_one_network_is_stopped_an_old_friend_on_it_is_not() {
    let w = World::new();
    // G has used the campaign for an hour when her neighbour H, on the same network
    // and his own phone, assists her: forwarded.
    w.send(Req::claim(0, "G", "phone-g", "198.51.100.60"));
    w.send(Req::browse(3_500_000, "H", "phone-h", "198.51.100.61"));
    w.send(Req::browse(3_510_000, "H", "phone-h", "198.51.100.61"));
    let h = w.send(Req::assist(3_530_000, "H", "phone-h", "198.51.100.61", "G"));
    assert_eq!(f(&h, "inviter_on_subnet"), 1.0);
    assert_eq!(f(&h, "inviter_age_s"), 3_530.0);
    assert!(!h.decision.stops(), "{:?}", h.score.reasons);
    // A ring's accounts appear together on one network, each on its own phone, and
    // assist each other round the circle minutes later: the same request shape, but the
    // inviter is minutes old and younger than its invitee (an invitation brings someone
    // in after the inviter; a ring's batch of accounts assists in any order).
    w.send(Req::browse(4_000_000, "S1", "ring-s1", "198.51.102.7"));
    w.send(Req::browse(4_100_000, "S1", "ring-s1", "198.51.102.7"));
    w.send(Req::browse(4_150_000, "S2", "ring-s2", "198.51.102.8"));
    let s = w.send(Req::assist(4_300_000, "S1", "ring-s1", "198.51.102.7", "S2"));
    assert_eq!(f(&s, "inviter_on_subnet"), 1.0);
    assert_eq!(f(&s, "inviter_age_s"), 150.0);
    assert_eq!(f(&s, "user_age_s"), 300.0);
    assert!(s.score.reasons.iter().any(|r| &**r == "self_invite_new_inviter"));
    assert!(s.decision.stops(), "{:?}", s.score.reasons);
    // An inviter never seen has no age.
    let n = w.send(Req::assist(4_400_000, "S3", "ring-s3", "198.51.103.9", "nobody"));
    assert_eq!(f(&n, "inviter_on_subnet"), 0.0);
    assert_eq!(f(&n, "inviter_age_s"), 0.0);
}

#[test]
fn a_household_invite_is_reviewed_a_ring_through_shared_phones_is_stopped() {
    let w = World::new();
    // One home network: E invites her husband F on his own phone. Forwarded.
    w.send(Req::claim(0, "E", "phone-e", "198.51.100.40"));
    w.send(Req::browse(40_000, "F", "phone-f", "198.51.100.41"));
    w.send(Req::browse(50_000, "F", "phone-f", "198.51.100.41"));
    let f_ = w.send(Req::assist(60_000, "F", "phone-f", "198.51.100.41", "E"));
    assert_eq!(f(&f_, "inviter_on_subnet"), 1.0);
    assert!(!f_.decision.stops(), "{:?}", f_.score.reasons);
    // A ring on one network runs its invitees through two phones that carry accounts.
    w.send(Req::claim(100_000, "R", "ring-phone-1", "198.51.101.7"));
    w.send(Req::browse(110_000, "R2", "ring-phone-2", "198.51.101.8"));
    let g = w.send(Req::assist(120_000, "R3", "ring-phone-2", "198.51.101.9", "R"));
    assert_eq!(f(&g, "users_per_device_24h"), 2.0);
    assert!(g.score.reasons.iter().any(|r| &**r == "self_invite_shared_phone"));
    assert!(g.decision.stops(), "{:?}", g.score.reasons);
}

#[test]
fn a_crowd_assisting_one_inviter_in_a_burst_is_stopped() {
    let w = World::new();
    let mut last = None;
    for i in 0..6u64 {
        let (user, device, ip) = (
            format!("crowd-{i}"),
            format!("crowd-phone-{i}"),
            format!("198.18.{i}.9"),
        );
        w.send(Req::browse(i * 5_000, &user, &device, &ip));
        last = Some(w.send(Req::assist(i * 5_000 + 3_000, &user, &device, &ip, "boss")));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "inviter_reqs_1m"), 6.0);
    assert_eq!(f(&a, "users_per_inviter_1h"), 6.0);
    assert_eq!(f(&a, "inviter_new_invitees_1h"), 6.0);
    assert_eq!(f(&a, "inviter_new_share_1h"), 1.0);
    // Real people on their own networks: as many networks as invitees.
    assert_eq!(f(&a, "inviter_invitee_subnets_24h"), 6.0);
    assert_eq!(f(&a, "inviter_subnet_share_24h"), 0.0);
    assert!(a.score.reasons.iter().any(|r| &**r == "inviter_burst"));
    assert!(a.decision.stops());
}

#[test]
fn a_task_link_shows_in_invitees_that_skip_the_campaign_page() {
    let w = World::new();
    // Friends open the share card, land on the campaign page, then assist: slowly, and
    // every one of them browsed first.
    for i in 0..5u64 {
        let (user, device, ip) = (
            format!("friend-{i}"),
            format!("friend-phone-{i}"),
            format!("198.18.{i}.7"),
        );
        w.send(Req::browse(i * 120_000, &user, &device, &ip));
        let a = w.send(Req::assist(i * 120_000 + 8_000, &user, &device, &ip, "influencer"));
        assert_eq!(f(&a, "inviter_blind_invitees_1h"), 0.0);
        assert!(!a.decision.stops());
    }
    // A crowd on a task link, two minutes apart (no burst within a minute): some go
    // straight to the assist.
    let mut reads = Vec::new();
    for i in 0..6u64 {
        let (user, device, ip) = (
            format!("worker-{i}"),
            format!("worker-phone-{i}"),
            format!("198.19.{i}.8"),
        );
        let t = i * 120_000;
        if i % 2 == 1 {
            w.send(Req::browse(t, &user, &device, &ip));
        }
        reads.push(w.send(Req::assist(t + 4_000, &user, &device, &ip, "task-poster")));
    }
    let blind: Vec<f64> = reads.iter().map(|a| f(a, "inviter_blind_invitees_1h")).collect();
    assert_eq!(blind, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    assert_eq!(f(&reads[5], "inviter_blind_share_1h"), 0.5);
    assert!(reads.iter().all(|a| f(a, "inviter_reqs_1m") == 1.0));
    // The second blind invitee, two of three: the task link's first takers.
    let early = |a: &Assessment| a.score.reasons.iter().any(|r| &**r == "inviter_task_link_early");
    assert!(!early(&reads[1]), "one blind invitee of two is not yet a pattern");
    assert!(
        early(&reads[2]) && reads[2].decision.stops(),
        "{:?}",
        reads[2].score.reasons
    );
    // From the third blind invitee on, every invitee of that inviter is stopped, those
    // who browsed too.
    assert!(!reads[3].score.reasons.iter().any(|r| &**r == "inviter_task_link"));
    assert!(reads[4].score.reasons.iter().any(|r| &**r == "inviter_task_link"));
    assert!(reads[5].score.reasons.iter().any(|r| &**r == "inviter_task_link"));
    assert!(reads[5].decision.stops());
}

#[test]
fn machine_regular_timing_without_a_funnel_is_a_script() {
    let w = World::new();
    let mut last = None;
    for i in 0..6u64 {
        last = Some(w.send(Req::claim(i * 2_000, "bot", "bot-device", "192.0.2.1")));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "user_regular_gaps"), 4.0);
    assert_eq!(f(&a, "device_regular_gaps"), 4.0);
    assert_eq!(f(&a, "user_browse_1h"), 0.0);
    assert!(a.decision.stops());
    // A person: irregular gaps, browsing first.
    let w = World::new();
    let mut t = 0;
    let mut last = None;
    for gap in [7_000, 19_000, 3_500, 41_000] {
        t += gap;
        last = Some(w.send(Req::browse(t, "human", "human-phone", "198.18.7.7")));
    }
    let a = w.send(Req::claim(t + 11_000, "human", "human-phone", "198.18.7.7"));
    assert_eq!(f(&a, "user_regular_gaps"), 0.0);
    assert_eq!(f(&a, "user_browse_1h"), 4.0);
    assert!(last.is_some());
    assert_eq!(a.decision, Decision::Allow, "{:?}", a.score.reasons);
}

#[test]
fn a_device_rotating_networks_is_seen() {
    let w = World::new();
    let mut last = None;
    for i in 0..5u64 {
        last = Some(w.send(Req::claim(
            i * 60_000,
            &format!("rot-{i}"),
            "rot-phone",
            &format!("198.18.{}.1", 10 + i),
        )));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "subnets_per_device_1h"), 5.0);
    assert!(a.score.reasons.iter().any(|r| &**r == "device_ip_rotation"));
}

#[test]
fn fake_orders_share_payment_accounts_just_above_the_threshold() {
    let w = World::new();
    let mut last = None;
    for i in 0..3u64 {
        let user = format!("fake-{i}");
        let device = format!("fake-phone-{i}");
        last = Some(w.send(Req::order(
            i * 90_000,
            &user,
            &device,
            101.5,
            "pay-shared",
            &format!("addr-{i}"),
        )));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "amount_just_above_threshold"), 1.0);
    assert_eq!(f(&a, "users_per_pay_24h"), 3.0);
    assert!(a.decision.stops(), "{:?}", a.score.reasons);
    for (amount, expect) in [(100.0, 1.0), (105.0, 1.0), (105.5, 0.0), (99.99, 0.0), (250.0, 0.0)] {
        let a = w.send(Req::order(
            500_000,
            "buyer",
            "buyer-phone",
            amount,
            "pay-own",
            "addr-own",
        ));
        assert_eq!(f(&a, "amount_just_above_threshold"), expect, "{amount}");
    }
}

#[test]
fn cloned_device_profiles_count_new_devices_per_user_agent() {
    let w = World::new();
    let mut last = None;
    for i in 0..3u64 {
        let r = Req {
            ua: "Mozilla/5.0 (Linux; Android 10; SM-G9600) MicroMessenger/8.0.40",
            ..Req::claim(i * 1_000, "x", "y", "198.18.3.3")
        };
        let (user, device) = (format!("clone-{i}"), format!("clone-dev-{i}"));
        last = Some(w.send(Req {
            user: &user,
            device: Some(&device),
            ..r
        }));
    }
    assert_eq!(f(&last.unwrap(), "ua_new_devices_1h"), 3.0);
    // Seen devices do not count again.
    let a = w.send(Req {
        ua: "Mozilla/5.0 (Linux; Android 10; SM-G9600) MicroMessenger/8.0.40",
        ..Req::claim(9_000, "clone-0", "clone-dev-0", "198.18.3.3")
    });
    assert_eq!(f(&a, "ua_new_devices_1h"), 3.0);
}

/// Ordinary new devices on a popular phone: each browses a few pages before it claims,
/// and one in three goes straight for the coupon.
fn popular_phone_traffic(w: &World, n: u64) {
    for i in 0..n {
        let (user, device) = (format!("person-{i}"), format!("person-dev-{i}"));
        let ip = format!("198.18.{}.{}", 40 + i / 200, 1 + i % 200);
        let t = i * 10_000;
        if i % 3 != 0 {
            for k in 0..3 {
                w.send(Req::browse(t + k * 1_000, &user, &device, &ip));
            }
        }
        let a = w.send(Req::claim(t + 5_000, &user, &device, &ip));
        assert!(!a.score.reasons.iter().any(|r| &**r == "cloned_profile_rush"));
    }
}

#[test]
fn a_cloned_device_profile_rushing_to_claim_is_seen_against_the_routes_usual_haste() {
    let w = World::new();
    popular_phone_traffic(&w, 30);
    const CLONE: &str = "Mozilla/5.0 (Linux; Android 10; SM-G9600) MicroMessenger/8.0.40";
    let mut reads = Vec::new();
    for i in 0..5u64 {
        let (user, device) = (format!("clone-{i}"), format!("clone-dev-{i}"));
        let ip = format!("198.19.7.{}", 10 + i);
        let t = 310_000 + i * 20_000;
        let mut browse = Req::browse(t, &user, &device, &ip);
        browse.ua = CLONE;
        w.send(browse);
        let mut claim = Req::claim(t + 2_000, &user, &device, &ip);
        claim.ua = CLONE;
        reads.push(w.send(claim));
    }
    let hasty: Vec<f64> = reads.iter().map(|a| f(a, "ua_hasty_devices_1h")).collect();
    assert_eq!(hasty, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(reads.iter().all(|a| f(a, "ua_hasty_share_1h") == 1.0));
    // Against the route's other user agents: 10 of the 30 people were hasty.
    assert!(reads.iter().all(|a| f(a, "ua_hasty_lift_1h") == 3.0));
    assert!(!reads[2].score.reasons.iter().any(|r| &**r == "cloned_profile_rush"));
    assert!(reads[3].score.reasons.iter().any(|r| &**r == "cloned_profile_rush"));
    assert!(
        reads[4].decision.stops(),
        "{:?} {:?}",
        reads[4].decision,
        reads[4].score
    );

    // A device's second claim is not a first request: nothing to read.
    let mut again = Req::claim(500_000, "clone-0", "clone-dev-0", "198.19.7.10");
    again.ua = CLONE;
    let a = w.send(again);
    assert_eq!(f(&a, "ua_hasty_devices_1h"), 0.0);
    assert_eq!(f(&a, "ua_hasty_share_1h"), 0.0);
}

#[test]
fn a_rush_where_everyone_is_hasty_is_not_a_cloned_profile() {
    let w = World::new();
    // A flash sale: every new device goes straight for the coupon, most on one phone.
    let mut last = None;
    for i in 0..20u64 {
        let (user, device) = (format!("rush-{i}"), format!("rush-dev-{i}"));
        let ip = format!("198.18.9.{}", 1 + i);
        let mut claim = Req::claim(i * 500, &user, &device, &ip);
        if i % 4 == 0 {
            claim.ua = "Mozilla/5.0 (Linux; Android 14; PHB110) MicroMessenger/8.0.50";
        }
        last = Some(w.send(claim));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "ua_hasty_devices_1h"), 15.0);
    assert_eq!(f(&a, "ua_hasty_share_1h"), 1.0);
    assert_eq!(f(&a, "ua_hasty_lift_1h"), 1.0);
    assert!(!a.score.reasons.iter().any(|r| &**r == "cloned_profile_rush"));
}

#[test]
fn an_order_just_above_the_threshold_straight_from_the_coupon_is_challenged() {
    let w = World::new();
    // A shopper looks at the campaign and at the item, then orders just above the
    // threshold: forwarded.
    w.send(Req::browse(0, "shopper", "shopper-phone", "198.51.100.70"));
    w.send(Req {
        path: "/api/item/view",
        ..Req::browse(60_000, "shopper", "shopper-phone", "198.51.100.70")
    });
    let a = w.send(Req::order(
        120_000,
        "shopper",
        "shopper-phone",
        101.0,
        "pay-s",
        "addr-s",
    ));
    assert_eq!(f(&a, "user_browse_24h"), 2.0);
    assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    // A fake order: the campaign page (where the coupon is), then the order, no item seen.
    w.send(Req::browse(0, "faker", "faker-phone", "198.51.100.71"));
    let b = w.send(Req::order(120_000, "faker", "faker-phone", 101.0, "pay-f", "addr-f"));
    assert_eq!(f(&b, "user_browse_24h"), 1.0);
    assert!(b.score.reasons.iter().any(|r| &**r == "order_without_item_view"));
    assert!(b.decision.stops(), "{:?}", b.score.reasons);
}

#[test]
fn threshold_orders_from_two_accounts_to_one_address_within_the_hour_are_challenged() {
    let w = World::new();
    // Two accounts of a fake-order crew, each on its own phone with its own payment
    // account, each having looked at the item: only the drop address links them.
    let order = |w: &World, t: u64, user: &str, amount: f64, address: &str| {
        let phone = format!("{user}-phone");
        w.send(Req::browse(t, user, &phone, "198.51.100.90"));
        w.send(Req {
            path: "/api/item/view",
            ..Req::browse(t + 20_000, user, &phone, "198.51.100.90")
        });
        w.send(Req::order(
            t + 60_000,
            user,
            &phone,
            amount,
            &format!("pay-{user}"),
            address,
        ))
    };
    let a = order(&w, 0, "drop-1", 101.5, "drop-address");
    assert_eq!(f(&a, "users_per_address_1h"), 1.0);
    assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    let b = order(&w, 900_000, "drop-2", 102.0, "drop-address");
    assert_eq!(f(&b, "users_per_address_1h"), 2.0);
    assert_eq!(f(&b, "amount_just_above_threshold"), 1.0);
    assert!(b.score.reasons.iter().any(|r| &**r == "shared_address_at_threshold"));
    assert!(b.decision.stops(), "{:?}", b.score.reasons);
    // A household: the same address, but one order well above the threshold, and the
    // other at the threshold more than an hour after the first.
    let c = order(&w, 0, "home-1", 180.0, "home-address");
    assert!(!c.decision.stops(), "{:?}", c.score.reasons);
    let d = order(&w, 2 * 3_600_000, "home-2", 101.0, "home-address");
    assert_eq!(f(&d, "users_per_address_1h"), 1.0);
    assert_eq!(f(&d, "users_per_address_24h"), 2.0);
    assert!(!d.decision.stops(), "{:?}", d.score.reasons);
    let e = order(&w, 2 * 3_600_000 + 600_000, "home-1", 150.0, "home-address");
    assert_eq!(f(&e, "users_per_address_1h"), 2.0);
    assert!(!e.decision.stops(), "{:?}", e.score.reasons);
}

#[test]
fn a_fake_order_crew_is_one_cluster_through_its_payment_account() {
    let w = World::new();
    // Three phones, two accounts each, one shared payment account: no phone shows more
    // than two accounts, but the payment account joins the three pairs into one crew.
    for d in 0..3u64 {
        for k in 0..2u64 {
            let (user, device) = (format!("crew-{d}-{k}"), format!("crew-phone-{d}"));
            let t = (d * 2 + k) * 60_000;
            w.send(Req::browse(t, &user, &device, "198.51.100.40"));
            let order = w.send(Req::order(
                t + 30_000,
                &user,
                &device,
                101.0,
                "pay-crew",
                &format!("a-{d}"),
            ));
            assert_eq!(f(&order, "cluster_accounts_24h"), (d * 2 + k + 1) as f64);
        }
    }
    // The next account on the first phone claims: a family-sized device, a crew-sized cluster.
    let a = w.send(Req::claim(400_000, "crew-0-2", "crew-phone-0", "198.51.100.40"));
    assert_eq!(f(&a, "users_per_device_24h"), 3.0);
    assert_eq!(f(&a, "cluster_accounts_24h"), 7.0);
    assert_eq!(f(&a, "cluster_new_accounts_1h"), 7.0);
    assert_eq!(f(&a, "cluster_new_share_1h"), 1.0);
    assert_eq!(f(&a, "cluster_claimed_24h"), 1.0, "the first claim in this campaign");
    assert!(
        a.score.reasons.iter().any(|r| &**r == "cluster_farm"),
        "{:?}",
        a.score.reasons
    );
    assert!(a.decision.stops());
}

#[test]
fn a_family_is_a_small_cluster_that_claims_together() {
    let w = World::new();
    for (i, user) in ["mum", "dad", "kid"].iter().enumerate() {
        let t = i as u64 * 900_000;
        w.send(Req::browse(t, user, "family-phone", "198.51.100.8"));
        w.send(Req::browse(t + 20_000, user, "family-phone", "198.51.100.8"));
        let a = w.send(Req::claim(t + 45_000, user, "family-phone", "198.51.100.8"));
        assert_eq!(f(&a, "cluster_accounts_24h"), i as f64 + 1.0);
        assert_eq!(f(&a, "cluster_claimed_24h"), i as f64 + 1.0);
        assert!(!a.decision.stops(), "{user}: {:?}", a.score.reasons);
    }
    // A second claim by the same account does not count it twice.
    let again = w.send(Req::claim(3_000_000, "mum", "family-phone", "198.51.100.8"));
    assert_eq!(f(&again, "cluster_claimed_24h"), 3.0);
    assert_eq!(f(&again, "cluster_accounts_24h"), 3.0);
}

#[test]
fn request_shape_stale_app_versions_user_agents_per_device_and_task_bursts() {
    let w = World::new();
    let a = w.send(Req {
        app: "2.9.0",
        ..Req::claim(0, "replayer", "replay-phone", "192.0.2.7")
    });
    assert_eq!(f(&a, "app_version_stale"), 1.0);
    assert!(a.score.reasons.iter().any(|r| &**r == "stale_app_version"));
    for (app, stale) in [("3.9.0", 0.0), ("3.12.1", 0.0), ("3.8.9", 1.0), ("latest", 1.0)] {
        let a = w.send(Req {
            app,
            ..Req::claim(1_000, "someone", "some-phone", "192.0.2.8")
        });
        assert_eq!(f(&a, "app_version_stale"), stale, "{app}");
    }
    // One device id sending many user agents.
    let mut last = None;
    for i in 0..5u64 {
        let ua = format!("Mozilla/5.0 (Linux; Android 1{i}) MicroMessenger/8.0.4{i}");
        last = Some(w.send(Req {
            ua: &ua,
            ..Req::browse(10_000 + i * 1_000, "spoofer", "one-id", "192.0.2.9")
        }));
    }
    assert_eq!(f(&last.unwrap(), "uas_per_device_24h"), 5.0);
    // An inviter quiet for an hour, then five assists within a minute: a posted task.
    let w = World::new();
    w.send(Req::assist(0, "early", "early-phone", "198.18.20.1", "poster"));
    let mut last = None;
    for i in 0..5u64 {
        let (user, device) = (format!("task-{i}"), format!("task-phone-{i}"));
        last = Some(w.send(Req::assist(
            2 * 3_600_000 + i * 8_000,
            &user,
            &device,
            "198.18.21.1",
            "poster",
        )));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "inviter_burst_after_lull"), 5.0);
    // One more within the minute still belongs to the burst.
    let b = w.send(Req::assist(
        2 * 3_600_000 + 50_000,
        "task-5",
        "task-phone-5",
        "198.18.21.1",
        "poster",
    ));
    assert_eq!(f(&b, "inviter_burst_after_lull"), 6.0);
    let c = w.send(Req::assist(
        2 * 3_600_000 + 200_000,
        "task-6",
        "task-phone-6",
        "198.18.21.1",
        "poster",
    ));
    // Later, the burst is history: assists in the hour before this minute, no lull.
    assert_eq!(f(&c, "inviter_burst_after_lull"), 0.0, "assists before this minute");
}

#[test]
fn a_farm_of_invitees_shares_one_network() {
    let w = World::new();
    let mut last = None;
    for i in 0..8u64 {
        let (user, device) = (format!("sock-{i}"), format!("sock-phone-{}", i / 2));
        let ip = format!("198.51.100.{}", 60 + i);
        last = Some(w.send(Req::assist(i * 400_000, &user, &device, &ip, "farmer")));
    }
    let a = last.unwrap();
    // Eight invitees, one /24, two to a phone: the invitees share networks and phones.
    assert_eq!(f(&a, "users_per_inviter_24h"), 8.0);
    assert_eq!(f(&a, "inviter_invitee_subnets_24h"), 1.0);
    assert_eq!(f(&a, "inviter_subnet_share_24h"), 1.0 - 1.0 / 8.0);
    assert_eq!(f(&a, "cluster_accounts_24h"), 2.0);
    assert_eq!(
        f(&a, "cluster_claimed_24h"),
        2.0,
        "both invitees on the last phone assisted"
    );
}

#[test]
fn device_ids_from_one_generator_share_a_prefix() {
    let w = World::new();
    let mut last = None;
    for i in 0..6u64 {
        let (user, device) = (format!("gen-{i}"), format!("5eedc0de{:024x}", i * 7_919));
        last = Some(w.send(Req::claim(i * 40_000, &user, &device, &format!("198.18.{i}.2"))));
    }
    let a = last.unwrap();
    assert_eq!(f(&a, "prefix_new_devices_1h"), 6.0);
    assert!(
        a.score.reasons.iter().any(|r| &**r == "device_id_generator"),
        "{:?}",
        a.score.reasons
    );
    // Fingerprints from the SDK share nothing; short ids have no prefix at all.
    let b = w.send(Req::claim(
        300_000,
        "own",
        "9f3a77c2e1d04b6a8c5e2f1d0a9b8c7d",
        "198.18.9.2",
    ));
    assert_eq!(f(&b, "prefix_new_devices_1h"), 1.0);
    let c = w.send(Req::claim(310_000, "short", "5eedc0de12", "198.18.9.3"));
    assert_eq!(f(&c, "prefix_new_devices_1h"), 0.0);
}

/// Five phones, each seen for the first time, starting within seconds of each other
/// behind one line: a browse, then a claim each.
fn rack_of_new_phones(w: &World, ip: &str, net: &str, apart_ms: u64) -> Vec<Assessment> {
    let ua = format!("Mozilla/5.0 (Linux; Android 14; 23127PN0CC) MicroMessenger/8.0.50 NetType/{net} Language/zh_CN");
    (0..5u64)
        .map(|i| {
            let (user, device) = (format!("rack-user-{i}"), format!("rack-phone-{i}"));
            browse_then_claim(w, &ua, &user, &device, ip, i * apart_ms, 3_000)
        })
        .collect()
}

/// A browse at `t`, then `claim_after_ms` later a claim, by one account on one device:
/// the claim's assessment.
fn browse_then_claim(
    w: &World,
    ua: &str,
    user: &str,
    device: &str,
    ip: &str,
    t: u64,
    claim_after_ms: u64,
) -> Assessment {
    w.send(Req {
        ua,
        ..Req::browse(t, user, device, ip)
    });
    w.send(Req {
        ua,
        ..Req::claim(t + claim_after_ms, user, device, ip)
    })
}

fn fired(a: &Assessment, rule: &str) -> bool {
    a.score.reasons.iter().any(|r| &**r == rule)
}

#[test]
fn a_rack_of_new_phones_on_one_wifi_line_is_challenged() {
    let w = World::new();
    let claims = rack_of_new_phones(&w, "198.18.40.7", "WIFI", 2_000);
    let counts: Vec<f64> = claims.iter().map(|a| f(a, "ip_new_devices_1m")).collect();
    assert_eq!(counts, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!(claims.iter().all(|a| f(a, "on_wifi") == 1.0));
    // The first two phones look like anyone's; from the third the rack shows.
    for a in &claims[..2] {
        assert!(!fired(a, "new_phones_on_one_line"));
        assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    }
    for a in &claims[2..] {
        assert!(fired(a, "new_phones_on_one_line"), "{:?}", a.score.reasons);
        assert_eq!(a.decision, Decision::Challenge);
    }
}

#[test]
fn new_phones_behind_a_carrier_nat_or_arriving_minutes_apart_are_not_a_rack() {
    // A carrier's NAT: as many new phones as the rack, as fast, but on 4G.
    let nat = World::new();
    let claims = rack_of_new_phones(&nat, "198.19.3.9", "4G", 2_000);
    assert_eq!(f(&claims[4], "ip_new_devices_1m"), 5.0);
    for a in &claims {
        assert_eq!(f(a, "on_wifi"), 0.0);
        assert!(!fired(a, "new_phones_on_one_line"));
        assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    }
    // One Wi-Fi line where a new phone turns up every two minutes (a shop, an office).
    let shop = World::new();
    for a in rack_of_new_phones(&shop, "198.18.41.8", "WIFI", 120_000) {
        assert!(f(&a, "ip_new_devices_1m") <= 2.0);
        assert!(!fired(&a, "new_phones_on_one_line"));
        assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    }
}

/// New phones on Wi-Fi, one on each of `networks` other /24s in the first seconds
/// (`per_network` each): the population's background, or a flash sale when many.
fn background_of_new_phones(w: &World, networks: u64, per_network: u64, tag: &str) {
    let ua = "Mozilla/5.0 (Linux; Android 14; 23127PN0CC) MicroMessenger/8.0.50 NetType/WIFI Language/zh_CN";
    for n in 0..networks {
        for p in 0..per_network {
            let (user, device) = (format!("{tag}-user-{n}-{p}"), format!("{tag}-phone-{n}-{p}"));
            w.send(Req {
                ua,
                ..Req::browse(
                    n * 100 + p * 10,
                    &user,
                    &device,
                    &format!("198.18.{}.{}", 100 + n, 10 + p),
                )
            });
        }
    }
}

/// `phones` new phones turning up on one /24, each on its own IP (re-dialled broadband),
/// seconds apart, each a browse and a claim; the claims' assessments.
fn phones_on_one_network(w: &World, phones: u64, start_ms: u64, net: &str, subnet: &str) -> Vec<Assessment> {
    let ua = format!("Mozilla/5.0 (Linux; Android 14; 23127PN0CC) MicroMessenger/8.0.50 NetType/{net} Language/zh_CN");
    (0..phones)
        .map(|i| {
            let (user, device, ip) = (
                format!("crew-user-{i}"),
                format!("crew-phone-{i}"),
                format!("{subnet}.{}", 20 + i * 7),
            );
            browse_then_claim(w, &ua, &user, &device, &ip, start_ms + i * 3_000, 2_000)
        })
        .collect()
}

#[test]
fn phones_started_together_on_one_network_stand_out_from_the_population() {
    let w = World::new();
    // 20 other networks with a new phone each: an ordinary minute.
    background_of_new_phones(&w, 20, 1, "bg");
    let claims = phones_on_one_network(&w, 7, 5_000, "WIFI", "198.18.60");
    let here: Vec<f64> = claims.iter().map(|a| f(a, "subnet_new_wifi_devices_1m")).collect();
    assert_eq!(here, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    // The average network: (20 + k) new phones over 21 networks.
    for (k, a) in (1..).zip(&claims) {
        let lift = f(a, "subnet_new_wifi_lift_1m");
        assert!(
            (lift - k as f64 * 21.0 / (20.0 + k as f64)).abs() < 1e-9,
            "phone {k}: {lift}"
        );
        // No IP saw more than one new phone: the per-line rule has nothing to go on.
        assert_eq!(f(a, "ip_new_devices_1m"), 1.0);
        assert!(!fired(a, "new_phones_on_one_line"));
    }
    // Up to the fourth phone the network looks like a busy one; from the fifth it stands out.
    for a in &claims[..4] {
        assert!(!fired(a, "new_phones_on_one_network"), "{:?}", a.score.reasons);
    }
    for a in &claims[4..] {
        assert!(fired(a, "new_phones_on_one_network"), "{:?}", a.score.reasons);
        assert!(a.decision.stops());
    }
    // A minute later the burst has aged out of the window.
    let later = w.send(Req::claim(200_000, "crew-user-0", "crew-phone-0", "198.18.60.20"));
    assert_eq!(f(&later, "subnet_new_wifi_devices_1m"), 0.0);
    assert_eq!(f(&later, "subnet_new_wifi_lift_1m"), 0.0);
}

#[test]
fn a_flash_sale_or_a_carrier_nat_is_not_phones_started_together() {
    // A flash sale: new phones everywhere at once, four on each of 20 networks. Seven
    // on one network is under twice the average.
    let sale = World::new();
    background_of_new_phones(&sale, 20, 4, "sale");
    for a in phones_on_one_network(&sale, 7, 5_000, "WIFI", "198.18.61") {
        assert!(f(&a, "subnet_new_wifi_lift_1m") < 2.0);
        assert!(!fired(&a, "new_phones_on_one_network"), "{:?}", a.score.reasons);
    }
    // A carrier's NAT: the same seven new phones on one /24, on 4G. Cellular phones are
    // not counted at all.
    let nat = World::new();
    background_of_new_phones(&nat, 20, 1, "bg");
    for a in phones_on_one_network(&nat, 7, 5_000, "4G", "198.19.62") {
        assert_eq!(f(&a, "subnet_new_wifi_devices_1m"), 0.0);
        assert!(!fired(&a, "new_phones_on_one_network"));
        assert!(!a.decision.stops(), "{:?}", a.score.reasons);
    }
}

/// One phone used by one account after another, each turn (account, IP, network) a
/// browse and a claim, `apart_ms` between turns.
fn phone_in_turns(w: &World, device: &str, turns: &[(&str, &str, &str)], apart_ms: u64) -> Vec<Assessment> {
    turns
        .iter()
        .enumerate()
        .map(|(i, &(user, ip, net))| {
            let ua = format!("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) MicroMessenger/8.0.49 NetType/{net} Language/zh_CN");
            let t = i as u64 * apart_ms;
            w.send(Req {
                ua: &ua,
                ..Req::browse(t, user, device, ip)
            });
            w.send(Req {
                ua: &ua,
                ..Req::claim(t + 20_000, user, device, ip)
            })
        })
        .collect()
}

#[test]
fn a_pooled_phone_handed_to_the_next_account_on_another_line_is_challenged() {
    let w = World::new();
    // A crew's phone, carried to the next aged account at another of the crew's lines.
    let claims = phone_in_turns(
        &w,
        "pool-phone-1",
        &[
            ("aged-1", "198.18.50.11", "WIFI"),
            ("aged-2", "198.18.50.187", "WIFI"),
            ("aged-3", "198.18.77.42", "WIFI"),
        ],
        20 * 60_000,
    );
    let handoffs: Vec<f64> = claims.iter().map(|a| f(a, "device_line_handoff")).collect();
    // The first account's own browse before its claim is no hand-off.
    assert_eq!(handoffs, [0.0, 1.0, 1.0]);
    assert!(!claims[0].decision.stops(), "{:?}", claims[0].score.reasons);
    // The second account: a phone with two accounts in an hour, which alone a family's
    // shared phone also is; the line it moved to is what gives it away.
    assert_eq!(f(&claims[1], "users_per_device_1h"), 2.0);
    assert!(
        fired(&claims[1], "phone_passed_between_lines"),
        "{:?}",
        claims[1].score.reasons
    );
    assert_eq!(claims[1].decision, Decision::Challenge);
    assert!(claims[2].decision.stops());
}

#[test]
fn a_family_phone_changing_hands_at_home_or_a_phone_resold_is_not_a_pool() {
    // A household's shared phone: both members at home, one of them also on 4G.
    let family = World::new();
    let claims = phone_in_turns(
        &family,
        "family-phone",
        &[
            ("mum", "198.18.60.5", "WIFI"),
            ("son", "198.18.60.5", "WIFI"),
            ("son", "198.19.9.77", "4G"),
            ("mum", "198.18.60.5", "WIFI"),
        ],
        30 * 60_000,
    );
    for a in &claims {
        assert_eq!(f(a, "device_line_handoff"), 0.0);
        assert!(!fired(a, "phone_passed_between_lines"));
    }
    // A phone sold on: its new owner, at another line, more than a day after the last.
    let resold = World::new();
    let claims = phone_in_turns(
        &resold,
        "resold-phone",
        &[("seller", "198.18.61.5", "WIFI"), ("buyer", "198.18.99.8", "WIFI")],
        25 * 3_600_000,
    );
    assert_eq!(f(&claims[1], "device_line_handoff"), 0.0);
    assert!(!claims[1].decision.stops(), "{:?}", claims[1].score.reasons);
}
