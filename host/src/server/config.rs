//! The service's configuration file, `outboxd.toml`: every key, its default and its
//! validation; relative paths are resolved against the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::auth::{ApiFile, AuthConfig};
use crate::config::{ConfigError, read_toml};
use crate::secret::Written;
use crate::source::SourceConfig;
use crate::source::config::SourceFile;
use crate::store::DatabaseLocation;
use crate::store::retention::RetentionConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    listen: Option<SocketAddr>,
    database: Option<Written>,
    plugins_dir: Option<PathBuf>,
    max_payload_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    lease_margin_ms: Option<u64>,
    cache_dir: Option<PathBuf>,
    watch_plugins: Option<bool>,
    reload_debounce_ms: Option<u64>,
    max_in_flight: Option<usize>,
    strict_start: Option<bool>,
    retention: Option<String>,
    idempotency_retention: Option<String>,
    payload_retention: Option<String>,
    retention_batch: Option<usize>,
    retention_interval_ms: Option<u64>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    api: Option<ApiFile>,
    sources: Option<Vec<SourceFile>>,
}

/// How `serve` writes its log lines to stderr (`log_format`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers: `timestamp`, `level`, `target`, `fields`
    /// (with `message`) and the spans.
    Json,
}

/// The service configuration, with defaults applied and paths resolved.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Address of the HTTP API. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The database: a SQLite file (default `outboxd.db`) or a PostgreSQL URL.
    pub database: DatabaseLocation,
    /// The directory holding plugins and target manifests. Default `plugins.d`.
    pub plugins_dir: PathBuf,
    /// Largest accepted event payload (serialized JSON), in bytes. Default 256 KiB.
    pub max_payload_bytes: usize,
    /// Largest accepted request body (a batch), in bytes. Default 8 MiB.
    pub max_request_bytes: usize,
    /// How long a stopping host lets in-flight attempts finish. Default 10 s.
    pub shutdown_grace: Duration,
    /// How often idle lanes look for due deliveries written by other processes. Default 250 ms.
    pub poll_interval: Duration,
    /// How much longer than a target's timeout a claim's lease lasts. Default 30 s.
    pub lease_margin: Duration,
    /// Where compiled plugins are cached across restarts. Default `outboxd-cache`.
    pub cache_dir: PathBuf,
    /// Whether to reload when files in `plugins_dir` change. Default true.
    pub watch_plugins: bool,
    /// How long the plugins directory must be quiet before a reload. Default 200 ms.
    pub reload_debounce: Duration,
    /// Attempts running at once across all non-slow targets (the shared pool). When it is
    /// saturated, critical targets are served before batched, then best-effort. Default 64.
    pub max_in_flight: usize,
    /// Refuse to start when any file in `plugins_dir` cannot be loaded (`serve --strict`).
    /// Default false: start with what loads, hold the rest.
    pub strict_start: bool,
    /// Retention of finished events and of the idempotency ledger.
    pub retention: RetentionConfig,
    /// `[api]`: tokens and their scopes, endpoints left open. Default: no tokens (open API,
    /// loopback addresses only).
    pub api: AuthConfig,
    /// `[api] allowed_hosts`: names the API answers to beyond the listen address and loopback
    /// names (see `api::browser`). Default none.
    pub allowed_hosts: Vec<String>,
    /// The HTTP server's limits (`[api]`).
    pub http: HttpLimits,
    /// `[[sources]]`: application outbox tables to relay (see `source/config.rs`).
    pub sources: Vec<SourceConfig>,
    /// `log_format`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `log_level`: a level (`info`, the default) or a filter such as
    /// `"info,outboxd::dispatch=debug"`; see [`log_filter`]. `OUTBOXD_LOG` overrides it at start.
    pub log_level: String,
}

/// The tracing filter of a `log_level`: the engine's own crates stay at `warn` unless named.
pub fn log_filter(level: &str) -> String {
    format!("{level},wasmtime=warn,cranelift_codegen=warn")
}

/// The HTTP server's limits, so that slow or half-sent requests cannot hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `[api] header_read_timeout_ms`: a client must send a request's headers within this.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// `[api] request_timeout_ms`: a request, its body and the answer included, must finish
    /// within this, else `408`. Default 60 s.
    pub request_timeout: Duration,
    /// `[api] max_connections`: connections served at once; more wait to be accepted.
    /// Default 512.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

impl HttpLimits {
    fn from_file(api: &ApiFile) -> Result<Self, String> {
        let d = Self::default();
        let ms = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(format!("`api.{key}` must be at least 1")),
            Some(v) => Ok(Duration::from_millis(v)),
        };
        Ok(Self {
            header_read_timeout: ms(
                "header_read_timeout_ms",
                api.header_read_timeout_ms,
                d.header_read_timeout,
            )?,
            request_timeout: ms("request_timeout_ms", api.request_timeout_ms, d.request_timeout)?,
            max_connections: match api.max_connections {
                None => d.max_connections,
                Some(0) => return Err("`api.max_connections` must be at least 1".into()),
                Some(n) => n,
            },
        })
    }
}

/// `"7d"`, `"90m"`, … (humantime), or `"off"`.
fn parse_age(
    path: &Path,
    key: &str,
    value: Option<&str>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match value.map(str::trim) {
        None => Ok(default),
        Some("off") => Ok(None),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(ConfigError::invalid(
                path,
                format!("`{key}` must be a duration such as \"7d\" or \"12h\", or \"off\", not `{text}`"),
            )),
        },
    }
}

impl ServiceConfig {
    /// Defaults, with relative paths resolved against `base`.
    pub fn defaults_in(base: &Path) -> Self {
        Self::from_file(ServiceFile::default(), base)
    }

    fn from_file(f: ServiceFile, base: &Path) -> Self {
        let d = RetentionConfig::default();
        Self {
            strict_start: f.strict_start.unwrap_or(false),
            retention: RetentionConfig {
                batch: f.retention_batch.unwrap_or(d.batch).max(1),
                interval: f
                    .retention_interval_ms
                    .map(Duration::from_millis)
                    .unwrap_or(d.interval)
                    .max(Duration::from_millis(10)),
                ..d
            },
            listen: f.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database: DatabaseLocation::parse("outboxd.db", base),
            plugins_dir: base.join(f.plugins_dir.unwrap_or_else(|| "plugins.d".into())),
            max_payload_bytes: f.max_payload_bytes.unwrap_or(256 * 1024),
            max_request_bytes: f.max_request_bytes.unwrap_or(8 * 1024 * 1024),
            shutdown_grace: Duration::from_millis(f.shutdown_grace_ms.unwrap_or(10_000)),
            poll_interval: Duration::from_millis(f.poll_interval_ms.unwrap_or(250).max(1)),
            lease_margin: Duration::from_millis(f.lease_margin_ms.unwrap_or(30_000)),
            cache_dir: base.join(f.cache_dir.unwrap_or_else(|| "outboxd-cache".into())),
            watch_plugins: f.watch_plugins.unwrap_or(true),
            reload_debounce: Duration::from_millis(f.reload_debounce_ms.unwrap_or(200)),
            max_in_flight: f.max_in_flight.unwrap_or(64).max(1),
            api: AuthConfig::default(),
            allowed_hosts: Vec::new(),
            http: HttpLimits::default(),
            sources: Vec::new(),
            log_format: f.log_format.unwrap_or_default(),
            log_level: f.log_level.unwrap_or_else(|| "info".into()),
        }
    }

    /// Reads `path`. Relative paths inside it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut file: ServiceFile = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let d = RetentionConfig::default();
        let retention = parse_age(path, "retention", file.retention.as_deref(), d.retention)?;
        let idempotency_retention = parse_age(
            path,
            "idempotency_retention",
            file.idempotency_retention.as_deref(),
            d.idempotency_retention,
        )?;
        let payload_retention = parse_age(
            path,
            "payload_retention",
            file.payload_retention.as_deref(),
            d.payload_retention,
        )?;
        if let (Some(payloads), Some(events)) = (payload_retention, retention)
            && payloads >= events
        {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "`payload_retention` ({}) must be shorter than `retention` ({}): retention deletes the whole event first",
                    humantime::format_duration(payloads),
                    humantime::format_duration(events)
                ),
            ));
        }
        let mut api = file.api.take().unwrap_or_default();
        let sources = file.sources.take().unwrap_or_default();
        let database = file
            .database
            .take()
            .map(|w| w.resolve(base))
            .transpose()
            .map_err(|e| ConfigError::invalid(path, format!("`database`: {e}")))?;
        if let Some(level) = &file.log_level
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(log_filter(level))
        {
            return Err(ConfigError::invalid(
                path,
                format!("`log_level` must be a level (error, warn, info, debug, trace) or a filter: {e}"),
            ));
        }
        let mut config = Self::from_file(file, base);
        if let Some(database) = database {
            config.database = DatabaseLocation::parse(&database, base);
        }
        config.retention.retention = retention;
        config.retention.idempotency_retention = idempotency_retention;
        config.retention.payload_retention = payload_retention;
        config.http = HttpLimits::from_file(&api).map_err(|m| ConfigError::invalid(path, m))?;
        crate::api::browser::HostRules::check_names(&api.allowed_hosts).map_err(|m| ConfigError::invalid(path, m))?;
        config.allowed_hosts = std::mem::take(&mut api.allowed_hosts);
        config.api = AuthConfig::from_file(api, base).map_err(|m| ConfigError::invalid(path, m))?;
        config
            .api
            .check_listen(config.listen)
            .map_err(|m| ConfigError::invalid(path, m))?;
        config.sources = crate::source::config::from_files(sources, base).map_err(|m| ConfigError::invalid(path, m))?;
        if config.max_payload_bytes == 0 || config.max_payload_bytes > config.max_request_bytes {
            return Err(ConfigError::invalid(
                path,
                "`max_payload_bytes` must be between 1 and `max_request_bytes`",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;
    use crate::source::config::Location;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn unknown_service_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "outboxd.toml",
            "listen = \"127.0.0.1:0\"\nlisten_port = 3\n",
        );
        let err = ServiceConfig::load(&dir.path().join("outboxd.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outboxd.toml"), "{err}");
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn log_format_is_text_json_or_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outboxd.toml");
        assert_eq!(ServiceConfig::defaults_in(dir.path()).log_format, LogFormat::Text);
        write(dir.path(), "outboxd.toml", "log_format = \"json\"\n");
        assert_eq!(ServiceConfig::load(&path).unwrap().log_format, LogFormat::Json);
        write(dir.path(), "outboxd.toml", "log_format = \"xml\"\n");
        let err = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("outboxd.toml") && err.contains("log_format"), "{err}");
        assert_eq!(ServiceConfig::defaults_in(dir.path()).log_level, "info");
        write(
            dir.path(),
            "outboxd.toml",
            "log_level = \"debug,outboxd::dispatch=trace\"\n",
        );
        assert_eq!(
            ServiceConfig::load(&path).unwrap().log_level,
            "debug,outboxd::dispatch=trace"
        );
        write(dir.path(), "outboxd.toml", "log_level = \"loud[\"\n");
        let err = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("outboxd.toml") && err.contains("`log_level`"), "{err}");
    }

    #[test]
    fn service_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "outboxd.toml", "database = \"data/o.db\"\n");
        let c = ServiceConfig::load(&dir.path().join("outboxd.toml")).unwrap();
        assert_eq!(c.database, DatabaseLocation::Sqlite(dir.path().join("data/o.db")));
        assert_eq!(c.plugins_dir, dir.path().join("plugins.d"));
        assert_eq!(c.listen.port(), 8080);
    }

    #[test]
    fn a_postgres_url_selects_the_shared_store() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "outboxd.toml",
            "database = \"postgresql://app:pw@db.internal/outbox\"\n",
        );
        let c = ServiceConfig::load(&dir.path().join("outboxd.toml")).unwrap();
        assert_eq!(
            c.database,
            DatabaseLocation::Postgres("postgresql://app:pw@db.internal/outbox".into())
        );
        assert_eq!(c.database.to_string(), "postgresql://app:***@db.internal/outbox");
        assert!(!format!("{c:?}").contains("pw@"), "no password in debug output");
    }

    #[test]
    fn retention_keys_take_durations_or_off() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "retention = \"1m\"\nidempotency_retention = \"off\"\nstrict_start = true\n",
        );
        let c = ServiceConfig::load(&dir.path().join("a.toml")).unwrap();
        assert_eq!(c.retention.retention, Some(Duration::from_secs(60)));
        assert_eq!(c.retention.idempotency_retention, None);
        assert!(c.strict_start);
        let d = ServiceConfig::defaults_in(dir.path());
        assert_eq!(d.retention.retention, Some(Duration::from_secs(7 * 24 * 3600)));
        assert!(!d.strict_start);
        write(dir.path(), "b.toml", "retention = \"soon\"\n");
        let e = ServiceConfig::load(&dir.path().join("b.toml")).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("`retention`"), "{e}");
    }

    #[test]
    fn payload_retention_is_off_by_default_and_shorter_than_retention() {
        let dir = tempfile::tempdir().unwrap();
        let d = ServiceConfig::defaults_in(dir.path());
        assert_eq!(d.retention.payload_retention, None);
        write(
            dir.path(),
            "a.toml",
            "retention = \"30d\"\npayload_retention = \"2d\"\n",
        );
        let c = ServiceConfig::load(&dir.path().join("a.toml")).unwrap();
        assert_eq!(c.retention.payload_retention, Some(Duration::from_secs(2 * 24 * 3600)));
        write(dir.path(), "b.toml", "payload_retention = \"off\"\n");
        let c = ServiceConfig::load(&dir.path().join("b.toml")).unwrap();
        assert_eq!(c.retention.payload_retention, None);
        // Events are kept forever: any payload retention will do.
        write(
            dir.path(),
            "c.toml",
            "retention = \"off\"\npayload_retention = \"400d\"\n",
        );
        ServiceConfig::load(&dir.path().join("c.toml")).unwrap();
        for (file, text) in [
            ("d.toml", "retention = \"2d\"\npayload_retention = \"2d\"\n"),
            ("e.toml", "payload_retention = \"8d\"\n"),
            ("f.toml", "payload_retention = \"soon\"\n"),
        ] {
            write(dir.path(), file, text);
            let e = ServiceConfig::load(&dir.path().join(file)).unwrap_err().to_string();
            assert!(e.contains(file) && e.contains("`payload_retention`"), "{e}");
        }
    }

    #[test]
    fn the_php_example_configuration_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/php/outboxd.toml");
        let c = ServiceConfig::load(&path).unwrap();
        assert_eq!(c.sources.len(), 1);
        let s = &c.sources[0];
        assert_eq!(
            (s.name.as_str(), s.kind, s.table.as_str()),
            ("shop", SourceKind::Sqlite, "outbox")
        );
        assert_eq!(s.location, Location::SqlitePath(path.parent().unwrap().join("app.db")));
        assert_eq!(s.columns.created_at.as_deref(), Some("created_at"));
    }

    #[test]
    fn errors_in_outboxd_toml_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outboxd.toml");
        std::fs::write(
            &path,
            "[[sources]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"a.db\"\npoll_ms = 5\n",
        )
        .unwrap();
        let e = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("outboxd.toml") && e.contains("unknown field `poll_ms`"),
            "{e}"
        );
        std::fs::write(
            &path,
            "[[sources]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"a.db\"\n[[sources]]\nname = \"a\"\nkind = \"sqlite\"\npath = \"b.db\"\n",
        )
        .unwrap();
        let e = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("outboxd.toml") && e.contains("sources[1] `a`: another source"),
            "{e}"
        );
    }

    #[test]
    fn the_database_url_and_tokens_may_be_read_from_files_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outboxd.toml");
        let secret = dir.path().join("db-url");
        std::fs::write(&secret, "postgresql://app:s3cr3t@db.internal/outbox\n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok_0123456789abcdef\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "database = {{ file = {:?} }}\n[[api.tokens]]\nname = \"ops\"\nscopes = [\"read\"]\ntoken = {{ file = {:?} }}\n",
                secret.display().to_string(),
                token.display().to_string()
            ),
        )
        .unwrap();
        let c = ServiceConfig::load(&path).unwrap();
        assert_eq!(
            c.database,
            DatabaseLocation::Postgres("postgresql://app:s3cr3t@db.internal/outbox".into())
        );
        assert!(c.api.enabled());
        assert!(!format!("{c:?}").contains("s3cr3t") && !format!("{c:?}").contains("tok_0123"));

        for (text, wanted) in [
            (
                "database = { env = \"OUTBOXD_TEST_SURELY_UNSET_VARIABLE\" }\n",
                "`database`: environment variable `OUTBOXD_TEST_SURELY_UNSET_VARIABLE` is not set",
            ),
            (
                "[[api.tokens]]\nname = \"ops\"\nscopes = [\"read\"]\ntoken = { file = \"/nonexistent/tok\" }\n",
                "`api.tokens[0]` (`ops`): `token`: cannot read /nonexistent/tok",
            ),
            ("database = { env = \"X\", other = 1 }\n", "unknown field `other`"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = ServiceConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains("outboxd.toml") && e.contains(wanted), "{e}");
        }
    }
}
