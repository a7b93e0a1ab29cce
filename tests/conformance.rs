//! Conformance on the host (no device-mapper): what outside tools meet on a file domain and
//! its agent. [`metrics`]: the agent's metrics as `promtool` reads them; [`files`]: the modes
//! of a domain's files and what is left of directories that are no domain; [`validation`]: one
//! check of the sizes every client sends; [`schemathesis`]: the API against its OpenAPI
//! document; [`socket`]: the agent's listeners as slow, many or malformed clients meet them;
//! [`libvirt`]: the disk XML of a chain as libvirt's schema reads it.
#![allow(clippy::unwrap_used)]

#[path = "common/file_kit.rs"]
mod file_kit;
#[path = "common/http.rs"]
mod http;
#[path = "common/virt_xml.rs"]
mod virt_xml;

mod conformance {
    pub mod files;
    pub mod libvirt;
    pub mod metrics;
    pub mod schemathesis;
    pub mod socket;
    pub mod validation;
}
