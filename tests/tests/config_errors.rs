//! Configuration mistakes are reported clearly: the file and the offending key are named.

use std::time::Duration;

use testkit::{Host, StartError, scaled};

/// Start a host whose manifest `bad.toml` has a mistake; outboxd must either
/// refuse to start or keep running and log the problem, naming the file and key.
async fn assert_manifest_error_reported(manifest: &str, key: &str) {
    let mut host = Host::new();
    host.add_target_raw("bad", "webhook.wasm", manifest);
    match host.try_start().await {
        Err(StartError::Exited { status, stderr, .. }) => {
            assert!(!status.success(), "exited with success despite a bad manifest");
            assert!(
                stderr.contains("bad.toml") && stderr.contains(key),
                "stderr should name bad.toml and `{key}`:\n{stderr}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => {
            if let Err(stderr) = host
                .wait_for_stderr(&["bad.toml", key], scaled(Duration::from_secs(10)))
                .await
            {
                panic!("outboxd started but did not report bad.toml and `{key}`:\n{stderr}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_a_manifest_is_reported_with_file_and_key() {
    assert_manifest_error_reported(
        "plugin = \"webhook.wasm\"\n\
         events = [\"order.*\"]\n\
         max_retries_typo = 3\n\
         \n\
         [config]\n\
         url = \"http://127.0.0.1:9/bad\"\n",
        "max_retries_typo",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_a_manifest_retry_table_is_reported() {
    assert_manifest_error_reported(
        "plugin = \"webhook.wasm\"\n\
         events = [\"order.*\"]\n\
         \n\
         [retry]\n\
         max_attemps = 3\n\
         \n\
         [config]\n\
         url = \"http://127.0.0.1:9/bad\"\n",
        "max_attemps",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_outboxd_toml_fails_start_naming_file_and_key() {
    let mut host = Host::new();
    host.append_config_raw("worker_threads_typo = 8");
    match host.try_start().await {
        Err(StartError::Exited { status, stderr, .. }) => {
            assert!(!status.success(), "exited with success despite a bad config");
            assert!(
                stderr.contains("outboxd.toml") && stderr.contains("worker_threads_typo"),
                "stderr should name outboxd.toml and `worker_threads_typo`:\n{stderr}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(addr) => panic!("outboxd started on {addr} despite an unknown key in outboxd.toml"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_does_not_compile_is_reported_with_file_and_key() {
    assert_manifest_error_reported(
        "plugin = \"webhook.wasm\"\n\
         events = [\"order.*\"]\n\
         filter = \"payload.total >\"\n\
         \n\
         [config]\n\
         url = \"http://127.0.0.1:9/bad\"\n",
        "`filter` does not compile",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_lists_every_error_at_once_and_exits_1() {
    let mut host = Host::new();
    host.add_target_raw(
        "one",
        "webhook.wasm",
        "plugin = \"webhook.wasm\"\nevnts = [\"order.*\"]\n",
    );
    host.add_target_raw(
        "two",
        "webhook.wasm",
        "plugin = \"webhook.wasm\"\ntimeout_ms = \"soon\"\n",
    );
    host.add_target_raw(
        "three",
        "webhook.wasm",
        "plugin = \"webhook.wasm\"\n[config]\nsecret = { env = \"OUTBOXD_TEST_SURELY_UNSET_VARIABLE\" }\n",
    );
    // And a plugin file that is no component: the check compiles plugins as `serve` does.
    host.add_target_raw("four", "", "plugin = \"junk.wasm\"\n");
    std::fs::write(host.plugins_dir().join("junk.wasm"), b"not a wasm component").expect("write junk.wasm");
    let out = host.run_cli(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    for (file, text) in [
        ("one.toml", "evnts"),
        ("two.toml", "timeout_ms"),
        ("three.toml", "OUTBOXD_TEST_SURELY_UNSET_VARIABLE"),
        ("junk.wasm", ""),
    ] {
        // One `error: ` paragraph per error, its further lines indented.
        assert!(
            out.stdout
                .split("\nerror: ")
                .any(|e| e.contains(file) && e.contains(text)),
            "{file} `{text}` is not listed:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("4 errors found"), "{}", out.stdout);
    let starts = out.stdout.lines().filter(|l| l.starts_with("error: ")).count();
    assert_eq!(starts, 4, "one paragraph per error:\n{}", out.stdout);

    // Fixed: exit 0 and a summary.
    for name in ["one", "two", "three", "four"] {
        host.remove_target(name);
    }
    std::fs::remove_file(host.plugins_dir().join("junk.wasm")).expect("remove junk.wasm");
    host.add_target_raw(
        "crm",
        "webhook.wasm",
        "plugin = \"webhook.wasm\"\nevents = [\"order.*\"]\n[config]\nurl = \"http://127.0.0.1:9/crm\"\n",
    );
    let out = host.run_cli(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.starts_with("ok: ") && out.stdout.contains("1 target") && out.stdout.contains("(crm)"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reports_a_broken_outboxd_toml() {
    let mut host = Host::new();
    let mut from_env = toml::Table::new();
    from_env.insert("env".into(), "OUTBOXD_TEST_SURELY_UNSET_VARIABLE".into());
    host.set_config("database", from_env);
    let out = host.run_cli(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.contains("outboxd.toml")
            && out
                .stdout
                .contains("`database`: environment variable `OUTBOXD_TEST_SURELY_UNSET_VARIABLE` is not set"),
        "{}",
        out.stdout
    );
}
