//! One validation of every volume size, whichever client sends it: the CLI and the API
//! refuse 0, parts of a sector and more than qcow2 takes with the same clear error (API:
//! 400 `invalid_input`, never a 5xx), and a refused request changes nothing.

use crate::file_kit::{segment, Fd, FdAgent};
use serde_json::Value;

const TOO_LARGE: u64 = (2 << 50) + 512;

fn listing(d: &Fd) -> Value {
    d.json(&["volume", "list", &d.path])
}

#[test]
fn sizes_are_checked_alike_by_the_cli_and_the_api() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let image = uuid::Uuid::new_v4().to_string();
    let vol = d.create(&["--image", &image, "--size", "1M", "--format", "raw"]);
    let before = listing(&d);
    let too_large = TOO_LARGE.to_string();
    for size in ["0", "1", "511", "1000", &too_large, "4P"] {
        let fresh = uuid::Uuid::new_v4().to_string();
        for args in [
            vec![
                "volume", "create", &d.path, "--image", &fresh, "--size", size,
            ],
            vec!["volume", "extend", &d.path, &vol, "--size", size],
        ] {
            let o = d.run(&args);
            let said = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "lvchain {args:?}: {said}");
            assert!(said.contains("--size"), "{said}");
            assert_eq!(listing(&d), before, "after lvchain {args:?}");
        }
    }
    let seg = segment(&d.path);
    for size in [0, 1, 511, 1000, TOO_LARGE, 1 << 63, u64::MAX] {
        let fresh = uuid::Uuid::new_v4();
        for (route, body) in [
            (
                format!("/v1/domains/{seg}/volumes"),
                serde_json::json!({"image": fresh, "size": size}),
            ),
            (
                format!("/v1/domains/{seg}/volumes/{vol}/extend"),
                serde_json::json!({"size": size}),
            ),
        ] {
            let (st, v) = agent.call("POST", &route, &body.to_string());
            assert_eq!(
                (st, v["kind"].as_str()),
                (400, Some("invalid_input")),
                "{route} {size}: {v}"
            );
            assert!(v["message"].as_str().unwrap().contains("size"), "{v}");
            assert_eq!(listing(&d), before, "after POST {route} {body}");
        }
    }
    // Within the bound but more than the file system takes (an ext4 file is at most 16 TiB):
    // the request's fault, never a 5xx.
    let fresh = uuid::Uuid::new_v4();
    let (st, v) = agent.call(
        "POST",
        &format!("/v1/domains/{seg}/volumes"),
        &serde_json::json!({"image": fresh, "size": 2u64 << 50, "format": "raw"}).to_string(),
    );
    assert!(st == 201 || st == 400, "{st} {v}");
    if st == 400 {
        assert_eq!(v["kind"], "invalid_input", "{v}");
        assert_eq!(listing(&d), before);
    }
}
