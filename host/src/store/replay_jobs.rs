//! Bulk replay jobs: the one model both backends keep of a replay over a dead-letter filter,
//! worked in chunks in the background (issue 25). A job is fixed when it is created: it takes
//! the failed deliveries matching its filter with an id up to `bound_id` (the highest delivery
//! id stored then) that failed before `failed_before` (its creation time), so a delivery that
//! fails after the job started is never taken, and one it replayed that dies again is not
//! taken twice. A chunk is one transaction: it chooses the next window of at most a chunk's
//! matches after `cursor`, replays them (not those of erased events: `skipped`), and advances
//! the cursor and the counts, so a crash either undoes the whole chunk or keeps all of it and
//! every delivery is replayed once.

use serde::{Deserialize, Serialize};

use crate::domain::{DeliveryStatus, Millis, ReplayJobStatus};
use crate::store::rows::decode;
use crate::store::{FailedFilter, StoreError};

/// Deliveries per chunk of a replay job: one transaction each.
pub const REPLAY_CHUNK: usize = 1_000;

/// A replay job to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewReplayJob {
    /// Which failed deliveries (its `id_range` is not used).
    pub filter: FailedFilter,
    /// Only deliveries with an id above this.
    pub after: i64,
    /// At most this many matches (replayed and skipped together); `None`: every match.
    pub cap: Option<u64>,
}

/// A replay job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayJob {
    pub id: i64,
    pub filter: FailedFilter,
    pub status: ReplayJobStatus,
    /// Only deliveries with an id above this.
    pub after: i64,
    /// The highest delivery id when the job was created: none above it is taken.
    pub bound_id: i64,
    /// Only deliveries that failed before this (the job's creation time).
    pub failed_before: Millis,
    pub cap: Option<u64>,
    /// The last delivery id a committed chunk reached.
    pub cursor: i64,
    /// The matches when the job was created (at most `cap`).
    pub total: u64,
    /// Deliveries made pending again.
    pub replayed: u64,
    /// Matches left alone: their event's payload was erased.
    pub skipped: u64,
    /// Why a `failed` job failed.
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// What one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayChunk {
    pub job: i64,
    pub replayed: u64,
    pub skipped: u64,
    /// The job's status after the chunk.
    pub status: ReplayJobStatus,
}

impl NewReplayJob {
    /// What a job created at `now` with the highest delivery id `bound_id` matches: its filter
    /// bounded by the job's start.
    pub(crate) fn bounded(&self, bound_id: i64, now: Millis) -> FailedFilter {
        bounded(&self.filter, self.after, bound_id, now)
    }
}

fn bounded(filter: &FailedFilter, above: i64, up_to: i64, failed_before: Millis) -> FailedFilter {
    FailedFilter {
        until: Some(filter.until.map_or(failed_before, |u| u.min(failed_before))),
        id_range: Some((above, up_to)),
        ..filter.clone()
    }
}

impl ReplayJob {
    /// Matches reached so far.
    pub fn processed(&self) -> u64 {
        self.replayed + self.skipped
    }

    /// How many the next chunk may take (0: the cap is reached).
    pub(crate) fn chunk_size(&self, chunk: usize) -> usize {
        match self.cap {
            Some(cap) => (cap.saturating_sub(self.processed()) as usize).min(chunk),
            None => chunk,
        }
    }

    /// The job's matches after the cursor, up to `up_to`.
    pub(crate) fn after_cursor(&self, up_to: i64) -> FailedFilter {
        bounded(&self.filter, self.cursor, up_to, self.failed_before)
    }

    /// The window a chunk replays, from its first `size` matches after the cursor (`chosen`,
    /// each `(id, erased)`, in id order).
    pub(crate) fn window(&self, chosen: &[(i64, bool)], size: usize) -> Window {
        if size == 0 {
            // The cap is reached: nothing more is taken.
            return Window {
                up_to: self.cursor,
                erased: 0,
                last: true,
            };
        }
        let erased = chosen.iter().filter(|(_, e)| *e).count() as u64;
        if chosen.len() < size {
            // Nothing is left between the cursor and the bound.
            return Window {
                up_to: self.bound_id,
                erased,
                last: true,
            };
        }
        let up_to = chosen.last().map_or(self.bound_id, |(id, _)| *id);
        let capped = self
            .cap
            .is_some_and(|cap| self.processed() + chosen.len() as u64 >= cap);
        Window {
            up_to,
            erased,
            last: capped || up_to >= self.bound_id,
        }
    }
}

/// The deliveries one chunk replays: the job's matches after the cursor up to `up_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub up_to: i64,
    /// Matches of erased events in it.
    pub erased: u64,
    /// The job is done after this chunk.
    pub last: bool,
}

impl Window {
    /// The job's status after the chunk.
    pub(crate) fn status(&self) -> ReplayJobStatus {
        if self.last {
            ReplayJobStatus::Done
        } else {
            ReplayJobStatus::Running
        }
    }
}

/// A filter as `replay_jobs.filter` keeps it (JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_contains: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    delivery_ids: Vec<i64>,
}

/// `filter` as stored.
pub(crate) fn encode_filter(filter: &FailedFilter) -> Result<String, StoreError> {
    serde_json::to_string(&StoredFilter {
        statuses: filter.statuses.iter().map(|s| s.as_str().to_owned()).collect(),
        target: filter.target.as_ref().map(|t| t.to_string()),
        event_type: filter.event_type.clone(),
        since: filter.since,
        until: filter.until,
        error_contains: filter.error_contains.clone(),
        delivery_ids: filter.delivery_ids.clone(),
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A stored filter.
fn decode_filter(text: &str) -> Result<FailedFilter, StoreError> {
    let f: StoredFilter =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("replay job filter: {e}")))?;
    Ok(FailedFilter {
        statuses: f
            .statuses
            .iter()
            .map(|s| decode::<DeliveryStatus>(s))
            .collect::<Result<_, _>>()?,
        target: f.target.as_deref().map(decode).transpose()?,
        event_type: f.event_type,
        since: f.since,
        until: f.until,
        error_contains: f.error_contains,
        delivery_ids: f.delivery_ids,
        id_range: None,
    })
}

/// The columns of `replay_jobs`, in the order `sql/*replay_job*.sql` select them: id, filter,
/// status, after_id, bound_id, failed_before, cap, cursor_id, total, replayed, skipped, error,
/// created_at, updated_at, finished_at.
pub(crate) type JobColumns = (
    i64,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

/// A stored job. Its filter, if this version does not understand it, is the error (the
/// worker fails the job with it; reading it shows the job with an empty filter).
pub(crate) fn job(c: JobColumns) -> Result<(ReplayJob, Option<StoreError>), StoreError> {
    let (filter, broken) = match decode_filter(&c.1) {
        Ok(f) => (f, None),
        Err(e) => (FailedFilter::default(), Some(e)),
    };
    let n = |v: i64| v.max(0) as u64;
    Ok((
        ReplayJob {
            id: c.0,
            filter,
            status: decode(&c.2)?,
            after: c.3,
            bound_id: c.4,
            failed_before: c.5,
            cap: c.6.map(n),
            cursor: c.7,
            total: n(c.8),
            replayed: n(c.9),
            skipped: n(c.10),
            error: c.11,
            created_at: c.12,
            updated_at: c.13,
            finished_at: c.14,
        },
        broken,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(cap: Option<u64>, replayed: u64) -> ReplayJob {
        ReplayJob {
            id: 1,
            filter: FailedFilter::default(),
            status: ReplayJobStatus::Running,
            after: 0,
            bound_id: 100,
            failed_before: 50,
            cap,
            cursor: 10,
            total: 90,
            replayed,
            skipped: 0,
            error: None,
            created_at: 50,
            updated_at: 50,
            finished_at: None,
        }
    }

    #[test]
    fn a_window_ends_at_the_last_match_or_at_the_bound() {
        let j = job(None, 0);
        let full = j.window(&[(11, false), (12, true), (20, false)], 3);
        assert_eq!(
            full,
            Window {
                up_to: 20,
                erased: 1,
                last: false
            }
        );
        let short = j.window(&[(11, false)], 3);
        assert_eq!(
            short,
            Window {
                up_to: 100,
                erased: 0,
                last: true
            }
        );
        assert!(j.window(&[], 3).last, "nothing left");
    }

    #[test]
    fn a_cap_shrinks_the_last_chunk_and_ends_the_job() {
        let j = job(Some(5), 3);
        assert_eq!(j.chunk_size(1_000), 2);
        assert!(j.window(&[(11, false), (12, false)], 2).last);
        assert_eq!(job(Some(5), 5).chunk_size(1_000), 0);
        assert_eq!(job(None, 5).chunk_size(1_000), 1_000);
    }

    #[test]
    fn the_bound_narrows_the_filters_time_and_ids() {
        let j = job(None, 0);
        let f = j.after_cursor(40);
        assert_eq!((f.until, f.id_range), (Some(50), Some((10, 40))));
        let earlier = ReplayJob {
            filter: FailedFilter {
                until: Some(30),
                ..FailedFilter::default()
            },
            ..j
        };
        assert_eq!(earlier.after_cursor(40).until, Some(30));
    }

    #[test]
    fn a_filter_is_stored_and_read_back_and_a_foreign_one_is_an_error() {
        let f = FailedFilter {
            statuses: vec![DeliveryStatus::Dead],
            target: Some("crm".parse().unwrap()),
            event_type: Some("order.*".into()),
            since: Some(1),
            until: Some(2),
            error_contains: Some("HTTP 4".into()),
            delivery_ids: vec![3, 5],
            ..FailedFilter::default()
        };
        assert_eq!(decode_filter(&encode_filter(&f).unwrap()).unwrap(), f);
        assert!(decode_filter(r#"{"colour":"red"}"#).is_err());
        assert!(decode_filter(r#"{"statuses":["gone"]}"#).is_err());
    }
}
