//! The command line: `serve`, `enqueue` and `status`. `enqueue` and `status` open the
//! database directly, so they work with or without a running `serve`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::config::{ConfigError, ServiceConfig, scan_targets};
use crate::domain::{DeliveryStatus, EventId, format_ms, now_ms};
use crate::ingest::{self, IngestError};
use crate::routing::Routes;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// outboxd: persist events first, then deliver them to every target through sandboxed
/// WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The service configuration file. When the default is absent, defaults apply.
    #[arg(
        long,
        short,
        global = true,
        default_value = "outboxd.toml",
        env = "OUTBOXD_CONFIG"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the HTTP API and the delivery workers.
    Serve,
    /// Accept one event by writing it straight into the database.
    Enqueue {
        /// The event type, e.g. `order.created`.
        #[arg(long = "type")]
        event_type: String,
        /// The payload, as JSON text.
        #[arg(long)]
        payload: String,
        /// A producer idempotency key: the same key always yields the first event.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// A header for the plugin, as `name=value`; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Show delivery counts per target, or one event with its deliveries.
    Status {
        /// An event id; without it, counts per target.
        event_id: Option<String>,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
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
    #[error("no event with id {0}")]
    NotFound(EventId),
}

impl From<IngestError> for CliError {
    fn from(e: IngestError) -> Self {
        CliError::Input(e.to_string())
    }
}

/// Loads the service configuration; a missing *default* file means defaults.
pub fn load_config(path: &Path, explicit: bool) -> Result<ServiceConfig, ConfigError> {
    if !explicit && !path.exists() {
        return Ok(ServiceConfig::defaults_in(Path::new(".")));
    }
    ServiceConfig::load(path)
}

async fn open_store(config: &ServiceConfig) -> Result<SqliteStore, CliError> {
    let path = config.database.clone();
    tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(Into::into)
}

/// `outboxd enqueue`: validates exactly as the API does, routes by the manifests in the
/// plugins directory, and prints the event id.
pub async fn enqueue(
    config: &ServiceConfig,
    event_type: String,
    payload: String,
    idempotency_key: Option<String>,
    headers: Vec<(String, String)>,
) -> Result<String, CliError> {
    let payload: Box<serde_json::value::RawValue> = serde_json::from_str(&payload)
        .map_err(|e| CliError::Input(format!("--payload is not valid JSON: {e}")))?;
    let body = serde_json::json!({
        "type": event_type,
        "payload": payload,
        "idempotency_key": idempotency_key,
        "headers": headers.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    });
    let batch = ingest::parse(body.to_string().as_bytes(), config.max_payload_bytes)?;
    let scan = scan_targets(&config.plugins_dir)?;
    for e in &scan.errors {
        eprintln!("warning: {e}");
    }
    let routes = Routes::new(scan.targets.into_iter().map(|t| (t.name, t.events)));
    let events = ingest::route(batch.into_vec(), &routes);
    let store = open_store(config).await?;
    let ingested = store.ingest(events, now_ms()).await?;
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
                        h.duration_ms
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "-".into()),
                        h.error
                            .as_deref()
                            .map(|e| format!(" {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(out)
}
