//! Documentation generated from the CLI's clap definitions ([`super::Cli`]): manual pages
//! (`clap_mangen`) and shell completion scripts (`clap_complete`), written by the hidden
//! commands `lvchain debug man --out DIR` and `lvchain debug completions SHELL` for the Debian
//! package (`scripts/build-deb`) or an installation by hand.
//!
//! Owns only the rendering of those definitions (so pages and completions never drift from
//! the parser); it never touches a domain, and never writes outside the directory it is given.

use super::Cli;
use crate::engine::error::{Error, Result};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

/// The shells a completion script is written for (`clap_complete`'s).
pub use clap_complete::Shell;

/// The parser's command tree, built (subcommands named `lvchain-volume-create` for their pages,
/// global options propagated), without the `help` subcommand (a page of its own would say
/// nothing the others do not).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `lvchain.1` and one page per subcommand that is not hidden (`lvchain-volume.1`,
/// `lvchain-volume-create.1`, ...) into `dir`, made when missing. Returns the pages written,
/// the parent before its subcommands.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let title = Title {
        source: format!("lvchain {}", env!("CARGO_PKG_VERSION")),
        date: page_date(),
    };
    let mut written = Vec::new();
    write_page(&command(), dir, &title, &mut written)?;
    Ok(written)
}

/// What every page's title line carries besides its name.
struct Title {
    source: String,
    date: String,
}

/// The pages' date: the day of `$SOURCE_DATE_EPOCH` (the reproducible-builds convention:
/// scripts/build-deb sets it to the last commit's time), else today's (UTC), as YYYY-MM-DD.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 -> YYYY-MM-DD (proleptic Gregorian; Howard Hinnant's algorithm).
fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn write_page(
    cmd: &clap::Command,
    dir: &Path,
    title: &Title,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    // (Every field given: an empty one would shift the others on the title line.)
    let man = clap_mangen::Man::new(cmd.clone())
        .date(&title.date)
        .source(&title.source)
        .manual("lvchain manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .map_err(Error::io(format!("rendering {}", path.display())))?;
    std::fs::write(&path, page).map_err(Error::io(format!("writing {}", path.display())))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, title, written)?;
    }
    Ok(())
}

/// The completion script of `lvchain` for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "lvchain", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command_and_none_hidden() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_man_pages(dir.path()).expect("pages");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "lvchain.1");
        for want in [
            "lvchain-volume.1",
            "lvchain-volume-create.1",
            "lvchain-agent.1",
            "lvchain-debug-crash-points.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        for hidden in [
            "lvchain-debug-man.1",
            "lvchain-debug-completions.1",
            "lvchain-help.1",
        ] {
            assert!(!names.iter().any(|n| n == hidden), "{hidden}: {names:?}");
        }
        // One page per command that is not hidden, and nothing else in the directory.
        fn visible(cmd: &clap::Command) -> usize {
            1 + cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible)
                .sum::<usize>()
        }
        assert_eq!(names.len(), visible(&command()));
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            names.len()
        );
        let create =
            std::fs::read_to_string(dir.path().join("lvchain-volume-create.1")).expect("page");
        let th = create
            .lines()
            .find(|l| l.starts_with(".TH"))
            .expect("title line");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            th,
            format!(
                ".TH lvchain-volume-create 1 {} \"lvchain {version}\" \"lvchain manual\"",
                page_date()
            )
        );
        assert!(create.contains(".SH NAME"), "{create}");
        // An option's help text reaches its page.
        assert!(
            create.contains("Make a qcow2 snapshot of this leaf volume"),
            "{create}"
        );
    }

    #[test]
    fn page_dates_are_calendar_days() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_453), "2025-12-31");
    }

    #[test]
    fn completions_name_the_commands_for_each_shell() {
        for (shell, mark) in [
            (Shell::Bash, "complete -F _lvchain"),
            (Shell::Zsh, "#compdef lvchain"),
            (Shell::Fish, "complete -c lvchain"),
        ] {
            let script = String::from_utf8(completions(shell)).expect("utf-8");
            assert!(script.contains(mark), "{shell}: no {mark:?}");
            assert!(script.contains("crash-points"), "{shell}");
            assert!(script.contains("--generation"), "{shell}");
        }
    }
}
