//! The legitimate population: people who browse before they act, think for seconds to
//! minutes, check in once a day, claim, open red packets, order now and then and assist
//! real friends; in segments that stress a detector with innocent look-alikes of fraud
//! (shared NAT addresses, offices on one /24, families on one phone, influencers with many
//! invitees, retries, flash-sale bursts).

use std::net::IpAddr;

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

use super::world::{
    label, mix, mobile_v4, mobile_v6, office_host, openid, pick, residential, stream_id, Account, Actor, Call, Ctx,
    Device, Net, Sink, Who,
};
use crate::event::Label;

pub(crate) fn generate(ctx: &Ctx, out: &mut Sink) {
    let p = &ctx.sc.population;
    for i in 0..p.normal as u64 {
        single(ctx, "normal", i, out);
    }
    for i in 0..p.carrier_nat as u64 {
        single(ctx, "carrier_nat", i, out);
    }
    for i in 0..p.office as u64 {
        single(ctx, "office", i, out);
    }
    for i in 0..p.family as u64 {
        family(ctx, i, out);
    }
    for i in 0..p.heavy_referrer as u64 {
        heavy_referrer(ctx, i, out);
    }
    for i in 0..p.retry as u64 {
        single(ctx, "retry", i, out);
    }
    for i in 0..p.flash_surge as u64 {
        single(ctx, "flash_surge", i, out);
    }
}

/// Where a person's Wi-Fi sessions come from.
#[derive(Clone, Copy)]
enum Home {
    Broadband(IpAddr),
    /// Always cellular, behind the carrier NAT.
    Nat,
    Office {
        office: u32,
        host: u8,
    },
}

/// One legitimate account with its devices and habits.
struct Person {
    acc: Account,
    devices: Vec<Device>,
    home: Home,
    mobile_share: f64,
    retry: bool,
    checks_in: bool,
}

/// What a person has done so far.
#[derive(Default)]
struct Done {
    claimed: Vec<bool>,
    checkin_day: Option<u64>,
    /// An inviter whose invitation this person will assist (once).
    assist: Option<String>,
    /// Claim the referral reward in this session.
    reward: bool,
}

impl Person {
    fn new(a: &mut Actor, k: u64, home: Home, mobile_share: f64) -> Person {
        let ctx = a.ctx;
        let acc = Account::new(ctx, a.stream, k, &mut a.rng);
        let mut devices = vec![Device::phone(&mut a.rng)];
        if a.rng.random_bool(ctx.sc.behaviour.second_device) {
            devices.push(Device::phone(&mut a.rng));
        }
        let checks_in = a.rng.random_bool(ctx.sc.behaviour.checkin_prob);
        Person {
            acc,
            devices,
            home,
            mobile_share,
            retry: false,
            checks_in,
        }
    }

    fn connect(&self, a: &mut Actor) -> (IpAddr, Net) {
        let ctx = a.ctx;
        let rng = &mut a.rng;
        match self.home {
            Home::Nat => (
                ctx.nat_pool[rng.random_range(0..ctx.nat_pool.len())],
                Net::cellular(rng),
            ),
            _ if rng.random_bool(self.mobile_share) => {
                let ip = if rng.random_bool(ctx.sc.behaviour.ipv6_share) {
                    mobile_v6(rng)
                } else {
                    mobile_v4(rng)
                };
                (ip, Net::cellular(rng))
            }
            Home::Broadband(ip) => (ip, Net::Wifi),
            Home::Office { office, host } => (office_host(office, host), Net::Wifi),
        }
    }
}

/// Sends a POST, and for flaky-network users maybe resends it a few times within seconds
/// (same body, new request id). Returns the time of the last send.
fn post(a: &mut Actor, p: &Person, t: u64, who: Who<'_>, campaign: &str, call: Call<'_>, label: &Label) -> u64 {
    let ev = a.build(who, campaign, call, label);
    let mut last = t;
    let copies = if p.retry && a.rng.random_bool(0.6) {
        pick(&mut a.rng, a.ctx.sc.behaviour.retries)
    } else {
        0
    };
    a.push(t, ev.clone());
    for _ in 0..copies {
        last += a.rng.random_range(600..5000);
        a.push(last, ev.clone());
    }
    last
}

/// A log-normal order amount in yuan, in cents.
fn order_amount(a: &mut Actor) -> f64 {
    let median = a.ctx.sc.behaviour.order_median;
    let d = LogNormal::new(median.ln(), 0.9).expect("valid order distribution");
    let x: f64 = d.sample(&mut a.rng);
    (x.clamp(1.0, 8000.0) * 100.0).round() / 100.0
}

/// One visit: campaign page, item pages, then whatever the person came to do, with human
/// think times between steps. Returns when it ended.
fn session(a: &mut Actor, p: &Person, done: &mut Done, t0: u64, label: &Label, flash: bool) -> u64 {
    let ctx = a.ctx;
    let sc = ctx.sc;
    let b = &sc.behaviour;
    let (ip, net) = p.connect(a);
    let dev = if p.devices.len() > 1 && a.rng.random_bool(0.3) {
        &p.devices[1]
    } else {
        &p.devices[0]
    };
    let who = Who {
        acc: &p.acc,
        dev,
        ip,
        net,
    };
    let campaign = if flash {
        sc.campaign.ids[0].as_str()
    } else {
        ctx.campaign(&mut a.rng)
    };
    let mut t = t0;
    a.emit(t, who, campaign, Call::Detail, label);
    if flash {
        // A flash sale: straight for the headline coupon, within seconds.
        t += (ctx.think(&mut a.rng) / 3).max(400);
        t = post(a, p, t, who, campaign, Call::Claim(&sc.campaign.coupons[0]), label);
        if let Some(c) = done.claimed.first_mut() {
            *c = true;
        }
    }
    if let Some(inviter) = done.assist.take() {
        // Came in through a friend's share card.
        t += ctx.think(&mut a.rng);
        t = post(a, p, t, who, campaign, Call::Assist(&inviter), label);
    }
    for _ in 0..pick(&mut a.rng, b.items_per_session) {
        t += ctx.think(&mut a.rng);
        let item = ctx.item(&mut a.rng);
        a.emit(t, who, campaign, Call::Item(item), label);
    }
    let day = ctx.day(t);
    if p.checks_in && done.checkin_day != Some(day) {
        t += ctx.think(&mut a.rng);
        t = post(a, p, t, who, campaign, Call::Checkin, label);
        done.checkin_day = Some(day);
    }
    if a.rng.random_bool(b.claim_prob) {
        let n = sc.campaign.coupons.len();
        let start = a.rng.random_range(0..n);
        if let Some(c) = (0..n).map(|k| (start + k) % n).find(|&c| !done.claimed[c]) {
            t += ctx.think(&mut a.rng);
            t = post(a, p, t, who, campaign, Call::Claim(&sc.campaign.coupons[c]), label);
            done.claimed[c] = true;
        }
    }
    if a.rng.random_bool(b.redpacket_prob) {
        t += ctx.think(&mut a.rng);
        let packet = ctx.packet(&mut a.rng);
        t = post(a, p, t, who, campaign, Call::Packet(packet), label);
    }
    if done.reward {
        done.reward = false;
        t += ctx.think(&mut a.rng);
        t = post(a, p, t, who, campaign, Call::Claim(&sc.campaign.referral_reward), label);
    }
    if a.rng.random_bool(b.order_prob) {
        t += ctx.think(&mut a.rng);
        let item = ctx.item(&mut a.rng);
        a.emit(t, who, campaign, Call::Item(item), label);
        t += ctx.think(&mut a.rng);
        let amount = order_amount(a);
        let has_threshold = sc
            .campaign
            .coupons
            .iter()
            .zip(&done.claimed)
            .any(|(c, &d)| d && *c == sc.campaign.threshold_coupon);
        let coupon = if amount >= sc.campaign.threshold
            && (has_threshold || a.rng.random_bool(0.3))
            && a.rng.random_bool(0.85)
        {
            Some(sc.campaign.threshold_coupon.as_str())
        } else {
            None
        };
        t = post(a, p, t, who, campaign, Call::Order { amount, coupon }, label);
    }
    t
}

/// Session start times over the scenario, following the day curve, at least a few
/// minutes apart (sorted).
fn session_starts(a: &mut Actor, n: u32) -> Vec<u64> {
    let ctx = a.ctx;
    let mut starts: Vec<u64> = (0..n).map(|_| ctx.when(&mut a.rng, 0, ctx.dur_ms)).collect();
    starts.sort_unstable();
    starts
}

/// Runs a person's sessions, never overlapping; with `reward`, the last one collects the
/// referral reward.
fn live(a: &mut Actor, p: &Person, done: &mut Done, starts: &[u64], label: &Label, reward: bool) {
    let gap = (a.ctx.sc.time.think_median_s * a.ctx.pace * 1000.0 * 10.0) as u64;
    let mut free = 0u64;
    for (k, &s) in starts.iter().enumerate() {
        let t0 = s.max(free);
        if t0 >= a.ctx.dur_ms {
            break;
        }
        done.reward = reward && k + 1 == starts.len();
        free = session(a, p, done, t0, label, false) + gap;
    }
}

/// Whether normal user `i` shares invitations with friends.
fn is_inviter(ctx: &Ctx, i: u64) -> bool {
    (mix(ctx.seed ^ mix(i ^ 0x0014_17e5)) % 10_000) < (ctx.sc.behaviour.inviter_share * 10_000.0) as u64
}

/// A real inviter among normal users, other than `me` (a friend's invitation).
fn friend_inviter(a: &mut Actor, me: Option<u64>) -> Option<String> {
    let ctx = a.ctx;
    let n = ctx.sc.population.normal as u64;
    if n == 0 {
        return None;
    }
    for _ in 0..64 {
        let j = a.rng.random_range(0..n);
        if Some(j) != me && is_inviter(ctx, j) {
            return Some(openid(ctx.seed, stream_id("normal", j), 0));
        }
    }
    None
}

fn new_done(a: &mut Actor, me: Option<u64>) -> Done {
    let mut done = Done {
        claimed: vec![false; a.ctx.sc.campaign.coupons.len()],
        ..Done::default()
    };
    if a.rng.random_bool(a.ctx.sc.behaviour.assist_prob) {
        done.assist = friend_inviter(a, me);
    }
    done
}

/// One person of a single-account segment.
fn single(ctx: &Ctx, segment: &str, i: u64, out: &mut Sink) {
    let mut a = Actor::new(ctx, segment, i, out);
    let b = &ctx.sc.behaviour;
    let lab = label(false, segment, format!("{segment}-{i}"));
    let home = match segment {
        "carrier_nat" => Home::Nat,
        "office" => Home::Office {
            office: (i / b.office_size.max(1) as u64) as u32,
            host: a.rng.random_range(2..=254),
        },
        _ => Home::Broadband(residential(&mut a.rng)),
    };
    let mobile_share = match segment {
        "office" => 0.15,
        "retry" => 0.75,
        _ => b.mobile_share,
    };
    let mut p = Person::new(&mut a, 0, home, mobile_share);
    p.retry = segment == "retry";
    let me = (segment == "normal").then_some(i);
    let mut done = new_done(&mut a, me);
    match segment {
        "flash_surge" => {
            let at =
                (b.flash_at_s * 1000.0) as u64 + a.rng.random_range(0..((b.flash_window_s * 1000.0) as u64).max(1));
            let end = session(&mut a, &p, &mut done, at, &lab, true);
            if a.rng.random_bool(0.3) {
                let later = ctx.when(&mut a.rng, end, ctx.dur_ms).max(end + 60_000);
                live(&mut a, &p, &mut done, &[later], &lab, false);
            }
        }
        _ => {
            let n = pick(&mut a.rng, b.sessions);
            let mut starts = session_starts(&mut a, n);
            let inviter = me.is_some_and(|i| is_inviter(ctx, i)) && a.rng.random_bool(0.7);
            if inviter {
                // An inviter comes back late to collect the referral reward.
                starts.push(ctx.when(&mut a.rng, ctx.dur_ms / 2, ctx.dur_ms));
                starts.sort_unstable();
            }
            live(&mut a, &p, &mut done, &starts, &lab, inviter);
        }
    }
}

/// A household: 2–3 accounts on one shared phone, one home line and one address.
fn family(ctx: &Ctx, i: u64, out: &mut Sink) {
    let mut a = Actor::new(ctx, "family", i, out);
    let lab = label(false, "family", format!("family-{i}"));
    let home = Home::Broadband(residential(&mut a.rng));
    let shared = Device::phone(&mut a.rng);
    let n = a.rng.random_range(2..=3);
    let mut address = None;
    for k in 0..n {
        let mut p = Person::new(&mut a, k, home, 0.2);
        p.devices = vec![shared.clone()];
        let addr = address.get_or_insert_with(|| p.acc.address.clone());
        p.acc.address = addr.clone();
        let mut done = new_done(&mut a, None);
        let sessions = pick(&mut a.rng, ctx.sc.behaviour.sessions);
        let starts = session_starts(&mut a, sessions);
        live(&mut a, &p, &mut done, &starts, &lab, false);
    }
}

/// An influencer and the many real friends who assist them, spread over hours.
fn heavy_referrer(ctx: &Ctx, i: u64, out: &mut Sink) {
    let mut a = Actor::new(ctx, "heavy_referrer", i, out);
    let b = &ctx.sc.behaviour;
    let lab = label(false, "heavy_referrer", format!("heavy_referrer-{i}"));
    let home = Home::Broadband(residential(&mut a.rng));
    let p = Person::new(&mut a, 0, home, b.mobile_share);
    let mut done = new_done(&mut a, None);
    // The post goes out during the first half.
    let share = ctx.when(&mut a.rng, 0, (ctx.dur_ms / 2).max(1));
    let end = session(&mut a, &p, &mut done, share, &lab, false);
    let reward_at = ctx.when(&mut a.rng, end + (ctx.dur_ms - end.min(ctx.dur_ms)) / 3, ctx.dur_ms);
    live(&mut a, &p, &mut done, &[reward_at.max(end + 60_000)], &lab, true);

    let delay = LogNormal::new((b.invitee_delay_median_s * ctx.pace * 1000.0).max(1.0).ln(), 1.0).expect("valid delay");
    let n = pick(&mut a.rng, b.invitees);
    for k in 0..n as u64 {
        let ilab = label(false, "invitee", format!("heavy_referrer-{i}/invitee-{k}"));
        let home = Home::Broadband(residential(&mut a.rng));
        let friend = Person::new(&mut a, k + 1, home, b.mobile_share);
        let mut fdone = Done {
            claimed: vec![false; ctx.sc.campaign.coupons.len()],
            ..Done::default()
        };
        fdone.assist = Some(p.acc.user.clone());
        let mut at = u64::MAX;
        for _ in 0..8 {
            let d = delay.sample(&mut a.rng) as u64;
            if end + d < ctx.dur_ms {
                at = end + d;
                break;
            }
        }
        if at == u64::MAX {
            at = a.rng.random_range(end.min(ctx.dur_ms - 1)..ctx.dur_ms);
        }
        let fend = session(&mut a, &friend, &mut fdone, at, &ilab, false);
        if a.rng.random_bool(0.2) {
            let later = ctx.when(&mut a.rng, fend, ctx.dur_ms).max(fend + 60_000);
            live(&mut a, &friend, &mut fdone, &[later], &ilab, false);
        }
    }
}
