//! The state under attack: a flood of a million new device ids through the real
//! pipeline stays within the memory budget, and evictions are counted.

use std::path::Path;

use riskgate::event::Event;
use riskgate::pipeline;
use riskgate::state::{KeyHasher, MemoryState, StateStore};

#[tokio::test]
async fn a_million_new_device_ids_stay_within_the_budget() {
    let hasher = KeyHasher::seeded(7);
    let rt = riskgate::runtime::load(Path::new("config/riskgate.toml"), &hasher).unwrap();
    let budget: u64 = 16 << 20;
    let state = MemoryState::new(budget, 90_000_000);
    let mut event: Event = serde_json::from_str(
        r#"{"ts_ms": 1762819200000, "method": "POST", "path": "/api/coupon/claim", "client_ip": "203.0.113.7",
            "headers": {"x-user-id": "victim"}, "body": {"campaign_id": "c-1"}}"#,
    )
    .unwrap();
    let mut peak = 0;
    for i in 0..1_000_000u64 {
        event.ts_ms += 1;
        event.headers.insert("x-device-id".into(), format!("spoofed-{i}"));
        event.headers.insert("x-user-id".into(), format!("acct-{}", i % 50_000));
        let a = pipeline::assess(&rt, &state, &hasher, &event).await.expect("routed");
        assert!(a.score.value <= 1.0);
        if i % 100_000 == 0 {
            peak = peak.max(state.stats().iter().map(|t| t.bytes).sum::<u64>());
        }
    }
    let stats = state.stats();
    let used: u64 = stats.iter().map(|t| t.bytes).sum();
    let evicted: u64 = stats.iter().map(|t| t.evictions).sum();
    let keys: u64 = stats.iter().map(|t| t.keys).sum();
    eprintln!("state after flood: {used} bytes (peak sampled {peak}), {keys} keys, {evicted} evictions: {stats:?}");
    assert!(used.max(peak) <= budget, "{used} > {budget}");
    assert!(evicted > 500_000, "{stats:?}");
    // Every new device has an entry of its own (pointer, subnets, user agents included): bounded alike.
    let devices = stats.iter().find(|t| t.table == "devices").expect("devices table");
    assert!(devices.evictions > 100_000, "{stats:?}");
    // The budget is used, not wasted: at least half of it holds keys.
    assert!(used > budget / 4, "{stats:?}");
}
