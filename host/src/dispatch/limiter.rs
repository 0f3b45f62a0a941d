//! Where a lane's rate limit is kept: in this process (a [`TokenBucket`], for a store one host
//! owns) or in the store itself (one bucket per target for the whole cluster, for a shared
//! store), so that `rate_per_sec` limits the target, not each host.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ratelimit::TokenBucket;
use crate::domain::TargetName;
use crate::store::Store;

/// A lane's rate limit.
pub(crate) enum Limiter {
    Local(TokenBucket),
    Shared { rate: f64 },
}

impl Limiter {
    /// The limiter of a target with `rate` per second, kept where `store` wants it.
    pub(crate) fn new(store: &Arc<dyn Store>, rate: f64) -> Self {
        if store.is_shared() {
            Self::Shared { rate }
        } else {
            Self::Local(TokenBucket::new(rate, Instant::now()))
        }
    }

    /// Takes up to `want` tokens: `Ok(granted)` with at least one, or `Err(wait)` until one is
    /// due. A store that fails is treated as an empty bucket for a moment.
    pub(crate) async fn take(
        &mut self,
        store: &dyn Store,
        target: &TargetName,
        want: usize,
    ) -> Result<usize, Duration> {
        match self {
            Self::Local(bucket) => match bucket.take(want, Instant::now()) {
                0 => Err(bucket.wait_for_one(Instant::now())),
                n => Ok(n),
            },
            Self::Shared { rate } => match store.take_tokens(target, *rate, want).await {
                Ok(Some(grant)) if grant.granted > 0 => Ok(grant.granted),
                Ok(Some(grant)) => Err(grant.wait),
                Ok(None) => {
                    // The store keeps no limits after all: keep one here.
                    let mut bucket = TokenBucket::new(*rate, Instant::now());
                    let granted = bucket.take(want, Instant::now());
                    *self = Self::Local(bucket);
                    Ok(granted.max(1))
                }
                Err(e) => {
                    tracing::error!(target = %target, error = %e, "cannot take rate-limit tokens; retrying");
                    Err(Duration::from_millis(100))
                }
            },
        }
    }

    /// Gives back tokens taken but not used.
    pub(crate) async fn give_back(&mut self, store: &dyn Store, target: &TargetName, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Self::Local(bucket) => bucket.give_back(n),
            Self::Shared { rate } => {
                if let Err(e) = store.give_back_tokens(target, *rate, n).await {
                    tracing::warn!(target = %target, error = %e, "cannot give back rate-limit tokens");
                }
            }
        }
    }
}
