//! `outboxd config check`: loads `outboxd.toml`, every target manifest and every plugin file
//! the way `serve` does at start (a registry reload, compiling without the compile cache),
//! starts nothing and writes nothing, and reports every error found rather than the first.

use std::fmt::Write as _;

use super::ConfigArg;
use crate::plugin::Runtime;
use crate::targets::Registry;

/// What the check found.
#[derive(Debug, Default)]
pub struct ConfigCheck {
    /// Every error, one message each (naming its file; a parse error's quotes its line).
    pub errors: Vec<String>,
    /// What would run: the configuration file and the targets.
    pub summary: String,
}

impl ConfigCheck {
    /// The report: the errors, or the summary when there are none.
    pub fn report(&self) -> String {
        if self.errors.is_empty() {
            return format!("ok: {}\n", self.summary);
        }
        let mut out = String::new();
        for e in &self.errors {
            // A parse error quotes its line over several: those are indented under it.
            let _ = writeln!(out, "error: {}", e.trim_end().replace('\n', "\n  "));
        }
        let n = self.errors.len();
        let _ = writeln!(out, "{n} error{} found", if n == 1 { "" } else { "s" });
        out
    }
}

/// Checks the configuration `config` names.
pub async fn config_check(config: &ConfigArg) -> ConfigCheck {
    let mut check = ConfigCheck::default();
    let file = config.path();
    let arg = config.clone();
    let service = match tokio::task::spawn_blocking(move || arg.load()).await {
        Ok(Ok(service)) => service,
        Ok(Err(e)) => {
            check.errors.push(e.to_string());
            return check;
        }
        Err(e) => {
            check.errors.push(format!("the loading task failed: {e}"));
            return check;
        }
    };
    let runtime = match Runtime::new(None) {
        Ok(runtime) => runtime,
        Err(e) => {
            check.errors.push(format!("cannot start the plugin engine: {e}"));
            return check;
        }
    };
    let registry = Registry::new(runtime, service.plugins_dir.clone());
    let snapshot = registry.reload().await;
    check.errors.extend(snapshot.errors.iter().map(|e| e.message.clone()));
    let names: Vec<&str> = snapshot.targets.keys().map(|n| n.as_str()).collect();
    check.summary = format!(
        "{}; {} target{} in {} ({}); {} source{}",
        file.map_or_else(|| "built-in defaults".to_owned(), |p| p.display().to_string()),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        service.plugins_dir.display(),
        names.join(", "),
        service.sources.len(),
        if service.sources.len() == 1 { "" } else { "s" },
    );
    check
}
