//! Hot reload of target plugins: atomic replacement under load, new targets dropped into a
//! running host, broken files that keep the old version serving, removed targets whose
//! deliveries wait as `paused`, and the on-disk compile cache across restarts.
//!
//! The fixtures are `marker_v1.wasm` and `marker_v2.wasm` (`plugins/marker-src`, built as
//! versions 1.0.0 and 2.0.0): they POST the payload to `config.url` with the headers
//! `idempotency-key`, `outboxd-event-id` and `x-plugin-version`, so the receiver can tell
//! which version of the plugin served each request.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{
    Behavior, Host, Receiver, RecordedRequest, Target, artifacts, default_timeout, find_named, scaled, target_entry,
};
use tokio::sync::RwLock;

/// The header the marker fixtures put their version in.
const VERSION_HEADER: &str = "x-plugin-version";
const V1: &str = "1.0.0";
const V2: &str = "2.0.0";

/// The replace-under-load test measures reload latency on a 2-core machine: it runs alone
/// (write lock) while the other tests of this file may share the machine (read lock).
static MACHINE: RwLock<()> = RwLock::const_new(());

/// A component that is valid but implements another world: it exports only
/// `hello: func() -> u32` (no `deliver`). Generated with `wasm-encoder` 0.254; as WAT:
///
/// ```wat
/// (component
///   (core module $m (func (export "hello") (result i32) i32.const 42))
///   (core instance $i (instantiate $m))
///   (func (export "hello") (result u32) (canon lift (core func $i "hello"))))
/// ```
///
/// `outboxd plugin check` says of it: "does not implement world `outboxd:target/target@0.1.0`
/// or `outboxd:target/batch-target@0.1.0`: no export `deliver` found (the component exports:
/// hello)".
const OTHER_WORLD_COMPONENT: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x01, 0x26, 0x00, 0x61, //
    0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01, //
    0x7f, 0x03, 0x02, 0x01, 0x00, 0x07, 0x09, 0x01, 0x05, 0x68, 0x65, 0x6c, //
    0x6c, 0x6f, 0x00, 0x00, 0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x2a, 0x0b, //
    0x02, 0x04, 0x01, 0x00, 0x00, 0x00, 0x06, 0x0b, 0x01, 0x00, 0x00, 0x01, //
    0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x07, 0x05, 0x01, 0x40, 0x00, //
    0x00, 0x79, 0x08, 0x06, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x0b, //
    0x01, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x01, 0x00, 0x00,
];

/// A core WebAssembly module (the smallest there is): WebAssembly, but not a component.
const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

// ---------------------------------------------------------------------------
// Helpers

/// The bytes of the marker fixtures: (version 1, version 2).
async fn markers() -> (Vec<u8>, Vec<u8>) {
    (
        artifacts::plugin_bytes("marker_v1.wasm").await,
        artifacts::plugin_bytes("marker_v2.wasm").await,
    )
}

/// A host that notices changes in its plugins directory quickly (`reload_debounce_ms = 100`).
fn reloading_host() -> Host {
    let mut host = Host::new();
    host.set_config("reload_debounce_ms", 100);
    host
}

/// `component` with a custom section appended: the same code under another content hash.
fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"outboxd-test-variant";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// A manifest for a marker target (`plugin` is its component file in `plugins.d`) posting
/// to `rx` at `path`.
fn marker(rx: &Receiver, path: &str, plugin: &str) -> Target {
    Target::new(plugin).config("url", rx.url(path)).allow(&rx.authority())
}

/// Target `t`'s count of deliveries in `status` (`t` an entry of `GET /v1/targets`).
fn count(t: &Value, status: &str) -> u64 {
    t["counts"][status].as_u64().unwrap_or(0)
}

/// The arrival time of the earliest request received at or after `since` that carries
/// `version` (requests are recorded in arrival order, so only the tail is scanned).
fn first_with_version(reqs: &[RecordedRequest], since: Instant, version: &str) -> Option<Instant> {
    reqs.iter()
        .rev()
        .take_while(|r| r.received_at >= since)
        .filter(|r| r.header(VERSION_HEADER) == Some(version))
        .map(|r| r.received_at)
        .min()
}

/// How many requests received at or after `since` carry `version`.
fn count_with_version(reqs: &[RecordedRequest], since: Instant, version: &str) -> usize {
    reqs.iter()
        .rev()
        .take_while(|r| r.received_at >= since)
        .filter(|r| r.header(VERSION_HEADER) == Some(version))
        .count()
}

/// Posts one event and waits for its request at `path`; returns that request.
async fn deliver_one(host: &Host, rx: &Receiver, path: &str, tag: &str) -> RecordedRequest {
    let id = host.enqueue("probe.sent", json!({"tag": tag})).await;
    let found = rx
        .wait_until(default_timeout(), |reqs| {
            reqs.iter().any(|r| r.path == path && r.event_id() == Some(id.as_str()))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "event {id} ({tag}) never reached {path}: {e}\n--- outboxd stderr (tail) ---\n{}",
                host.stderr_tail(60)
            )
        });
    found
        .into_iter()
        .find(|r| r.path == path && r.event_id() == Some(id.as_str()))
        .expect("found above")
}

// ---------------------------------------------------------------------------
// 1. Replacement under load

const REPLACEMENTS: usize = 20;
/// The producer posts BATCH events every BATCH_EVERY: 400 events per second.
const BATCH: usize = 10;
const BATCH_EVERY: Duration = Duration::from_millis(25);
/// Bounds on the producer whatever happens to the replacements.
const MAX_EVENTS: usize = 16_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(40);
/// How many requests the new version must serve before the next replacement.
const SERVE_BEFORE_NEXT: usize = 150;
/// After the first request of a new version, requests that arrive later than this must
/// all come from it (attempts already running on the old version may still finish).
const SWITCH_GRACE: Duration = Duration::from_millis(250);

/// Posts batches of events until told to stop (or a bound is reached); returns the ids.
async fn produce(url: String, stop: Arc<AtomicBool>) -> Result<Vec<String>, String> {
    let client = reqwest::Client::builder()
        .timeout(scaled(Duration::from_secs(20)))
        .build()
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && ids.len() < MAX_EVENTS && started.elapsed() < MAX_LOAD_TIME {
        tick.tick().await;
        let batch: Vec<Value> = (0..BATCH)
            .map(|_| {
                seq += 1;
                json!({"type": "load.tick", "payload": {"seq": seq}})
            })
            .collect();
        let resp = client
            .post(&url)
            .json(&batch)
            .send()
            .await
            .map_err(|e| format!("POST batch ending at seq {seq}: {e}"))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| format!("batch answer: {e}"))?;
        if status != 202 {
            return Err(format!("POST batch ending at seq {seq} answered {status}: {body}"));
        }
        let answered = body
            .as_array()
            .ok_or_else(|| format!("batch answer is no array: {body}"))?;
        if answered.len() != BATCH {
            return Err(format!("batch of {BATCH} answered with {} ids: {body}", answered.len()));
        }
        for a in answered {
            ids.push(a["id"].as_str().ok_or_else(|| format!("no id in {a}"))?.to_owned());
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_plugin_under_load_loses_nothing_and_switches_within_a_second() {
    let _alone = MACHINE.write().await;
    let (v1, v2) = markers().await;
    let rx = Receiver::start().await;
    let mut host = reloading_host();
    // A compile cache of its own: the first replacement compiles version 2 for real.
    host.set_config("cache_dir", "compile-cache");
    host.add_target_component(
        "live",
        &marker(&rx, "/live", "live.wasm").events(&["load.*"]).concurrency(8),
        &v1,
    );
    host.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(host.url("/v1/events"), Arc::clone(&stop)));
    // Stops the producer even if an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));

    let load_started = Instant::now();
    rx.wait_until(default_timeout(), |reqs| {
        count_with_version(reqs, load_started, V1) >= SERVE_BEFORE_NEXT
    })
    .await
    .unwrap_or_else(|e| panic!("version 1 never served the load: {e}"));

    // (version, renamed at, first request of that version at)
    let mut switches: Vec<(&str, Instant, Instant)> = Vec::new();
    for i in 0..REPLACEMENTS {
        let (version, bytes) = if i % 2 == 0 { (V2, &v2) } else { (V1, &v1) };
        let renamed = host.deploy("live.wasm", bytes);
        let reqs = rx
            .wait_until(scaled(Duration::from_secs(15)), |reqs| {
                first_with_version(reqs, renamed, version).is_some()
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "replacement #{} (to {version}): no request from it within 15 s\n--- outboxd stderr (tail) ---\n{}",
                    i + 1,
                    host.stderr_tail(40)
                )
            });
        let first = first_with_version(&reqs, renamed, version).expect("found above");
        switches.push((version, renamed, first));
        // Let the new version carry the load for a while before the next replacement.
        rx.wait_until(scaled(Duration::from_secs(15)), |reqs| {
            count_with_version(reqs, first, version) >= SERVE_BEFORE_NEXT
        })
        .await
        .unwrap_or_else(|_| panic!("replacement #{} (to {version}) stopped serving", i + 1));
    }
    let replacing_took = load_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let ids = producer
        .await
        .expect("producer task")
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let n = ids.len();
    let posted_rate = n as f64 / load_started.elapsed().as_secs_f64();

    // Every event is delivered exactly once, none failed.
    let targets = host
        .wait_for_targets(scaled(Duration::from_secs(90)), |ts| {
            find_named(ts, "live").is_some_and(|t| count(t, "delivered") == n as u64)
        })
        .await;
    let live = target_entry(&targets, "live");
    for status in ["pending", "in_flight", "dead", "paused", "discarded"] {
        assert_eq!(count(live, status), 0, "no delivery may be {status}: {live:#}");
    }
    let failed_attempts = host.sql_i64("SELECT count(*) FROM attempts WHERE outcome != 'delivered'");
    assert_eq!(failed_attempts, 0, "no attempt may fail across the replacements");

    let reqs = rx.requests_at("/live");
    assert_eq!(
        reqs.len(),
        n,
        "the receiver should see each of the {n} events exactly once (duplicates or losses)"
    );
    let mut key_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &reqs {
        assert_eq!(r.reply, testkit::Reply::Status(200), "{r}");
        let version = r.header(VERSION_HEADER);
        assert!(version == Some(V1) || version == Some(V2), "unmarked request: {r}");
        let id = r.event_id().unwrap_or_else(|| panic!("no outboxd-event-id: {r}"));
        let key = r.idempotency_key().unwrap_or_else(|| panic!("no idempotency-key: {r}"));
        key_of.entry(id).or_default().insert(key);
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !key_of.contains_key(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} posted events never reached the receiver, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        key_of.values().all(|keys| keys.len() == 1),
        "an event was sent with two idempotency keys"
    );
    assert_eq!(
        rx.idempotency_keys_at("/live").len(),
        n,
        "one idempotency key per event"
    );
    for id in ids.iter().step_by((n / 10).max(1)) {
        let ev = host.get_event(id).await;
        let d = testkit::delivery(&ev, "live");
        assert_eq!(d["status"], "delivered", "{d:#}");
        let key = d["idempotency_key"].as_str().expect("idempotency_key");
        assert_eq!(key_of[id.as_str()], BTreeSet::from([key]), "event {id}");
    }

    // Both versions ran attempts, and the per-version counts add up.
    let versions = live["versions"].as_object().expect("versions is an object");
    assert_eq!(versions.len(), 2, "two plugin versions ran attempts: {live:#}");
    let attempts: u64 = versions.values().filter_map(Value::as_u64).sum();
    assert_eq!(
        attempts, n as u64,
        "attempts per version add up to the deliveries: {live:#}"
    );

    // Each replacement served within a second of the rename; none went back to the old one.
    let budget = scaled(Duration::from_secs(1));
    let latencies: Vec<Duration> = switches.iter().map(|(_, renamed, first)| *first - *renamed).collect();
    let mut sorted = latencies.clone();
    sorted.sort();
    let summary = format!(
        "{n} events at {posted_rate:.0}/s, {REPLACEMENTS} replacements in {replacing_took:.1?}; \
         rename to first request of the new version: min {:?}, median {:?}, max {:?}",
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    eprintln!("{summary}");
    for (i, ((version, _, _), latency)) in switches.iter().zip(&latencies).enumerate() {
        assert!(
            *latency <= budget,
            "replacement #{} (to {version}) served its first request {latency:?} after the rename \
             (budget {budget:?}); all: {latencies:?}",
            i + 1
        );
    }
    for (i, (version, _, first)) in switches.iter().enumerate() {
        let until = switches.get(i + 1).map(|(_, renamed, _)| *renamed);
        let stale: Vec<&RecordedRequest> = reqs
            .iter()
            .filter(|r| r.received_at >= *first + SWITCH_GRACE && until.is_none_or(|u| r.received_at < u))
            .filter(|r| r.header(VERSION_HEADER) != Some(version))
            .collect();
        assert!(
            stale.is_empty(),
            "after replacement #{} (to {version}) the old version still served {} request(s) later than {SWITCH_GRACE:?} after the switch, e.g. {}",
            i + 1,
            stale.len(),
            stale[0]
        );
    }
    assert!(
        posted_rate >= 200.0,
        "the load was lighter than intended ({summary}); the test proves less than it claims"
    );
}

// ---------------------------------------------------------------------------
// 2. A new target dropped into a running host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_and_manifest_dropped_in_take_the_next_event() {
    let _shared = MACHINE.read().await;
    let (v1, v2) = markers().await;
    let rx = Receiver::start().await;
    let mut host = reloading_host();
    host.set_config("cache_dir", "compile-cache"); // so that the new plugin is compiled
    host.add_target_component("first", &marker(&rx, "/first", "first.wasm"), &v1);
    let dir = host.plugins_dir();
    host.start().await;
    let before = host.targets().await;
    assert!(find_named(&before, "fresh").is_none(), "{before:#}");

    // Manifest first: until its plugin arrives the target is not loaded, and says why.
    fs::write(
        dir.join("fresh.toml"),
        marker(&rx, "/fresh", "fresh.wasm").events(&["probe.*"]).to_toml(),
    )
    .expect("write fresh.toml");
    let waiting = host
        .wait_for_targets(default_timeout(), |ts| {
            find_named(ts, "fresh").is_some_and(|t| {
                t["last_reload_error"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("fresh.wasm"))
            })
        })
        .await;
    let fresh = target_entry(&waiting, "fresh");
    assert_eq!(
        fresh["loaded"], false,
        "a manifest without its plugin loads nothing: {fresh:#}"
    );

    // Then the plugin, by rename.
    host.deploy("fresh.wasm", &v2);
    let loaded = host
        .wait_for_targets(default_timeout(), |ts| {
            find_named(ts, "fresh").is_some_and(|t| t["loaded"] == true && t["last_reload_error"].is_null())
        })
        .await;
    let fresh = target_entry(&loaded, "fresh");
    assert_eq!(fresh["plugin"], "fresh.wasm", "{fresh:#}");
    assert_eq!(fresh["events"], json!(["probe.*"]), "{fresh:#}");
    assert_eq!(fresh["compiled_from"], "compile", "{fresh:#}");
    assert!(fresh["loaded_at"].is_string(), "{fresh:#}");
    let first = target_entry(&loaded, "first");
    assert_eq!(first["loaded"], true, "the other target is untouched: {first:#}");

    // The next event goes to it (and to the target that was there before).
    let id = host.enqueue("probe.sent", json!({"n": 1})).await;
    let event = host.wait_delivered(&id, &["first", "fresh"]).await;
    assert_eq!(event["deliveries"].as_array().map(Vec::len), Some(2), "{event:#}");
    let reqs = rx.requests_at("/fresh");
    assert_eq!(reqs.len(), 1, "{}", rx.describe());
    assert_eq!(reqs[0].event_id(), Some(id.as_str()), "{}", reqs[0]);
    assert_eq!(reqs[0].header(VERSION_HEADER), Some(V2), "{}", reqs[0]);
    let firsts = rx.requests_at("/first");
    assert_eq!(firsts.len(), 1, "{}", rx.describe());
    assert_eq!(firsts[0].header(VERSION_HEADER), Some(V1), "{}", firsts[0]);
}

// ---------------------------------------------------------------------------
// 3. Broken files keep the old version serving

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_keeps_the_old_version_serving_and_reports_why() {
    let _shared = MACHINE.read().await;
    let (v1, v2) = markers().await;
    let rx = Receiver::start().await;
    let mut host = reloading_host();
    host.add_target_component("steady", &marker(&rx, "/steady", "steady.wasm"), &v1);
    let dir = host.plugins_dir();
    host.start().await;

    let initial = host.targets().await;
    let steady = target_entry(&initial, "steady");
    assert!(steady["last_reload_error"].is_null(), "{steady:#}");
    let v1_hash = steady["hash"].as_str().expect("hash").to_owned();
    let r = deliver_one(&host, &rx, "/steady", "before").await;
    assert_eq!(r.header(VERSION_HEADER), Some(V1), "{r}");

    let broken: [(&str, &[u8], &str); 3] = [
        (
            "garbage",
            b"this is not a plugin, just text\n",
            "not a WebAssembly file",
        ),
        ("a core module", CORE_MODULE, "not a component"),
        (
            "a component of another world",
            OTHER_WORLD_COMPONENT,
            "does not implement world",
        ),
    ];
    for (what, bytes, reason) in broken {
        // Overwritten in place, as a careless deploy would.
        fs::write(dir.join("steady.wasm"), bytes).unwrap_or_else(|e| panic!("overwrite with {what}: {e}"));
        let ts = host
            .wait_for_targets(default_timeout(), |ts| {
                find_named(ts, "steady").is_some_and(|t| {
                    t["last_reload_error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(reason))
                })
            })
            .await;
        let steady = target_entry(&ts, "steady");
        let err = &steady["last_reload_error"];
        assert!(
            err["file"].as_str().is_some_and(|f| f.ends_with("steady.wasm")),
            "{what}: the error names the file: {steady:#}"
        );
        assert!(err["at"].is_string(), "{what}: {steady:#}");
        assert_eq!(
            steady["loaded"], true,
            "{what}: the old version stays loaded: {steady:#}"
        );
        assert_eq!(
            steady["hash"],
            v1_hash.as_str(),
            "{what}: the old version serves: {steady:#}"
        );
        let r = deliver_one(&host, &rx, "/steady", what).await;
        assert_eq!(
            r.header(VERSION_HEADER),
            Some(V1),
            "{what}: delivered by the old version: {r}"
        );
    }
    let ts = host.targets().await;
    let wrong_world = target_entry(&ts, "steady")["last_reload_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        wrong_world.contains("deliver"),
        "the wrong-world error should say what is missing: {wrong_world:?}"
    );

    // A good file arrives: it serves, and the error clears.
    host.deploy("steady.wasm", &v2);
    let ts = host
        .wait_for_targets(default_timeout(), |ts| {
            find_named(ts, "steady").is_some_and(|t| t["hash"] != v1_hash.as_str() && t["last_reload_error"].is_null())
        })
        .await;
    let steady = target_entry(&ts, "steady");
    assert_eq!(steady["loaded"], true, "{steady:#}");
    let r = deliver_one(&host, &rx, "/steady", "after").await;
    assert_eq!(r.header(VERSION_HEADER), Some(V2), "the good file serves: {r}");
    for t in ts.as_array().expect("array") {
        assert_eq!(count(t, "dead"), 0, "{t:#}");
    }
}

// ---------------------------------------------------------------------------
// 4. Removed targets pause their deliveries; putting them back resumes them

/// A host with target `gone` (marker v1, posting to `rx` at `/gone`) that retries quickly,
/// up to `concurrency` at once, and whose breaker never opens. Returns the host (started),
/// the manifest text and the component bytes, to put the target back later.
async fn host_with_gone_target(rx: &Receiver, concurrency: u32) -> (Host, String, Vec<u8>) {
    let v1 = artifacts::plugin_bytes("marker_v1.wasm").await;
    let mut host = reloading_host();
    let gone = marker(rx, "/gone", "gone.wasm")
        .events(&["order.*"])
        .concurrency(concurrency)
        .retry(1000, 50, 10_000)
        .breaker_failures(1_000_000);
    host.add_target_component("gone", &gone, &v1);
    host.start().await;
    (host, gone.to_toml(), v1)
}

/// Removes target `gone`: its plugin, then its manifest (the other order would briefly
/// leave a bare `gone.wasm` target without a `url`).
fn remove_gone(host: &Host) {
    let dir = host.plugins_dir();
    fs::remove_file(dir.join("gone.wasm")).expect("remove gone.wasm");
    fs::remove_file(dir.join("gone.toml")).expect("remove gone.toml");
}

/// Puts target `gone` back (manifest first, then the plugin by rename) with the receiver
/// healthy, and checks that every one of `ids` is delivered to it.
async fn put_back_and_deliver(host: &Host, rx: &Receiver, manifest: &str, component: &[u8], ids: &[String]) {
    rx.behave("/gone", Behavior::ok());
    let dir = host.plugins_dir();
    fs::write(dir.join("gone.toml"), manifest).expect("write gone.toml");
    host.deploy("gone.wasm", component);
    for id in ids {
        host.wait_delivered(id, &["gone"]).await;
    }
    let ts = host.targets().await;
    let gone = target_entry(&ts, "gone");
    assert_eq!(gone["loaded"], true, "{gone:#}");
    assert_eq!(count(gone, "delivered"), ids.len() as u64, "{gone:#}");
    for status in ["paused", "pending", "in_flight", "dead"] {
        assert_eq!(count(gone, status), 0, "{status}: {gone:#}");
    }
    let delivered: BTreeSet<String> = rx
        .requests_at("/gone")
        .iter()
        .filter(|r| r.reply == testkit::Reply::Status(200))
        .filter_map(|r| r.event_id().map(str::to_owned))
        .collect();
    assert_eq!(delivered, ids.iter().cloned().collect(), "{}", rx.describe());
}

/// Posts `n` events, returns their ids.
async fn post_orders(host: &Host, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(host.enqueue("order.created", json!({"i": i})).await);
    }
    ids
}

/// Waits until the receiver has seen a request for every one of `ids`.
async fn wait_all_attempted(rx: &Receiver, ids: &[String]) {
    rx.wait_until(default_timeout(), |reqs| {
        let seen: BTreeSet<&str> = reqs.iter().filter_map(|r| r.event_id()).collect();
        ids.iter().all(|id| seen.contains(id.as_str()))
    })
    .await
    .unwrap_or_else(|e| panic!("not every event was attempted: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_plugin_pauses_its_pending_deliveries_and_putting_it_back_delivers_them() {
    let _shared = MACHINE.read().await;
    const EVENTS: usize = 5;
    /// The receiver's `Retry-After`: the deliveries wait this long between attempts.
    const RETRY_AFTER_SECS: u64 = 2;
    let rx = Receiver::builder()
        .path("/gone", Behavior::ok().retry_after(503, RETRY_AFTER_SECS))
        .start()
        .await;
    let (host, manifest, v1) = host_with_gone_target(&rx, EVENTS as u32).await;
    let ids = post_orders(&host, EVENTS).await;

    // Every event failed once and waits for its retry: all pending, none in flight.
    wait_all_attempted(&rx, &ids).await;
    host.wait_for_targets(default_timeout(), |ts| {
        find_named(ts, "gone").is_some_and(|t| count(t, "pending") == EVENTS as u64 && count(t, "in_flight") == 0)
    })
    .await;
    let attempted = rx.count_at("/gone");
    let removed_at = tokio::time::Instant::now();
    remove_gone(&host);
    let ts = host
        .wait_for_targets(default_timeout(), |ts| {
            find_named(ts, "gone").is_some_and(|t| t["loaded"] == false && count(t, "paused") == EVENTS as u64)
        })
        .await;
    let gone = target_entry(&ts, "gone");
    for status in ["pending", "in_flight", "delivered", "dead"] {
        assert_eq!(count(gone, status), 0, "{status}: {gone:#}");
    }
    for id in &ids {
        let ev = host.get_event(id).await;
        assert_eq!(testkit::status_of(&ev, "gone"), Some("paused"), "{ev:#}");
    }
    // Paused means no attempts, also once the retries fall due: watch until then, and a bit.
    let quiet_until = removed_at + Duration::from_secs(RETRY_AFTER_SECS) + Duration::from_millis(1000);
    let quiet = quiet_until.saturating_duration_since(tokio::time::Instant::now());
    rx.expect_no_more_at("/gone", attempted, quiet).await;
    let ts = host.targets().await;
    assert_eq!(count(target_entry(&ts, "gone"), "paused"), EVENTS as u64, "{ts:#}");

    put_back_and_deliver(&host, &rx, &manifest, &v1, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_when_its_plugin_is_removed_is_paused_when_the_attempt_ends() {
    let _shared = MACHINE.read().await;
    const EVENTS: usize = 3;
    /// The receiver holds every request this long, then fails it.
    const HOLD: Duration = Duration::from_millis(1500);
    let rx = Receiver::builder()
        .path("/gone", Behavior::status(503).delay(HOLD))
        .start()
        .await;
    let (host, manifest, v1) = host_with_gone_target(&rx, EVENTS as u32).await;
    let ids = post_orders(&host, EVENTS).await;

    // All three attempts are running (the receiver holds them) when the target goes.
    wait_all_attempted(&rx, &ids).await;
    remove_gone(&host);
    let ts = host
        .wait_for_targets(default_timeout(), |ts| {
            find_named(ts, "gone").is_some_and(|t| t["loaded"] == false)
        })
        .await;
    let gone = target_entry(&ts, "gone");
    assert_eq!(
        count(gone, "in_flight"),
        EVENTS as u64,
        "the attempts are still running when the removal is seen (else this test proves nothing): {gone:#}"
    );

    // The attempts end (503): with the target gone, their deliveries wait as paused.
    let ts = host
        .wait_for_targets(HOLD + scaled(Duration::from_secs(10)), |ts| {
            find_named(ts, "gone").is_some_and(|t| count(t, "paused") == EVENTS as u64)
        })
        .await;
    let gone = target_entry(&ts, "gone");
    for status in ["pending", "in_flight", "delivered", "dead"] {
        assert_eq!(count(gone, status), 0, "{status}: {gone:#}");
    }

    put_back_and_deliver(&host, &rx, &manifest, &v1, &ids).await;
}

// ---------------------------------------------------------------------------
// 5. The compile cache across restarts

/// For each `target loaded` line of `log`: (target, source).
fn loads(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| l.contains("target loaded"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            Some((field("target=")?, field("source=")?))
        })
        .collect()
}

fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_unchanged_plugins_from_the_cache_and_rebuilds_a_corrupt_entry() {
    let _shared = MACHINE.read().await;
    let (v1, v2) = markers().await;
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.set_config("cache_dir", "compile-cache");
    // Five targets, five distinct plugin files.
    host.add_target("hook", &Target::webhook(&rx.url("/hook")))
        .add_target("noop", &Target::misbehave("ok"))
        .add_target_component("one", &marker(&rx, "/one", "one.wasm"), &v1)
        .add_target_component("two", &marker(&rx, "/two", "two.wasm"), &v2)
        .add_target_component("third", &marker(&rx, "/third", "third.wasm"), &variant(&v1, "third"));
    let names = ["hook", "noop", "one", "third", "two"];
    let cache_dir = host.config_path().parent().expect("config dir").join("compile-cache");

    async fn deliver_to_all(host: &Host, names: &[&str]) -> Value {
        let id = host.enqueue("cache.check", json!({"ok": true})).await;
        host.wait_delivered(&id, names).await
    }
    let by_name = |ts: &Value| -> BTreeMap<String, Value> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), target_entry(ts, n).clone()))
            .collect()
    };

    // First start: everything is compiled, and cached.
    host.start().await;
    let first = by_name(&host.targets().await);
    for (name, t) in &first {
        assert_eq!(t["compiled_from"], "compile", "{name}: {t:#}");
    }
    let hashes: BTreeSet<&str> = first.values().filter_map(|t| t["hash"].as_str()).collect();
    assert_eq!(hashes.len(), 5, "five distinct plugins: {first:#?}");
    let mut compiled: Vec<(String, String)> = loads(&host.stderr_this_run());
    compiled.sort();
    let expected: Vec<(String, String)> = names.iter().map(|n| ((*n).to_owned(), "compiled".to_owned())).collect();
    assert_eq!(compiled, expected, "first start compiles each target once");
    deliver_to_all(&host, &names).await;
    assert_eq!(cache_files(&cache_dir).len(), 5, "one cache entry per plugin");

    // Restart with nothing changed: no recompilation.
    host.restart().await;
    let log = host.stderr_this_run();
    let mut second = loads(&log);
    second.sort();
    let expected: Vec<(String, String)> = names.iter().map(|n| ((*n).to_owned(), "cache".to_owned())).collect();
    assert_eq!(second, expected, "a restart loads every target from the cache\n{log}");
    assert!(!log.contains("source=\"compiled\""), "{log}");
    let restarted = by_name(&host.targets().await);
    for (name, t) in &restarted {
        assert_eq!(t["compiled_from"], "cache", "{name}: {t:#}");
        assert_eq!(t["hash"], first[name]["hash"], "{name}: same plugin");
    }
    deliver_to_all(&host, &names).await;

    // Corrupt the entry of target `one` (flip bytes in the middle), and restart.
    host.stop().await;
    let one_hash = first["one"]["hash"].as_str().expect("hash").to_owned();
    let entries = cache_files(&cache_dir);
    let entry = entries
        .iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&one_hash))
        })
        .unwrap_or_else(|| panic!("no cache entry named after {one_hash} in {entries:?}"))
        .clone();
    let mut bytes = fs::read(&entry).expect("read cache entry");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xa5;
    }
    fs::write(&entry, &bytes).expect("corrupt cache entry");

    host.start().await;
    let log = host.stderr_this_run();
    assert!(
        log.lines().any(
            |l| l.contains("compile cache entry is corrupt or not outboxd's own; recompiling") && l.contains(&one_hash)
        ),
        "the corrupt entry is reported, naming its file\n{log}"
    );
    let mut third = loads(&log);
    third.sort();
    let expected: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            (
                (*n).to_owned(),
                if *n == "one" { "compiled" } else { "cache" }.to_owned(),
            )
        })
        .collect();
    assert_eq!(third, expected, "only the corrupt entry is recompiled\n{log}");
    let after = by_name(&host.targets().await);
    for (name, t) in &after {
        let from = if name == "one" { "compile" } else { "cache" };
        assert_eq!(t["compiled_from"], from, "{name}: {t:#}");
        assert_eq!(t["loaded"], true, "{name}: {t:#}");
    }
    let event = deliver_to_all(&host, &names).await;
    let one_id = event["id"].as_str().expect("id");
    let r = rx
        .requests_at("/one")
        .into_iter()
        .find(|r| r.event_id() == Some(one_id))
        .unwrap_or_else(|| panic!("no request at /one for {one_id}:\n{}", rx.describe()));
    assert_eq!(r.header(VERSION_HEADER), Some(V1), "{r}");

    // The rebuilt entry is sound: the next restart takes it from the cache again.
    let rebuilt = fs::read(&entry).expect("the entry was rewritten");
    assert_ne!(rebuilt, bytes, "the corrupt entry was replaced");
    host.restart().await;
    let fourth = by_name(&host.targets().await);
    for (name, t) in &fourth {
        assert_eq!(t["compiled_from"], "cache", "{name}: {t:#}");
    }
    assert!(
        !host.stderr_this_run().contains("corrupt"),
        "{}",
        host.stderr_this_run()
    );
    deliver_to_all(&host, &names).await;
}
