//! The dashboard's browser tests: a script of `tests/browser/` run by node (playwright-core
//! driving Debian's headless Chromium), with the environment both scripts share, its output
//! printed, and a failure of the script a failure of the test.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Where the scripts and their `node_modules` are, and the Chromium they drive: found at the
/// start of a test, so that a machine without them fails before anything is set up.
pub struct Browser {
    dir: PathBuf,
    chromium: String,
}

impl Browser {
    /// `OUTBOXD_TEST_BROWSER_DIR` (set by `cargo xtask test`, which installs playwright-core
    /// there) and `CHROMIUM` (default `/usr/bin/chromium`, Debian's package, which .ci/run
    /// installs); panics saying which is missing.
    pub fn locate() -> Self {
        let dir = std::env::var_os("OUTBOXD_TEST_BROWSER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!(
                    "OUTBOXD_TEST_BROWSER_DIR is not set: run the tests through `cargo xtask test`, which \
                     installs playwright-core into tests/browser (and needs Debian's chromium)"
                )
            });
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromium).is_file(),
            "{chromium} is missing: install Debian's `chromium` package (.ci/run does)"
        );
        Self { dir, chromium }
    }

    /// The directory for the screenshots a person can look at (`target/test-artifacts`),
    /// created.
    pub fn artifacts_dir() -> PathBuf {
        let dir = crate::artifacts::target_dir().join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
        dir
    }

    /// Runs `tests/browser/<script>` with `env` (besides `CHROMIUM` and `TIMEOUT_MS`, the
    /// script's own time limit), prints what it wrote and asserts that it succeeded; returns
    /// its standard output.
    pub async fn run(&self, script: &str, env: &[(&str, OsString)], timeout: Duration) -> String {
        let out = tokio::process::Command::new("node")
            .arg(self.dir.join(script))
            .current_dir(&self.dir)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("CHROMIUM", &self.chromium)
            .env("TIMEOUT_MS", timeout.as_millis().to_string())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run node tests/browser/{script}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}{stderr}");
        assert!(
            out.status.success(),
            "the browser run failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        stdout
    }
}
