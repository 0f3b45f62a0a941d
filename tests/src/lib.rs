//! `testkit`: the harness for outboxd's end-to-end tests.
//!
//! Everything here drives the real thing: [`Host`] spawns the real `outboxd`
//! binary in a fresh temporary directory with real WebAssembly target plugins,
//! and [`Receiver`] is a real HTTP server that records every request it gets
//! and can be scripted to fail, throttle or hang. The crate deliberately does
//! not depend on the `outboxd` crate: it only knows the documented contract
//! (CLI, config files, HTTP API, database tables).
//!
//! Locating the artifacts (see [`artifacts`]):
//! - `OUTBOXD_BIN`: path of a built `outboxd` binary; otherwise the harness
//!   runs `cargo build -p outboxd --bin outboxd` once per test process.
//! - `OUTBOXD_PLUGINS_DIR`: directory holding `webhook.wasm` and
//!   `misbehave.wasm`; otherwise the harness builds `plugins/` for
//!   `wasm32-wasip2` once per test process.
//! - `OUTBOXD_TEST_TIMEOUT_SCALE`: multiplies every wait (e.g. `3` on a slow
//!   machine).
//! - `OUTBOXD_KEEP_TEST_DIR=1`: keep the temporary directory of a failing test.
//! - `OUTBOXD_TEST_STORE=postgres`: run every host on a PostgreSQL database of its own
//!   (created on `OUTBOXD_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`, and
//!   dropped after); see [`database`].

pub mod artifacts;
pub mod database;
pub mod host;
pub mod json;
pub mod receiver;
pub mod signature;
pub mod sources;

pub use database::{StoreKind, TestDatabase};
pub use host::{Breaker, CliOutput, Host, Retry, StartError, Target};
pub use json::{deliveries_by_target, delivery, history, status_of, target_count, target_entry};
pub use receiver::{Behavior, Receiver, RecordedRequest, Reply};
pub use signature::{sign_standard_webhook, verify_standard_webhook};

use std::time::Duration;

/// The default deadline for anything a test waits on, scaled by
/// `OUTBOXD_TEST_TIMEOUT_SCALE`.
pub fn default_timeout() -> Duration {
    scaled(Duration::from_secs(30))
}

/// `d` multiplied by `OUTBOXD_TEST_TIMEOUT_SCALE` (default 1).
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("OUTBOXD_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}
