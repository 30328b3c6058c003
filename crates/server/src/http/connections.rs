//! Accepting connections and holding them to limits: at most `max_connections` open (an idle
//! one is closed to make room for a new client, and a new one is refused only when every
//! connection has a request in flight), headers read within `header_read_timeout_ms` (which
//! also closes a keep-alive connection idle that long), bodies within `body_read_timeout_ms`,
//! a declared `Content-Length` over the body limit refused before a byte of it is read, and a
//! drain that closes idle connections at once.
//!
//! axum's own `serve` has none of these: with no timer, hyper's header timeout never fires, so
//! slow or silent clients could hold sockets (and body buffers) until the process ran out of
//! file descriptors and every client, health checks included, timed out.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, header};
use axum::response::IntoResponse;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::App;
use super::error::ApiError;
use super::metrics::ConnectionLabels;

/// The limits, as the configuration gives them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests whose handler runs or whose response is still being written; a connection
    /// with none is idle (between requests, or still sending headers) and may be closed.
    busy: Arc<AtomicUsize>,
    /// Ends the connection's task (and so closes its socket) at once.
    abort: tokio::task::AbortHandle,
    /// Asks the connection to finish its request in flight and close.
    drain: Arc<tokio::sync::Notify>,
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Open {
    conns: Mutex<BTreeMap<u64, Conn>>,
    /// Signalled whenever a connection ends, so the drain can wait for the last.
    ended: tokio::sync::Notify,
}

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
        self.conns.lock().expect("the connection table is never poisoned")
    }

    /// Makes room for one more connection: true if there is room (after closing the oldest
    /// idle connection, when at the limit).
    fn make_room(&self, limit: usize) -> Result<bool, ()> {
        let mut conns = self.lock();
        if conns.len() < limit {
            return Ok(false);
        }
        let idle = conns.iter().find(|(_, c)| c.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id);
        match idle {
            Some(id) => {
                if let Some(c) = conns.remove(&id) {
                    c.abort.abort();
                }
                Ok(true)
            }
            None => Err(()),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains: idle connections close at
/// once, the others once their request in flight is answered, all within `drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    app: Arc<App>,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Open::default());
    let next_id = AtomicU64::new(0);
    let mut last_refusal_log: Option<Instant> = None;
    let mut refused_since_log = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before it was accepted):
                    // say so, and give the system a moment rather than spin on it.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
            },
        };
        match open.make_room(limits.max_connections) {
            Ok(evicted) => {
                if evicted {
                    app.metrics
                        .connections_closed
                        .get_or_create(&ConnectionLabels { reason: "idle_evicted" })
                        .inc();
                }
            }
            Err(()) => {
                drop(tcp);
                app.metrics.connections_closed.get_or_create(&ConnectionLabels { reason: "refused" }).inc();
                refused_since_log += 1;
                if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        %peer,
                        refused = refused_since_log,
                        max_connections = limits.max_connections,
                        "connection refused: every open connection has a request in flight"
                    );
                    last_refusal_log = Some(Instant::now());
                    refused_since_log = 0;
                }
                continue;
            }
        }
        // Responses are written in one go; Nagle's algorithm would hold their last segment
        // back until the client acknowledges the rest.
        let _ = tcp.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let drain_signal = Arc::new(tokio::sync::Notify::new());
        // Inserted under the lock the task's end takes, so a connection that ends at once
        // still leaves the table.
        let mut conns = open.lock();
        let task = tokio::spawn(connection(
            tcp,
            router.clone(),
            limits,
            busy.clone(),
            drain_signal.clone(),
            Ended { id, open: open.clone(), app: app.clone() },
        ));
        conns.insert(id, Conn { busy, abort: task.abort_handle(), drain: drain_signal });
        app.metrics.connections_open.set(conns.len() as i64);
        drop(conns);
    }
    drop(listener);

    // Drain: idle connections close now; busy ones after their response.
    let deadline = tokio::time::Instant::now() + drain;
    for conn in open.lock().values() {
        if conn.busy.load(Ordering::Acquire) == 0 {
            conn.abort.abort();
        } else {
            conn.drain.notify_one();
        }
    }
    loop {
        let ended = open.ended.notified();
        tokio::pin!(ended);
        // Registered before the table is read, so an end in between is not missed.
        ended.as_mut().enable();
        let left = open.lock().len();
        if left == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            tracing::warn!(
                connections = left,
                timeout_ms = drain.as_millis() as u64,
                "drain timed out; closing"
            );
            for conn in open.lock().values() {
                conn.abort.abort();
            }
            break;
        }
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Ended {
    id: u64,
    open: Arc<Open>,
    app: Arc<App>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let mut conns = self.open.lock();
        conns.remove(&self.id);
        self.app.metrics.connections_open.set(conns.len() as i64);
        drop(conns);
        self.open.ended.notify_waiters();
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    router: Router,
    limits: Limits,
    busy: Arc<AtomicUsize>,
    drain: Arc<tokio::sync::Notify>,
    ended: Ended,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (router, busy) = (router.clone(), Busy::enter(&busy));
        async move {
            if let Some(refusal) = refuse_early(&req, &limits) {
                return Ok::<_, std::convert::Infallible>(busy.guard(refusal.into_response()));
            }
            let req = req.map(|body| Body::new(Deadline::new(body, limits.body_read_timeout)));
            let response = router.oneshot(req).await.unwrap_or_else(|never| match never {});
            Ok(busy.guard(response))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.notified() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
    {
        ended
            .app
            .metrics
            .connections_closed
            .get_or_create(&ConnectionLabels { reason: "header_timeout" })
            .inc();
    }
}

/// What can be refused from the headers alone, before the body is read: a declared length
/// over the limit, or a body encoding the server does not decode.
fn refuse_early(req: &Request<Incoming>, limits: &Limits) -> Option<ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Some(ApiError::BodyTooLarge { limit: limits.max_body_bytes });
    }
    let encoding = req.headers().get(header::CONTENT_ENCODING)?;
    let identity = encoding.to_str().is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity"));
    (!identity)
        .then(|| ApiError::UnsupportedEncoding(String::from_utf8_lossy(encoding.as_bytes()).into_owned()))
}

/// Counts a request in flight on its connection until its response has been written.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count.clone())
    }

    /// The response, holding this request in flight until hyper has written (or dropped) it.
    fn guard(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| Body::new(Guarded { inner: body, _busy: self }))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body did not arrive within the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once `timeout` has passed since its headers
/// arrived. The timer is armed only when the body is not already all there.
struct Deadline {
    inner: Incoming,
    timeout: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration) -> Deadline {
        Deadline { inner, timeout, deadline: tokio::time::Instant::now() + timeout, sleep: None }
    }
}

impl HttpBody for Deadline {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout))))),
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

/// Whether `error` (a body rejection's source chain) is a body read timeout.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = e {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// The file descriptors this process may open: the soft limit raised to the hard one (as Go
/// and nginx do), so that the connection limit it leaves room for is as high as allowed.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// File descriptors kept back from connections: model files, logs, the watcher, sockets of
/// `--notify` and the like.
const RESERVED_FDS: u64 = 128;

/// `configured`, or when 0, as many connections as the file descriptor limit leaves room for.
pub fn connection_limit(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    match raise_fd_limit() {
        Some(fds) => fds.saturating_sub(RESERVED_FDS).clamp(16, 1 << 20) as usize,
        None => 1024,
    }
}
