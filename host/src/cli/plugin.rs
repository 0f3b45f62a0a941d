//! `outboxd plugin check|run`: compiling a component outside the service and running
//! deliveries through it with the real host imports and limits, for plugin authors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{CliError, parse_header};
use crate::domain::normalize_host_port;
use crate::domain::{EventId, Outcome, now_ms};
use crate::outbox::input;
use crate::plugin::{EventInput, Grants, Plugin, Runtime, Tail};

/// Where `plugin check` and `plugin run` keep compiled components between runs.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheOptions {
    /// The compile cache: compiled components, keyed by content and engine, so a second run
    /// of an unchanged file skips the compile. May be the `cache_dir` of a `serve`
    /// [default: $XDG_CACHE_HOME/outboxd, else ~/.cache/outboxd].
    #[arg(long, env = "OUTBOXD_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Always compile; neither read nor write the compile cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl CacheOptions {
    /// The cache directory to use, if any.
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        self.cache_dir
            .clone()
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("outboxd")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("outboxd")))
    }
}

async fn compile_file(path: &Path, cache: &CacheOptions) -> Result<Plugin, CliError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CliError::Input(format!("cannot read {shown}: {e}")))?;
    let dir = cache.dir();
    tokio::task::spawn_blocking(move || Runtime::new(dir).and_then(|rt| rt.compile(&bytes)))
        .await
        .map_err(|e| CliError::Input(format!("compiler task failed: {e}")))?
        .map_err(|source| CliError::Plugin { path: shown, source })
}

/// The plugin's one-line description; with `verbose`, its exports and imports too.
fn describe(plugin: &Plugin, path: &Path, verbose: bool) -> String {
    let info = plugin.info();
    let mut out = String::new();
    let how = if plugin.from_cache() {
        "loaded from the compile cache in"
    } else {
        "compiled in"
    };
    let _ = writeln!(
        out,
        "{}: world outboxd:target/{}@{}, {} KiB, sha256 {}, {how} {} ms",
        path.display(),
        info.world.unwrap_or("?"),
        info.wit_version.as_deref().unwrap_or("?"),
        plugin.size().div_ceil(1024),
        plugin.hash(),
        plugin.compile_time().as_millis()
    );
    if verbose {
        let _ = writeln!(out, "  exports: {}", info.exports.join(", "));
        let _ = writeln!(out, "  imports:");
        for i in &info.imports {
            let _ = writeln!(out, "    {i}");
        }
    }
    out
}

/// `outboxd plugin check FILE`.
pub async fn plugin_check(path: &Path, cache: &CacheOptions) -> Result<String, CliError> {
    let plugin = compile_file(path, cache).await?;
    Ok(format!("valid plugin\n{}", describe(&plugin, path, true)))
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

/// The exit code of several deliveries: 0 when all were delivered, else 4 when any failed
/// permanently, else 3.
pub fn run_exit_code(outcomes: &[Outcome]) -> u8 {
    outcomes.iter().map(outcome_exit_code).max().unwrap_or(0)
}

/// Options of `outboxd plugin run`: what the manifest and the event would say.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// An event, as for `POST /v1/events`: `{"type": "…", "payload": …}`; repeatable. Each
    /// event is delivered in a fresh instance, in order.
    #[arg(long = "event", value_name = "JSON", required_unless_present = "events")]
    pub event: Vec<String>,
    /// A file of events, one JSON object per line (JSONL; blank lines are skipped), delivered
    /// after those of `--event`.
    #[arg(long = "events", value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// A `[config]` entry for the plugin, as `key=value`; repeatable.
    #[arg(long = "config", value_parser = parse_header, value_name = "KEY=VALUE")]
    pub config: Vec<(String, String)>,
    /// A `host:port` the plugin may reach; repeatable.
    #[arg(long = "allow-host", value_name = "HOST:PORT")]
    pub allow_hosts: Vec<String>,
    /// Let names given to `--allow-host` resolve to loopback, private and link-local
    /// addresses (a manifest's `allow_private = true`).
    #[arg(long)]
    pub allow_private: bool,
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
    /// Also list the component's exports and imports.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub cache: CacheOptions,
}

/// The events of `--event` and `--events`, parsed and validated as the API would, with where
/// each came from for error messages.
fn read_events(opts: &RunOptions) -> Result<Vec<input::Accepted>, CliError> {
    let mut sources: Vec<(String, String)> = opts
        .event
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("--event #{}", i + 1), e.clone()))
        .collect();
    if let Some(file) = &opts.events {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
        for (n, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                sources.push((format!("{} line {}", file.display(), n + 1), line.to_owned()));
            }
        }
    }
    if sources.is_empty() {
        return Err(CliError::Input("no events: give --event JSON or --events FILE".into()));
    }
    sources
        .into_iter()
        .map(|(from, text)| match input::parse(text.as_bytes(), usize::MAX) {
            Ok(input::Batch::One(a)) => Ok(a),
            Ok(input::Batch::Many(_)) => Err(CliError::Input(format!("{from}: one event object, not an array"))),
            Err(e) => Err(CliError::Input(format!("{from}: {e}"))),
        })
        .collect()
}

fn outcome_text(outcome: &Outcome, took: u128) -> String {
    match outcome {
        Outcome::Delivered => format!("delivered ({took} ms)"),
        Outcome::Retry { reason, after } => format!(
            "retry ({took} ms): {reason}{}",
            after
                .map(|a| format!(" (retry after {} ms)", a.as_millis()))
                .unwrap_or_default()
        ),
        Outcome::Permanent { reason } => format!("permanent failure ({took} ms): {reason}"),
    }
}

/// Writes what the guest printed, one `stdout`/`stderr` line per line of output.
fn write_output(out: &mut String, stream: &str, tail: &Tail) {
    if tail.dropped > 0 {
        let _ = writeln!(out, "{stream} (the first {} bytes were not kept)", tail.dropped);
    }
    for line in tail.text.lines() {
        let _ = match line.trim_end() {
            "" => writeln!(out, "{stream}"),
            line => writeln!(out, "{stream} {line}"),
        };
    }
}

/// `outboxd plugin run FILE …`: each event's delivery, its transcript and outcome, then (for
/// several events) one summary line per event.
pub async fn plugin_run(path: &Path, opts: RunOptions) -> Result<(String, Vec<Outcome>), CliError> {
    let events = read_events(&opts)?;
    let allowed_hosts = opts
        .allow_hosts
        .iter()
        .map(|h| normalize_host_port(h).ok_or_else(|| CliError::Input(format!("--allow-host `{h}` is not host:port"))))
        .collect::<Result<Vec<_>, _>>()?;
    let plugin = compile_file(path, &opts.cache).await?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned();
    let grants = Grants {
        target: name.as_str().into(),
        config: std::sync::Arc::new(opts.config.into_iter().map(|(k, v)| (k, v.into())).collect()),
        allowed_hosts: allowed_hosts.into(),
        headers: std::sync::Arc::from([]),
        oauth2: None,
        tls: None,
        allow_private: opts.allow_private,
        timeout: std::time::Duration::from_millis(opts.timeout_ms),
        memory_bytes: opts.memory_mb * 1024 * 1024,
        log_budget: crate::plugin::LogBudget::default(),
    };
    let mut out = describe(&plugin, path, opts.verbose);
    let mut summary = Vec::with_capacity(events.len());
    let mut outcomes = Vec::with_capacity(events.len());
    for accepted in events {
        let id = EventId::new();
        let input = EventInput {
            id: id.to_string(),
            event_type: accepted.event_type.to_string(),
            payload: accepted.payload,
            idempotency_key: format!("{id}.{name}"),
            attempt: opts.attempt,
            created_at_ms: now_ms() as u64,
            headers: accepted.headers,
            trace: None,
        };
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
        if let Some(detail) = &report.detail {
            let _ = writeln!(out, "detail: {detail}");
        }
        write_output(&mut out, "stdout", &report.output.stdout);
        write_output(&mut out, "stderr", &report.output.stderr);
        let text = outcome_text(&report.outcome, report.duration.as_millis());
        let _ = writeln!(out, "outcome: {text}");
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
        summary.push(format!("{} {}: {text}", input.id, input.event_type));
        outcomes.push(report.outcome);
    }
    if summary.len() > 1 {
        let _ = writeln!(out, "summary of {} events:", summary.len());
        for (n, line) in summary.iter().enumerate() {
            let _ = writeln!(out, "  {:>3}. {line}", n + 1);
        }
    }
    Ok((out, outcomes))
}
