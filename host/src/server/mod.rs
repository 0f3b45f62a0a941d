//! Running the service: `serve()` wires the store, the target registry, the front door, the
//! dispatcher, the source relays, the retention task, the replay worker, the plugin watcher and the HTTP API
//! together, and shuts them down in order; [`config`] is its configuration file, [`notify`]
//! what it tells a service manager (systemd), [`reload`] what a `SIGHUP` changes.

pub mod config;
mod http;
pub mod notify;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::config::ServiceConfig;
use crate::dispatch::breakers::Breakers;
use crate::dispatch::flow::Flows;
use crate::dispatch::{self, DispatchConfig};
use crate::domain::now_ms;
use crate::outbox::{Outbox, Routing};
use crate::plugin::{PluginError, PoolSize, Runtime};
use crate::store::{self, Access, Store, StoreError};
use crate::targets::{self, Registry};
use crate::{api, source};

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
    Watch(#[from] crate::targets::watcher::WatchError),
}

/// Runs the service until `shutdown` resolves, then stops gracefully: the API stops
/// accepting, lanes stop claiming, running attempts get the grace period, leases of the
/// rest are released. `on_listening` is called with the bound address once the API is up.
/// With `reloads`, each request rereads the configuration file (see [`reload`]).
pub async fn serve(
    config: ServiceConfig,
    reloads: Option<reload::Reloads>,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store: Arc<dyn Store> = store::open(&config.database, Access::Serve).await?;
    // A store of its own (SQLite, under the lock file): whatever is in flight was left by a
    // crashed predecessor. A shared store may have other hosts' work in flight: expired
    // leases are returned by the sweeper instead.
    if !store.is_shared() {
        let recovered = store.recover_orphans(now_ms()).await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "returned deliveries left in flight by a previous run to pending"
            );
        }
    }

    // Start-up is a reload from an empty registry. By default the host starts with what
    // loads: targets whose plugin fails are routed and held (see `targets::HeldTarget`);
    // `strict_start` refuses to start instead.
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
        if config.strict_start {
            return Err(ServeError::Targets {
                dir: config.plugins_dir.display().to_string(),
                errors: snapshot.errors.iter().map(|e| e.message.clone()).collect(),
            });
        }
        tracing::error!(
            dir = %config.plugins_dir.display(),
            broken_files = snapshot.errors.len(),
            held_targets = ?snapshot.held.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            "STARTING DEGRADED: some files in the plugins directory cannot be loaded (see the errors above, \
             GET /v1/targets and GET /healthz); targets whose manifest is valid get deliveries, held paused \
             until a good plugin file appears; a manifest that does not parse routes nothing"
        );
    }
    if snapshot.targets.is_empty() && snapshot.held.is_empty() {
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
    let flows = Arc::new(Flows::default());
    let live = reload::Live::new(&config);
    let retention = tokio::spawn(crate::store::retention::run(
        Arc::clone(&store),
        live.retention.subscribe(),
        stop.clone(),
    ));
    let sampler = tokio::spawn(crate::store::backlog::run(
        Arc::clone(&store),
        crate::store::backlog::SAMPLE_EVERY,
        stop.clone(),
    ));
    // The front door: the API, the relays and the dispatcher's operational events go through it.
    let outbox = Outbox::new(
        Arc::clone(&store),
        Routing::Live(Arc::clone(&registry)),
        Arc::clone(&wake),
    );
    // Wake-ups announced by other processes (other hosts' ingests and resumptions, the CLI)
    // wake idle lanes, and paused ones on a resumption.
    let wakeups = {
        let to = crate::store::Wakeups {
            work: Arc::clone(&wake),
            resumed: {
                let outbox = outbox.clone();
                Arc::new(move || outbox.pause_changed())
            },
        };
        let (store, stop) = (Arc::clone(&store), stop.clone());
        tokio::spawn(async move { store.forward_wakeups(to, stop).await })
    };
    // Bulk replay jobs: this host's worker, which resumes the jobs left running at start-up.
    let replay_kick = Arc::new(Notify::new());
    let replays = tokio::spawn(crate::replay::run(
        Arc::clone(&store),
        Arc::clone(&wake),
        Arc::clone(&replay_kick),
        crate::replay::POLL,
        stop.clone(),
    ));
    let dispatcher = tokio::spawn(dispatch::run(
        dispatch::Services {
            store: Arc::clone(&store),
            registry: Arc::clone(&registry),
            breakers: Arc::clone(&breakers),
            flows: Arc::clone(&flows),
            outbox: outbox.clone(),
            wake,
        },
        DispatchConfig {
            owner,
            poll_interval: config.poll_interval,
            lease_margin: config.lease_margin,
            shutdown_grace: config.shutdown_grace,
            max_in_flight: config.max_in_flight,
        },
        stop.clone(),
    ));
    let (sources, relays) = source::spawn_all(
        &config.sources,
        source::RelayContext {
            outbox: outbox.clone(),
            max_payload_bytes: config.max_payload_bytes,
        },
        stop.clone(),
    );
    let notified_store = Arc::clone(&store);
    let app = api::router(Arc::new(api::AppState {
        store,
        registry: Arc::clone(&registry),
        breakers,
        flows,
        outbox,
        replay_kick,
        sources,
        max_payload_bytes: config.max_payload_bytes,
        max_request_bytes: config.max_request_bytes,
        auth: live.auth.subscribe(),
        hosts: Arc::new(api::browser::HostRules::new(addr, &config.allowed_hosts)),
        request_timeout: config.http.request_timeout,
    }));

    let (reloader, rescan) = if config.watch_plugins {
        let watching = targets::watcher::spawn(Arc::clone(&registry), config.reload_debounce, stop.clone())?;
        (Some(watching.task), reload::Rescan::Watcher(watching.rescan))
    } else {
        (None, reload::Rescan::Direct(Arc::clone(&registry)))
    };
    let reloading = reloads.map(|reloads| reload::spawn(reloads, config.clone(), addr, live, rescan, stop.clone()));
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        notify::stopping();
        trigger.cancel();
    });
    tracing::info!(%addr, targets = snapshot.targets.len(), database = %config.database, "outboxd is up");
    on_listening(addr);
    notify::ready(&format!(
        "listening on {addr}; {} targets loaded",
        snapshot.targets.len()
    ));
    let keeper = notify::spawn(notified_store, addr.to_string(), stop.clone());
    http::run(listener, app, config.http, stop.clone()).await;
    stop.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    if let Some(reloading) = reloading {
        let _ = reloading.await;
    }
    let _ = retention.await;
    let _ = replays.await;
    let _ = sampler.await;
    for relay in relays {
        let _ = relay.await;
    }
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "dispatcher task failed");
    }
    let _ = wakeups.await;
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    Ok(())
}
