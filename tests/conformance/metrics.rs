//! The agent's `/metrics` checked by `promtool check metrics` (Prometheus' own linter), after
//! requests, a creation and a gc gave every counter family samples; and the content type
//! each format is served with; one name space for every family, labels and help texts that
//! fit file domains too.

use crate::file_kit::{Fd, FdAgent};
use crate::http;
use std::io::Write;
use std::process::{Command, Stdio};

impl FdAgent {
    /// `/metrics` with an `Accept` header: the status, the content type and the body.
    fn scrape(&self, accept: Option<&str>) -> (u16, String, String) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: agent\r\n{accept}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
        let (status, body) = http::parse_response(&raw);
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        let kind = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("content-type: ").map(str::to_string))
            .unwrap_or_default();
        (status, kind, String::from_utf8(body).unwrap())
    }
}

fn promtool(body: &str) -> (bool, String) {
    let mut c = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("promtool (scripts/vm-setup installs it): {e}"),
    };
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), said)
}

#[test]
fn metrics_pass_promtool_and_say_their_format() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    // Samples in the request, command, gc and scan families.
    let img = uuid::Uuid::new_v4().to_string();
    d.ok(&["volume", "create", &d.path, "--image", &img, "--size", "1M"]);
    for (method, route) in [("GET", "/v1/domains"), ("GET", "/v1/agent")] {
        let (st, _) = agent.call(method, route, "");
        assert_eq!(st, 200, "{method} {route}");
    }
    let (st, _) = agent.call(
        "POST",
        &format!("/v1/domains/{}/gc", crate::file_kit::segment(&d.path)),
        "{}",
    );
    assert_eq!(st, 200, "gc: {}", agent.log());

    let (st, kind, text) = agent.scrape(None);
    assert_eq!(st, 200);
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains("_total"), "no counter sample: {text}");
    // One namespace; a file domain's lock waits labelled with the domain, not the lock file;
    // help texts that speak of VGs or LVs say what a file domain has instead.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() > 5, "{text}");
    for f in &families {
        assert!(
            f.starts_with("lvchain_") && !f.starts_with("lvchain_agent_"),
            "{f}"
        );
    }
    let waits = format!(
        "lvchain_lock_wait_seconds_count{{domain=\"{}\",part=\"local\",outcome=\"acquired\"}}",
        d.path
    );
    assert!(text.contains(&waits), "no {waits} in\n{text}");
    assert!(!text.contains("domain=\"domain\""), "{text}");
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        if help.contains("VG") || help.contains("LV") {
            assert!(help.contains("file"), "{help}");
        }
    }
    let (ok, said) = promtool(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );

    let (st, kind, om) = agent.scrape(Some(
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    ));
    assert_eq!(st, 200);
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}
