//! `cargo xtask deb`: the Debian package. Builds the Rust plugins (the package carries the
//! example `webhook.wasm`), outboxd in release, its man page and shell completions (into
//! `target/release/`, where `[package.metadata.deb]` in `host/Cargo.toml` finds them), then
//! runs `cargo deb -p outboxd --no-build` (cargo-deb: `cargo install cargo-deb`). Slow (a
//! release build): not part of CI.

use std::fs;
use std::process::{Command, ExitCode, Stdio};

use crate::{Result, WASM_TARGET, build_rust_plugins, cargo, ensure_wasm_target, exe, root, run, step, target_dir};

/// Where `[package.metadata.deb]` expects the example plugin.
const EXAMPLE_PLUGIN: &str = "plugins/target/wasm32-wasip2/release/webhook.wasm";

pub fn cmd_deb(extra: &[String]) -> Result<ExitCode> {
    let has_cargo_deb = cargo()
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_deb {
        return Err("cargo-deb is not installed: `cargo install cargo-deb`".into());
    }
    ensure_wasm_target()?;
    let plugins = build_rust_plugins()?;
    let example = root().join(EXAMPLE_PLUGIN);
    if plugins.join("webhook.wasm") != example || !example.is_file() {
        return Err(format!(
            "the example plugin is not at {} (built for {WASM_TARGET} into {})",
            example.display(),
            plugins.display()
        ));
    }
    step("building outboxd (release)");
    run(cargo().args(["build", "--release", "-p", "outboxd", "--bin", "outboxd"]))?;
    let release = target_dir().join("release");
    let bin = release.join(exe("outboxd"));
    // The man page and the completions, from the binary itself (cli/shell.rs).
    for (args, file) in [
        (&["man"][..], "outboxd.1"),
        (&["completions", "bash"][..], "outboxd.bash"),
    ] {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!("`outboxd {}` failed ({})", args.join(" "), out.status));
        }
        fs::write(release.join(file), &out.stdout).map_err(|e| format!("write {file}: {e}"))?;
    }
    step("building the Debian package (cargo deb)");
    run(cargo().args(["deb", "-p", "outboxd", "--no-build"]).args(extra))?;
    let debs: Vec<String> = fs::read_dir(target_dir().join("debian"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().display().to_string())
                .filter(|p| p.ends_with(".deb"))
                .collect()
        })
        .unwrap_or_default();
    step(&format!("built: {}", debs.join(", ")));
    Ok(ExitCode::SUCCESS)
}
