//! The agent's API against its own OpenAPI document (`api/openapi.json`), by schemathesis
//! (`st`, installed by scripts/vm-setup from pip) with every check on: no 5xx, no answer
//! outside the schema, no schema-valid request refused, no undocumented status. Two passes,
//! each bounded in time: any domain name the schema allows (the unsupported-method check
//! included), then the served file domain itself, where the schema's links create the
//! volumes and images the other operations act on (domain removal left out: it would end
//! the pass). Schemathesis speaks TCP; a bridge thread carries each connection to the
//! agent's unix socket.

use crate::file_kit::{Fd, FdAgent};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

/// Carries every connection to `127.0.0.1:<port>` to `socket`; the port.
fn bridge(socket: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&socket) else {
                continue;
            };
            let (mut t1, mut u1) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            let (mut t2, mut u2) = (tcp, unix);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut t1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut t2);
                let _ = t2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// One `st run` from `dir`, with `config` (a file there) and the extra run options `args`.
fn st(dir: &Path, port: u16, domain: &str, config: Option<&str>, args: &[&str]) {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.json");
    let o = match Command::new("st")
        .current_dir(dir)
        .env("LVCHAIN_ST_DOMAIN", domain)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_COLOR", "1")
        .args(config.iter().flat_map(|c| ["--config-file", c]))
        .args(["run", schema, "--url", &format!("http://127.0.0.1:{port}")])
        .args(args)
        .args([
            "--checks",
            "all",
            "--max-time",
            "60",
            "-n",
            "40",
            "--max-failures",
            "20",
        ])
        .arg("--no-color")
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("schemathesis `st` (scripts/vm-setup installs it with pip): {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "st {args:?}:\n{said}");
    assert!(said.contains(" passed"), "{said}");
}

#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let port = bridge(&agent.socket);
    let dir = tempfile::tempdir().unwrap();
    let here = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/schemathesis"
    );
    for f in ["hooks.py", "served.toml"] {
        std::fs::copy(Path::new(here).join(f), dir.path().join(f)).unwrap();
    }
    // Any name: nothing is served under the names schemathesis makes up.
    st(dir.path(), port, &d.path, None, &[]);
    st(
        dir.path(),
        port,
        &d.path,
        Some("served.toml"),
        &[
            // Sent with the domain's path unencoded: a path of no route.
            "--exclude-checks",
            "unsupported_method",
            "--exclude-operation-id",
            "removeDomain",
        ],
    );
    // Still a domain, and a consistent one, after everything schemathesis did to it.
    let images = std::fs::read_dir(Path::new(&d.path).join("images"))
        .unwrap()
        .count();
    assert!(images > 0, "the links created no volume");
    // Illegal volumes are what `update` with legality illegal and failed copies leave; any
    // other problem (an orphan, a stray file, a broken chain) is a defect.
    let o = d.run(&["--json", "domain", "check", &d.path]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for p in report["problems"].as_array().unwrap() {
        assert_eq!(p["kind"], "illegal", "{report:#}");
    }
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}
