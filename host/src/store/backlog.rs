//! The backlog sampler: a background task that reads each target's backlog (`pending`,
//! `in_flight`, `paused`) from the store every [`SAMPLE_EVERY`] and hands it to the in-memory
//! history (`telemetry::history`), where the dashboard's backlog chart reads it. One cheap
//! read ([`Store::backlog_counts`]) per interval, whatever the traffic; a failed read is
//! logged and the minute keeps its earlier sample, if any.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::telemetry::history;

/// How often the backlog is read: four samples a minute, the last of each minute kept.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Samples the backlog now and every `every` until `stop`.
pub async fn run(store: Arc<dyn Store>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.backlog_counts().await {
            Ok(backlog) => history::backlog_sampled(&backlog),
            Err(e) => tracing::warn!(error = %e, "cannot read the backlog for the dashboard's history"),
        }
    }
}
