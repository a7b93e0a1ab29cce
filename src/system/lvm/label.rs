//! LVM's on-disk PV label and metadata-area header, read-only: where a VG's metadata commit
//! point lives, so that "has this VG changed since?" is answered by a few direct reads
//! instead of an lvm command.
//!
//! lvm2 commits every metadata change by rewriting the header sector of each metadata area
//! (its `raw_locn` names the new metadata text's offset, size and checksum). The header
//! sectors of all metadata areas of a VG's PVs, taken together, therefore change with every
//! committed change of the VG (activation writes no metadata and changes nothing here).
//! Layout (little-endian, lvm2 `label.h` / `format_text/layout.h`): a label sector
//! (`LABELONE`) in one of the first four 512-byte sectors; at its `offset_xl` a PV header:
//! 32-byte uuid, device size, then two lists of (offset, size) pairs ending in a zero pair:
//! data areas, then metadata areas; each metadata area begins with a 512-byte header whose
//! magic is [`MDA_MAGIC`].

use std::io;

/// Bytes read at the start of a PV to find its label (its first four sectors, one page).
const LABEL_SCAN: usize = 4096;
const SECTOR: usize = 512;
/// The metadata-area header's size.
pub const MDA_HEADER_SIZE: usize = 512;
/// The metadata-area header's magic (bytes 4..20 of the header).
pub const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn u64_at(b: &[u8], at: usize) -> io::Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad(format!("the PV header ends before byte {}", at + 8)))
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| bad(format!("the label ends before byte {}", at + 4)))
}

/// The byte offsets of the metadata areas of a PV, from the first [`LABEL_SCAN`] bytes of it.
pub fn metadata_areas(start: &[u8]) -> io::Result<Vec<u64>> {
    let label = (0..4)
        .map(|i| i * SECTOR)
        .find(|&at| start.get(at..at + 8) == Some(b"LABELONE"))
        .ok_or_else(|| bad("no LVM label in the first four sectors".into()))?;
    let sector = &start[label..label + SECTOR];
    let header = u32_at(sector, 20)? as usize;
    if sector.get(24..32) != Some(b"LVM2 001") {
        return Err(bad("the label is not an LVM2 text-format label".into()));
    }
    // After the 32-byte uuid and the 8-byte device size: the data areas, then the metadata
    // areas, each list ending in a zero (offset, size) pair.
    let mut at = header + 40;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let (offset, size) = (u64_at(sector, at)?, u64_at(sector, at + 8)?);
            at += 16;
            if offset == 0 && size == 0 {
                break;
            }
            list.push(offset);
        }
    }
    let [_, mdas] = lists;
    Ok(mdas)
}

/// The stamp of a VG's metadata: the header sectors of every metadata area of `pvs`, read
/// with `read(pv, offset, len)` (direct I/O: another host may have written them). Equal
/// stamps read under the domain lock mean no metadata change was committed in between.
pub fn metadata_stamp<P>(
    pvs: &[P],
    read: impl Fn(&P, u64, usize) -> io::Result<Vec<u8>>,
) -> io::Result<Vec<u8>> {
    let mut stamp = Vec::new();
    for pv in pvs {
        let start = read(pv, 0, LABEL_SCAN)?;
        for offset in metadata_areas(&start)? {
            // The page that holds the header: direct I/O reads whole logical blocks.
            let page = offset & !(LABEL_SCAN as u64 - 1);
            let buf = read(pv, page, LABEL_SCAN)?;
            let at = (offset - page) as usize;
            let h = buf
                .get(at..at + MDA_HEADER_SIZE)
                .ok_or_else(|| bad(format!("short read at byte {offset} of the PV")))?;
            if h.get(4..20) != Some(MDA_MAGIC.as_slice()) {
                return Err(bad(format!(
                    "no metadata-area header at byte {offset} of the PV"
                )));
            }
            stamp.extend_from_slice(&offset.to_le_bytes());
            stamp.extend_from_slice(h);
        }
    }
    if stamp.is_empty() {
        return Err(bad("the VG's PVs have no metadata area".into()));
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A PV's first page with a label in sector 1 and the given metadata areas.
    fn pv_start(mdas: &[u64]) -> Vec<u8> {
        let mut b = vec![0u8; LABEL_SCAN];
        let s = &mut b[SECTOR..2 * SECTOR];
        s[..8].copy_from_slice(b"LABELONE");
        s[8..16].copy_from_slice(&1u64.to_le_bytes());
        s[20..24].copy_from_slice(&32u32.to_le_bytes());
        s[24..32].copy_from_slice(b"LVM2 001");
        let mut at = 32 + 40;
        // One data area, then the end of the list.
        s[at..at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        at += 32;
        for m in mdas {
            s[at..at + 8].copy_from_slice(&m.to_le_bytes());
            s[at + 8..at + 16].copy_from_slice(&(1u64 << 20).to_le_bytes());
            at += 16;
        }
        b
    }

    fn header(seq: u8) -> Vec<u8> {
        let mut h = vec![0u8; MDA_HEADER_SIZE];
        h[4..20].copy_from_slice(MDA_MAGIC);
        h[40] = seq; // raw_locns[0].offset
        h
    }

    #[test]
    fn finds_the_metadata_areas_after_the_data_areas() {
        assert_eq!(metadata_areas(&pv_start(&[4096])).unwrap(), vec![4096]);
        assert_eq!(
            metadata_areas(&pv_start(&[4096, 1 << 30])).unwrap(),
            vec![4096, 1 << 30]
        );
        assert!(metadata_areas(&vec![0u8; LABEL_SCAN]).is_err());
    }

    #[test]
    fn the_stamp_changes_with_the_header_and_needs_its_magic() {
        let read = |seq: u8| {
            move |_: &&str, off: u64, len: usize| -> io::Result<Vec<u8>> {
                Ok(if off == 0 {
                    pv_start(&[4096])
                } else {
                    let mut p = header(seq);
                    p.resize(len, 0);
                    p
                })
            }
        };
        let a = metadata_stamp(&["pv"], read(1)).unwrap();
        assert_eq!(a, metadata_stamp(&["pv"], read(1)).unwrap());
        assert_ne!(a, metadata_stamp(&["pv"], read(2)).unwrap());
        let no_magic = |_: &&str, off: u64, _: usize| -> io::Result<Vec<u8>> {
            Ok(if off == 0 {
                pv_start(&[4096])
            } else {
                vec![0; LABEL_SCAN]
            })
        };
        assert!(metadata_stamp(&["pv"], no_magic).is_err());
        assert!(metadata_stamp(&["pv"], |_: &&str, _, _| Ok(pv_start(&[]))).is_err());
    }
}
