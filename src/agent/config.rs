//! The agent's settings: the command line (`lvchain agent ...`) over the config file (TOML)
//! over the defaults. Resolved once at start-up into [`Settings`].

use crate::domain::burst::BurstSettings;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the agent listens when nothing else is said.
pub const DEFAULT_SOCKET: &str = "/run/lvchain/agent.sock";
/// The config file read when `--config` is not given (only when it exists).
pub const DEFAULT_CONFIG: &str = "/etc/lvchain/agent.toml";
/// Seconds between two periodic collections of a domain.
pub const DEFAULT_GC_INTERVAL: u64 = 600;
/// Seconds SIGTERM waits for in-flight requests and jobs.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 30;
/// The largest request body accepted (bytes): requests are small JSON objects.
pub const BODY_LIMIT: usize = 1 << 20;
/// How long a connection has to send a request's head (request line and headers), from the
/// moment the agent waits for it (at connect, and after each answer on a kept-alive one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body has to arrive once its head has (408 `request_timeout` after).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener (the socket, the metrics address) by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// `lvchain agent`: the command line. Every option overrides the config file's.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// The config file (TOML); default /etc/lvchain/agent.toml when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The unix socket to serve the API on (default /run/lvchain/agent.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// A domain to serve: a VG, or a file domain's absolute path; repeat for several
    /// (default: every lvchain VG visible, and no file domain; when given, exactly these).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// Seconds between periodic gc runs of each served domain (0: none; default 600).
    #[arg(long)]
    pub gc_interval: Option<u64>,
    /// Also serve /metrics on this TCP address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_address: Option<SocketAddr>,
    /// A group whose members may use the socket besides root.
    #[arg(long)]
    pub group: Option<String>,
    /// Seconds SIGTERM waits for in-flight requests and jobs before they fail (default 30).
    #[arg(long)]
    pub shutdown_timeout: Option<u64>,
    /// Seconds without a creation after which the domain lock kept across a burst of
    /// creations is released (default 0.2; 0: every creation takes and releases it).
    #[arg(long)]
    pub burst_idle: Option<f64>,
    /// Seconds a burst holds the lock of a sanlock domain at most at a time (default 5).
    #[arg(long)]
    pub burst_max_hold: Option<f64>,
    /// Seconds between the scans behind the per-domain gauges (default 30; 0: only after gc).
    #[arg(long)]
    pub census_interval: Option<u64>,
    /// Connections served at once on the socket, and on the metrics address (default 64);
    /// past it a connection is answered 503 `too_many_connections`.
    #[arg(long)]
    pub max_connections: Option<usize>,
}

/// The config file. Unknown keys are refused (a typo must not pass silently).
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub domains: Option<Vec<String>>,
    pub gc_interval: Option<u64>,
    pub metrics_address: Option<SocketAddr>,
    pub group: Option<String>,
    pub shutdown_timeout: Option<u64>,
    pub burst_idle: Option<f64>,
    pub burst_max_hold: Option<f64>,
    pub census_interval: Option<u64>,
    pub max_connections: Option<usize>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub socket: PathBuf,
    /// The domains served as configured: VG names and file domains' absolute paths
    /// (normalized: [`super::domains::file_domain_key`]), exactly those; `None`: every lvchain
    /// VG visible on the host (found again at each gc round) and any VG a request names, and
    /// no file domain (a file domain is served only when listed).
    pub domains: Option<Vec<String>>,
    /// `None`: no periodic gc.
    pub gc_interval: Option<Duration>,
    pub metrics_address: Option<SocketAddr>,
    pub group: Option<String>,
    pub shutdown_timeout: Duration,
    /// How creations hold the domain lock across bursts; None: one-shot creations.
    pub burst: Option<BurstSettings>,
    /// How often the gauges' census scans the domains; None: only after each gc run.
    pub census_interval: Option<Duration>,
    /// Connections served at once per listener.
    pub max_connections: usize,
}

impl FileConfig {
    /// Parses a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| {
            Error::InvalidInput(format!("config file {}: {}", path.display(), e.message()))
        })
    }

    /// The file `args` names, or the default one when it exists, or none.
    pub fn load(args: &AgentArgs) -> Result<FileConfig> {
        let path = match &args.config {
            Some(p) => p.clone(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(FileConfig::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(Error::io(format!(
            "reading the config file {}",
            path.display()
        )))?;
        FileConfig::parse(&text, &path)
    }
}

impl Settings {
    /// The command line over the file over the defaults.
    pub fn resolve(args: &AgentArgs, file: FileConfig) -> Result<Settings> {
        let domains = if args.domains.is_empty() {
            file.domains
        } else {
            Some(args.domains.clone())
        };
        let domains = match domains {
            Some(list) => Some(
                list.iter()
                    .map(|d| configured_domain(d))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let gc = args
            .gc_interval
            .or(file.gc_interval)
            .unwrap_or(DEFAULT_GC_INTERVAL);
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=3600.0).contains(&v) {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(Error::InvalidInput(format!(
                    "{name} must be 0 to 3600 seconds, not {v}"
                )))
            }
        };
        let defaults = BurstSettings::default();
        let idle = match args.burst_idle.or(file.burst_idle) {
            Some(v) => seconds("burst_idle", v)?,
            None => defaults.idle,
        };
        let max_hold = match args.burst_max_hold.or(file.burst_max_hold) {
            Some(v) => seconds("burst_max_hold", v)?,
            None => defaults.max_hold,
        };
        let burst = (!idle.is_zero() && !max_hold.is_zero()).then_some(BurstSettings {
            idle,
            max_hold,
            ..defaults
        });
        let census = args
            .census_interval
            .or(file.census_interval)
            .unwrap_or(super::census::SCAN_INTERVAL.as_secs());
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=65536).contains(&max_connections) {
            return Err(Error::InvalidInput(format!(
                "max_connections must be 1 to 65536, not {max_connections}"
            )));
        }
        Ok(Settings {
            max_connections,
            burst,
            census_interval: (census > 0).then(|| Duration::from_secs(census)),
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            domains,
            gc_interval: (gc > 0).then(|| Duration::from_secs(gc)),
            metrics_address: args.metrics_address.or(file.metrics_address),
            group: args.group.clone().or(file.group),
            shutdown_timeout: Duration::from_secs(
                args.shutdown_timeout
                    .or(file.shutdown_timeout)
                    .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            ),
        })
    }
}

/// A configured domain checked: a VG name lvm accepts, or (containing a `/`) a file domain's
/// absolute path without `..`, normalized.
fn configured_domain(d: &str) -> Result<String> {
    if !crate::fsdomain::is_file_domain(d) {
        crate::format::ids::VgName::new(d).map_err(|e| Error::InvalidInput(e.to_string()))?;
        return Ok(d.to_string());
    }
    super::domains::file_domain_key(d).ok_or_else(|| {
        Error::InvalidInput(format!(
            "file domain {d:?}: give an absolute path without `..` components (the agent \
             serves it for requests naming that directory)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_wins_over_the_file_over_the_defaults() {
        let file = FileConfig::parse(
            "socket = \"/tmp/a.sock\"\ndomains = [\"vg1\", \"vg2\"]\ngc_interval = 60\n\
             metrics_address = \"127.0.0.1:9464\"\ngroup = \"kvm\"\n",
            Path::new("t.toml"),
        )
        .expect("parses");
        let args = AgentArgs {
            domains: vec!["vg3".into()],
            gc_interval: Some(0),
            ..Default::default()
        };
        let s = Settings::resolve(&args, file).expect("resolves");
        assert_eq!(s.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(s.domains, Some(vec!["vg3".to_string()]));
        assert_eq!(s.gc_interval, None);
        assert_eq!(s.group.as_deref(), Some("kvm"));
        assert_eq!(s.metrics_address.map(|a| a.port()), Some(9464));
        let d = Settings::resolve(&AgentArgs::default(), FileConfig::default()).expect("ok");
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(d.domains, None);
        assert_eq!(
            d.gc_interval,
            Some(Duration::from_secs(DEFAULT_GC_INTERVAL))
        );
    }

    #[test]
    fn the_connection_bound_is_64_unless_set_and_never_0() {
        let d = Settings::resolve(&AgentArgs::default(), FileConfig::default()).expect("ok");
        assert_eq!(d.max_connections, DEFAULT_MAX_CONNECTIONS);
        let file = FileConfig::parse("max_connections = 8\n", Path::new("t.toml")).expect("parses");
        let args = AgentArgs {
            max_connections: Some(16),
            ..Default::default()
        };
        let s = Settings::resolve(&AgentArgs::default(), file).expect("resolves");
        assert_eq!(s.max_connections, 8);
        let s = Settings::resolve(&args, FileConfig::default()).expect("resolves");
        assert_eq!(s.max_connections, 16);
        let zero = AgentArgs {
            max_connections: Some(0),
            ..Default::default()
        };
        let e = Settings::resolve(&zero, FileConfig::default());
        assert!(
            matches!(e, Err(Error::InvalidInput(ref m)) if m.contains("max_connections")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_names_are_refused() {
        let e = FileConfig::parse("sokcet = \"/x\"\n", Path::new("t.toml"));
        assert!(
            matches!(e, Err(Error::InvalidInput(ref m)) if m.contains("sokcet")),
            "{e:?}"
        );
        let file = FileConfig::parse("domains = [\"bad name\"]\n", Path::new("t.toml"));
        let e = Settings::resolve(&AgentArgs::default(), file.expect("parses"));
        assert!(matches!(e, Err(Error::InvalidInput(_))), "{e:?}");
        for bad in ["srv/dom1", "/srv/../etc", "./dom"] {
            let args = AgentArgs {
                domains: vec![bad.into()],
                ..Default::default()
            };
            let e = Settings::resolve(&args, FileConfig::default());
            assert!(
                matches!(e, Err(Error::InvalidInput(ref m)) if m.contains("absolute")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn file_domains_are_configured_beside_vgs_by_their_normalized_path() {
        let file = FileConfig::parse(
            "domains = [\"vg1\", \"/srv//dom1/./\"]\n",
            Path::new("t.toml"),
        )
        .expect("parses");
        let s = Settings::resolve(&AgentArgs::default(), file).expect("resolves");
        assert_eq!(
            s.domains,
            Some(vec!["vg1".to_string(), "/srv/dom1".to_string()])
        );
    }

    /// The commented default config the Debian package installs as /etc/lvchain/agent.toml.
    const SHIPPED: &str = include_str!("../../dist/agent.toml");

    #[test]
    fn the_shipped_config_changes_nothing_and_documents_every_key_with_its_default() {
        let path = Path::new("dist/agent.toml");
        // As shipped, every setting is commented out.
        assert_eq!(
            FileConfig::parse(SHIPPED, path).expect("parses"),
            FileConfig::default()
        );
        // Uncommented (`#key = value` lines), every key is known and has a valid value...
        let uncommented: String = SHIPPED
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all = FileConfig::parse(&uncommented, path).expect("uncommented, it parses");
        // ...and every key of the file format is there (a new one must be documented).
        let FileConfig {
            socket,
            domains,
            gc_interval,
            metrics_address,
            group,
            shutdown_timeout,
            burst_idle,
            burst_max_hold,
            census_interval,
            max_connections,
        } = &all;
        assert!(socket.is_some() && domains.is_some() && gc_interval.is_some());
        assert!(metrics_address.is_some() && group.is_some() && shutdown_timeout.is_some());
        assert!(burst_idle.is_some() && burst_max_hold.is_some() && census_interval.is_some());
        assert!(max_connections.is_some());
        // The values shown for settings with a default are the defaults (the others are
        // examples: domains, metrics_address, group).
        let shown = Settings::resolve(&AgentArgs::default(), all).expect("resolves");
        let default = Settings::resolve(&AgentArgs::default(), FileConfig::default()).expect("ok");
        assert_eq!(shown.socket, default.socket);
        assert_eq!(shown.gc_interval, default.gc_interval);
        assert_eq!(shown.shutdown_timeout, default.shutdown_timeout);
        assert_eq!(shown.burst, default.burst);
        assert_eq!(shown.census_interval, default.census_interval);
        assert_eq!(shown.max_connections, default.max_connections);
    }
}
