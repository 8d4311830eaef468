//! The two servers of the benchmark floor: a stub upstream that answers every request
//! `200 {"ok":true}`, and a bare hyper pass-through proxy: what a proxy on hyper and
//! hyper-util's pooled client costs before it does anything. (riskgate forwards through
//! its own pool on hyper's low-level client, `src/upstream.rs`, which is a little
//! cheaper: BENCHMARKS.md, "Profile".)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

const STUB_BODY: &[u8] = br#"{"ok":true}"#;

/// Serves the stub upstream on `listener` until the task is dropped. The request body
/// is read to the end (as a real backend would) and discarded.
pub async fn stub(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut resp = Response::new(Full::new(Bytes::from_static(STUB_BODY)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves a bare pass-through proxy on `listener` to `upstream` until the task is
/// dropped: the request goes on with its path and headers (Host kept), over a pooled
/// keep-alive connection; the answer comes back as it is, streamed.
pub async fn passthrough(listener: TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector);
    let authority = upstream.to_string();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| forward(client.clone(), authority.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Body>,
    authority: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
    Ok(match client.request(req).await {
        Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed()),
        Err(_) => answer(StatusCode::BAD_GATEWAY),
    })
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}
