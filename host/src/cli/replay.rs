//! Bulk replay jobs from the command line: `dead replay` creates a job in the store and works
//! it in the foreground with a progress bar (a running `serve` may work chunks of it too: each
//! chunk is one transaction, so each delivery is replayed once whoever works it); with
//! `--detach` it only creates it, for `serve` to work. `replay list`, `replay status <id>` and
//! `replay cancel <id>` show and stop jobs. Interrupting the foreground leaves the job running:
//! `serve` resumes it from its cursor.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::table::{Col, Table};
use super::{CliError, ConfigArg, FilterArgs, open_store};
use crate::domain::{format_ms, now_ms};
use crate::server::config::ServiceConfig;
use crate::store::{NewReplayJob, ReplayJob, Store};

/// How often the foreground looks again at a job another process is working.
const FOLLOW: Duration = Duration::from_millis(250);

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// The recent bulk replay jobs, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One replay job: its filter, bound, progress and summary.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The job's id.
        id: i64,
    },
    /// Cancel a running replay job: no chunk runs after this; what it replayed stays replayed.
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The job's id.
        id: i64,
    },
}

/// What `dead replay` was asked besides the filter.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayOptions {
    /// Only deliveries with an id above this.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// At most this many matches.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Create the job and return at once, printing its id: `outboxd serve` works it
    /// (follow it with `outboxd replay status <id>`).
    #[arg(long)]
    pub detach: bool,
}

/// One line about a job's progress.
fn progress_line(job: &ReplayJob) -> String {
    let mut line = format!("replayed {}/{}", job.replayed, job.total);
    if job.skipped > 0 {
        let _ = write!(line, " (skipped {}: payload erased)", job.skipped);
    }
    line
}

/// The summary of a final job.
fn summary(job: &ReplayJob) -> String {
    let mut out = format!(
        "replay job {} {}: replayed {} of {} deliveries",
        job.id,
        job.status.as_str(),
        job.replayed,
        job.total
    );
    if job.skipped > 0 {
        let _ = write!(out, ", skipped {} (payload erased)", job.skipped);
    }
    let gone = job.total.saturating_sub(job.processed());
    if gone > 0 {
        let _ = write!(out, ", {gone} no longer failed when reached or not reached");
    }
    if let Some(e) = &job.error {
        let _ = write!(out, ": {e}");
    }
    out.push('\n');
    out
}

/// `outboxd dead replay`: creates the job, then works and follows it (progress on stderr: a
/// bar on a terminal, else a line per chunk), or with `--detach` returns its id.
pub async fn dead_replay(
    config: &ServiceConfig,
    filter: FilterArgs,
    options: ReplayOptions,
) -> Result<String, CliError> {
    if options.after < 0 {
        return Err(CliError::Input(format!(
            "--after must be a delivery id (0 or more), not {}",
            options.after
        )));
    }
    let filter = filter.into_filter()?;
    let store = open_store(config).await?;
    let job = store
        .create_replay_job(
            NewReplayJob {
                filter,
                after: options.after,
                cap: options.limit,
            },
            now_ms(),
        )
        .await?;
    if options.detach {
        return Ok(format!(
            "replay job {} started: {} deliveries match; `outboxd serve` works it (it waits for one \
             if none runs); follow it with `outboxd replay status {}`\n",
            job.id, job.total, job.id
        ));
    }
    let job = follow(store.as_ref(), job).await?;
    Ok(summary(&job))
}

/// Works `job` in the foreground until it is final, showing progress.
async fn follow(store: &dyn Store, mut job: ReplayJob) -> Result<ReplayJob, CliError> {
    let interactive = std::io::stderr().is_terminal();
    let bar = interactive.then(|| {
        let bar = ProgressBar::new(job.total);
        bar.set_style(
            ProgressStyle::with_template("replay job {prefix} [{bar:40}] {pos}/{len} {msg} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(job.id.to_string());
        bar
    });
    loop {
        let worked = crate::replay::work_chunk(store, Some(job.id)).await?;
        job = store
            .replay_job(job.id)
            .await?
            .ok_or_else(|| CliError::Service(format!("replay job {} disappeared", job.id)))?;
        match &bar {
            Some(bar) => {
                bar.set_position(job.processed());
                if job.skipped > 0 {
                    bar.set_message(format!("skipped {}", job.skipped));
                }
            }
            None => eprintln!("{}", progress_line(&job)),
        }
        if job.status.is_final() {
            break;
        }
        if worked.is_none() {
            // Another process holds the job this moment (serve, another host).
            tokio::time::sleep(FOLLOW).await;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(job)
}

/// `outboxd replay list`.
pub async fn list(config: &ServiceConfig, limit: usize) -> Result<String, CliError> {
    let store = open_store(config).await?;
    let jobs = store.replay_jobs(limit.clamp(1, 1_000)).await?;
    const COLS: &[Col] = &[
        Col::Right(6),
        Col::Left(9),
        Col::Right(9),
        Col::Right(9),
        Col::Right(8),
        Col::Left(24),
        Col::Left(24),
        Col::Rest,
    ];
    let mut table = Table::new(
        COLS,
        "  ",
        &[
            "JOB", "STATUS", "TOTAL", "REPLAYED", "SKIPPED", "CREATED", "FINISHED", "FILTER",
        ],
    );
    for j in jobs {
        table.row(&[
            j.id.to_string(),
            j.status.as_str().to_owned(),
            j.total.to_string(),
            j.replayed.to_string(),
            j.skipped.to_string(),
            format_ms(j.created_at),
            j.finished_at.map(format_ms).unwrap_or_default(),
            describe_filter(&j),
        ]);
    }
    Ok(table.finish())
}

fn describe_filter(j: &ReplayJob) -> String {
    let f = &j.filter;
    let mut parts = Vec::new();
    if !f.statuses.is_empty() {
        parts.push(format!(
            "status={}",
            f.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        ));
    }
    if let Some(t) = &f.target {
        parts.push(format!("target={t}"));
    }
    if let Some(t) = &f.event_type {
        parts.push(format!("type={t}"));
    }
    if let Some(s) = f.since {
        parts.push(format!("since={}", format_ms(s)));
    }
    if let Some(u) = f.until {
        parts.push(format!("until={}", format_ms(u)));
    }
    if let Some(e) = &f.error_contains {
        parts.push(format!("error={e:?}"));
    }
    if !f.delivery_ids.is_empty() {
        parts.push(format!("deliveries={}", f.delivery_ids.len()));
    }
    if j.after > 0 {
        parts.push(format!("after={}", j.after));
    }
    if let Some(cap) = j.cap {
        parts.push(format!("limit={cap}"));
    }
    if parts.is_empty() {
        "(every failed delivery)".into()
    } else {
        parts.join(" ")
    }
}

/// `outboxd replay status <id>`.
pub async fn status(config: &ServiceConfig, id: i64) -> Result<String, CliError> {
    let store = open_store(config).await?;
    let job = store
        .replay_job(id)
        .await?
        .ok_or_else(|| CliError::Input(format!("no replay job {id}")))?;
    Ok(describe(&job))
}

/// `outboxd replay cancel <id>`.
pub async fn cancel(config: &ServiceConfig, id: i64) -> Result<String, CliError> {
    let store = open_store(config).await?;
    let job = store
        .cancel_replay_job(id, now_ms())
        .await?
        .ok_or_else(|| CliError::Input(format!("no replay job {id}")))?;
    Ok(describe(&job))
}

fn describe(j: &ReplayJob) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "replay job {}", j.id);
    let _ = writeln!(out, "  status         {}", j.status.as_str());
    let _ = writeln!(out, "  filter         {}", describe_filter(j));
    let _ = writeln!(
        out,
        "  bound          delivery ids up to {}, failed before {}",
        j.bound_id,
        format_ms(j.failed_before)
    );
    let _ = writeln!(out, "  progress       {}", progress_line(j));
    let _ = writeln!(out, "  cursor         {}", j.cursor);
    let _ = writeln!(out, "  created        {}", format_ms(j.created_at));
    let _ = writeln!(out, "  updated        {}", format_ms(j.updated_at));
    if let Some(at) = j.finished_at {
        let _ = writeln!(out, "  finished       {}", format_ms(at));
    }
    if let Some(e) = &j.error {
        let _ = writeln!(out, "  error          {e}");
    }
    if j.status.is_final() {
        out.push_str(&summary(j));
    }
    out
}
