//! [`Target`]: a target manifest as a test writes it (`plugins.d/<name>.toml`), with its
//! `[retry]`, `[breaker]` and `[retry_budget]` tables.

use serde::Serialize;

/// The `[retry]` table of a target manifest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Retry {
    /// `max_attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `initial_backoff_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    /// `max_backoff_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// `multiplier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// The `[breaker]` table of a target manifest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Breaker {
    /// `failures`: consecutive retryable failures that open the breaker (0 disables it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// `cooldown_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    /// `retry_after`: what a receiver's `Retry-After` pauses, `target` or `delivery`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// The `[retry_budget]` table of a target manifest: how much retries may add to first
/// attempts while the receiver is under pressure.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetryBudget {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `ratio`: retries per first attempt over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// `min_per_sec`: retries a second allowed whatever the first attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_sec: Option<f64>,
    /// `window_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// A target manifest (`plugins.d/<name>.toml`), serialised as TOML.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Component file, relative to the plugins dir (e.g. `webhook.wasm`).
    pub plugin: String,
    /// Event type globs.
    pub events: Vec<String>,
    /// `filter`: a CEL expression over `payload`, `headers` and `event_type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `concurrency`: the ceiling of the adaptive limit, or the fixed number of attempts at
    /// once with `concurrency_mode = "fixed"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `concurrency_mode`: `adaptive` (the default) or `fixed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_mode: Option<String>,
    /// `memory_mb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// `allowed_hosts` (`host:port`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// `allow_private`: names in `allowed_hosts` may resolve to private addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_private: Option<bool>,
    /// `class`: `critical`, `best-effort`, `slow` or `batched`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// `ordered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// `rate_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// `max_batch` (batched class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// `linger_ms` (batched class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// `instance_reuse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// `[retry]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// `[breaker]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// `[retry_budget]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// `[config]`, handed to the plugin.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    /// `[headers]`, set by the host on every request of the plugin.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub headers: toml::Table,
    /// `[oauth2]`: client credentials the host gets a bearer token with.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub oauth2: toml::Table,
    /// `[tls]`: the client certificate and private CA of the target's requests.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub tls: toml::Table,
}

impl Target {
    /// A target of component `plugin` receiving every event type.
    pub fn new(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            events: vec!["*".to_owned()],
            filter: None,
            timeout_ms: None,
            concurrency: None,
            concurrency_mode: None,
            memory_mb: None,
            allowed_hosts: Vec::new(),
            allow_private: None,
            class: None,
            ordered: None,
            rate_per_sec: None,
            max_batch: None,
            linger_ms: None,
            instance_reuse: None,
            retry: None,
            breaker: None,
            retry_budget: None,
            config: toml::Table::new(),
            headers: toml::Table::new(),
            oauth2: toml::Table::new(),
            tls: toml::Table::new(),
        }
    }

    /// A `webhook.wasm` target posting to `url`, with `url`'s `host:port`
    /// allowed.
    pub fn webhook(url: &str) -> Self {
        let mut t = Self::new("webhook.wasm").config("url", url);
        if let Some(authority) = authority_of(url) {
            t.allowed_hosts.push(authority);
        }
        t
    }

    /// A `webhook_batch.wasm` target (world `batch-target`, `class = "batched"`)
    /// posting batches to `url`, with `url`'s `host:port` allowed.
    pub fn webhook_batch(url: &str) -> Self {
        let mut t = Self::webhook(url).class("batched");
        t.plugin = "webhook_batch.wasm".to_owned();
        t
    }

    /// A `misbehave.wasm` target in `mode` (`loop`, `call`, `trap`, `grow`, `ok`, `permanent`,
    /// `count`, …: see `plugins/misbehave`).
    pub fn misbehave(mode: &str) -> Self {
        Self::new("misbehave.wasm").config("mode", mode)
    }

    /// Replace the event globs.
    pub fn events(mut self, globs: &[&str]) -> Self {
        self.events = globs.iter().map(|g| (*g).to_owned()).collect();
        self
    }

    /// Set `filter`.
    pub fn filter(mut self, expression: &str) -> Self {
        self.filter = Some(expression.to_owned());
        self
    }

    /// Set `timeout_ms`.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Set `concurrency`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Set `concurrency_mode`: `adaptive` or `fixed`.
    pub fn concurrency_mode(mut self, mode: &str) -> Self {
        self.concurrency_mode = Some(mode.to_owned());
        self
    }

    /// Set the whole `[retry_budget]` table.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = Some(budget);
        self
    }

    /// Set `memory_mb`.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// Add a `host:port` to `allowed_hosts`.
    pub fn allow(mut self, authority: &str) -> Self {
        self.allowed_hosts.push(authority.to_owned());
        self
    }

    /// Set `allow_private`.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = Some(allow);
        self
    }

    /// Replace `allowed_hosts`.
    pub fn allowed_hosts(mut self, hosts: &[&str]) -> Self {
        self.allowed_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        self
    }

    /// Set the whole `[retry]` table.
    pub fn retry(mut self, max_attempts: u32, initial_backoff_ms: u64, max_backoff_ms: u64) -> Self {
        self.retry = Some(Retry {
            max_attempts: Some(max_attempts),
            initial_backoff_ms: Some(initial_backoff_ms),
            max_backoff_ms: Some(max_backoff_ms),
            multiplier: None,
        });
        self
    }

    /// Set `class` (`critical`, `best-effort`, `slow`, `batched`).
    pub fn class(mut self, class: &str) -> Self {
        self.class = Some(class.to_owned());
        self
    }

    /// Set `ordered`.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = Some(ordered);
        self
    }

    /// Set `rate_per_sec`.
    pub fn rate_per_sec(mut self, rate: f64) -> Self {
        self.rate_per_sec = Some(rate);
        self
    }

    /// Set `max_batch` and `linger_ms` (batched class).
    pub fn batch(mut self, max_batch: u32, linger_ms: u64) -> Self {
        self.max_batch = Some(max_batch);
        self.linger_ms = Some(linger_ms);
        self
    }

    /// Set `instance_reuse` (invocations one plugin instance may serve).
    pub fn instance_reuse(mut self, n: u32) -> Self {
        self.instance_reuse = Some(n);
        self
    }

    /// Set the `[breaker]` table's `failures` and `cooldown_ms`.
    pub fn breaker(mut self, failures: u32, cooldown_ms: u64) -> Self {
        let breaker = self.breaker.get_or_insert_with(Breaker::default);
        breaker.failures = Some(failures);
        breaker.cooldown_ms = Some(cooldown_ms);
        self
    }

    /// Set `[breaker] failures` alone (the cool-down stays the default).
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).failures = Some(failures);
        self
    }

    /// Set `[breaker] cooldown_ms` alone (the failure threshold stays the default).
    pub fn breaker_cooldown_ms(mut self, cooldown_ms: u64) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).cooldown_ms = Some(cooldown_ms);
        self
    }

    /// Set `[breaker] retry_after`: what a receiver's `Retry-After` pauses, `target` or
    /// `delivery`.
    pub fn breaker_retry_after(mut self, what: &str) -> Self {
        self.breaker.get_or_insert_with(Breaker::default).retry_after = Some(what.to_owned());
        self
    }

    /// Quick retries for tests: `initial_backoff_ms = 50`, `max_backoff_ms = 200`.
    pub fn fast_retry(self, max_attempts: u32) -> Self {
        self.retry(max_attempts, 50, 200)
    }

    /// Set a `[config]` value.
    pub fn config(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.config.insert(key.to_owned(), value.into());
        self
    }

    /// Set a `[headers]` value.
    pub fn header(mut self, name: &str, value: impl Into<toml::Value>) -> Self {
        self.headers.insert(name.to_owned(), value.into());
        self
    }

    /// Set an `[oauth2]` value.
    pub fn oauth2(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.oauth2.insert(key.to_owned(), value.into());
        self
    }

    /// Set a `[tls]` value.
    pub fn tls(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.tls.insert(key.to_owned(), value.into());
        self
    }

    /// Set `[config] secret`.
    pub fn secret(self, secret: &str) -> Self {
        self.config("secret", secret)
    }

    /// The manifest text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest serialises to TOML")
    }
}

/// `host:port` of an `http://` URL (port 80/443 implied if absent).
fn authority_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() {
        return None;
    }
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some(authority.to_owned())
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        Some(format!("{authority}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_url() {
        assert_eq!(
            authority_of("http://127.0.0.1:9000/crm").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(
            authority_of("https://example.com/x").as_deref(),
            Some("example.com:443")
        );
    }

    #[test]
    fn manifest_serialises_tables_last() {
        let t = Target::webhook("http://127.0.0.1:9/a")
            .events(&["order.*"])
            .fast_retry(5)
            .secret("whsec_AAAA");
        let text = t.to_toml();
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["plugin"].as_str(), Some("webhook.wasm"));
        assert_eq!(parsed["retry"]["initial_backoff_ms"].as_integer(), Some(50));
        assert_eq!(parsed["config"]["url"].as_str(), Some("http://127.0.0.1:9/a"));
        assert_eq!(parsed["allowed_hosts"][0].as_str(), Some("127.0.0.1:9"));
        assert!(parsed.get("timeout_ms").is_none());
    }

    #[test]
    fn breaker_keys_are_set_one_by_one_or_together() {
        let t = Target::webhook("http://127.0.0.1:9/b")
            .breaker_failures(7)
            .breaker_retry_after("delivery");
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(7));
        assert_eq!(parsed["breaker"]["retry_after"].as_str(), Some("delivery"));
        assert!(parsed["breaker"].get("cooldown_ms").is_none());
        let t = t.breaker_cooldown_ms(500).breaker(3, 1000);
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(3));
        assert_eq!(parsed["breaker"]["cooldown_ms"].as_integer(), Some(1000));
        assert_eq!(parsed["breaker"]["retry_after"].as_str(), Some("delivery"));
    }

    #[test]
    fn manifest_serialises_failure_class_keys() {
        let t = Target::webhook_batch("http://127.0.0.1:9/b")
            .batch(10, 300)
            .ordered(true)
            .fast_retry(5)
            .breaker(3, 1000);
        let parsed: toml::Table = t.to_toml().parse().expect("valid TOML");
        assert_eq!(parsed["plugin"].as_str(), Some("webhook_batch.wasm"));
        assert_eq!(parsed["class"].as_str(), Some("batched"));
        assert_eq!(parsed["max_batch"].as_integer(), Some(10));
        assert_eq!(parsed["linger_ms"].as_integer(), Some(300));
        assert_eq!(parsed["ordered"].as_bool(), Some(true));
        assert_eq!(parsed["breaker"]["failures"].as_integer(), Some(3));
        assert_eq!(parsed["breaker"]["cooldown_ms"].as_integer(), Some(1000));
        assert_eq!(parsed["retry"]["max_attempts"].as_integer(), Some(5));
        assert!(parsed.get("rate_per_sec").is_none());
    }
}
