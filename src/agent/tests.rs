//! The API on the simulated LVM: the router matches `api/openapi.json` (every route in the
//! spec and every spec path in the router), answers validate against the spec's schemas, bad
//! requests get their JSON errors, a copy runs as a job, peers are checked.
#![allow(clippy::unwrap_used)]

use super::api;
use super::domains::Domains;
use super::metrics::Metrics;
use super::peer::{Access, Peer};
use super::Agent;
use crate::domain::{Domain, FormatRequest};
use crate::lvm::sim::SimLvm;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

const SPEC: &str = include_str!("../../api/openapi.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).unwrap()
}

/// A minimal JSON Schema validator for the keywords the spec uses; an unknown keyword fails
/// (so nothing in the spec is silently not checked).
fn validate(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = schema
        .as_object()
        .ok_or(format!("{at}: schema is not an object"))?;
    for key in s.keys() {
        let known = [
            "$ref",
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "oneOf",
            "format",
            "minimum",
            "maximum",
            "description",
        ];
        if !known.contains(&key.as_str()) {
            return Err(format!("{at}: the test's validator does not know {key}"));
        }
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &spec["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: unknown $ref {r}"));
        }
        return validate(spec, target, v, at);
    }
    if let Some(options) = s.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| validate(spec, o, v, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!("{at}: {matching} of oneOf match {v}"));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: bad type")),
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
    }
    if v.is_null() {
        return Ok(());
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if s.get("format").and_then(Value::as_str) == Some("uuid") {
        let text = v.as_str().unwrap_or_default();
        if uuid::Uuid::parse_str(text).is_err() {
            return Err(format!("{at}: {v} is not a uuid"));
        }
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if v.as_f64().is_some_and(|n| n < min) {
            return Err(format!("{at}: {v} < {min}"));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if v.as_f64().is_some_and(|n| n > max) {
            return Err(format!("{at}: {v} > {max}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or_default();
            if !o.contains_key(r) {
                return Err(format!("{at}: missing {r} in {v}"));
            }
        }
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(p) => validate(spec, p, val, &format!("{at}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, item) in a.iter().enumerate() {
            validate(spec, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn the_router_and_the_openapi_file_have_the_same_routes() {
    let spec = spec();
    let mut in_spec = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            in_spec.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let in_router: BTreeSet<String> = api::routes()
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        in_router.difference(&in_spec).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "routes missing from api/openapi.json"
    );
    assert_eq!(
        in_spec.difference(&in_router).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "paths in api/openapi.json the router lacks"
    );
}

/// An agent on the simulated LVM serving one formatted domain, and a source file.
struct SimAgent {
    _dir: tempfile::TempDir,
    vg: String,
    agent: Arc<Agent>,
    source: std::path::PathBuf,
}

impl SimAgent {
    fn new() -> SimAgent {
        SimAgent::with_access(Access::default())
    }

    fn with_access(access: Access) -> SimAgent {
        let dir = tempfile::tempdir().unwrap();
        let sim = Arc::new(SimLvm::new(&dir.path().join("sim")).unwrap());
        let pv = dir.path().join("pv0");
        std::fs::write(&pv, b"").unwrap();
        sim.add_device(&pv, 64 << 30);
        let vg = format!("simagent{}", std::process::id());
        let locks = dir.path().join("lock");
        Domain::new_local_in(vg.parse().unwrap(), sim.clone(), &locks)
            .format(&FormatRequest {
                pvs: vec![pv],
                max_volumes: 16,
                lock_manager: crate::lock::LockKind::Local,
                wipe: crate::tags::Wipe::Zero,
            })
            .unwrap();
        let source = dir.path().join("source.raw");
        std::fs::write(&source, [0x5au8; 4096]).unwrap();
        let agent = Arc::new(Agent::new(
            Domains::on(sim, vec![vg.clone()], locks),
            access,
            None,
            Arc::new(Metrics::new()),
        ));
        SimAgent {
            _dir: dir,
            vg,
            agent,
            source,
        }
    }

    /// Sends one request as the peer `uid`; the status and the body (JSON when it is).
    async fn call_as(&self, uid: u32, method: &str, uri: &str, body: &str) -> (u16, Value) {
        let app = api::router(self.agent.clone()).layer(MockConnectInfo(Peer {
            uid: Some(uid),
            gid: Some(uid),
        }));
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    /// Sends a request as root and checks the answer against the spec: the status is one the
    /// operation declares (or an error), the body validates against its schema.
    async fn call(&self, method: &str, uri: &str, body: &str) -> (u16, Value) {
        let (status, v) = self.call_as(0, method, uri, body).await;
        let spec = spec();
        let path = uri.split('?').next().unwrap_or_default();
        let template = api::routes()
            .iter()
            .map(|(m, p, _)| (m.to_string(), *p))
            .find(|(m, p)| m == method && matches_template(p, path))
            .map(|(_, p)| p);
        let schema = match template {
            Some(p) => {
                let op = &spec["paths"][p][method.to_lowercase()];
                let declared = &op["responses"][status.to_string()];
                if declared.is_null() {
                    assert!(status >= 400, "{method} {uri}: undeclared status {status}");
                    op["responses"]["default"]["content"]["application/json"]["schema"].clone()
                } else {
                    declared["content"]["application/json"]["schema"].clone()
                }
            }
            None => serde_json::json!({"$ref": "#/components/schemas/Error"}),
        };
        if let Err(e) = validate(&spec, &schema, &v, &format!("{method} {uri}")) {
            panic!("{e}");
        }
        (status, v)
    }
}

fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_validate_against_the_spec() {
    let s = SimAgent::new();
    let vg = &s.vg;
    let image = uuid::Uuid::new_v4();
    let (st, base) = s
        .call(
            "POST",
            &format!("/v1/domains/{vg}/volumes"),
            &format!(r#"{{"image": "{image}", "size": 1048576, "description": "base"}}"#),
        )
        .await;
    assert_eq!(st, 201, "{base}");
    let base_id = base["id"].as_str().unwrap().to_string();
    let (st, snap) = s
        .call(
            "POST",
            &format!("/v1/domains/{vg}/volumes"),
            &format!(r#"{{"parent": "{base_id}"}}"#),
        )
        .await;
    assert_eq!((st, snap["format"].as_str()), (201, Some("qcow2")));
    let (st, chain) = s
        .call("GET", &format!("/v1/domains/{vg}/images/{image}"), "")
        .await;
    assert_eq!(st, 200);
    assert_eq!(chain[0]["id"], base["id"]);
    assert_eq!(chain[1]["id"], snap["id"]);
    let (st, info) = s.call("GET", &format!("/v1/domains/{vg}"), "").await;
    assert_eq!((st, info["volumes"].as_u64()), (200, Some(2)));
    let (st, list) = s
        .call(
            "GET",
            &format!("/v1/domains/{vg}/volumes?image={image}"),
            "",
        )
        .await;
    assert_eq!((st, list.as_array().map(Vec::len)), (200, Some(2)));
    // Not a leaf: 409, the engine's kind.
    let (st, e) = s
        .call("DELETE", &format!("/v1/domains/{vg}/volumes/{base_id}"), "")
        .await;
    assert_eq!((st, e["kind"].as_str()), (409, Some("not_a_leaf")), "{e}");
    let (st, check) = s.call("GET", &format!("/v1/domains/{vg}/check"), "").await;
    assert_eq!((st, check["clean"].as_bool()), (200, Some(true)), "{check}");
    let (st, gc) = s
        .call(
            "POST",
            &format!("/v1/domains/{vg}/gc"),
            r#"{"dry_run": true}"#,
        )
        .await;
    assert_eq!((st, gc["dry_run"].as_bool()), (200, Some(true)));
    let (st, gcs) = s.call("GET", &format!("/v1/domains/{vg}/gc"), "").await;
    assert_eq!(
        (st, gcs["last"]["trigger"].as_str()),
        (200, Some("request"))
    );
    let (st, status) = s
        .call(
            "GET",
            &format!("/v1/domains/{vg}/volumes/{base_id}/status?generation=0"),
            "",
        )
        .await;
    assert_eq!(st, 200, "{status}");
    // A copy into the snapshot, as a job polled to its end.
    let snap_id = snap["id"].as_str().unwrap();
    let src = s.source.display();
    let (st, job) = s
        .call(
            "POST",
            &format!("/v1/domains/{vg}/volumes/{snap_id}/copy"),
            &format!(r#"{{"generation": 0, "from_file": "{src}"}}"#),
        )
        .await;
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let mut done = Value::Null;
    for _ in 0..200 {
        let (st, j) = s.call("GET", &format!("/v1/jobs/{id}"), "").await;
        assert_eq!(st, 200);
        if j["state"] != "running" {
            done = j;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["generation"], 1, "{done}");
    assert_eq!(done["progress"]["percent"], 100.0, "{done}");
    let (st, jobs) = s.call("GET", "/v1/jobs", "").await;
    assert_eq!((st, jobs.as_array().map(Vec::len)), (200, Some(1)));
    let (st, about) = s.call("GET", "/v1/agent", "").await;
    assert_eq!(
        (st, about["version"].as_str()),
        (200, Some(env!("CARGO_PKG_VERSION")))
    );
    let (st, text) = s.call_as(0, "GET", "/metrics", "").await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert_eq!(st, 200);
    assert!(
        text.contains("op=\"POST /v1/domains/{vg}/volumes\",outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("op=\"DELETE /v1/domains/{vg}/volumes/{volume}\",outcome=\"not_a_leaf\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_their_status() {
    let s = SimAgent::new();
    let vg = &s.vg;
    let volumes = format!("/v1/domains/{vg}/volumes");
    let image = uuid::Uuid::new_v4();
    let big = format!(
        r#"{{"image": "{image}", "description": "{}"}}"#,
        "x".repeat(super::config::BODY_LIMIT + 1)
    );
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        (
            "POST",
            volumes.clone(),
            "{not json".into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            volumes.clone(),
            format!(r#"{{"image": "{image}", "size": 1048576, "colour": "red"}}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            volumes.clone(),
            format!(r#"{{"image": "{image}", "size": "big"}}"#),
            400,
            "bad_request",
        ),
        ("POST", volumes.clone(), big, 413, "body_too_large"),
        (
            "GET",
            "/v1/nowhere".into(),
            String::new(),
            404,
            "unknown_path",
        ),
        (
            "PUT",
            volumes.clone(),
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("{volumes}/not-a-uuid"),
            String::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{volumes}/{image}"),
            String::new(),
            404,
            "volume_not_found",
        ),
        (
            "GET",
            "/v1/domains/othervg/volumes".into(),
            String::new(),
            404,
            "domain_not_served",
        ),
        (
            "POST",
            volumes.clone(),
            format!(r#"{{"image": "{image}", "size": 1048576, "format": "vmdk"}}"#),
            400,
            "bad_request",
        ),
    ];
    for (method, uri, body, status, kind) in cases {
        let (st, e) = s.call(method, &uri, &body).await;
        assert_eq!(
            (st, e["kind"].as_str()),
            (status, Some(kind)),
            "{method} {uri}: {e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let (_, list) = s.call("GET", &volumes, "").await;
    assert_eq!(
        list,
        serde_json::json!([]),
        "a bad request created something"
    );
    // A peer that is neither root nor in the group runs nothing.
    let (st, e) = s
        .call_as(
            1000,
            "POST",
            &volumes,
            &format!(r#"{{"image": "{image}", "size": 1048576}}"#),
        )
        .await;
    assert_eq!((st, e["kind"].as_str()), (403, Some("forbidden")));
    let (_, list) = s.call("GET", &volumes, "").await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn a_group_member_may_not_copy_from_a_file_the_agent_reads_as_root() {
    let group = 4242;
    let s = SimAgent::with_access(Access {
        group: Some(nix::unistd::Gid::from_raw(group)),
    });
    let vg = &s.vg;
    let volumes = format!("/v1/domains/{vg}/volumes");
    let image = uuid::Uuid::new_v4();
    // The group member may create volumes...
    let (st, v) = s
        .call_as(
            group,
            "POST",
            &volumes,
            &format!(r#"{{"image": "{image}", "size": 1048576}}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // ...but not have root read a file into one.
    let src = s.source.display();
    let (st, e) = s
        .call_as(
            group,
            "POST",
            &format!("{volumes}/{id}/copy"),
            &format!(r#"{{"generation": 0, "from_file": "{src}"}}"#),
        )
        .await;
    assert_eq!((st, e["kind"].as_str()), (403, Some("forbidden")), "{e}");
    let (_, mut after) = s.call("GET", &format!("{volumes}/{id}"), "").await;
    // `volume info` also says where the volume is prepared (nowhere); the rest is unchanged.
    assert_eq!(after["prepared_on"], serde_json::json!([]));
    after.as_object_mut().unwrap().remove("prepared_on");
    assert_eq!(after, v, "a refused copy changed the volume");
    let (_, jobs) = s.call("GET", "/v1/jobs", "").await;
    assert_eq!(jobs, serde_json::json!([]), "a refused copy started a job");
}

/// A file domain served beside the simulated LVM's: addressed by its path percent-encoded in
/// one segment, answers valid against the spec, an image prepared through the agent held
/// (its shared leases) until teardown, and an unconfigured path refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_file_domain_is_served_by_its_encoded_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dom1");
    std::fs::create_dir(&root).unwrap();
    let path = root.to_str().unwrap().to_string();
    let other = dir.path().join("dom2");
    std::fs::create_dir(&other).unwrap();
    let sim = Arc::new(SimLvm::new(&dir.path().join("sim")).unwrap());
    let locks = dir.path().join("lock");
    for p in [&root, &other] {
        let name = crate::format::ids::VgName::file_domain(p.to_str().unwrap()).unwrap();
        Domain::new_local_in(name, sim.clone(), &locks)
            .format(&FormatRequest {
                pvs: vec![],
                max_volumes: 0,
                lock_manager: crate::lock::LockKind::Local,
                wipe: crate::tags::Wipe::Zero,
            })
            .unwrap();
    }
    // Configured with a trailing slash: the same directory.
    let agent = Arc::new(Agent::new(
        Domains::on(sim, vec![format!("{path}/")], locks),
        Access::default(),
        None,
        Arc::new(Metrics::new()),
    ));
    let s = SimAgent {
        _dir: dir,
        vg: path.clone(),
        agent,
        source: std::path::PathBuf::new(),
    };
    let enc = |p: &str| p.replace('/', "%2F");
    let dom = format!("/v1/domains/{}", enc(&path));
    let image = uuid::Uuid::new_v4();
    let (st, base) = s
        .call(
            "POST",
            &format!("{dom}/volumes"),
            &format!(r#"{{"image": "{image}", "size": 1048576}}"#),
        )
        .await;
    assert_eq!(st, 201, "{base}");
    let id = base["id"].as_str().unwrap().to_string();
    assert!(root
        .join("images")
        .join(image.to_string())
        .join(&id)
        .is_file());
    let (st, list) = s.call("GET", &format!("{dom}/volumes"), "").await;
    assert_eq!(
        (st, list.as_array().map(Vec::len)),
        (200, Some(1)),
        "{list}"
    );
    let (st, info) = s.call("GET", &dom, "").await;
    assert_eq!(
        (st, info["vg"].as_str()),
        (200, Some(path.as_str())),
        "{info}"
    );
    // Prepared through the agent: held until teardown.
    let (st, p) = s
        .call("POST", &format!("{dom}/images/{image}/prepare"), "")
        .await;
    assert_eq!(st, 200, "{p}");
    let (_, v) = s.call("GET", &format!("{dom}/volumes/{id}"), "").await;
    assert_eq!(v["prepared_on"], serde_json::json!([0]), "{v}");
    let (st, e) = s.call("DELETE", &format!("{dom}/volumes/{id}"), "").await;
    assert_eq!((st, e["kind"].as_str()), (423, Some("prepared")), "{e}");
    let (st, _) = s
        .call("POST", &format!("{dom}/images/{image}/teardown"), "")
        .await;
    assert_eq!(st, 200);
    let (_, v) = s.call("GET", &format!("{dom}/volumes/{id}"), "").await;
    assert_eq!(v["prepared_on"], serde_json::json!([]), "{v}");
    // gc on request, and its last run.
    let (st, gc) = s.call("POST", &format!("{dom}/gc"), "").await;
    assert_eq!((st, gc["orphans"].as_array().map(Vec::len)), (200, Some(0)));
    let (st, gcs) = s.call("GET", &format!("{dom}/gc"), "").await;
    assert_eq!(
        (st, gcs["last"]["outcome"].as_str()),
        (200, Some("collected"))
    );
    // Other paths are not served: another domain, a relative path, `..`.
    let other = other.to_str().unwrap().to_string();
    for p in [
        other.clone(),
        path.trim_start_matches('/').into(),
        format!("{path}/../dom1"),
    ] {
        let (st, e) = s
            .call(
                "POST",
                &format!("/v1/domains/{}/volumes", enc(&p)),
                &format!(r#"{{"image": "{image}", "size": 1048576}}"#),
            )
            .await;
        assert_eq!(
            (st, e["kind"].as_str()),
            (404, Some("domain_not_served")),
            "{p}: {e}"
        );
    }
    assert_eq!(
        std::fs::read_dir(std::path::Path::new(&other).join("images"))
            .unwrap()
            .count(),
        0,
        "a refused request created something"
    );
}
