//! Attack crews. Each crew draws a skill in [0, 1): skilled crews imitate the browsing
//! funnel more often, reuse fewer phone numbers and vary more; clumsy ones are blunt.

use rand::seq::SliceRandom;
use rand::Rng;

use super::world::{
    cloud, hex, label, mobile_v4, mobile_v6, pick, proxy, residential, residential_in, Account, Actor, Call, Ctx,
    Device, Net, Sink, Who,
};

pub(crate) fn generate(ctx: &Ctx, out: &mut Sink) {
    let a = &ctx.sc.attacks;
    for i in 0..a.device_farm.crews as u64 {
        device_farm(ctx, i, out);
    }
    for i in 0..a.device_spoofing.crews as u64 {
        device_spoofing(ctx, i, out);
    }
    for i in 0..a.script.crews as u64 {
        script(ctx, i, out);
    }
    for i in 0..a.ip_rotation.crews as u64 {
        ip_rotation(ctx, i, out);
    }
    for i in 0..a.referral_ring.crews as u64 {
        referral_ring(ctx, i, out);
    }
    for i in 0..a.fake_order.crews as u64 {
        fake_order(ctx, i, out);
    }
    for i in 0..a.low_and_slow.crews as u64 {
        low_and_slow(ctx, i, out);
    }
    for i in 0..a.crowdsourced.crews as u64 {
        crowdsourced(ctx, i, out);
    }
}

/// Crew accounts whose phone numbers come from a pool of virtual numbers: clumsy crews
/// bind several accounts to one number.
fn accounts(a: &mut Actor, n: u32, skill: f64) -> Vec<Account> {
    let pool = ((n as f64 * (0.35 + 0.65 * skill)).ceil() as usize).max(1);
    let phones: Vec<String> = (0..pool).map(|_| hex(&mut a.rng, 32)).collect();
    (0..n as u64)
        .map(|k| {
            let mut acc = Account::new(a.ctx, a.stream, k, &mut a.rng);
            acc.phone = Some(phones[k as usize % pool].clone());
            acc
        })
        .collect()
}

/// Many accounts on few phones (群控), claiming in waves: each phone steps through its
/// accounts a few seconds apart.
fn device_farm(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.device_farm;
    let mut a = Actor::new(ctx, "device_farm", i, out);
    let lab = label(true, "device_farm", format!("device_farm-{i}"));
    let skill: f64 = a.rng.random();
    let n_acc = pick(&mut a.rng, spec.size);
    let n_dev = pick(&mut a.rng, spec.devices).clamp(1, n_acc) as usize;
    // Farms buy phones by the batch: usually one model.
    let base = Device::phone(&mut a.rng).latest();
    let same_model = a.rng.random_bool(0.7);
    let devices: Vec<Device> = (0..n_dev)
        .map(|_| {
            if same_model {
                base.sibling(&mut a.rng)
            } else {
                Device::phone(&mut a.rng).latest()
            }
        })
        .collect();
    let accs = accounts(&mut a, n_acc, skill);
    let wifi = a.rng.random_bool(0.6);
    let line = residential(&mut a.rng);
    let campaign = ctx.campaign(&mut a.rng);
    let coupons = &ctx.sc.campaign.coupons;
    let mut waves: Vec<u64> = (0..pick(&mut a.rng, spec.waves))
        .map(|_| ctx.in_window(&mut a.rng, spec.window))
        .collect();
    waves.sort_unstable();
    for (w, &start) in waves.iter().enumerate() {
        let coupon = &coupons[w % coupons.len()];
        for (d, dev) in devices.iter().enumerate() {
            let mut t = start + ctx.paced(&mut a.rng, [0.0, 10.0]);
            let (ip, net) = if wifi {
                (line, Net::Wifi)
            } else {
                (mobile_v4(&mut a.rng), Net::cellular(&mut a.rng))
            };
            for acc in accs.iter().skip(d).step_by(n_dev) {
                let who = Who { acc, dev, ip, net };
                if a.rng.random_bool(0.3 + 0.6 * skill) {
                    a.emit(t, who, campaign, Call::Detail, &lab);
                    t += ctx.paced(&mut a.rng, [1.0, 4.0]);
                }
                a.emit(t, who, campaign, Call::Claim(coupon), &lab);
                t += ctx.paced(&mut a.rng, [1.0, 3.0]);
                if a.rng.random_bool(0.5) {
                    let packet = ctx.packet(&mut a.rng);
                    a.emit(t, who, campaign, Call::Packet(packet), &lab);
                    t += ctx.paced(&mut a.rng, [1.0, 3.0]);
                }
                if w == 0 && a.rng.random_bool(0.5) {
                    a.emit(t, who, campaign, Call::Checkin, &lab);
                    t += ctx.paced(&mut a.rng, [1.0, 3.0]);
                }
                t += ctx.paced(&mut a.rng, spec.switch_s);
            }
        }
    }
}

/// A device-id spoofing tool (改机): every new account gets a fresh device id, but model,
/// OS, WeChat and app version (the user agent) are all the same.
fn device_spoofing(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.device_spoofing;
    let mut a = Actor::new(ctx, "device_spoofing", i, out);
    let lab = label(true, "device_spoofing", format!("device_spoofing-{i}"));
    let skill: f64 = a.rng.random();
    let base = Device::phone(&mut a.rng).latest();
    // Cheap tools generate ids with a recognisable common prefix.
    let prefix = (skill < 0.4).then(|| hex(&mut a.rng, 8));
    let sub: u8 = a.rng.random();
    let lines: Vec<_> = (0..a.rng.random_range(1..=3))
        .map(|_| residential_in(sub, &mut a.rng))
        .collect();
    let n = pick(&mut a.rng, spec.size);
    let accs = accounts(&mut a, n, 0.9 + 0.1 * skill);
    let campaign = ctx.campaign(&mut a.rng);
    let coupon = &ctx.sc.campaign.coupons[0];
    let mut t = ctx.in_window(&mut a.rng, spec.window);
    for (k, acc) in accs.iter().enumerate() {
        let mut dev = base.sibling(&mut a.rng);
        if let (Some(p), Some(id)) = (&prefix, dev.id.as_mut()) {
            id.replace_range(..8, p);
        }
        let (ip, net) = if skill > 0.6 {
            (mobile_v4(&mut a.rng), Net::G4)
        } else {
            (lines[k % lines.len()], Net::Wifi)
        };
        let who = Who {
            acc,
            dev: &dev,
            ip,
            net,
        };
        if a.rng.random_bool(0.2 + 0.6 * skill) {
            a.emit(t, who, campaign, Call::Detail, &lab);
            t += ctx.paced(&mut a.rng, [2.0, 6.0]);
        }
        a.emit(t, who, campaign, Call::Claim(coupon), &lab);
        t += ctx.paced(&mut a.rng, [1.0, 4.0]);
        if a.rng.random_bool(0.5) {
            let packet = ctx.packet(&mut a.rng);
            a.emit(t, who, campaign, Call::Packet(packet), &lab);
        }
        t += ctx.paced(&mut a.rng, spec.gap_s);
    }
}

/// A script calling the API directly (协议刷): no browsing, a machine-regular period with
/// tiny jitter, a generic client, a missing or stale app version, often no device id.
fn script(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.script;
    let mut a = Actor::new(ctx, "script", i, out);
    let lab = label(true, "script", format!("script-{i}"));
    let base = Device::script(&mut a.rng);
    // 0: no device id; 1: one hard-coded id; 2: a random id per request.
    let id_mode = match a.rng.random_range(0..100) {
        0..45 => 0,
        45..75 => 1,
        _ => 2,
    };
    let fixed_id = hex(&mut a.rng, 32);
    let ips: Vec<_> = (0..a.rng.random_range(1..=3)).map(|_| cloud(&mut a.rng)).collect();
    let n = pick(&mut a.rng, spec.size);
    let mut accs = accounts(&mut a, n, 1.0);
    match a.rng.random_range(0..10) {
        // A captured request replayed with its phone hash for every account.
        0..4 => {
            let captured = accs[0].phone.clone();
            accs.iter_mut().for_each(|acc| acc.phone = captured.clone());
        }
        4..6 => accs.iter_mut().for_each(|acc| acc.phone = None),
        _ => {}
    }
    let mut calls = vec![Call::Claim(&ctx.sc.campaign.coupons[0])];
    if a.rng.random_bool(0.6) {
        calls.push(Call::Checkin);
    }
    if a.rng.random_bool(0.6) {
        calls.push(Call::Packet(ctx.packet(&mut a.rng)));
    }
    let inviter = accs[0].user.clone();
    if a.rng.random_bool(0.2) {
        calls.push(Call::Assist(&inviter));
    }
    let campaign = ctx.campaign(&mut a.rng);
    let period = if spec.interval_ms[1] > spec.interval_ms[0] {
        a.rng.random_range(spec.interval_ms[0]..=spec.interval_ms[1])
    } else {
        spec.interval_ms[0]
    };
    let jitter = spec.jitter_ms as i64;
    let mut t = ctx.in_window(&mut a.rng, spec.window);
    let requests = pick(&mut a.rng, spec.requests) as usize;
    for k in 0..requests {
        let acc = &accs[k % accs.len()];
        let call = calls[(k / accs.len()) % calls.len()];
        let mut dev = base.clone();
        dev.id = match id_mode {
            0 => None,
            1 => Some(fixed_id.clone()),
            _ => Some(hex(&mut a.rng, 32)),
        };
        let ip = ips[(k / 7) % ips.len()];
        a.emit(
            t,
            Who {
                acc,
                dev: &dev,
                ip,
                net: Net::Wifi,
            },
            campaign,
            call,
            &lab,
        );
        let j = if jitter > 0 {
            a.rng.random_range(-jitter..=jitter)
        } else {
            0
        };
        t = (t as i64 + period as i64 + j).max(t as i64 + 1) as u64;
        if t >= ctx.dur_ms {
            break;
        }
    }
}

/// Dial-up (秒拨) and proxy rotation: a new address from a different /24 for every
/// request, but a small pool of phones reused across the accounts.
fn ip_rotation(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.ip_rotation;
    let mut a = Actor::new(ctx, "ip_rotation", i, out);
    let lab = label(true, "ip_rotation", format!("ip_rotation-{i}"));
    let skill: f64 = a.rng.random();
    let n_dev = pick(&mut a.rng, spec.devices) as usize;
    let devices: Vec<Device> = (0..n_dev).map(|_| Device::phone(&mut a.rng).latest()).collect();
    let n = pick(&mut a.rng, spec.size);
    let accs = accounts(&mut a, n, skill);
    let campaign = ctx.campaign(&mut a.rng);
    let dial_up = a.rng.random_bool(0.6);
    let mut t = ctx.in_window(&mut a.rng, spec.window);
    let fresh = |a: &mut Actor| {
        if dial_up {
            residential(&mut a.rng)
        } else {
            proxy(&mut a.rng)
        }
    };
    for (k, acc) in accs.iter().enumerate() {
        let dev = &devices[k % n_dev];
        if a.rng.random_bool(0.4 + 0.5 * skill) {
            let ip = fresh(&mut a);
            a.emit(
                t,
                Who {
                    acc,
                    dev,
                    ip,
                    net: Net::Wifi,
                },
                campaign,
                Call::Detail,
                &lab,
            );
            t += ctx.paced(&mut a.rng, [2.0, 8.0]);
        }
        let ip = fresh(&mut a);
        let coupon = &ctx.sc.campaign.coupons[k % ctx.sc.campaign.coupons.len()];
        a.emit(
            t,
            Who {
                acc,
                dev,
                ip,
                net: Net::Wifi,
            },
            campaign,
            Call::Claim(coupon),
            &lab,
        );
        t += ctx.paced(&mut a.rng, [1.0, 4.0]);
        if a.rng.random_bool(0.6) {
            let ip = fresh(&mut a);
            let packet = ctx.packet(&mut a.rng);
            a.emit(
                t,
                Who {
                    acc,
                    dev,
                    ip,
                    net: Net::Wifi,
                },
                campaign,
                Call::Packet(packet),
                &lab,
            );
            t += ctx.paced(&mut a.rng, [1.0, 4.0]);
        }
        if a.rng.random_bool(0.3) {
            let ip = fresh(&mut a);
            a.emit(
                t,
                Who {
                    acc,
                    dev,
                    ip,
                    net: Net::Wifi,
                },
                campaign,
                Call::Checkin,
                &lab,
            );
        }
        t += ctx.paced(&mut a.rng, spec.gap_s);
    }
}

/// A self-invite ring: members assist each other's invitations around a cycle (A→B→C→…→A,
/// some pairs both ways), then brand-new accounts, made on the inviter's own phones and
/// home /24, assist each member; finally the members collect the referral reward.
fn referral_ring(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.referral_ring;
    let mut a = Actor::new(ctx, "referral_ring", i, out);
    let lab = label(true, "referral_ring", format!("referral_ring-{i}"));
    let skill: f64 = a.rng.random();
    let m = pick(&mut a.rng, spec.size).max(3) as usize;
    let n_dev = pick(&mut a.rng, spec.devices).max(1) as usize;
    let devices: Vec<Device> = (0..n_dev).map(|_| Device::phone(&mut a.rng).latest()).collect();
    let sub: u8 = a.rng.random();
    let members = accounts(&mut a, m as u32, 0.5 + 0.5 * skill);
    let campaign = ctx.campaign(&mut a.rng);
    let mut t = ctx.in_window(&mut a.rng, spec.window);
    let step = |a: &mut Actor| ctx.paced(&mut a.rng, spec.step_s) / 3 + 200;
    for (k, acc) in members.iter().enumerate() {
        let ip = residential_in(sub, &mut a.rng);
        a.emit(
            t,
            Who {
                acc,
                dev: &devices[k % n_dev],
                ip,
                net: Net::Wifi,
            },
            campaign,
            Call::Detail,
            &lab,
        );
        t += step(&mut a);
    }
    for k in 0..m {
        let ip = residential_in(sub, &mut a.rng);
        let who = Who {
            acc: &members[k],
            dev: &devices[k % n_dev],
            ip,
            net: Net::Wifi,
        };
        a.emit(t, who, campaign, Call::Assist(&members[(k + 1) % m].user), &lab);
        t += step(&mut a);
        if a.rng.random_bool(0.5 * (1.0 - skill)) {
            a.emit(t, who, campaign, Call::Assist(&members[(k + m - 1) % m].user), &lab);
            t += step(&mut a);
        }
    }
    let mut next = m as u64;
    for (k, inviter) in members.iter().enumerate() {
        for _ in 0..pick(&mut a.rng, spec.invitees) {
            let mut invitee = Account::new(ctx, a.stream, next, &mut a.rng);
            next += 1;
            invitee.phone = Some(hex(&mut a.rng, 32));
            let dev = if a.rng.random_bool(0.7) {
                &devices[k % n_dev]
            } else {
                &devices[a.rng.random_range(0..n_dev)]
            };
            let ip = residential_in(sub, &mut a.rng);
            let who = Who {
                acc: &invitee,
                dev,
                ip,
                net: Net::Wifi,
            };
            if a.rng.random_bool(0.5) {
                a.emit(t, who, campaign, Call::Detail, &lab);
                t += ctx.paced(&mut a.rng, [2.0, 6.0]);
            }
            a.emit(t, who, campaign, Call::Assist(&inviter.user), &lab);
            t += step(&mut a);
        }
    }
    let reward = &ctx.sc.campaign.referral_reward;
    for (k, acc) in members.iter().enumerate() {
        let ip = residential_in(sub, &mut a.rng);
        a.emit(
            t,
            Who {
                acc,
                dev: &devices[k % n_dev],
                ip,
                net: Net::Wifi,
            },
            campaign,
            Call::Claim(reward),
            &lab,
        );
        t += step(&mut a);
    }
}

/// Fake orders (刷单): claim the threshold coupon, order just above the threshold, from a
/// few shared shipping addresses and pay accounts; one operator per phone.
fn fake_order(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.fake_order;
    let mut a = Actor::new(ctx, "fake_order", i, out);
    let lab = label(true, "fake_order", format!("fake_order-{i}"));
    let skill: f64 = a.rng.random();
    let addresses: Vec<String> = (0..pick(&mut a.rng, spec.addresses))
        .map(|_| hex(&mut a.rng, 16))
        .collect();
    let pays: Vec<String> = (0..pick(&mut a.rng, spec.pay_accounts))
        .map(|_| hex(&mut a.rng, 16))
        .collect();
    let n = pick(&mut a.rng, spec.size);
    let n_dev = (n as usize / a.rng.random_range(2..=5)).max(1);
    let devices: Vec<Device> = (0..n_dev).map(|_| Device::phone(&mut a.rng).latest()).collect();
    let sub: u8 = a.rng.random();
    let mut accs = accounts(&mut a, n, skill);
    for acc in &mut accs {
        acc.address = addresses[a.rng.random_range(0..addresses.len())].clone();
        acc.pay = pays[a.rng.random_range(0..pays.len())].clone();
    }
    let campaign = ctx.campaign(&mut a.rng);
    let coupon = ctx.sc.campaign.threshold_coupon.as_str();
    let (lo, hi) = (
        (spec.amount[0] * 100.0).ceil() as u64,
        (spec.amount[1] * 100.0).floor() as u64,
    );
    // One operator per phone, working through their accounts in parallel.
    let start = ctx.in_window(&mut a.rng, spec.window);
    for (d, dev) in devices.iter().enumerate() {
        let mut t = start + ctx.paced(&mut a.rng, [0.0, 30.0]);
        for acc in accs.iter().skip(d).step_by(n_dev) {
            let ip = residential_in(sub, &mut a.rng);
            let who = Who {
                acc,
                dev,
                ip,
                net: Net::Wifi,
            };
            a.emit(t, who, campaign, Call::Detail, &lab);
            t += ctx.paced(&mut a.rng, [3.0, 15.0]);
            if a.rng.random_bool(0.3 + 0.6 * skill) {
                let item = ctx.item(&mut a.rng);
                a.emit(t, who, campaign, Call::Item(item), &lab);
                t += ctx.paced(&mut a.rng, [5.0, 30.0]);
            }
            a.emit(t, who, campaign, Call::Claim(coupon), &lab);
            t += ctx.paced(&mut a.rng, [3.0, 20.0]);
            for _ in 0..pick(&mut a.rng, spec.orders) {
                let cents = if hi > lo {
                    a.rng.random_range(lo..=hi)
                } else {
                    lo.max(hi)
                };
                a.emit(
                    t,
                    who,
                    campaign,
                    Call::Order {
                        amount: cents as f64 / 100.0,
                        coupon: Some(coupon),
                    },
                    &lab,
                );
                t += ctx.paced(&mut a.rng, [10.0, 60.0]);
            }
            t += ctx.paced(&mut a.rng, spec.gap_s);
        }
    }
}

/// Aged accounts (养号): they browse and check in like normal users early on, then claim
/// one at a time, minutes apart, from a shared pool of phones on a few home lines.
fn low_and_slow(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.low_and_slow;
    let mut a = Actor::new(ctx, "low_and_slow", i, out);
    let lab = label(true, "low_and_slow", format!("low_and_slow-{i}"));
    let skill: f64 = a.rng.random();
    let n_dev = pick(&mut a.rng, spec.devices) as usize;
    let devices: Vec<Device> = (0..n_dev).map(|_| Device::phone(&mut a.rng)).collect();
    let subs: Vec<u8> = (0..a.rng.random_range(2..=4)).map(|_| a.rng.random()).collect();
    let n = pick(&mut a.rng, spec.size);
    let mut accs = accounts(&mut a, n, 0.7 + 0.3 * skill);
    let campaign = ctx.campaign(&mut a.rng);
    let age_end = ((spec.age_fraction * ctx.dur_ms as f64) as u64).max(1);
    let where_from = |a: &mut Actor| {
        let dev = a.rng.random_range(0..n_dev);
        let sub = subs[a.rng.random_range(0..subs.len())];
        (dev, residential_in(sub, &mut a.rng))
    };
    // Ageing: a browse session or two, like anyone else.
    for acc in &accs {
        for _ in 0..a.rng.random_range(1..=2) {
            let (d, ip) = where_from(&mut a);
            let who = Who {
                acc,
                dev: &devices[d],
                ip,
                net: Net::Wifi,
            };
            let mut t = ctx.when(&mut a.rng, 0, age_end);
            a.emit(t, who, campaign, Call::Detail, &lab);
            for _ in 0..a.rng.random_range(1..=3) {
                t += ctx.think(&mut a.rng);
                let item = ctx.item(&mut a.rng);
                a.emit(t, who, campaign, Call::Item(item), &lab);
            }
            if a.rng.random_bool(0.7) {
                t += ctx.think(&mut a.rng);
                a.emit(t, who, campaign, Call::Checkin, &lab);
            }
        }
    }
    // Then the slow harvest.
    accs.shuffle(&mut a.rng);
    let mut t = age_end + ctx.paced(&mut a.rng, [0.0, 120.0]);
    for acc in &accs {
        let (d, ip) = where_from(&mut a);
        let who = Who {
            acc,
            dev: &devices[d],
            ip,
            net: Net::Wifi,
        };
        let mut s = t;
        a.emit(s, who, campaign, Call::Detail, &lab);
        s += ctx.think(&mut a.rng);
        if a.rng.random_bool(0.5) {
            let item = ctx.item(&mut a.rng);
            a.emit(s, who, campaign, Call::Item(item), &lab);
            s += ctx.think(&mut a.rng);
        }
        let coupon = &ctx.sc.campaign.coupons[a.rng.random_range(0..ctx.sc.campaign.coupons.len())];
        a.emit(s, who, campaign, Call::Claim(coupon), &lab);
        if a.rng.random_bool(0.3) {
            s += ctx.think(&mut a.rng);
            let packet = ctx.packet(&mut a.rng);
            a.emit(s, who, campaign, Call::Packet(packet), &lab);
        }
        t += ctx.paced(&mut a.rng, spec.claim_gap_s);
        if t >= ctx.dur_ms {
            break;
        }
    }
}

/// Crowdsourced assists (众包): an inviter posts a paid task after a quiet spell; real
/// people on their own phones and networks, with brand-new accounts, land on the page and
/// assist that one inviter within minutes, and do nothing else.
fn crowdsourced(ctx: &Ctx, i: u64, out: &mut Sink) {
    let spec = &ctx.sc.attacks.crowdsourced;
    let mut a = Actor::new(ctx, "crowdsourced", i, out);
    let lab = label(true, "crowdsourced", format!("crowdsourced-{i}"));
    let boss = Account::new(ctx, a.stream, 0, &mut a.rng);
    let boss_dev = Device::phone(&mut a.rng);
    let boss_ip = residential(&mut a.rng);
    let campaign = ctx.campaign(&mut a.rng);
    let share = ctx.in_window(&mut a.rng, spec.window);
    let boss_who = Who {
        acc: &boss,
        dev: &boss_dev,
        ip: boss_ip,
        net: Net::Wifi,
    };
    a.emit(share, boss_who, campaign, Call::Detail, &lab);
    let burst_at = share + ctx.paced(&mut a.rng, spec.lull_s);
    let burst = ctx.paced(&mut a.rng, spec.burst_s);
    for k in 0..pick(&mut a.rng, spec.size) as u64 {
        let helper = Account::new(ctx, a.stream, k + 1, &mut a.rng);
        let dev = Device::phone(&mut a.rng);
        let (ip, net) = match a.rng.random_range(0..3) {
            0 => (residential(&mut a.rng), Net::Wifi),
            1 => (mobile_v6(&mut a.rng), Net::cellular(&mut a.rng)),
            _ => (mobile_v4(&mut a.rng), Net::cellular(&mut a.rng)),
        };
        let who = Who {
            acc: &helper,
            dev: &dev,
            ip,
            net,
        };
        // Front-loaded: most helpers grab the task as soon as it is posted.
        let u: f64 = a.rng.random();
        let mut t = burst_at + (u * u * burst as f64) as u64;
        if a.rng.random_bool(0.6) {
            a.emit(t, who, campaign, Call::Detail, &lab);
            t += ctx.paced(&mut a.rng, [2.0, 10.0]);
        }
        a.emit(t, who, campaign, Call::Assist(&boss.user), &lab);
    }
    let t = burst_at + burst + ctx.paced(&mut a.rng, [30.0, 300.0]);
    a.emit(
        t,
        boss_who,
        campaign,
        Call::Claim(&ctx.sc.campaign.referral_reward),
        &lab,
    );
}
