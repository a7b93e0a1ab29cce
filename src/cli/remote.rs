//! The CLI as a client of the host agent: when the agent answers on its socket, a command that
//! has a route is sent to it (HTTP/1.1 + JSON over the unix socket) and its answer is read back
//! into the views of `views.rs`, which the CLI prints exactly as it prints them in-process;
//! an error the agent answers is the engine's message, printed the same way (exit 1).
//!
//! In-process instead (the caller runs the command itself): `--direct`; no socket or nobody
//! listening (quietly, at debug level); a socket that does not answer the probe within
//! [`PROBE_TIMEOUT`] or an agent of another version (a warning; an agent at its connection
//! bound, 503, is probed once more a second later); an environment that sets the
//! in-process engine ([`ENGINE_ENV`]: those settings cannot reach the agent); a command the
//! API has no route for, or whose arguments only this process can read (relative paths, a
//! file domain's included; a VG name that is not one); a domain the agent does not serve
//! (`domain_not_served`: a VG outside its configured ones, a file domain it is not configured
//! for). A file domain is addressed by its path percent-encoded into one path segment.
//! Once a request is sent, the agent owns it: a connection lost then is an error whose outcome
//! is unknown, never a second run in-process.
//! Owns no storage logic and no output format.

use super::views::{MessageView, VolumeView};
use super::{Cli, Command, DomainCmd, ImageCmd, VolumeCmd};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the agent's socket (`--agent-socket` wins).
pub const SOCKET_ENV: &str = "LVCHAIN_AGENT_SOCKET";

/// How long the agent has to answer the probe (connect, request, answer) before the command
/// runs in-process.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a copy job's state is asked for.
const JOB_POLL: Duration = Duration::from_millis(200);

/// Settings of the in-process engine read from the environment: a command run with one of
/// them set runs in-process (the agent has its own environment).
pub const ENGINE_ENV: &[&str] = &[
    "LVCHAIN_DEVICES",
    "LVCHAIN_LVM",
    "LVCHAIN_LVM_TIMEOUT",
    "LVCHAIN_LOCK_TIMEOUT",
    "LVCHAIN_QEMU_IMG",
    "LVCHAIN_COPY_TIMEOUT",
    "LVCHAIN_RUN_DIR",
    "LVCHAIN_CRASH_AT",
    "LVCHAIN_PAUSE_AT",
    "LVCHAIN_PAUSE_FILE",
];

/// A failure of a command sent to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent refused or failed the request; `message` is the engine's, as in-process.
    #[error("{message}")]
    Answered { kind: String, message: String },
    /// The connection failed after the request was sent: the agent may have done it.
    #[error(
        "the agent on {} went away while {what}: {source}; the outcome is unknown",
        socket.display()
    )]
    Lost {
        socket: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// The agent's answer could not be read.
    #[error("the agent on {} answered what this lvchain cannot read: {detail}", socket.display())]
    Garbled { socket: PathBuf, detail: String },
}

/// What the agent made of a command.
pub enum Ran {
    /// The agent ran it (or refused it); the CLI ends with this.
    Done(std::result::Result<(), super::CliError>),
    /// Run it in this process, for this reason.
    InProcess(Here),
}

/// Why a command runs in this process instead of through the agent: said by a refusal that
/// only the agent could have avoided (`image prepare` on a sanlock domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Here {
    /// `--direct` was given.
    Direct,
    /// The API has no route for the command, or its arguments are readable only here.
    NoRoute,
    /// The environment sets these settings of the in-process engine ([`ENGINE_ENV`]).
    EngineEnv(Vec<&'static str>),
    /// No agent (of this version) answered the probe on this socket.
    NoAgent(PathBuf),
    /// The agent does not serve the command's domain.
    NotServed,
}

impl std::fmt::Display for Here {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Here::Direct => write!(f, "--direct was given"),
            Here::NoRoute => write!(
                f,
                "its arguments can be read only by this process (a relative path, or a \
                 domain name lvm refuses)"
            ),
            Here::EngineEnv(vars) => {
                let (verb, pronoun) = if vars.len() == 1 {
                    ("is", "it")
                } else {
                    ("are", "them")
                };
                write!(
                    f,
                    "{} {verb} set in the environment: settings of the in-process engine, \
                     which the agent does not take; unset {pronoun} to go through the agent",
                    vars.join(", ")
                )
            }
            Here::NoAgent(socket) => write!(
                f,
                "no agent of this version answered the probe on {} (when one listens there, \
                 a warning above says why)",
                socket.display()
            ),
            Here::NotServed => write!(f, "the agent does not serve this domain"),
        }
    }
}

/// The [`ENGINE_ENV`] variables set, as `is_set` tells.
fn engine_env_set(is_set: impl Fn(&str) -> bool) -> Vec<&'static str> {
    ENGINE_ENV.iter().copied().filter(|v| is_set(v)).collect()
}

/// The socket the CLI talks to: `--agent-socket`, else `$LVCHAIN_AGENT_SOCKET`, else the
/// agent's default.
pub fn socket(cli: &Cli) -> PathBuf {
    cli.agent_socket
        .clone()
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::agent::config::DEFAULT_SOCKET))
}

/// How the agent's answer is printed: which view it is, and which of the CLI's printers.
enum Show {
    Created,
    Volume,
    Volumes,
    Prepared,
    DomainCreated,
    DomainInfo,
    Check,
    Gc,
    Status,
    Message,
    /// A copy: the answer is a job, whose result is a volume.
    CopyJob,
}

/// One request to the agent.
struct Plan {
    method: &'static str,
    path: String,
    body: Option<Value>,
    show: Show,
}

/// A request; the body's fields without a value (`null`: an option not given) are left out,
/// as the API reads an absent field, never a `null` one.
fn plan(method: &'static str, path: String, body: Option<Value>, show: Show) -> Option<Plan> {
    let body = body.map(|mut b| {
        if let Value::Object(fields) = &mut b {
            fields.retain(|_, v| !v.is_null());
        }
        b
    });
    Some(Plan {
        method,
        path,
        body,
        show,
    })
}

/// The API path of a domain: a VG name as it is, a file domain's path percent-encoded into
/// one segment (`/v1/domains/%2Fsrv%2Fdom1`); None for a name the agent cannot be asked about
/// (the command runs in-process, which refuses a bad VG name with the engine's message): a
/// name lvm refuses, a relative path (it names a directory of this process's).
fn domain_path(vg: &str) -> Option<String> {
    if crate::fsdomain::is_file_domain(vg) {
        return vg
            .starts_with('/')
            .then(|| format!("/v1/domains/{}", encode_segment(vg)));
    }
    crate::format::ids::VgName::new(vg)
        .is_ok()
        .then(|| format!("/v1/domains/{vg}"))
}

/// `s` as one URL path segment: every byte but the unreserved ones (RFC 3986) percent-encoded.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request for a command, or None: no route, or arguments only this process can read.
fn request(cmd: &Command) -> Option<Plan> {
    let vg_of = domain_path;
    match cmd {
        Command::Domain(c) => match c {
            DomainCmd::Create {
                vg,
                pvs,
                max_volumes,
                lock_manager,
                wipe,
                ..
            } => {
                vg_of(vg.as_deref()?)?;
                let mut paths = Vec::new();
                for p in pvs {
                    // A relative path names a file in this process's directory.
                    paths.push(p.is_absolute().then(|| p.to_str())??);
                }
                plan(
                    "POST",
                    "/v1/domains".into(),
                    Some(json!({
                        "vg": vg, "pvs": paths, "max_volumes": max_volumes,
                        "lock_manager": lock_manager.to_string(), "wipe": wipe.to_string(),
                    })),
                    Show::DomainCreated,
                )
            }
            DomainCmd::Info { vg } => plan("GET", vg_of(vg)?, None, Show::DomainInfo),
            DomainCmd::Set { vg, wipe } => plan(
                "PATCH",
                vg_of(vg)?,
                Some(json!({ "wipe": wipe.to_string() })),
                Show::Message,
            ),
            DomainCmd::Check { vg } => {
                plan("GET", format!("{}/check", vg_of(vg)?), None, Show::Check)
            }
            DomainCmd::Remove { vg, force } => plan(
                "DELETE",
                format!("{}?force={force}", vg_of(vg)?),
                None,
                Show::Message,
            ),
        },
        Command::Volume(c) => match c {
            VolumeCmd::Create {
                vg,
                image,
                size,
                format,
                parent,
                id,
                description,
                wipe,
            } => plan(
                "POST",
                format!("{}/volumes", vg_of(vg)?),
                Some(json!({
                    "image": image, "size": size.map(|s| s.0),
                    "format": format.map(|f| f.to_string()), "parent": parent, "id": id,
                    "description": description, "wipe": wipe.map(|w| w.to_string()),
                })),
                Show::Created,
            ),
            VolumeCmd::List { vg, image } => {
                let query = image.map(|i| format!("?image={i}")).unwrap_or_default();
                plan(
                    "GET",
                    format!("{}/volumes{query}", vg_of(vg)?),
                    None,
                    Show::Volumes,
                )
            }
            VolumeCmd::Info { vg, volume } => plan(
                "GET",
                format!("{}/volumes/{volume}", vg_of(vg)?),
                None,
                Show::Volume,
            ),
            VolumeCmd::Remove { vg, volume } => plan(
                "DELETE",
                format!("{}/volumes/{volume}", vg_of(vg)?),
                None,
                Show::Message,
            ),
            VolumeCmd::Extend {
                vg,
                volume,
                size,
                generation,
            } => plan(
                "POST",
                format!("{}/volumes/{volume}/extend", vg_of(vg)?),
                Some(json!({ "size": size.0, "generation": generation.map(|g| g.get()) })),
                Show::Volume,
            ),
            VolumeCmd::Copy {
                vg,
                volume,
                from,
                from_format,
                generation,
            } => {
                let path = PathBuf::from(from);
                // The same choice the in-process command makes (see `run`).
                let source = match from.parse::<crate::format::ids::VolumeId>() {
                    Ok(id) if !path.exists() => json!({ "from_volume": id }),
                    _ if path.is_absolute() => json!({
                        "from_file": path.to_str()?, "from_format": from_format.to_string(),
                    }),
                    // A relative path names a file in this process's directory.
                    _ => return None,
                };
                let mut body = source;
                body["generation"] = json!(generation.get());
                plan(
                    "POST",
                    format!("{}/volumes/{volume}/copy", vg_of(vg)?),
                    Some(body),
                    Show::CopyJob,
                )
            }
            VolumeCmd::Update {
                vg,
                volume,
                generation,
                description,
                legality,
            } => plan(
                "POST",
                format!("{}/volumes/{volume}/update", vg_of(vg)?),
                Some(json!({
                    "generation": generation.get(), "description": description,
                    "legality": legality.map(|l| l.to_string()),
                })),
                Show::Volume,
            ),
            VolumeCmd::Status {
                vg,
                volume,
                generation,
            } => plan(
                "GET",
                format!(
                    "{}/volumes/{volume}/status?generation={}",
                    vg_of(vg)?,
                    generation.get()
                ),
                None,
                Show::Status,
            ),
            VolumeCmd::Fence {
                vg,
                volume,
                generation,
            } => plan(
                "POST",
                format!("{}/volumes/{volume}/fence", vg_of(vg)?),
                Some(json!({ "generation": generation.get() })),
                Show::Volume,
            ),
        },
        Command::Image(c) => match c {
            ImageCmd::Chain { vg, image } => plan(
                "GET",
                format!("{}/images/{image}", vg_of(vg)?),
                None,
                Show::Volumes,
            ),
            // The agent holds the prepared image's leases: through it, no override is needed.
            ImageCmd::Prepare {
                vg,
                image,
                allow_illegal,
                without_agent: _,
                vm_lease,
            } => plan(
                "POST",
                format!("{}/images/{image}/prepare", vg_of(vg)?),
                Some(json!({ "allow_illegal": allow_illegal, "vm_lease": vm_lease })),
                Show::Prepared,
            ),
            ImageCmd::Teardown { vg, image } => plan(
                "POST",
                format!("{}/images/{image}/teardown", vg_of(vg)?),
                None,
                Show::Message,
            ),
            // Reads the chain and prints its paths: the same in-process on any host.
            ImageCmd::Xml { .. } => None,
            ImageCmd::Remove { vg, image } => plan(
                "DELETE",
                format!("{}/images/{image}", vg_of(vg)?),
                None,
                Show::Message,
            ),
        },
        Command::Gc { vg, dry_run } => plan(
            "POST",
            format!("{}/gc", vg_of(vg)?),
            Some(json!({ "dry_run": dry_run })),
            Show::Gc,
        ),
        Command::Host(_) | Command::Agent(_) | Command::Debug(_) => None,
    }
}

/// Runs `cli`'s command through the agent when it can (see the module doc).
pub fn run(cli: &Cli, out: &super::output::Out) -> Ran {
    if cli.direct {
        return Ran::InProcess(Here::Direct);
    }
    let Some(plan) = request(&cli.command) else {
        tracing::debug!("no agent route for this command: in-process");
        return Ran::InProcess(Here::NoRoute);
    };
    let set = engine_env_set(|v| std::env::var_os(v).is_some());
    if !set.is_empty() {
        tracing::debug!("{} set: in-process", set.join(", "));
        return Ran::InProcess(Here::EngineEnv(set));
    }
    let agent = Agent {
        socket: socket(cli),
        show_progress: super::tty(cli),
    };
    if !agent.answers() {
        return Ran::InProcess(Here::NoAgent(agent.socket));
    }
    match agent.perform(&plan, out) {
        Err(super::CliError::Agent(AgentError::Answered { kind, .. }))
            if kind == "domain_not_served" =>
        {
            tracing::debug!("the agent does not serve this domain: in-process");
            Ran::InProcess(Here::NotServed)
        }
        r => Ran::Done(r),
    }
}

/// The agent's error body.
#[derive(Deserialize)]
struct ErrorBody {
    kind: String,
    message: String,
}

/// Whether an error body is the agent's refusal at its connection bound.
fn at_connection_bound(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|e| e.kind == "too_many_connections")
}

/// A job as the CLI reads it.
#[derive(Deserialize)]
struct Job {
    id: uuid::Uuid,
    state: String,
    result: Option<Value>,
    error: Option<ErrorBody>,
    #[serde(default)]
    progress: Option<crate::progress::Progress>,
}

/// `GET /v1/agent`.
#[derive(Deserialize)]
struct About {
    version: String,
}

struct Agent {
    socket: PathBuf,
    /// Show a job's progress on stderr as the in-process command does.
    show_progress: bool,
}

impl Agent {
    /// Whether the agent answers the probe (logged why not).
    fn answers(&self) -> bool {
        let s = self.socket.display();
        let probe = || exchange(&self.socket, "GET", "/v1/agent", None, Some(PROBE_TIMEOUT));
        let mut answer = probe();
        // At its connection bound the agent refuses at once; a connection that has waited
        // longer than the grace for its request then gives way (`agent::server`): one more
        // probe past the grace is answered unless every connection is busy.
        if matches!(&answer, Ok((503, body)) if at_connection_bound(body)) {
            tracing::debug!("the agent on {s} is at its connection bound: probing once more");
            std::thread::sleep(crate::agent::server::WAITING_GRACE + Duration::from_millis(100));
            answer = probe();
        }
        match answer {
            Err(Exchange::Connect(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                tracing::debug!("no agent on {s} ({e}): in-process");
                false
            }
            Err(e) => {
                tracing::warn!("the agent on {s} does not answer ({e}): running in this process");
                false
            }
            Ok((200, body)) => match serde_json::from_slice::<About>(&body) {
                Ok(a) if a.version == env!("CARGO_PKG_VERSION") => true,
                Ok(a) => {
                    tracing::warn!(
                        "the agent on {s} is version {} (this lvchain: {}): running in this process",
                        a.version,
                        env!("CARGO_PKG_VERSION")
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(
                        "the agent on {s} answered the probe with {e}: running in this process"
                    );
                    false
                }
            },
            Ok((status, _)) => {
                tracing::warn!(
                    "the agent on {s} answered the probe with {status}: running in this process"
                );
                false
            }
        }
    }

    /// One request whose answer is `T` (2xx) or the agent's error.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, AgentError> {
        tracing::debug!(method, path, "request to the agent");
        let (status, bytes) =
            exchange(&self.socket, method, path, body, None).map_err(|e| AgentError::Lost {
                socket: self.socket.clone(),
                what: format!("answering {method} {path}"),
                source: e.into_io(),
            })?;
        let garbled = |detail: String| AgentError::Garbled {
            socket: self.socket.clone(),
            detail,
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| garbled(format!("{method} {path}: {status} {e}")));
        }
        let e: ErrorBody = serde_json::from_slice(&bytes).map_err(|e| {
            garbled(format!(
                "{method} {path}: {status} {e}: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        Err(AgentError::Answered {
            kind: e.kind,
            message: e.message,
        })
    }

    /// Sends the command and prints its answer with the CLI's printers.
    fn perform(&self, p: &Plan, out: &super::output::Out) -> Result<(), super::CliError> {
        let v: Value = self.call(p.method, &p.path, p.body.as_ref())?;
        match p.show {
            Show::Created => out.created(&self.view(v)?)?,
            Show::Volume => out.volume(&self.view(v)?)?,
            Show::Volumes => out.volumes(&self.view::<Vec<VolumeView>>(v)?)?,
            Show::Prepared => out.prepared(&self.view(v)?)?,
            Show::DomainCreated => out.domain_created(&self.view(v)?)?,
            Show::DomainInfo => out.domain_info(&self.view(v)?)?,
            Show::Check => super::show_check(out, &self.view(v)?)?,
            Show::Gc => super::show_gc(out, &self.view(v)?)?,
            Show::Status => out.status(&self.view(v)?)?,
            Show::Message => out.message(&self.view::<MessageView>(v)?.result)?,
            Show::CopyJob => {
                let mut line = super::ProgressLine::default();
                let result = self.wait(self.view(v)?, &mut |p| {
                    if self.show_progress {
                        line.show(p)
                    }
                });
                line.end();
                out.volume(&self.view(result?)?)?
            }
        }
        Ok(())
    }

    /// An answer read as the view `T`.
    fn view<T: DeserializeOwned>(&self, v: Value) -> Result<T, AgentError> {
        serde_json::from_value(v).map_err(|e| AgentError::Garbled {
            socket: self.socket.clone(),
            detail: e.to_string(),
        })
    }

    /// Waits for a job to end, handing its progress to `progress` as it changes; its result,
    /// or its error.
    fn wait(
        &self,
        mut job: Job,
        progress: &mut dyn FnMut(crate::progress::Progress),
    ) -> Result<Value, AgentError> {
        let path = format!("/v1/jobs/{}", job.id);
        loop {
            if let Some(p) = job.progress {
                progress(p);
            }
            match job.state.as_str() {
                "running" => {}
                "succeeded" => {
                    return job.result.ok_or_else(|| AgentError::Garbled {
                        socket: self.socket.clone(),
                        detail: format!("job {} succeeded without a result", job.id),
                    })
                }
                _ => {
                    let e = job.error.unwrap_or(ErrorBody {
                        kind: "internal".into(),
                        message: format!("job {} failed", job.id),
                    });
                    return Err(AgentError::Answered {
                        kind: e.kind,
                        message: e.message,
                    });
                }
            }
            std::thread::sleep(JOB_POLL);
            job = self.call("GET", &path, None)?;
        }
    }
}

/// Why an exchange failed: connecting (nothing was sent), or afterwards.
#[derive(Debug)]
enum Exchange {
    Connect(std::io::Error),
    Io(std::io::Error),
    Malformed(String),
}

impl Exchange {
    fn into_io(self) -> std::io::Error {
        match self {
            Exchange::Connect(e) | Exchange::Io(e) => e,
            Exchange::Malformed(m) => std::io::Error::new(std::io::ErrorKind::InvalidData, m),
        }
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::Connect(e) => write!(f, "connecting: {e}"),
            Exchange::Io(e) => write!(f, "{e}"),
            Exchange::Malformed(m) => write!(f, "{m}"),
        }
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`): the status and the body.
/// `bound` limits every read and write (None: the answer may take as long as the work).
fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bound: Option<Duration>,
) -> Result<(u16, Vec<u8>), Exchange> {
    let mut s = UnixStream::connect(socket).map_err(Exchange::Connect)?;
    s.set_read_timeout(bound).map_err(Exchange::Io)?;
    s.set_write_timeout(bound).map_err(Exchange::Io)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: lvchain-agent\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()))
        .map_err(Exchange::Io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(Exchange::Io)?;
    parse_response(&raw).map_err(Exchange::Malformed)
}

/// The status and body of a complete HTTP/1.1 response (Content-Length, chunked, or up to
/// the end of the connection).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("the answer ends after {} of {n} bytes", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size")?;
        let text = String::from_utf8_lossy(&rest[..eol]);
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let data = rest
            .get(eol + 2..eol + 2 + size)
            .ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(data);
        rest = rest
            .get(eol + 2 + size + 2..)
            .ok_or("a chunk without its end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_domain_is_one_percent_encoded_segment_and_a_relative_one_stays_here() {
        assert_eq!(
            domain_path("/srv/dom 1").as_deref(),
            Some("/v1/domains/%2Fsrv%2Fdom%201")
        );
        assert_eq!(domain_path("vg0").as_deref(), Some("/v1/domains/vg0"));
        assert_eq!(domain_path("srv/dom1"), None);
        assert_eq!(domain_path("./dom1"), None);
        assert_eq!(domain_path("bad name"), None);
    }

    #[test]
    fn options_not_given_are_left_out_of_the_body() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "lvchain",
            "volume",
            "create",
            "vg0",
            "--image",
            "6f1b8c1e-0a4e-4c55-9a57-1c0de0000001",
            "--size",
            "1M",
        ]);
        let plan = cli.ok().and_then(|c| request(&c.command));
        let body = plan.and_then(|p| p.body).unwrap_or_default();
        let keys: Vec<&String> = body
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["description", "image", "size"], "{body}");
    }

    #[test]
    fn answers_are_read_with_a_length_chunked_or_to_the_end() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\n{}xx";
        assert_eq!(parse_response(plain), Ok((201, b"{}xx".to_vec())));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((200, b"abcde".to_vec())));
        let to_end = b"HTTP/1.1 404 Not Found\r\n\r\n{\"kind\":\"x\"}";
        assert_eq!(parse_response(to_end).map(|r| r.0), Ok(404));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn the_engine_variables_that_keep_the_cli_here_are_named() {
        let set = engine_env_set(|v| v == "LVCHAIN_DEVICES" || v == "LVCHAIN_LVM");
        assert_eq!(set, ["LVCHAIN_DEVICES", "LVCHAIN_LVM"]);
        assert!(engine_env_set(|_| false).is_empty());
        let one = Here::EngineEnv(vec!["LVCHAIN_DEVICES"]).to_string();
        assert!(
            one.starts_with("LVCHAIN_DEVICES is set") && one.contains("unset it"),
            "{one}"
        );
        let two = Here::EngineEnv(set).to_string();
        assert!(
            two.starts_with("LVCHAIN_DEVICES, LVCHAIN_LVM are set"),
            "{two}"
        );
    }

    /// Every `LVCHAIN_*` variable the engine reads is one that keeps the CLI in-process: a new
    /// one must be added to [`ENGINE_ENV`] (or the agent would silently ignore it).
    #[test]
    fn every_engine_environment_variable_keeps_the_cli_in_process() {
        let re = regex::Regex::new(r#""(LVCHAIN_[A-Z_]+)""#).unwrap_or_else(|e| panic!("{e}"));
        let mut missing = Vec::new();
        let mut dirs = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    for c in re.captures_iter(&text) {
                        let name = &c[1];
                        if name != SOCKET_ENV && !ENGINE_ENV.contains(&name) {
                            missing.push(format!("{}: {name}", p.display()));
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "not in ENGINE_ENV: {missing:#?}");
    }
}
