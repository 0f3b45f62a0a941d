//! `outboxd plugin check|run`: compiling a component outside the service and running
//! deliveries through it with the real host imports and limits, for plugin authors.

use std::fmt::Write as _;
use std::path::Path;

use super::{CliError, parse_header};
use crate::config::normalize_host_port;
use crate::domain::{EventId, Outcome, now_ms};
use crate::ingest;
use crate::plugin::{EventInput, Grants, Plugin, Runtime};

async fn compile_file(path: &Path) -> Result<Plugin, CliError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CliError::Input(format!("cannot read {shown}: {e}")))?;
    tokio::task::spawn_blocking(move || Runtime::new(None).and_then(|rt| rt.compile(&bytes)))
        .await
        .map_err(|e| CliError::Input(format!("compiler task failed: {e}")))?
        .map_err(|source| CliError::Plugin { path: shown, source })
}

fn describe(plugin: &Plugin, path: &Path) -> String {
    let info = plugin.info();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: world outboxd:target/{}@{}, {} KiB, sha256 {}, compiled in {} ms",
        path.display(),
        info.world.unwrap_or("?"),
        info.wit_version.as_deref().unwrap_or("?"),
        plugin.size().div_ceil(1024),
        plugin.hash(),
        plugin.compile_time().as_millis()
    );
    let _ = writeln!(out, "  exports: {}", info.exports.join(", "));
    let _ = writeln!(out, "  imports:");
    for i in &info.imports {
        let _ = writeln!(out, "    {i}");
    }
    out
}

/// `outboxd plugin check FILE`.
pub async fn plugin_check(path: &Path) -> Result<String, CliError> {
    let plugin = compile_file(path).await?;
    Ok(format!("valid plugin\n{}", describe(&plugin, path)))
}

/// How `outboxd plugin run` ended, as an exit code: 0 delivered, 3 retry, 4 permanent
/// (1 is an error, 2 a usage error).
pub fn outcome_exit_code(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Delivered => 0,
        Outcome::Retry { .. } => 3,
        Outcome::Permanent { .. } => 4,
    }
}

/// Options of `outboxd plugin run`: what the manifest and the event would say.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// The event, as for `POST /v1/events`: `{"type": "…", "payload": …}`.
    #[arg(long)]
    pub event: String,
    /// A `[config]` entry for the plugin, as `key=value`; repeatable.
    #[arg(long = "config", value_parser = parse_header, value_name = "KEY=VALUE")]
    pub config: Vec<(String, String)>,
    /// A `host:port` the plugin may reach; repeatable.
    #[arg(long = "allow-host", value_name = "HOST:PORT")]
    pub allow_hosts: Vec<String>,
    /// The attempt's deadline.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The instance's memory cap.
    #[arg(long, default_value_t = 64)]
    pub memory_mb: usize,
    /// The attempt number the plugin sees.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// Run the delivery this many times, each in a fresh instance, and report the
    /// per-delivery time (min, median, max). The transcript shown is the first run's.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

/// `outboxd plugin run FILE …`: one delivery, its transcript, and its outcome.
pub async fn plugin_run(path: &Path, opts: RunOptions) -> Result<(String, Outcome), CliError> {
    let accepted = match ingest::parse(opts.event.as_bytes(), usize::MAX)? {
        ingest::Batch::One(a) => a,
        ingest::Batch::Many(_) => return Err(CliError::Input("--event takes one event object, not an array".into())),
    };
    let allowed_hosts = opts
        .allow_hosts
        .iter()
        .map(|h| normalize_host_port(h).ok_or_else(|| CliError::Input(format!("--allow-host `{h}` is not host:port"))))
        .collect::<Result<Vec<_>, _>>()?;
    let plugin = compile_file(path).await?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned();
    let id = EventId::new();
    let grants = Grants {
        target: name.as_str().into(),
        config: std::sync::Arc::new(opts.config.into_iter().collect()),
        allowed_hosts: allowed_hosts.into(),
        timeout: std::time::Duration::from_millis(opts.timeout_ms),
        memory_bytes: opts.memory_mb * 1024 * 1024,
        log_budget: crate::plugin::LogBudget::default(),
    };
    let input = EventInput {
        id: id.to_string(),
        event_type: accepted.event_type.to_string(),
        payload: accepted.payload,
        idempotency_key: format!("{id}.{name}"),
        attempt: opts.attempt,
        created_at_ms: now_ms() as u64,
        headers: accepted.headers,
    };
    let mut out = describe(&plugin, path);
    let _ = writeln!(
        out,
        "event {} ({}), attempt {}, idempotency key {}",
        input.id, input.event_type, input.attempt, input.idempotency_key
    );
    let report = plugin.deliver(&grants, input.clone()).await;
    let mut times = vec![report.duration];
    for _ in 1..opts.repeat.max(1) {
        times.push(plugin.deliver(&grants, input.clone()).await.duration);
    }
    for line in &report.logs {
        let _ = writeln!(out, "log   {:<5} {}", line.level.as_str(), line.message);
    }
    for r in &report.requests {
        let result = match &r.result {
            Ok(status) => status.to_string(),
            Err(why) => why.clone(),
        };
        let _ = writeln!(out, "http  {} {} -> {}", r.method, r.url, result);
    }
    let took = report.duration.as_millis();
    let _ = match &report.outcome {
        Outcome::Delivered => writeln!(out, "outcome: delivered ({took} ms)"),
        Outcome::Retry { reason, after } => writeln!(
            out,
            "outcome: retry ({took} ms): {reason}{}",
            after
                .map(|a| format!(" (retry after {} ms)", a.as_millis()))
                .unwrap_or_default()
        ),
        Outcome::Permanent { reason } => writeln!(out, "outcome: permanent failure ({took} ms): {reason}"),
    };
    if times.len() > 1 {
        times.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "{} deliveries, each in a fresh instance: min {:.1} ms, median {:.1} ms, max {:.1} ms",
            times.len(),
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    Ok((out, report.outcome))
}
