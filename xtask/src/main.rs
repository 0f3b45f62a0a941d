//! `cargo xtask`: the project's developer commands (std only, so it builds in seconds).
//!
//! - `cargo xtask test [CARGO TEST ARGS...]`: install the wasm target if
//!   needed, build the plugins (Rust, then JavaScript/Python through
//!   `plugins/build-polyglot.sh` if present) and the host, then run
//!   `cargo test` with `OUTBOXD_BIN`, `OUTBOXD_PLUGINS_DIR` and
//!   `OUTBOXD_POLYGLOT_DIR` set; `tests/install-tools.sh` first installs the
//!   operator-view test tools (`OUTBOXD_TEST_BROWSER_DIR`, `OUTBOXD_TEST_PYTHON`).
//!   Then every end-to-end suite in `tests/tests/` runs again on PostgreSQL
//!   (`OUTBOXD_TEST_STORE=postgres`; `OUTBOXD_TEST_PG=skip` skips that pass), but the few
//!   opted out in [`PG_OPT_OUTS`], each for a reason the testkit checks: a new suite runs on
//!   PostgreSQL unless it is opted out on purpose.
//! - `cargo xtask demo [--fresh] [--debug]`: build everything, lay out `demo/`, start
//!   `demo-receiver` and `outboxd serve`, post a sample event, and run until
//!   Ctrl-C.
//! - `cargo xtask bench [--debug] [BENCH ARGS...]`: build the plugins, outboxd and
//!   `outboxd-bench` in release (debug with `--debug`), run the benchmark, and
//!   write `target/bench.json` (see `docs/performance.md`). Its PostgreSQL phases
//!   run on `OUTBOXD_BENCH_PG` (`skip` skips them), by default on
//!   `postgres://postgres@127.0.0.1:5432` when `pg_isready` finds it up. With `php` on
//!   the PATH it also runs the relay benchmark (`relay-bench`, through `--extra relay=`).
//! - `cargo xtask deb [CARGO DEB ARGS...]`: the Debian package (see [`deb`]).

mod deb;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const WASM_TARGET: &str = "wasm32-wasip2";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test [ARGS...]   install the wasm target, build plugins and host, run `cargo test --workspace`,
                   then every end-to-end suite in tests/tests/ again on PostgreSQL but those
                   opted out in xtask's PG_OPT_OUTS (OUTBOXD_TEST_PG=skip skips that pass),
                   and the plugins' unit tests
                   (extra ARGS go to cargo test, e.g. `-p outboxd-tests --test fanout -- --nocapture`)
  demo [--fresh] [--debug]
                   build everything and run outboxd + demo-receiver in demo/ until Ctrl-C
                   (--fresh deletes demo/outboxd.db first; --debug uses debug builds, quicker to build)
  bench [--debug] [ARGS...]
                   build plugins, outboxd and outboxd-bench in release and run the benchmark: prints a
                   table and writes target/bench.json (--debug uses the debug build; ARGS go to
                   outboxd-bench, e.g. --quick, --events N; see docs/performance.md); the PostgreSQL
                   phases use OUTBOXD_BENCH_PG=URL, or the server at 127.0.0.1:5432 if pg_isready finds
                   it (OUTBOXD_BENCH_PG=skip skips them)
  deb [ARGS...]    build the webhook plugin and outboxd in release, then the Debian package with
                   cargo-deb (`cargo install cargo-deb`): target/debian/outboxd_*.deb
  help             this text";

type Result<T, E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match cmd.as_str() {
        "test" => cmd_test(&rest),
        "demo" => cmd_demo(&rest),
        "bench" => cmd_bench(&rest),
        "deb" => deb::cmd_deb(&rest),
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Paths and process helpers

/// The workspace root: the parent of this crate's directory.
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The workspace target dir (`CARGO_TARGET_DIR`, relative to the root, or `<root>/target`).
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

fn exe(name: &str) -> String {
    format!("{name}{}", env::consts::EXE_SUFFIX)
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(root());
    cmd
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Run `cmd` with inherited stdio; error unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
        None => ExitCode::FAILURE,
    }
}

// ---------------------------------------------------------------------------
// Build steps

/// `rustup target add wasm32-wasip2` unless it is installed already.
fn ensure_wasm_target() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output();
    let listed = match listed {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return Err(format!("`rustup target list --installed` failed ({})", out.status));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "rustup is not installed (or not on PATH): it is needed to add the {WASM_TARGET} target \
                 the plugins compile to. Install rustup from https://rustup.rs, or install the \
                 {WASM_TARGET} standard library for your toolchain by other means."
            ));
        }
        Err(e) => return Err(format!("cannot run rustup: {e}")),
    };
    let installed = String::from_utf8_lossy(&listed.stdout);
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    step(&format!("installing the {WASM_TARGET} target"));
    run(Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(root()))
}

/// Where the built plugin components are.
struct PluginDirs {
    /// The Rust components (`webhook.wasm`, `misbehave.wasm`): `OUTBOXD_PLUGINS_DIR`.
    rust: PathBuf,
    /// The JavaScript/Python components, if built: `OUTBOXD_POLYGLOT_DIR`.
    polyglot: Option<PathBuf>,
}

impl PluginDirs {
    /// Set the variables the test harness reads.
    fn export(&self, cmd: &mut Command) {
        cmd.env("OUTBOXD_PLUGINS_DIR", &self.rust);
        if let Some(dir) = &self.polyglot {
            cmd.env("OUTBOXD_POLYGLOT_DIR", dir);
        }
    }
}

/// Build the plugins: always the Rust ones; the JavaScript/Python ones too
/// when `polyglot` is set (the tests need them, the demo does not). Each
/// further toolchain is one more step here plus one more variable in
/// [`PluginDirs::export`].
fn build_plugins(polyglot: bool) -> Result<PluginDirs> {
    let rust = build_rust_plugins()?;
    let polyglot = if polyglot { build_polyglot_plugins()? } else { None };
    Ok(PluginDirs { rust, polyglot })
}

/// `plugins/build-polyglot.sh` (JS via componentize-js, Python via
/// componentize-py; it installs its pinned toolchains and needs node + npm
/// and python3). `None` if the script does not exist.
fn build_polyglot_plugins() -> Result<Option<PathBuf>> {
    let script = root().join("plugins").join("build-polyglot.sh");
    if !script.is_file() {
        return Ok(None);
    }
    let out = root().join("plugins").join("target").join("polyglot");
    step("building the JavaScript and Python plugins");
    run(Command::new("bash")
        .arg(&script)
        .env("OUTBOXD_POLYGLOT_OUT", &out)
        .current_dir(root()))
    .map_err(|e| {
        format!(
            "{e}
(the JavaScript/Python plugins need node + npm and python3 3.11+ on PATH)"
        )
    })?;
    Ok(Some(out))
}

/// `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release`.
fn build_rust_plugins() -> Result<PathBuf> {
    let plugins = root().join("plugins");
    if !plugins.join("Cargo.toml").is_file() {
        return Err(format!("{} does not exist", plugins.join("Cargo.toml").display()));
    }
    step("building the Rust plugins");
    // From the plugins workspace (so its own .cargo/config.toml applies), with
    // the output directory pinned whatever CARGO_TARGET_DIR says.
    run(cargo()
        .current_dir(&plugins)
        .env_remove("CARGO_TARGET_DIR")
        .arg("build")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--release", "--target-dir"])
        .arg(plugins.join("target")))?;
    Ok(plugins.join("target").join(WASM_TARGET).join("release"))
}

// ---------------------------------------------------------------------------
// cargo xtask test

/// The tools of the operator-view tests (browser driver, schemathesis, metrics parser).
struct TestTools {
    /// `tests/browser`, with playwright-core in its `node_modules`.
    browser: PathBuf,
    /// The `python` of the venv holding schemathesis and prometheus_client.
    python: PathBuf,
}

impl TestTools {
    fn export(&self, cmd: &mut Command) {
        cmd.env("OUTBOXD_TEST_BROWSER_DIR", &self.browser);
        cmd.env("OUTBOXD_TEST_PYTHON", &self.python);
    }
}

/// `tests/install-tools.sh`: pinned playwright-core (npm) and schemathesis +
/// prometheus_client (pip), installed into the repo on first use.
fn install_test_tools() -> Result<TestTools> {
    let tests = root().join("tests");
    step("installing the test tools (tests/install-tools.sh)");
    run(Command::new("bash")
        .arg(tests.join("install-tools.sh"))
        .current_dir(root()))
    .map_err(|e| format!("{e}\n(the operator-view tests need node + npm and python3 3.11+ on PATH)"))?;
    Ok(TestTools {
        browser: tests.join("browser"),
        python: tests.join(".tools").join("venv").join("bin").join("python"),
    })
}

/// Why an end-to-end suite does not run a second time on PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PgOptOut {
    /// It never creates a `testkit::Host`, so it never opens a store. Checked: the testkit
    /// panics if such a suite creates a host (see [`OPT_OUTS_VAR`]).
    StartsNoHost(&'static str),
    /// It tests something only the SQLite store does. Checked: the testkit panics if such a
    /// suite creates a host on PostgreSQL.
    SqliteOnly(&'static str),
    /// It runs every host on PostgreSQL already. Checked: the testkit panics if such a suite
    /// creates a host on SQLite.
    AlwaysPostgres(&'static str),
}

impl PgOptOut {
    /// The word the testkit reads in [`OPT_OUTS_VAR`].
    fn kind(self) -> &'static str {
        match self {
            PgOptOut::StartsNoHost(_) => "no-host",
            PgOptOut::SqliteOnly(_) => "sqlite-only",
            PgOptOut::AlwaysPostgres(_) => "postgres-only",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            PgOptOut::StartsNoHost(r) | PgOptOut::SqliteOnly(r) | PgOptOut::AlwaysPostgres(r) => r,
        }
    }
}

/// The end-to-end suites that do NOT run a second time with `OUTBOXD_TEST_STORE=postgres`,
/// each with its reason. Every other suite in `tests/tests/` does, so a new suite runs on
/// PostgreSQL unless it is opted out here on purpose. An entry that names no suite is an
/// error, and the testkit holds each entry to its kind (see [`PgOptOut`]).
const PG_OPT_OUTS: &[(&str, PgOptOut)] = &[
    (
        "harness",
        PgOptOut::StartsNoHost("self-tests of the testkit's Receiver; no outboxd runs"),
    ),
    (
        "plugin_cli",
        PgOptOut::StartsNoHost("`outboxd plugin check` and `plugin run`, which open no store"),
    ),
    (
        "crash_recovery",
        PgOptOut::SqliteOnly(
            "SQLite's start-up recovery, under its lock file, of the 60 s leases a killed host held; \
             on PostgreSQL such leases expire instead, which fc_chaos and pg_cluster exercise",
        ),
    ),
    (
        "readiness_disk",
        PgOptOut::SqliteOnly(
            "a full filesystem under the SQLite database (a tmpfs of a few MB); a PostgreSQL \
             server's disk is not the host's to fill",
        ),
    ),
    (
        "pg_cluster",
        PgOptOut::AlwaysPostgres("several hosts on one database: every run is on PostgreSQL"),
    ),
];

/// The variable through which `cargo xtask test` tells the testkit which suites are opted out
/// of the PostgreSQL pass and why: `suite=kind,...` with the kinds of [`PgOptOut::kind`].
const OPT_OUTS_VAR: &str = "OUTBOXD_TEST_PG_OPT_OUTS";

/// [`PG_OPT_OUTS`] in the form of [`OPT_OUTS_VAR`].
fn opt_outs_value() -> String {
    PG_OPT_OUTS
        .iter()
        .map(|(suite, why)| format!("{suite}={}", why.kind()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The end-to-end suites: Cargo's automatic test targets of `tests/` (`tests/tests/NAME.rs`
/// and `tests/tests/NAME/main.rs`), sorted. An error if `tests/Cargo.toml` declares its test
/// targets itself, which this discovery would not see.
fn e2e_suites(tests_crate: &Path) -> Result<Vec<String>> {
    let manifest = tests_crate.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|e| format!("read {}: {e}", manifest.display()))?;
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("[[test]]") || l.trim_start().starts_with("autotests"))
    {
        return Err(format!(
            "{} declares test targets itself ([[test]] or autotests): teach xtask's e2e_suites() \
             to find them, so that the PostgreSQL pass does not miss a suite",
            manifest.display()
        ));
    }
    let dir = tests_crate.join("tests");
    let entries = fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut suites = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("read {}: {e}", dir.display()))?.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let is_suite = if path.is_dir() {
            path.join("main.rs").is_file()
        } else {
            path.extension().is_some_and(|x| x == "rs")
        };
        if is_suite && !name.is_empty() {
            suites.push(name);
        }
    }
    suites.sort();
    if suites.is_empty() {
        return Err(format!("no end-to-end suite found in {}", dir.display()));
    }
    Ok(suites)
}

/// The suites of the PostgreSQL pass: every suite but the opted-out ones. An error if an
/// opt-out names no suite, or names one twice.
fn pg_suites(suites: &[String], opt_outs: &[(&str, PgOptOut)]) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    for (name, why) in opt_outs {
        if !suites.iter().any(|s| s == name) {
            return Err(format!(
                "the PostgreSQL opt-out {name:?} ({}) names no suite in tests/tests/ (suites: {}); \
                 remove or rename it in xtask's PG_OPT_OUTS",
                why.reason(),
                suites.join(", ")
            ));
        }
        if seen.contains(name) {
            return Err(format!(
                "the PostgreSQL opt-out {name:?} is listed twice in PG_OPT_OUTS"
            ));
        }
        seen.push(name);
    }
    Ok(suites
        .iter()
        .filter(|s| !opt_outs.iter().any(|(name, _)| name == s))
        .cloned()
        .collect())
}

fn cmd_test(extra: &[String]) -> Result<ExitCode> {
    // Before anything is built: a stale opt-out fails at once.
    let suites = e2e_suites(&root().join("tests"))?;
    let on_postgres = pg_suites(&suites, PG_OPT_OUTS)?;
    ensure_wasm_target()?;
    let plugins = build_plugins(true)?;
    let tools = install_test_tools()?;
    step("building outboxd");
    // `--workspace`: the binary's dependencies get the features the whole workspace asks for,
    // as in the `cargo test --workspace` below, so they are built once, not once per set.
    run(cargo().args(["build", "--workspace", "--bin", "outboxd"]))?;
    let bin = target_dir().join("debug").join(exe("outboxd"));
    if !bin.is_file() {
        return Err(format!("{} was not built", bin.display()));
    }
    let mut cmd = cargo();
    // Every suite runs even after one fails, so that a CI log lists every failure at once.
    cmd.args(["test", "--no-fail-fast"]);
    let selects_packages = extra
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a.starts_with("-p"));
    if !selects_packages {
        cmd.arg("--workspace");
    }
    cmd.args(extra)
        .env("OUTBOXD_BIN", &bin)
        .env(OPT_OUTS_VAR, opt_outs_value());
    plugins.export(&mut cmd);
    tools.export(&mut cmd);
    step(&format!(
        "running tests (OUTBOXD_BIN={}, OUTBOXD_PLUGINS_DIR={}{})",
        bin.display(),
        plugins.rust.display(),
        plugins
            .polyglot
            .as_ref()
            .map(|d| format!(", OUTBOXD_POLYGLOT_DIR={}", d.display()))
            .unwrap_or_default()
    ));
    let status = cmd.status().map_err(|e| format!("cannot run cargo test: {e}"))?;
    if !status.success() || selects_packages {
        return Ok(exit_code(status));
    }
    // Every suite again on PostgreSQL (each test on a database of its own), but the opted-out.
    if env::var("OUTBOXD_TEST_PG").is_ok_and(|v| v == "skip") {
        step("OUTBOXD_TEST_PG=skip: not running the end-to-end suites on PostgreSQL");
    } else {
        step(&format!(
            "running {} of the {} end-to-end suites on PostgreSQL (OUTBOXD_TEST_STORE=postgres); not: {}",
            on_postgres.len(),
            suites.len(),
            PG_OPT_OUTS
                .iter()
                .map(|(name, why)| format!("{name} ({})", why.kind()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let started = Instant::now();
        // `--workspace`, as the first pass: the same features, so the same test binaries (the
        // suites are test targets of `outboxd-tests` alone).
        let mut cmd = cargo();
        cmd.args(["test", "--no-fail-fast", "--workspace"]);
        for suite in &on_postgres {
            cmd.args(["--test", suite]);
        }
        cmd.args(extra)
            .env("OUTBOXD_BIN", &bin)
            .env("OUTBOXD_TEST_STORE", "postgres")
            .env(OPT_OUTS_VAR, opt_outs_value());
        plugins.export(&mut cmd);
        tools.export(&mut cmd);
        let status = cmd.status().map_err(|e| format!("cannot run cargo test: {e}"))?;
        step(&format!(
            "the PostgreSQL pass took {:.0?} ({status})",
            started.elapsed()
        ));
        if !status.success() {
            return Ok(exit_code(status));
        }
    }
    // The plugins workspace's own unit tests (SDK, adapters), natively.
    step("running the plugins' unit tests");
    let plugins_dir = root().join("plugins");
    let status = cargo()
        .current_dir(&plugins_dir)
        .env_remove("CARGO_TARGET_DIR")
        .args(["test", "--workspace", "--manifest-path"])
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(plugins_dir.join("target"))
        .status()
        .map_err(|e| format!("cannot run cargo test for the plugins: {e}"))?;
    Ok(exit_code(status))
}

// ---------------------------------------------------------------------------
// cargo xtask bench

fn cmd_bench(args: &[String]) -> Result<ExitCode> {
    let debug = args.iter().any(|a| a == "--debug");
    let mut rest: Vec<String> = args.iter().filter(|a| *a != "--debug").cloned().collect();
    ensure_wasm_target()?;
    let plugins = build_plugins(true)?;
    let profile = if debug { "debug" } else { "release" };
    step(&format!("building outboxd and outboxd-bench ({profile})"));
    let mut build = cargo();
    build.arg("build");
    if !debug {
        build.arg("--release");
    }
    build.args(["-p", "outboxd", "-p", "outboxd-bench", "--bins"]);
    let relay = relay_bench_wanted();
    if relay {
        build.args(["-p", "outboxd-tests", "--bin", "relay-bench"]);
    }
    run(&mut build)?;
    let bins = target_dir().join(profile);
    let only = |a: &String| a == "--overhead-only" || a == "--adaptive-only";
    if relay && !rest.iter().any(only) {
        rest.push("--extra".into());
        rest.push(format!("relay={}", bins.join(exe("relay-bench")).display()));
    }
    if !rest.iter().any(|a| a == "--json" || a.starts_with("--json=")) {
        rest.push("--json".into());
        rest.push(target_dir().join("bench.json").display().to_string());
    }
    let mut cmd = Command::new(bins.join(exe("outboxd-bench")));
    cmd.arg("--outboxd").arg(bins.join(exe("outboxd")));
    cmd.arg("--plugins").arg(&plugins.rust);
    if let Some(dir) = &plugins.polyglot {
        cmd.arg("--polyglot").arg(dir);
    }
    let chosen = rest
        .iter()
        .any(|a| a == "--postgres" || a.starts_with("--postgres=") || only(a));
    if !chosen && let Some(url) = bench_postgres() {
        cmd.arg("--postgres").arg(url);
    }
    cmd.args(&rest).current_dir(root());
    step(&format!("running {cmd:?}"));
    let status = cmd.status().map_err(|e| format!("cannot run outboxd-bench: {e}"))?;
    Ok(exit_code(status))
}

/// Whether to run the relay benchmark: it needs `php` (the example producer). Says why not.
fn relay_bench_wanted() -> bool {
    let php = Command::new("php")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !php {
        step("no relay benchmark: `php` is not installed (apt-get install php-cli php-sqlite3 php-pgsql php-mysql)");
    }
    php
}

/// The local PostgreSQL server the benchmark's PostgreSQL phases use by default.
const BENCH_PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The server for `outboxd-bench --postgres`: `OUTBOXD_BENCH_PG` (a URL, or `skip`), else
/// [`BENCH_PG`] when `pg_isready` finds it accepting connections, else none. Says which.
fn bench_postgres() -> Option<String> {
    match env::var("OUTBOXD_BENCH_PG").map(|v| v.trim().to_owned()) {
        Ok(v) if v == "skip" => {
            step("OUTBOXD_BENCH_PG=skip: no PostgreSQL phases");
            None
        }
        Ok(url) if !url.is_empty() => {
            step("PostgreSQL phases on the server of OUTBOXD_BENCH_PG");
            Some(url)
        }
        _ => {
            let ready = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                step(&format!(
                    "PostgreSQL phases on {BENCH_PG} (pg_isready: accepting connections; \
                     OUTBOXD_BENCH_PG=URL picks another server, OUTBOXD_BENCH_PG=skip skips them)"
                ));
                Some(BENCH_PG.to_owned())
            } else {
                step(
                    "no PostgreSQL phases: nothing accepts connections at 127.0.0.1:5432 (pg_isready); \
                     set OUTBOXD_BENCH_PG=URL to use a server elsewhere",
                );
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------
// cargo xtask demo

const DEMO_API: &str = "127.0.0.1:8080";
const DEMO_RECEIVER: &str = "127.0.0.1:9000";
/// A fixed, public demo secret: never use it for anything real.
const DEMO_SECRET: &str = "whsec_b3V0Ym94ZC1kZW1vLXNlY3JldC1kby1ub3QtdXNlISE=";

struct DemoTarget {
    name: &'static str,
    events: &'static [&'static str],
    signed: bool,
}

const DEMO_TARGETS: &[DemoTarget] = &[
    DemoTarget {
        name: "crm",
        events: &["order.*", "customer.*"],
        signed: true,
    },
    DemoTarget {
        name: "analytics",
        events: &["*"],
        signed: false,
    },
    DemoTarget {
        name: "billing",
        events: &["order.created", "order.paid", "invoice.*"],
        signed: true,
    },
];

fn manifest(t: &DemoTarget) -> String {
    let events = t.events.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "# Demo target `{name}`: written by `cargo xtask demo` (overwritten on every run).\n\
         plugin = \"webhook.wasm\"\n\
         events = [{events}]\n\
         timeout_ms = 5000\n\
         allowed_hosts = [\"{DEMO_RECEIVER}\"]\n\
         \n\
         [retry]\n\
         max_attempts = 8\n\
         initial_backoff_ms = 1000\n\
         max_backoff_ms = 30000\n\
         \n\
         [config]\n\
         url = \"http://{DEMO_RECEIVER}/{name}\"\n",
        name = t.name
    );
    if t.signed {
        s.push_str(&format!("secret = \"{DEMO_SECRET}\"\n"));
    }
    s
}

fn write_demo_dir(demo: &Path, plugins_dir: &Path, fresh: bool) -> Result<()> {
    let pd = demo.join("plugins.d");
    fs::create_dir_all(&pd).map_err(|e| format!("create {}: {e}", pd.display()))?;
    if fresh {
        for f in ["outboxd.db", "outboxd.db-wal", "outboxd.db-shm"] {
            let _ = fs::remove_file(demo.join(f));
        }
    }
    let config = format!(
        "# outboxd demo configuration: written by `cargo xtask demo`.\n\
         # Paths are relative to this file's directory.\n\
         listen = \"{DEMO_API}\"\n\
         database = \"outboxd.db\"\n\
         plugins_dir = \"plugins.d\"\n"
    );
    let write =
        |path: PathBuf, text: &str| fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()));
    write(demo.join("outboxd.toml"), &config)?;
    let src = plugins_dir.join("webhook.wasm");
    fs::copy(&src, pd.join("webhook.wasm")).map_err(|e| format!("copy {}: {e}", src.display()))?;
    for t in DEMO_TARGETS {
        write(pd.join(format!("{}.toml", t.name)), &manifest(t))?;
    }
    Ok(())
}

/// A minimal HTTP/1.1 exchange over std's TcpStream: (status, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, String)> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

/// Decode a chunked transfer-encoded body (enough for small JSON answers).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Children(Vec<(&'static str, Child)>);

impl Children {
    /// Ask every child to stop (SIGTERM), then kill what is left after `grace`.
    fn stop_all(&mut self, grace: Duration) {
        for (name, child) in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                step(&format!("stopping {name}"));
                terminate(child);
            }
        }
        let deadline = Instant::now() + grace;
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        step(&format!("{name} exited ({status})"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        step(&format!("{name} did not stop in time; killing it"));
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<(&'static str, ExitStatus)> {
        self.0
            .iter_mut()
            .find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| (*name, s)))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(12));
    }
}

#[cfg(unix)]
mod sig {
    //! Just enough POSIX signal handling for the demo, without a libc crate.
    use std::sync::atomic::{AtomicBool, Ordering};

    static STOP: AtomicBool = AtomicBool::new(false);
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    unsafe extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        fn kill(pid: i32, sig: i32) -> i32;
    }

    extern "C" fn on_signal(_: i32) {
        STOP.store(true, Ordering::SeqCst);
    }

    /// Route SIGINT and SIGTERM to a flag instead of dying.
    pub fn install() {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal(SIGINT, on_signal);
            signal(SIGTERM, on_signal);
        }
    }

    pub fn stop_requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    pub fn terminate(pid: u32) {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: plain kill(2) on a child's pid.
            unsafe {
                kill(pid, SIGTERM);
            }
        }
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    sig::terminate(child.id());
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.kill();
}

#[cfg(unix)]
fn stop_requested() -> bool {
    sig::stop_requested()
}

#[cfg(not(unix))]
fn stop_requested() -> bool {
    false
}

fn port_free(addr: &str) -> Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{addr} is not available ({e}); is another demo (or something else) running there?"
        )),
    }
}

fn cmd_demo(args: &[String]) -> Result<ExitCode> {
    let mut fresh = false;
    let mut debug = false;
    for a in args {
        match a.as_str() {
            "--fresh" => fresh = true,
            "--debug" => debug = true,
            other => return Err(format!("demo: unknown argument {other:?}")),
        }
    }
    ensure_wasm_target()?;
    let plugins_dir = build_plugins(false)?.rust;
    let profile = if debug { "debug" } else { "release" };
    step(&format!("building outboxd and demo-receiver ({profile})"));
    let mut build = cargo();
    build.arg("build");
    if !debug {
        build.arg("--release");
    }
    run(build.args(["-p", "outboxd", "-p", "outboxd-tests", "--bins"]))?;
    let bins = target_dir().join(profile);
    let outboxd = bins.join(exe("outboxd"));
    let receiver = bins.join(exe("demo-receiver"));
    let demo = root().join("demo");
    write_demo_dir(&demo, &plugins_dir, fresh)?;
    port_free(DEMO_RECEIVER)?;
    port_free(DEMO_API)?;

    #[cfg(unix)]
    sig::install();

    let mut children = Children(Vec::new());
    step(&format!("starting demo-receiver on {DEMO_RECEIVER}"));
    let rx = Command::new(&receiver)
        .args(["--listen", DEMO_RECEIVER, "--secret", DEMO_SECRET])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", receiver.display()))?;
    children.0.push(("demo-receiver", rx));

    let log_path = demo.join("outboxd.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    step(&format!("starting outboxd serve (logs: {})", log_path.display()));
    let serve = Command::new(&outboxd)
        .arg("serve")
        .arg("--config")
        .arg(demo.join("outboxd.toml"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", outboxd.display()))?;
    children.0.push(("outboxd", serve));

    // Wait until healthy.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((name, status)) = children.exited() {
            let logs = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("{name} exited during start-up ({status})\n{logs}"));
        }
        if stop_requested() {
            return Ok(ExitCode::SUCCESS);
        }
        if matches!(http(DEMO_API, "GET", "/healthz", None), Ok((200, _))) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "outboxd is not healthy after 120 s; see {}",
                log_path.display()
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }

    let sample = r#"{"type":"order.created","payload":{"order_id":1001,"customer":"ada@example.com","total":"42.00","currency":"EUR"},"idempotency_key":"demo-order-1001"}"#;
    match http(DEMO_API, "POST", "/v1/events", Some(sample)) {
        Ok((status, body)) => println!("\nposted a sample order.created event: {status} {body}"),
        Err(e) => eprintln!("xtask: posting the sample event failed: {e}"),
    }
    let config = demo.join("outboxd.toml");
    println!(
        "\noutboxd is running on http://{DEMO_API}; deliveries appear below as demo-receiver prints them.\n\
         \n\
         dashboard:                   http://{DEMO_API}/\n\
         Prometheus metrics:          curl -s http://{DEMO_API}/metrics\n\
         OpenAPI document:            curl -s http://{DEMO_API}/v1/openapi.json\n\
         \n\
         post another event:\n\
         \x20 curl -s -X POST http://{DEMO_API}/v1/events -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"type\":\"order.paid\",\"payload\":{{\"order_id\":1002,\"total\":\"9.99\"}}}}'\n\
         see an event's deliveries:   curl -s http://{DEMO_API}/v1/events/<id>\n\
         see the targets:             curl -s http://{DEMO_API}/v1/targets\n\
         status from the CLI:         {} status --config {}\n\
         outboxd's log:               {}\n\
         \n\
         Ctrl-C stops both.\n",
        outboxd.display(),
        config.display(),
        log_path.display()
    );

    loop {
        if stop_requested() {
            println!();
            children.stop_all(Duration::from_secs(12));
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((name, status)) = children.exited() {
            children.stop_all(Duration::from_secs(12));
            return Err(format!(
                "{name} exited unexpectedly ({status}); see {}",
                log_path.display()
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests;
