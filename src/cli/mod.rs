//! The admin CLI: argument parsing (clap), dispatch, and output (tables or `--json`).
//!
//! Exit status: 0 success, 1 failure (one message on stderr), 2 bad usage (clap).
//! Owns no storage logic: a command is sent to the host agent when it answers (`remote.rs`),
//! else it calls the library in this process; both print the same views the same way.

pub mod docs;
pub mod libvirt;
mod output;
pub mod remote;
pub mod views;

use crate::domain::{Domain, FormatRequest};
use crate::error::{Error, Result};
use crate::format::ids::{Generation, ImageId, VgName, VolumeId};
use crate::lock::LockKind;
use crate::lvm::{Lvm, LvmConfig};
use crate::metadata::{Format, Legality};
use crate::operation::{self, Source};
use crate::progress::{Progress, ProgressSink};
use crate::tags::Wipe;
use crate::units::{parse_size, Bytes};
use crate::volume::CreateRequest;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "lvchain",
    version,
    about = "VM disk-image volumes and qcow2 chains on a shared LVM volume group"
)]
pub struct Cli {
    /// Machine-readable JSON output (stable field names).
    #[arg(long, global = true)]
    pub json: bool,
    /// Log every LVM command (debug level) to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Run the command in this process even when the host agent answers on its socket.
    #[arg(long, global = true)]
    pub direct: bool,
    /// The host agent's socket (default: $LVCHAIN_AGENT_SOCKET, else /run/lvchain/agent.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Storage domains (one VG each).
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Volumes (one LV each).
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Images (chains of volumes).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Collect orphans: roll back creations and complete removals that died.
    Gc {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// List what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// This host's membership of sanlock domains.
    #[command(subcommand)]
    Host(HostCmd),
    /// Run the host agent: the API (HTTP/1.1 + JSON) on a unix socket, jobs, periodic gc,
    /// metrics (until SIGTERM).
    Agent(crate::agent::AgentArgs),
    /// Testing and packaging aids.
    #[command(subcommand)]
    Debug(DebugCmd),
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Join the domain's sanlock lockspace with a host id unique among the hosts.
    Join {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// This host's id in the lockspace (1 to 2000, unique among the hosts).
        #[arg(long)]
        host_id: u64,
    },
    /// Leave the domain's lockspace (refused while this host holds leases in it).
    Leave {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
    },
}

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Format a VG as a domain (creating it on PVs, or adopting an empty VG), or a directory
    /// as a file domain (--path, or a VG argument containing a `/`).
    Create {
        /// The volume group to create (or an existing empty one to adopt).
        #[arg(required_unless_present = "path")]
        vg: Option<VgName>,
        /// Format this directory (empty, on any POSIX file system: NFS in production) as a
        /// file domain; commands then take the path as their domain argument.
        #[arg(long, conflicts_with = "vg")]
        path: Option<PathBuf>,
        /// Physical volumes (devices) of a new VG; none to adopt an existing VG.
        pvs: Vec<PathBuf>,
        /// Metadata slots and leases to reserve.
        #[arg(long, default_value_t = 2048)]
        max_volumes: u32,
        /// Lock manager: local (single host) or sanlock.
        #[arg(long, default_value = "local", value_parser = parse_lock_kind)]
        lock_manager: LockKind,
        /// What removing a volume does with its data: zero (overwrite it with zeroes before
        /// its space is freed, so no later volume reads it) or none (leave it). A volume
        /// created with its own --wipe keeps that.
        #[arg(long, value_parser = parse_wipe, default_value = "zero")]
        wipe: Wipe,
    },
    /// Show a domain's layout, settings and counts.
    Info {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
    },
    /// Change a domain's settings (under the domain lock).
    Set {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// What removing a volume does with its data from now on: zero or none (volumes
        /// created with their own --wipe keep theirs).
        #[arg(long, value_parser = parse_wipe)]
        wipe: Wipe,
    },
    /// Read-only consistency report (exit status 0 only when clean).
    Check {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
    },
    /// Remove a domain (its VG); refuses while volumes exist unless --force.
    Remove {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// Remove the domain's volumes too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a base volume (--image) or a snapshot of a leaf (--parent); prints the new id.
    Create {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// Image (UUID) of a new base volume; a snapshot takes its parent's.
        #[arg(long)]
        image: Option<ImageId>,
        /// Capacity, e.g. 512M or 10G (a snapshot defaults to its parent's).
        #[arg(long, value_parser = parse_bytes)]
        size: Option<Bytes>,
        /// Volume format: raw or qcow2 (a base defaults to raw, a snapshot is qcow2).
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        /// Make a qcow2 snapshot of this leaf volume (UUID).
        #[arg(long)]
        parent: Option<VolumeId>,
        /// The new volume's id (UUID); a random one by default.
        #[arg(long)]
        id: Option<VolumeId>,
        /// Free text kept in the volume's metadata.
        #[arg(long, default_value = "")]
        description: String,
        /// What removing this volume does with its data, whatever the domain's setting:
        /// zero (overwrite it with zeroes before its space is freed) or none (leave it).
        /// Default: the domain's setting at removal time (`domain info`).
        #[arg(long, value_parser = parse_wipe)]
        wipe: Option<Wipe>,
    },
    /// List committed volumes (never those with a transaction marker).
    List {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// Only the volumes of this image (UUID).
        #[arg(long)]
        image: Option<ImageId>,
    },
    /// Show one volume.
    Info {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
    },
    /// Remove a leaf volume; its parent becomes the leaf.
    Remove {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
    },
    /// Grow a volume (LV, qcow2 virtual size, metadata capacity); with --generation, under
    /// the lease/generation protocol.
    Extend {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
        /// The new capacity, e.g. 20G (not smaller than the current one).
        #[arg(long, value_parser = parse_bytes)]
        size: Bytes,
        /// Run under the lease/generation protocol, expecting the volume at this generation.
        #[arg(long, value_parser = parse_generation)]
        generation: Option<Generation>,
    },
    /// Copy data into a volume (qemu-img convert; a FIFO is streamed) under its lease.
    Copy {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
        /// A file, device or FIFO, or the id of a volume of this domain.
        #[arg(long)]
        from: String,
        /// How to read a file source: raw (its bytes) or qcow2 (self-contained: a backing or
        /// data file is refused). Never guessed; a volume source is read in its own format.
        #[arg(long, value_parser = parse_format, default_value = "raw")]
        from_format: Format,
        /// The volume's current generation (the copy refuses any other).
        #[arg(long, value_parser = parse_generation)]
        generation: Generation,
    },
    /// Change a volume's description or legality under its lease.
    Update {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
        /// The volume's current generation (the update refuses any other).
        #[arg(long, value_parser = parse_generation)]
        generation: Generation,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
        /// The legality the volume ends with: legal or illegal (default legal).
        #[arg(long, value_parser = parse_legality)]
        legality: Option<Legality>,
    },
    /// Status of the operation started at --generation, read from shared storage only.
    Status {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
        /// The generation the operation was started at.
        #[arg(long, value_parser = parse_any_generation)]
        generation: Generation,
    },
    /// Move the generation from N to N+3 under the lease so a late runner refuses to write.
    Fence {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The volume (UUID).
        volume: VolumeId,
        /// The generation of the operation to fence (the volume's current one).
        #[arg(long, value_parser = parse_generation)]
        generation: Generation,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Show the chain of an image, base first.
    Chain {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The image (UUID).
        image: ImageId,
    },
    /// Activate the chain and create its links under /run/lvchain/VG/IMAGE (refused while a
    /// volume of the chain is illegal).
    Prepare {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The image (UUID).
        image: ImageId,
        /// Prepare even a chain with an illegal volume (partial data), for recovery work.
        #[arg(long)]
        allow_illegal: bool,
        /// Prepare in this process although the domain is shared by hosts (sanlock), for
        /// recovery work: no shared leases are held, so other hosts are NOT kept from removing
        /// or changing the chain while it is in use (normally the host agent prepares).
        #[arg(long)]
        without_agent: bool,
        /// Leave the leaf's lease to the VM's lock manager: the agent holds the shared leases
        /// of the other members only, and libvirt's sanlock plugin holds the leaf's
        /// exclusively while the VM runs (`image xml --lease` prints its `<lease>`). Sanlock
        /// domains only.
        #[arg(long)]
        vm_lease: bool,
    },
    /// Print the libvirt XML of an image prepared on this host: the `<disk>` element (the
    /// leaf's path, a `<backingStore>` per member with its format and path), or with --lease
    /// the `<lease>` element of the leaf (sanlock domains). Each goes under the libvirt
    /// domain's `<devices>` (`virsh attach-device VM FILE`). Reads only.
    Xml {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The image (UUID).
        image: ImageId,
        /// The guest's name of the disk (`<target dev=>`).
        #[arg(long, default_value = "vda")]
        target: String,
        /// The bus the guest sees the disk on (`<target bus=>`: virtio, scsi, sata, ...).
        #[arg(long, default_value = "virtio")]
        bus: String,
        /// Print the leaf's `<lease>` instead (lockspace, key, target path and offset), for
        /// libvirt's sanlock plugin to hold while the VM runs; the image must then be
        /// prepared with --vm-lease.
        #[arg(long)]
        lease: bool,
    },
    /// Remove the links and deactivate the chain.
    Teardown {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The image (UUID).
        image: ImageId,
    },
    /// Remove every volume of the image.
    Remove {
        /// The domain: its volume group, or a file domain's directory (any argument with a `/`).
        vg: VgName,
        /// The image (UUID).
        image: ImageId,
    },
}

#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// List the crash points that LVCHAIN_CRASH_AT accepts (a testing aid).
    CrashPoints,
    /// Write the manual pages (lvchain.1, one per subcommand: lvchain-volume-create.1, ...)
    /// generated from this command line's definitions; prints the files written.
    #[command(hide = true)]
    Man {
        /// The directory to write the pages into (made when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the shell completion script of lvchain for SHELL.
    #[command(hide = true)]
    Completions {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        #[arg(value_enum)]
        shell: docs::Shell,
    },
}

/// A volume size (checked as the engine checks every client's).
fn parse_bytes(s: &str) -> std::result::Result<Bytes, String> {
    let size = parse_size(s)?;
    crate::engine::volume::check_size(size)?;
    Ok(size)
}

/// A generation an operation can start at (its end, or a fence, must still count).
fn parse_generation(s: &str) -> std::result::Result<Generation, String> {
    let g = parse_any_generation(s)?;
    operation::check_generation(g).map_err(|e| e.to_string())?;
    Ok(g)
}

/// Any generation (a status may be asked of any).
fn parse_any_generation(s: &str) -> std::result::Result<Generation, String> {
    s.parse()
        .map(Generation::new)
        .map_err(|_| format!("{s:?} is not a generation (a whole number)"))
}

fn parse_legality(s: &str) -> std::result::Result<Legality, String> {
    s.parse()
}

fn parse_format(s: &str) -> std::result::Result<Format, String> {
    s.parse()
}

fn parse_wipe(s: &str) -> std::result::Result<Wipe, String> {
    s.parse()
}

/// Shows the progress of a wipe on stderr when `enabled` (stderr is a terminal, no --json),
/// once the wipe has run for a second (short wipes print nothing).
fn wipe_progress(enabled: bool) -> impl FnMut(&str, u64, u64) {
    let mut started = std::time::Instant::now();
    let mut shown = false;
    move |lv, done, total| {
        if !enabled {
            return;
        }
        if done == 0 {
            started = std::time::Instant::now();
            shown = false;
            return;
        }
        if shown || started.elapsed() >= std::time::Duration::from_secs(1) {
            let pct = done.saturating_mul(100) / total.max(1);
            eprint!(
                "\rwiping {lv}: {} of {} ({pct}%)",
                Bytes(done),
                Bytes(total)
            );
            shown = true;
            if done >= total {
                eprintln!();
            }
        }
    }
}

/// A copy's progress on stderr, as `qemu-img convert -p` shows it (`    (12.34/100%)`, each
/// line over the one before, a newline at the end); a stream's bytes while its total is
/// unknown. The same from the in-process engine's reports as from an agent's job.
#[derive(Default)]
pub(crate) struct ProgressLine {
    /// The line shown last.
    last: Option<String>,
}

impl ProgressLine {
    pub(crate) fn show(&mut self, p: Progress) {
        let line = match (p.percent, p.bytes) {
            (Some(percent), _) => format!("    ({percent:.2}/100%)"),
            (None, Some(bytes)) => format!("    ({} copied)", Bytes(bytes)),
            (None, None) => return,
        };
        if self.last.as_ref() == Some(&line) {
            return;
        }
        // Spaces over what is left of a longer line before it.
        let width = self.last.as_ref().map_or(0, String::len);
        eprint!("{line:<width$}\r");
        self.last = Some(line);
    }

    /// Ends the line, when one was shown.
    pub(crate) fn end(&mut self) {
        if self.last.take().is_some() {
            eprintln!();
        }
    }

    fn lock(line: &std::sync::Mutex<ProgressLine>) -> std::sync::MutexGuard<'_, ProgressLine> {
        line.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The domain `vg`: its lock manager is the one its `LVC_LOCK` tag names.
fn domain(vg: &VgName) -> Result<Domain> {
    let lvm = Lvm::new(LvmConfig::from_env()?);
    Ok(Domain::new(vg.clone(), std::sync::Arc::new(lvm)))
}

/// The domain argument naming the directory `path` (given a `/` where it had none, so every
/// later command recognizes it as a file domain).
fn file_domain_arg(path: &std::path::Path) -> Result<VgName> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not UTF-8", path.display())))?;
    let s = if s.contains('/') {
        s.to_string()
    } else {
        format!("./{s}")
    };
    VgName::file_domain(&s).ok_or_else(|| Error::InvalidInput(format!("bad path {s:?}")))
}

fn parse_lock_kind(s: &str) -> std::result::Result<LockKind, String> {
    s.parse()
        .map_err(|e: crate::lock::UnknownLockKind| e.to_string())
}

/// Whether progress may go to stderr: a terminal, and no --json.
fn tty(cli: &Cli) -> bool {
    !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// How a command fails: the engine's error (in-process), or the agent's answer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] Error),
    #[error(transparent)]
    Agent(#[from] remote::AgentError),
    /// Refused in this process where only the agent could have done it (`image prepare` on a
    /// sanlock domain); `why` says what kept the command from the agent.
    #[error("{source} (this command ran in this process, not through the agent: {why})")]
    NeedsAgent {
        source: Box<Error>,
        why: remote::Here,
    },
}

impl CliError {
    /// An error of the command run in this process because of `why`.
    pub fn in_process(e: Error, why: remote::Here) -> CliError {
        match e {
            Error::NeedsAgent { .. } => CliError::NeedsAgent {
                source: Box::new(e),
                why,
            },
            e => CliError::Engine(e),
        }
    }

    /// The reader of the output went away: the work is done, the CLI ends quietly.
    pub fn is_output_closed(&self) -> bool {
        matches!(self, CliError::Engine(Error::OutputClosed))
    }
}

/// Prints a consistency report; an unclean domain is the command's failure.
fn show_check(out: &output::Out, report: &views::CheckView) -> Result<()> {
    out.check(report)?;
    if report.clean {
        Ok(())
    } else {
        Err(Error::Unclean {
            vg: report.vg.clone(),
            problems: report.problems.len(),
        })
    }
}

/// Prints a collector's report; an orphan it could not collect is the command's failure.
fn show_gc(out: &output::Out, report: &views::GcView) -> Result<()> {
    out.gc(report)?;
    match report.orphans.iter().filter(|o| o.error.is_some()).count() {
        0 => Ok(()),
        failed => Err(Error::InvalidInput(format!(
            "{failed} orphan(s) could not be collected; see the report"
        ))),
    }
}

/// Runs a parsed command line, through the agent or in this process; prints its output.
pub fn run(cli: &Cli) -> std::result::Result<(), CliError> {
    let out = output::Out::stdout(cli.json);
    match remote::run(cli, &out) {
        remote::Ran::Done(r) => r,
        remote::Ran::InProcess(why) => {
            run_here(cli, &out).map_err(|e| CliError::in_process(e, why))
        }
    }
}

/// Runs a command in this process.
fn run_here(cli: &Cli, out: &output::Out) -> Result<()> {
    use views::{CheckView, DomainInfoView, DomainSummaryView, GcView, PreparedView};
    use views::{StatusView, VolumeView};
    match &cli.command {
        Command::Domain(c) => match c {
            DomainCmd::Create {
                vg,
                path,
                pvs,
                max_volumes,
                lock_manager,
                wipe,
            } => {
                let vg = match (vg, path) {
                    (_, Some(p)) => file_domain_arg(p)?,
                    (Some(vg), None) => vg.clone(),
                    (None, None) => return Err(Error::InvalidInput("a VG or --path".into())),
                };
                let info = domain(&vg)?.format(&FormatRequest {
                    pvs: pvs.clone(),
                    max_volumes: *max_volumes,
                    lock_manager: *lock_manager,
                    wipe: *wipe,
                })?;
                out.domain_created(&DomainInfoView::from(&info))
            }
            DomainCmd::Set { vg, wipe } => {
                let before = domain(vg)?.set_wipe(*wipe)?;
                out.message(&views::MessageView::wipe_set(vg, before, *wipe).result)
            }
            DomainCmd::Info { vg } => {
                out.domain_info(&DomainSummaryView::from(&domain(vg)?.catalog()?))
            }
            DomainCmd::Check { vg } => {
                let report = domain(vg)?.check()?;
                show_check(out, &CheckView::from(&report))
            }
            DomainCmd::Remove { vg, force } => {
                let n = domain(vg)?.remove(*force)?;
                out.message(&views::MessageView::removed_domain(vg, n).result)
            }
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
            } => {
                let v = domain(vg)?.create_volume(&CreateRequest {
                    image: *image,
                    size: *size,
                    format: *format,
                    parent: *parent,
                    id: *id,
                    description: description.clone(),
                    wipe: *wipe,
                })?;
                out.created(&VolumeView::from(&v))
            }
            VolumeCmd::List { vg, image } => {
                out.volumes(&views::volumes(&domain(vg)?.volumes(image.as_ref())?))
            }
            VolumeCmd::Info { vg, volume } => {
                out.volume(&VolumeView::from(&domain(vg)?.volume_info(volume)?))
            }
            VolumeCmd::Remove { vg, volume } => {
                domain(vg)?.remove_volume(volume, &mut wipe_progress(tty(cli)))?;
                out.message(&views::MessageView::removed_volume(volume).result)
            }
            VolumeCmd::Extend {
                vg,
                volume,
                size,
                generation,
            } => out.volume(&VolumeView::from(&domain(vg)?.extend_volume(
                volume,
                *size,
                *generation,
            )?)),
            VolumeCmd::Copy {
                vg,
                volume,
                from,
                from_format,
                generation,
            } => {
                let path = PathBuf::from(from);
                let source = match from.parse::<VolumeId>() {
                    Ok(id) if !path.exists() => Source::Volume(id),
                    _ => Source::File {
                        path,
                        format: *from_format,
                    },
                };
                let line = std::sync::Arc::new(std::sync::Mutex::new(ProgressLine::default()));
                let sink = if tty(cli) {
                    let line = line.clone();
                    ProgressSink::new(move |p| ProgressLine::lock(&line).show(p))
                } else {
                    ProgressSink::none()
                };
                let copied = domain(vg)?.copy(volume, *generation, source, sink);
                ProgressLine::lock(&line).end();
                out.volume(&VolumeView::from(&copied?))
            }
            VolumeCmd::Update {
                vg,
                volume,
                generation,
                description,
                legality,
            } => {
                let d = domain(vg)?;
                let v = d.update(volume, *generation, description.clone(), *legality)?;
                out.volume(&VolumeView::from(&v))
            }
            VolumeCmd::Status {
                vg,
                volume,
                generation,
            } => out.status(&StatusView::from(&domain(vg)?.status(volume, *generation)?)),
            VolumeCmd::Fence {
                vg,
                volume,
                generation,
            } => out.volume(&VolumeView::from(&domain(vg)?.fence(volume, *generation)?)),
        },
        Command::Image(c) => match c {
            ImageCmd::Chain { vg, image } => {
                out.volumes(&views::volumes(&domain(vg)?.chain(image)?))
            }
            ImageCmd::Prepare {
                vg,
                image,
                allow_illegal,
                without_agent,
                vm_lease,
            } => {
                if *vm_lease && !*without_agent {
                    return Err(crate::error::Error::InvalidInput(format!(
                        "--vm-lease is for a domain shared by hosts (sanlock), whose images the \
                         host agent prepares; this command ran in-process ({vg} is not served \
                         by an agent here, or uses the local lock manager)"
                    )));
                }
                let d = domain(vg)?;
                let chain = if *without_agent {
                    d.prepare_without_agent(image, *allow_illegal)?
                } else {
                    d.prepare(image, *allow_illegal)?
                };
                out.prepared(&PreparedView::new(vg, image, &chain))
            }
            ImageCmd::Xml {
                vg,
                image,
                target,
                bus,
                lease,
            } => {
                let d = domain(vg)?;
                let chain = d.prepared_chain(image)?;
                let leaf = chain.last().ok_or_else(|| {
                    crate::error::Error::InvalidInput(format!("image {image} has no volume"))
                })?;
                let text = if *lease {
                    let at = d
                        .lease_location(&leaf.0)?
                        .ok_or_else(|| crate::engine::image::no_vm_lease(vg))?;
                    libvirt::lease(&at)
                } else {
                    let members: Vec<libvirt::Member<'_>> = chain
                        .iter()
                        .map(|(v, path)| libvirt::Member {
                            path,
                            format: v.format.to_string(),
                        })
                        .collect();
                    let t = libvirt::Target { dev: target, bus };
                    libvirt::disk(&members, !vg.is_file_domain(), &t)
                };
                out.xml(&text)
            }
            ImageCmd::Teardown { vg, image } => {
                domain(vg)?.teardown(image)?;
                out.message(&views::MessageView::torn_down(image).result)
            }
            ImageCmd::Remove { vg, image } => {
                let n = domain(vg)?.remove_image(image, &mut wipe_progress(tty(cli)))?;
                out.message(&views::MessageView::removed_image(image, n).result)
            }
        },
        Command::Gc { vg, dry_run } => {
            let tty = tty(cli);
            let mut progress = |done: usize, total: usize| {
                if tty {
                    eprint!("\rgc: {done}/{total} orphans");
                    if done == total {
                        eprintln!();
                    }
                }
            };
            let report = domain(vg)?.gc(*dry_run, &mut progress, &mut wipe_progress(tty))?;
            show_gc(out, &GcView::from(&report))
        }
        Command::Host(HostCmd::Join { vg, host_id }) => {
            let joined = domain(vg)?.join(*host_id)?;
            out.message(&if joined.new {
                format!("joined domain {vg} as host {host_id}")
            } else {
                format!("already joined domain {vg}; host id {host_id} recorded")
            })
        }
        Command::Host(HostCmd::Leave { vg }) => {
            let id = domain(vg)?.leave()?;
            out.message(&format!("host {id} left domain {vg}"))
        }
        Command::Agent(args) => crate::agent::run(args),
        Command::Debug(DebugCmd::CrashPoints) => out.list(&crate::crash::names()),
        Command::Debug(DebugCmd::Man { out: dir }) => {
            let pages = docs::write_man_pages(dir)?;
            let names: Vec<String> = pages.iter().map(|p| p.display().to_string()).collect();
            out.list(&names.iter().map(String::as_str).collect::<Vec<_>>())
        }
        Command::Debug(DebugCmd::Completions { shell }) => out.raw(&docs::completions(*shell)),
    }
}

/// Reports an error the way the CLI does: one line on stderr (JSON too with --json).
pub fn report_error(cli_json: bool, e: &CliError) {
    if cli_json {
        let v = serde_json::json!({ "error": e.to_string() });
        eprintln!("{v}");
    } else {
        eprintln!("lvchain: error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every (sub)command, as `path: --name`, that has no help text.
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let builtin = matches!(a.get_id().as_str(), "help" | "version");
            if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path}: {}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{path} {} (the command)", sub.get_name()));
            }
            without_help(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn a_refusal_only_the_agent_avoids_says_what_kept_the_cli_from_it() {
        let why = remote::Here::EngineEnv(vec!["LVCHAIN_DEVICES"]);
        let e = CliError::in_process(Error::NeedsAgent { vg: "vg0".into() }, why);
        let text = e.to_string();
        assert!(matches!(e, CliError::NeedsAgent { .. }), "{e:?}");
        assert!(text.starts_with("domain vg0 is shared by hosts"), "{text}");
        assert!(
            text.contains("not through the agent: LVCHAIN_DEVICES is set"),
            "{text}"
        );
        // Other errors are the engine's, unchanged.
        let other = CliError::in_process(Error::InvalidInput("x".into()), remote::Here::Direct);
        assert_eq!(other.to_string(), "x");
    }

    #[test]
    fn every_argument_and_command_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        without_help(&cmd, "lvchain", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
