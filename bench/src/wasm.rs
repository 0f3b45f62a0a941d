//! Per-delivery cost of running a plugin, measured in this process through outboxd's own
//! plugin runtime (the code `serve` runs), one delivery after another, timed from the call to
//! the report. Two ways: `warm`, as `serve` runs a target by default (a `Binding` reusing its
//! instance; a fresh one every `DEFAULT_INSTANCE_REUSE` deliveries), and `fresh`, a new
//! instance for every delivery (instantiation, the call, the teardown), as a target with
//! `instance_reuse = 1` runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxd::plugin::{Binding, EventInput, Grants, Plugin, Runtime};
use outboxd::targets::manifest::DEFAULT_INSTANCE_REUSE;

/// Per-delivery times of one plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerDelivery {
    pub plugin: String,
    /// `warm` (instances reused, the default) or `fresh` (a new instance per delivery).
    pub instances: &'static str,
    pub deliveries: u32,
    pub median_us: f64,
    pub mean_us: f64,
    pub p99_us: f64,
    /// CPU time of this whole process per delivery (user + system): unlike the wall-clock
    /// figures, barely affected by other load on the machine.
    pub cpu_us: f64,
    /// What the plugin's first delivery ended as (`delivered`, or why not).
    pub outcome: String,
}

/// A compiled plugin and the name of its file.
pub struct Compiled {
    plugin: Arc<Plugin>,
    file: String,
}

/// Compiles the plugin file at `path` once, for both ways of measuring it.
pub async fn compile(path: &Path) -> Result<Compiled, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let plugin = tokio::task::spawn_blocking(move || Runtime::new(None).and_then(|rt| rt.compile(&bytes)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Compiled {
        plugin: Arc::new(plugin),
        file: path.file_name().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned(),
    })
}

/// Runs `repeat` deliveries of one event through `compiled`, after a warm-up of
/// `repeat / 10` (at least 1). `config` and `allowed_hosts` are the target's; `fresh`
/// gives every delivery a new instance.
pub async fn measure(
    compiled: &Compiled,
    config: &[(&str, String)],
    allowed_hosts: &[String],
    repeat: u32,
    fresh: bool,
) -> Result<PerDelivery, String> {
    let name = compiled.file.strip_suffix(".wasm").unwrap_or(&compiled.file).to_owned();
    let grants = Grants {
        target: name.as_str().into(),
        config: Arc::new(
            config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone().into()))
                .collect(),
        ),
        allowed_hosts: allowed_hosts.to_vec().into(),
        headers: Arc::from([]),
        oauth2: None,
        tls: None,
        allow_private: false,
        timeout: Duration::from_secs(10),
        memory_bytes: 64 * 1024 * 1024,
        log_budget: outboxd::plugin::LogBudget::default(),
    };
    let event = EventInput {
        id: "01a2200a-c31e-724e-b564-e1df5db6fbb0".into(),
        event_type: "order.created".into(),
        payload: crate::load::payload(1).to_string(),
        idempotency_key: format!("01a2200a-c31e-724e-b564-e1df5db6fbb0.{name}"),
        attempt: 1,
        created_at_ms: 1_795_827_723_456,
        headers: Vec::new(),
        trace: None,
    };
    let reuse = if fresh { 1 } else { DEFAULT_INSTANCE_REUSE };
    let binding = Binding::new(Arc::clone(&compiled.plugin), grants, reuse);
    let first = binding.deliver(event.clone()).await;
    let outcome = match &first.outcome {
        outboxd::domain::Outcome::Delivered => "delivered".to_owned(),
        other => format!("{other:?}"),
    };
    for _ in 0..(repeat / 10).max(1) {
        binding.deliver(event.clone()).await;
    }
    let mut times = Vec::with_capacity(repeat as usize);
    let cpu0 = process_cpu();
    for _ in 0..repeat {
        let input = event.clone();
        let t0 = Instant::now();
        let report = binding.deliver(input).await;
        times.push(t0.elapsed());
        drop(report);
    }
    let cpu = process_cpu().saturating_sub(cpu0);
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let total: Duration = times.iter().sum();
    Ok(PerDelivery {
        plugin: compiled.file.clone(),
        instances: if fresh { "fresh" } else { "warm" },
        deliveries: repeat,
        median_us: us(times[times.len() / 2]),
        mean_us: us(total) / f64::from(repeat.max(1)),
        p99_us: us(times[((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]),
        cpu_us: us(cpu) / f64::from(repeat.max(1)),
        outcome,
    })
}

/// CPU time used by this process so far.
fn process_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}
