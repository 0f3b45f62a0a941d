//! The breakers of every target, in memory: driven by the dispatcher's attempts, shown by
//! the API and the metrics. Breakers outlive reloads of their target; a restart starts them
//! closed.

use tokio::time::Instant;

use crate::policy::breaker::{Breaker, BreakerConfig, BreakerStatus};

/// The breakers of every target, shared by the dispatcher (which drives them) and the API
/// (which shows them). Breakers outlive reloads of their target.
#[derive(Debug, Default)]
pub struct Breakers {
    map: std::sync::Mutex<std::collections::HashMap<String, Breaker>>,
}

impl Breakers {
    /// Runs `f` on `target`'s breaker, creating it, or updating its configuration, first.
    pub fn with<R>(&self, target: &str, config: BreakerConfig, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = map.entry(target.to_owned()).or_insert_with(|| Breaker::new(config));
        breaker.reconfigure(config);
        f(breaker)
    }

    /// `target`'s breaker, as the API shows it, if it has one.
    pub fn status(&self, target: &str) -> Option<BreakerStatus> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(target).map(|b| b.status(Instant::now()))
    }
}
