//! The load generator against real servers on loopback: counts, statuses and the
//! open-loop latency accounting (lower bounds only: no test depends on a machine being
//! fast).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use loadtest::run::{self, Mode, Options};
use loadtest::schedule::Phase;
use loadtest::workload::{Synthetic, Workload};
use tokio::net::TcpListener;

async fn stub() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(loadtest::servers::stub(listener));
    addr
}

async fn passthrough(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(loadtest::servers::passthrough(listener, upstream));
    addr
}

/// A server that records what it saw and stalls the first request for `stall`.
async fn recorder(stall: Duration) -> (SocketAddr, Arc<Mutex<Vec<(String, String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let user = req
                            .headers()
                            .get("x-user-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let first = {
                            let mut l = log.lock().unwrap();
                            l.push((path, user, String::from_utf8_lossy(&body).into_owned()));
                            l.len() == 1
                        };
                        if first {
                            tokio::time::sleep(stall).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn target(addr: SocketAddr) -> loadtest::target::Target {
    loadtest::target::parse(&format!("http://{addr}")).unwrap()
}

fn synthetic(addr: SocketAddr) -> Workload {
    Workload::synthetic(&Synthetic::default(), &target(addr)).unwrap()
}

#[tokio::test]
async fn fixed_rate_sends_exactly_the_schedule() {
    let addr = stub().await;
    let opts = Options {
        target: target(addr),
        mode: Mode::Fixed(vec![Phase {
            seconds: 0.5,
            rate: 400.0,
        }]),
        connections: 8,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, synthetic(addr)).await.unwrap();
    assert_eq!(r.mode, "fixed");
    assert_eq!(r.requests, 200);
    assert_eq!(r.ok, 200);
    assert_eq!(r.status["200"], 200);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.offered_rps, Some(400.0));
    assert!(r.latency_us.p50 >= 1 && r.latency_us.p50 <= r.latency_us.p99);
    assert!(r.latency_us.p99 <= r.latency_us.p999 && r.latency_us.p999 <= r.latency_us.max);
}

#[tokio::test]
async fn max_mode_through_the_passthrough_proxy() {
    let up = stub().await;
    let proxy = passthrough(up).await;
    let opts = Options {
        target: target(proxy),
        mode: Mode::Max(Duration::from_millis(300)),
        connections: 4,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, synthetic(proxy)).await.unwrap();
    assert_eq!(r.mode, "max");
    assert!(r.requests > 0);
    assert_eq!(r.ok, r.requests, "{:?}", r.status);
    assert!(r.throughput_rps > 0.0);
    let json = serde_json::to_value(&r).unwrap();
    for p in ["p50", "p90", "p99", "p999"] {
        assert!(json["latency_us"][p].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn a_stalled_server_is_charged_for_the_requests_it_held_back() {
    // One connection, 100 requests/s; the first answer takes 300 ms. Requests due at
    // 10, 20, ... 290 ms cannot leave before 300 ms: measured from their intended send
    // time, each waited at least 300 ms minus its due time.
    let (addr, seen) = recorder(Duration::from_millis(300)).await;
    let opts = Options {
        target: target(addr),
        mode: Mode::Fixed(vec![Phase {
            seconds: 1.0,
            rate: 100.0,
        }]),
        connections: 1,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, synthetic(addr)).await.unwrap();
    assert_eq!(r.requests, 100);
    assert_eq!(seen.lock().unwrap().len(), 100);
    assert!(r.latency_us.max >= 300_000, "{:?}", r.latency_us);
    // Requests 1..=20 (due before 200 ms) waited over 100 ms each: more than 10%.
    assert!(r.latency_us.p90 >= 100_000, "{:?}", r.latency_us);
    assert!(r.late_sends >= 20, "{}", r.late_sends);
    // Service time (from the actual send) does not hide the stall's first request.
    assert!(r.service_us.max >= 300_000);
}

#[tokio::test]
async fn spike_phases_are_reported_apart() {
    let addr = stub().await;
    let phases = vec![
        Phase {
            seconds: 0.3,
            rate: 100.0,
        },
        Phase {
            seconds: 0.2,
            rate: 1000.0,
        },
        Phase {
            seconds: 0.3,
            rate: 100.0,
        },
    ];
    let opts = Options {
        target: target(addr),
        mode: Mode::Fixed(phases),
        connections: 16,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, synthetic(addr)).await.unwrap();
    let counts: Vec<u64> = r.phases.iter().map(|p| p.requests).collect();
    assert_eq!(counts, vec![30, 200, 30]);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.phases[1].offered_rps, 1000.0);
}

#[tokio::test]
async fn event_file_requests_carry_the_events() {
    let (addr, seen) = recorder(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let lines = [
        r#"{"ts_ms": 1, "method": "POST", "path": "/api/checkin", "client_ip": "203.0.113.7", "headers": {"x-user-id": "alice"}, "body": {"campaign_id": "c-1"}}"#,
        r#"{"ts_ms": 2, "method": "GET", "path": "/api/item/view", "query": "id=3", "client_ip": "203.0.113.8", "headers": {"x-user-id": "bob"}}"#,
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let workload = Workload::events(&path, &target(addr), 100).unwrap();
    let opts = Options {
        target: target(addr),
        mode: Mode::Fixed(vec![Phase {
            seconds: 0.04,
            rate: 100.0,
        }]),
        connections: 1,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, workload).await.unwrap();
    assert_eq!(r.requests, 4);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("/api/checkin".into(), "alice".into(), r#"{"campaign_id":"c-1"}"#.into()),
            ("/api/checkin".into(), "alice".into(), r#"{"campaign_id":"c-1"}"#.into()),
            ("/api/item/view".into(), "bob".into(), String::new()),
            ("/api/item/view".into(), "bob".into(), String::new()),
        ]
    );
}

#[tokio::test]
async fn a_closed_port_is_counted_as_connect_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let opts = Options {
        target: target(addr),
        mode: Mode::Fixed(vec![Phase {
            seconds: 0.1,
            rate: 100.0,
        }]),
        connections: 2,
        timeout: Duration::from_secs(30),
    };
    let r = run::run(opts, synthetic(addr)).await.unwrap();
    assert_eq!(r.requests, 10);
    assert_eq!(r.errors["connect"], 10);
    assert_eq!(r.ok, 0);
}
