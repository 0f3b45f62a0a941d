//! Held targets: a valid manifest whose plugin does not load is still routed, so its events
//! get deliveries; a held lane keeps those deliveries `paused`, with the load error as their
//! last error, until a good plugin file makes the target live (the supervisor then resumes
//! them, as for any target that comes back).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{TargetName, now_ms};
use crate::store::Store;

/// Shortest gap between two holds, so that a burst of ingests costs one write.
const MIN_GAP: Duration = Duration::from_millis(50);

/// Holds `target`'s new pending deliveries with `reason` until `token` is cancelled: at once,
/// then after every ingest wake-up and at least every `poll`.
pub(super) async fn hold_lane(
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    target: TargetName,
    reason: String,
    poll: Duration,
    token: CancellationToken,
) {
    tracing::warn!(target = %target, %reason, "target held: its deliveries stay paused until its plugin loads");
    while !token.is_cancelled() {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match store.hold_target(&target, &reason, now_ms()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(target = %target, held = n, "held deliveries of a target whose plugin does not load")
            }
            Err(e) => tracing::error!(target = %target, error = %e, "could not hold deliveries"),
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(poll) => {}
            _ = token.cancelled() => break,
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}
