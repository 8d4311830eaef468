//! Admin listener: /metrics, /healthz, /readyz (open), and the privileged calls
//! POST /reload and GET /top (bearer token). Loopback by default.
//!
//! Privileged calls need `Authorization: Bearer TOKEN` with the token from `[admin]
//! token` or the environment variable named by `[admin] token_env`
//! (`RISKGATE_ADMIN_TOKEN` by default): 401 without it or with a wrong one, 403 when no
//! token is configured at all. /top is privileged because it shows raw identities.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Gateway;
use crate::state::StateStore;

pub async fn serve<S: StateStore>(gw: Arc<Gateway<S>>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gw = gw.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(gw.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// A bearer token, compared in constant time.
pub struct Token(Box<[u8]>);

impl Token {
    /// Shortest token accepted.
    pub const MIN_LEN: usize = 16;

    /// A token of 16 to 1024 visible ASCII characters (what fits a header unescaped).
    pub fn new(text: &str) -> Option<Token> {
        let ok = (Self::MIN_LEN..=1024).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Token(text.as_bytes().into()))
    }

    /// Whether `presented` is the token. The time taken depends only on the lengths,
    /// never on where the first differing byte is.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(self.0.len() != presented.len());
        for (i, b) in self.0.iter().enumerate() {
            // Compare against a fixed byte when the presented token is shorter, so the
            // loop always runs over the whole configured token.
            let p = presented.get(i).copied().unwrap_or(!*b);
            diff |= std::hint::black_box(b ^ p);
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Whether a request may make a privileged call: `Ok` or the answer refusing it.
fn authorize<S>(gw: &Gateway<S>, req: &Request<Incoming>) -> Result<(), (StatusCode, &'static str, String)> {
    let rt = gw.runtime.load();
    let Some(token) = &rt.admin.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "text/plain",
            "no admin token configured: set [admin] token_env (default RISKGATE_ADMIN_TOKEN)\n".into(),
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(p) if token.verify(p) => Ok(()),
        _ => {
            gw.metrics.admin_denied.inc();
            Err((StatusCode::UNAUTHORIZED, "text/plain", "bearer token required\n".into()))
        }
    }
}

async fn answer<S: StateStore>(
    gw: Arc<Gateway<S>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let privileged = matches!(req.uri().path(), "/reload" | "/top");
    let denied = if privileged { authorize(&gw, &req).err() } else { None };
    let (status, content_type, body) = if let Some(denied) = denied {
        denied
    } else {
        route(&gw, req.method(), req.uri()).await
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    if privileged {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    }
    Ok(resp)
}

async fn route<S: StateStore>(
    gw: &Arc<Gateway<S>>,
    method: &Method,
    uri: &http::Uri,
) -> (StatusCode, &'static str, String) {
    match (method, uri.path()) {
        (_, "/metrics") => {
            gw.metrics.update_state(&gw.state.stats(), gw.state.budget_bytes());
            gw.metrics.update_backend(gw.state.health());
            if let Some(audit) = &gw.audit {
                gw.metrics.update_audit(&audit.stats());
            }
            gw.metrics.update_offenders(&gw.offenders, now_ms());
            (StatusCode::OK, "text/plain; version=0.0.4", gw.metrics.render())
        }
        (&Method::POST, "/reload") => match crate::reload::reload(gw, "admin").await {
            Ok(()) => (
                StatusCode::OK,
                "application/json",
                r#"{"reloaded":true}"#.to_string() + "\n",
            ),
            Err(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "application/json",
                serde_json::json!({ "reloaded": false, "problems": problems }).to_string() + "\n",
            ),
        },
        (_, "/reload") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n".into()),
        (&Method::GET, "/top") => {
            let k = query_param(uri.query(), "k")
                .and_then(|k| k.parse::<usize>().ok())
                .unwrap_or(10)
                .clamp(1, gw.offenders.capacity());
            let report = gw.offenders.report(k, now_ms());
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&report).unwrap_or_default() + "\n",
            )
        }
        (_, "/top") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into()),
        (_, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Still ready while the state backend is down: the routes' degradation policies
        // keep serving, and taking every replica out of the balancer would be worse.
        (_, "/readyz") if gw.ready.load(Ordering::Relaxed) => {
            let body = match gw.state.health() {
                Some(h) if !h.up => "ready (state backend down: degradation policies apply)\n",
                _ => "ready\n",
            };
            (StatusCode::OK, "text/plain", body.to_string())
        }
        (_, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, POST /reload or /top?k=10\n".to_string(),
        ),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(Token::new("short").is_none());
        assert!(Token::new("sixteen chars!!!").is_none(), "spaces are not visible ASCII");
        assert!(Token::new(&"x".repeat(1025)).is_none());
        let t = Token::new("0123456789abcdef").unwrap();
        assert!(t.verify(b"0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdeF",
            b"0123456789abcdef0",
            b"1123456789abcdef",
        ] {
            assert!(!t.verify(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("k=5"), "k"), Some("5"));
        assert_eq!(query_param(Some("kind=x&k=7"), "k"), Some("7"));
        assert_eq!(query_param(None, "k"), None);
    }
}
