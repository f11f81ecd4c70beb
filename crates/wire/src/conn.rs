//! Connections: accepting them, serving HTTP/1.1 and HTTP/2 on each, and
//! closing the ones that hold resources without using them.
//!
//! Every open connection costs a file descriptor and some memory, whatever
//! it does; a server that lets callers keep connections without limit runs
//! out of descriptors (and then cannot even answer its health check or open
//! a pool file) long before it runs out of work. So:
//!
//! * at most [`ConnectionOptions::max_connections`] are open at once; the
//!   next one waits in the kernel's backlog until one closes. The limit is
//!   kept below the process's open-file limit, which [`raise_open_file_limit`]
//!   raises to the hard limit at start;
//! * a connection must send a request's headers within
//!   [`ConnectionOptions::header_read_timeout`] of opening (or of its last
//!   request), and one without a request in flight for
//!   [`ConnectionOptions::idle_timeout`] is closed. A request's body is read
//!   within its call's deadline (see [`crate::serve`]); a request whose body
//!   was not read to the end closes its HTTP/1.1 connection;
//! * HTTP/2 has a cap on concurrent streams per connection, hyper's
//!   protection against floods of reset streams, and keepalive pings that
//!   close connections whose peer went away.
//!
//! [`serve`] runs the accept loop. [`serve_with`] lets a caller transform
//! each accepted TCP stream first (a TLS handshake), then serves the result
//! with the same machinery.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::Service;
use tracing::{debug, warn};

/// Connection-level limits of a server.
#[derive(Clone, Debug)]
pub struct ConnectionOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers, from when it
    /// opened or its previous request finished.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Most concurrent streams (calls) on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Most streams a client may reset before the server has accepted them
    /// (hyper's protection against reset floods).
    pub http2_max_pending_accept_reset_streams: usize,
    /// Most streams the server resets because of the client's errors before
    /// it closes the connection.
    pub http2_max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 keepalive pings; `None` sends none.
    pub http2_keepalive_interval: Option<Duration>,
    /// A ping not acknowledged within this closes the connection.
    pub http2_keepalive_timeout: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            http2_max_concurrent_streams: 256,
            http2_max_pending_accept_reset_streams: 50,
            http2_max_local_error_reset_streams: 1024,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// File descriptors kept for everything but connections (store files, the
/// event log, PostgreSQL, outgoing forwarding channels).
pub const RESERVED_FILES: u64 = 256;

/// The process's open-file limit, before and after raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now (the hard limit, if raising it worked).
    pub now: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard limit. The default soft
/// limit of many systems (1024, or less) is far below what a server with
/// thousands of callers needs, while the hard limit is usually generous.
pub fn raise_open_file_limit() -> io::Result<FileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // `None` is "unlimited".
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let mut now = before;
    let below_hard = match (lim.current, lim.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            now = hard;
        }
    }
    Ok(FileLimit { before, now, hard })
}

/// The connection cap actually used: the configured one, but never more than
/// the open-file limit allows once [`RESERVED_FILES`] are set aside.
pub fn effective_max_connections(configured: usize, files: Option<FileLimit>) -> usize {
    match files {
        Some(f) => {
            let room = f.now.saturating_sub(RESERVED_FILES).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
    .max(1)
}

/// Serves `router` on every connection accepted from `listener` until
/// `shutdown` completes; then stops accepting, lets calls in flight finish
/// and returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, router, options, shutdown, |tcp| async move {
        Ok::<_, io::Error>((tcp, http::Extensions::new()))
    })
    .await
}

/// Like [`serve`], with `accept` turning each accepted TCP stream into the
/// stream to serve (for example, by completing a TLS handshake) and the
/// extensions every request of that connection carries (the verified
/// client certificate's identity, say). `accept` runs on the connection's
/// own task, within the header read timeout; an error closes that
/// connection only.
pub async fn serve_with<A, F, I>(
    listener: TcpListener,
    router: axum::Router,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
    accept: A,
) -> io::Result<()>
where
    A: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<(I, http::Extensions)>> + Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accept = Arc::new(accept);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let (closed_tx, mut closed_rx) = watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let options = Arc::new(options);
    let mut shutdown = pin!(shutdown);
    let mut full_logged = false;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        if slots.available_permits() == 0 && !full_logged {
            warn!(
                max_connections = options.max_connections,
                "connection limit reached; new connections wait until others close"
            );
            full_logged = true;
        } else if slots.available_permits() > options.max_connections / 10 {
            full_logged = false;
        }
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // accepted: not fatal to the server. Wait a little, so
                    // an exhausted descriptor table does not spin the loop.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let accept = Arc::clone(&accept);
        let router = router.clone();
        let options = Arc::clone(&options);
        let stop = stop_rx.clone();
        let open = Arc::clone(&open);
        let closed_tx = Arc::clone(&closed_tx);
        open.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(options.header_read_timeout, accept(tcp));
            match handshake.await {
                Ok(Ok((io, extensions))) => {
                    serve_connection_with(io, router, extensions, &options, stop).await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "connection refused at accept"),
                Err(_) => debug!(%peer, "connection closed: accept took too long"),
            }
            drop(permit);
            let left = open.fetch_sub(1, Ordering::AcqRel) - 1;
            closed_tx.send_replace(left);
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    if open.load(Ordering::Acquire) > 0 {
        let _ = closed_rx
            .wait_for(|_| open.load(Ordering::Acquire) == 0)
            .await;
    }
    Ok(())
}

/// Serves one connection until it closes, idles out, or `stop` turns true
/// (then gracefully: calls in flight finish).
pub async fn serve_connection<I>(
    io: I,
    router: axum::Router,
    options: &ConnectionOptions,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_with(io, router, http::Extensions::new(), options, stop).await
}

/// [`serve_connection`], adding `extensions` to every request.
pub async fn serve_connection_with<I>(
    io: I,
    router: axum::Router,
    extensions: http::Extensions,
    options: &ConnectionOptions,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(options.http2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(options.http2_max_local_error_reset_streams)
        .keep_alive_interval(options.http2_keepalive_interval)
        .keep_alive_timeout(options.http2_keepalive_timeout);
    let activity = Arc::new(Activity::default());
    let service = hyper_util::service::TowerToHyperService::new(Tracked {
        inner: router,
        activity: Arc::clone(&activity),
        extensions: Arc::new(extensions),
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let tick =
        (options.idle_timeout.min(options.header_read_timeout) / 4).max(Duration::from_millis(100));
    let mut last_busy = tokio::time::Instant::now();
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep(tick) => {
                let now = tokio::time::Instant::now();
                if activity.in_flight.load(Ordering::Acquire) > 0 {
                    last_busy = now;
                    continue;
                }
                let limit = if activity.requests.load(Ordering::Acquire) == 0 {
                    options.header_read_timeout
                } else {
                    options.idle_timeout
                };
                if now.duration_since(last_busy) >= limit {
                    if closing {
                        // Already asked to close and still idle: drop it.
                        return;
                    }
                    debug!("closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    last_busy = now;
                }
            }
        }
    }
}

/// What the idle check needs to know about a connection's requests.
#[derive(Default)]
struct Activity {
    /// Requests started on the connection.
    requests: AtomicUsize,
    /// Requests whose response has not been produced yet.
    in_flight: AtomicUsize,
}

/// The router, counting requests in flight, and closing HTTP/1.1
/// connections whose request body was not read to the end (the rest of it
/// would have to be read, or the connection dropped, before the next
/// request).
#[derive(Clone)]
struct Tracked {
    inner: axum::Router,
    activity: Arc<Activity>,
    /// Added to every request of the connection.
    extensions: Arc<http::Extensions>,
}

impl Service<http::Request<hyper::body::Incoming>> for Tracked {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let activity = Arc::clone(&self.activity);
        activity.requests.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let http1 = req.version() < http::Version::HTTP_2;
        let done = Arc::new(AtomicBool::new(false));
        let mut req = req.map(|body| {
            axum::body::Body::new(EndTracked {
                done: Arc::clone(&done),
                inner: body,
            })
        });
        if !self.extensions.is_empty() {
            req.extensions_mut().extend((*self.extensions).clone());
        }
        let mut router = self.inner.clone();
        Box::pin(async move {
            let guard = InFlight(activity);
            let mut resp = match router.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            drop(guard);
            if http1 && !done.load(Ordering::Acquire) {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        })
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that notes when it was read to the end.
struct EndTracked {
    done: Arc<AtomicBool>,
    inner: hyper::body::Incoming,
}

impl Body for EndTracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = res {
            self.done.store(true, Ordering::Release);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.done.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_other_files() {
        let f = |now| FileLimit {
            before: 256,
            now,
            hard: now,
        };
        assert_eq!(effective_max_connections(10_000, Some(f(1 << 20))), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(f(1024))), 768);
        assert_eq!(effective_max_connections(10_000, Some(f(100))), 16);
        assert_eq!(effective_max_connections(10_000, None), 10_000);
    }

    /// At the connection cap, a new connection waits until an idle one is
    /// closed by the header read timeout, then is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_holds_and_idle_connections_make_room() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        let options = ConnectionOptions {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..ConnectionOptions::default()
        };
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, options, async {
            let _ = rx.await;
        }));
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(60), third.read_to_string(&mut answer))
            .await
            .expect("answered in the end")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for mut s in idle {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
                .await
                .expect("closed in the end")
                .unwrap_or(0);
            assert_eq!(n, 0, "an idle connection got data");
        }
        let _ = stop.send(());
        server.await.expect("join").expect("serve");
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let l = raise_open_file_limit().expect("getrlimit");
        assert!(l.before <= l.now && l.now <= l.hard, "{l:?}");
        // Raising is allowed for any process up to the hard limit.
        assert_eq!(l.now, l.hard);
    }
}
