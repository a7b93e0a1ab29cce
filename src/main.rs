//! The `lvchain` binary: parses the command line and hands it to [`lvchain::cli`].

use clap::Parser;

fn main() {
    let cli = lvchain::cli::Cli::parse();
    let default = if cli.verbose {
        "lvchain=debug"
    } else {
        "lvchain=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match lvchain::cli::run(&cli) {
        // The reader of the output went away (`| head -1`): the work is done, end quietly.
        Ok(()) => {}
        Err(e) if e.is_output_closed() => {}
        Err(e) => {
            lvchain::cli::report_error(cli.json, &e);
            std::process::exit(1);
        }
    }
}
