//! `soak`: the retention soak scenario. Runs the real `outboxd serve` (see `testkit` for
//! `OUTBOXD_BIN` / `OUTBOXD_PLUGINS_DIR`) with a short retention, posts events (each with a
//! producer idempotency key) at a steady rate to a batched webhook target on a local
//! receiver, and samples the database file's size. It
//! passes when the file stays within `SOAK_MAX_GROWTH` (default 2) × its size at
//! `SOAK_BASELINE_S` (default 60) seconds.
//!
//! ```text
//! SOAK_EVENTS=200000 SOAK_RATE=500 SOAK_RETENTION=1m cargo run -p outboxd-tests --bin soak
//! ```
//!
//! Prints one line per sample (seconds, events posted, events in the database, file and WAL
//! sizes) and a verdict; exits 1 when the file grew beyond the bound.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let events: usize = env("SOAK_EVENTS", 200_000);
    let rate: usize = env("SOAK_RATE", 500);
    let retention: String = env("SOAK_RETENTION", "1m".to_owned());
    let baseline_at = Duration::from_secs(env("SOAK_BASELINE_S", 60));
    let max_growth: f64 = env("SOAK_MAX_GROWTH", 2.0);
    let sample_every = Duration::from_secs(env("SOAK_SAMPLE_S", 10));

    // A batch receiver answers JSON; `{}` accepts every event of the batch.
    let rx = Receiver::builder()
        .default_behavior(Behavior::ok().respond_with(|_| (200, "{}".to_owned())))
        .keep_requests(false)
        .start()
        .await;
    let mut host = Host::new();
    // The ledger's window as well (`SOAK_KEY_RETENTION`, default the same as `retention`): a
    // 7-day ledger legitimately grows by every key posted during the soak.
    let key_retention: String = env("SOAK_KEY_RETENTION", retention.clone());
    host.set_config("retention", retention.as_str())
        .set_config("idempotency_retention", key_retention.as_str())
        .set_config("retention_interval_ms", 5_000)
        // Batched, so that delivery keeps up with the rate even on a small machine: the soak is
        // about what retention does to the file, not about delivery throughput.
        .add_target(
            "hook",
            &Target::webhook_batch(&rx.url("/hook")).concurrency(4).batch(200, 100),
        );
    host.start().await;
    let db = host.db_path();
    let wal = {
        let mut p = db.as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    eprintln!(
        "soak: {events} events at {rate}/s, retention {retention}, idempotency_retention {key_retention}, database {}",
        db.display()
    );
    println!(
        "{:>6} {:>9} {:>9} {:>12} {:>12}",
        "secs", "posted", "in_db", "db_bytes", "wal_bytes"
    );

    let client = reqwest::Client::new();
    let url = host.url("/v1/events");
    let started = Instant::now();
    let batch = (rate / 10).max(1);
    let mut posted = 0usize;
    let mut next_sample = started;
    let mut baseline: Option<u64> = None;
    let mut worst = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let filler = "x".repeat(200);
    while posted < events {
        tick.tick().await;
        let n = batch.min(events - posted);
        let body: Vec<Value> = (posted..posted + n)
            .map(|i| json!({"type": "order.created", "payload": {"n": i, "note": filler}, "idempotency_key": format!("soak-{i}")}))
            .collect();
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => posted += n,
            Ok(r) => eprintln!("soak: POST answered {}", r.status()),
            Err(e) => eprintln!("soak: POST failed: {e}"),
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample += sample_every;
            let bytes = size(&db);
            let in_db = host.count_rows("events");
            println!(
                "{:>6} {:>9} {:>9} {:>12} {:>12}",
                started.elapsed().as_secs(),
                posted,
                in_db,
                bytes,
                size(&wal)
            );
            if baseline.is_none() && now - started >= baseline_at {
                baseline = Some(bytes);
            }
            if baseline.is_some() {
                worst = worst.max(bytes);
            }
        }
    }
    let took = started.elapsed();
    let final_bytes = size(&db);
    worst = worst.max(final_bytes);
    println!(
        "{:>6} {:>9} {:>9} {:>12} {:>12}",
        took.as_secs(),
        posted,
        host.count_rows("events"),
        final_bytes,
        size(&wal)
    );
    host.stop().await;
    let Some(baseline) = baseline else {
        eprintln!("soak: finished before the baseline at {baseline_at:?}; run longer");
        return ExitCode::FAILURE;
    };
    let growth = worst as f64 / baseline as f64;
    println!(
        "soak: {posted} events in {took:.0?} ({:.0}/s); file {baseline} bytes at {}s, at most {worst} after ({growth:.2}x, bound {max_growth}x)",
        posted as f64 / took.as_secs_f64(),
        baseline_at.as_secs()
    );
    if growth <= max_growth {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAIL");
        ExitCode::FAILURE
    }
}
