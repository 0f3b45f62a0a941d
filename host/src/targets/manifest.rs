//! Target manifests (`<plugins_dir>/<name>.toml`) and the scan of the plugins directory:
//! every key, default and validation of a target, and which files describe which targets
//! (manifests, and bare `.wasm` files that no manifest claims).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, read_toml};
use crate::domain::{TargetClass, TargetName, normalize_host_port};
use crate::plugin::LogBudget;
use crate::plugin::oauth2::OAuth2Config;
use crate::plugin::tls::ClientTls;
use crate::policy::adaptive::ConcurrencyMode;
use crate::policy::breaker::BreakerConfig;
use crate::policy::budget::BudgetConfig;
use crate::policy::retry::RetryPolicy;
use crate::secret::{ConfigValue, Secret, Written};
use crate::targets::credentials;
use crate::targets::filter::Filter;
use crate::targets::routing::{Pattern, Route};

/// A target manifest as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    plugin: Option<String>,
    events: Option<Vec<String>>,
    filter: Option<String>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    memory_mb: Option<u32>,
    instance_reuse: Option<u32>,
    allowed_hosts: Option<Vec<String>>,
    allow_private: Option<bool>,
    class: Option<String>,
    ordered: Option<bool>,
    rate_per_sec: Option<f64>,
    max_batch: Option<u32>,
    linger_ms: Option<u64>,
    concurrency_mode: Option<String>,
    retry: Option<RetryFile>,
    retry_budget: Option<BudgetFile>,
    breaker: Option<BreakerFile>,
    log: Option<LogFile>,
    config: Option<toml::Table>,
    headers: Option<toml::Table>,
    oauth2: Option<toml::Table>,
    tls: Option<toml::Table>,
}

/// A manifest's `[log]` table: the target's per-attempt log budget.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    max_lines: Option<u32>,
    max_bytes: Option<usize>,
    max_line_bytes: Option<usize>,
}

impl LogFile {
    fn into_budget(self) -> Result<LogBudget, String> {
        let d = LogBudget::default();
        let b = LogBudget {
            max_lines: self.max_lines.unwrap_or(d.max_lines),
            max_bytes: self.max_bytes.unwrap_or(d.max_bytes),
            max_line_bytes: self.max_line_bytes.unwrap_or(d.max_line_bytes),
        };
        if b.max_lines > 100_000 {
            return Err("`log.max_lines` must be at most 100000".into());
        }
        if b.max_bytes > 64 * 1024 * 1024 {
            return Err("`log.max_bytes` must be at most 67108864".into());
        }
        if !(16..=1024 * 1024).contains(&b.max_line_bytes) {
            return Err("`log.max_line_bytes` must be between 16 and 1048576".into());
        }
        Ok(b)
    }
}

/// A manifest's `[retry_budget]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    enabled: Option<bool>,
    ratio: Option<f64>,
    min_per_sec: Option<f64>,
    window_ms: Option<u64>,
}

impl BudgetFile {
    fn into_config(self) -> Result<Option<BudgetConfig>, String> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let d = BudgetConfig::default();
        let c = BudgetConfig {
            ratio: self.ratio.unwrap_or(d.ratio),
            min_per_sec: self.min_per_sec.unwrap_or(d.min_per_sec),
            window: self.window_ms.map(Duration::from_millis).unwrap_or(d.window),
        };
        if !(0.0..=10.0).contains(&c.ratio) {
            return Err("`retry_budget.ratio` must be between 0 and 10".into());
        }
        if !(0.0..=1_000_000.0).contains(&c.min_per_sec) {
            return Err("`retry_budget.min_per_sec` must be between 0 and 1000000".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.window) {
            return Err("`retry_budget.window_ms` must be between 1000 and 3600000".into());
        }
        Ok(Some(c))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    /// Former key: consecutive failures (kept working; not combinable with the new keys).
    failures: Option<u32>,
    enabled: Option<bool>,
    failure_rate: Option<f64>,
    window: Option<u32>,
    window_ms: Option<u64>,
    min_attempts: Option<u32>,
    cooldown_ms: Option<u64>,
    probes: Option<u32>,
    retry_after: Option<String>,
}

impl BreakerFile {
    /// `pause_by_default`: what a `Retry-After` pauses when the manifest does not say (the
    /// whole target with a fixed concurrency; only its delivery with an adaptive one, whose
    /// limit slows the target instead).
    fn into_config(self, pause_by_default: bool) -> Result<BreakerConfig, String> {
        let d = BreakerConfig::default();
        let cooldown = self.cooldown_ms.map(Duration::from_millis).unwrap_or(d.cooldown);
        let pause_target = match self.retry_after.as_deref() {
            None => pause_by_default,
            Some("target") => true,
            Some("delivery") => false,
            Some(other) => {
                return Err(format!(
                    "`breaker.retry_after` must be `target` or `delivery`, not `{other}`"
                ));
            }
        };
        let rate_keys = self.enabled.is_some()
            || self.failure_rate.is_some()
            || self.window.is_some()
            || self.window_ms.is_some()
            || self.min_attempts.is_some()
            || self.probes.is_some();
        if let Some(failures) = self.failures {
            if rate_keys {
                return Err("`breaker.failures` (consecutive failures) cannot be combined with \
                            `enabled`, `failure_rate`, `window`, `window_ms`, `min_attempts` or `probes`: \
                            use the new keys only"
                    .into());
            }
            return Ok(BreakerConfig {
                pause_target,
                ..BreakerConfig::consecutive(failures, cooldown)
            });
        }
        let c = BreakerConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            failure_rate: self.failure_rate.unwrap_or(d.failure_rate),
            window: self.window.unwrap_or(d.window),
            window_age: self.window_ms.map(Duration::from_millis).unwrap_or(d.window_age),
            min_attempts: self.min_attempts.unwrap_or(d.min_attempts),
            cooldown,
            probes: self.probes.unwrap_or(d.probes),
            pause_target,
        };
        if !(c.failure_rate > 0.0 && c.failure_rate <= 1.0) {
            return Err("`breaker.failure_rate` must be above 0 and at most 1".into());
        }
        if !(1..=10_000).contains(&c.window) {
            return Err("`breaker.window` must be between 1 and 10000".into());
        }
        if c.min_attempts < 1 || c.min_attempts > c.window {
            return Err("`breaker.min_attempts` must be between 1 and `breaker.window`".into());
        }
        if c.window_age.is_zero() {
            return Err("`breaker.window_ms` must be at least 1".into());
        }
        if !(1..=100).contains(&c.probes) {
            return Err("`breaker.probes` must be between 1 and 100".into());
        }
        Ok(c)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    multiplier: Option<f64>,
}

/// Invocations one plugin instance serves by default before a fresh one replaces it.
pub const DEFAULT_INSTANCE_REUSE: u32 = 1000;

/// One target, fully described: what to run, for which events, under which limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub name: TargetName,
    /// The component file, inside the plugins directory.
    pub plugin_path: PathBuf,
    /// The manifest this came from; `None` for a bare `.wasm`.
    pub manifest_path: Option<PathBuf>,
    /// Event-type patterns this target subscribes to.
    pub events: Vec<Pattern>,
    /// Which events of those types it wants, by payload and headers.
    pub filter: Option<Filter>,
    /// Deadline of one attempt, the plugin's outbound HTTP included. Default 10 s.
    pub timeout: Duration,
    /// Attempts of this target running at once: the most, with an adaptive limit. Default 4.
    pub concurrency: u32,
    /// Whether the limit in force is learned from the receiver (`adaptive`, the default) or
    /// always `concurrency`.
    pub concurrency_mode: ConcurrencyMode,
    /// Linear-memory cap of one plugin instance, in bytes. Default 64 MiB.
    pub memory_bytes: usize,
    /// Invocations one plugin instance may serve, one after another, before a fresh one
    /// replaces it (see `plugin::Binding`); 1 gives every attempt a fresh instance. Default
    /// [`DEFAULT_INSTANCE_REUSE`].
    pub instance_reuse: u32,
    /// `host:port` pairs the plugin may reach, lower-cased. Default: none.
    pub allowed_hosts: Vec<String>,
    /// Names in `allowed_hosts` may resolve to loopback, private and link-local addresses.
    /// Default false: only to public addresses, or to addresses listed in `allowed_hosts`.
    pub allow_private: bool,
    /// How the target fails: its default schedule, deadline and claim priority.
    pub class: TargetClass,
    pub retry: RetryPolicy,
    /// How much retries may add to first attempts while the receiver is under pressure;
    /// `None`: no budget.
    pub retry_budget: Option<BudgetConfig>,
    pub breaker: BreakerConfig,
    /// What one attempt may write to the log.
    pub log_budget: LogBudget,
    /// Per-key FIFO: a delivery waits for every earlier one with the same ordering key.
    pub ordered: bool,
    /// Attempts per second at most (a smooth token bucket); `None` for no limit.
    pub rate_per_sec: Option<f64>,
    /// Batched class: most events per call.
    pub max_batch: u32,
    /// Batched class: how long to wait for a batch to fill.
    pub linger: Duration,
    /// The manifest's `[headers]`: set by the host on every request the plugin sends.
    pub headers: Vec<(String, ConfigValue)>,
    /// The manifest's `[oauth2]`: client credentials the host gets a token with.
    pub oauth2: Option<OAuth2Config>,
    /// The manifest's `[tls]`: the client certificate and private CA of its HTTP client.
    pub tls: Option<Arc<ClientTls>>,
    /// The manifest's `[config]` table, flattened to strings for the plugin's `config.get`;
    /// values written `{ env = … }` or `{ file = … }` are read (see `crate::secret`).
    pub config: BTreeMap<String, ConfigValue>,
}

impl TargetSpec {
    /// Its `[headers]` as the host sends them: parsed (the load checked each) and marked
    /// sensitive, so that no debug output of the HTTP client shows a value.
    pub fn held_headers(&self) -> Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
        self.headers
            .iter()
            .filter_map(|(name, value)| {
                let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
                let mut value = reqwest::header::HeaderValue::from_str(value.as_str()).ok()?;
                value.set_sensitive(true);
                Some((name, value))
            })
            .collect()
    }

    /// This target's line of the subscription table.
    pub fn route(&self) -> Route {
        Route {
            target: self.name.clone(),
            events: self.events.clone(),
            filter: self.filter.clone(),
        }
    }

    /// The target a manifest's text describes, as if read from `<dir>/<name>.toml`.
    pub fn from_toml(name: TargetName, text: &str, dir: &Path) -> Result<Self, String> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{name}.toml"));
        Self::from_manifest(name, file, dir, Some(&path))
    }

    fn from_manifest(
        name: TargetName,
        file: ManifestFile,
        dir: &Path,
        manifest: Option<&Path>,
    ) -> Result<Self, String> {
        let plugin = file.plugin.unwrap_or_else(|| format!("{name}.wasm"));
        let plugin_rel = Path::new(&plugin);
        if plugin_rel.components().count() != 1 || plugin_rel.is_absolute() {
            return Err(format!(
                "`plugin` must name a file directly inside the plugins directory, not `{plugin}`"
            ));
        }
        let events = file
            .events
            .unwrap_or_else(|| vec!["*".to_owned()])
            .iter()
            .map(|p| p.parse::<Pattern>().map_err(|e| format!("`events`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err("`events` must list at least one pattern".into());
        }
        let filter = file
            .filter
            .as_deref()
            .map(Filter::compile)
            .transpose()
            .map_err(|e| e.to_string())?;
        let class = match file.class.as_deref() {
            None => TargetClass::Critical,
            Some(c) => c
                .parse::<TargetClass>()
                .map_err(|_| format!("`class` must be one of critical, best-effort, slow, batched, not `{c}`"))?,
        };
        let timeout_ms = file.timeout_ms.unwrap_or(class.default_timeout().as_millis() as u64);
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err("`timeout_ms` must be between 1 and 3600000".into());
        }
        let concurrency = file.concurrency.unwrap_or(4);
        if !(1..=1024).contains(&concurrency) {
            return Err("`concurrency` must be between 1 and 1024".into());
        }
        let memory_mb = file.memory_mb.unwrap_or(64);
        if !(1..=4096).contains(&memory_mb) {
            return Err("`memory_mb` must be between 1 and 4096".into());
        }
        let instance_reuse = file.instance_reuse.unwrap_or(DEFAULT_INSTANCE_REUSE);
        if !(1..=1_000_000).contains(&instance_reuse) {
            return Err("`instance_reuse` must be between 1 and 1000000".into());
        }
        let allowed_hosts = file
            .allowed_hosts
            .unwrap_or_default()
            .into_iter()
            .map(|h| normalize_host_port(&h).ok_or_else(|| format!("`allowed_hosts`: `{h}` is not `host:port`")))
            .collect::<Result<Vec<_>, _>>()?;
        let defaults = class.default_retry();
        let r = file.retry.unwrap_or_default();
        let retry = RetryPolicy {
            multiplier: r.multiplier.unwrap_or(defaults.multiplier),
            jitter: defaults.jitter,
            give_up: defaults.give_up,
            max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts),
            initial_backoff: r
                .initial_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.initial_backoff),
            max_backoff: r
                .max_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.max_backoff),
        };
        if retry.max_attempts == 0 {
            return Err("`retry.max_attempts` must be at least 1".into());
        }
        if retry.initial_backoff > retry.max_backoff {
            return Err("`retry.initial_backoff_ms` must not exceed `retry.max_backoff_ms`".into());
        }
        if !(1.0..=100.0).contains(&retry.multiplier) {
            return Err("`retry.multiplier` must be between 1 and 100".into());
        }
        let concurrency_mode = match file.concurrency_mode.as_deref() {
            None => ConcurrencyMode::default(),
            Some(m) => m.parse::<ConcurrencyMode>()?,
        };
        let breaker = file
            .breaker
            .unwrap_or_default()
            .into_config(concurrency_mode == ConcurrencyMode::Fixed)?;
        let retry_budget = file.retry_budget.unwrap_or_default().into_config()?;
        let log_budget = file.log.unwrap_or_default().into_budget()?;
        if let Some(rate) = file.rate_per_sec
            && !(rate > 0.0 && rate <= 1_000_000.0)
        {
            return Err("`rate_per_sec` must be above 0 and at most 1000000".into());
        }
        let batch_keys = file.max_batch.is_some() || file.linger_ms.is_some();
        if batch_keys && class != TargetClass::Batched {
            return Err("`max_batch` and `linger_ms` apply only to `class = \"batched\"`".into());
        }
        let max_batch = file.max_batch.unwrap_or(100);
        if !(1..=10_000).contains(&max_batch) {
            return Err("`max_batch` must be between 1 and 10000".into());
        }
        let linger = Duration::from_millis(file.linger_ms.unwrap_or(1_000));
        let mut config = BTreeMap::new();
        for (k, v) in file.config.unwrap_or_default() {
            if let Some(list) = secret_list(&v, dir).map_err(|e| format!("`config.{k}`: {e}"))? {
                config.insert(k, ConfigValue::Secret(Secret::new(list)));
                continue;
            }
            let value = match Written::from_toml(&v).map_err(|e| format!("`config.{k}`: {e}"))? {
                Some(written) => ConfigValue::Secret(Secret::new(
                    written.resolve(dir).map_err(|e| format!("`config.{k}`: {e}"))?,
                )),
                None => ConfigValue::Plain(match v {
                    toml::Value::String(s) => s,
                    other => serde_json::to_string(&other).unwrap_or_else(|_| other.to_string()),
                }),
            };
            config.insert(k, value);
        }
        let headers = credentials::held_headers(file.headers.unwrap_or_default(), dir)?;
        let oauth2 = file
            .oauth2
            .map(|t| credentials::oauth2(t, dir, &allowed_hosts))
            .transpose()?;
        let tls = file.tls.map(|t| credentials::tls(t, dir)).transpose()?.map(Arc::new);
        Ok(Self {
            name,
            headers,
            oauth2,
            tls,
            plugin_path: dir.join(plugin_rel),
            manifest_path: manifest.map(Path::to_owned),
            events,
            filter,
            timeout: Duration::from_millis(timeout_ms),
            concurrency,
            concurrency_mode,
            memory_bytes: memory_mb as usize * 1024 * 1024,
            instance_reuse,
            allowed_hosts,
            allow_private: file.allow_private.unwrap_or(false),
            class,
            retry,
            retry_budget,
            breaker,
            log_budget,
            ordered: file.ordered.unwrap_or(false),
            rate_per_sec: file.rate_per_sec,
            max_batch,
            linger,
            config,
        })
    }
}

/// The `plugin = "…"` a manifest names, read leniently: from the TOML if it parses at all
/// (unknown keys and wrong types do not matter here), else from a `plugin = "…"` line.
fn claimed_plugin(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    if let Ok(table) = text.parse::<toml::Table>() {
        return table.get("plugin").and_then(|v| v.as_str()).map(str::to_owned);
    }
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "plugin").then(|| value.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// What scanning the plugins directory found: the targets it describes, and every file
/// that could not be used, with the reason.
#[derive(Debug, Default)]
pub struct TargetScan {
    pub targets: Vec<TargetSpec>,
    pub errors: Vec<ConfigError>,
}

/// Reads every manifest in `dir`, and turns every `.wasm` that no manifest refers to into a
/// bare target with defaults. A manifest's target name is its file stem.
pub fn scan_targets(dir: &Path) -> Result<TargetScan, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut manifests = Vec::new();
    let mut wasm_files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => manifests.push(path),
            Some("wasm") => wasm_files.push(path),
            _ => {}
        }
    }
    manifests.sort();
    wasm_files.sort();

    let mut scan = TargetScan::default();
    let mut referenced = HashSet::new();
    for path in manifests {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        referenced.insert(stem.clone());
        let parsed = stem
            .parse::<TargetName>()
            .map_err(|e| ConfigError::invalid(&path, e.0))
            .and_then(|name| {
                // Whatever else is wrong with it, a manifest still claims its plugin file, so
                // that file never turns into a bare catch-all target.
                if let Some(plugin) = claimed_plugin(&path) {
                    referenced.insert(plugin.trim_end_matches(".wasm").to_owned());
                }
                let file: ManifestFile = read_toml(&path)?;
                if let Some(p) = &file.plugin {
                    referenced.insert(p.trim_end_matches(".wasm").to_owned());
                }
                TargetSpec::from_manifest(name, file, dir, Some(&path)).map_err(|m| ConfigError::invalid(&path, m))
            });
        match parsed {
            Ok(spec) => scan.targets.push(spec),
            Err(e) => scan.errors.push(e),
        }
    }
    for path in wasm_files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if referenced.contains(stem) {
            continue;
        }
        match stem.parse::<TargetName>() {
            Ok(name) => match TargetSpec::from_manifest(name, ManifestFile::default(), dir, None) {
                Ok(spec) => scan.targets.push(spec),
                Err(m) => scan.errors.push(ConfigError::invalid(&path, m)),
            },
            Err(e) => scan.errors.push(ConfigError::invalid(&path, e.0)),
        }
    }
    scan.targets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scan)
}

/// A `[config]` list with a value read from the environment or a file among its items (such as
/// `secrets = [{ env = "NEW" }, { env = "OLD" }]` during a key rotation), as the JSON array of
/// its resolved strings the plugin reads; `None` for any other value. Such a list is a secret
/// as a whole.
fn secret_list(value: &toml::Value, dir: &Path) -> Result<Option<String>, String> {
    let toml::Value::Array(items) = value else {
        return Ok(None);
    };
    let mut any_written = false;
    let mut resolved = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match Written::from_toml(item).map_err(|e| format!("[{i}]: {e}"))? {
            Some(written) => {
                any_written = true;
                resolved.push(written.resolve(dir).map_err(|e| format!("[{i}]: {e}"))?);
            }
            None => match item {
                toml::Value::String(s) => resolved.push(s.clone()),
                _ => return Ok(None),
            },
        }
    }
    Ok(any_written.then(|| serde_json::to_string(&resolved).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_with_values_from_the_environment_is_resolved_as_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.key"), "whsec_OLD\n").unwrap();
        // SAFETY: a variable of this test's own name, read by this test only.
        unsafe { std::env::set_var("OUTBOXD_TEST_ROTATION_NEW", "whsec_NEW") };
        let list: toml::Value = toml::from_str::<toml::Table>(
            r#"v = [{ env = "OUTBOXD_TEST_ROTATION_NEW" }, { file = "old.key" }, "whsec_X"]"#,
        )
        .unwrap()["v"]
            .clone();
        let json = secret_list(&list, dir.path()).unwrap().unwrap();
        assert_eq!(json, r#"["whsec_NEW","whsec_OLD","whsec_X"]"#);
        let plain: toml::Value = toml::Value::Array(vec!["a".into(), "b".into()]);
        assert_eq!(secret_list(&plain, dir.path()).unwrap(), None);
        let unset: toml::Value =
            toml::from_str::<toml::Table>(r#"v = [{ env = "OUTBOXD_TEST_SURELY_UNSET_VAR" }]"#).unwrap()["v"].clone();
        let e = secret_list(&unset, dir.path()).unwrap_err();
        assert!(
            e.starts_with("[0]:") && e.contains("OUTBOXD_TEST_SURELY_UNSET_VAR"),
            "{e}"
        );
    }

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn manifests_bare_wasm_and_errors_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "webhook.wasm", "");
        write(d, "solo.wasm", "");
        write(d, "other.wasm", "");
        write(d, "lonely.wasm", "");
        write(
            d,
            "crm.toml",
            r#"
plugin = "webhook.wasm"
events = ["order.*"]
timeout_ms = 500
allowed_hosts = ["LocalHost:9000"]
[retry]
max_attempts = 3
[config]
url = "http://localhost:9000/crm"
retries = 2
"#,
        );
        // Broken manifests still claim their plugin files: those never become bare targets.
        write(d, "broken.toml", "plugin = \"solo.wasm\"\nevnts = [\"x\"]\n");
        write(d, "garbled.toml", "plugin = \"other.wasm\"\nevents = [\n");
        let scan = scan_targets(d).unwrap();
        let names: Vec<_> = scan.targets.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["crm", "lonely"], "only an unclaimed .wasm is a bare target");
        let crm = &scan.targets[0];
        assert_eq!(crm.plugin_path, d.join("webhook.wasm"));
        assert_eq!(crm.timeout, Duration::from_millis(500));
        assert_eq!(crm.allowed_hosts, ["localhost:9000"]);
        assert_eq!(crm.retry.max_attempts, 3);
        assert_eq!(crm.retry.initial_backoff, RetryPolicy::default().initial_backoff);
        assert_eq!(crm.class, TargetClass::Critical);
        assert_eq!(crm.config["url"].as_str(), "http://localhost:9000/crm");
        assert_eq!(crm.config["retries"].as_str(), "2");
        let lonely = &scan.targets[1];
        assert!(lonely.manifest_path.is_none());
        assert!(lonely.events[0].matches("anything"));

        let errors: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors.iter().any(|e| e.contains("broken.toml") && e.contains("evnts")),
            "{errors:#?}"
        );
        assert!(errors.iter().any(|e| e.contains("garbled.toml")), "{errors:#?}");
    }

    #[test]
    fn manifest_values_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.toml", "plugin = \"../x.wasm\"\n");
        write(d, "b.toml", "allowed_hosts = [\"example.com\"]\n");
        write(d, "c.toml", "[retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 5\n");
        write(d, "d.toml", "concurrency = 0\n");
        write(d, "Bad.toml", "");
        let scan = scan_targets(d).unwrap();
        assert!(scan.targets.is_empty());
        let errors: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("a.toml") && e.contains("plugin")));
        assert!(errors.iter().any(|e| e.contains("b.toml") && e.contains("host:port")));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("c.toml") && e.contains("initial_backoff_ms"))
        );
        assert!(errors.iter().any(|e| e.contains("d.toml") && e.contains("concurrency")));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("Bad.toml") && e.contains("target name"))
        );
    }

    #[test]
    fn breaker_and_log_keys_old_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "rate.toml",
            "[breaker]\nfailure_rate = 0.6\nwindow = 40\nmin_attempts = 10\nprobes = 2\nretry_after = \"delivery\"\n\
             [log]\nmax_lines = 5\nmax_bytes = 1000\n",
        );
        write(d, "old.toml", "[breaker]\nfailures = 3\ncooldown_ms = 1000\n");
        write(d, "mixed.toml", "[breaker]\nfailures = 3\nfailure_rate = 0.5\n");
        write(d, "badrate.toml", "[breaker]\nfailure_rate = 1.5\n");
        write(d, "badlog.toml", "[log]\nmax_line_bytes = 1\n");
        let scan = scan_targets(d).unwrap();
        let by_name = |n: &str| scan.targets.iter().find(|t| t.name.as_str() == n).unwrap();
        let rate = by_name("rate");
        assert_eq!(rate.breaker.failure_rate, 0.6);
        assert_eq!(
            (rate.breaker.window, rate.breaker.min_attempts, rate.breaker.probes),
            (40, 10, 2)
        );
        assert!(!rate.breaker.pause_target);
        assert_eq!(rate.log_budget.max_lines, 5);
        assert_eq!(rate.log_budget.max_bytes, 1000);
        assert_eq!(rate.log_budget.max_line_bytes, LogBudget::default().max_line_bytes);
        assert_eq!(
            by_name("old").breaker,
            BreakerConfig {
                // With an adaptive limit (the default) a `Retry-After` delays its delivery.
                pause_target: false,
                ..BreakerConfig::consecutive(3, Duration::from_secs(1))
            },
            "the former key keeps its meaning"
        );
        let errors: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("mixed.toml") && e.contains("failure_rate")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("badrate.toml") && e.contains("failure_rate")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("badlog.toml") && e.contains("max_line_bytes")),
            "{errors:#?}"
        );
    }

    #[test]
    fn concurrency_mode_and_retry_budget() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "plain.toml", "concurrency = 16\n");
        write(d, "fixed.toml", "concurrency_mode = \"fixed\"\n");
        write(d, "paused.toml", "[breaker]\nretry_after = \"target\"\n");
        write(
            d,
            "budget.toml",
            "[retry_budget]\nratio = 0.5\nmin_per_sec = 2\nwindow_ms = 5000\n",
        );
        write(d, "nobudget.toml", "[retry_budget]\nenabled = false\n");
        write(d, "badmode.toml", "concurrency_mode = \"elastic\"\n");
        write(d, "badratio.toml", "[retry_budget]\nratio = -1\n");
        write(d, "badkey.toml", "[retry_budget]\nration = 1\n");
        let scan = scan_targets(d).unwrap();
        let by_name = |n: &str| scan.targets.iter().find(|t| t.name.as_str() == n).unwrap();
        let plain = by_name("plain");
        assert_eq!(plain.concurrency_mode, ConcurrencyMode::Adaptive, "adaptive by default");
        assert!(!plain.breaker.pause_target, "a Retry-After delays its own delivery");
        assert_eq!(plain.retry_budget, Some(BudgetConfig::default()), "a budget by default");
        let fixed = by_name("fixed");
        assert_eq!(fixed.concurrency_mode, ConcurrencyMode::Fixed);
        assert!(fixed.breaker.pause_target, "fixed keeps the target-wide pause");
        assert!(by_name("paused").breaker.pause_target, "said explicitly");
        assert_eq!(
            by_name("budget").retry_budget,
            Some(BudgetConfig {
                ratio: 0.5,
                min_per_sec: 2.0,
                window: Duration::from_secs(5)
            })
        );
        assert_eq!(by_name("nobudget").retry_budget, None);
        let errors: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        for (file, text) in [
            ("badmode.toml", "`adaptive` or `fixed`"),
            ("badratio.toml", "retry_budget.ratio"),
            ("badkey.toml", "unknown field `ration`"),
        ] {
            assert!(
                errors.iter().any(|e| e.contains(file) && e.contains(text)),
                "{file}: {errors:#?}"
            );
        }
    }

    #[test]
    fn config_values_may_be_read_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "key.txt", "whsec_c2VjcmV0\n");
        let key = d.join("key.txt").display().to_string();
        write(
            d,
            "good.toml",
            &format!("[config]\nurl = \"http://x\"\nsecret = {{ file = {key:?} }}\n"),
        );
        write(
            d,
            "noenv.toml",
            "[config]\nsecret = { env = \"OUTBOXD_TEST_SURELY_UNSET_VARIABLE\" }\n",
        );
        write(
            d,
            "nofile.toml",
            "[config]\nsecret = { file = \"/nonexistent/outboxd-secret\" }\n",
        );
        write(d, "extra.toml", "[config]\nsecret = { env = \"X\", other = 1 }\n");
        let scan = scan_targets(d).unwrap();
        let good = &scan.targets[0];
        assert_eq!(
            good.config["secret"].as_str(),
            "whsec_c2VjcmV0",
            "one trailing newline trimmed"
        );
        assert!(!format!("{good:?}").contains("c2VjcmV0"), "never in Debug output");
        assert_eq!(good.config["url"], ConfigValue::Plain("http://x".into()));
        let errors: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        for (file, text) in [
            (
                "noenv.toml",
                "`config.secret`: environment variable `OUTBOXD_TEST_SURELY_UNSET_VARIABLE` is not set",
            ),
            (
                "nofile.toml",
                "`config.secret`: cannot read /nonexistent/outboxd-secret",
            ),
            ("extra.toml", "`config.secret`: unknown key `other`"),
        ] {
            assert!(
                errors.iter().any(|e| e.contains(file) && e.contains(text)),
                "{file}: {errors:#?}"
            );
        }
    }
}
