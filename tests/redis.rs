//! The Redis state backend against a real redis-server on a free loopback port: replicas
//! sharing limits and graphs, Redis down, slow and restarted (each degradation policy),
//! and replay deciding alike with either backend. Skipped, with a message, when
//! redis-server is not installed (`.ci/run` installs it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A redis-server child process on 127.0.0.1, without persistence.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (cluster mode).
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (with a message) when redis-server is absent.
    fn start() -> Option<RedisServer> {
        Self::start_with(|_| Vec::new())
    }

    /// `args` gets the port and returns extra arguments.
    fn start_with(args: impl Fn(u16) -> Vec<String>) -> Option<RedisServer> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server; .ci/run does this)");
            return None;
        }
        // A port that was free a moment ago may be taken by the time the server binds:
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                args: args(port),
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--enable-debug-command", "yes"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command and returns the first reply line.
    fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a fresh one (empty: no persistence) on the same port.
    fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server restarts on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A config on the Redis backend with one coupon route (`extra` is appended after it).
fn redis_config(redis: &RedisServer, extra: &str) -> String {
    format!(
        "{}\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\ntimeout_ms = 2000\n",
        small_config(extra),
        redis.url()
    )
}

async fn claim_on(c: &TestClient, addr: SocketAddr, path: &str, user: &str, device: &str) -> Answer {
    send(
        c,
        "POST",
        &format!("http://{addr}{path}"),
        &[
            ("x-user-id", user),
            ("x-device-id", device),
            ("content-type", "application/json"),
        ],
        r#"{"campaign_id":"c-1"}"#,
    )
    .await
}

/// A `riskgate serve --state redis://…` process on free ports.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn start(cfg: &ConfigDir, upstream: &str, redis: &RedisServer) -> Process {
        let [port, admin_port] = free_ports();
        let child = Command::new(env!("CARGO_BIN_EXE_riskgate"))
            .arg("serve")
            .arg("--config")
            .arg(cfg.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--upstream", upstream, "--state", &redis.url()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Process {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_enforce_one_limit_and_share_the_device_graph() {
    let Some(redis) = RedisServer::start() else { return };
    let up = Upstream::start(Duration::ZERO).await;
    // The config itself says memory: `--state redis://…` switches both processes over.
    let cfg = ConfigDir::new(&small_config(
        r#"
[[routes.limits]]
key = "device"
rate = "5/h"
burst = 5

[[rules]]
name = "device_farm"
when = "users_per_device_24h >= 3"
score = 0.9

# Generous, so that a loaded machine (the first call loads the script) does not turn a
# slow answer into the degradation policy's.
[state]
timeout_ms = 2000
"#,
    ));
    let (a, b) = (
        Process::start(&cfg, &up.url(), &redis),
        Process::start(&cfg, &up.url(), &redis),
    );
    for p in [&a, &b] {
        assert!(
            eventually_for(Duration::from_secs(30), || TcpStream::connect(p.addr).is_ok()).await,
            "gateway listens"
        );
    }
    let c = client();

    // One device, one account, its requests alternating between the replicas: the
    // shared limit of 5 stops the sixth, whichever replica it reaches.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let gw = if i % 2 == 0 { a.addr } else { b.addr };
        statuses.push(
            claim_on(&c, gw, "/api/coupon/claim", "u-1", "d-limited")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);

    // Three accounts on one phone, spread over both replicas: the third is a farm.
    let mut farm = Vec::new();
    for (i, user) in ["f-1", "f-2", "f-3"].iter().enumerate() {
        let gw = if i == 1 { b.addr } else { a.addr };
        farm.push(
            claim_on(&c, gw, "/api/coupon/claim", user, "d-farm")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(farm, [200, 200, 403], "the device graph is shared");
}

/// One gateway, three routes, one per degradation policy: coupon_claim takes the
/// global default (allow), checkin denies, redpacket_open decides from local state
/// (with a device limit of two, which the local state enforces).
fn policy_config(redis: &RedisServer) -> String {
    redis_config(
        redis,
        r#"
[[routes]]
name = "checkin"
method = "POST"
path = "/api/checkin"
action = "checkin"
on_state_error = "deny"

[[routes]]
name = "redpacket_open"
method = "POST"
path = "/api/redpacket/open"
action = "redpacket"
on_state_error = "local"
[[routes.limits]]
key = "device"
rate = "2/h"
burst = 2
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_applies_each_routes_policy_and_recovers_without_restart() {
    let Some(mut redis) = RedisServer::start() else { return };
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&policy_config(&redis));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let answer = |path: &'static str, user: &'static str, device: &'static str| {
        let c = c.clone();
        let addr = gw.addr;
        async move { claim_on(&c, addr, path, user, device).await }
    };

    assert_eq!(answer("/api/checkin", "u-1", "d-1").await.status, 200, "redis up");
    redis.stop();

    // allow: forwarded, marked.
    let a = answer("/api/coupon/claim", "u-1", "d-1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        up.seen().last().unwrap().header("x-risk-reasons"),
        Some("state_unavailable")
    );
    // deny: the block answer.
    let a = answer("/api/checkin", "u-2", "d-2").await;
    assert_eq!(a.status, 403, "{}", a.body);
    // local: this replica's own state decides, limits included.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(answer("/api/redpacket/open", "u-3", "d-3").await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    assert!(up
        .seen()
        .last()
        .unwrap()
        .header("x-risk-reasons")
        .is_some_and(|r| r.contains("state_local")));

    let m = metrics(&c, gw.admin_addr).await;
    let series = |route: &str, policy: &str| {
        metric(
            &m,
            &format!(r#"riskgate_state_degraded_total{{policy="{policy}",route="{route}"}}"#),
        )
    };
    assert_eq!(series("coupon_claim", "allow"), Some(1.0), "{m}");
    assert_eq!(series("checkin", "deny"), Some(1.0), "{m}");
    assert_eq!(series("redpacket_open", "local"), Some(3.0), "{m}");
    assert_eq!(metric(&m, "riskgate_state_backend_up"), Some(0.0), "{m}");
    let ready = send(&c, "GET", &format!("http://{}/readyz", gw.admin_addr), &[], "").await;
    assert_eq!(ready.status, 200, "still serving");
    assert!(ready.body.contains("state backend down"), "{}", ready.body);

    // Redis comes back: the same gateway uses it again, no restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = answer("/api/checkin", "u-4", "d-4").await;
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway reconnects to redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(metric(&m, "riskgate_state_backend_up"), Some(1.0), "{m}");
    let failed = ["error", "timeout"]
        .map(|o| metric(&m, &format!(r#"riskgate_state_backend_calls_total{{outcome="{o}"}}"#)).unwrap_or(0.0));
    assert!(failed.iter().sum::<f64>() >= 1.0, "{m}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_times_out_into_the_routes_policy_at_the_routes_timeout() {
    let Some(redis) = RedisServer::start() else { return };
    let up = Upstream::start(Duration::ZERO).await;
    // Check-ins wait 100 ms for Redis; the other routes up to 5 s.
    let cfg = ConfigDir::new(
        &policy_config(&redis)
            .replace("timeout_ms = 2000", "timeout_ms = 5000")
            .replace(
                "on_state_error = \"deny\"",
                "on_state_error = \"deny\"\nstate_timeout_ms = 100",
            ),
    );
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    // The first call loads the script: on a route with time for it, so that a loaded
    // machine does not turn it into the check-in route's 100 ms timeout.
    assert_eq!(
        claim_on(&c, gw.addr, "/api/coupon/claim", "u-0", "d-0").await.status,
        200
    );
    assert_eq!(claim_on(&c, gw.addr, "/api/checkin", "u-1", "d-1").await.status, 200);
    // DEBUG SLEEP blocks the whole server, as a stalled or overloaded Redis would.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"DEBUG SLEEP 3\r\n").unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    });
    // Wait until Redis really is stalled: a PING goes unanswered for 100 ms.
    let stalled = || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = s.write_all(b"PING\r\n");
        let mut buf = [0u8; 16];
        s.read(&mut buf).is_err()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !stalled() {
        assert!(Instant::now() < deadline, "DEBUG SLEEP stalls redis");
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = claim_on(&c, gw.addr, "/api/checkin", "u-2", "d-2").await;
    assert_eq!(a.status, 403, "deny after the timeout: {}", a.body);
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_state_backend_calls_total{outcome="timeout"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"riskgate_state_degraded_total{policy="deny",route="checkin"}"#),
        Some(1.0)
    );
    // A route with the longer timeout waits the stall out and is decided from Redis.
    let a = claim_on(&c, gw.addr, "/api/coupon/claim", "u-3", "d-3").await;
    assert_eq!(a.status, 200);
    assert_eq!(up.seen().last().unwrap().header("x-risk-reasons"), None);
    sleeper.join().unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_serving_goes_on_and_limits_resume() {
    let Some(mut redis) = RedisServer::start() else { return };
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&redis_config(
        &redis,
        "[[routes.limits]]\nkey = \"device\"\nrate = \"3/h\"\nburst = 3\n",
    ));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let mut before = Vec::new();
    for _ in 0..4 {
        before.push(
            claim_on(&c, gw.addr, "/api/coupon/claim", "u-1", "d-1")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(before, [200, 200, 200, 429]);

    // Traffic goes on while Redis restarts: every request is answered (allow policy),
    // none with a server error.
    redis.stop();
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(
            claim_on(&c, gw.addr, "/api/coupon/claim", &format!("v-{i}"), "d-2")
                .await
                .status,
        );
    }
    assert!(during.iter().all(|s| *s == 200), "{during:?}");
    redis.restart();

    // The restarted Redis is empty (no persistence): the shared limit starts over, and
    // is enforced from Redis again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = claim_on(&c, gw.addr, "/api/coupon/claim", "u-probe", "d-probe").await;
        let reasons = up
            .seen()
            .last()
            .and_then(|s| s.header("x-risk-reasons").map(str::to_string));
        if a.status == 200 && reasons.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway reconnects to redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(
            claim_on(&c, gw.addr, "/api/coupon/claim", "u-1", "d-1")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(after, [200, 200, 200, 429]);
    let seed = redis.command("GET rg:seed").unwrap_or_default();
    assert!(
        seed.starts_with('$') && !seed.starts_with("$-1"),
        "the key seed is put back after the restart: {seed}"
    );
    gw.shutdown().await;
}

#[test]
fn replay_decides_alike_with_either_backend() {
    let Some(redis) = RedisServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let scenario = riskgate::simulate::Scenario::load("small").unwrap();
    let mut text = String::new();
    for e in riskgate::simulate::generate(&scenario, 5, 1_762_819_200_000) {
        text.push_str(&serde_json::to_string(&e).unwrap());
        text.push('\n');
    }
    std::fs::write(&events, text).unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/riskgate.toml");
    let replay = |state: Option<String>, out: &str| {
        let output = dir.path().join(out);
        let outcome = riskgate::replay::run(&riskgate::replay::Options {
            config: config.clone(),
            input: events.display().to_string(),
            output: output.display().to_string(),
            baseline: None,
            report: None,
            strict: true,
            progress: false,
            features_out: None,
            state,
        })
        .unwrap();
        (std::fs::read_to_string(output).unwrap(), outcome.summary)
    };
    let (memory, memory_summary) = replay(None, "memory.jsonl");
    let (redis_out, redis_summary) = replay(Some(redis.url()), "redis.jsonl");
    assert!(memory.lines().count() > 1_000);
    assert!(memory_summary.confusion.labelled() > 0);
    // Byte for byte: same decisions, scores, reasons, in the same order.
    for (n, (m, r)) in memory.lines().zip(redis_out.lines()).enumerate() {
        assert_eq!(m, r, "line {}", n + 1);
    }
    assert_eq!(memory.lines().count(), redis_out.lines().count());
    assert_eq!(
        serde_json::to_string(&memory_summary).unwrap(),
        serde_json::to_string(&redis_summary).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_backend_shares_one_limit_between_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let conf = dir.path().to_path_buf();
        let Some(node) = RedisServer::start_with(|port| {
            vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.join(format!("nodes-{port}.conf")).display().to_string(),
            ]
        }) else {
            return;
        };
        nodes.push(node);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !created.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: redis-cli --cluster create failed (redis-tools missing?)");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        n.command("CLUSTER INFO")
            .is_some_and(|i| i.contains("cluster_state:ok"))
    }) {
        assert!(Instant::now() < deadline, "the cluster comes up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let up = Upstream::start(Duration::ZERO).await;
    let list = addrs
        .iter()
        .map(|a| format!("\"redis://{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = ConfigDir::new(&format!(
        "{}\n[state]\nbackend = \"redis\"\nredis_nodes = [{list}]\ntimeout_ms = 500\n",
        small_config("[[routes.limits]]\nkey = \"device\"\nrate = \"3/h\"\nburst = 3\n")
    ));
    let (a, b) = (
        gateway(&cfg, &up.url(), false).await,
        gateway(&cfg, &up.url(), false).await,
    );
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { a.addr } else { b.addr };
        statuses.push(
            claim_on(&c, gw, "/api/coupon/claim", "u-1", "d-1")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    a.shutdown().await;
    b.shutdown().await;
}

/// A differential test of the two backends at the state layer: random observations
/// over small pools of identities (so that distinct sets overflow their 32 members),
/// time jumping from milliseconds to a day ahead and sometimes back (late events), and
/// GCRA limits; every readout must be equal.
#[test]
fn both_backends_read_out_the_same_on_random_observations() {
    use riskgate::state::{
        combine, KeyHasher, KeyKind, LimitCheck, MemoryState, Observation, RedisState, StateStore, KINDS,
    };
    let Some(redis) = RedisServer::start() else { return };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // TTLs far beyond the simulated three days: expiry is not what is compared here.
    let ttl_s = 30 * 86_400;
    let cfg = riskgate::config::StateConfig {
        redis_url: redis.url(),
        timeout_ms: 5_000,
        ttl_s,
        ..Default::default()
    };
    let (remote, _) = tokio.block_on(RedisState::connect(&cfg)).unwrap();
    let local = MemoryState::new(64 << 20, ttl_s * 1_000);
    let h = KeyHasher::seeded(7);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let quotas = [
        governor::Quota::per_minute(std::num::NonZeroU32::new(6).unwrap())
            .allow_burst(std::num::NonZeroU32::new(3).unwrap()),
        governor::Quota::per_hour(std::num::NonZeroU32::new(20).unwrap()),
    ];
    let mut now = 1_762_819_200_000u64;
    let mut exercised = [0u32; 7];
    // The last 2,000 bring fresh devices, so that many requests are a new device's
    // first on a route, from accounts with a browsing history of any length.
    for i in 0..6_000 {
        now = match rand(20) {
            0 => now.saturating_sub(rand(5_000)),
            1 => now + 3_600_000 + rand(20 * 3_600_000),
            2..=5 => now + rand(120_000),
            _ => now + rand(1_500),
        };
        let mut keys = [None; KINDS];
        let mut pick = |kind: KeyKind, pool: u64, present: u64| {
            (rand(100) < present).then(|| h.key(kind, &format!("{}-{}", kind.name(), rand(pool))))
        };
        keys[KeyKind::User as usize] = pick(KeyKind::User, 70, 95);
        keys[KeyKind::Device as usize] = if i < 4_000 {
            pick(KeyKind::Device, 45, 90)
        } else {
            pick(KeyKind::Device, 1_500, 100).map(|k| k ^ 0xF2E5_0000)
        };
        keys[KeyKind::Ip as usize] = pick(KeyKind::Ip, 40, 100);
        keys[KeyKind::Subnet as usize] = pick(KeyKind::Subnet, 4, 100);
        keys[KeyKind::Phone as usize] = pick(KeyKind::Phone, 30, 50);
        keys[KeyKind::Campaign as usize] = pick(KeyKind::Campaign, 3, 90);
        keys[KeyKind::Route as usize] = pick(KeyKind::Route, 2, 100);
        keys[KeyKind::Inviter as usize] = pick(KeyKind::Inviter, 12, 30);
        keys[KeyKind::PayAccount as usize] = pick(KeyKind::PayAccount, 10, 20);
        keys[KeyKind::Address as usize] = pick(KeyKind::Address, 10, 20);
        keys[KeyKind::UserAgent as usize] = pick(KeyKind::UserAgent, 5, 95);
        let inviter_as_user =
            keys[KeyKind::Inviter as usize].map(|_| h.key(KeyKind::User, &format!("user-{}", rand(70))));
        // As a route's limits are: one cell per (route, limit, identity), a device limit
        // and two account limits, the second of a kind kept in the limits table.
        let route = keys[KeyKind::Route as usize].unwrap_or(1);
        let limits = (0..rand(3))
            .filter_map(|j| {
                let kind = if j == 0 { KeyKind::Device } else { KeyKind::User };
                Some(LimitCheck {
                    key: combine(route ^ j, keys[kind as usize]?),
                    quota: quotas[j as usize],
                    kind,
                    first_of_kind: j < 2,
                })
            })
            .collect();
        let obs = Observation {
            ts_ms: now,
            route,
            keys,
            inviter_as_user,
            device_prefix: keys[KeyKind::Device as usize].map(|d| d % 7),
            browse: rand(5) == 0,
            wifi: rand(3) != 0,
            new_account_ms: 600_000,
            limits,
            timeout_ms: None,
        };
        let want = local.observe_now(&obs);
        let got = tokio.block_on(remote.observe(&obs)).unwrap();
        assert_eq!(got, want, "observation {i}: {obs:?}");
        exercised[0] += u32::from(want.first_requests[1] > 0);
        exercised[1] += u32::from(want.first_requests[0] > 0);
        exercised[2] += u32::from(want.inviter_blind_invitees[0] > 0);
        exercised[3] += u32::from(want.cluster[0] > 1);
        exercised[4] += u32::from(want.inviter_age_ms.is_some_and(|age| age > 0));
        exercised[5] += u32::from(want.device_line_handoff);
        exercised[6] += u32::from(want.wifi_new_devices[0] > 1 && want.wifi_new_devices[2] > 1);
    }
    // The rarer paths were taken, not just compared as zeros: new devices' first
    // requests on a route (hasty ones too), blind invitees, clusters of several accounts,
    // inviters whose account had been seen before, devices handed between accounts and
    // Wi-Fi lines, networks with several new Wi-Fi devices among several such networks.
    assert!(exercised.iter().all(|&n| n >= 100), "{exercised:?}");
}
