//! The service manager's notification protocol (systemd `Type=notify`, sd_notify(3)), spoken
//! over `$NOTIFY_SOCKET` and a no-op without it: `READY=1` once the API listens and the
//! targets are loaded, `STOPPING=1` when a stop begins, `WATCHDOG=1` at half the interval of
//! `$WATCHDOG_USEC` (when `$WATCHDOG_PID` is unset or names this process), and a `STATUS=`
//! line with the backlog (pending and in-flight deliveries) every [`STATUS_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::DeliveryStatus;
use crate::store::Store;

/// How often the status line is refreshed with the backlog.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Sends `states` if a service manager listens; a failure to send is logged, never fatal.
#[cfg(unix)]
fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The service is up: the API listens on `status`'s address and the targets are loaded.
pub fn ready(status: &str) {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
    #[cfg(not(unix))]
    let _ = status;
}

/// A graceful stop has begun.
pub fn stopping() {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: finishing running attempts"),
    ]);
}

/// The watchdog interval the service manager asked for, per sd_watchdog_enabled(3):
/// `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` is set to another process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `backlog: N pending, M in flight` from the store's counts.
pub fn backlog_status(store_counts: &crate::store::StatusCounts) -> String {
    let count = |status| -> u64 { store_counts.values().filter_map(|m| m.get(&status)).sum() };
    format!(
        "backlog: {} pending, {} in flight",
        count(DeliveryStatus::Pending),
        count(DeliveryStatus::InFlight)
    )
}

/// Keeps the service manager informed until `stop`: the watchdog (when asked for) and the
/// status line. Returns None when no service manager listens.
pub fn spawn(store: Arc<dyn Store>, listening: String, stop: CancellationToken) -> Option<JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let watchdog = watchdog_interval();
    Some(tokio::spawn(async move {
        let tick = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            #[cfg(unix)]
            if watchdog.is_some() {
                send(&[sd_notify::NotifyState::Watchdog]);
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = tokio::time::Instant::now();
                let status = match store.status_counts().await {
                    Ok(counts) => format!("listening on {listening}; {}", backlog_status(&counts)),
                    Err(e) => format!("listening on {listening}; backlog unknown: {e}"),
                };
                #[cfg(unix)]
                send(&[sd_notify::NotifyState::Status(&status)]);
                #[cfg(not(unix))]
                let _ = status;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StatusCounts;

    #[test]
    fn the_backlog_sums_pending_and_in_flight_over_targets() {
        let mut counts = StatusCounts::new();
        counts.entry("a".into()).or_default().insert(DeliveryStatus::Pending, 3);
        counts
            .entry("a".into())
            .or_default()
            .insert(DeliveryStatus::Delivered, 9);
        counts.entry("b".into()).or_default().insert(DeliveryStatus::Pending, 2);
        counts
            .entry("b".into())
            .or_default()
            .insert(DeliveryStatus::InFlight, 4);
        assert_eq!(backlog_status(&counts), "backlog: 5 pending, 4 in flight");
    }
}
