//! A detail of the adapter's own attached to an attempt, through the host's `report` import
//! (contract `outboxd:target@0.1.1`).
//!
//! The host already keeps, for every attempt, the status and the first KiB of the receiver's
//! last response (it makes the requests). What only the adapter knows (which step failed, an
//! id the receiver handed back, why a response was judged permanent) goes here: it is shown
//! with the attempt in `GET /v1/events/{id}`, `outboxd status <id>` and the dashboard.

use crate::Event;
use crate::bindings::outboxd::target::report;

/// Attaches `text` to this attempt of `event`. The host keeps its first KiB (cut at a
/// character boundary and marked); a later call for the same event replaces an earlier one.
/// Needs a host of contract 0.1.1 or newer.
pub fn detail(event: &Event, text: impl AsRef<str>) {
    report::detail(&event.id, text.as_ref());
}
