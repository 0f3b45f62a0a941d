//! Constructors and accessors for [`DeliveryError`], the outcome of a failed
//! delivery attempt.

use crate::{DeliveryError, RetryInfo};

impl DeliveryError {
    /// A transient failure: the host retries on its backoff schedule.
    ///
    /// `reason` is stored in the attempt history.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(RetryInfo {
            reason: reason.into(),
            after_ms: None,
        })
    }

    /// A transient failure where the receiver asked to wait at least
    /// `after_ms` milliseconds before the next attempt (e.g. `Retry-After`).
    ///
    /// The host waits this long instead of its own backoff, but never longer
    /// than the target's `max_backoff_ms`.
    pub fn retry_after(reason: impl Into<String>, after_ms: u64) -> Self {
        Self::Retry(RetryInfo {
            reason: reason.into(),
            after_ms: Some(after_ms),
        })
    }

    /// A failure that retrying will not fix: the delivery gives up at once
    /// with `reason` (`dead`, or `discarded` for a best-effort target).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }

    /// Whether the host will retry this failure.
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Retry(_))
    }

    /// The human-readable reason, for either kind of failure.
    ///
    /// Prefer this to `Display`, whose generated form includes the variant.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry(info) => &info.reason,
            Self::Permanent(reason) => reason,
        }
    }

    /// The minimum wait the receiver asked for, if this is a retry with one.
    pub fn after_ms(&self) -> Option<u64> {
        match self {
            Self::Retry(info) => info.after_ms,
            Self::Permanent(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_build_the_expected_variants() {
        let retry = DeliveryError::retry("busy");
        assert!(retry.is_retry());
        assert_eq!(retry.reason(), "busy");
        assert_eq!(retry.after_ms(), None);

        let later = DeliveryError::retry_after("slow down", 1500);
        assert!(later.is_retry());
        assert_eq!(later.after_ms(), Some(1500));

        let dead = DeliveryError::permanent("rejected");
        assert!(!dead.is_retry());
        assert_eq!(dead.reason(), "rejected");
        assert_eq!(dead.after_ms(), None);
    }
}
