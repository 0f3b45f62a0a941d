//! Small accessors for the JSON documents of the HTTP API (`GET /v1/events/{id}`,
//! `GET /v1/targets`, `GET /v1/sources`).

use std::collections::BTreeMap;

use serde_json::Value;

/// The `deliveries` of an event document, keyed by target name.
pub fn deliveries_by_target(event: &Value) -> BTreeMap<String, Value> {
    event["deliveries"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| Some((d["target"].as_str()?.to_owned(), d.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// The delivery of `event` to `target`.
///
/// # Panics
/// With the whole document if there is no such delivery.
pub fn delivery<'a>(event: &'a Value, target: &str) -> &'a Value {
    event["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["target"] == target))
        .unwrap_or_else(|| {
            panic!(
                "event has no delivery to target {target:?}:\n{}",
                serde_json::to_string_pretty(event).unwrap_or_default()
            )
        })
}

/// The status of the delivery of `event` to `target`, if there is one.
pub fn status_of<'a>(event: &'a Value, target: &str) -> Option<&'a str> {
    event["deliveries"].as_array()?.iter().find(|d| d["target"] == target)?["status"].as_str()
}

/// The attempt history of the delivery of `event` to `target` (empty if none).
pub fn history(event: &Value, target: &str) -> Vec<Value> {
    delivery(event, target)["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The entry called `name` of a list document (`GET /v1/targets`, `GET /v1/sources`), if any.
pub fn find_named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|t| t["name"] == name)
}

/// The entry called `name` of a `GET /v1/targets` document; panics naming the document if absent.
pub fn target_entry<'a>(targets: &'a Value, name: &str) -> &'a Value {
    find_named(targets, name).unwrap_or_else(|| panic!("no target {name} in {targets:#}"))
}

/// The entry called `name` of a `GET /v1/sources` document; panics naming the document if absent.
pub fn source_entry<'a>(sources: &'a Value, name: &str) -> &'a Value {
    find_named(sources, name).unwrap_or_else(|| panic!("no source {name} in {sources:#}"))
}

/// Target `name`'s delivery count in `status`, from a `GET /v1/targets` document.
pub fn target_count(targets: &Value, name: &str, status: &str) -> u64 {
    target_entry(targets, name)["counts"][status].as_u64().unwrap_or(0)
}

/// Target `name`'s adaptive limit now (`concurrency_limit.limit` of a `GET /v1/targets`
/// document); `None` while the target has not run in this process (the field is null).
pub fn concurrency_limit(targets: &Value, name: &str) -> Option<u64> {
    target_entry(targets, name)["concurrency_limit"]["limit"].as_u64()
}
