//! `/readyz` tells the truth about the store: on a filesystem that fills up (a tmpfs of a
//! few MB under the SQLite database) it answers 503 with the reason while `/healthz` still
//! answers, and it is ready again once room is made. Mounting needs root (or CAP_SYS_ADMIN):
//! without it the test says so on stderr and checks nothing else.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::{Host, scaled};

/// A tmpfs mounted for the test's life, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) at `dir`; None when not permitted.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "readiness_disk: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self { dir: dir.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses more.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "stopped by ENOSPC, not {e}");
            break;
        }
    }
    let _ = file.sync_all();
}

/// `GET /readyz` until its status is `want` (the probe runs per request).
async fn readyz_until(host: &Host, want: u16) -> Value {
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(10));
    loop {
        let (status, body) = host.get_json("/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz answered {status}, not {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no `{name}` check in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_database_disk_is_full_and_recovers() {
    let mut host = Host::new();
    let mount = host.dir().join("small-disk");
    let Some(_tmpfs) = Tmpfs::mount(&mount, "8m") else {
        return;
    };
    host.set_config("database", mount.join("outboxd.db").display().to_string());
    host.start().await;

    let body = readyz_until(&host, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(check(&body, "store")["ok"], true, "{body}");

    let filler = mount.join("filler");
    fill(&filler);
    let body = readyz_until(&host, 503).await;
    assert_eq!(body["status"], "not ready", "{body}");
    let store = check(&body, "store");
    assert_eq!(store["ok"], false, "{body}");
    let reason = store["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("full") || reason.contains("disk"),
        "the reason names the full disk: {body}"
    );
    assert_eq!(check(&body, "targets")["ok"], true, "{body}");
    // The process lives: liveness is not readiness.
    let (status, health) = host
        .healthz(scaled(Duration::from_secs(5)))
        .await
        .expect("/healthz answers");
    assert_eq!(status, 200, "{health}");

    std::fs::remove_file(&filler).expect("remove the filler");
    let body = readyz_until(&host, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    host.stop().await;
}
