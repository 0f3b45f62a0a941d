//! One attempt: claimed deliveries (one, or a batch) run through the newest version of their
//! target's plugin; the call feeds the target's circuit breaker; each outcome becomes the
//! delivery's next status (the retry schedule of `policy::retry`), with the operational
//! events it causes (`outboxd.delivery.dead`, `outboxd.target.recovered`); and the
//! settlements go to the settler. An attempt that is still running when the shutdown grace
//! period ends is dropped: its lease is released instead.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::Shared;
use super::lane::Slot;
use super::settler::Queued;
use crate::domain::{DeliveryStatus, Millis, Outcome, ReceiverResponse, TargetClass, TargetName, delivery_key, now_ms};
use crate::outbox::operational_event;
use crate::plugin::{BatchReport, EventInput, HttpExchange, Report};
use crate::policy::adaptive::Answer;
use crate::policy::breaker::{Signal, Transition};
use crate::policy::retry;
use crate::store::{Claimed, NewEvent, Settlement};
use crate::targets::Target;
use crate::targets::manifest::TargetSpec;
use crate::targets::routing::{OPERATIONAL_PREFIX, Routes};
use crate::telemetry::trace_context::TraceParent;
use crate::telemetry::{history, metrics, traces};

/// Starts an attempt of `deliveries` on the dispatcher's task tracker; `slot` is held until
/// it ends. `lane_target` runs it if the target has been removed meanwhile.
pub(super) fn spawn(shared: &Arc<Shared>, lane_target: &Arc<Target>, deliveries: Vec<Claimed>, slot: Slot) {
    let shared_for_task = Arc::clone(shared);
    let fallback = Arc::clone(lane_target);
    shared.attempts.spawn(async move {
        run(&shared_for_task, deliveries, fallback).await;
        drop(slot);
    });
}

/// What one call to a plugin produced, one outcome per event.
#[derive(Debug)]
pub(super) struct CallReport {
    pub outcomes: Vec<Outcome>,
    /// What the plugin attached to each event's attempt (`report.detail`), in event order.
    pub details: Vec<Option<String>>,
    pub duration: Duration,
    /// What the call says about the receiver's load.
    pub answer: Answer,
    /// The receiver's last response of the call, kept in each attempt's history.
    pub response: Option<ReceiverResponse>,
}

impl From<Report> for CallReport {
    fn from(r: Report) -> Self {
        let outcomes = vec![r.outcome];
        Self {
            details: vec![r.detail],
            answer: answer_of(&outcomes, &r.requests, r.duration),
            response: last_response(r.requests),
            outcomes,
            duration: r.duration,
        }
    }
}

impl From<BatchReport> for CallReport {
    fn from(r: BatchReport) -> Self {
        Self {
            answer: answer_of(&r.outcomes, &r.requests, r.duration),
            response: last_response(r.requests),
            outcomes: r.outcomes,
            details: r.details,
            duration: r.duration,
        }
    }
}

/// The last response the plugin received through the host during a call: what the receiver
/// said about the attempt, whatever the plugin made of it. It comes from the host's transcript,
/// not from the plugin, so that it is the receiver's own text for every plugin (old ones too)
/// and no plugin can change it. A batch call's response belongs to every event of the batch.
fn last_response(requests: Vec<HttpExchange>) -> Option<ReceiverResponse> {
    requests.into_iter().rev().find_map(|r| r.response)
}

/// How the receiver answered a call, from the requests the plugin sent through the host: a
/// refusal for load if any was answered 503, or failed to connect or timed out; else over a
/// rate limit if any was answered 429; else a refusal if the plugin asked for a delay
/// (`after-ms`, a receiver's `Retry-After`); else accepted (a round trip of the call's
/// duration) if an event was delivered; else nothing the load explains.
fn answer_of(outcomes: &[Outcome], requests: &[HttpExchange], duration: Duration) -> Answer {
    let delay = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Retry { after, .. } => *after,
            _ => None,
        })
        .max();
    let refused = requests.iter().any(|r| match &r.result {
        Ok(status) => *status == 503,
        Err(e) => e == "timeout" || e.starts_with("connect"),
    });
    let limited = requests.iter().any(|r| r.result == Ok(429));
    if refused {
        Answer::Refused(delay)
    } else if limited {
        Answer::Limited(delay)
    } else if delay.is_some() {
        Answer::Refused(delay)
    } else if outcomes.contains(&Outcome::Delivered) {
        Answer::Accepted(duration)
    } else {
        Answer::Other
    }
}

/// What the plugin is given of one claimed delivery; `trace` is the context its outbound
/// requests are children of.
fn input_for(delivery: &Claimed, trace: Option<TraceParent>) -> EventInput {
    let event = &delivery.event;
    EventInput {
        trace: trace.or(event.traceparent),
        id: event.id.to_string(),
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
        idempotency_key: delivery_key(&event.id, &delivery.target),
        attempt: delivery.attempt,
        created_at_ms: event.created_at.max(0) as u64,
        headers: event.headers.clone(),
    }
}

/// Runs claimed deliveries and queues their settlements.
async fn run(shared: &Shared, deliveries: Vec<Claimed>, lane_target: Arc<Target>) {
    let Some(first) = deliveries.first() else { return };
    let name = first.target.clone();
    let registry = &shared.services.registry;
    // The newest version of the target runs the attempt; the lane's is the fallback when the
    // target has just been removed.
    let target = registry.snapshot().targets.get(&name).cloned().unwrap_or(lane_target);
    // The attempt joins the trace of its (first traced) event; a batch links the others.
    let parent = deliveries.iter().find_map(|d| d.event.traceparent);
    let span = traces::attempt(
        name.as_str(),
        &first.event.id.to_string(),
        first.attempt,
        deliveries.len(),
        parent,
    );
    for other in deliveries.iter().filter_map(|d| d.event.traceparent) {
        if Some(other) != parent {
            traces::link(&span, other);
        }
    }
    let handed_on = traces::handed_on(&span);
    let mut inputs: Vec<EventInput> = deliveries.iter().map(|d| input_for(d, handed_on)).collect();
    let flow = shared.services.flows.get(&target.spec);
    flow.started();
    let report: CallReport = tokio::select! {
        r = async {
            if target.spec.class == TargetClass::Batched {
                target.binding.deliver_batch(inputs).await.into()
            } else {
                target.binding.deliver(inputs.remove(0)).await.into()
            }
        }.instrument(span.clone()) => r,
        _ = shared.abort.cancelled() => return, // released at shutdown
    };
    if !span.is_none() {
        let failed = report.outcomes.iter().find(|o| **o != Outcome::Delivered);
        let outcome = failed.unwrap_or(&Outcome::Delivered).attempt_outcome();
        traces::attempt_ended(&span, outcome.as_str(), failed.is_none());
    }
    drop(span);

    // After the call: whether the target was removed meanwhile, and who subscribes to the
    // operational events it may cause.
    let after = registry.snapshot();
    let recovered = learn(shared, &target.spec, &report, &after.routes);
    if let Some(pause) = flow.finished(report.answer, Instant::now()) {
        // Refused even one at a time: the whole target waits, as the receiver asked.
        pause_target(shared, &target.spec, pause);
    }
    let finished = Finished {
        spec: &target.spec,
        plugin_hash: target.binding.plugin().hash(),
        removed: !after.targets.contains_key(&name),
        routes: &after.routes,
        now: now_ms(),
    };
    let settlements = finished.settlements(&deliveries, report, recovered, &mut rand::rng());
    for settlement in settlements {
        let queued = Queued {
            settlement,
            awaited: target.spec.ordered,
        };
        if shared.settle_tx.send(queued).await.is_err() {
            tracing::error!(
                target = %name,
                "settler gone; the lease will expire and the delivery be retried"
            );
        }
    }
}

/// Feeds the call to the target's breaker (as a whole: see `Signal::of_call`) and logs what
/// changed; returns the `outboxd.target.recovered` event when the breaker closed.
fn learn(shared: &Shared, spec: &TargetSpec, report: &CallReport, routes: &Routes) -> Option<NewEvent> {
    let name = &spec.name;
    let transition = Signal::of_call(&report.outcomes, spec.retry.max_backoff).and_then(|signal| {
        shared
            .services
            .breakers
            .with(name.as_str(), spec.breaker, |b| b.record(signal, Instant::now()))
    });
    match transition? {
        Transition::Opened { failures, attempts } => {
            tracing::warn!(
                target = %name, failures, attempts,
                cooldown_ms = spec.breaker.cooldown.as_millis() as u64,
                "circuit breaker opened: no attempts until the cool-down is over"
            );
            None
        }
        Transition::Paused { pause, .. } => {
            tracing::info!(
                target = %name, pause_ms = pause.as_millis() as u64,
                "the receiver asked for a pause (Retry-After): no attempts to this target until it is over"
            );
            None
        }
        Transition::Recovered { failures } => {
            tracing::info!(target = %name, failures, "circuit breaker closed: target recovered");
            Some(operational_event(
                routes,
                "outboxd.target.recovered",
                serde_json::json!({ "target": name.as_str(), "failures": failures }),
                format!("outboxd.target.recovered:{name}:{}", now_ms()),
            ))
        }
    }
}

/// Pauses the whole target for `pause` (at most its `max_backoff_ms`).
fn pause_target(shared: &Shared, spec: &TargetSpec, pause: Duration) {
    let pause = pause.min(spec.retry.max_backoff);
    let paused = shared
        .services
        .breakers
        .with(spec.name.as_str(), spec.breaker, |b| b.pause(pause, Instant::now()));
    if paused {
        tracing::info!(
            target = %spec.name, pause_ms = pause.as_millis() as u64,
            "the receiver refuses even one attempt at a time: no attempts to this target until the pause is over"
        );
    }
}

/// A finished call, and what is needed to decide what it means for each delivery.
struct Finished<'a> {
    spec: &'a TargetSpec,
    plugin_hash: &'a str,
    /// The target was removed while the call ran: its deliveries wait `paused` rather than
    /// `pending` until it is back.
    removed: bool,
    /// Who subscribes to operational events.
    routes: &'a Routes,
    now: Millis,
}

impl Finished<'_> {
    /// One settlement per delivery: its next status and time from the retry schedule, an
    /// `outboxd.delivery.dead` event when it died (not for operational events themselves),
    /// and `recovered` with the first.
    fn settlements(
        &self,
        deliveries: &[Claimed],
        report: CallReport,
        mut recovered: Option<NewEvent>,
        rng: &mut impl Rng,
    ) -> Vec<Settlement> {
        let name = &self.spec.name;
        let duration_ms = report.duration.as_millis() as u64;
        let mut out = Vec::with_capacity(deliveries.len());
        let details = report.details.into_iter().chain(std::iter::repeat(None));
        for ((delivery, outcome), detail) in deliveries.iter().zip(report.outcomes).zip(details) {
            let mut decision = retry::decide(&self.spec.retry, delivery.attempt, &outcome, self.now, rng);
            if self.removed && decision.status == DeliveryStatus::Pending {
                decision.status = DeliveryStatus::Paused;
            }
            log_outcome(delivery, &outcome, decision.status, report.duration);
            metrics::attempt_finished(name.as_str(), outcome.attempt_outcome(), report.duration);
            history::attempt_ended(
                name.as_str(),
                outcome.attempt_outcome(),
                decision.status,
                report.duration,
            );
            let mut emit: Vec<NewEvent> = recovered.take().into_iter().collect();
            // Dead (not discarded: best-effort gives up quietly) needs an operator's attention.
            if decision.status == DeliveryStatus::Dead && !delivery.event.event_type.starts_with(OPERATIONAL_PREFIX) {
                emit.push(self.dead_event(delivery, name, decision.last_error.as_deref()));
            }
            out.push(Settlement {
                target: name.clone(),
                delivery_id: delivery.delivery_id,
                seq: delivery.seq,
                status: decision.status,
                next_attempt_at: decision.next_attempt_at,
                last_error: decision.last_error,
                outcome: outcome.attempt_outcome(),
                finished_at: self.now,
                duration_ms,
                plugin_hash: Some(self.plugin_hash.to_owned()),
                response: report.response.clone(),
                detail,
                emit,
            });
        }
        out
    }

    fn dead_event(&self, delivery: &Claimed, name: &TargetName, last_error: Option<&str>) -> NewEvent {
        operational_event(
            self.routes,
            "outboxd.delivery.dead",
            serde_json::json!({
                "event_id": delivery.event.id.to_string(),
                "event_type": delivery.event.event_type,
                "target": name.as_str(),
                "attempts": delivery.attempt,
                "last_error": last_error,
                "idempotency_key": delivery_key(&delivery.event.id, name),
            }),
            format!("outboxd.delivery.dead:{}:{}", delivery.delivery_id, delivery.seq),
        )
    }
}

fn log_outcome(d: &Claimed, outcome: &Outcome, status: DeliveryStatus, took: Duration) {
    let took_ms = took.as_millis() as u64;
    match (outcome, status) {
        // Success is the common case: at debug, so that a busy host's log holds what needs
        // attention (the metrics count deliveries).
        (Outcome::Delivered, _) => {
            tracing::debug!(target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms, "delivered")
        }
        (_, DeliveryStatus::Dead | DeliveryStatus::Discarded) => tracing::warn!(
            target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms, status = status.as_str(),
            error = outcome.error().unwrap_or_default(), "delivery gave up"
        ),
        _ => tracing::info!(
            target = %d.target, event = %d.event.id, attempt = d.attempt, took_ms,
            error = outcome.error().unwrap_or_default(), "attempt failed; will retry"
        ),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::dispatch::testing::{claimed, spec};
    use crate::domain::AttemptOutcome;

    const NOW: Millis = 1_000_000;

    fn alerts() -> Routes {
        Routes::new([("alerts".parse().unwrap(), vec!["outboxd.*".parse().unwrap()])])
    }

    fn settle(
        spec: &TargetSpec,
        removed: bool,
        deliveries: &[Claimed],
        outcomes: Vec<Outcome>,
        recovered: Option<NewEvent>,
    ) -> Vec<Settlement> {
        let routes = alerts();
        let finished = Finished {
            spec,
            plugin_hash: "abc",
            removed,
            routes: &routes,
            now: NOW,
        };
        let report = CallReport {
            details: outcomes.iter().map(|_| Some("mine".to_owned())).collect(),
            outcomes,
            duration: Duration::from_millis(12),
            answer: Answer::Other,
            response: Some(ReceiverResponse::new(500, b"no")),
        };
        finished.settlements(deliveries, report, recovered, &mut StdRng::seed_from_u64(7))
    }

    #[test]
    fn each_attempt_keeps_the_receivers_last_response_of_its_call() {
        let exchange = |status: Option<u16>, body: &[u8]| HttpExchange {
            method: "POST".into(),
            url: "http://crm.example".into(),
            result: status.ok_or_else(|| "timeout".to_owned()),
            response: status.map(|s| ReceiverResponse::new(s, body)),
        };
        let report = Report {
            outcome: retry("status 500"),
            detail: None,
            logs: Vec::new(),
            requests: vec![
                exchange(Some(401), b"token expired"),
                exchange(Some(500), br#"{"error":"upstream exploded"}"#),
                exchange(None, b""),
            ],
            duration: Duration::from_millis(3),
            output: Default::default(),
        };
        let call = CallReport::from(report);
        let response = call.response.as_ref().unwrap();
        assert_eq!(
            (response.status, response.body.as_str()),
            (500, r#"{"error":"upstream exploded"}"#),
            "the last request that was answered"
        );
        let spec = spec("crm", "");
        let s = settle(
            &spec,
            false,
            &[
                claimed(1, "crm", "order.created", 1),
                claimed(2, "crm", "order.created", 1),
            ],
            vec![retry("a"), retry("b")],
            None,
        );
        assert!(
            s.iter().all(|s| s.response == Some(ReceiverResponse::new(500, b"no"))),
            "every event of the call: {s:?}"
        );
        assert!(
            s.iter().all(|s| s.detail.as_deref() == Some("mine")),
            "each its own: {s:?}"
        );
        let silent = Report {
            outcome: retry("timeout"),
            detail: Some("no answer".into()),
            logs: Vec::new(),
            requests: vec![exchange(None, b"")],
            duration: Duration::from_millis(3),
            output: Default::default(),
        };
        let silent = CallReport::from(silent);
        assert_eq!(silent.response, None);
        assert_eq!(
            silent.details,
            [Some("no answer".to_owned())],
            "the plugin's own detail"
        );
    }

    fn retry(reason: &str) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    #[test]
    fn a_retryable_failure_is_pending_again_later_with_its_error() {
        let spec = spec("crm", "");
        let s = settle(
            &spec,
            false,
            &[claimed(1, "crm", "order.created", 1)],
            vec![retry("status 500")],
            None,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].status, DeliveryStatus::Pending);
        assert!(s[0].next_attempt_at > NOW, "backed off");
        assert_eq!(s[0].last_error.as_deref(), Some("status 500"));
        assert_eq!(s[0].outcome, AttemptOutcome::Retry);
        assert_eq!((s[0].duration_ms, s[0].finished_at), (12, NOW));
        assert_eq!(s[0].plugin_hash.as_deref(), Some("abc"));
        assert!(s[0].emit.is_empty());
    }

    #[test]
    fn a_dead_delivery_emits_an_alert_to_its_subscribers_but_a_dead_alert_emits_nothing() {
        let spec = spec("crm", "");
        let permanent = || Outcome::Permanent { reason: "422".into() };
        let s = settle(
            &spec,
            false,
            &[claimed(5, "crm", "order.created", 1)],
            vec![permanent()],
            None,
        );
        assert_eq!(s[0].status, DeliveryStatus::Dead);
        let [alert] = s[0].emit.as_slice() else {
            panic!("one alert: {:?}", s[0].emit)
        };
        assert_eq!(alert.event_type.as_str(), "outboxd.delivery.dead");
        assert_eq!(alert.targets, ["alerts".parse::<TargetName>().unwrap()]);
        assert_eq!(
            alert.idempotency_key.as_ref().map(|k| k.as_str()),
            Some("outboxd.delivery.dead:5:1"),
            "one alert per attempt, however often its settle is retried"
        );
        let payload: serde_json::Value = serde_json::from_str(&alert.payload).unwrap();
        assert_eq!(payload["target"], "crm");
        assert_eq!(payload["last_error"], "permanent failure: 422");

        let s = settle(
            &spec,
            false,
            &[claimed(6, "crm", "outboxd.delivery.dead", 1)],
            vec![permanent()],
            None,
        );
        assert_eq!(s[0].status, DeliveryStatus::Dead);
        assert!(s[0].emit.is_empty(), "no alert about an alert");
    }

    #[test]
    fn a_best_effort_target_discards_quietly() {
        let spec = spec("crm", "class = \"best-effort\"\n[retry]\nmax_attempts = 1");
        let s = settle(
            &spec,
            false,
            &[claimed(1, "crm", "order.created", 1)],
            vec![retry("timeout")],
            None,
        );
        assert_eq!(s[0].status, DeliveryStatus::Discarded);
        assert!(s[0].emit.is_empty());
    }

    #[test]
    fn a_target_removed_during_the_call_leaves_its_retries_paused() {
        let spec = spec("crm", "");
        let deliveries = [claimed(1, "crm", "a", 1), claimed(2, "crm", "a", 1)];
        let s = settle(&spec, true, &deliveries, vec![retry("boom"), Outcome::Delivered], None);
        assert_eq!(
            s[0].status,
            DeliveryStatus::Paused,
            "no attempts until the target is back"
        );
        assert_eq!(
            s[1].status,
            DeliveryStatus::Delivered,
            "what was delivered stays delivered"
        );
    }

    #[test]
    fn the_recovered_event_rides_with_the_first_settlement_only() {
        let spec = spec("crm", "class = \"batched\"");
        let recovered = operational_event(&alerts(), "outboxd.target.recovered", serde_json::json!({}), "r".into());
        let deliveries = [claimed(1, "crm", "a", 2), claimed(2, "crm", "a", 2)];
        let s = settle(
            &spec,
            false,
            &deliveries,
            vec![Outcome::Delivered, Outcome::Delivered],
            Some(recovered),
        );
        assert_eq!(s[0].emit.len(), 1);
        assert_eq!(s[0].emit[0].event_type.as_str(), "outboxd.target.recovered");
        assert!(s[1].emit.is_empty());
    }
}
