//! A plugin author outside this repository, with only the `outboxd` binary: `plugin new` for
//! Rust, JavaScript and Python in a temporary directory, the project's build script, its
//! native unit tests, `plugin check`, and `plugin run` against a local receiver, which sees
//! the event; the second run loads the component from the compile cache. And errors you can
//! read: a Rust panic, a JavaScript exception and a Python exception, all saying `boom 42`,
//! show it in `plugin run` and in the delivery's `last_error` under `serve`.
//!
//! The scaffold tests need cargo (with the wasm32-wasip2 target, added by the Rust project's
//! build script through rustup), node + npm and python3 3.11+, and network access to
//! crates.io, npm and PyPI on the first run (the projects install their pinned toolchains).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use testkit::{Behavior, Host, Receiver, Target, artifacts, delivery};

/// Runs `program args` in `dir` with the compile cache under `xdg/` (the default location,
/// `$XDG_CACHE_HOME/outboxd`), off the async threads.
async fn run_in(dir: &Path, xdg: &Path, program: PathBuf, args: Vec<String>) -> Output {
    let (dir, xdg) = (dir.to_owned(), xdg.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .current_dir(&dir)
            .env("XDG_CACHE_HOME", &xdg)
            .env_remove("OUTBOXD_CACHE_DIR");
        // The Rust projects share one cargo target directory, so that a second test run does
        // not compile wit-bindgen again. The build script honours CARGO_TARGET_DIR as cargo does.
        cmd.env("CARGO_TARGET_DIR", artifacts::target_dir().join("plugin-authors"));
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {} in {}: {e}", program.display(), dir.display()))
    })
    .await
    .expect("join")
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn outboxd(dir: &Path, xdg: &Path, args: &[&str]) -> Output {
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    run_in(dir, xdg, artifacts::outboxd_bin().to_owned(), args).await
}

/// `plugin new`, build, native test, `plugin check`, and two `plugin run`s delivering to a
/// receiver, in a fresh directory outside the checkout.
async fn scaffold_round_trip(lang: &str, native_test: &[&str], test_passed: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let (dir, xdg) = (work.path().to_owned(), work.path().join("xdg"));
    let name = format!("demo-{lang}");

    let out = outboxd(&dir, &xdg, &["plugin", "new", &name, "--lang", lang]).await;
    assert!(out.status.success(), "{}", show("plugin new", &out));
    assert!(stdout(&out).contains("next:"), "{}", show("plugin new", &out));
    let project = dir.join(&name);

    let out = run_in(&project, &xdg, "./build.sh".into(), vec![]).await;
    assert!(out.status.success(), "{}", show("./build.sh", &out));
    let wasm = format!("dist/{name}.wasm");
    assert!(project.join(&wasm).is_file(), "{}", show("./build.sh", &out));

    let (program, args) = native_test.split_first().expect("a command");
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    let out = run_in(&project, &xdg, (*program).into(), args).await;
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && all.contains(test_passed),
        "{}",
        show("native test", &out)
    );

    let out = outboxd(&project, &xdg, &["plugin", "check", &wasm]).await;
    assert!(out.status.success(), "{}", show("plugin check", &out));
    assert!(
        stdout(&out).contains("valid plugin") && stdout(&out).contains("world outboxd:target/target@0.1.0"),
        "{}",
        show("plugin check", &out)
    );
    let cached = std::fs::read_dir(xdg.join("outboxd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        cached, 1,
        "check stored the compiled component in $XDG_CACHE_HOME/outboxd"
    );

    let rx = Receiver::builder().path("/hook", Behavior::ok()).start().await;
    let url = format!("url={}", rx.url("/hook"));
    let authority = rx.authority();
    let event = json!({"type": "order.created", "payload": {"order_id": 7, "total": "9.90"}}).to_string();
    for run in 1..=2 {
        let args = [
            "plugin",
            "run",
            &wasm,
            "--event",
            &event,
            "--config",
            &url,
            "--allow-host",
            &authority,
        ];
        let out = outboxd(&project, &xdg, &args).await;
        let text = show(&format!("plugin run #{run}"), &out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        let stdout = stdout(&out);
        assert!(stdout.contains("outcome: delivered"), "{text}");
        assert!(
            stdout.contains("loaded from the compile cache"),
            "run {run} used the cache: {text}"
        );
        assert!(!stdout.contains("imports:"), "imports only with --verbose: {text}");
        assert!(
            // The transcript names the origin only: a URL's path may hold a secret.
            stdout.contains(&format!("http  POST http://{authority} -> 200")),
            "{text}"
        );
        let reqs = rx.expect_requests("/hook", run).await;
        let req = &reqs[run - 1];
        assert_eq!(req.json(), json!({"order_id": 7, "total": "9.90"}), "{text}");
        assert!(
            req.idempotency_key().is_some_and(|k| k.ends_with(&format!(".{name}"))),
            "{:?}",
            req.headers
        );
        assert_eq!(req.header("x-event-type"), Some("order.created"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_plugin_builds_tests_and_delivers() {
    scaffold_round_trip("rust", &["cargo", "test"], "test result: ok. 3 passed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_javascript_plugin_builds_tests_and_delivers() {
    scaffold_round_trip("js", &["npm", "test"], "# pass 3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_python_plugin_builds_tests_and_delivers() {
    scaffold_round_trip("python", &["python3", "-m", "unittest"], "Ran 3 tests").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wit_comes_from_the_binary() {
    let work = tempfile::tempdir().expect("tempdir");
    let xdg = work.path().join("xdg");
    let out = outboxd(work.path(), &xdg, &["plugin", "wit"]).await;
    assert!(out.status.success(), "{}", show("plugin wit", &out));
    let repo_wit = std::fs::read_to_string(artifacts::workspace_root().join("wit/target.wit")).unwrap();
    assert_eq!(stdout(&out), repo_wit);
    let out = outboxd(work.path(), &xdg, &["plugin", "wit", "--out", "contract"]).await;
    assert!(out.status.success(), "{}", show("plugin wit --out", &out));
    assert_eq!(
        std::fs::read_to_string(work.path().join("contract/target.wit")).unwrap(),
        repo_wit
    );
}

/// The three fixtures that fail with "boom 42", as (target name, component path, extra config).
async fn boom_fixtures() -> Vec<(&'static str, PathBuf, Vec<(&'static str, &'static str)>)> {
    let polyglot = artifacts::polyglot_dir().await;
    vec![
        (
            "boom-rust",
            artifacts::plugin("misbehave.wasm"),
            vec![("mode", "trap"), ("message", "boom 42")],
        ),
        ("boom-js", polyglot.join("boom-js.wasm"), vec![]),
        ("boom-py", polyglot.join("boom-py.wasm"), vec![]),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_failure_message_reaches_plugin_run_and_last_error() {
    let fixtures = boom_fixtures().await;
    let work = tempfile::tempdir().expect("tempdir");
    let xdg = work.path().join("xdg");
    // The compile cache of the test hosts: `serve` below then loads what `plugin run` compiled.
    let cache = artifacts::target_dir().join("outboxd-test-cache").display().to_string();
    for (name, file, config) in &fixtures {
        let file = file.display().to_string();
        let mut args = vec![
            "plugin",
            "run",
            "--cache-dir",
            &cache,
            &file,
            "--event",
            r#"{"type":"order.created","payload":{}}"#,
        ];
        let config: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for c in &config {
            args.extend(["--config", c]);
        }
        let out = outboxd(work.path(), &xdg, &args).await;
        let text = show(&format!("plugin run {name}"), &out);
        assert_eq!(out.status.code(), Some(3), "a trap is retryable: {text}");
        let stdout = stdout(&out);
        let outcome = stdout.lines().find(|l| l.starts_with("outcome: ")).unwrap_or_default();
        assert!(
            outcome.contains("plugin trapped") && outcome.contains("boom 42"),
            "the reason carries the message: {text}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("stderr ") && l.contains("boom 42")),
            "the guest's stderr is shown: {text}"
        );
    }

    let mut host = Host::new();
    for (name, file, config) in &fixtures {
        let component = format!("{name}.wasm");
        std::fs::copy(file, host.plugins_dir().join(&component)).expect("copy the fixture");
        let mut target = Target::new(&component).retry(1, 50, 100);
        for (key, value) in config {
            target = target.config(key, *value);
        }
        host.add_target_raw(name, "", &target.to_toml());
    }
    host.start().await;
    let names: Vec<&str> = fixtures.iter().map(|(n, _, _)| *n).collect();
    let id = host.enqueue("order.created", json!({"order_id": 42})).await;
    let ev = host.wait_settled(&id, &names).await;
    for name in names {
        let d = delivery(&ev, name);
        assert_eq!(d["status"], "dead", "{d:#}");
        let error = d["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("plugin trapped") && error.contains("boom 42"),
            "{name}: last_error explains the trap: {d:#}"
        );
    }
}
