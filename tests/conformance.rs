//! Conformance on the host (no device-mapper): what local users, outside tools and bad peers
//! meet on a file domain and its agent. Each module names its subject: file modes
//! ([`modes`]), the agent's socket under slow and hostile peers ([`socket`]), request
//! validation shared by the CLI and the API ([`validation`]), the metrics that promtool reads
//! ([`metrics`]), libvirt's disk XML ([`libvirt`]).
#![allow(clippy::unwrap_used)]

#[path = "common/file_kit.rs"]
mod file_kit;
#[path = "common/http.rs"]
mod http;

mod conformance {
    pub mod libvirt;
    pub mod metrics;
    pub mod modes;
    pub mod socket;
    pub mod validation;
}
