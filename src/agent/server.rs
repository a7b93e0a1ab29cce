//! The agent's HTTP/1.1 server: the accept loops of the unix socket and of the metrics TCP
//! address, each connection served by hyper with the router as its service, and the limits
//! that keep one peer from exhausting them:
//!
//! - a request's head must arrive within [`HEADER_TIMEOUT`] of the moment the agent waits for
//!   it (at connect, and after each answer on a kept-alive connection), else the connection is
//!   closed; its body within `BODY_TIMEOUT` (408, `api.rs`, which also answers an announced
//!   body over the limit with 413 before reading it);
//! - at most `max_connections` per listener. A connection past the bound takes the slot of the
//!   one that has waited longest for a request head, when one has waited more than
//!   [`WAITING_GRACE`] (a client sends its head at once: a connection waiting longer is idle or
//!   half-sent, and is closed); else it is answered 503 `too_many_connections` at once and
//!   closed. Both are logged as one warning at most every [`LOG_EVERY`], with their counts;
//! - the answers hyper writes itself for a request it cannot read (400, 414, 431, empty) carry
//!   the API's JSON error body (`malformed_request`, `uri_too_long`, `headers_too_large`).
//!
//! Graceful shutdown: when `stop` resolves the listener stops accepting, every connection
//! finishes the request it is serving (an idle one closes), and [`serve`] returns once all
//! have ended. Owns no routes (`api.rs`) and no access rule: the peer's credentials, read here
//! when a unix connection is accepted (`peer.rs`), go with each of its requests to the
//! router's check.

use super::config::{BODY_LIMIT, HEADER_TIMEOUT};
use super::errors::ApiError;
use super::peer::Peer;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

/// How long a connection may wait for its request head before a new connection past the
/// bound may take its slot.
pub const WAITING_GRACE: Duration = Duration::from_secs(1);
/// At most one warning about the connection bound per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read; larger: 431.
pub const HEAD_LIMIT: usize = 128 << 10;
/// The most headers a request may have; more: 431.
pub const MAX_HEADERS: usize = 100;
/// How many refused connections are answered at once; past it they are closed unanswered.
const REFUSING_AT_ONCE: usize = 64;
/// How long a refused connection is given to take its answer and go.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A listener the server accepts connections on.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, with its peer's credentials where the transport tells them.
    fn next(&self) -> impl Future<Output = io::Result<(Self::Io, Option<Peer>)>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next(&self) -> io::Result<(Self::Io, Option<Peer>)> {
        let (s, _) = self.accept().await?;
        let peer = Peer::of(&s);
        Ok((s, Some(peer)))
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next(&self) -> io::Result<(Self::Io, Option<Peer>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

/// Serves `router` on `listener` (named `name` in logs) until `stop` resolves and every
/// connection has ended (see the module doc).
pub async fn serve<L: Listener>(
    listener: L,
    name: &'static str,
    router: Router,
    max_connections: usize,
    stop: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Slots::new(max_connections, WAITING_GRACE));
    let refusals = Arc::new(Refusals::new(name, max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(HEAD_LIMIT)
        .max_headers(MAX_HEADERS)
        // One buffer per write: the head hyper writes for an unreadable request is found whole.
        .writev(false);
    let mut stop = pin!(stop);
    loop {
        let accepted = tokio::select! {
            r = listener.next() => r,
            () = &mut stop => break,
        };
        let (io, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                accept_failed(name, e).await;
                continue;
            }
        };
        let (slot, closed) = match slots.admit() {
            Admission::Admitted(slot) => (slot, false),
            Admission::InPlaceOf(slot) => (slot, true),
            Admission::Refused => {
                refusals.refuse(io);
                continue;
            }
        };
        if closed {
            refusals.note(0, 1);
        }
        let state = slot.state.clone();
        let router = router.clone();
        let service =
            tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                let busy = Busy::start(&state);
                if let Some(p) = peer {
                    req.extensions_mut().insert(ConnectInfo(p));
                }
                let answer = router.clone().oneshot(req);
                async move {
                    let r = answer.await;
                    drop(busy);
                    r
                }
            });
        let conn = builder.serve_connection(
            TokioIo::new(ErrorBodies::new(io)),
            TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(listener = name, "connection ended: {e}");
                    }
                }
                () = slot.state.closing.notified() => {
                    tracing::debug!(listener = name, "closed a connection waiting for its request");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept that failed: a connection's own error is skipped; others (out of descriptors)
/// are logged and the loop pauses a second, as hyper's server did.
async fn accept_failed(name: &str, e: io::Error) {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return;
    }
    tracing::error!(listener = name, "accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One connection's state as the bound sees it.
struct ConnState {
    /// The slots' epoch.
    epoch: Instant,
    /// Requests being served now (0 or 1: HTTP/1.1 serves them one after the other).
    busy: AtomicUsize,
    /// Since when it waits for a request head (ms since the slots' epoch).
    waiting_since: AtomicU64,
    /// Told when another connection takes its slot.
    closing: tokio::sync::Notify,
}

impl ConnState {
    fn now(&self) -> u64 {
        millis_since(self.epoch)
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The connections of one listener.
struct Slots {
    max: usize,
    /// How long a connection may wait for a request head before another may take its slot.
    grace: Duration,
    epoch: Instant,
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

/// A connection's place among them, freed when dropped.
struct Slot {
    id: u64,
    state: Arc<ConnState>,
    slots: Arc<Slots>,
}

enum Admission {
    Admitted(Slot),
    /// Admitted in place of a connection that waited too long for its request head.
    InPlaceOf(Slot),
    Refused,
}

impl Slots {
    fn new(max: usize, grace: Duration) -> Slots {
        Slots {
            max,
            grace,
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            conns: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>) -> Admission {
        let now = millis_since(self.epoch);
        let grace = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        let mut conns = self.lock();
        let mut evicted = false;
        if conns.len() >= self.max {
            let stale = conns
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, c)| (*id, c.waiting_since.load(Ordering::SeqCst)))
                .filter(|(_, since)| now.saturating_sub(*since) > grace)
                .min_by_key(|(_, since)| *since);
            let Some((id, _)) = stale else {
                return Admission::Refused;
            };
            if let Some(c) = conns.remove(&id) {
                c.closing.notify_one();
            }
            evicted = true;
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            busy: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(now),
            closing: tokio::sync::Notify::new(),
        });
        conns.insert(id, state.clone());
        let slot = Slot {
            id,
            state,
            slots: self.clone(),
        };
        if evicted {
            Admission::InPlaceOf(slot)
        } else {
            Admission::Admitted(slot)
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

/// A request being served on a connection: from its head until its answer is made.
struct Busy(Arc<ConnState>);

impl Busy {
    fn start(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::SeqCst);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // From now on it waits for its next request head.
        self.0.waiting_since.store(self.0.now(), Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connections refused past the bound: answered 503 and logged (rate-limited).
struct Refusals {
    listener: &'static str,
    max: usize,
    answering: Arc<tokio::sync::Semaphore>,
    log: Mutex<Tally>,
}

/// What happened at the bound since the last warning.
#[derive(Default)]
struct Tally {
    last: Option<Instant>,
    refused: u64,
    closed: u64,
}

impl Refusals {
    fn new(listener: &'static str, max: usize) -> Refusals {
        Refusals {
            listener,
            max,
            answering: Arc::new(tokio::sync::Semaphore::new(REFUSING_AT_ONCE)),
            log: Mutex::default(),
        }
    }

    /// Counts `refused` and `closed` connections; warns when the last warning is old enough.
    fn note(&self, refused: u64, closed: u64) {
        let mut t = self.log.lock().unwrap_or_else(|p| p.into_inner());
        t.refused += refused;
        t.closed += closed;
        if t.last.is_some_and(|l| l.elapsed() < LOG_EVERY) {
            return;
        }
        let since = t.last.map_or(String::new(), |l| {
            format!(" in the last {}s", l.elapsed().as_secs())
        });
        tracing::warn!(
            listener = self.listener,
            limit = self.max,
            refused = t.refused,
            closed_waiting = t.closed,
            "connection bound reached{since}: {} connection(s) refused with 503 \
             too_many_connections, {} closed that waited over {}s for a request",
            t.refused,
            t.closed,
            WAITING_GRACE.as_secs()
        );
        *t = Tally {
            last: Some(Instant::now()),
            refused: 0,
            closed: 0,
        };
    }

    /// Answers `io` 503 and closes it, unless too many are being answered already.
    fn refuse<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, io: I) {
        self.note(1, 0);
        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
            return;
        };
        let answer = json_answer(
            &ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the agent serves at most {} connections at once on this listener; \
                     try again",
                    self.max
                ),
            ),
            None,
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, answer_and_close(io, &answer)).await;
            drop(permit);
        });
    }
}

/// Writes `answer`, ends the writing side, and reads what the client still sends until it
/// closes (so its request is not left unread: a close then would reset the connection).
async fn answer_and_close<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, answer: &[u8]) {
    if io.write_all(answer).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = BODY_LIMIT;
    while left > 0 {
        match io.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// A whole HTTP/1.1 answer carrying `e` as the API's JSON error; `date` is a `date` header
/// line to keep (with its CRLF).
fn json_answer(e: &ApiError, date: Option<&[u8]>) -> Vec<u8> {
    let body = serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    if let Some(d) = date {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// The API error for the status of an answer hyper writes itself.
fn hyper_error(status: u16) -> Option<ApiError> {
    let (status, kind, message) = match status {
        400 => (
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "the request is not HTTP/1.1 the agent can read (its request line or a header \
             is malformed)"
                .to_string(),
        ),
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request's target is longer than 65534 bytes".to_string(),
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request's head is larger than {HEAD_LIMIT} bytes or has more than \
                 {MAX_HEADERS} headers"
            ),
        ),
        _ => return None,
    };
    Some(ApiError::new(status, kind, message))
}

/// Where the head hyper writes for a request it cannot read starts in `buf`, its status and
/// its `date` line: it ends `buf` (hyper closes the connection after it), has status 400, 414
/// or 431 and no header but `connection: close`, `content-length: 0` and `date`. The API's own answers always
/// carry a body (JSON, which holds no raw CRLF; the metrics' text neither).
fn bare_error_head(buf: &[u8]) -> Option<(usize, u16, Option<Vec<u8>>)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    // The head is short: look for its status line among the last bytes only.
    let from = buf.len().saturating_sub(512);
    let at = from + find_last(&buf[from..], b"HTTP/1.1 ")?;
    let head = std::str::from_utf8(&buf[at..buf.len() - 2]).ok()?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    hyper_error(status)?;
    let mut date = None;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => {}
            "connection" if value.trim().eq_ignore_ascii_case("close") => {}
            "date" => date = Some(format!("{l}\r\n").into_bytes()),
            _ => return None,
        }
    }
    Some((at, status, date))
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// A connection's I/O that replaces the bodiless answer hyper writes for a request it cannot
/// read with the same status and the API's JSON error body ([`bare_error_head`]).
struct ErrorBodies<I> {
    io: I,
    /// The answer being written instead of hyper's, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<I> ErrorBodies<I> {
    fn new(io: I) -> Self {
        ErrorBodies {
            io,
            replacing: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ErrorBodies<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            let Some((at, status, date)) = bare_error_head(buf) else {
                return Pin::new(&mut this.io).poll_write(cx, buf);
            };
            if at > 0 {
                // What comes before it first (earlier answers), alone.
                return Pin::new(&mut this.io).poll_write(cx, &buf[..at]);
            }
            let Some(e) = hyper_error(status) else {
                return Pin::new(&mut this.io).poll_write(cx, buf);
            };
            tracing::debug!(status, kind = e.kind, "a request the agent cannot read");
            this.replacing = Some((json_answer(&e, date.as_deref()), 0));
        }
        if let Some((answer, done)) = &mut this.replacing {
            while *done < answer.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*done..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *done += n;
            }
        }
        this.replacing = None;
        // hyper's head counts as written: the answer that replaces it is.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_bare_error_heads_are_found_at_the_end_only() {
        // As hyper 1.12 writes it.
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\
                     date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n";
        let (at, status, date) = bare_error_head(bare).expect("found");
        assert_eq!((at, status), (0, 400));
        assert_eq!(
            date.as_deref(),
            Some(&b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"[..])
        );
        let mut after = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let start = after.len();
        after.extend_from_slice(bare);
        assert_eq!(bare_error_head(&after).map(|f| f.0), Some(start));
        // The API's own errors have a body; other statuses are not hyper's.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(bare_error_head(ours).is_none());
        let other = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(bare_error_head(other).is_none());
        let extra = b"HTTP/1.1 431 Request Header Fields Too Large\r\nx-other: 1\r\n\r\n";
        assert!(bare_error_head(extra).is_none());
    }

    #[test]
    fn a_replaced_answer_is_the_json_error_with_its_length() {
        let e = hyper_error(431).expect("431");
        let a = String::from_utf8(json_answer(&e, None)).expect("utf-8");
        let (head, body) = a.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["kind"], "headers_too_large");
    }

    #[test]
    fn past_the_bound_a_stale_waiting_connection_gives_way_else_refused() {
        let mut slots = Slots::new(2, Duration::from_secs(1));
        slots.epoch = Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or(slots.epoch);
        let slots = Arc::new(slots);
        let admitted = |a: Admission| match a {
            Admission::Admitted(s) => s,
            _ => panic!("not admitted"),
        };
        let a = admitted(slots.admit());
        let b = admitted(slots.admit());
        // Both have just connected.
        assert!(matches!(slots.admit(), Admission::Refused));
        // `a` has waited long for its request, `b` is serving one: `a` gives way.
        a.state.waiting_since.store(0, Ordering::SeqCst);
        let busy = Busy::start(&b.state);
        b.state.waiting_since.store(0, Ordering::SeqCst);
        let c = match slots.admit() {
            Admission::InPlaceOf(s) => s,
            _ => panic!("not in place of a"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let told = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), a.state.closing.notified()).await
        });
        assert!(told.is_ok(), "a was not told to close");
        assert!(matches!(slots.admit(), Admission::Refused));
        drop(a);
        assert_eq!(slots.lock().len(), 2);
        // An answered request leaves its connection waiting from then on.
        drop(busy);
        assert!(b.state.waiting_since.load(Ordering::SeqCst) >= 10_000);
        assert!(matches!(slots.admit(), Admission::Refused));
        drop(c);
        assert_eq!(slots.lock().len(), 1);
    }
}
