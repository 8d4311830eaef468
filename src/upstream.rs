//! The upstream connection pool: keep-alive HTTP/1.1 connections to each upstream,
//! built on hyper's low-level `client::conn::http1`.
//!
//! Leaner than hyper-util's pooled `Client` on the forwarding path (no per-request URI
//! work or pool-key hashing, no task spawned to wait for a connection to become idle
//! again): a checkout takes the most recently used ready connection under a short lock
//! (never held across an await), or opens one; the connection goes back to the pool
//! when the response body has been read to its end. A bounded number of idle
//! connections is kept per upstream, each at most the idle timeout. A request that an
//! idle connection could not send (the upstream closed it meanwhile) is sent again on a
//! fresh connection; a request that was sent is never sent twice.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::proxy::ProxyBody;

/// How a forward failed.
#[derive(Debug)]
pub enum Error {
    /// No connection could be opened (`timeout`: the connect timeout ran out).
    Connect { timeout: bool, error: std::io::Error },
    /// The connection failed after the request was handed to it.
    Request(hyper::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect { error, .. } => write!(f, "connect: {error}"),
            Error::Request(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { error, .. } => Some(error),
            Error::Request(e) => Some(e),
        }
    }
}

/// The pool settings (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

struct Host {
    /// `host:port`, as connected to.
    authority: String,
    idle: Vec<Idle>,
}

/// Keep-alive connections to every upstream the gateway forwards to.
pub struct Pool {
    settings: Settings,
    hosts: Mutex<Vec<Host>>,
}

impl Pool {
    /// A pool, with a task that closes connections idle for longer than the timeout
    /// (it ends with the pool). Must be called within a Tokio runtime.
    pub fn start(settings: Settings) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            settings,
            hosts: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&pool);
        let every = (settings.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { break };
                pool.sweep();
            }
        });
        pool
    }

    /// Sends `req` (origin-form URI, Host set) to `authority` (`host:port`) and returns
    /// the response head; its body streams from the connection, which goes back to the
    /// pool once that body has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        authority: &str,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Error> {
        // Idle connections first; each can fail only by not sending, then the next.
        let (host, mut idle) = self.checkout(authority);
        while let Some(mut sender) = idle {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(host, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        debug!(error = %e.error(), "idle upstream connection unusable; trying another");
                        req = back;
                        idle = self.checkout(authority).1;
                    }
                    None => return Err(Error::Request(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(authority).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.pooled(host, sender, resp)),
            Err(e) => Err(Error::Request(e)),
        }
    }

    /// `authority`'s place in the pool (made on first use; hosts are never removed, so
    /// it stays valid), and its most recently used ready connection, if any. Closed and
    /// expired ones are dropped; busy ones (still finishing a body) stay.
    fn checkout(&self, authority: &str) -> (usize, Option<SendRequest<ProxyBody>>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let at = match hosts.iter().position(|h| h.authority == authority) {
            Some(at) => at,
            None => {
                hosts.push(Host {
                    authority: authority.to_string(),
                    idle: Vec::new(),
                });
                hosts.len() - 1
            }
        };
        let host = &mut hosts[at];
        let now = Instant::now();
        let mut i = host.idle.len();
        while i > 0 {
            i -= 1;
            let entry = &host.idle[i];
            if entry.sender.is_closed() || now.duration_since(entry.since) > self.settings.idle_timeout {
                host.idle.swap_remove(i);
                continue;
            }
            if entry.sender.is_ready() {
                return (at, Some(host.idle.swap_remove(i).sender));
            }
        }
        (at, None)
    }

    /// Puts a connection back to host `at`, unless it already has enough idle ones.
    fn checkin(&self, at: usize, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(host) = hosts.get_mut(at) else { return };
        if host.idle.len() < self.settings.max_idle_per_host {
            host.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        for host in hosts.iter_mut() {
            host.idle
                .retain(|e| !e.sender.is_closed() && now.duration_since(e.since) <= self.settings.idle_timeout);
        }
    }

    /// Opens a connection (within the connect timeout) and starts its task.
    async fn connect(&self, authority: &str) -> Result<SendRequest<ProxyBody>, Error> {
        let connect = TcpStream::connect(authority);
        let stream = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => return Err(Error::Connect { timeout: false, error }),
            Err(_) => {
                return Err(Error::Connect {
                    timeout: true,
                    error: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Error::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn pooled(
        self: &Arc<Self>,
        host: usize,
        sender: SendRequest<ProxyBody>,
        resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        resp.map(|body| {
            let body = PooledBody {
                inner: body,
                home: Some((sender, Arc::downgrade(self), host)),
            };
            http_body_util::BodyExt::boxed(body)
        })
    }
}

/// A response body that returns its connection to the pool once read to the end.
struct PooledBody {
    inner: Incoming,
    /// The connection, its pool and its host's place there (no string per request).
    home: Option<(SendRequest<ProxyBody>, Weak<Pool>, usize)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool, host)) = self.home.take() {
            if let Some(pool) = pool.upgrade() {
                pool.checkin(host, sender);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is not reused after a broken body.
                this.home = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped unread (the client went away): the connection has a response in
        // flight and is not reused.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers `per_connection` requests on each connection, then
    /// closes it without saying so (no `Connection: close`), as a server whose
    /// keep-alive timeout ran out does. Counts connections.
    async fn upstream(per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_connection {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                });
            }
        });
        (addr, conns)
    }

    fn request(authority: &str) -> Request<ProxyBody> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, authority)
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    fn settings() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_host: 8,
        }
    }

    #[tokio::test]
    async fn reuses_a_connection_whose_body_was_read() {
        let (addr, conns) = upstream(usize::MAX).await;
        let pool = Pool::start(settings());
        for _ in 0..5 {
            let resp = pool.send(&addr, request(&addr)).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // Let the connection task see the end of the message (the runtime is idle
            // meanwhile, so it runs everything that is ready).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_meanwhile_is_not_an_error() {
        let (addr, conns) = upstream(1).await;
        let pool = Pool::start(settings());
        for _ in 0..5 {
            let resp = pool.send(&addr, request(&addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let pool = Pool::start(settings());
        match pool.send(&addr, request(&addr)).await {
            Err(Error::Connect { timeout: false, .. }) => {}
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
