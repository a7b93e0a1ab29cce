//! The agent's listeners against clients that are slow, many or malformed, over the raw
//! socket: half-open connections are bounded (64 by default) and dropped after the header
//! timeout (10 s) while a probe is still answered within 1 s; past the bound of busy
//! connections a connection is answered 503 `too_many_connections` at once, and the agent
//! logs it; a body that never completes gets 408, an announced body over the limit 413 at
//! once, unreadable requests 400, 414 and 431: every one with the API's JSON error body. The
//! metrics address keeps the same limits; SIGTERM still lets a request in flight finish. The
//! CLI, refused at the bound, probes once more and is answered.

use crate::file_kit::{bin, engine_env, segment, Fd, FdAgent};
use crate::http;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The bound of connections per listener when none is configured.
const DEFAULT_BOUND: usize = 64;
/// The header and body timeouts.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection has received so far.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Nothing, and it is open.
    Open,
    /// Closed by the agent without an answer.
    Closed,
    /// An answer (and maybe the end).
    Answer(Vec<u8>),
}

/// Reads what has arrived on `s` without waiting.
fn seen<S: Read>(s: &mut S, nonblocking: impl FnOnce(&mut S)) -> Seen {
    nonblocking(s);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock && raw.is_empty() => return Seen::Open,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // The agent closed with bytes of ours unread: what came before is whole.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading: {e}"),
        }
    }
    if raw.is_empty() {
        Seen::Closed
    } else {
        Seen::Answer(raw)
    }
}

fn seen_unix(s: &mut UnixStream) -> Seen {
    seen(s, |s| s.set_nonblocking(true).unwrap())
}

/// Reads `s` until the agent closes it or `limit` passes: the bytes and when it closed
/// (None: still open at `limit`).
fn until_closed<S: Read>(s: &mut S, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (raw, Some(Instant::now())),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (raw, Some(Instant::now())),
            Err(e) => panic!("reading: {e}"),
        }
    }
    (raw, None)
}

/// Waits until the connections the start-up probe made have ended (their slots are free).
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// A connection to the agent's socket that reads with a short timeout.
fn connect(agent: &FdAgent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// An answer's status and JSON error body; panics with `what` when the body is not the API's
/// `{kind, message}`.
fn json_error(raw: &[u8], what: &str) -> (u16, Value) {
    let (status, body) = http::parse_response(raw);
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{what}: {status} without a JSON body ({e}): {:?}",
            String::from_utf8_lossy(raw)
        )
    });
    assert!(
        v["kind"].is_string() && v["message"].is_string(),
        "{what}: {v}"
    );
    (status, v)
}

/// Sends `request` on a new connection and reads the answer until the agent closes
/// (at most `limit`): the status, the JSON error and how long it took.
fn answer_to(agent: &FdAgent, request: &[u8], limit: Duration) -> (u16, Value, Duration) {
    let mut s = connect(agent);
    let mut w = s.try_clone().unwrap();
    let what = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
    let request = request.to_vec();
    let start = Instant::now();
    // Written from another thread: an agent that answers before reading it all is seen.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    let (raw, closed) = until_closed(&mut s, limit);
    let took = start.elapsed();
    let _ = writer.join();
    assert!(
        closed.is_some() || !raw.is_empty(),
        "no answer within {limit:?}: {}",
        agent.log()
    );
    let (status, v) = json_error(&raw, &what);
    (status, v, took)
}

fn warned(agent: &FdAgent) -> bool {
    agent.log().lines().any(|l| {
        l.contains("WARN") && l.contains("connection bound reached") && l.contains("refused=")
    })
}

#[test]
fn half_open_connections_are_bounded_and_a_probe_is_answered_within_a_second() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    settle();
    let n = 200;
    let start = Instant::now();
    let mut conns: Vec<UnixStream> = (0..n)
        .map(|_| {
            let mut s = connect(&agent);
            s.write_all(b"GET /v1/agent HTTP/1.1\r\nHost: agent\r\n")
                .unwrap();
            s
        })
        .collect();
    let opened = start.elapsed();
    // Refusals are final; a connection still open may not be accepted yet.
    let mut seen: Vec<Seen> = conns.iter().map(|_| Seen::Open).collect();
    let open = loop {
        std::thread::sleep(Duration::from_millis(100));
        for (s, c) in seen.iter_mut().zip(conns.iter_mut()) {
            if *s == Seen::Open {
                *s = seen_unix(c);
            }
        }
        let open = seen.iter().filter(|s| **s == Seen::Open).count();
        if open <= DEFAULT_BOUND || start.elapsed() > Duration::from_secs(5) {
            break open;
        }
    };
    let refused: Vec<&Vec<u8>> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Answer(raw) => Some(raw),
            _ => None,
        })
        .collect();
    // The bound holds: as many are served as it allows, the others are refused at once (or,
    // when opening them took longer than a connection may wait, closed to make room).
    assert_eq!(open, DEFAULT_BOUND, "opened in {opened:?}: {seen:?}");
    assert!(!refused.is_empty(), "none refused (opened in {opened:?})");
    for raw in &refused {
        let (status, v) = json_error(raw, "a connection past the bound");
        assert_eq!(
            (status, v["kind"].as_str()),
            (503, Some("too_many_connections")),
            "{v}"
        );
    }
    assert!(warned(&agent), "no warning: {}", agent.log());

    // A probe (the CLI's) is answered within a second: it takes the place of a connection
    // that has waited too long for its request.
    std::thread::sleep(Duration::from_millis(1200));
    let asked = Instant::now();
    let (status, body) = http::try_request_within(
        &agent.socket,
        "GET",
        "/v1/agent",
        b"",
        Duration::from_secs(1),
    )
    .unwrap_or_else(|e| panic!("the probe: {e:?}: {}", agent.log()));
    let took = asked.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(took < Duration::from_secs(1), "the probe took {took:?}");

    // The half-open ones end with the header timeout, unanswered.
    let mut held: Vec<UnixStream> = conns
        .into_iter()
        .zip(&seen)
        .filter(|(_, s)| **s == Seen::Open)
        .map(|(s, _)| s)
        .collect();
    let limit = TIMEOUT + Duration::from_secs(5);
    for s in &mut held {
        s.set_nonblocking(false).unwrap();
        let left = limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        let (raw, closed) = until_closed(s, left);
        assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
        assert!(
            closed.is_some(),
            "a half-open connection open after {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn the_cli_goes_to_the_agent_while_fresh_half_open_connections_fill_the_bound() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    settle();
    let _half_open: Vec<UnixStream> = (0..DEFAULT_BOUND)
        .map(|_| {
            let mut s = connect(&agent);
            s.write_all(b"GET /v1/agent HTTP/1.1\r\nHost: agent\r\n")
                .unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    let mut c = std::process::Command::new(bin());
    c.args(["-v", "--agent-socket", agent.socket.to_str().unwrap()])
        .args(["volume", "list", &d.path]);
    for v in engine_env() {
        c.env_remove(v);
    }
    let started = opened.elapsed();
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // Refused at first (503: the half-open ones are fresh), it probed again and sent the
    // command to the agent.
    if started < Duration::from_millis(500) {
        assert!(stderr.contains("connection bound"), "{stderr}");
    }
    assert!(stderr.contains("request to the agent"), "{stderr}");
    assert!(!stderr.contains("running in this process"), "{stderr}");
}

#[test]
fn a_slowloris_head_is_dropped_at_the_header_timeout() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let mut s = connect(&agent);
    let start = Instant::now();
    s.write_all(b"GET /v1/agent HTTP/1.1\r\nHost: agent\r\n")
        .unwrap();
    // One more header line every second: the head never ends.
    let closed_at = loop {
        match seen_unix(&mut s) {
            Seen::Open => {}
            Seen::Closed => break start.elapsed(),
            Seen::Answer(raw) => panic!("answered: {:?}", String::from_utf8_lossy(&raw)),
        }
        assert!(
            start.elapsed() < TIMEOUT * 2,
            "still open after {:?}",
            start.elapsed()
        );
        s.set_nonblocking(false).unwrap();
        if s.write_all(b"X-Slow: 1\r\n").is_err() {
            break start.elapsed();
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        closed_at >= TIMEOUT - Duration::from_millis(500),
        "closed after {closed_at:?}, before the timeout"
    );
}

#[test]
fn past_the_bound_of_busy_connections_a_probe_gets_503_at_once_and_it_is_logged() {
    let d = Fd::new();
    let agent = FdAgent::start_with(&d.path, "0", &["--max-connections", "2"]);
    settle();
    let gc = format!("/v1/domains/{}/gc", segment(&d.path));
    // Two requests whose bodies are on their way: both connections are busy.
    let busy: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut s = connect(&agent);
            write!(
                s,
                "POST {gc} HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n\r\n{{"
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, v, took) = answer_to(
        &agent,
        b"GET /v1/agent HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(
        (status, v["kind"].as_str()),
        (503, Some("too_many_connections")),
        "{v}"
    );
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(warned(&agent), "no warning: {}", agent.log());
    drop(busy);
}

#[test]
fn a_body_that_never_completes_gets_408_json() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let gc = format!("/v1/domains/{}/gc", segment(&d.path));
    let (status, v, took) = answer_to(
        &agent,
        format!("POST {gc} HTTP/1.1\r\nHost: agent\r\nContent-Length: 20\r\n\r\n{{").as_bytes(),
        TIMEOUT * 2,
    );
    assert_eq!(
        (status, v["kind"].as_str()),
        (408, Some("request_timeout")),
        "{v}"
    );
    assert!(
        took >= TIMEOUT - Duration::from_millis(500),
        "answered after {took:?}, before the timeout"
    );
}

#[test]
fn a_huge_announced_body_gets_413_json_at_once() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let gc = format!("/v1/domains/{}/gc", segment(&d.path));
    let (status, v, took) = answer_to(
        &agent,
        format!("POST {gc} HTTP/1.1\r\nHost: agent\r\nContent-Length: 99999999999\r\n\r\n{{")
            .as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(
        (status, v["kind"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
}

#[test]
fn requests_the_agent_cannot_read_get_json_errors() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: agent\r\n\r\n",
        "a".repeat(70_000)
    );
    let huge_header = format!(
        "GET /v1/agent HTTP/1.1\r\nHost: agent\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GARBAGE\r\n\r\n", 400, "malformed_request"),
        (
            b"GET /v1/agent HTTP/1.1\r\nHost agent\r\n\r\n",
            400,
            "malformed_request",
        ),
        (long_target.as_bytes(), 414, "uri_too_long"),
        (huge_header.as_bytes(), 431, "headers_too_large"),
    ];
    for (request, want_status, want_kind) in cases {
        let (status, v, _) = answer_to(&agent, request, Duration::from_secs(5));
        assert_eq!(
            (status, v["kind"].as_str()),
            (want_status, Some(want_kind)),
            "{v}"
        );
    }
    // After a good answer on a kept-alive connection too.
    let mut s = connect(&agent);
    s.write_all(b"GET /v1/agent HTTP/1.1\r\nHost: agent\r\n\r\nBAD REQUEST\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (raw, closed) = until_closed(&mut s, Duration::from_secs(5));
    assert!(closed.is_some(), "{}", String::from_utf8_lossy(&raw));
    let text = String::from_utf8_lossy(&raw);
    let second = text
        .rfind("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("{text}"));
    let (status, v) = json_error(&raw[second..], "after a good answer");
    assert_eq!(
        (status, v["kind"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );
}

#[test]
fn the_metrics_address_has_the_same_limits() {
    let d = Fd::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = FdAgent::start_with(
        &d.path,
        "0",
        &["--max-connections", "2", "--metrics-address", &addr],
    );
    let tcp = || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    };
    let mut bad = tcp();
    bad.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let (raw, _) = until_closed(&mut bad, Duration::from_secs(5));
    let (status, v) = json_error(&raw, "metrics address: garbage");
    assert_eq!(
        (status, v["kind"].as_str()),
        (400, Some("malformed_request")),
        "{v}"
    );

    settle();
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = tcp();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let seen: Vec<Seen> = held
        .iter_mut()
        .map(|s| seen(s, |s| s.set_nonblocking(true).unwrap()))
        .collect();
    assert_eq!(seen[..2], [Seen::Open, Seen::Open], "{seen:?}");
    let Seen::Answer(raw) = &seen[2] else {
        panic!("the third connection: {seen:?}");
    };
    let (status, v) = json_error(raw, "metrics address: past the bound");
    assert_eq!(
        (status, v["kind"].as_str()),
        (503, Some("too_many_connections")),
        "{v}"
    );
    assert!(
        agent.log().contains("listener=\"metrics\""),
        "{}",
        agent.log()
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections() {
    let d = Fd::new();
    let mut agent = FdAgent::start(&d.path, "0");
    let gc = format!("/v1/domains/{}/gc", segment(&d.path));
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    write!(
        s,
        "POST {gc} HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent did not wait for its request: {}",
        agent.log()
    );
    assert!(
        UnixStream::connect(&agent.socket).is_err(),
        "a new connection is accepted after SIGTERM"
    );
    s.write_all(b"{}").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (raw, _) = until_closed(&mut s, Duration::from_secs(10));
    let (status, body) = http::parse_response(&raw);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let start = Instant::now();
    while agent.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        agent.child.try_wait().unwrap().and_then(|s| s.code()),
        Some(0)
    );
    assert!(!agent.socket.exists(), "the socket is left behind");
}
