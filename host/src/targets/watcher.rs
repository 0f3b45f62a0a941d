//! Hot reload: watches the plugins directory and, once it has been quiet for the debounce
//! period, reloads the registry. Editors and `cp` write a file in several steps; waiting
//! for quiet avoids most half-written reads, and a half-written file that slips through
//! only fails validation, which keeps the previous version serving until the next change.

use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::targets::Registry;

/// The directory could not be watched.
#[derive(Debug, Error)]
#[error("cannot watch {dir}: {source}")]
pub struct WatchError {
    dir: String,
    #[source]
    source: notify::Error,
}

/// The running reloader.
pub struct Watching {
    /// Ends after `stop`.
    pub task: JoinHandle<()>,
    /// Asks for a reload as if the directory had changed (`SIGHUP` does): sending never
    /// waits, and a full channel already holds a pending request.
    pub rescan: mpsc::Sender<()>,
}

/// Starts the reloader: the only task that reloads the registry after start-up, so reloads
/// never overlap.
pub fn spawn(registry: Arc<Registry>, debounce: Duration, stop: CancellationToken) -> Result<Watching, WatchError> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let rescan = tx.clone();
    let dir = registry.dir().to_owned();
    let watch_error = |source| WatchError {
        dir: dir.display().to_string(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
        // A full channel already holds a pending "something changed".
        Ok(_) => {
            let _ = tx.try_send(());
        }
        Err(e) => tracing::warn!(error = %e, "plugins directory watch error"),
    })
    .map_err(watch_error)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
    tracing::info!(dir = %dir.display(), "watching the plugins directory for changes");

    let task = tokio::spawn(async move {
        let _watcher = watcher; // dropping it ends the watch
        loop {
            tokio::select! {
                changed = rx.recv() => if changed.is_none() { break },
                _ = stop.cancelled() => break,
            }
            // Wait until nothing has changed for `debounce`.
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if stop.is_cancelled() {
                break;
            }
            let snapshot = registry.reload().await;
            tracing::info!(
                targets = snapshot.targets.len(),
                errors = snapshot.errors.len(),
                "plugins directory reloaded"
            );
        }
    });
    Ok(Watching { task, rescan })
}
