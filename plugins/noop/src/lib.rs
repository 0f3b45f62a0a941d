//! No-op target: a benchmark fixture that accepts every event at once,
//! without any import call. What remains of a delivery through it is the
//! host's own cost of running a plugin: a fresh instance, the call with the
//! event lowered into the guest, and the result lifted back
//! (`outboxd-bench` reports it as the per-delivery WebAssembly overhead).

use outboxd_plugin::{DeliveryError, Event, Target};

/// The no-op target.
struct Noop;

impl Target for Noop {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        // Touch the event so that the call's arguments are really lowered and read.
        if event.id.is_empty() {
            return Err(DeliveryError::permanent("event without an id"));
        }
        Ok(())
    }
}

outboxd_plugin::export_target!(Noop);
