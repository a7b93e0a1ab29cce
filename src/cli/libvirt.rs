//! libvirt's view of a prepared chain: the `<disk>` element a libvirt domain uses for it (the
//! leaf's path, and a `<backingStore>` per member down to the base, each with its format and
//! path) and, on a sanlock domain, the `<lease>` element of the leaf (lockspace, key, target
//! path and offset) that libvirt's sanlock plugin holds while the VM runs. Text only: the
//! chain, its paths and the lease's location come from the engine.

use crate::engine::image::LeaseLocation;
use std::fmt::Write;
use std::path::Path;

/// One member of a chain as libvirt sees it.
pub struct Member<'a> {
    pub path: &'a Path,
    /// Its format as qemu names it (`raw`, `qcow2`).
    pub format: String,
}

/// Where the disk appears in the guest.
pub struct Target<'a> {
    pub dev: &'a str,
    pub bus: &'a str,
}

/// Text with `&`, `<`, `>`, `'` and `"` escaped (an attribute or element value).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The `<disk>` element of `chain` (base first, leaf last; not empty): `block` devices
/// (`<source dev=>`) on a block domain, files (`<source file=>`) on a file domain. Caching
/// is off (`cache='none'`, `io='native'`), as storage shared by hosts needs.
pub fn disk(chain: &[Member<'_>], block: bool, target: &Target<'_>) -> String {
    let (kind, attr) = if block {
        ("block", "dev")
    } else {
        ("file", "file")
    };
    let mut x = String::new();
    let Some((leaf, below)) = chain.split_last() else {
        return x;
    };
    let _ = writeln!(x, "<disk type='{kind}' device='disk'>");
    let _ = writeln!(
        x,
        "  <driver name='qemu' type='{}' cache='none' io='native'/>",
        escape(&leaf.format)
    );
    let _ = writeln!(
        x,
        "  <source {attr}='{}'/>",
        escape(&leaf.path.to_string_lossy())
    );
    let mut indent = String::from("  ");
    for m in below.iter().rev() {
        let _ = writeln!(x, "{indent}<backingStore type='{kind}'>");
        let _ = writeln!(x, "{indent}  <format type='{}'/>", escape(&m.format));
        let _ = writeln!(
            x,
            "{indent}  <source {attr}='{}'/>",
            escape(&m.path.to_string_lossy())
        );
        indent.push_str("  ");
    }
    // The base's own backing store: none (libvirt stops looking for one).
    let _ = writeln!(x, "{indent}<backingStore/>");
    for _ in below {
        indent.truncate(indent.len() - 2);
        let _ = writeln!(x, "{indent}</backingStore>");
    }
    let _ = writeln!(
        x,
        "  <target dev='{}' bus='{}'/>",
        escape(target.dev),
        escape(target.bus)
    );
    x.push_str("</disk>\n");
    x
}

/// The `<lease>` element of the lease at `at`.
pub fn lease(at: &LeaseLocation) -> String {
    format!(
        "<lease>\n  <lockspace>{}</lockspace>\n  <key>{}</key>\n  <target path='{}' offset='{}'/>\n</lease>\n",
        escape(&at.lockspace),
        escape(&at.key),
        escape(&at.path.to_string_lossy()),
        at.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_chain_nests_its_backing_stores_down_to_the_base() {
        let (base, snap, leaf) = (
            PathBuf::from("/run/lvchain/vg/i/base"),
            PathBuf::from("/run/lvchain/vg/i/snap"),
            PathBuf::from("/run/lvchain/vg/i/leaf"),
        );
        let chain = [
            Member {
                path: &base,
                format: "raw".into(),
            },
            Member {
                path: &snap,
                format: "qcow2".into(),
            },
            Member {
                path: &leaf,
                format: "qcow2".into(),
            },
        ];
        let t = Target {
            dev: "vdb",
            bus: "virtio",
        };
        assert_eq!(
            disk(&chain, true, &t),
            "<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2' cache='none' io='native'/>
  <source dev='/run/lvchain/vg/i/leaf'/>
  <backingStore type='block'>
    <format type='qcow2'/>
    <source dev='/run/lvchain/vg/i/snap'/>
    <backingStore type='block'>
      <format type='raw'/>
      <source dev='/run/lvchain/vg/i/base'/>
      <backingStore/>
    </backingStore>
  </backingStore>
  <target dev='vdb' bus='virtio'/>
</disk>
"
        );
        let one = [Member {
            path: Path::new("/srv/d&m/images/i/v"),
            format: "raw".into(),
        }];
        let x = disk(&one, false, &t);
        assert!(
            x.contains("<source file='/srv/d&amp;m/images/i/v'/>\n  <backingStore/>\n  <target"),
            "{x}"
        );
        assert!(
            x.starts_with("<disk type='file' device='disk'>\n  <driver name='qemu' type='raw'"),
            "{x}"
        );
    }

    #[test]
    fn a_lease_names_its_lockspace_key_and_place() {
        let at = LeaseLocation {
            lockspace: "vg".into(),
            key: "k".into(),
            path: "/dev/vg/leases".into(),
            offset: 3 << 20,
        };
        assert_eq!(
            lease(&at),
            "<lease>\n  <lockspace>vg</lockspace>\n  <key>k</key>\n  <target path='/dev/vg/leases' offset='3145728'/>\n</lease>\n"
        );
    }
}
