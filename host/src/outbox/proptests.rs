//! Property tests of the ingest parser (`input::parse` and `parse_from_producer`): whatever
//! bytes a producer sends, parsing returns an answer (never panics), and what it accepts keeps
//! the documented limits. Bounded (a few hundred cases each), so they run in every `cargo test`.

use proptest::prelude::*;

use super::input::{self, Batch, IngestError, MAX_BATCH};

const MAX_PAYLOAD: usize = 64;

/// JSON values of a few levels, as text.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Event objects near and across the limits: odd types, keys, headers, unknown fields.
fn event() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![
            "[a-z.]{1,10}",
            "outboxd\\.[a-z]{1,5}",
            "[ -~]{0,12}",
            Just(String::new())
        ],
        json_value(),
        prop::option::of(prop_oneof![
            "[a-z0-9:._-]{1,12}",
            "source:[a-z]{1,4}:[0-9]{1,3}",
            "[ -~]{0,300}"
        ]),
        prop::option::of(prop::collection::btree_map("[ -~]{0,6}", "[ -~]{0,6}", 0..4)),
        prop::option::of("[ -~]{0,6}"),
        any::<bool>(),
    )
        .prop_map(|(t, payload, key, headers, ordering, extra)| {
            let mut e = serde_json::json!({"type": t, "payload": payload});
            if let Some(k) = key {
                e["idempotency_key"] = k.into();
            }
            if let Some(h) = headers {
                e["headers"] = serde_json::to_value(h).unwrap();
            }
            if let Some(o) = ordering {
                e["ordering_key"] = o.into();
            }
            if extra {
                e["unexpected"] = 1.into();
            }
            e
        })
}

fn check_accepted(batch: &Batch) {
    let events = match batch {
        Batch::One(e) => std::slice::from_ref(e),
        Batch::Many(v) => {
            assert!(!v.is_empty() && v.len() <= MAX_BATCH);
            v.as_slice()
        }
    };
    for e in events {
        assert!(e.payload.len() <= MAX_PAYLOAD, "{}", e.payload);
        assert!(serde_json::from_str::<serde_json::Value>(&e.payload).is_ok());
        assert!(!e.event_type.as_str().starts_with(input::RESERVED_PREFIX));
        assert!(e.headers.len() <= 64);
        assert!(e.headers.windows(2).all(|w| w[0].0 < w[1].0), "headers sorted by name");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_an_answer(body in prop::collection::vec(any::<u8>(), 0..256)) {
        match input::parse(&body, MAX_PAYLOAD) {
            Ok(batch) => check_accepted(&batch),
            Err(IngestError::Invalid(m) | IngestError::TooLarge(m)) => prop_assert!(!m.is_empty()),
        }
    }

    #[test]
    fn events_and_batches_are_accepted_only_within_the_limits(
        events in prop::collection::vec(event(), 1..5),
        as_batch in any::<bool>(),
    ) {
        let body = if as_batch || events.len() > 1 {
            serde_json::to_vec(&events).unwrap()
        } else {
            serde_json::to_vec(&events[0]).unwrap()
        };
        let parsed = input::parse(&body, MAX_PAYLOAD);
        if let Ok(batch) = &parsed {
            check_accepted(batch);
        }
        // A producer's parse refuses what the plain one refuses, and reserved keys besides.
        match input::parse_from_producer(&body, MAX_PAYLOAD) {
            Ok(batch) => {
                prop_assert!(parsed.is_ok());
                for e in batch.into_vec() {
                    prop_assert!(!e.idempotency_key.is_some_and(|k| input::is_reserved_key(k.as_str())));
                }
            }
            Err(e) => prop_assert!(parsed.is_err() || e.to_string().contains("idempotency_key"), "{e}"),
        }
    }
}
