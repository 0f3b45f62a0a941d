//! Policy: what a target's manifest decides about failure, as pure logic that callers feed
//! with outcomes and the time: [`retry`] (the failure classes' schedules, backoff with
//! jitter, what an attempt's outcome means for its delivery) and [`breaker`] (when to stop
//! sending to a target that fails nearly everything, and the pause a receiver's backpressure
//! asks for). No I/O and no clock of its own, so every rule is unit-tested directly; the
//! dispatcher drives it.

pub mod breaker;
pub mod retry;
