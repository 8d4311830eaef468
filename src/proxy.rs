//! Proxy: one client request through the pipeline, then forwarded to the upstream with
//! risk headers, or answered locally. All HTTP error answers are made here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{debug, warn, Instrument};

use crate::decide::{Decision, ResponseKind};
use crate::event::Event;
use crate::extract::{self, X_FORWARDED_FOR};
use crate::pipeline::{self, Assessment};
use crate::runtime::{Runtime, Upstream};
use crate::server::Gateway;
use crate::state::StateStore;
use crate::upstream::Error as UpstreamError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that describe one hop, not the request: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The client end of one connection: its address, and that address as an
/// X-Forwarded-For value (formatted once per connection, not per request).
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    ip_header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a valid header value");
        Peer { addr, ip_header }
    }
}

/// Handles one request from `peer`. Never fails: every problem becomes an HTTP answer.
pub async fn handle<S: StateStore>(
    gw: Arc<Gateway<S>>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let rt = gw.runtime.load_full();
    let request_id = request_id(&rt, req.headers(), &gw);
    let span = tracing::debug_span!("request", request_id = request_id.to_str().unwrap_or("-"));
    gw.metrics.inflight.inc();
    let response = handle_routed(&gw, &rt, &peer, req, &request_id).instrument(span).await;
    gw.metrics.inflight.dec();
    let mut response = response;
    response.headers_mut().insert(rt.headers.request_id.clone(), request_id);
    Ok(response)
}

async fn handle_routed<S: StateStore>(
    gw: &Gateway<S>,
    rt: &Runtime,
    peer: &Peer,
    req: Request<Incoming>,
    id: &HeaderValue,
) -> Response<ProxyBody> {
    // Sane by construction (see `request_id`): printable ASCII.
    let request_id = id.to_str().unwrap_or("-");
    let started = Instant::now();
    let max = rt.server.max_body_bytes;
    if content_length(req.headers()).is_some_and(|n| n > max as u64) {
        return too_large(gw, request_id);
    }
    let Some(route_index) = rt.route(req.method(), req.uri().path()) else {
        gw.metrics.requests.with_label_values(&["unmatched", "unscored"]).inc();
        return match (&rt.server.unmatched, &rt.default_upstream) {
            (crate::config::Unmatched::Forward, Some(up)) => {
                let up = up.clone();
                let (parts, body) = req.into_parts();
                let body = limited(body, max);
                forward(gw, rt, &up, parts, body, peer, id, None, "unmatched").await
            }
            _ => {
                gw.metrics.rejected.with_label_values(&["unmatched"]).inc();
                local(StatusCode::NOT_FOUND, "not_found", "no such route", request_id)
            }
        };
    };
    let route = &rt.routes[route_index];
    let (parts, body) = req.into_parts();
    let identity_headers =
        match extract::checked_headers(&route.identity, &parts.headers, parts.uri.query().unwrap_or("")) {
            Ok(headers) => headers,
            Err(problem) => {
                // The client learns only that the request is malformed, not which identity.
                debug!(?problem, "ambiguous identity");
                gw.metrics.rejected.with_label_values(&["bad_identity"]).inc();
                return local(StatusCode::BAD_REQUEST, "bad_request", "malformed request", request_id);
            }
        };
    let (bytes, body) = if !route.body_fields.is_empty() {
        match Limited::new(body, max).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let forwarded = Full::new(bytes.clone()).map_err(|never| match never {}).boxed();
                (Some(bytes), forwarded)
            }
            // A body the gateway cannot read but a lenient backend might would
            // let a client hide the identities it carries (the inviter, say).
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(gw, request_id),
            Err(e) => {
                debug!(error = %e, "client body read failed");
                gw.metrics.rejected.with_label_values(&["bad_request"]).inc();
                return local(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "could not read the request body",
                    request_id,
                );
            }
        }
    } else {
        (None, limited(body, max))
    };
    let fields = match bytes.as_deref().map(|b| route.body_fields.read(b)).transpose() {
        Ok(fields) => fields,
        Err(_) => {
            // A body the gateway cannot read but a lenient backend might would let a
            // client hide the identities it carries (the inviter, say).
            gw.metrics.rejected.with_label_values(&["bad_json"]).inc();
            return local(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body is not valid JSON",
                request_id,
            );
        }
    };

    let ts_ms = now_ms();
    // Scored from the request itself: an event is built only for a capturing audit log.
    let live = extract::Live::new(
        &parts,
        identity_headers,
        fields.as_ref().map(|f| (&route.body_fields, f)),
        peer.addr.ip(),
    );
    let assessment = pipeline::assess_route(rt, route_index, &gw.state, &gw.hasher, &live, ts_ms).await;
    gw.metrics.observe(rt, &assessment, started.elapsed().as_secs_f64());
    if assessment.decision.stops() {
        // Shadowed stops count too: a shadow deployment should show who it would stop.
        gw.offenders.record(&assessment.identities, ts_ms);
    }
    if let Some(audit) = &gw.audit {
        let event = gw
            .capture_events
            .then(|| event_of(&parts, peer.addr, bytes.as_deref().and_then(parse_body), ts_ms));
        let mut line = Vec::with_capacity(AUDIT_LINE_CAPACITY);
        assessment
            .record(rt, ts_ms, request_id, None, event.as_ref())
            .write_json(&mut line);
        audit.record(line);
    }
    debug!(route = %route.name, decision = assessment.decision.as_str(), score = assessment.score.value, "decided");
    if let Some(kind) = assessment.respond {
        return stopped(rt, kind, &assessment, request_id);
    }
    let risk = Some(risk_headers(&assessment));
    forward(gw, rt, &route.upstream, parts, body, peer, id, risk, &route.name).await
}

/// Room for a typical decision record (about 400 bytes on the default config), so
/// that serialising it does not regrow the buffer.
const AUDIT_LINE_CAPACITY: usize = 512;

/// The values of the three risk headers for a forwarded request.
struct RiskHeaders {
    score: HeaderValue,
    decision: HeaderValue,
    reasons: Option<HeaderValue>,
}

fn risk_headers(a: &Assessment) -> RiskHeaders {
    // Upstreams only ever see allow or review: a shadowed stop is forwarded as review.
    let decision = if a.decision.stops() {
        Decision::Review
    } else {
        a.decision
    };
    let reasons = (!a.score.reasons.is_empty()).then(|| {
        let len = a.score.reasons.iter().map(|r| r.len() + 1).sum::<usize>();
        let mut joined = bytes::BytesMut::with_capacity(len);
        for (i, r) in a.score.reasons.iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(b",");
            }
            joined.extend_from_slice(r.as_bytes());
        }
        HeaderValue::from_maybe_shared(joined.freeze()).ok()
    });
    RiskHeaders {
        score: score_header(a.score.value),
        decision: HeaderValue::from_static(decision.as_str()),
        reasons: reasons.flatten(),
    }
}

/// `score` with three decimals (`0.420`), as the x-risk-score header. Scores are in
/// [0, 1], so the 1,001 possible values are formatted once and shared.
fn score_header(score: f64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let thousandths = (score * 1_000.0).round();
    if !(0.0..=1_000.0).contains(&thousandths) {
        return HeaderValue::from_str(&format!("{score:.3}")).unwrap_or_else(|_| HeaderValue::from_static("0.000"));
    }
    let table = TABLE.get_or_init(|| {
        (0..=1_000u32)
            .map(|t| {
                let text: &'static str = Box::leak(format!("{}.{:03}", t / 1_000, t % 1_000).into_boxed_str());
                HeaderValue::from_static(text)
            })
            .collect()
    });
    table[thousandths as usize].clone()
}

#[allow(clippy::too_many_arguments)]
async fn forward<S: StateStore>(
    gw: &Gateway<S>,
    rt: &Runtime,
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: ProxyBody,
    peer: &Peer,
    id: &HeaderValue,
    risk: Option<RiskHeaders>,
    route_name: &str,
) -> Response<ProxyBody> {
    let request_id = id.to_str().unwrap_or("-");
    // The upstream sees the origin form (`/path?query`); Host stays the client's (or
    // the authority of an absolute-form target, or else the upstream's).
    let Some(authority) = upstream.base.authority() else {
        return local(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "the service is unavailable",
            request_id,
        );
    };
    if !parts.headers.contains_key(header::HOST) {
        let host = parts.uri.authority().unwrap_or(authority);
        if let Ok(v) = HeaderValue::from_str(host.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        match Uri::from_parts(origin) {
            Ok(u) => parts.uri = u,
            Err(_) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid request target",
                    request_id,
                )
            }
        }
    }
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // A client must not be able to hand the upstream a verdict of its own.
    let risk_names = [&rt.headers.score, &rt.headers.decision, &rt.headers.reasons];
    if headers.keys().any(|name| risk_names.contains(&name)) {
        for name in risk_names {
            headers.remove(name);
        }
    }
    append_forwarded_for(headers, peer);
    headers.insert(rt.headers.request_id.clone(), id.clone());
    if let Some(risk) = risk {
        headers.insert(rt.headers.score.clone(), risk.score);
        headers.insert(rt.headers.decision.clone(), risk.decision);
        if let Some(reasons) = risk.reasons {
            headers.insert(rt.headers.reasons.clone(), reasons);
        }
    }
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, body);

    let started = Instant::now();
    // The deadline from the same clock read (`timeout` would read it again).
    let deadline = started + std::time::Duration::from_millis(rt.server.upstream_timeout_ms);
    let result = tokio::time::timeout_at(deadline.into(), gw.upstreams.send(&upstream.connect_to, req)).await;
    let errors = |kind: &str| gw.metrics.upstream_errors.with_label_values(&[route_name, kind]).inc();
    match result {
        Ok(Ok(resp)) => {
            gw.metrics.observe_upstream(route_name, started.elapsed().as_secs_f64());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body)
        }
        Ok(Err(UpstreamError::Connect { timeout: true, error })) => {
            errors("timeout");
            warn!(upstream = %upstream.name, %error, "upstream connect timed out");
            local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the service did not answer in time",
                request_id,
            )
        }
        Ok(Err(e)) => {
            let kind = if matches!(e, UpstreamError::Connect { .. }) {
                "connect"
            } else {
                "other"
            };
            errors(kind);
            warn!(upstream = %upstream.name, error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
            local(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the service is unavailable",
                request_id,
            )
        }
        Err(_) => {
            errors("timeout");
            warn!(upstream = %upstream.name, timeout_ms = rt.server.upstream_timeout_ms, "upstream timed out");
            local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the service did not answer in time",
                request_id,
            )
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, no lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether a header is one of `HOP_BY_HOP` (`Connection` among them, which may name more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, peer.ip_header.clone());
        return;
    }
    let peer = peer.addr;
    let prior: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        peer.ip().to_string()
    } else {
        format!("{}, {}", prior.join(", "), peer.ip())
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// The request id: the client's, when it is a sane token, otherwise a fresh one.
fn request_id<S>(rt: &Runtime, headers: &HeaderMap, gw: &Gateway<S>) -> HeaderValue {
    headers
        .get(&rt.headers.request_id)
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| gw.next_request_id_value())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn limited(body: Incoming, max: usize) -> ProxyBody {
    Limited::new(body, max).boxed()
}

/// The JSON body of a route that reads identities from it: `Null` when empty, `None`
/// when it is not JSON (or not UTF-8, which JSON requires).
/// The body an event records, parsed only for a capturing audit log (after
/// `BodyFields::read` has accepted it): `None` when there is none (only whitespace).
fn parse_body(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

/// Milliseconds since the Unix epoch, by the wall clock: a request's `ts_ms`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The request as an event record (DESIGN.md), made at `ts_ms`, for an audit log that
/// captures traffic for replay.
fn event_of(parts: &http::request::Parts, peer: SocketAddr, body: Option<serde_json::Value>, ts_ms: u64) -> Event {
    let headers = parts
        .headers
        .keys()
        .filter_map(|name| {
            Some((
                name.as_str().to_string(),
                extract::header_text(&parts.headers, name)?.into_owned(),
            ))
        })
        .collect();
    Event {
        ts_ms,
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        client_ip: peer.ip(),
        headers,
        body: body.filter(|b| !b.is_null()),
        label: None,
    }
}

fn stopped(rt: &Runtime, kind: ResponseKind, a: &Assessment, request_id: &str) -> Response<ProxyBody> {
    let r = match kind {
        ResponseKind::Block => &rt.responses.block,
        ResponseKind::Challenge => &rt.responses.challenge,
        ResponseKind::RateLimit => &rt.responses.rate_limit,
    };
    let mut resp = local(r.status, &r.code, &r.message, request_id);
    if let (ResponseKind::RateLimit, Some(ms)) = (kind, a.score.retry_after_ms) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1_000).max(1)));
    }
    resp
}

fn too_large<S>(gw: &Gateway<S>, request_id: &str) -> Response<ProxyBody> {
    gw.metrics.rejected.with_label_values(&["body_too_large"]).inc();
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body too large",
        request_id,
    )
}

/// A small JSON answer from the gateway itself: a code and the request id, never a
/// score or a reason.
pub fn local(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "code": code, "message": message, "request_id": request_id }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body_fields::BodyFields;
    use crate::extract::{IdentityHeaders, IdentitySpec, Live};

    /// The proxy scores the live request; replay scores the event the audit log
    /// captured of it. Both must read the same identities, repeated and odd headers too.
    #[test]
    fn a_live_request_has_the_identities_of_its_captured_event() {
        let spec = IdentitySpec {
            user: Some("header:x-user-id".parse().unwrap()),
            device: Some("cookie:did".parse().unwrap()),
            phone: Some("query:phone".parse().unwrap()),
            campaign: Some("json:/campaign_id".parse().unwrap()),
            inviter: Some("json:/ref/0".parse().unwrap()),
            amount: Some("json:/amount".parse().unwrap()),
            pay_account: Some("header:x-pay".parse().unwrap()),
            address: Some("ip".parse().unwrap()),
            user_agent: Some("header:user-agent".parse().unwrap()),
            app_version: Some("header:x-app-version".parse().unwrap()),
        };
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let body = serde_json::json!({"campaign_id": "c-1", "ref": [42], "amount": 101.5});
        let requests = [
            vec![
                ("x-user-id", &b"u1"[..]),
                ("cookie", b"a=1; did=d-9"),
                ("user-agent", b"UA NetType/WIFI"),
            ],
            // Repeated headers join: cookies with `; `, X-Forwarded-For as one list.
            vec![
                ("cookie", &b"a=1"[..]),
                ("cookie", b"did=d-2"),
                ("x-forwarded-for", b"198.51.100.7"),
                ("x-forwarded-for", b"10.9.9.9"),
                ("x-pay", b"  p-1  "),
            ],
            // Not UTF-8 (the proxy refuses it for an identity header, not elsewhere).
            vec![
                ("x-app-version", &b"3.\xff"[..]),
                ("user-agent", b"\xfe\xfe"),
                ("x-forwarded-for", b"junk"),
            ],
            vec![],
        ];
        for (i, headers) in requests.iter().enumerate() {
            let mut req = Request::builder().method("POST").uri("/api/claim?phone=p%2B1&x=2");
            for (name, value) in headers {
                req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();
            let fields = BodyFields::new(spec.json_pointers());
            for bytes in [body.to_string(), "null".to_string(), " ".to_string()] {
                let values = fields.read(bytes.as_bytes()).unwrap();
                let inviter = bytes.starts_with('{').then_some("42");
                let live = extract::identities(
                    &spec,
                    &Live::new(&parts, IdentityHeaders::default(), Some((&fields, &values)), peer.ip()),
                    &trusted,
                );
                let event = event_of(&parts, peer, parse_body(bytes.as_bytes()), 1_000);
                assert_eq!(live, extract::identities(&spec, &event, &trusted), "request {i}");
                // What the proxy's identity check read reads the same (where it passes).
                let query = parts.uri.query().unwrap_or("");
                let checked = extract::checked_headers(&spec, &parts.headers, query);
                assert_eq!(checked.is_ok(), i != 2, "request {i}");
                if let Ok(checked) = checked {
                    let live_checked = Live::new(&parts, checked, Some((&fields, &values)), peer.ip());
                    assert_eq!(extract::identities(&spec, &live_checked, &trusted), live, "request {i}");
                }
                if i == 1 {
                    assert_eq!(live.device.as_deref(), Some("d-2"));
                    assert_eq!(live.ip.to_string(), "198.51.100.7");
                    assert_eq!(live.pay_account.as_deref(), Some("p-1"));
                    assert_eq!(live.phone.as_deref(), Some("p+1"));
                    assert_eq!(live.inviter.as_deref(), inviter);
                }
            }
        }
    }
}
