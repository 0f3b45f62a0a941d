//! outboxd under a service manager (issue 26): the systemd notify protocol, spoken to a
//! `NOTIFY_SOCKET` datagram socket the test listens on.

use std::time::Duration;

use testkit::{Host, scaled};
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
