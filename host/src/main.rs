//! The `outboxd` binary: parses the command line, sets up logging, and runs the command.

use std::io::Write as _;

use clap::Parser as _;
use outboxd::cli::{
    self, Cli, Command, ConfigCommand, DeadCommand, PluginCommand, ReplayCommand, SourceCommand, TargetCommand,
};
use outboxd::server::config::{LogFormat, log_filter};
use outboxd::server::reload::{Reloads, SetLogLevel};
use outboxd::telemetry::traces;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, reload};

/// jemalloc rather than the C library's malloc: a delivery allocates and frees on several
/// threads (the attempt, the HTTP connection, the settler), which glibc's arenas serve with
/// locks; with jemalloc the drain delivers more per second for about 5 MiB more resident
/// memory (`docs/performance.md`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options (the environment variable `_RJEM_MALLOC_CONF` overrides them):
/// freed memory goes back to the kernel after about a second instead of ten, so the resident
/// size follows the backlog down once it drains.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer that jemalloc reads once, at its start-up.
#[cfg(not(target_env = "msvc"))]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
#[cfg(not(target_env = "msvc"))]
unsafe impl Sync for MallocConf {}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // Our error types carry their causes in their own messages.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<u8> {
    let cli = Cli::parse();
    // `serve` reads its configuration first: `log_format` decides how it logs.
    let serve_config = match &cli.command {
        Command::Serve(args) => Some(args.load()?),
        _ => None,
    };
    let filter = EnvFilter::try_from_env("OUTBOXD_LOG").unwrap_or_else(|_| {
        // `plugin` commands print the plugin's logs themselves.
        let level = match (&cli.command, &serve_config) {
            (Command::Plugin(_), _) => "warn",
            // `config check` prints every error itself.
            (Command::Config(_), _) => "off",
            (_, Some(config)) => config.log_level.as_str(),
            _ => "info",
        };
        EnvFilter::new(log_filter(level))
    });
    // A `SIGHUP` may replace the log filter (`log_level`); it filters the log lines only, not
    // the spans exported over OTLP.
    let (filter, handle) = reload::Layer::new(filter);
    let set_log_level: SetLogLevel = Box::new(move |level| {
        let filter = EnvFilter::try_new(log_filter(level)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if serve_config.as_ref().is_some_and(|c| c.log_format == LogFormat::Json) {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    // Spans over OTLP when the standard variables ask for them, for `serve` only.
    let exporter = match &serve_config {
        Some(_) => traces::settings(|name| std::env::var(name).ok())?
            .map(|settings| traces::Exporter::start(&settings))
            .transpose()?,
        None => None,
    };
    let spans = exporter.as_ref().map(|e| e.layer());
    tracing_subscriber::registry().with(logs).with(spans).init();
    match cli.command {
        Command::Serve(args) => {
            let reloads = Reloads {
                path: args.config.path(),
                requests: reload_requests()?,
                set_log_level,
            };
            outboxd::server::serve(
                match serve_config {
                    Some(config) => config,
                    None => args.load()?,
                },
                Some(reloads),
                |addr| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "listening on {addr}");
                    let _ = out.flush();
                },
                shutdown_signal()?,
            )
            .await?;
            if let Some(exporter) = exporter {
                tokio::task::spawn_blocking(move || exporter.shutdown()).await??;
            }
        }
        Command::Enqueue {
            config,
            event_type,
            payload,
            idempotency_key,
            ordering_key,
            headers,
        } => println!(
            "{}",
            cli::enqueue(
                &config.load()?,
                event_type,
                payload,
                idempotency_key,
                ordering_key,
                headers
            )
            .await?
        ),
        Command::Status { config, event_id } => print!("{}", cli::status(&config.load()?, event_id).await?),
        Command::Dead(DeadCommand::List { config, filter, limit }) => {
            print!("{}", cli::dead_list(&config.load()?, filter, limit).await?)
        }
        Command::Dead(DeadCommand::Replay {
            config,
            filter,
            options,
        }) => print!("{}", cli::dead_replay(&config.load()?, filter, options).await?),
        Command::Replay(ReplayCommand::List { config, limit }) => {
            print!("{}", cli::replay_list(&config.load()?, limit).await?)
        }
        Command::Replay(ReplayCommand::Status { config, id }) => {
            print!("{}", cli::replay_status(&config.load()?, id).await?)
        }
        Command::Replay(ReplayCommand::Cancel { config, id }) => {
            print!("{}", cli::replay_cancel(&config.load()?, id).await?)
        }
        Command::Prune { config, filter, all } => print!("{}", cli::prune(&config.load()?, filter, all).await?),
        Command::Cancel {
            config,
            event_id,
            idempotency_key,
        } => print!("{}", cli::cancel(&config.load()?, event_id, idempotency_key).await?),
        Command::Target(TargetCommand::Pause { config, name }) => {
            print!("{}", cli::set_target_paused(&config.load()?, &name, true).await?)
        }
        Command::Target(TargetCommand::Resume { config, name }) => {
            print!("{}", cli::set_target_paused(&config.load()?, &name, false).await?)
        }
        Command::Source(SourceCommand::Status { config, url, token }) => {
            print!("{}", cli::source_status(&config.load()?, url, token).await?)
        }
        Command::Plugin(PluginCommand::Check { file, cache }) => print!("{}", cli::plugin_check(&file, &cache).await?),
        Command::Plugin(PluginCommand::Run { file, options }) => {
            let (transcript, outcomes) = cli::plugin_run(&file, options).await?;
            print!("{transcript}");
            return Ok(cli::run_exit_code(&outcomes));
        }
        Command::Plugin(PluginCommand::Wit { out }) => print!("{}", cli::plugin_wit(out.as_deref())?),
        Command::Config(ConfigCommand::Check { config }) => {
            let check = cli::config_check(&config).await;
            print!("{}", check.report());
            return Ok(u8::from(!check.errors.is_empty()));
        }
        Command::Completions { shell } => std::io::stdout().write_all(&cli::completions(shell))?,
        Command::Man => std::io::stdout().write_all(&cli::man_page()?)?,
        Command::Plugin(PluginCommand::New(options)) => {
            print!("{}", cli::plugin_new(&options, &std::env::current_dir()?)?)
        }
    }
    Ok(0)
}

/// One message per `SIGHUP` (never one elsewhere). The handler is installed at once, so a
/// `SIGHUP` during start-up is a reload once the service runs, not the end of the process.
fn reload_requests() -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while the service is
/// still starting (or before the task awaiting it has run) stops it gracefully instead of
/// killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
