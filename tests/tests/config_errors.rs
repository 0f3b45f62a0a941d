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
