//! The plugin author's tools against real components: `outboxd plugin check` gives the right
//! verdict and exit code for each adapter (Rust, JavaScript, Python, batched), for a file that
//! is not wasm, a core module and a component of another world; `outboxd plugin run` prints
//! the plugin's logs, its requests and the outcome, with exit codes 0/2/3, and shows a denial
//! for a host that is not allowed.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;
use testkit::{Behavior, Receiver, artifacts};

async fn outboxd(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(artifacts::outboxd_bin())
            .args(&args)
            // The compile cache the test hosts share, not the user's.
            .env("OUTBOXD_CACHE_DIR", artifacts::target_dir().join("outboxd-test-cache"))
            .output()
            .expect("run outboxd")
    })
    .await
    .expect("join")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn check(file: &Path) -> (i32, String, String) {
    let out = outboxd(vec!["plugin".into(), "check".into(), file.display().to_string()]).await;
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

async fn run(file: &Path, extra: &[String]) -> (i32, String, String) {
    let mut args = vec![
        "plugin".into(),
        "run".into(),
        file.display().to_string(),
        "--event".into(),
        json!({"type": "order.created", "payload": {"id": 7, "customer": {"email": "ada@example.com", "name": "Ada"}}})
            .to_string(),
    ];
    args.extend_from_slice(extra);
    let out = outboxd(args).await;
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

async fn adapters() -> Vec<(PathBuf, &'static str, &'static str)> {
    let polyglot = artifacts::polyglot_dir().await;
    // The Rust SDK builds against the contract's newest version (0.1.1); the JavaScript, Python
    // and batch adapters against 0.1.0, which the host still loads.
    vec![
        (artifacts::plugin("webhook.wasm"), "target", "0.1.1"),
        (polyglot.join("crm-js.wasm"), "target", "0.1.0"),
        (polyglot.join("analytics-py.wasm"), "target", "0.1.0"),
        (artifacts::plugin("webhook_batch.wasm"), "batch-target", "0.1.0"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn check_accepts_every_adapter_and_names_its_world() {
    for (file, world, version) in adapters().await {
        let (code, stdout, stderr) = check(&file).await;
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
        assert!(stdout.contains("valid plugin"), "{stdout}");
        assert!(
            stdout.contains(&format!("world outboxd:target/{world}@{version}")),
            "{}: {stdout}",
            file.display()
        );
        assert!(
            stdout.contains(&format!("outboxd:target/http@{version}")),
            "imports are listed: {stdout}"
        );
        assert!(
            stdout.contains("KiB")
                && (stdout.contains("compiled in") || stdout.contains("loaded from the compile cache in")),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_what_is_not_a_plugin_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "this is not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (text_file, "not a WebAssembly file"),
        (core, "core WebAssembly module, not a component"),
        (artifacts::plugin("not-a-plugin.wasm"), "does not implement world"),
    ];
    for (file, reason) in cases {
        let (code, stdout, stderr) = check(&file).await;
        assert_eq!(code, 1, "{}: {stdout}{stderr}", file.display());
        assert!(
            stderr.contains("is not a valid plugin") && stderr.contains(reason),
            "{}: {stderr}",
            file.display()
        );
        assert!(!stdout.contains("valid plugin"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_prints_logs_requests_and_outcome_with_exit_codes() {
    let rx = Receiver::builder()
        .path("/ok", Behavior::ok())
        .path("/flaky", Behavior::status(503))
        .path("/reject", Behavior::status(400))
        .start()
        .await;
    let addr = rx
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let allow = |path: &str| {
        vec![
            "--config".to_string(),
            format!("url={}", rx.url(path)),
            "--allow-host".into(),
            addr.clone(),
        ]
    };
    let webhook = artifacts::plugin("webhook.wasm");

    let (code, stdout, stderr) = run(&webhook, &allow("/ok")).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The webhook logs a success at debug: `plugin run` shows every level.
    assert!(
        stdout.contains("log   debug webhook: event") && stdout.contains(": delivered"),
        "the plugin's log line is shown: {stdout}"
    );
    assert!(
        // The transcript keeps the URL's scheme, host and port only (a path may be a secret).
        stdout.contains(&format!("http  POST http://{} -> 200", rx.authority())),
        "{stdout}"
    );
    assert!(stdout.contains("outcome: delivered"), "{stdout}");
    assert_eq!(rx.count_at("/ok"), 1);

    let (code, stdout, _) = run(&webhook, &allow("/flaky")).await;
    assert_eq!(code, 3, "a 503 is retryable: {stdout}");
    assert!(
        stdout.contains("-> 503") && stdout.contains("outcome: retry"),
        "{stdout}"
    );

    let (code, stdout, _) = run(&webhook, &allow("/reject")).await;
    assert_eq!(code, 4, "a 400 is permanent: {stdout}");
    assert!(stdout.contains("outcome: permanent failure"), "{stdout}");

    // Without --allow-host the request never leaves: the transcript shows the denial.
    let before = rx.total();
    let (code, stdout, _) = run(&webhook, &["--config".into(), format!("url={}", rx.url("/ok"))]).await;
    assert_eq!(code, 4, "{stdout}");
    assert!(
        stdout.contains(&format!("http  POST http://{} -> denied", rx.authority())),
        "{stdout}"
    );
    assert!(stdout.contains("not in allowed_hosts"), "{stdout}");
    assert_eq!(rx.total(), before, "nothing reached the receiver");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_works_for_the_javascript_and_python_adapters() {
    let rx = Receiver::builder().start().await;
    let addr = rx
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let polyglot = artifacts::polyglot_dir().await;
    for (file, path) in [("crm-js.wasm", "/contacts"), ("analytics-py.wasm", "/track")] {
        let base = rx.url("/lang").trim_end_matches('/').to_owned();
        let args = vec![
            "--config".to_string(),
            format!("url={base}"),
            "--allow-host".into(),
            addr.clone(),
        ];
        let (code, stdout, stderr) = run(&polyglot.join(file), &args).await;
        assert_eq!(code, 0, "{file}: {stdout}{stderr}");
        assert!(stdout.contains("log   info"), "{file}: {stdout}");
        assert!(
            stdout.contains(&format!("http  POST http://{addr} -> 200")) && rx.count_at(&format!("/lang{path}")) > 0,
            "{file}: {stdout}"
        );
        assert!(stdout.contains("outcome: delivered"), "{file}: {stdout}");
        let (code, stdout, _) = run(&polyglot.join(file), &["--config".into(), format!("url={base}")]).await;
        assert_eq!(code, 4, "{file}: {stdout}");
        assert!(stdout.contains("denied"), "{file}: {stdout}");
    }
}
