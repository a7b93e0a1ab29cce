//! `lvchain image xml` on a file domain: the `<disk>` element of a chain (the leaf's file, a
//! `<backingStore>` per member with its format and file), accepted by libvirt's schema and
//! naming the files the chain is made of; a lease is refused on a domain with the local lock
//! manager, which has none. (Block chains and sanlock leases: tests/inuse.rs, in the VM.)

use crate::file_kit::Fd;
use crate::virt_xml::{assert_valid, domain_with};

#[test]
fn a_file_chain_has_disk_xml_that_libvirt_accepts() {
    let d = Fd::new();
    let image = uuid::Uuid::new_v4().to_string();
    let base = d.create(&["--image", &image, "--size", "1M", "--format", "raw"]);
    let mid = d.create(&["--parent", &base]);
    let leaf = d.create(&["--parent", &mid]);
    let xml = d.ok(&["image", "xml", &d.path, &image, "--target", "vdb"]);
    assert_valid(&[&xml]);
    let file = |v: &str| format!("{}/images/{image}/{v}", d.path);
    let want = [
        "<disk type='file' device='disk'>".to_string(),
        "<driver name='qemu' type='qcow2' cache='none' io='native'/>".into(),
        format!("<source file='{}'/>", file(&leaf)),
        "<backingStore type='file'>".into(),
        "<format type='qcow2'/>".into(),
        format!("<source file='{}'/>", file(&mid)),
        "<backingStore type='file'>".into(),
        "<format type='raw'/>".into(),
        format!("<source file='{}'/>", file(&base)),
        "<backingStore/>".into(),
        "</backingStore>".into(),
        "</backingStore>".into(),
        "<target dev='vdb' bus='virtio'/>".into(),
        "</disk>".into(),
    ];
    let got: Vec<&str> = xml.lines().map(str::trim).collect();
    assert_eq!(got, want, "{xml}");
    // Every file the XML names is the chain's.
    for v in [&base, &mid, &leaf] {
        assert!(std::path::Path::new(&file(v)).is_file());
    }
    let j = d.json(&["image", "xml", &d.path, &image]);
    assert!(
        j["xml"]
            .as_str()
            .unwrap()
            .contains("<target dev='vda' bus='virtio'/>"),
        "{j}"
    );

    let o = d.run(&["image", "xml", &d.path, &image, "--lease"]);
    assert!(!o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("local lock manager"), "{said}");
    // libvirt's check is not a rubber stamp: the same disk on an unknown bus is refused.
    let bad = xml.replace("bus='virtio'", "bus='nonsense'");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.xml");
    std::fs::write(&f, domain_with(&[&bad])).unwrap();
    let o = std::process::Command::new("virt-xml-validate")
        .arg(&f)
        .arg("domain")
        .output()
        .unwrap();
    assert!(!o.status.success(), "an unknown bus passed");
}
