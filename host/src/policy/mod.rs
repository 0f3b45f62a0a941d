//! Policy: what a target's manifest decides about failure and load, as pure logic that
//! callers feed with outcomes and the time: [`retry`] (the failure classes' schedules, backoff
//! with jitter, what an attempt's outcome means for its delivery), [`breaker`] (when to stop
//! sending to a target that fails nearly everything, and the pause a receiver's backpressure
//! asks for), [`adaptive`] (how many attempts the receiver can take at once, learned from its
//! refusals and round trips), [`pace`] (how fast a receiver that limits its rate takes them,
//! learned from its 429s) and [`budget`] (how much retries may add to first attempts). No I/O
//! and no clock of its own, so every rule is unit-tested directly; the dispatcher drives it.

pub mod adaptive;
pub mod breaker;
pub mod budget;
pub mod pace;
pub mod retry;
