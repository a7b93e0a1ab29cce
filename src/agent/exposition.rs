//! The two text formats `/metrics` speaks: OpenMetrics (what the registry encodes), for a
//! scraper that asks for it in `Accept`, and the Prometheus text format 0.0.4 otherwise (what
//! `promtool check metrics` and older scrapers read), derived from the OpenMetrics text.

/// The content type of the OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The Prometheus text format of an OpenMetrics text: a counter family's HELP and TYPE name
/// its `_total` sample (OpenMetrics names the family without the suffix), and the lines that
/// format lacks (`# UNIT`, `# EOF`) are left out. Samples are unchanged.
pub fn to_text_0_0_4(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_sample_and_openmetrics_lines_go() {
        let om = "# HELP a_runs Runs.\n# TYPE a_runs counter\na_runs_total 3\n\
                  # HELP b Now.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            to_text_0_0_4(om),
            "# HELP a_runs_total Runs.\n# TYPE a_runs_total counter\na_runs_total 3\n\
             # HELP b Now.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[test]
    fn only_an_openmetrics_accept_gets_openmetrics() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
