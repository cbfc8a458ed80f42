//! The public listener: our own accept loop serving the warp filter over
//! hyper's HTTP/1.1, with the limits warp's built-in server lacks (issue 8):
//! how long a request head may take, how long a keep-alive connection may
//! wait for its next request, and how many connections may be open at once.
//!
//! Each connection is one task: hyper's connection, raced against one timer
//! that re-arms itself from the connection's [`Activity`] and against the
//! stop signal. The request path only stores a phase and, twice per request,
//! a timestamp: no allocation, no lock, no timer reset.
//!
//! HTTP/1.1 only. warp's server also took HTTP/2 with prior knowledge (h2c),
//! which no client of ours speaks (Firefox uses HTTP/2 over TLS only, which
//! the CDN terminates), and which would bypass both timeouts.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::Request;
use warp::reply::{Reply, Response};

/// The public listener's limits (`ADDONREG_HTTP_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a request head may take, from its first byte (from
    /// connecting, for a connection's first request).
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: u32,
    /// Longest a request body may take to arrive, from the end of its head
    /// (applied by the routes that read one).
    pub body_read_timeout: Duration,
}

/// The listener's connection metrics (declared in `metrics`).
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// `http_connections_open`.
    pub open: IntGauge,
    /// `http_connections_refused_total`.
    pub refused: IntCounter,
}

/// Serves `filter` on `listener` until `shutdown` resolves; then stops
/// accepting, closes idle connections, lets the requests in hand finish
/// and returns when every connection has ended (as warp's graceful server
/// did).
pub async fn serve<F, R>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    // Each open connection holds a permit: the limit, and (all permits back)
    // the end of the drain.
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    // Cancelled once, after the last accept; each connection watches a child
    // of it (its own waiters list, so polling it is not a shared lock).
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Over the limit the connection is accepted and closed at once rather
        // than left in the kernel's backlog: the client learns now (a reset)
        // and can retry elsewhere instead of waiting on a connection nobody
        // will serve, the backlog never fills with them, and they can be
        // counted. It costs a descriptor for a moment, so the limit must sit
        // below the process's open-files limit with room for the database
        // pools and the broker.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // A reset, not a FIN: no TIME_WAIT left on our side per refusal.
            let _ = stream.set_zero_linger();
            metrics.refused.inc();
            continue;
        };
        // Answers are written whole; don't let Nagle hold the last segment
        // back waiting for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        metrics.open.inc();
        let open = Open {
            _permit: permit,
            gauge: metrics.open.clone(),
        };
        tokio::spawn(connection(
            stream,
            warp::service(filter.clone()),
            limits,
            stop.child_token(),
            open,
        ));
    }
    drop(listener);
    stop.cancel();
    // Every connection gives its permit back when it ends.
    let _ = permits.acquire_many(limits.max_connections).await;
}

/// Waits before the next accept after a failure that is not the client's:
/// most likely out of descriptors (EMFILE), where retrying at once would spin
/// (a second, as warp's server did: some connection has to end meanwhile).
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(type = "gateway.accept", error = %e, "cannot accept");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One open connection, counted until dropped.
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves one connection until it ends, is timed out, or is drained.
async fn connection<S>(
    stream: TcpStream,
    service: S,
    limits: Limits,
    stop: CancellationToken,
    _open: Open,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let service = Answer {
        service: RefCell::new(service),
        activity: activity.clone(),
    };
    let mut conn = pin!(
        http1::Builder::new()
            // Ours instead (see `Activity`): hyper's also runs while a
            // keep-alive connection waits for its next request
            // (hyperium/hyper#3828), which would make it the idle timeout too.
            .header_read_timeout(None)
            .serve_connection(io, service)
    );
    let mut stopping = pin!(stop.cancelled());
    let mut timer = pin!(tokio::time::sleep_until(
        activity.opened + limits.header_read_timeout
    ));
    // Set once hyper was asked to close after the request in hand.
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(type = "gateway.connection", error = %e, "connection failed");
                }
                return;
            }
            () = stopping.as_mut(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                match activity.deadline(&limits, now) {
                    Deadline::At(at) => timer.as_mut().reset(at),
                    // As hyper's own timeout does: drop the connection.
                    Deadline::HeadTooSlow => return,
                    // Closes at once unless an answer is still being
                    // written; a client that doesn't read its answer for
                    // another idle period is dropped.
                    Deadline::Idle if closing => return,
                    Deadline::Idle => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(now + limits.idle_timeout);
                    }
                }
            }
        }
    }
}

/// Waiting for the first byte of a request (since the last answer).
const IDLE: u8 = 0;
/// A request has begun arriving, its head is not complete yet.
const HEAD: u8 = 1;
/// A request is being answered.
const BUSY: u8 = 2;

/// What a connection is doing: written by its socket and its service on the
/// request path, read by its timer. All three run in the connection's task,
/// so relaxed atomics are enough (they are only there to make it `Sync`).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// `IDLE`, `HEAD` or `BUSY`; a new connection waits for its first
    /// request head, so it starts in `HEAD`.
    phase: AtomicU8,
    /// When the phase began, in ms since `opened` (not kept for `BUSY`).
    since_ms: AtomicU64,
}

/// What the timer found.
enum Deadline {
    /// Nothing due yet: look again then.
    At(Instant),
    /// The request head took longer than `header_read_timeout`.
    HeadTooSlow,
    /// No request for `idle_timeout`.
    Idle,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
        }
    }

    fn enter(&self, phase: u8) {
        if phase != BUSY {
            let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.since_ms.store(ms, Relaxed);
        }
        self.phase.store(phase, Relaxed);
    }

    fn deadline(&self, limits: &Limits, now: Instant) -> Deadline {
        let since = self.opened + Duration::from_millis(self.since_ms.load(Relaxed));
        let (limit, due) = match self.phase.load(Relaxed) {
            IDLE => (limits.idle_timeout, Deadline::Idle),
            HEAD => (limits.header_read_timeout, Deadline::HeadTooSlow),
            // A request in hand is bounded by the store's read timeouts, not
            // here; look again later.
            _ => return Deadline::At(now + limits.idle_timeout),
        };
        match since.checked_add(limit) {
            Some(at) if at > now => Deadline::At(at),
            _ => due,
        }
    }
}

/// The accepted socket, noting when a request begins to arrive.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before && this.activity.phase.load(Relaxed) == IDLE {
            this.activity.enter(HEAD);
        }
        read
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    // hyper writes head and body in one `writev` when this is true.
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// warp's service for one connection, marking the connection busy from a
/// request's head to its answer. One per connection, so it is called without
/// the clone per request that `TowerToHyperService` makes.
struct Answer<S> {
    service: RefCell<S>,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Answer<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answering<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.enter(BUSY);
        let mut service = self.service.borrow_mut();
        // warp's service is always ready; asked anyway, as tower requires.
        let _ = service.poll_ready(&mut Context::from_waker(Waker::noop()));
        Answering {
            answer: service.call(request),
            activity: self.activity.clone(),
        }
    }
}

pin_project! {
    /// An answer being computed; once it is, the connection is idle (the
    /// answer's bytes may still be on their way out).
    struct Answering<Fut> {
        #[pin]
        answer: Fut,
        activity: Arc<Activity>,
    }
}

impl<Fut: Future> Future for Answering<Fut> {
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = this.answer.poll(cx);
        if answer.is_ready() {
            this.activity.enter(IDLE);
        }
        answer
    }
}
