//! Names the commit the binary was built from, for `outboxd --version`: `OUTBOXD_COMMIT` is
//! `git rev-parse --short=12 HEAD` (the commit checked out: uncommitted changes are not
//! marked, since watching every file would rerun this script at every edit), or `unknown` when git or the repository is absent (a source package, a crate
//! tarball). An `OUTBOXD_COMMIT` set in the environment of the build wins (for packagers who
//! build outside a checkout).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=OUTBOXD_COMMIT");
    let commit = std::env::var("OUTBOXD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| {
            watch_git();
            from_git().unwrap_or_else(|| "unknown".to_owned())
        });
    println!("cargo:rustc-env=OUTBOXD_COMMIT={commit}");
}

/// The commit from git, or None when git cannot say.
fn from_git() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty())
}

/// Rebuild when HEAD moves: the HEAD file, the branch it names, and the packed refs. Only
/// files that exist are named (cargo reruns a script on every build for a missing one).
fn watch_git() {
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let (git_dir, common) = (PathBuf::from(git_dir), PathBuf::from(common));
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(head));
    }
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// One git command's trimmed standard output, or None when it cannot run or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
