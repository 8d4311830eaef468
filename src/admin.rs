//! Admin listener: /metrics, /healthz, /readyz. Loopback by default; read-only.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
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

async fn answer<S: StateStore>(
    gw: Arc<Gateway<S>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            gw.metrics.update_state(&gw.state.stats(), gw.state.budget_bytes());
            gw.metrics.update_backend(gw.state.health());
            if let Some(audit) = &gw.audit {
                gw.metrics.update_audit(&audit.stats());
            }
            (StatusCode::OK, "text/plain; version=0.0.4", gw.metrics.render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Still ready while the state backend is down: the routes' degradation policies
        // keep serving, and taking every replica out of the balancer would be worse.
        "/readyz" if gw.ready.load(Ordering::Relaxed) => {
            let body = match gw.state.health() {
                Some(h) if !h.up => "ready (state backend down: degradation policies apply)\n",
                _ => "ready\n",
            };
            (StatusCode::OK, "text/plain", body.to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    Ok(resp)
}
