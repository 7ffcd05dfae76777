//! The `custodian` binary: parse the command line, set up logging, run. Everything else is in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = custodian_cli::cli::Cli::parse();
    // A node logs what it does; the other commands print their own progress and log only trouble.
    let default_level = match cli.command {
        custodian_cli::cli::Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(custodian_cli::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
