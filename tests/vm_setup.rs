//! `scripts/vm-setup`'s backports entry: derived from the machine's own apt source file
//! (`scripts/apt-backports-source`), never a registry host name written by the scripts.
//! Runs on any host (no LVM): the script reads sample files, changes nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/apt-backports-source");

/// Runs the derivation on `text` saved as `name`; returns (exit code, stdout).
fn derive(name: &str, text: &str, codename: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(SCRIPT)
        .arg(&file)
        .arg(codename)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_deb822_source_gives_the_same_uris_and_keyring_with_the_backports_suite() {
    let sources = "\
Types: deb
# a snapshot mirror, in a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/example-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/example-archive-keyring.gpg
";
    assert_eq!(
        derive("debian.sources", sources, "bookworm"),
        (
            Some(0),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\n\
             Components: main contrib\nSigned-By: /usr/share/keyrings/example-archive-keyring.gpg\n"
                .to_string()
        )
    );
    // No entry for another release: a clear failure, nothing printed.
    assert_eq!(
        derive("debian.sources", sources, "trixie"),
        (Some(1), String::new())
    );
}

#[test]
fn a_deb822_stanza_with_an_inline_key_and_a_disabled_one() {
    let sources = "\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src deb
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 AAAA
 -----END PGP PUBLIC KEY BLOCK-----";
    let (code, out) = derive("x.sources", sources, "bookworm");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("URIs: http://mirror.example/debian\n"),
        "{out}"
    );
    assert!(out.contains("Suites: bookworm-backports\n"), "{out}");
    assert!(
        out.ends_with(
            "Signed-By: \n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n AAAA\n \
             -----END PGP PUBLIC KEY BLOCK-----\n"
        ),
        "{out}"
    );
}

#[test]
fn a_one_line_source_gives_the_same_uri_components_and_keyring() {
    let list = "\
# deb http://old.example/debian bookworm main
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/example.gpg] http://mirror.example/debian bookworm main non-free-firmware # comment
deb http://mirror.example/debian-security bookworm-security main
";
    assert_eq!(
        derive("sources.list", list, "bookworm"),
        (
            Some(0),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\n\
             Components: main non-free-firmware\nSigned-By: /usr/share/keyrings/example.gpg\n"
                .to_string()
        )
    );
    let plain = "deb http://mirror.example/debian bookworm main\n";
    let (code, out) = derive("sources.list", plain, "bookworm");
    assert_eq!(code, Some(0));
    assert!(
        !out.contains("Signed-By"),
        "no keyring named, none made up: {out}"
    );
}

/// This machine's own apt configuration, read only: the entry names the machine's mirror.
#[test]
fn this_machines_apt_source_gives_an_entry() {
    let own = Path::new("/etc/apt/sources.list.d/debian.sources");
    let Some(codename) = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        })
    else {
        eprintln!("skipped: no VERSION_CODENAME");
        return;
    };
    if !own.exists() {
        eprintln!("skipped: no {}", own.display());
        return;
    }
    let text = std::fs::read_to_string(own).unwrap();
    let out = std::process::Command::new(SCRIPT)
        .arg(own)
        .arg(&codename)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let entry = String::from_utf8(out.stdout).unwrap();
    let uris = entry.lines().find(|l| l.starts_with("URIs: ")).unwrap();
    assert!(text.contains(uris), "{uris} comes from {}", own.display());
    assert!(
        entry.contains(&format!("Suites: {codename}-backports\n")),
        "{entry}"
    );
}

#[test]
fn the_scripts_name_no_package_registry_host() {
    for dir in ["scripts", "vagrant"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            assert!(
                !text.contains("debian.org"),
                "{} names debian.org",
                path.display()
            );
        }
    }
}
