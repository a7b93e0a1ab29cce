//! libvirt's own check of the XML `lvchain image xml` prints: the elements put under the
//! `<devices>` of a minimal libvirt domain, which `virt-xml-validate` (libvirt-clients,
//! installed by scripts/vm-setup) checks against libvirt's schema.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

/// A libvirt domain document holding `devices` (each a `<disk>` or `<lease>` element).
pub fn domain_with(devices: &[&str]) -> String {
    format!(
        "<domain type='kvm'>\n  <name>lvchain-test</name>\n  <memory unit='MiB'>64</memory>\n  \
         <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n{}  </devices>\n</domain>\n",
        devices.concat()
    )
}

/// Asserts that `virt-xml-validate` accepts the domain holding `devices`.
pub fn assert_valid(devices: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("domain.xml");
    let doc = domain_with(devices);
    std::fs::write(&file, &doc).unwrap();
    let o = match Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("virt-xml-validate (libvirt-clients; scripts/vm-setup installs it): {e}"),
    };
    assert!(
        o.status.success(),
        "virt-xml-validate refused:\n{doc}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
