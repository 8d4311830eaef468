//! Test harness: a stub campaign backend and the real gateway on 127.0.0.1 with
//! ephemeral ports, and a small HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use riskgate::server::{self, Overrides, Running};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// A stub campaign backend: answers 200 `{"ok":true}` after an optional delay and
/// records what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, delay)
    }

    /// Serves on an already-bound listener (to restart on a known port).
    pub fn serve(listener: TcpListener, delay: Duration) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                            for (k, v) in &parts.headers {
                                headers
                                    .entry(k.to_string())
                                    .or_default()
                                    .push(String::from_utf8_lossy(v.as_bytes()).into());
                            }
                            record.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers,
                                body,
                            });
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// A config directory with a riskgate.toml and its list files.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new(toml: &str) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lists")).unwrap();
        let c = ConfigDir { dir };
        c.write("riskgate.toml", toml);
        c
    }

    /// The shipped default config and its lists.
    pub fn default_config() -> ConfigDir {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        // The model path is relative to the config file; the copy lives elsewhere.
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let text = std::fs::read_to_string(root.join("riskgate.toml"))
            .unwrap()
            .replace("\"../models/", &format!("\"{}/", models.display()));
        let c = ConfigDir::new(&text);
        for entry in std::fs::read_dir(root.join("lists")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), c.dir.path().join("lists").join(entry.file_name())).unwrap();
        }
        c
    }

    /// The shipped default config with its trained model switched off (`[model] mode =
    /// "off"`): for tests of what the rules, limits and lists do on their own.
    pub fn default_rules_only() -> ConfigDir {
        let c = ConfigDir::default_config();
        let text = std::fs::read_to_string(c.path()).unwrap();
        let at = text
            .find("\n[model]\n")
            .expect("the default config has a [model] section");
        let (head, tail) = text.split_at(at);
        let off = tail.replacen("\nmode = \"enforce\"", "\nmode = \"off\"", 1);
        assert_ne!(off, tail);
        c.write("riskgate.toml", &format!("{head}{off}"));
        c
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("riskgate.toml")
    }

    /// Writes a file the way editors do: a new file renamed over the old one.
    pub fn write(&self, name: &str, text: &str) {
        let target = self.dir.path().join(name);
        let tmp = target.with_file_name(format!(".{}.tmp", target.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
    }
}

/// Starts the real gateway on ephemeral ports in front of `upstream`.
pub async fn gateway(config: &ConfigDir, upstream: &str, shadow: bool) -> Running {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        upstream: Some(upstream.to_string()),
        shadow,
        trusted_proxies: None,
    };
    server::start(config.path(), overrides).await.expect("gateway starts")
}

/// A minimal config: one coupon route, default upstream, the given extra TOML.
pub fn small_config(extra: &str) -> String {
    format!(
        r#"
[server]
reload_poll_ms = 50
[upstreams.default]
url = "http://127.0.0.1:9"
[identity]
user = "header:x-user-id"
device = "header:x-device-id"
campaign = "json:/campaign_id"
[policies.default]
review = 0.3
challenge = 0.6
block = 0.85
[[routes]]
name = "coupon_claim"
method = "POST"
path = "/api/coupon/claim"
action = "coupon"
{extra}
"#
    )
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The answer to one request: status, headers and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// What the campaign's mini program sends as its user agent (requests without one look
/// like scripts to the trained model).
pub const MINI_PROGRAM_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN miniProgram";

/// Two campaign-page views by `user` on `device`, as the mini program makes before a claim.
pub async fn browse(c: &TestClient, addr: SocketAddr, user: &str, device: &str) {
    for _ in 0..2 {
        let headers = [
            ("x-user-id", user),
            ("x-device-id", device),
            ("x-app-version", "8.0.47"),
            ("user-agent", MINI_PROGRAM_UA),
        ];
        send(
            c,
            "GET",
            &format!("http://{addr}/api/campaign/detail?campaign_id=c-1"),
            &headers,
            "",
        )
        .await;
    }
}

/// One visit of a farm account on a shared device: two page views, then a claim (its
/// answer), paced 50 ms before the claim and 120 ms after it. The device-timing signal
/// (`machine_timing`: three gaps in a row within 25 ms of each other) ignores
/// same-millisecond gaps but would see a timer in back-to-back requests once a slow
/// machine spreads them a millisecond or more apart, and stop accounts a test expects
/// through; gaps that alternate this much are never regular.
pub async fn farm_visit(c: &TestClient, addr: SocketAddr, user: &str, device: &str) -> Answer {
    browse(c, addr, user, device).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = claim(c, addr, user, device, &[]).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    answer
}

/// A coupon claim by `user` on `device` with extra headers.
pub async fn claim(c: &TestClient, addr: SocketAddr, user: &str, device: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![
        ("x-user-id", user),
        ("x-device-id", device),
        ("x-app-version", "8.0.47"),
        ("user-agent", MINI_PROGRAM_UA),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(
        c,
        "POST",
        &format!("http://{addr}/api/coupon/claim"),
        &headers,
        r#"{"campaign_id":"c-1","coupon_id":"new-user-50"}"#,
    )
    .await
}

pub async fn send(c: &TestClient, method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("no hang")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into(),
    }
}

pub async fn metrics(c: &TestClient, admin: SocketAddr) -> String {
    send(c, "GET", &format!("http://{admin}/metrics"), &[], "").await.body
}

/// The value of one series in a metrics text, e.g. `riskgate_requests_total{route="x",decision="block"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Polls until `f` holds or five seconds pass.
pub async fn eventually(f: impl FnMut() -> bool) -> bool {
    eventually_for(Duration::from_secs(5), f).await
}

/// `eventually`, for up to `limit`: for what a loaded machine may make slow (a debug
/// build of the gateway starting, or draining and exiting), where waiting long costs
/// nothing when all is well.
pub async fn eventually_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loopback port that was free a moment ago (for processes that take a port number).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` different loopback ports that were free a moment ago: all held until all are
/// chosen, so that two of them cannot be the same port.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] = std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}
