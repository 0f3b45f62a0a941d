//! Locating (and if need be building) the `outboxd` binary and the plugin components.
//!
//! Each is resolved at most once per test process (a [`OnceLock`]), so tests
//! running in parallel share one build. Set `OUTBOXD_BIN` and
//! `OUTBOXD_PLUGINS_DIR` (as `cargo xtask test` does) to skip the builds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugins' compilation target.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The root of the cargo workspace (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The workspace's target directory: `CARGO_TARGET_DIR` if set (relative to
/// the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Where the plugins workspace puts its components.
pub fn plugins_output_dir() -> PathBuf {
    workspace_root()
        .join("plugins")
        .join("target")
        .join(WASM_TARGET)
        .join("release")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run_build(mut cmd: Command, what: &str, hint: &str) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown} to build {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {what} failed ({}): {shown}\n{hint}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn resolve_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("OUTBOXD_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("OUTBOXD_BIN={} is not a file", bin.display()))
        };
    }
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "outboxd", "--bin", "outboxd"]);
    run_build(cmd, "the outboxd binary", "(set OUTBOXD_BIN to use a prebuilt binary)")?;
    let bin = target_dir()
        .join("debug")
        .join(format!("outboxd{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("cargo build succeeded but {} does not exist", bin.display()))
    }
}

fn resolve_plugins() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("OUTBOXD_PLUGINS_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!("OUTBOXD_PLUGINS_DIR={} is not a directory", dir.display()))
        };
    }
    let plugins = workspace_root().join("plugins");
    let mut cmd = cargo();
    // Run from the plugins workspace so its own .cargo/config.toml applies,
    // and pin the output directory whatever CARGO_TARGET_DIR says.
    cmd.current_dir(&plugins)
        .env_remove("CARGO_TARGET_DIR")
        .arg("build")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--release", "--target-dir"])
        .arg(plugins.join("target"));
    run_build(
        cmd,
        "the plugins",
        "(is the target installed? `rustup target add wasm32-wasip2`, or run `cargo xtask test`; \
         set OUTBOXD_PLUGINS_DIR to use prebuilt components)",
    )?;
    Ok(plugins_output_dir())
}

/// The `outboxd` binary, built on first use unless `OUTBOXD_BIN` is set.
///
/// # Panics
/// If it cannot be found or built (with the build output).
pub fn outboxd_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(resolve_bin) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The directory holding the built plugin components, built on first use
/// unless `OUTBOXD_PLUGINS_DIR` is set.
///
/// # Panics
/// If they cannot be found or built (with the build output).
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(resolve_plugins) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The path of the built component `file` (e.g. `webhook.wasm`).
///
/// # Panics
/// If it does not exist.
pub fn plugin(file: &str) -> PathBuf {
    let dir = plugins_dir();
    let path = dir.join(file);
    if !path.is_file() {
        let present: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".wasm"))
                    .collect()
            })
            .unwrap_or_default();
        panic!("plugin {file} not found in {} (present: {present:?})", dir.display());
    }
    path
}

fn resolve_polyglot_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("OUTBOXD_POLYGLOT_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!("OUTBOXD_POLYGLOT_DIR={} is not a directory", dir.display()))
        };
    }
    let script = workspace_root().join("plugins").join("build-polyglot.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); it needs node + npm and python3 (set OUTBOXD_POLYGLOT_DIR to use \
             prebuilt components)\n--- stderr ---\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The script prints the output directory as its only line on stdout.
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("{} printed {dir:?}, not a directory", script.display()))
    }
}

/// The bytes of the built component `file`, located (or built) off the async runtime.
///
/// # Panics
/// If it does not exist or cannot be read.
pub async fn plugin_bytes(file: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let path = plugin(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The directory holding the JavaScript and Python components (`crm-js.wasm`,
/// `analytics-py.wasm`): `OUTBOXD_POLYGLOT_DIR`, or built by `plugins/build-polyglot.sh`
/// at most once per test process.
pub async fn polyglot_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = tokio::task::spawn_blocking(|| DIR.get_or_init(resolve_polyglot_dir))
        .await
        .expect("locating the polyglot components");
    match dir {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    }
}
