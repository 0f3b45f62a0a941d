//! Misbehave: a TEST FIXTURE for the outboxd host, not an example adapter.
//!
//! It misbehaves on purpose so integration tests can check the host's
//! sandbox limits and outcome handling. `config.mode` selects what it does:
//!
//! - `ok` (default): returns `Ok` without doing anything.
//! - `permanent`: returns a permanent error,
//!   `misbehave: deliberate permanent failure`.
//! - `trap`: panics with `config.message` (default `misbehave: deliberate trap`), which
//!   traps the component; the panic message goes to stderr.
//! - `loop`: spins forever, until the host's deadline (epoch or fuel) stops it.
//! - `grow`: allocates and touches 1 MiB blocks until the host's memory cap
//!   stops it (the failed allocation aborts, i.e. traps).
//! - `flood`: logs 64 KiB lines in a loop (each naming its number), forever,
//!   until the host's deadline stops it: the host's per-attempt log budget
//!   must keep this from filling the disk.
//! - `shout`: returns a retryable failure whose reason is 1 MiB long: the host
//!   must store it capped.
//! - `call`: sends a `GET` to `config.url` through the http import. A 2xx is
//!   `Ok`; other statuses go through the SDK's standard classifier; an http
//!   error is `permanent("<kind>: <text>")` with kind `denied`, `timeout`,
//!   `connect` or `other`, so a test can find e.g. `denied` in the
//!   delivery's last error.
//! - `count`: counts the calls this instance has served (in a global) and returns
//!   `permanent("misbehave: call N of this instance")`, or traps on call
//!   `config.trap_at` if set: shows when the host reuses an instance and when it
//!   starts a fresh one.
//!
//! - `detail`: attaches `config.detail` (default `misbehave: deliberate detail`) to the
//!   attempt through the `report` import, then returns a permanent error.
//!
//! Any other mode is a permanent error naming it.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use outboxd_plugin::http::Request;
use outboxd_plugin::{DeliveryError, Event, Target, config, log, outcome, report};

/// Size of each block the `grow` mode allocates.
const BLOCK: usize = 1 << 20;

/// The misbehaving target.
struct Misbehave;

impl Target for Misbehave {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        let mode = config::get("mode").unwrap_or_else(|| "ok".to_owned());
        log::debug(format!("misbehave: mode `{mode}` for event {}", event.id));
        match mode.as_str() {
            "ok" => Ok(()),
            "permanent" => Err(DeliveryError::permanent("misbehave: deliberate permanent failure")),
            "trap" => {
                let message = config::get("message").unwrap_or_else(|| "misbehave: deliberate trap".to_owned());
                panic!("{message}")
            }
            "loop" => spin(),
            "grow" => grow(),
            "call" => call(),
            "flood" => flood(),
            "count" => count(),
            "detail" => {
                let text = config::get("detail").unwrap_or_else(|| "misbehave: deliberate detail".to_owned());
                report::detail(&event, text);
                Err(DeliveryError::permanent("misbehave: failed with a detail"))
            }
            "shout" => Err(DeliveryError::retry(format!("misbehave: {}", "!".repeat(1 << 20)))),
            other => Err(DeliveryError::permanent(format!("misbehave: unknown mode `{other}`"))),
        }
    }
}

outboxd_plugin::export_target!(Misbehave);

/// Calls served by this instance: survives between calls only when the host reuses it.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// The `count` mode.
fn count() -> Result<(), DeliveryError> {
    let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    if config::get("trap_at").and_then(|v| v.parse::<u32>().ok()) == Some(n) {
        panic!("misbehave: trap at call {n} of this instance");
    }
    Err(DeliveryError::permanent(format!(
        "misbehave: call {n} of this instance"
    )))
}

/// Busy-loops forever; `black_box` keeps the optimiser from removing it.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, writing every byte, and keeps them all alive until
/// an allocation fails (which aborts: a trap).
fn grow() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![0xA5u8; BLOCK];
        hoard.push(black_box(block));
        black_box(&hoard);
    }
}

/// Logs 64 KiB lines forever.
fn flood() -> ! {
    let filler = "f".repeat(64 * 1024);
    let mut n = 0u64;
    loop {
        n = black_box(n + 1);
        log::info(format!("flood line {n}: {filler}"));
    }
}

/// Sends a `GET` to `config.url` and reports the result (see the crate docs).
fn call() -> Result<(), DeliveryError> {
    let url = config::require("url")?;
    match Request::get(url).send() {
        Ok(response) => outcome::classify_response(&response),
        Err(error) => Err(DeliveryError::permanent(error.describe())),
    }
}
