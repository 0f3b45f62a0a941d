//! The `outboxd` binary: parses the command line, sets up logging, and runs the command.

use std::io::Write as _;

use clap::{CommandFactory as _, FromArgMatches as _};
use outboxd::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let explicit_config =
        matches.value_source("config") != Some(clap::parser::ValueSource::DefaultValue);
    let cli = Cli::from_arg_matches(&matches)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("OUTBOXD_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift_codegen=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = cli::load_config(&cli.config, explicit_config)?;
    match cli.command {
        Command::Serve => {
            outboxd::serve(
                config,
                |addr| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "listening on {addr}");
                    let _ = out.flush();
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Enqueue {
            event_type,
            payload,
            idempotency_key,
            headers,
        } => println!(
            "{}",
            cli::enqueue(&config, event_type, payload, idempotency_key, headers).await?
        ),
        Command::Status { event_id } => print!("{}", cli::status(&config, event_id).await?),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
