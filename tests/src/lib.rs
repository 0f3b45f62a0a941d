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
//!   machine), the quiet windows in which a test proves that nothing more arrives
//!   ([`Receiver::expect_no_more_at`]) included.
//! - `OUTBOXD_KEEP_TEST_DIR=1`: keep the temporary directory of a failing test.
//! - `OUTBOXD_TEST_STORE=postgres`: run every host on a PostgreSQL database of its own
//!   (created on `OUTBOXD_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`, and
//!   dropped after); see [`database`].
//! - `OUTBOXD_TEST_PG_OPT_OUTS` (set by `cargo xtask test`): the suites kept out of its
//!   PostgreSQL pass and why, `suite=no-host|sqlite-only|postgres-only,...`; every [`Host`]
//!   a listed suite creates is checked against its reason (see
//!   [`database::check_pg_opt_out`]).

pub mod artifacts;
pub mod browser;
pub mod database;
pub mod host;
pub mod json;
pub mod receiver;
pub mod signature;
pub mod sources;
pub mod tls;

pub use database::{StoreKind, TestDatabase};
pub use host::{Breaker, CliOutput, Host, Retry, RetryBudget, StartError, Target};
pub use json::{
    concurrency_limit, deliveries_by_target, delivery, find_named, history, source_entry, status_of, target_count,
    target_entry,
};
pub use receiver::{Behavior, Load, Receiver, RecordedRequest, Reply};
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

/// Polls `check` (a blocking look, e.g. at a database) every 50 ms until it returns true, at
/// most the default timeout; panics with `what` and the last value `check` reported otherwise.
pub async fn eventually(what: &str, check: impl FnMut() -> (bool, String)) {
    eventually_within(default_timeout(), what, check).await;
}

/// [`eventually`] with a deadline of its own (scale it with [`scaled`]).
pub async fn eventually_within(timeout: Duration, what: &str, mut check: impl FnMut() -> (bool, String)) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (ok, seen) = check();
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {seen} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The seed of a randomised test: `OUTBOXD_CHAOS_SEED`, else a random one; printed either way
/// so that a failing run can be repeated.
pub fn chaos_seed() -> u64 {
    let seed = std::env::var("OUTBOXD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos seed {seed} (set OUTBOXD_CHAOS_SEED to repeat the kill schedule)");
    seed
}

/// The README demo's targets.
pub const DEMO_TARGETS: [&str; 3] = ["crm", "analytics", "billing"];

/// The README demo: a receiver that answers 200 everywhere but at `/billing`, which behaves
/// as `billing` says, and a host (not started) with the three [`DEMO_TARGETS`], webhooks to
/// the receiver's `/<name>` for `order.*` events with three quick attempts.
pub async fn demo(billing: Behavior) -> (Receiver, Host) {
    demo_with(Behavior::ok(), billing).await
}

/// [`demo`], the receiver answering `default` everywhere but at `/billing`.
pub async fn demo_with(default: Behavior, billing: Behavior) -> (Receiver, Host) {
    let rx = Receiver::builder()
        .default_behavior(default)
        .path("/billing", billing)
        .start()
        .await;
    let mut host = Host::new();
    for name in DEMO_TARGETS {
        host.add_target(
            name,
            &Target::webhook(&rx.url(&format!("/{name}")))
                .events(&["order.*"])
                .fast_retry(3),
        );
    }
    (rx, host)
}
