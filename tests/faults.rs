//! Faults and hostile input, each with its expected outcome, and nothing lost among the
//! requests the gateway accepted: every request answered 2xx reached the upstream once.
//! (Elsewhere: a stalled audit disk in tests/audit.rs, a bad config reload and 413 /
//! 502 / 504 in tests/gateway.rs, a million new device ids in tests/state_budget.rs.)

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that can be killed — listener and every open connection — and
/// restarted on the same port, recording the request ids it served.
struct Killable {
    addr: SocketAddr,
    served: Arc<Mutex<Vec<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Killable {
    async fn start(addr: SocketAddr, served: Arc<Mutex<Vec<String>>>) -> Killable {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let conns = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let record = served.clone();
        let conns2 = conns.clone();
        tasks.spawn(async move {
            let _guard = AbortAll(conns2.clone());
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let handle = tokio::spawn(async move {
                    // A tiny HTTP/1.1 server: enough to read one request head at a time.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len: usize = header_of(&head, "content-length")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            buf.drain(..end + 4 + len);
                            if let Some(id) = header_of(&head, "x-request-id") {
                                record.lock().unwrap().push(id.to_string());
                            }
                            let body = b"{\"ok\":true}";
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            if stream.write_all(resp.as_bytes()).await.is_err() || stream.write_all(body).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                });
                conns.lock().unwrap().push(handle.abort_handle());
            }
        });
        Killable { addr, served, tasks }
    }

    /// Drops the listener and every connection, like a killed process.
    async fn kill(mut self) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        (self.addr, self.served)
    }
}

/// Aborts every connection task when the accept loop is aborted.
struct AbortAll(Arc<Mutex<Vec<tokio::task::AbortHandle>>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for h in self.0.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn upstream_killed_mid_run_and_restarted() {
    let served = Arc::new(Mutex::new(Vec::new()));
    let up = Killable::start("127.0.0.1:0".parse().unwrap(), served.clone()).await;
    let cfg = ConfigDir::new(&small_config("").replace("[server]", "[server]\nupstream_timeout_ms = 2000"));
    let gw = gateway(&cfg, &format!("http://{}", up.addr), false).await;
    let c = client();
    let mut ok = BTreeSet::new();
    let mut failed = 0;
    let mut up = Some(up);
    let mut dead = None;
    for i in 0..90 {
        if i == 30 {
            dead = Some(up.take().unwrap().kill().await);
        }
        if i == 60 {
            let (addr, served) = dead.take().unwrap();
            up = Some(Killable::start(addr, served).await);
        }
        let id = format!("req-{i}");
        let a = claim(
            &c,
            gw.addr,
            &format!("u{i}"),
            &format!("d{i}"),
            &[("x-request-id", &id)],
        )
        .await;
        match a.status.as_u16() {
            200 => {
                ok.insert(id);
            }
            502 | 504 => {
                assert!(
                    (30..60).contains(&i),
                    "request {i} failed while the upstream was up: {}",
                    a.body
                );
                failed += 1;
            }
            s => panic!("request {i}: unexpected {s} {}", a.body),
        }
    }
    // Up, down (every request answered 502/504 at once, none hangs), up again.
    assert_eq!(failed, 30, "every request during the outage fails cleanly");
    assert_eq!(ok.len(), 60);
    let seen: BTreeSet<String> = served.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen, ok, "every accepted request reached the upstream, and only those");
    let m = metrics(&c, gw.admin_addr).await;
    let errors: f64 = ["connect", "timeout", "other"]
        .iter()
        .filter_map(|k| {
            metric(
                &m,
                &format!(r#"riskgate_upstream_errors_total{{kind="{k}",route="coupon_claim"}}"#),
            )
        })
        .sum();
    assert_eq!(errors, 30.0, "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_upstream_within_the_timeout_loses_nothing() {
    let up = Upstream::start(Duration::from_millis(300)).await;
    let cfg = ConfigDir::new(&small_config("").replace("[server]", "[server]\nupstream_timeout_ms = 5000"));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let c = c.clone();
        let addr = gw.addr;
        tasks.spawn(async move {
            let id = format!("slow-{i}");
            let a = claim(&c, addr, &format!("u{i}"), &format!("d{i}"), &[("x-request-id", &id)]).await;
            (id, a.status.as_u16())
        });
    }
    let mut ok = BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        let (id, status) = r.unwrap();
        assert_eq!(status, 200, "{id}");
        ok.insert(id);
    }
    let seen: BTreeSet<String> = up
        .seen()
        .iter()
        .filter_map(|s| s.header("x-request-id").map(str::to_string))
        .collect();
    assert_eq!(seen, ok);
    gw.shutdown().await;
}

/// A block list in a file, for the list fault tests.
fn list_config() -> String {
    small_config(
        r#"
[[lists]]
name = "bad_devices"
kind = "device"
action = "block"
file = "lists/bad_devices.txt"
"#,
    )
}

#[tokio::test]
async fn a_missing_or_malformed_list_file_keeps_the_old_lists() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&list_config());
    cfg.write("lists/bad_devices.txt", "farm-1\n");
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    assert_eq!(claim(&c, gw.addr, "u1", "farm-1", &[]).await.status, 403);

    // Removed: the reload is refused and the old list keeps blocking.
    std::fs::remove_file(cfg.dir.path().join("lists/bad_devices.txt")).unwrap();
    let failures = |m: &str| metric(m, r#"riskgate_config_reloads_total{outcome="failure"}"#).unwrap_or(0.0);
    let mut m = String::new();
    for _ in 0..100 {
        m = metrics(&c, gw.admin_addr).await;
        if failures(&m) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures(&m) >= 1.0, "{m}");
    assert_eq!(metric(&m, "riskgate_config_last_reload_successful"), Some(0.0));
    assert_eq!(claim(&c, gw.addr, "u2", "farm-1", &[]).await.status, 403);

    // An IP list with a line that is not an address or CIDR: refused the same way.
    let ip_list = list_config()
        + r#"
[[lists]]
name = "bad_ips"
kind = "ip"
action = "block"
file = "lists/bad_ips.txt"
"#;
    cfg.write("lists/bad_devices.txt", "farm-1\nfarm-2\n");
    cfg.write("lists/bad_ips.txt", "203.0.113.0/24\nnot-an-ip\n");
    cfg.write("riskgate.toml", &ip_list);
    let before = failures(&metrics(&c, gw.admin_addr).await);
    let mut refused = false;
    for _ in 0..100 {
        if failures(&metrics(&c, gw.admin_addr).await) > before {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the malformed list is refused");
    // Still the first list: farm-2 was only in the refused reload.
    assert_eq!(claim(&c, gw.addr, "u3", "farm-2", &[]).await.status, 200);
    assert_eq!(claim(&c, gw.addr, "u3", "farm-1", &[]).await.status, 403);
    gw.shutdown().await;

    // At start, a missing list file is an error, not an empty list.
    let cfg = ConfigDir::new(&list_config());
    let err = riskgate::server::start(cfg.path(), Default::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("bad_devices.txt"), "{err}");
}

#[tokio::test]
async fn an_unwritable_or_full_audit_disk_never_fails_requests() {
    // /dev/full: every write fails with ENOSPC. A path under a regular file: cannot open.
    for path in ["/dev/full", "not-a-dir/audit.jsonl"] {
        let up = Upstream::start(Duration::ZERO).await;
        let cfg = ConfigDir::new(&small_config(&format!("[audit]\npath = \"{path}\"\n")));
        std::fs::write(cfg.dir.path().join("not-a-dir"), "a file").unwrap();
        let gw = gateway(&cfg, &up.url(), false).await;
        let c = client();
        for i in 0..50 {
            let a = claim(&c, gw.addr, &format!("u{i}"), &format!("d{i}"), &[]).await;
            assert_eq!(a.status, 200, "{path}");
        }
        assert_eq!(up.seen().len(), 50, "{path}: every request was served");
        let mut m = String::new();
        for _ in 0..100 {
            m = metrics(&c, gw.admin_addr).await;
            if metric(&m, "riskgate_audit_errors_total").unwrap_or(0.0) >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            metric(&m, "riskgate_audit_errors_total").unwrap_or(0.0) >= 1.0,
            "{path}: {m}"
        );
        tokio::time::timeout(Duration::from_secs(15), gw.shutdown())
            .await
            .expect("shutdown completes");
    }
}

/// Reads from a raw connection until it is closed; the bytes read. Bounded in time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

fn timeout_config() -> String {
    small_config("").replace("[server]", "[server]\nheader_read_timeout_ms = 1000")
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&timeout_config());
    let gw = gateway(&cfg, &up.url(), false).await;
    // Before connecting: the gateway's clock starts at accept, and a pause of this
    // thread after it must not make the cut look early.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /api/coupon/claim HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Trickle one header byte every 100 ms, for far longer than the timeout.
    let mut closed_after = None;
    for _ in 0..100 {
        if s.write_all(b"x").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("the trickling connection is closed");
    // Closed near the 1 s header timeout, not after the client gave up (10 s).
    assert!(closed_after >= Duration::from_millis(900), "{closed_after:?}");
    assert!(closed_after < Duration::from_secs(8), "{closed_after:?}");
    assert!(up.seen().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&timeout_config());
    let gw = gateway(&cfg, &up.url(), false).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let out = read_until_closed(&mut silent, Duration::from_secs(8)).await;
    assert!(out.is_some(), "a connection that never sends a byte is closed");
    // An idle keep-alive connection after a request is closed too.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /api/campaign/detail HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let out = read_until_closed(&mut idle, Duration::from_secs(8)).await;
    let out = out.expect("the idle connection is closed");
    assert!(out.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&out));
    // The gateway still serves.
    let c = client();
    assert_eq!(claim(&c, gw.addr, "u1", "d1", &[]).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_chunked_oversized_bodies_413() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(
        &small_config("").replace("[server]", "[server]\nmax_header_bytes = 8192\nmax_body_bytes = 1024"),
    );
    let gw = gateway(&cfg, &up.url(), false).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let req = format!("POST /api/coupon/claim HTTP/1.1\r\nhost: x\r\nx-device-id: {big}\r\ncontent-length: 0\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let out = read_until_closed(&mut s, Duration::from_secs(8))
        .await
        .unwrap_or_default();
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );

    // A chunked body (no content-length) over the limit on a JSON route: 413, not forwarded.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /api/coupon/claim HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(up.seen().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_json_bodies_are_refused_on_json_routes() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(""));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let url = format!("http://{}/api/coupon/claim", gw.addr);
    let h = [("x-user-id", "u1"), ("x-device-id", "d1")];
    for body in [
        r#"{"campaign_id":"c-1""#,
        r#"{"campaign_id":"c-1"} trailing"#,
        "campaign_id=c-1",
        "{\"campaign_id\":\"c-\u{1}1\"}",
    ] {
        let a = send(&c, "POST", &url, &h, body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(
            a.body.contains("bad_request") && !a.body.contains("score"),
            "{}",
            a.body
        );
    }
    // Invalid UTF-8 inside a JSON string (JSON must be UTF-8).
    let req = http::Request::post(&url)
        .header("x-user-id", "u1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"campaign_id\":\"\xff\xfe\"}",
        )))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 400);
    // Empty and well-formed bodies pass.
    assert_eq!(send(&c, "POST", &url, &h, "").await.status, 200);
    assert_eq!(
        send(&c, "POST", &url, &h, r#" {"campaign_id":"c-1"} "#).await.status,
        200
    );
    assert_eq!(up.seen().len(), 2);
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_rejected_requests_total{reason="bad_json"}"#),
        Some(5.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn repeated_or_non_utf8_identities_are_refused() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config("").replace(
        "device = \"header:x-device-id\"",
        "device = \"header:x-device-id\"\ninviter = \"query:inviter\"\nphone = \"cookie:ph\"",
    ));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let base = format!("http://{}/api/coupon/claim", gw.addr);
    let body = r#"{"campaign_id":"c-1"}"#;
    let post = |url: String, headers: Vec<(&'static str, &'static [u8])>| {
        let mut req = http::Request::post(url);
        for (k, v) in headers {
            req = req.header(k, http::HeaderValue::from_bytes(v).unwrap());
        }
        req.body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    type Headers = Vec<(&'static str, &'static [u8])>;
    let cases: Vec<(String, Headers)> = vec![
        // An attacker sending two device ids must not be keyed on a fresh joined value.
        (base.clone(), vec![("x-device-id", b"d1"), ("x-device-id", b"d2")]),
        (base.clone(), vec![("x-user-id", b"u1"), ("x-user-id", b"u1")]),
        (base.clone(), vec![("x-device-id", b"d\xff\xfe")]),
        (format!("{base}?inviter=a&inviter=b"), vec![]),
        (base.clone(), vec![("cookie", b"ph=1; ph=2")]),
        (base.clone(), vec![("cookie", b"ph=1"), ("cookie", b"ph=2")]),
    ];
    for (url, headers) in cases {
        let what = format!("{url} {headers:?}");
        let resp = c.request(post(url, headers)).await.unwrap();
        assert_eq!(resp.status(), 400, "{what}");
    }
    // One of each is fine; repeated headers that are not identities are fine.
    let ok = c
        .request(post(
            format!("{base}?inviter=a&x=1&x=2"),
            vec![
                ("x-device-id", b"d1"),
                ("cookie", b"ph=1; other=2"),
                ("accept", b"a"),
                ("accept", b"b"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.seen().len(), 1);
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_rejected_requests_total{reason="bad_identity"}"#),
        Some(6.0),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_evade_ip_limits() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::new(&small_config(
        r#"
[[routes.limits]]
key = "ip"
rate = "5/h"
burst = 5
"#,
    ));
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..10 {
        // A fresh "client address" every time, from a peer nobody trusts.
        let xff = format!("198.51.100.{i}");
        let a = claim(
            &c,
            gw.addr,
            &format!("u{i}"),
            &format!("d{i}"),
            &[("x-forwarded-for", &xff)],
        )
        .await;
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    // The upstream sees the spoofed value followed by the real peer.
    let seen = up.seen();
    assert_eq!(seen[0].header("x-forwarded-for"), Some("198.51.100.0, 127.0.0.1"));
    gw.shutdown().await;
}

const TOKEN: &str = "test-admin-token-0123456789";

#[tokio::test]
async fn admin_calls_need_the_bearer_token_and_top_lists_offenders() {
    let up = Upstream::start(Duration::ZERO).await;
    let cfg = ConfigDir::default_rules_only();
    let toml = std::fs::read_to_string(cfg.path())
        .unwrap()
        .replace("\n[admin]\n", &format!("\n[admin]\ntoken = \"{TOKEN}\"\n"));
    assert!(toml.contains(TOKEN));
    cfg.write("riskgate.toml", &toml);
    let gw = gateway(&cfg, &up.url(), false).await;
    let c = client();
    // A device farm: the fourth account on one phone and later are blocked.
    for i in 0..8 {
        let user = format!("farm-{i}");
        farm_visit(&c, gw.addr, &user, "farm-phone").await;
    }
    let admin = |path: &str| format!("http://{}{path}", gw.admin_addr);
    let bearer = format!("Bearer {TOKEN}");
    for (method, path) in [("POST", "/reload"), ("GET", "/top")] {
        let a = send(&c, method, &admin(path), &[], "").await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        let a = send(
            &c,
            method,
            &admin(path),
            &[("authorization", "Bearer wrong-token-0123456789")],
            "",
        )
        .await;
        assert_eq!(a.status, 401, "{method} {path}");
        let a = send(
            &c,
            method,
            &admin(path),
            &[("authorization", &bearer[..bearer.len() - 1])],
            "",
        )
        .await;
        assert_eq!(a.status, 401, "{method} {path}: a prefix of the token");
    }
    // Read-only endpoints stay open.
    assert_eq!(send(&c, "GET", &admin("/metrics"), &[], "").await.status, 200);

    let a = send(&c, "GET", &admin("/top?k=3"), &[("authorization", &bearer)], "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let top: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(top["devices"][0]["id"], "farm-phone", "{top}");
    assert_eq!(top["devices"][0]["stopped"], 5, "{top}");
    assert_eq!(top["ips"][0]["id"], "127.0.0.1", "{top}");
    assert!(top["accounts"].as_array().unwrap().len() <= 3, "{top}");
    let m = metrics(&c, gw.admin_addr).await;
    assert_eq!(
        metric(&m, r#"riskgate_top_offender_stopped{kind="device",rank="1"}"#),
        Some(5.0),
        "{m}"
    );
    assert_eq!(metric(&m, "riskgate_admin_unauthorized_total"), Some(6.0), "{m}");
    assert!(!m.contains("farm-phone"), "identities never reach /metrics");

    // POST /reload: a good file reloads, a bad one is refused with its problems.
    let a = send(&c, "POST", &admin("/reload"), &[("authorization", &bearer)], "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    cfg.write(
        "riskgate.toml",
        &toml.replace("\n[admin]\n", "\n[admin]\nbogus_key = 1\n"),
    );
    let a = send(&c, "POST", &admin("/reload"), &[("authorization", &bearer)], "").await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("bogus_key"), "{}", a.body);
    // The old config (and its token) still serve.
    let a = send(&c, "GET", &admin("/top"), &[("authorization", &bearer)], "").await;
    assert_eq!(a.status, 200);
    gw.shutdown().await;

    // No token configured: privileged calls are disabled, not open.
    let cfg = ConfigDir::new(&small_config("[admin]\ntoken_env = \"RISKGATE_TEST_TOKEN_UNSET\"\n"));
    let gw = gateway(&cfg, &up.url(), false).await;
    let a = send(
        &c,
        "POST",
        &format!("http://{}/reload", gw.admin_addr),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    gw.shutdown().await;

    // Too short a token is a config error.
    let cfg = ConfigDir::new(&small_config("[admin]\ntoken = \"short\"\n"));
    let err = riskgate::server::start(cfg.path(), Default::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("admin.token"), "{err}");
    assert!(!err.to_string().contains("short\""), "the token is never echoed: {err}");
}
