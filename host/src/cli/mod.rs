//! The command line: `serve`, `enqueue`, `status`, `dead list|replay` and `replay
//! list|status|cancel` (`replay.rs`), `cancel`, `prune`, `target pause|resume`, `source status`, `plugin check|run|wit|new`, `config check` (`check.rs`),
//! and `completions` and `man` (`shell.rs`, from the clap definition). The commands other than `serve` and `plugin` open
//! the database directly, so they work with or without a running `serve`.

mod check;
mod plugin;
mod replay;
mod scaffold;
mod shell;
mod source;
mod table;

pub use check::{ConfigCheck, config_check};
pub use plugin::{CacheOptions, RunOptions, outcome_exit_code, plugin_check, plugin_run, run_exit_code};
pub use replay::{
    ReplayCommand, ReplayOptions, cancel as replay_cancel, dead_replay, list as replay_list, status as replay_status,
};
pub use scaffold::{Lang, NewOptions, World, plugin_new, plugin_wit};
pub use shell::{completions, man_page};
pub use source::source_status;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::api::FilterIn;
use crate::config::ConfigError;
use crate::domain::{DeliveryStatus, EventId, format_ms, now_ms};
use crate::outbox::input::{self, IngestError};
use crate::outbox::{Origin, Outbox, Routing};
use crate::plugin::PluginError;
use crate::server::config::ServiceConfig;
use crate::store::{self, Access, EventRef, FailedFilter, Store, StoreError};
use crate::targets::manifest::TargetSpec;
use crate::targets::manifest::scan_targets;
use crate::targets::routing::Routes;
use table::{Col, Table};

/// The version `--version` prints: the package's and the commit it was built from (`build.rs`;
/// `unknown` when built outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("OUTBOXD_COMMIT"), ")");

/// outboxd: persist events first, then deliver them to every target through sandboxed
/// WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the service configuration is.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The service configuration file [default: ./outboxd.toml, or built-in defaults when
    /// that file does not exist].
    #[arg(long, short, env = "OUTBOXD_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file [`ConfigArg::load`] reads, if any.
    pub fn path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None if Path::new("outboxd.toml").exists() => Some(PathBuf::from("outboxd.toml")),
            None => None,
        }
    }

    /// Loads the named file, or `./outboxd.toml` when it exists, or the defaults.
    pub fn load(&self) -> Result<ServiceConfig, ConfigError> {
        match &self.config {
            Some(path) => ServiceConfig::load(path),
            None if Path::new("outboxd.toml").exists() => ServiceConfig::load(Path::new("outboxd.toml")),
            None => Ok(ServiceConfig::defaults_in(Path::new("."))),
        }
    }
}

/// `outboxd serve`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Refuse to start when any file in the plugins directory cannot be loaded (as the
    /// `strict_start = true` configuration key). By default the host starts with what loads.
    #[arg(long)]
    pub strict: bool,
}

impl ServeArgs {
    /// The configuration, with `--strict` applied.
    pub fn load(&self) -> Result<ServiceConfig, ConfigError> {
        let mut config = self.config.load()?;
        config.strict_start |= self.strict;
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API and the delivery workers.
    Serve(ServeArgs),
    /// Accept one event by writing it straight into the database.
    Enqueue {
        #[command(flatten)]
        config: ConfigArg,
        /// The event type, e.g. `order.created`.
        #[arg(long = "type")]
        event_type: String,
        /// The payload, as JSON text.
        #[arg(long)]
        payload: String,
        /// A producer idempotency key: the same key always yields the first event.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Events with the same key reach `ordered` targets one after another, in order.
        #[arg(long)]
        ordering_key: Option<String>,
        /// A header for the plugin, as `name=value`; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Show delivery counts per target, or one event with its deliveries.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// An event id; without it, counts per target.
        event_id: Option<String>,
    },
    /// Inspect or try a plugin file, without a database or a server.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List and replay dead and discarded deliveries.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Bulk replay jobs: list them, show one's progress, cancel one.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Pause or resume a target by hand.
    #[command(subcommand)]
    Target(TargetCommand),
    /// Cancel an event's deliveries that are not final: `pending`, `paused` and `dead` ones
    /// become `cancelled`; one `in_flight` finishes its attempt (cancel again should it be
    /// retried). Prints what happened to each delivery.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The event id.
        #[arg(required_unless_present = "idempotency_key")]
        event_id: Option<String>,
        /// The producer's idempotency key instead of the event id.
        #[arg(long, conflicts_with = "event_id")]
        idempotency_key: Option<String>,
    },
    /// Delete dead and discarded deliveries matching a filter, with their history, and their
    /// events once no delivery is left. Retention never deletes them on its own.
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Prune every failed delivery (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Relay status of the application outbox tables (`[[sources]]`).
    #[command(subcommand)]
    Source(SourceCommand),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the completion script for a shell, e.g. `outboxd completions bash >
    /// /etc/bash_completion.d/outboxd`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `outboxd man > outboxd.1`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Ask the running service (`GET /v1/sources` at `listen`) how each source is doing.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The service's base URL [default: http://<listen> from the configuration].
        #[arg(long)]
        url: Option<String>,
        /// An API token with the `read` scope, when `[api]` has tokens.
        #[arg(long, env = "OUTBOXD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Which failed deliveries a command applies to.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// `dead` or `discarded` (default: both).
    #[arg(long)]
    pub status: Option<String>,
    /// Only this target's deliveries.
    #[arg(long)]
    pub target: Option<String>,
    /// Only events whose type matches this glob, e.g. `order.*`.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Failed at or after this time (RFC 3339 or epoch ms).
    #[arg(long)]
    pub since: Option<String>,
    /// Failed before this time (RFC 3339 or epoch ms).
    #[arg(long)]
    pub until: Option<String>,
    /// The last error contains this text (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Only this delivery; repeatable.
    #[arg(long = "delivery")]
    pub delivery_ids: Vec<i64>,
}

impl FilterArgs {
    fn into_filter(self) -> Result<FailedFilter, CliError> {
        FilterIn {
            status: self.status,
            target: self.target,
            event_type: self.event_type,
            since: self.since,
            until: self.until,
            error: self.error,
            delivery_ids: self.delivery_ids,
            after: None,
            limit: None,
            all: None,
        }
        .into_filter()
        .map_err(|e| CliError::Input(e.0))
    }
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List failed deliveries, oldest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Make matching failed deliveries pending again, attempt count reset, history kept: a
    /// bulk replay job over those that failed before it started, worked here with a progress
    /// bar (and by a running `serve`); `--detach` leaves it to `serve`. Replaying twice does
    /// nothing more.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        options: ReplayOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Stop claiming the target's deliveries; they stay pending.
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// Claim the target's deliveries again.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load `outboxd.toml`, every target manifest and every plugin file as `serve` would,
    /// starting nothing, and list every error found: exit status 1 if there is any, else 0
    /// and a summary.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Say whether FILE is a valid plugin: its world, WIT version, imports, size and compile
    /// time. Exits 1 with the reason when it is not.
    Check {
        file: PathBuf,
        #[command(flatten)]
        cache: CacheOptions,
    },
    /// Run deliveries through FILE with the real host imports and limits, each in a fresh
    /// instance, and print the plugin's logs, its HTTP requests, what it wrote to stdout and
    /// stderr, and the outcome. Exits 0 when all were delivered, 4 when any failed
    /// permanently, else 3 (a retryable failure).
    Run {
        file: PathBuf,
        #[command(flatten)]
        options: RunOptions,
    },
    /// Print the WIT contract (`outboxd:target@0.1.0`) this binary implements, or write it as
    /// `DIR/target.wit`.
    Wit {
        /// Write `DIR/target.wit` instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Create a plugin project in ./NAME: the WIT, an adapter that POSTs each event to
    /// `config.url`, a build script, native unit tests and a sample manifest.
    New(NewOptions),
}

pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not `name=value`"))
}

/// A command that failed.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Service(String),
    #[error("no event with id {0}")]
    NotFound(EventId),
    #[error("no stored event with idempotency key `{0}`")]
    KeyNotFound(String),
    #[error("{path} is not a valid plugin: {source}")]
    Plugin {
        path: String,
        #[source]
        source: PluginError,
    },
}

impl From<IngestError> for CliError {
    fn from(e: IngestError) -> Self {
        CliError::Input(e.to_string())
    }
}

async fn open_store(config: &ServiceConfig) -> Result<std::sync::Arc<dyn Store>, CliError> {
    Ok(store::open(&config.database, Access::Client).await?)
}

/// `outboxd enqueue`: validates exactly as the API does, routes by the manifests in the
/// plugins directory, and prints the event id.
pub async fn enqueue(
    config: &ServiceConfig,
    event_type: String,
    payload: String,
    idempotency_key: Option<String>,
    ordering_key: Option<String>,
    headers: Vec<(String, String)>,
) -> Result<String, CliError> {
    let payload: Box<serde_json::value::RawValue> =
        serde_json::from_str(&payload).map_err(|e| CliError::Input(format!("--payload is not valid JSON: {e}")))?;
    // Serialised with the payload as raw text, so it is stored exactly as given.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        event_type: String,
        payload: &'a serde_json::value::RawValue,
        idempotency_key: Option<String>,
        ordering_key: Option<String>,
        headers: std::collections::BTreeMap<String, String>,
    }
    let body = serde_json::to_vec(&Body {
        event_type,
        payload: &payload,
        idempotency_key,
        ordering_key,
        headers: headers.into_iter().collect(),
    })
    .map_err(|e| CliError::Input(e.to_string()))?;
    let batch = input::parse_from_producer(&body, config.max_payload_bytes)?;
    let scan = scan_targets(&config.plugins_dir)?;
    for e in &scan.errors {
        eprintln!("warning: {e}");
    }
    let routes = Routes::new(scan.targets.iter().map(TargetSpec::route));
    let outbox = Outbox::new(
        open_store(config).await?,
        Routing::Fixed(std::sync::Arc::new(routes)),
        std::sync::Arc::default(),
    );
    let ingested = outbox.accept(batch.into_vec(), Origin::Cli).await?;
    let first = ingested[0];
    Ok(if first.duplicate {
        format!("{} (duplicate)", first.id)
    } else {
        first.id.to_string()
    })
}

/// `outboxd status`: a table of counts per target, or one event in detail.
pub async fn status(config: &ServiceConfig, event_id: Option<String>) -> Result<String, CliError> {
    let store = open_store(config).await?;
    let mut out = String::new();
    match event_id {
        None => {
            let counts = store.status_counts().await?;
            let _ = write!(out, "{:<24}", "TARGET");
            for s in DeliveryStatus::ALL {
                let _ = write!(out, "{:>11}", s.as_str().to_uppercase());
            }
            out.push('\n');
            for (target, by_status) in counts {
                let _ = write!(out, "{target:<24}");
                for s in DeliveryStatus::ALL {
                    let _ = write!(out, "{:>11}", by_status.get(s).copied().unwrap_or(0));
                }
                out.push('\n');
            }
        }
        Some(id) => {
            let id: EventId = id
                .parse()
                .map_err(|e: crate::domain::InvalidValue| CliError::Input(e.0))?;
            let detail = store.event(id).await?.ok_or(CliError::NotFound(id))?;
            let e = &detail.event;
            let _ = writeln!(
                out,
                "event {} ({}), accepted {}",
                e.id,
                e.event_type,
                format_ms(e.created_at)
            );
            if let Some(at) = detail.erased_at {
                let _ = writeln!(out, "  payload and headers erased {}", format_ms(at));
            }
            for d in &detail.deliveries {
                let _ = write!(
                    out,
                    "  {:<20} {:<10} attempts={}",
                    d.target.as_str(),
                    d.status.as_str(),
                    d.attempts
                );
                if let Some(next) = d.next_attempt_at {
                    let _ = write!(out, " next={}", format_ms(next));
                }
                if let Some(err) = &d.last_error {
                    let _ = write!(out, " last_error={err:?}");
                }
                out.push('\n');
                for h in &d.history {
                    let _ = writeln!(
                        out,
                        "    #{} {} {} {}ms{}",
                        h.n,
                        format_ms(h.started_at),
                        h.outcome.as_str(),
                        h.duration_ms.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                        h.error.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
                    );
                    match &h.response {
                        Some(r) if r.body.is_empty() => {
                            let _ = writeln!(out, "      response {}", r.status);
                        }
                        Some(r) => {
                            let _ = writeln!(out, "      response {}: {}", r.status, table::one_line(&r.body));
                        }
                        None => {}
                    }
                    if let Some(detail) = &h.detail {
                        let _ = writeln!(out, "      detail: {}", table::one_line(detail));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `outboxd dead list`.
pub async fn dead_list(config: &ServiceConfig, filter: FilterArgs, limit: usize) -> Result<String, CliError> {
    let store = open_store(config).await?;
    let rows = store.list_failed(filter.into_filter()?, 0, limit).await?;
    const COLS: &[Col] = &[
        Col::Right(10),
        Col::Left(36),
        Col::Left(20),
        Col::Left(24),
        Col::Left(9),
        Col::Right(8),
        Col::Left(24),
        Col::Left(40),
        Col::Rest,
    ];
    let mut table = Table::new(
        COLS,
        "  ",
        &[
            "DELIVERY",
            "EVENT",
            "TARGET",
            "TYPE",
            "STATUS",
            "ATTEMPTS",
            "FAILED AT",
            "LAST ERROR",
            "LAST RESPONSE",
        ],
    );
    for r in rows {
        table.row(&[
            r.delivery_id.to_string(),
            r.event_id.to_string(),
            r.target.to_string(),
            r.event_type,
            r.status.as_str().to_owned(),
            r.attempts.to_string(),
            format_ms(r.failed_at),
            table::one_line(&r.last_error.unwrap_or_default()),
            r.last_response
                .map(|r| format!("{} {}", r.status, table::one_line(&r.body)))
                .unwrap_or_default(),
        ]);
    }
    Ok(table.finish())
}

/// `outboxd prune`: deletes matching failed deliveries in chunks, reporting progress on
/// stderr. Without a filter it refuses unless `all`.
pub async fn prune(config: &ServiceConfig, filter: FilterArgs, all: bool) -> Result<String, CliError> {
    const CHUNK: usize = 500;
    let filter = filter.into_filter()?;
    if filter == FailedFilter::default() && !all {
        return Err(CliError::Input(
            "prune needs a filter (--status, --target, --type, --since, --until, --error, --delivery) or --all".into(),
        ));
    }
    let store = open_store(config).await?;
    let total = store.count_failed(filter.clone()).await?;
    let mut done = 0u64;
    loop {
        let n = store.prune_failed(filter.clone(), CHUNK).await?;
        done += n as u64;
        eprintln!("pruned {done}/{total}");
        if n < CHUNK {
            break;
        }
    }
    Ok(format!("pruned {done} deliveries\n"))
}

/// `outboxd cancel`: one line per delivery of the event, what the cancellation did to it.
pub async fn cancel(
    config: &ServiceConfig,
    event_id: Option<String>,
    idempotency_key: Option<String>,
) -> Result<String, CliError> {
    let event = match (event_id, idempotency_key) {
        (Some(id), None) => EventRef::Id(
            id.parse()
                .map_err(|e: crate::domain::InvalidValue| CliError::Input(e.0))?,
        ),
        (None, Some(key)) => {
            EventRef::ProducerKey(crate::domain::ProducerKey::try_from(key).map_err(|e| CliError::Input(e.0))?)
        }
        _ => {
            return Err(CliError::Input(
                "give an event id or --idempotency-key, not both".into(),
            ));
        }
    };
    let missing = match &event {
        EventRef::Id(id) => CliError::NotFound(*id),
        EventRef::ProducerKey(key) => CliError::KeyNotFound(key.as_str().to_owned()),
    };
    let store = open_store(config).await?;
    let done = store.cancel(event, now_ms()).await?.ok_or(missing)?;
    let mut out = format!("event {}\n", done.event_id);
    for d in &done.deliveries {
        let what = if d.was == DeliveryStatus::InFlight {
            "in flight: its attempt finishes (cancel again should it be retried)".to_owned()
        } else if d.was != d.status {
            format!("cancelled (was {})", d.was.as_str())
        } else {
            format!("already final: {}", d.status.as_str())
        };
        let _ = writeln!(out, "  {:<20} {what}", d.target.as_str());
    }
    Ok(out)
}

/// `outboxd target pause|resume`.
pub async fn set_target_paused(config: &ServiceConfig, name: &str, paused: bool) -> Result<String, CliError> {
    let target: crate::domain::TargetName = name
        .parse()
        .map_err(|e: crate::domain::InvalidValue| CliError::Input(e.0))?;
    let store = open_store(config).await?;
    let changed = store.set_target_paused(&target, paused, now_ms()).await?;
    let word = if paused { "paused" } else { "resumed" };
    Ok(if changed {
        format!("target {target} {word}\n")
    } else {
        format!("target {target} was already {word}\n")
    })
}
