//! Logging into the host's log through the `log` import.
//!
//! Lines are tagged with the target's name by the host. Messages take
//! anything string-like, so both `log::info("sent")` and
//! `log::info(format!("sent {id}"))` work.

use crate::bindings::outboxd::target::log::{Level, log};

/// Writes a debug-level line.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

/// Writes an info-level line.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

/// Writes a warning-level line.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

/// Writes an error-level line.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}
