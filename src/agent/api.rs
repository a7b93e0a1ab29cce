//! The HTTP API: one resource per CLI noun, every route in ONE table ([`routes`], which the
//! OpenAPI file `api/openapi.json` describes; a test holds the two equal). Each handler only
//! translates: request -> the same `Domain` facade call the CLI makes (on a blocking thread)
//! -> the same JSON view the CLI's `--json` prints. Errors are [`ApiError`]s.

use super::errors::{ApiError, ErrorKind};
use super::extract::{Body, Path, Query};
use super::gc::{self, Trigger};
use super::jobs::JobView;
use super::peer::Peer;
use super::Agent;
use crate::cli::views::{
    self, CheckView, DomainInfoView, DomainSummaryView, MessageView, PreparedView, StatusView,
    VolumeView,
};
use crate::domain::{Domain, FormatRequest};
use crate::format::ids::{Generation, ImageId, VolumeId};
use crate::metadata::{Format, Legality};
use crate::operation::Source;
use crate::tags::Wipe;
use crate::units::Bytes;
use crate::volume::CreateRequest;
use axum::extract::{ConnectInfo, MatchedPath, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

type St = State<Arc<Agent>>;
type Answer<T> = Result<T, ApiError>;

/// A route: method, path template, handler.
pub type Route = (Method, &'static str, MethodRouter<Arc<Agent>>);

macro_rules! route {
    ($method:ident $path:literal => $handler:expr) => {
        (
            Method::from_bytes(stringify!($method).to_uppercase().as_bytes())
                .unwrap_or(Method::GET),
            $path,
            axum::routing::$method($handler),
        )
    };
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    vec![
        route!(get "/v1/domains" => list_domains),
        route!(post "/v1/domains" => create_domain),
        route!(get "/v1/domains/{vg}" => domain_info),
        route!(patch "/v1/domains/{vg}" => set_domain),
        route!(delete "/v1/domains/{vg}" => remove_domain),
        route!(get "/v1/domains/{vg}/check" => check),
        route!(post "/v1/domains/{vg}/gc" => run_gc),
        route!(get "/v1/domains/{vg}/gc" => gc_status),
        route!(get "/v1/domains/{vg}/volumes" => list_volumes),
        route!(post "/v1/domains/{vg}/volumes" => create_volume),
        route!(get "/v1/domains/{vg}/volumes/{volume}" => volume_info),
        route!(delete "/v1/domains/{vg}/volumes/{volume}" => remove_volume),
        route!(post "/v1/domains/{vg}/volumes/{volume}/extend" => extend_volume),
        route!(post "/v1/domains/{vg}/volumes/{volume}/update" => update_volume),
        route!(post "/v1/domains/{vg}/volumes/{volume}/fence" => fence_volume),
        route!(get "/v1/domains/{vg}/volumes/{volume}/status" => volume_status),
        route!(post "/v1/domains/{vg}/volumes/{volume}/copy" => copy_volume),
        route!(get "/v1/domains/{vg}/images/{image}" => image_chain),
        route!(delete "/v1/domains/{vg}/images/{image}" => remove_image),
        route!(post "/v1/domains/{vg}/images/{image}/prepare" => prepare_image),
        route!(post "/v1/domains/{vg}/images/{image}/teardown" => teardown_image),
        route!(get "/v1/agent" => about),
        route!(get "/v1/jobs" => list_jobs),
        route!(get "/v1/jobs/{id}" => job),
        route!(get "/metrics" => metrics),
    ]
}

/// The API's router: the routes, JSON answers for unknown paths and methods, the body limit,
/// the metrics of every request and the peer check (outermost: a refused peer runs nothing).
pub fn router(agent: Arc<Agent>) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in routes() {
        r = r.route(path, handler);
    }
    r.fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            super::config::BODY_LIMIT,
        ))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), measure))
        .layer(axum::middleware::from_fn(read_whole_body))
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            check_peer,
        ))
        .with_state(agent)
}

/// Reads every request's body (up to the limit) before routing, whether its handler takes one
/// or not: a connection closed with a request's bytes unread reaches the client as a reset
/// instead of the answer. A body announced larger than the limit is refused at once (413,
/// unread); one that does not arrive within [`BODY_TIMEOUT`] is answered 408
/// `request_timeout`. Both close the connection (the rest of the body is not read).
///
/// [`BODY_TIMEOUT`]: super::config::BODY_TIMEOUT
async fn read_whole_body(req: axum::extract::Request, next: Next) -> Response {
    use super::config::{BODY_LIMIT, BODY_TIMEOUT};
    use axum::body::HttpBody;
    let (parts, body) = req.into_parts();
    let too_large = || {
        closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        ))
    };
    if body.size_hint().lower() > BODY_LIMIT as u64 {
        return too_large();
    }
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(_)) => too_large(),
        Err(_) => closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// An error answer after which the connection closes (its request was not read whole).
fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Only `/metrics`, for the optional TCP address (no peer credentials there), with the
/// socket's body limits.
pub fn metrics_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::middleware::from_fn(read_whole_body))
        .with_state(agent)
}

async fn unknown_path() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_path", "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the resource does not take this method",
    )
}

/// Refuses peers other than root and the configured group (403 `forbidden`).
async fn check_peer(State(agent): St, req: axum::extract::Request, next: Next) -> Response {
    use axum::extract::FromRequestParts;
    let (mut parts, body) = req.into_parts();
    let peer = ConnectInfo::<Peer>::from_request_parts(&mut parts, &agent)
        .await
        .ok()
        .map(|c| c.0);
    let req = axum::extract::Request::from_parts(parts, body);
    match peer {
        Some(p) if agent.access.allows(&p) => next.run(req).await,
        p => {
            tracing::warn!(peer = ?p, "request refused: peer not allowed");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only root or the agent's group may use this socket",
            )
            .into_response()
        }
    }
}

/// Counts every request by route and outcome, with its latency.
async fn measure(
    State(agent): St,
    path: Option<MatchedPath>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let op = format!(
        "{} {}",
        req.method(),
        path.as_ref().map_or("unmatched", |p| p.as_str())
    );
    let start = Instant::now();
    let resp = next.run(req).await;
    let outcome = resp.extensions().get::<ErrorKind>().map_or("ok", |k| k.0);
    agent.metrics.operation(&op, outcome, start.elapsed());
    resp
}

pub(super) fn worker_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the worker thread failed: {e}"),
    )
}

/// Runs `f` on domain `vg`'s facade on a blocking thread (the engine is synchronous).
async fn on_domain<T, F>(agent: &Arc<Agent>, vg: String, f: F) -> Answer<T>
where
    T: Send + 'static,
    F: FnOnce(&Domain) -> crate::error::Result<T> + Send + 'static,
{
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let d = agent.domains.open(&vg)?;
        f(&d).map_err(ApiError::from)
    })
    .await
    .unwrap_or_else(|e| Err(worker_failed(e)))
}

fn parse<T: std::str::FromStr<Err = String>>(field: &str, s: &str) -> Answer<T> {
    s.parse()
        .map_err(|e: String| ApiError::bad_request(format!("{field}: {e}")))
}

fn parse_opt<T: std::str::FromStr<Err = String>>(
    field: &str,
    s: &Option<String>,
) -> Answer<Option<T>> {
    s.as_deref().map(|s| parse(field, s)).transpose()
}

/// A generation an operation can start at.
fn start_generation(g: u64) -> Answer<Generation> {
    let g = Generation::new(g);
    crate::operation::check_generation(g)?;
    Ok(g)
}

// Domains.

async fn list_domains(State(agent): St) -> Answer<Json<Vec<String>>> {
    let worker = agent.clone();
    let list = tokio::task::spawn_blocking(move || worker.domains.list())
        .await
        .unwrap_or_else(|e| Err(crate::error::Error::InvalidInput(e.to_string())))?;
    Ok(Json(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDomain {
    vg: String,
    pvs: Vec<PathBuf>,
    max_volumes: Option<u32>,
    lock_manager: Option<String>,
    wipe: Option<String>,
}

async fn create_domain(
    State(agent): St,
    Body(b): Body<CreateDomain>,
) -> Answer<(StatusCode, Json<DomainInfoView>)> {
    let lock_manager = match &b.lock_manager {
        Some(s) => s
            .parse()
            .map_err(|e: crate::lock::UnknownLockKind| ApiError::bad_request(e.to_string()))?,
        None => crate::lock::LockKind::Local,
    };
    let req = FormatRequest {
        pvs: b.pvs,
        max_volumes: b.max_volumes.unwrap_or(2048),
        lock_manager,
        wipe: parse_opt::<Wipe>("wipe", &b.wipe)?.unwrap_or(Wipe::Zero),
    };
    let info = on_domain(&agent, b.vg, move |d| d.format(&req)).await?;
    Ok((StatusCode::CREATED, Json(DomainInfoView::from(&info))))
}

async fn domain_info(State(agent): St, Path(vg): Path<String>) -> Answer<Json<DomainSummaryView>> {
    let cat = on_domain(&agent, vg, |d| d.catalog()).await?;
    Ok(Json(DomainSummaryView::from(&cat)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetDomain {
    wipe: String,
}

async fn set_domain(
    State(agent): St,
    Path(vg): Path<String>,
    Body(b): Body<SetDomain>,
) -> Answer<Json<MessageView>> {
    let wipe: Wipe = parse("wipe", &b.wipe)?;
    let name = vg.clone();
    let before = on_domain(&agent, vg, move |d| d.set_wipe(wipe)).await?;
    Ok(Json(MessageView::wipe_set(&name, before, wipe)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveDomain {
    force: Option<bool>,
}

async fn remove_domain(
    State(agent): St,
    Path(vg): Path<String>,
    Query(q): Query<RemoveDomain>,
) -> Answer<Json<MessageView>> {
    let name = vg.clone();
    let force = q.force.unwrap_or(false);
    let n = on_domain(&agent, vg, move |d| d.remove(force)).await?;
    Ok(Json(MessageView::removed_domain(&name, n)))
}

/// The consistency report; an unclean domain is a 200 with `clean: false` (the CLI exits 1).
async fn check(State(agent): St, Path(vg): Path<String>) -> Answer<Json<CheckView>> {
    let report = on_domain(&agent, vg, |d| d.check()).await?;
    Ok(Json(CheckView::from(&report)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunGc {
    dry_run: Option<bool>,
}

async fn run_gc(
    State(agent): St,
    Path(vg): Path<String>,
    Body(b): Body<RunGc>,
) -> Answer<Json<serde_json::Value>> {
    agent.domains.open(&vg)?;
    let view = gc::collect(&agent, &vg, Trigger::Request, b.dry_run.unwrap_or(false)).await?;
    Ok(Json(view))
}

async fn gc_status(State(agent): St, Path(vg): Path<String>) -> Answer<Json<gc::GcStatusView>> {
    agent.domains.open(&vg)?;
    let key = super::domains::Domains::key(&vg);
    Ok(Json(agent.gc.status(&key, agent.gc_interval)))
}

// Volumes.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListVolumes {
    image: Option<Uuid>,
}

async fn list_volumes(
    State(agent): St,
    Path(vg): Path<String>,
    Query(q): Query<ListVolumes>,
) -> Answer<Json<Vec<VolumeView>>> {
    let image = q.image.map(ImageId::from_uuid);
    let vs = on_domain(&agent, vg, move |d| d.volumes(image.as_ref())).await?;
    Ok(Json(views::volumes(&vs)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    image: Option<Uuid>,
    /// Bytes.
    size: Option<u64>,
    format: Option<String>,
    parent: Option<Uuid>,
    id: Option<Uuid>,
    description: Option<String>,
    wipe: Option<String>,
}

async fn create_volume(
    State(agent): St,
    Path(vg): Path<String>,
    Body(b): Body<CreateVolume>,
) -> Answer<(StatusCode, Json<VolumeView>)> {
    let req = CreateRequest {
        image: b.image.map(ImageId::from_uuid),
        size: b.size.map(Bytes),
        format: parse_opt::<Format>("format", &b.format)?,
        parent: b.parent.map(VolumeId::from_uuid),
        id: b.id.map(VolumeId::from_uuid),
        description: b.description.unwrap_or_default(),
        wipe: parse_opt::<Wipe>("wipe", &b.wipe)?,
    };
    let worker = agent.clone();
    let v = tokio::task::spawn_blocking(move || {
        worker
            .domains
            .create_volume(&vg, &req)
            .map_err(ApiError::from)
    })
    .await
    .unwrap_or_else(|e| Err(worker_failed(e)))?;
    Ok((StatusCode::CREATED, Json(VolumeView::from(&v))))
}

async fn volume_info(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
) -> Answer<Json<VolumeView>> {
    let id = VolumeId::from_uuid(id);
    let v = on_domain(&agent, vg, move |d| d.volume_info(&id)).await?;
    Ok(Json(VolumeView::from(&v)))
}

async fn remove_volume(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
) -> Answer<Json<MessageView>> {
    let id = VolumeId::from_uuid(id);
    on_domain(&agent, vg, move |d| d.remove_volume(&id, &mut |_, _, _| {})).await?;
    Ok(Json(MessageView::removed_volume(&id)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    /// Bytes.
    size: u64,
    generation: Option<u64>,
}

async fn extend_volume(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
    Body(b): Body<Extend>,
) -> Answer<Json<VolumeView>> {
    let id = VolumeId::from_uuid(id);
    let generation = b.generation.map(start_generation).transpose()?;
    let v = on_domain(&agent, vg, move |d| {
        d.extend_volume(&id, Bytes(b.size), generation)
    })
    .await?;
    Ok(Json(VolumeView::from(&v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    generation: u64,
    description: Option<String>,
    legality: Option<String>,
}

async fn update_volume(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
    Body(b): Body<Update>,
) -> Answer<Json<VolumeView>> {
    let id = VolumeId::from_uuid(id);
    let generation = start_generation(b.generation)?;
    let legality = parse_opt::<Legality>("legality", &b.legality)?;
    let v = on_domain(&agent, vg, move |d| {
        d.update(&id, generation, b.description, legality)
    })
    .await?;
    Ok(Json(VolumeView::from(&v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fence {
    generation: u64,
}

async fn fence_volume(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
    Body(b): Body<Fence>,
) -> Answer<Json<VolumeView>> {
    let id = VolumeId::from_uuid(id);
    let generation = start_generation(b.generation)?;
    let v = on_domain(&agent, vg, move |d| d.fence(&id, generation)).await?;
    Ok(Json(VolumeView::from(&v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    generation: u64,
}

async fn volume_status(
    State(agent): St,
    Path((vg, id)): Path<(String, Uuid)>,
    Query(q): Query<StatusQuery>,
) -> Answer<Json<StatusView>> {
    let id = VolumeId::from_uuid(id);
    let st = on_domain(&agent, vg, move |d| {
        d.status(&id, Generation::new(q.generation))
    })
    .await?;
    Ok(Json(StatusView::from(&st)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    generation: u64,
    /// A file, device or FIFO on the agent's host.
    from_file: Option<PathBuf>,
    /// How to read `from_file`: raw (default) or qcow2.
    from_format: Option<String>,
    /// A volume of the same domain.
    from_volume: Option<Uuid>,
}

/// Starts a copy as a job: 202 and the job; its result is the volume's view.
async fn copy_volume(
    State(agent): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((vg, id)): Path<(String, Uuid)>,
    Body(b): Body<Copy>,
) -> Answer<(StatusCode, Json<JobView>)> {
    let id = VolumeId::from_uuid(id);
    let generation = start_generation(b.generation)?;
    let source =
        match (b.from_file, b.from_volume) {
            // The agent opens the file with root's rights: a member of the agent's group must
            // not get, through a volume, what the file system would not let it read.
            (Some(_), None) if peer.uid != Some(0) => return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only root may copy from a file on the agent's host (the agent reads it as root)",
            )),
            (Some(path), None) if !path.is_absolute() => {
                return Err(ApiError::bad_request(format!(
                    "from_file {path:?} is not an absolute path on the agent's host"
                )))
            }
            (Some(path), None) => Source::File {
                path,
                format: parse_opt::<Format>("from_format", &b.from_format)?.unwrap_or(Format::Raw),
            },
            (None, Some(v)) if b.from_format.is_none() => Source::Volume(VolumeId::from_uuid(v)),
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "from_format is for a file source; a volume is read in its own format",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of from_file and from_volume",
                ))
            }
        };
    // Refuse an unserved domain, a missing volume or source volume now rather than in the
    // job (one scan).
    let from = match &source {
        Source::Volume(v) => Some(*v),
        _ => None,
    };
    on_domain(&agent, vg.clone(), move |d| {
        let cat = d.catalog()?;
        for v in std::iter::once(id).chain(from) {
            cat.get(d.vg(), &v)?;
        }
        Ok(())
    })
    .await?;
    let worker = agent.clone();
    let job = agent
        .jobs
        .spawn("copy", &vg.clone(), Some(id), move |progress| {
            let d = worker.domains.open(&vg)?;
            let v = d.copy(&id, generation, source, progress)?;
            serde_json::to_value(VolumeView::from(&v)).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })
        });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

// Images.

async fn image_chain(
    State(agent): St,
    Path((vg, image)): Path<(String, Uuid)>,
) -> Answer<Json<Vec<VolumeView>>> {
    let image = ImageId::from_uuid(image);
    let chain = on_domain(&agent, vg, move |d| d.chain(&image)).await?;
    Ok(Json(views::volumes(&chain)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Prepare {
    allow_illegal: Option<bool>,
    /// Leave the leaf's lease to the VM's lock manager (libvirt's `<lease>`).
    vm_lease: Option<bool>,
}

async fn prepare_image(
    State(agent): St,
    Path((vg, image)): Path<(String, Uuid)>,
    Body(b): Body<Prepare>,
) -> Answer<Json<PreparedView>> {
    let image = ImageId::from_uuid(image);
    let name = vg.clone();
    let allow = b.allow_illegal.unwrap_or(false);
    let vm_lease = b.vm_lease.unwrap_or(false);
    let holder = agent.clone();
    let chain = on_domain(&agent, vg, move |d| {
        let (chain, held) = d.prepare_held(&image, allow, vm_lease)?;
        // Keyed by the served name (a file domain's normalized path), however spelled.
        holder
            .prepared
            .keep(&super::domains::Domains::key(&d.vg), image, held);
        Ok(chain)
    })
    .await?;
    Ok(Json(PreparedView::new(&name, &image, &chain)))
}

async fn teardown_image(
    State(agent): St,
    Path((vg, image)): Path<(String, Uuid)>,
) -> Answer<Json<MessageView>> {
    let image = ImageId::from_uuid(image);
    // Refused (the image still open): the leases stay held.
    let holder = agent.clone();
    on_domain(&agent, vg, move |d| {
        d.teardown(&image)?;
        holder
            .prepared
            .release(&super::domains::Domains::key(&d.vg), &image);
        Ok(())
    })
    .await?;
    Ok(Json(MessageView::torn_down(&image)))
}

async fn remove_image(
    State(agent): St,
    Path((vg, image)): Path<(String, Uuid)>,
) -> Answer<Json<MessageView>> {
    let image = ImageId::from_uuid(image);
    let n = on_domain(&agent, vg, move |d| {
        d.remove_image(&image, &mut |_, _, _| {})
    })
    .await?;
    Ok(Json(MessageView::removed_image(&image, n)))
}

// The agent, jobs and metrics.

/// `GET /v1/agent`.
#[derive(serde::Serialize)]
struct About {
    version: &'static str,
    pid: u32,
}

/// The agent's version and process id: the CLI's probe (it touches no storage).
async fn about() -> Json<About> {
    Json(About {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
    })
}

async fn list_jobs(State(agent): St) -> Json<Vec<JobView>> {
    Json(agent.jobs.list())
}

async fn job(State(agent): St, Path(id): Path<Uuid>) -> Answer<Json<JobView>> {
    agent.jobs.get(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("job {id} not found (jobs end with the agent that ran them)"),
        )
    })
}

/// The metrics as OpenMetrics when `Accept` asks for it, else in the Prometheus text format.
async fn metrics(State(agent): St, headers: axum::http::HeaderMap) -> impl IntoResponse {
    use super::exposition;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let text = agent.metrics.encode();
    let (kind, body) = if exposition::wants_openmetrics(accept) {
        (exposition::OPENMETRICS, text)
    } else {
        (exposition::TEXT_0_0_4, exposition::to_text_0_0_4(&text))
    };
    ([(axum::http::header::CONTENT_TYPE, kind)], body)
}
