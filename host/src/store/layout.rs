//! Where an ingest's new rows land: the order in which both backends write a group's events
//! and deliveries, so that the rows one claim takes sit next to each other on disk.
//!
//! A claim takes one target's due deliveries in due order (ids break ties) and reads each one's
//! event; a settle rewrites the same rows. Written in the order events came, one target's
//! deliveries are every n-th row (n targets), and with priorities or schedules mixed event by
//! event the rows due first are scattered further still: each claim and each settle then touch
//! several times the pages. Written grouped by target and by due time instead, a claim reads a
//! run of neighbouring rows, whatever the mix.
//!
//! Two orders are kept whatever the layout: a producer key's first event is the one given
//! first (the caller decides duplicates before it asks for an order), and the deliveries of an
//! event with an ordering key keep the order of their events within a target (the per-key FIFO
//! follows delivery ids).

use crate::domain::{Millis, TargetName};
use crate::store::NewEvent;

/// When an event accepted at `accepted` falls due.
fn due(event: &NewEvent, accepted: Millis) -> Millis {
    event.due_at.unwrap_or(accepted)
}

/// The positions of `events` (each with its acceptance time) in the order to write them: by
/// the time their deliveries fall due, events due together in the order given.
pub(crate) fn events_in_order(events: &[(&NewEvent, Millis)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| due(events[i].0, events[i].1));
    order
}

/// The deliveries of `events` (each event's position and one of its targets) in the order to
/// write them: grouped by target; within a target, the deliveries of events with an ordering
/// key first, in the order of their events, then the others by due time, in the order given
/// where due together.
pub(crate) fn deliveries_in_order<'a>(events: &[(&'a NewEvent, Millis)]) -> Vec<(usize, &'a TargetName)> {
    let mut deliveries: Vec<(usize, &'a TargetName)> = events
        .iter()
        .enumerate()
        .flat_map(|(i, (e, _))| e.targets.iter().map(move |t| (i, t)))
        .collect();
    deliveries.sort_by_key(|&(i, target)| {
        let (event, accepted) = events[i];
        let due = if event.ordering_key.is_some() {
            Millis::MIN
        } else {
            due(event, accepted)
        };
        (target, due)
    });
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventId, EventType};

    fn event(targets: &[&str], due_at: Option<Millis>, ordering_key: Option<&str>) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            event_type: EventType::try_from("order.created".to_owned()).unwrap(),
            payload: "{}".into(),
            headers: Vec::new(),
            idempotency_key: None,
            ordering_key: ordering_key.map(str::to_owned),
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            due_at,
            traceparent: None,
        }
    }

    fn named<'a>(order: &[(usize, &'a TargetName)]) -> Vec<(usize, &'a str)> {
        order.iter().map(|(i, t)| (*i, t.as_str())).collect()
    }

    #[test]
    fn a_targets_deliveries_are_written_together_in_due_order() {
        // Priorities mixed event by event: the second event is due 60 s early.
        let es = [
            event(&["b", "a"], None, None),
            event(&["a", "b"], Some(940_000), None),
            event(&["a"], None, None),
        ];
        let at: Vec<_> = es.iter().map(|e| (e, 1_000_000)).collect();
        assert_eq!(events_in_order(&at), [1, 0, 2]);
        assert_eq!(
            named(&deliveries_in_order(&at)),
            [(1, "a"), (0, "a"), (2, "a"), (1, "b"), (0, "b")]
        );
    }

    #[test]
    fn keyed_deliveries_keep_the_order_of_their_events() {
        // The later event of key k is due first (a priority), yet its delivery is written after
        // the earlier one's: the per-key FIFO follows delivery ids.
        let es = [
            event(&["a"], None, Some("k")),
            event(&["a"], Some(1), Some("k")),
            event(&["a"], Some(2), None),
        ];
        let at: Vec<_> = es.iter().map(|e| (e, 1_000_000)).collect();
        assert_eq!(named(&deliveries_in_order(&at)), [(0, "a"), (1, "a"), (2, "a")]);
    }
}
