//! Conformance on the host (no device-mapper): what outside tools meet on a file domain and
//! its agent. [`metrics`]: the agent's metrics as `promtool` reads them; [`socket`]: the
//! agent's listeners as slow, many or malformed clients meet them.
#![allow(clippy::unwrap_used)]

#[path = "common/file_kit.rs"]
mod file_kit;
#[path = "common/http.rs"]
mod http;

mod conformance {
    pub mod metrics;
    pub mod socket;
}
