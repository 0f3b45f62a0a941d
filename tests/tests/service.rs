//! outboxd under a service manager (issue 26): the systemd notify protocol, spoken to a
//! `NOTIFY_SOCKET` datagram socket the test listens on; secrets read from the environment
//! rather than the files; `SIGHUP` reloading `outboxd.toml`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use testkit::{Host, Receiver, Target, scaled, verify_standard_webhook};
use tokio::net::UnixDatagram;

/// The next datagram, or a panic naming what was awaited.
async fn next(sock: &UnixDatagram, what: &str) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(scaled(Duration::from_secs(15)), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no notification"),
    }
}

/// Datagrams until one contains `needle`; returns it.
async fn until(sock: &UnixDatagram, needle: &str) -> String {
    loop {
        let msg = next(sock, needle).await;
        if msg.lines().any(|l| l == needle || l.starts_with(needle)) {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_the_api_listens_then_the_watchdog_and_stopping() {
    let mut host = Host::new();
    let path = host.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    host.set_env("NOTIFY_SOCKET", &path.display().to_string());
    host.set_env("WATCHDOG_USEC", "400000");
    host.start().await;

    let ready = until(&sock, "READY=1").await;
    assert!(ready.lines().any(|l| l.starts_with("STATUS=listening on ")), "{ready}");
    // READY=1 means what it says: the API answers and the store takes writes.
    let (status, body) = host.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Half of WATCHDOG_USEC apart: two within a few intervals.
    until(&sock, "WATCHDOG=1").await;
    until(&sock, "WATCHDOG=1").await;

    let exit = host.sigterm().await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    until(&sock, "STOPPING=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_meant_for_another_process_is_not_fed() {
    let mut host = Host::new();
    let path = host.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    host.set_env("NOTIFY_SOCKET", &path.display().to_string());
    host.set_env("WATCHDOG_USEC", "200000");
    host.set_env("WATCHDOG_PID", "1");
    host.start().await;
    until(&sock, "READY=1").await;
    // Several would-be intervals: nothing but the stop.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let exit = host.sigterm().await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    let msg = next(&sock, "STOPPING=1").await;
    assert!(msg.contains("STOPPING=1"), "only the stop after READY, got {msg:?}");
}

/// `packaging/outboxd.service` as systemd reads it (with this build's binary in `ExecStart`;
/// the man page is not installed here). Needs `systemd-analyze` (Debian's `systemd`); without
/// it the test says so and checks nothing.
#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let root = testkit::artifacts::workspace_root();
    let unit = std::fs::read_to_string(root.join("packaging/outboxd.service")).expect("read the unit");
    assert!(unit.contains("Type=notify"), "{unit}");
    let bin = testkit::artifacts::outboxd_bin().display().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("outboxd.service");
    std::fs::write(&copy, unit.replace("/usr/bin/outboxd", &bin)).expect("write the copy");
    let out = match std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("systemd-analyze is not installed ({e}): the unit file is not checked");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{out:?}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let mut host = Host::new();
    host.set_config("log_format", "json");
    host.start().await;
    let exit = host.sigterm().await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    let stderr = host.stderr_this_run();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("=====")).collect();
    assert!(!lines.is_empty(), "no log lines");
    let mut up = false;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        up |= v["fields"]["message"] == "outboxd is up";
    }
    assert!(up, "the start-up line is among them:\n{stderr}");
}

/// A Standard Webhooks secret that only the environment of `serve` holds.
const ENV_SECRET: &str = "whsec_c2VjcmV0LWZyb20tdGhlLWVudmlyb25tZW50LW9ubHk=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_secret_from_the_environment_signs_and_is_shown_nowhere() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    let mut from_env = toml::Table::new();
    from_env.insert("env".into(), "OUTBOXD_TEST_WEBHOOK_SECRET".into());
    host.add_target(
        "crm",
        &Target::webhook(&rx.url("/crm"))
            .events(&["order.*"])
            .config("secret", from_env),
    );
    host.set_env("OUTBOXD_TEST_WEBHOOK_SECRET", ENV_SECRET);
    // The most the log says: still no secret in it.
    host.set_config("log_level", "debug");
    host.start().await;
    let manifest = std::fs::read_to_string(host.plugins_dir().join("crm.toml")).expect("read crm.toml");
    let key = &ENV_SECRET["whsec_".len()..];
    assert!(!manifest.contains(key), "{manifest}");

    let id = host.enqueue("order.created", json!({"order_id": 7})).await;
    host.wait_delivered(&id, &["crm"]).await;
    let reqs = rx.requests_at("/crm");
    assert_eq!(reqs.len(), 1, "{}", rx.describe());
    assert!(
        verify_standard_webhook(ENV_SECRET, &reqs[0].headers, &reqs[0].body),
        "signed with the secret from the environment: {}",
        reqs[0]
    );

    // A manifest naming a variable that is not set: a load error naming the file and the key
    // (hot reload re-reads manifests and their secrets).
    host.add_target_raw(
        "broken",
        "",
        "plugin = \"webhook.wasm\"\n[config]\nsecret = { env = \"OUTBOXD_TEST_SURELY_UNSET_VARIABLE\" }\n",
    );
    host.wait_for_stderr(
        &[
            "broken.toml",
            "`config.secret`: environment variable `OUTBOXD_TEST_SURELY_UNSET_VARIABLE` is not set",
        ],
        scaled(Duration::from_secs(15)),
    )
    .await
    .unwrap_or_else(|stderr| panic!("the missing variable is not reported:\n{stderr}"));

    let event_path = format!("/v1/events/{id}");
    for path in [
        "/v1/targets",
        event_path.as_str(),
        "/v1/deliveries/failed",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
    ] {
        let (_, body) = host.get_json(path).await;
        let text = body.to_string();
        assert!(!text.contains(key), "GET {path} shows the secret: {text}");
    }
    let targets = host.targets().await.to_string();
    assert!(targets.contains("broken.toml"), "the error is listed: {targets}");
    host.stop().await;
    let log = host.stderr();
    assert!(log.contains("DEBUG"), "the log ran at debug level:\n{log}");
    assert!(!log.contains(key), "the log shows the secret:\n{log}");
}

const OLD_TOKEN: &str = "old-token-0123456789";
const NEW_TOKEN: &str = "new-token-0123456789";
const STEADY_TOKEN: &str = "steady-token-0123456789";

/// `GET /v1/targets` with `token`: the status.
async fn status_with(host: &Host, token: &str) -> u16 {
    reqwest::Client::new()
        .get(host.url("/v1/targets"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/targets")
        .status()
        .as_u16()
}

/// Whether a debug line of a delivery (`delivered … took_ms=…`) of `event` is in `log`.
fn debug_delivery_logged(log: &str, event: &str) -> bool {
    log.lines()
        .any(|l| l.contains("DEBUG") && l.contains("took_ms") && l.contains(event))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_log_level_and_the_tokens_without_failing_a_request() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("crm", &Target::webhook(&rx.url("/crm")).events(&["order.*"]));
    host.set_config("log_level", "info");
    host.add_api_token("old", OLD_TOKEN, &["admin"])
        .add_api_token("steady", STEADY_TOKEN, &["admin"]);
    host.set_api_token(STEADY_TOKEN);
    host.start().await;
    assert_eq!(status_with(&host, OLD_TOKEN).await, 200);
    assert_eq!(status_with(&host, NEW_TOKEN).await, 401);
    let before = host.enqueue("order.created", json!({"n": 0})).await;
    host.wait_delivered(&before, &["crm"]).await;
    assert!(
        !debug_delivery_logged(&host.stderr_this_run(), &before),
        "info level at first"
    );

    // A client posting events in a loop, with a token both configurations hold.
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, posted, url) = (Arc::clone(&stop), Arc::clone(&posted), host.url("/v1/events"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let n = posted.load(Ordering::Relaxed);
                let answer = http
                    .post(&url)
                    .bearer_auth(STEADY_TOKEN)
                    .json(&json!({"type": "tick.posted", "payload": {"n": n}}))
                    .send()
                    .await
                    .map_err(|e| format!("request {n}: {e}"))?;
                let status = answer.status().as_u16();
                if status != 202 {
                    return Err(format!(
                        "request {n}: {status} {}",
                        answer.text().await.unwrap_or_default()
                    ));
                }
                posted.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    host.clear_api_tokens()
        .add_api_token("new", NEW_TOKEN, &["admin"])
        .add_api_token("steady", STEADY_TOKEN, &["admin"]);
    host.set_config("log_level", "debug");
    host.set_config("max_in_flight", 3);
    host.write_config();
    host.sighup();
    let log = host
        .wait_for_stderr(&["outboxd.toml reloaded"], scaled(Duration::from_secs(15)))
        .await
        .unwrap_or_else(|stderr| panic!("no reload:\n{stderr}"));
    assert!(
        log.contains("keep their running values until a restart") && log.contains("max_in_flight"),
        "a changed key that cannot change live is reported as kept:\n{log}"
    );
    assert_eq!(status_with(&host, OLD_TOKEN).await, 401, "the removed token is refused");
    assert_eq!(status_with(&host, NEW_TOKEN).await, 200, "the added token is accepted");
    let after = host.enqueue("order.created", json!({"n": 1})).await;
    host.wait_delivered(&after, &["crm"]).await;
    host.wait_for_stderr(&["took_ms", &after], scaled(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|stderr| panic!("no debug line after the reload:\n{stderr}"));
    assert!(debug_delivery_logged(&host.stderr_this_run(), &after));

    // A broken file changes nothing, and says why.
    host.append_config_raw("no_such_key = 1");
    host.write_config();
    host.sighup();
    host.wait_for_stderr(
        &["outboxd.toml not reloaded", "no_such_key"],
        scaled(Duration::from_secs(15)),
    )
    .await
    .unwrap_or_else(|stderr| panic!("the broken file is not reported:\n{stderr}"));
    assert_eq!(status_with(&host, NEW_TOKEN).await, 200, "the running tokens are kept");
    assert_eq!(status_with(&host, OLD_TOKEN).await, 401);

    let before_stop = posted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    client
        .await
        .expect("the client task")
        .expect("no request failed across the reloads");
    assert!(
        before_stop > 0 && posted.load(Ordering::Relaxed) > 0,
        "the client posted"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_read_from_the_credentials_directory_is_the_one_accepted() {
    const TOKEN: &str = "file-token-0123456789";
    let mut host = Host::new();
    // systemd's LoadCredential= directory: a relative `file` is looked up there first.
    let creds = host.dir().join("credentials");
    std::fs::create_dir_all(&creds).expect("create the credentials directory");
    std::fs::write(creds.join("ingest-token"), format!("{TOKEN}\n")).expect("write the credential");
    let mut from_file = toml::Table::new();
    from_file.insert("file".into(), "ingest-token".into());
    let mut entry = toml::Table::new();
    entry.insert("name".into(), "ops".into());
    entry.insert("scopes".into(), vec!["admin"].into());
    entry.insert("token".into(), from_file.into());
    host.set_api_config("tokens", toml::Value::Array(vec![entry.into()]));
    host.set_env("CREDENTIALS_DIRECTORY", &creds.display().to_string());
    host.set_api_token(TOKEN);
    host.start().await;
    assert_eq!(
        status_with(&host, TOKEN).await,
        200,
        "the file's content, less its newline"
    );
    assert_eq!(status_with(&host, "ingest-token").await, 401);
    let config = std::fs::read_to_string(host.config_path()).expect("read outboxd.toml");
    assert!(!config.contains(TOKEN), "{config}");
    host.stop().await;
    assert!(!host.stderr().contains(TOKEN), "{}", host.stderr());
}
