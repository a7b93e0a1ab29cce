//! Reading a file domain: one listing of `images/*/` classified into volume entries (with
//! their marker: none, `.meta.creating`, `.meta.removing`), stray files (temp files of atomic
//! rewrites, data files without metadata, anything else), and the engine's [`Catalog`] built
//! from them, so readers see file volumes exactly as they see block volumes: only committed
//! ones (a `.meta` file), chains by the metadata's parents.
//!
//! Also the metadata file I/O: the block slot codec ([`crate::metadata`]) written as a file
//! of the encoded text (no padding), replaced atomically.

use super::{atomic, FileDomain};
use crate::domain::{LvEntry, Snapshot};
use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::metadata::{decode, encode, MetaError, VolumeMeta, SLOT_VERSION};
use crate::units::Bytes;
use crate::volume::{Catalog, Volume};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The marker a metadata file's name carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `<volume>.meta`: committed.
    None,
    /// `<volume>.meta.creating`: a creation not committed.
    Creating,
    /// `<volume>.meta.removing`: a removal past its point of no return.
    Removing,
}

impl Marker {
    pub fn suffix(self) -> &'static str {
        match self {
            Marker::None => ".meta",
            Marker::Creating => ".meta.creating",
            Marker::Removing => ".meta.removing",
        }
    }
}

/// One volume as the listing found it: its metadata file (by marker) and its data file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: VolumeId,
    /// The image directory it was found in.
    pub image: ImageId,
    pub marker: Marker,
    pub meta: std::result::Result<VolumeMeta, MetaError>,
    /// The data file's size, when it exists.
    pub data: Option<u64>,
}

/// A file of `images/` that belongs to no volume entry.
#[derive(Debug, Clone)]
pub struct Stray {
    pub path: PathBuf,
    /// The volume it names (a temp file or data file of a UUID-named volume).
    pub volume: Option<VolumeId>,
    pub kind: StrayKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrayKind {
    /// `.<volume>.meta.tmp`: an atomic rewrite that died before its rename.
    Temp,
    /// `<volume>` without any metadata file.
    DataWithoutMetadata,
    /// `<volume>.lease` without any metadata file.
    LeaseWithoutMetadata,
    /// A second metadata file of a volume (two markers at once), or a volume found in two
    /// image directories.
    Duplicate,
    /// Anything else.
    Foreign,
}

/// A listing of the domain.
pub struct Scan {
    pub entries: Vec<Entry>,
    pub strays: Vec<Stray>,
    pub catalog: Catalog,
}

impl FileDomain {
    pub(crate) fn meta_path(&self, image: &ImageId, id: &VolumeId, marker: Marker) -> PathBuf {
        self.image_dir(image)
            .join(format!("{id}{}", marker.suffix()))
    }

    pub(crate) fn data_path(&self, image: &ImageId, id: &VolumeId) -> PathBuf {
        self.image_dir(image).join(id.to_string())
    }
}

/// The metadata file's bytes: the slot codec's text without its padding.
pub fn encode_meta(meta: &VolumeMeta) -> Result<Vec<u8>> {
    let mut bytes = encode(meta, 4096, SLOT_VERSION)?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.truncate(end);
    Ok(bytes)
}

/// Reads a metadata file.
pub fn read_meta(path: &Path) -> std::result::Result<VolumeMeta, MetaError> {
    let bytes = std::fs::read(path).map_err(|e| MetaError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    decode(0, &bytes).map_err(|e| match e {
        MetaError::Damaged { reason, .. } => MetaError::Damaged {
            slot: 0,
            reason: format!("{}: {reason}", path.display()),
        },
        MetaError::Empty { .. } => MetaError::Damaged {
            slot: 0,
            reason: format!("{}: empty", path.display()),
        },
        other => other,
    })
}

/// Rewrites a committed volume's metadata atomically (temp + fsync + rename + directory
/// fsync). Not one O_DIRECT write at offset 0 as on a block slot: POSIX (and NFS above all)
/// does not promise that a write of a file is atomic against a crash or against a reader on
/// another client, while a rename within a directory is atomic on every POSIX file system and
/// NFS server; a reader always decodes a whole old or a whole new record.
pub fn write_meta(path: &Path, meta: &VolumeMeta) -> Result<()> {
    atomic::replace(path, &encode_meta(meta)?)
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// The image whose directory holds `path`.
pub fn image_of(path: &Path) -> Option<ImageId> {
    path.parent()?.file_name()?.to_str()?.parse().ok()
}

/// Lists the domain (one pass over `images/*/`) and builds the readers' catalog.
pub fn scan(fd: &FileDomain) -> Result<Scan> {
    let rec = fd.record()?;
    let info = fd.info(&rec);
    let mut entries: Vec<Entry> = Vec::new();
    let mut strays = Vec::new();
    let mut data: HashMap<(ImageId, VolumeId), (PathBuf, u64)> = HashMap::new();
    let mut leases: HashMap<VolumeId, PathBuf> = HashMap::new();
    let io = |p: &Path| Error::io(format!("reading {}", p.display()));
    let images = fd.images_dir();
    for img in std::fs::read_dir(&images).map_err(io(&images))? {
        let img = img.map_err(io(&images))?;
        let path = img.path();
        let image: Option<ImageId> = img.file_name().to_str().and_then(|s| s.parse().ok());
        let Some(image) = image.filter(|_| path.is_dir()) else {
            strays.push(Stray {
                path,
                volume: None,
                kind: StrayKind::Foreign,
            });
            continue;
        };
        for f in std::fs::read_dir(&path).map_err(io(&path))? {
            let f = f.map_err(io(&path))?;
            let name = f.file_name().to_string_lossy().into_owned();
            let fpath = f.path();
            let parse = |s: &str| s.parse::<VolumeId>().ok();
            // The NFS client's name for a removed file still open on it (a lease file the
            // daemon had open, a data file qemu had): gone at the last close; no domain's.
            if name.starts_with(".nfs") {
                continue;
            }
            if let Some(id) = name.strip_suffix(".lease").and_then(parse) {
                leases.insert(id, fpath);
                continue;
            }
            if let Some(id) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp"))
                .and_then(|n| n.strip_suffix(".meta"))
                .and_then(parse)
            {
                strays.push(Stray {
                    path: fpath,
                    volume: Some(id),
                    kind: StrayKind::Temp,
                });
                continue;
            }
            let marked = [Marker::None, Marker::Creating, Marker::Removing]
                .into_iter()
                .find_map(|m| {
                    name.strip_suffix(m.suffix())
                        .and_then(parse)
                        .map(|id| (id, m))
                });
            if let Some((id, marker)) = marked {
                if entries.iter().any(|e| e.id == id) {
                    strays.push(Stray {
                        path: fpath,
                        volume: Some(id),
                        kind: StrayKind::Duplicate,
                    });
                    continue;
                }
                entries.push(Entry {
                    id,
                    image,
                    marker,
                    meta: read_meta(&fpath),
                    data: None,
                });
                continue;
            }
            match parse(&name) {
                Some(id) if fpath.is_file() => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    data.insert((image, id), (fpath, len));
                }
                _ => strays.push(Stray {
                    path: fpath,
                    volume: None,
                    kind: StrayKind::Foreign,
                }),
            }
        }
    }
    for e in &mut entries {
        e.data = data.remove(&(e.image, e.id)).map(|(_, len)| len);
        leases.remove(&e.id);
    }
    for (id, path) in leases {
        strays.push(Stray {
            path,
            volume: Some(id),
            kind: StrayKind::LeaseWithoutMetadata,
        });
    }
    for ((_, id), (path, _)) in data {
        strays.push(Stray {
            path,
            volume: Some(id),
            kind: StrayKind::DataWithoutMetadata,
        });
    }
    entries.sort_by_key(|e| e.id);
    strays.sort_by(|a, b| a.path.cmp(&b.path));
    let catalog = catalog(info, &entries);
    Ok(Scan {
        entries,
        strays,
        catalog,
    })
}

/// The entry as the engine's LV view has it (the metadata file stands for the LV and its
/// tags): image, parent and markers, slot 0 (file domains have no slots).
pub(crate) fn lv_entry(e: &Entry) -> LvEntry {
    let meta = e.meta.as_ref().ok();
    LvEntry {
        name: e.id.to_string(),
        id: Some(e.id),
        size: Bytes(e.data.unwrap_or(0)),
        active: false,
        open: false,
        image: Some(e.image),
        parent: meta.and_then(|m| m.parent),
        slot: Some(0),
        creating: e.marker == Marker::Creating,
        removing: e.marker == Marker::Removing,
        special: false,
        member: false,
        wipe: None,
        bad_tags: vec![],
    }
}

fn catalog(info: crate::domain::DomainInfo, entries: &[Entry]) -> Catalog {
    let mut snap = Snapshot {
        info,
        lvs: entries.iter().map(lv_entry).collect(),
    };
    snap.classify();
    let pending_parents: HashSet<VolumeId> = snap
        .orphans()
        .filter(|l| !l.member)
        .filter_map(|l| l.parent)
        .collect();
    let mut volumes = HashMap::new();
    let mut bad = Vec::new();
    for e in entries {
        if snap.volume(&e.id).is_none() {
            continue;
        }
        match &e.meta {
            Ok(m) if m.id == e.id && m.image == e.image => {
                let lv = lv_entry(e);
                let mut v = Volume::from_parts(&lv, 0, m);
                v.role = crate::volume::committed_role(&snap, &pending_parents, &v);
                volumes.insert(e.id, v);
            }
            Ok(m) => bad.push((
                e.id,
                Error::Metadata {
                    id: e.id,
                    source: MetaError::Damaged {
                        slot: 0,
                        reason: format!(
                            "its metadata file names volume {} of image {}",
                            m.id, m.image
                        ),
                    },
                },
            )),
            Err(source) => bad.push((
                e.id,
                Error::Metadata {
                    id: e.id,
                    source: source.clone(),
                },
            )),
        }
    }
    Catalog { snap, volumes, bad }
}
