//! The scoring path without the network: `pipeline::assess` on the default config with a
//! million accounts tracked, against its parts (extract only, state only).
//!
//! Run: `cargo bench --bench pipeline`

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use riskgate::event::Event;
use riskgate::state::memory::ready;
use riskgate::state::{KeyHasher, MemoryState, StateStore};
use riskgate::{extract, pipeline, runtime, signals};

fn event(i: u64, ts_ms: u64) -> Event {
    let user = i % 1_000_000;
    let mut e: Event = serde_json::from_str(
        r#"{"ts_ms": 0, "method": "POST", "path": "/api/coupon/claim", "client_ip": "203.0.113.7",
            "headers": {"x-request-id": "r-1", "user-agent": "Mozilla/5.0 (iPhone) MicroMessenger/8.0.47",
                        "x-app-version": "8.0.47", "content-type": "application/json"},
            "body": {"campaign_id": "c-1111", "coupon_id": "new-user-50"}}"#,
    )
    .unwrap();
    e.ts_ms = ts_ms;
    e.client_ip = std::net::IpAddr::from([10, (user >> 16) as u8, (user >> 8) as u8, user as u8]);
    e.headers.insert("x-user-id".into(), format!("u{user}"));
    e.headers.insert("x-device-id".into(), format!("d{}", user / 2));
    e.headers.insert("x-phone-hash".into(), format!("p{user:x}"));
    e
}

fn bench(c: &mut Criterion) {
    let hasher = KeyHasher::seeded(1);
    let rt = runtime::load(Path::new("config/riskgate.toml"), &hasher).unwrap();
    let state = MemoryState::new(2 << 30, 90_000_000);
    let t0 = 1_762_819_200_000u64;
    // One million accounts (and half a million devices) tracked before measuring.
    for i in 0..1_000_000u64 {
        ready(pipeline::assess(&rt, &state, &hasher, &event(i, t0 + i / 100)));
    }
    let tables = state.stats();
    // Bytes per account only mean something for a state that forgot nothing.
    assert!(
        tables.iter().all(|t| t.evictions == 0),
        "the warm-up evicted keys: raise the bench's budget\n{tables:?}"
    );
    let bytes: u64 = tables.iter().map(|t| t.bytes).sum();
    let entries: u64 = tables.iter().map(|t| t.entry_bytes).sum();
    eprintln!(
        "tracked after warm-up: {tables:?}\n  {entries} bytes in entries, {:.0} bytes per account \
         ({bytes} allocated for the bench's budget)",
        entries as f64 / 1e6
    );

    // A fixed pseudo-random walk over the tracked accounts.
    let events: Vec<Event> = (0..4096u64)
        .map(|i| event(i.wrapping_mul(2_654_435_761) % 1_000_000, t0 + 10_000_000 + i))
        .collect();
    let route = &rt.routes[rt.route(&http::Method::POST, "/api/coupon/claim").unwrap()];

    let mut g = c.benchmark_group("scoring");
    let mut n = 0usize;
    g.bench_function("assess (route+extract+signals+score+decide)", |b| {
        b.iter(|| {
            n = (n + 1) % events.len();
            black_box(ready(pipeline::assess(&rt, &state, &hasher, &events[n])))
        })
    });
    g.bench_function("extract only", |b| {
        b.iter(|| {
            n = (n + 1) % events.len();
            black_box(extract::identities(
                &route.identity,
                &events[n],
                &rt.server.trusted_proxies,
            ))
        })
    });
    let ids: Vec<_> = events
        .iter()
        .map(|e| extract::identities(&route.identity, e, &[]))
        .collect();
    g.bench_function("signals only (state update + features)", |b| {
        b.iter(|| {
            n = (n + 1) % events.len();
            black_box(ready(signals::observe(
                &state,
                &hasher,
                route,
                &rt.signals,
                &ids[n],
                events[n].ts_ms,
            )))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
