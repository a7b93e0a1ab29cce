//! A plain HTTP/1.1 client for the agent's unix socket ([`request`], [`try_request`],
//! [`call_within`] for JSON answers) and the agent's readiness ([`wait_until_answering`]).
//! The block tests use it as `common::http`; `tests/file_domain.rs` includes this file alone.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits up to `limit` until the agent on `socket` answers a request (a 404 that touches no
/// domain); `log` tells why not. A connection alone proves nothing after a kill: a child of
/// the killed agent caught between fork and exec holds a copy of its listening socket until it
/// dies, and accepts meanwhile.
pub fn wait_until_answering(socket: &Path, limit: Duration, log: impl Fn() -> String) {
    let start = Instant::now();
    while try_request_within(socket, "GET", "/v1/elsewhere", b"", Duration::from_secs(5)).is_err() {
        assert!(
            start.elapsed() < limit,
            "the agent did not answer: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hand-written HTTP/1.1 request over the unix socket (`Connection: close`); the body is
/// written from another thread so that a server refusing it early is seen, not a blocked
/// write.
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    match try_request(socket, method, path, body) {
        Ok(answer) => answer,
        Err(e) => panic!("{method} {path}: {e:?}"),
    }
}

/// One request answered within `limit`: the status and the body (JSON when it parses, else a
/// string). A missing answer panics with the agent's log (`log`).
pub fn call_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    limit: Duration,
    log: impl Fn() -> String,
) -> (u16, Value) {
    let (status, text) = match try_request_within(socket, method, path, body, limit) {
        Ok(answer) => answer,
        Err(e) => panic!("{method} {path}: {e:?}\nthe agent's log:\n{}", log()),
    };
    let v = serde_json::from_slice(&text)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into()));
    (status, v)
}

/// Why [`try_request`] got no answer.
#[derive(Debug)]
pub enum Unanswered {
    /// Nobody accepted the connection: the request was not sent.
    NotSent(std::io::Error),
    /// Sent, then the connection ended without a whole answer: its outcome is unknown.
    Lost(String),
}

/// How long a client waits for an answer: a bound against a hung agent, not a performance
/// assertion (a loaded test VM runs lvm commands many times slower than an idle one).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(600);

/// [`request`] that reports a missing answer instead of panicking.
pub fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), Unanswered> {
    try_request_within(socket, method, path, body, ANSWER_WITHIN)
}

/// [`try_request`] waiting up to `limit` for the answer.
pub fn try_request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    limit: Duration,
) -> Result<(u16, Vec<u8>), Unanswered> {
    let mut s = UnixStream::connect(socket).map_err(Unanswered::NotSent)?;
    s.set_read_timeout(Some(limit))
        .map_err(Unanswered::NotSent)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut w = s.try_clone().map_err(Unanswered::NotSent)?;
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w
            .write_all(head.as_bytes())
            .and_then(|()| w.write_all(&body));
    });
    let mut raw = Vec::new();
    let started = Instant::now();
    let read = s.read_to_end(&mut raw);
    let _ = writer.join();
    // A server that answers before reading the whole body (413) and closes the connection
    // makes the kernel reset it; the answer read before the reset is whole all the same.
    if let Err(e) = &read {
        if e.kind() != std::io::ErrorKind::ConnectionReset || !complete(&raw) {
            return Err(Unanswered::Lost(format!(
                "{e} after {:?} and {} bytes",
                started.elapsed(),
                raw.len()
            )));
        }
    }
    if head_end(&raw).is_none() {
        return Err(Unanswered::Lost(format!(
            "the connection ended after {:?} with {} bytes, no HTTP head",
            started.elapsed(),
            raw.len()
        )));
    }
    std::panic::catch_unwind(|| parse_response(&raw))
        .map_err(|_| Unanswered::Lost(String::from_utf8_lossy(&raw).into_owned()))
}

/// Whether `raw` holds a whole response: its head and as many body bytes as its
/// Content-Length says.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = head_end(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| raw.len() - (split + 4) >= n)
}

/// Where a response's head ends (the index of its blank line's `\r\n\r\n`).
fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n")
}

pub fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let split = head_end(raw)
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (status, body)
}
