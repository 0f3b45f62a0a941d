//! Reloading `outboxd.toml` while running (`SIGHUP`). What can change live changes: the log
//! level (`log_level`), the API's access rules (`[api]` `tokens`, `open`,
//! `allow_unauthenticated`) and retention (`retention`, `idempotency_retention`,
//! `retention_batch`, `retention_interval_ms`). Every other key keeps its running value until
//! a restart, and the log names each one that changed. The plugins directory is rescanned
//! (which re-reads every manifest, and every `{ env }`/`{ file }` value in them). A file that
//! does not load, or whose access rules would leave a non-loopback address open, changes
//! nothing: the error is logged and the running configuration kept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::ServiceConfig;
use crate::api::auth::AuthConfig;
use crate::store::retention::RetentionConfig;
use crate::targets::Registry;

/// Applies a new log filter (`log_level`); the error says why it was not applied.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the caller of `serve` provides for reloads.
pub struct Reloads {
    /// The file to reread; `None` when the service runs on built-in defaults (a reload then
    /// only rescans the plugins directory).
    pub path: Option<PathBuf>,
    /// One message per reload request (one per `SIGHUP`).
    pub requests: mpsc::UnboundedReceiver<()>,
    /// Replaces the log filter.
    pub set_log_level: SetLogLevel,
}

/// The live parts of the configuration, as the running service reads them.
pub struct Live {
    pub auth: watch::Sender<Arc<AuthConfig>>,
    pub retention: watch::Sender<RetentionConfig>,
}

impl Live {
    pub fn new(config: &ServiceConfig) -> Self {
        Self {
            auth: watch::channel(Arc::new(config.api.clone())).0,
            retention: watch::channel(config.retention).0,
        }
    }
}

/// How the plugins directory is rescanned: through the watcher, the registry's only
/// reloader when there is one, or directly.
pub enum Rescan {
    Watcher(mpsc::Sender<()>),
    Direct(Arc<Registry>),
}

/// The keys that keep their running value until a restart and differ in `new`.
fn kept_keys(running: &ServiceConfig, new: &ServiceConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            kept.push(key);
        }
    };
    check("listen", running.listen != new.listen);
    check("database", running.database != new.database);
    check("plugins_dir", running.plugins_dir != new.plugins_dir);
    check("cache_dir", running.cache_dir != new.cache_dir);
    check("max_payload_bytes", running.max_payload_bytes != new.max_payload_bytes);
    check("max_request_bytes", running.max_request_bytes != new.max_request_bytes);
    check("shutdown_grace_ms", running.shutdown_grace != new.shutdown_grace);
    check("poll_interval_ms", running.poll_interval != new.poll_interval);
    check("lease_margin_ms", running.lease_margin != new.lease_margin);
    check("watch_plugins", running.watch_plugins != new.watch_plugins);
    check("reload_debounce_ms", running.reload_debounce != new.reload_debounce);
    check("max_in_flight", running.max_in_flight != new.max_in_flight);
    check("log_format", running.log_format != new.log_format);
    check("api.allowed_hosts", running.allowed_hosts != new.allowed_hosts);
    check("api (timeouts, max_connections)", running.http != new.http);
    // No values are compared in the open (they may hold credentials), only whether they differ.
    check(
        "sources",
        format!("{:?}", running.sources) != format!("{:?}", new.sources),
    );
    kept
}

/// The reloading task: one reload per request, in order, until `stop`.
pub fn spawn(
    mut reloads: Reloads,
    mut running: ServiceConfig,
    listening: SocketAddr,
    live: Live,
    rescan: Rescan,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                request = reloads.requests.recv() => if request.is_none() { return },
                _ = stop.cancelled() => return,
            }
            tracing::info!("reload requested (SIGHUP)");
            if let Some(path) = reloads.path.clone() {
                let loaded = tokio::task::spawn_blocking(move || ServiceConfig::load(&path)).await;
                match loaded {
                    Ok(Ok(new)) => apply(&mut running, new, listening, &live, &reloads.set_log_level),
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "outboxd.toml not reloaded: the running configuration is kept"
                    ),
                    Err(e) => tracing::error!(error = %e, "outboxd.toml not reloaded: the loading task failed"),
                }
            }
            match &rescan {
                Rescan::Watcher(tx) => {
                    let _ = tx.try_send(());
                }
                Rescan::Direct(registry) => {
                    let snapshot = registry.reload().await;
                    tracing::info!(
                        targets = snapshot.targets.len(),
                        errors = snapshot.errors.len(),
                        "plugins directory reloaded"
                    );
                }
            }
        }
    })
}

/// Applies `new`'s live parts to the running service and to `running`; logs the rest.
fn apply(
    running: &mut ServiceConfig,
    new: ServiceConfig,
    listening: SocketAddr,
    live: &Live,
    set_log_level: &SetLogLevel,
) {
    // The listen address in force is the one bound at start, whatever the file says now.
    if let Err(message) = new.api.check_listen(listening) {
        tracing::error!(%message, "outboxd.toml not reloaded: the running configuration is kept");
        return;
    }
    let mut applied = Vec::new();
    if new.log_level != running.log_level {
        match set_log_level(&new.log_level) {
            Ok(()) => {
                running.log_level = new.log_level.clone();
                applied.push("log_level");
            }
            Err(message) => tracing::error!(%message, "log_level not applied; the running one is kept"),
        }
    }
    running.api = new.api.clone();
    live.auth.send_replace(Arc::new(new.api.clone()));
    applied.push("api (tokens, open, allow_unauthenticated)");
    if new.retention != running.retention {
        running.retention = new.retention;
        live.retention.send_replace(new.retention);
        applied.push("retention");
    }
    let kept = kept_keys(running, &new);
    if !kept.is_empty() {
        tracing::warn!(
            keys = %kept.join(", "),
            "outboxd.toml: these keys changed but keep their running values until a restart"
        );
    }
    tracing::info!(applied = %applied.join(", "), "outboxd.toml reloaded");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn live_keys_apply_kept_keys_are_named_and_a_refused_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outboxd.toml");
        let running_config = ServiceConfig::defaults_in(dir.path());
        let live = Live::new(&running_config);
        let levels = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&levels);
        let set: SetLogLevel = Box::new(move |l: &str| {
            seen.lock().unwrap().push(l.to_owned());
            Ok(())
        });
        let listening: SocketAddr = "127.0.0.1:8080".parse().unwrap();

        let mut running = running_config.clone();
        std::fs::write(
            &path,
            "log_level = \"debug\"\nretention = \"1h\"\nlisten = \"127.0.0.1:9\"\nmax_in_flight = 3\n\
             [[api.tokens]]\nname = \"a\"\nscopes = [\"read\"]\ntoken = \"0123456789abcdef\"\n",
        )
        .unwrap();
        apply(
            &mut running,
            ServiceConfig::load(&path).unwrap(),
            listening,
            &live,
            &set,
        );
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        assert!(live.auth.borrow().enabled());
        assert_eq!(
            live.retention.borrow().retention,
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(running.listen.port(), 8080, "kept");
        assert_eq!(running.max_in_flight, 64, "kept");
        assert_eq!(
            kept_keys(&running, &ServiceConfig::load(&path).unwrap()),
            ["listen", "max_in_flight"]
        );

        // Tokens gone while listening on a public address (the file names a loopback one,
        // which is kept): refused whole.
        std::fs::write(&path, "log_level = \"trace\"\n").unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        apply(&mut running, ServiceConfig::load(&path).unwrap(), public, &live, &set);
        assert_eq!(*levels.lock().unwrap(), ["debug"], "nothing applied");
        assert!(live.auth.borrow().enabled(), "the tokens are kept");
    }
}
