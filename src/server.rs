//! Server: binds the proxy and admin listeners, runs their accept loops and the reload
//! watcher, and drains connections on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::audit::AuditLog;
use crate::config::StateBackend;
use crate::metrics::Metrics;
use crate::proxy;
use crate::runtime::{self, Runtime};
use crate::state::{Backend, KeyHasher, MemoryState, RedisState, StateStore};

/// Command-line settings that override the config file, kept so that every reload
/// applies them again.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub shadow: bool,
    /// Replaces server.trusted_proxies (the demo trusts its own loopback driver).
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
}

impl Overrides {
    pub fn apply(&self, rt: &mut Runtime) -> Result<(), String> {
        if let Some(addr) = self.listen {
            rt.server.listen = addr;
        }
        if let Some(addr) = self.admin_listen {
            rt.server.admin_listen = addr;
        }
        if let Some(url) = &self.upstream {
            rt.override_upstream(url).map_err(|e| format!("--upstream: {e}"))?;
        }
        if self.shadow {
            rt.force_shadow();
        }
        if let Some(nets) = &self.trusted_proxies {
            rt.server.trusted_proxies = nets.clone();
        }
        Ok(())
    }
}

/// Everything a request handler shares: the swappable runtime and the long-lived parts
/// that survive reloads (state, metrics, upstream pool).
pub struct Gateway<S> {
    pub runtime: ArcSwap<Runtime>,
    pub state: S,
    pub hasher: KeyHasher,
    pub metrics: Metrics,
    /// Keep-alive connections to the upstreams (kept across reloads).
    pub upstreams: Arc<crate::upstream::Pool>,
    pub config_path: PathBuf,
    pub overrides: Overrides,
    pub ready: AtomicBool,
    /// Kept across reloads: the writer owns the file and its rotation.
    pub audit: Option<AuditLog>,
    /// Whether audit records embed the full event (from the config at start).
    pub capture_events: bool,
    /// The most stopped identities, for the admin /top endpoint (sized at start).
    pub offenders: crate::offenders::Offenders,
    request_seq: AtomicU64,
    request_prefix: u64,
}

impl<S> Gateway<S> {
    /// A fresh request id (`rg-PREFIX-SEQ`, lower-case hex), unique per process run,
    /// cheap, not a secret; as a header value
    /// formatted on the stack: one allocation, shared by every header that carries it.
    pub fn next_request_id_value(&self) -> http::HeaderValue {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 3 + 8 + 1 + 16];
        buf[..3].copy_from_slice(b"rg-");
        hex(&mut buf[3..11], self.request_prefix as u32 as u64, 8);
        buf[11] = b'-';
        let digits = (64 - n.max(1).leading_zeros()).div_ceil(4) as usize;
        hex(&mut buf[12..12 + digits], n, digits);
        http::HeaderValue::from_bytes(&buf[..12 + digits]).expect("hex digits are a valid header value")
    }
}

/// `value` in `out.len()` lower-case hex digits (zero-padded).
fn hex(out: &mut [u8], mut value: u64, digits: usize) {
    for slot in out[..digits].iter_mut().rev() {
        *slot = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A gateway that is serving: its addresses, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway<Backend>>,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops accepting, drains in-flight requests (up to the configured grace), and
    /// waits for every task to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until the gateway has been shut down and drained, then flushes the audit
    /// log (for at most a second: a stalled disk must not hold the exit).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(audit) = &self.gateway.audit {
            for _ in 0..100 {
                if audit.stats().queued == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// A handle that triggers shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Loads the config, connects the state backend, binds both listeners and starts serving.
pub async fn start(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<Running> {
    start_on(config_path, overrides, None).await
}

/// `--state`: `memory`, or `redis://HOST:PORT` (the Redis backend on that server),
/// instead of the config's `[state] backend`.
pub fn choose_backend(choice: &str, state: &mut crate::config::StateConfig) -> Result<(), String> {
    match choice {
        "memory" => state.backend = StateBackend::Memory,
        url if url.starts_with("redis://") => {
            state.backend = StateBackend::Redis;
            state.redis_url = url.to_string();
            state.redis_nodes.clear();
        }
        other => return Err(format!("--state {other}: expected `memory` or `redis://HOST:PORT`")),
    }
    Ok(())
}

/// `start`, with the state backend chosen on the command line (`--state`) when given.
pub async fn start_on(config_path: PathBuf, overrides: Overrides, state: Option<String>) -> anyhow::Result<Running> {
    let load = |hasher: KeyHasher| {
        let path = config_path.clone();
        let overrides = overrides.clone();
        async move {
            let mut rt = tokio::task::spawn_blocking(move || runtime::load(&path, &hasher)).await??;
            overrides.apply(&mut rt).map_err(anyhow::Error::msg)?;
            anyhow::Ok(rt)
        }
    };
    let hasher = KeyHasher::random();
    let mut rt = load(hasher.clone()).await?;
    if let Some(choice) = &state {
        choose_backend(choice, &mut rt.state).map_err(anyhow::Error::msg)?;
    }
    match rt.state.backend {
        StateBackend::Memory => {
            let state = MemoryState::new(rt.state.memory_budget_mb * 1024 * 1024, rt.state.ttl_s * 1_000);
            start_with(rt, config_path, overrides, hasher, Backend::Memory(state)).await
        }
        StateBackend::Redis => {
            // Every replica must hash identities alike: the seed comes from Redis, and
            // the route keys of the runtime with it.
            let (redis, seed) = RedisState::connect(&rt.state)
                .await
                .map_err(|e| anyhow::anyhow!("state backend redis ({}): {e}", describe_redis(&rt)))?;
            let hasher = KeyHasher::seeded(seed);
            let state_config = rt.state.clone();
            let mut rt = load(hasher.clone()).await?;
            rt.state = state_config;
            info!(redis = %describe_redis(&rt), "state backend: redis");
            start_with(rt, config_path, overrides, hasher, Backend::Redis(Box::new(redis))).await
        }
    }
}

fn describe_redis(rt: &Runtime) -> String {
    if rt.state.redis_nodes.is_empty() {
        rt.state.redis_url.clone()
    } else {
        format!("cluster {}", rt.state.redis_nodes.join(","))
    }
}

/// Starts serving an already-built runtime on an already-built state backend (whose
/// key seed `hasher` carries).
pub async fn start_with(
    rt: Runtime,
    config_path: PathBuf,
    overrides: Overrides,
    hasher: KeyHasher,
    state: Backend,
) -> anyhow::Result<Running> {
    let hup = crate::reload::hangup();
    let listener = TcpListener::bind(rt.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", rt.server.listen))?;
    let admin = TcpListener::bind(rt.server.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", rt.server.admin_listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let metrics = Metrics::new();
    let mut rt = rt;
    crate::reload::model_outcome(&metrics, &mut rt, None);
    metrics.register_config(&rt);
    metrics.config_last_reload_success.set(1);
    let upstreams = crate::upstream::Pool::start(crate::upstream::Settings {
        connect_timeout: Duration::from_millis(rt.server.upstream_connect_timeout_ms),
        idle_timeout: Duration::from_millis(rt.server.upstream_idle_timeout_ms),
        max_idle_per_host: rt.server.upstream_max_idle_per_host,
    });
    let seed = std::collections::hash_map::RandomState::new();
    let rt_audit = rt.audit.clone();
    let offenders = crate::offenders::Offenders::new(rt.admin.top_capacity, rt.admin.top_window_ms);
    if !admin_addr.ip().is_loopback() && rt.admin.token.is_none() {
        warn!(%admin_addr, "the admin listener is not on loopback and no admin token is set: /metrics is public, /reload and /top are disabled");
    }
    let gateway = Arc::new(Gateway {
        runtime: ArcSwap::from_pointee(rt),
        state,
        hasher,
        metrics,
        upstreams,
        config_path,
        overrides,
        ready: AtomicBool::new(true),
        audit: rt_audit.enabled.then(|| AuditLog::start(&rt_audit)),
        capture_events: rt_audit.capture_events,
        offenders,
        request_seq: AtomicU64::new(1),
        request_prefix: std::hash::BuildHasher::hash_one(&seed, 1u8),
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve_proxy(gateway.clone(), listener, shutdown_rx.clone()));
    tasks.spawn(crate::admin::serve(gateway.clone(), admin, shutdown_rx.clone()));
    tasks.spawn(crate::reload::watch(gateway.clone(), hup, shutdown_rx));
    info!(%addr, %admin_addr, "riskgate serving");
    Ok(Running {
        addr,
        admin_addr,
        gateway,
        shutdown,
        tasks,
    })
}

async fn serve_proxy<S: StateStore>(gw: Arc<Gateway<S>>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(&gw.runtime.load());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = gw.clone();
                let first_byte = Duration::from_millis(gw.runtime.load().server.header_read_timeout_ms);
                let client = proxy::Peer::new(peer);
                let service = service_fn(move |req| proxy::handle(gw.clone(), client.clone(), req));
                let io = TokioIo::new(FirstByteDeadline::new(stream, first_byte));
                let conn = builder.serve_connection(io, service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let outcome = conn.await;
                    if let Err(e) = outcome {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    gw.ready.store(false, Ordering::Relaxed);
    let grace = Duration::from_millis(gw.runtime.load().server.shutdown_grace_ms);
    info!(grace_ms = grace.as_millis() as u64, "draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("shutdown grace period over; closing remaining connections");
    }
}

/// A client stream that must deliver its first byte within a deadline. A connection
/// that never sends anything would otherwise wait forever in the HTTP/1-or-2 sniffing,
/// which has no timeout of its own; after the first byte hyper's header read timeout
/// takes over (slowloris).
struct FirstByteDeadline<T> {
    inner: T,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstByteDeadline<T> {
    fn new(inner: T, within: Duration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/1.1 (+ optional h2c) connection settings: header timeout and size.
pub fn connection_builder(rt: &Runtime) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(rt.server.header_read_timeout_ms))
        .max_buf_size(rt.server.max_header_bytes.max(8192))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    if rt.server.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
