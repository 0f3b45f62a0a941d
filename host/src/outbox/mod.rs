//! The front door for events. Every event outboxd takes in goes through [`Outbox`]: a
//! producer's `POST /v1/events`, a row relayed from an application's outbox table,
//! `outboxd enqueue`, and outboxd's own operational events. [`Outbox::accept`] routes the
//! events to the targets subscribed at that moment, stores each with one delivery per target
//! in one transaction, counts them by origin and wakes the idle dispatcher lanes; so every
//! way in routes, counts and wakes alike. Operational events are written in the settle that
//! caused them ([`operational_event`]) and counted here once it commits. [`input`] parses and
//! validates what producers send.

pub mod input;
#[cfg(test)]
mod proptests;

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{Instrument as _, Span};

use self::input::Accepted;
use crate::domain::{EventId, EventType, ProducerKey, now_ms};
use crate::store::{Ingested, NewEvent, Store, StoreError};
use crate::targets::Registry;
use crate::targets::routing::Routes;
use crate::telemetry::metrics;
use crate::telemetry::trace_context::TraceParent;
use crate::telemetry::traces;

/// Where events come from: the `origin` label of `outboxd_events_ingested_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `POST /v1/events`.
    Api,
    /// A row of an application's outbox table (`[[sources]]`).
    Source,
    /// `outboxd enqueue`.
    Cli,
    /// outboxd's own events (`outboxd.delivery.dead`, …).
    Operational,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Source => "source",
            Self::Cli => "cli",
            Self::Operational => "operational",
        }
    }
}

/// Which targets an event goes to.
#[derive(Clone)]
pub enum Routing {
    /// The live registry of a running service: the targets subscribed at the moment of
    /// acceptance.
    Live(Arc<Registry>),
    /// A fixed table, for a command that runs without the service (the manifests as scanned).
    Fixed(Arc<Routes>),
}

impl Routing {
    fn with<R>(&self, f: impl FnOnce(&Routes) -> R) -> R {
        match self {
            Self::Live(registry) => f(&registry.snapshot().routes),
            Self::Fixed(routes) => f(routes),
        }
    }
}

/// The front door: routes, stores, counts and wakes.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
    routing: Routing,
    wake: Arc<Notify>,
    /// Counts the manual pauses and resumes made through this process, so that lanes look
    /// at once (see [`Outbox::pauses`]).
    pauses: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Outbox {
    /// `wake` is what idle dispatcher lanes wait on.
    pub fn new(store: Arc<dyn Store>, routing: Routing, wake: Arc<Notify>) -> Self {
        Self {
            store,
            routing,
            wake,
            pauses: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Tells the lanes that a target was paused or resumed by hand (stored already).
    pub fn pause_changed(&self) {
        self.pauses.send_modify(|n| *n += 1);
    }

    /// What lanes watch to hear of manual pauses and resumptions made through this process,
    /// and of resumptions other processes announce ([`crate::store::Wakeups`]); the rest they
    /// find on their own, within a poll interval.
    pub fn pauses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pauses.subscribe()
    }

    /// Accepts validated events atomically (all or none): each gets an id and one pending
    /// delivery per target subscribed to its type now; an event whose idempotency key is
    /// known writes nothing and answers with the first event's id. Returns once the
    /// transaction has committed.
    pub async fn accept(&self, events: Vec<Accepted>, origin: Origin) -> Result<Vec<Ingested>, StoreError> {
        let parent = shared_trace(&events);
        let span = match origin {
            Origin::Operational => Span::none(),
            _ => traces::ingest(origin.as_str(), events.len(), parent),
        };
        self.accept_in(events, origin, parent, span).await
    }

    /// [`Outbox::accept`] for rows relayed from the application's outbox table `source`.
    pub async fn relay(&self, events: Vec<Accepted>, source: &str) -> Result<Vec<Ingested>, StoreError> {
        let parent = shared_trace(&events);
        let span = traces::relay(source, events.len(), parent);
        self.accept_in(events, Origin::Source, parent, span).await
    }

    /// Accepts `events` in `span`, which runs under `parent`. The events the span serves (those
    /// under `parent`, and those that carry no trace) join the span's trace when it is
    /// exported; an event under another trace keeps its own, and the span links to it.
    async fn accept_in(
        &self,
        mut events: Vec<Accepted>,
        origin: Origin,
        parent: Option<TraceParent>,
        span: Span,
    ) -> Result<Vec<Ingested>, StoreError> {
        if let Some(ours) = traces::handed_on(&span) {
            for e in &mut events {
                match e.traceparent {
                    None => e.traceparent = Some(ours),
                    Some(own) if Some(own) == parent => e.traceparent = Some(ours),
                    Some(other) => traces::link(&span, other),
                }
            }
        }
        let now = now_ms();
        let routed = self.routing.with(|routes| input::route(events, routes, now));
        let ingested = self.store.ingest(routed, now).instrument(span).await?;
        let duplicates = ingested.iter().filter(|i| i.duplicate).count();
        self.stored(origin, ingested.len() - duplicates, duplicates);
        Ok(ingested)
    }

    /// Wakes idle dispatcher lanes: due work appeared other than by accepting events (a
    /// replay, a resumed target).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Counts events stored (by [`Outbox::accept`], or in a transaction of the caller's) and
    /// wakes idle lanes when anything new was stored.
    pub fn stored(&self, origin: Origin, accepted: usize, duplicates: usize) {
        metrics::events_ingested(origin.as_str(), accepted, duplicates);
        if accepted > 0 {
            self.wake.notify_waiters();
        }
    }
}

/// The trace every event of a request shares: the producer's `traceparent` header of an API
/// request; for source rows, only when every row carries the same one (otherwise the relay
/// span starts a trace of its own and links to each row's).
fn shared_trace(events: &[Accepted]) -> Option<TraceParent> {
    let first = events.first()?.traceparent?;
    events.iter().all(|e| e.traceparent == Some(first)).then_some(first)
}

/// An operational event (type `outboxd.…`), routed by `routes` to the targets that subscribe to
/// it, to be stored in the transaction that caused it (a settle: the event exists only if the
/// settle did); `key` makes it idempotent. Report it with [`Outbox::stored`] once that
/// transaction has committed.
pub fn operational_event(routes: &Routes, event_type: &str, payload: serde_json::Value, key: String) -> NewEvent {
    NewEvent {
        id: EventId::new(),
        event_type: EventType::try_from(event_type.to_owned()).expect("operational event types are valid"),
        payload: payload.to_string(),
        headers: Vec::new(),
        idempotency_key: ProducerKey::try_from(key).ok(),
        ordering_key: None,
        targets: routes.targets_for(event_type),
        due_at: None,
        traceparent: None,
    }
}
