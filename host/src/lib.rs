//! outboxd: a transactional outbox delivery service. Events are persisted first (SQLite,
//! one delivery per subscribed target), then delivered to every target by sandboxed
//! WebAssembly plugins with retries, backoff and leases. See `docs/architecture.md`.

pub mod api;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod ingest;
pub mod plugin;
pub mod store;
pub mod targets;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::dispatch::DispatchConfig;
use crate::dispatch::breaker::Breakers;
use crate::domain::now_ms;
use crate::plugin::{PluginError, PoolSize, Runtime};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::targets::Registry;

/// Plugin instances kept for `slow` targets, which run outside the shared pool of
/// `max_in_flight` attempts (beyond them, slow attempts wait for a free instance).
const SLOW_INSTANCES: u32 = 192;

/// Why the service could not start or run.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("the plugins directory {dir} has files that cannot be loaded:\n  {}", .errors.join("\n  "))]
    Targets { dir: String, errors: Vec<String> },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Watch(#[from] targets::watcher::WatchError),
}

/// Runs the service until `shutdown` resolves, then stops gracefully: the API stops
/// accepting, lanes stop claiming, running attempts get the grace period, leases of the
/// rest are released. `on_listening` is called with the bound address once the API is up.
pub async fn serve(
    config: ServiceConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let db = config.database.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open_exclusive(&db))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let store: Arc<dyn Store> = Arc::new(store);
    let recovered = store.recover_orphans(now_ms()).await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "returned deliveries left in flight by a previous run to pending"
        );
    }

    // Start-up is a reload from an empty registry. At start-up every file must load: a
    // target that silently failed to load would silently receive nothing.
    // Instances for every attempt the shared pool admits, and for `slow` targets beside it.
    let pool = PoolSize {
        instances: u32::try_from(config.max_in_flight)
            .unwrap_or(u32::MAX)
            .saturating_add(SLOW_INSTANCES),
    };
    let runtime = Runtime::with_pool(Some(config.cache_dir.clone()), pool)?;
    let registry = Arc::new(Registry::new(runtime, config.plugins_dir.clone()));
    let snapshot = registry.reload().await;
    if !snapshot.errors.is_empty() {
        return Err(ServeError::Targets {
            dir: config.plugins_dir.display().to_string(),
            errors: snapshot.errors.iter().map(|e| e.message.clone()).collect(),
        });
    }
    if snapshot.targets.is_empty() {
        tracing::warn!(dir = %config.plugins_dir.display(), "no targets: events are stored but go nowhere");
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;

    let stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    let breakers = Arc::new(Breakers::default());
    let dispatcher = tokio::spawn(dispatch::run(
        Arc::clone(&store),
        Arc::clone(&registry),
        Arc::clone(&breakers),
        DispatchConfig {
            owner,
            poll_interval: config.poll_interval,
            lease_margin: config.lease_margin,
            shutdown_grace: config.shutdown_grace,
            max_in_flight: config.max_in_flight,
        },
        Arc::clone(&wake),
        stop.clone(),
    ));
    let app = api::router(Arc::new(api::AppState {
        store,
        registry: Arc::clone(&registry),
        breakers,
        wake,
        max_payload_bytes: config.max_payload_bytes,
        max_request_bytes: config.max_request_bytes,
    }));

    let reloader = if config.watch_plugins {
        Some(targets::watcher::spawn(
            Arc::clone(&registry),
            config.reload_debounce,
            stop.clone(),
        )?)
    } else {
        None
    };
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    tracing::info!(%addr, targets = snapshot.targets.len(), "outboxd is up");
    on_listening(addr);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await;
    stop.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "dispatcher task failed");
    }
    served.map_err(ServeError::Http)
}
