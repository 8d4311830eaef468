//! Cost of counting one stopped request in the top-offenders sketch (`offenders::record`,
//! called by the proxy for each challenge or block): a few repeat offenders, and a flood
//! of one-off device ids that keeps the sketch full (the worst case: every record
//! replaces the minimum). `cargo bench --bench offenders`.

use criterion::{criterion_group, criterion_main, Criterion};
use riskgate::extract::{subnet_of, Identities};
use riskgate::offenders::Offenders;

fn ids(device: String, ip: std::net::IpAddr) -> Identities {
    Identities {
        user: Some(format!("acct-{}", device.len())),
        device: Some(device),
        ip,
        subnet: subnet_of(ip),
        phone: None,
        campaign: None,
        inviter: Some("inviter-1".into()),
        amount: None,
        pay_account: None,
        address: None,
        user_agent: None,
        app_version: None,
        wifi: false,
    }
}

fn bench(c: &mut Criterion) {
    let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let mut g = c.benchmark_group("offenders_record");
    let o = Offenders::new(512, 300_000);
    let repeat: Vec<Identities> = (0..64).map(|i| ids(format!("farm-{i}"), ip)).collect();
    let mut i = 0usize;
    g.bench_function("repeat_offenders", |b| {
        b.iter(|| {
            i += 1;
            o.record(&repeat[i % repeat.len()], 1_000);
        })
    });
    let o = Offenders::new(512, 300_000);
    let flood: Vec<Identities> = (0..100_000).map(|i| ids(format!("spoofed-{i}"), ip)).collect();
    let mut i = 0usize;
    g.bench_function("flood_of_new_ids_capacity_512", |b| {
        b.iter(|| {
            i += 1;
            o.record(&flood[i % flood.len()], 1_000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
