//! `[[sources]]` in `outboxd.toml`: an application's own outbox table that outboxd relays.
//! Parsed strictly (an unknown key is an error naming the file and the key), with the
//! schema presets (`simple`, `debezium`) applied and every identifier checked, so that the
//! relay only ever builds SQL from validated column and table names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::TargetName;

/// Which database a source lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Sqlite,
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" => Ok(Self::Postgres),
            "mysql" => Ok(Self::Mysql),
            other => Err(format!("`kind` must be sqlite, postgres or mysql, not `{other}`")),
        }
    }
}

/// The two table shapes a source may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPreset {
    /// `id`, `event_type`, `payload`, `status` (`pending` → `done`).
    Simple,
    /// Debezium's outbox event router: `id`, `aggregatetype`, `aggregateid`, `type`,
    /// `payload`; no status column, so relayed rows are deleted by default.
    Debezium,
}

impl SchemaPreset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Debezium => "debezium",
        }
    }
}

impl std::str::FromStr for SchemaPreset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simple" => Ok(Self::Simple),
            "debezium" => Ok(Self::Debezium),
            other => Err(format!("`schema` must be simple or debezium, not `{other}`")),
        }
    }
}

/// What happens to a row once its event is committed in outboxd's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRelayed {
    /// Set the status column to `done_value`.
    Mark,
    /// Delete the row.
    Delete,
}

impl OnRelayed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mark => "mark",
            Self::Delete => "delete",
        }
    }
}

impl std::str::FromStr for OnRelayed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mark" => Ok(Self::Mark),
            "delete" => Ok(Self::Delete),
            other => Err(format!("`on_relayed` must be mark or delete, not `{other}`")),
        }
    }
}

/// `[sources.columns]`: overrides of the preset's column names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnsFile {
    id: Option<String>,
    event_type: Option<String>,
    payload: Option<String>,
    status: Option<String>,
    headers: Option<String>,
    idempotency_key: Option<String>,
    ordering_key: Option<String>,
    created_at: Option<String>,
    aggregate_type: Option<String>,
    deliver_at: Option<String>,
    traceparent: Option<String>,
}

/// One `[[sources]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    name: String,
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
    table: Option<String>,
    schema: Option<String>,
    columns: Option<ColumnsFile>,
    order_by: Option<String>,
    on_relayed: Option<String>,
    pending_value: Option<String>,
    done_value: Option<String>,
    failed_value: Option<String>,
    batch_size: Option<u32>,
    poll_interval_ms: Option<u64>,
    notify_channel: Option<String>,
    busy_timeout_ms: Option<u64>,
}

/// The mapped columns, all validated identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub id: String,
    pub event_type: String,
    pub payload: String,
    /// Required in `mark` mode; in `delete` mode, when set, only rows with `pending_value`
    /// are read.
    pub status: Option<String>,
    pub headers: Option<String>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
    pub created_at: Option<String>,
    /// Debezium's `aggregatetype`: handed on as the event header `aggregate-type`.
    pub aggregate_type: Option<String>,
    /// A date/time: the event's deliveries wait until then (`deliver_at` of `POST /v1/events`);
    /// NULL delivers at once.
    pub deliver_at: Option<String>,
    /// A W3C `traceparent`: the trace the event's deliveries join (NULL or invalid: none).
    pub traceparent: Option<String>,
}

impl Columns {
    /// Every mapped column, for checking that the table has them.
    pub fn all(&self) -> Vec<&str> {
        let mut v = vec![self.id.as_str(), self.event_type.as_str(), self.payload.as_str()];
        for c in [
            &self.status,
            &self.headers,
            &self.idempotency_key,
            &self.ordering_key,
            &self.created_at,
            &self.aggregate_type,
            &self.deliver_at,
            &self.traceparent,
        ]
        .into_iter()
        .flatten()
        {
            if !v.contains(&c.as_str()) {
                v.push(c.as_str());
            }
        }
        v
    }
}

/// Where the source's database is.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    SqlitePath(PathBuf),
    /// A `postgres://` or `mysql://` URL (may hold a password: never shown).
    Url(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SqlitePath(p) => write!(f, "SqlitePath({})", p.display()),
            Self::Url(_) => f.write_str("Url(…)"),
        }
    }
}

/// One source, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub location: Location,
    /// The table, optionally `schema.table`.
    pub table: String,
    pub schema: SchemaPreset,
    pub columns: Columns,
    /// Rows are relayed in the order of this column. Default: the id column.
    pub order_by: String,
    pub on_relayed: OnRelayed,
    pub pending_value: String,
    pub done_value: String,
    pub failed_value: String,
    /// Most rows per relay transaction. Default 500.
    pub batch_size: u32,
    /// How often an idle source is polled. Default 100 ms.
    pub poll_interval: Duration,
    /// PostgreSQL only: `LISTEN` on this channel and poll at once when notified.
    pub notify_channel: Option<String>,
    /// SQLite only: how long to wait for the application's writers. Default 5 s.
    pub busy_timeout: Duration,
}

/// Largest `batch_size`.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// `true` for `name` or `schema.name` made of ASCII letters, digits, `_` and `$`, each part
/// starting with a letter or `_`, at most 64 bytes each. Such names are quoted as they are.
pub fn valid_identifier(s: &str, allow_schema: bool) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > if allow_schema { 2 } else { 1 } {
        return false;
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && p.len() <= 64
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    })
}

impl SourceConfig {
    /// Applies defaults and checks one entry. `base` resolves a relative SQLite `path`.
    pub fn from_file(f: SourceFile, base: &Path) -> Result<Self, String> {
        f.name.parse::<TargetName>().map_err(|_| {
            format!(
                "`name` `{}`: use 1-64 of a-z, 0-9, `-`, `_`, starting with a letter or digit",
                f.name
            )
        })?;
        let kind: SourceKind = f.kind.parse()?;
        let location = match (kind, f.path, f.url) {
            (SourceKind::Sqlite, Some(p), None) => Location::SqlitePath(base.join(p)),
            (SourceKind::Sqlite, _, _) => return Err("a `sqlite` source needs `path` (and no `url`)".into()),
            (SourceKind::Postgres, None, Some(u)) => {
                if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                    return Err("`url` of a `postgres` source must start with postgres://".into());
                }
                Location::Url(u)
            }
            (SourceKind::Mysql, None, Some(u)) => {
                if !(u.starts_with("mysql://") || u.starts_with("mariadb://")) {
                    return Err("`url` of a `mysql` source must start with mysql://".into());
                }
                Location::Url(u.replacen("mariadb://", "mysql://", 1))
            }
            (k, _, _) => return Err(format!("a `{}` source needs `url` (and no `path`)", k.as_str())),
        };
        let table = f.table.unwrap_or_else(|| "outbox".into());
        if !valid_identifier(&table, kind != SourceKind::Sqlite) {
            return Err(format!(
                "`table` `{table}` must be a plain name (letters, digits, `_`, `$`){}",
                if kind == SourceKind::Sqlite {
                    ""
                } else {
                    ", optionally `schema.table`"
                }
            ));
        }
        let schema = match f.schema.as_deref() {
            None => SchemaPreset::Simple,
            Some(s) => s.parse()?,
        };
        let c = f.columns.unwrap_or_default();
        let (d_type, d_status, d_ordering, d_aggregate) = match schema {
            SchemaPreset::Simple => ("event_type", Some("status"), None, None),
            SchemaPreset::Debezium => ("type", None, Some("aggregateid"), Some("aggregatetype")),
        };
        // An optional column named "" is not mapped (e.g. a simple table without status).
        let optional =
            |given: Option<String>, default: Option<&str>| given.or(default.map(Into::into)).filter(|n| !n.is_empty());
        let columns = Columns {
            id: c.id.unwrap_or_else(|| "id".into()),
            event_type: c.event_type.unwrap_or_else(|| d_type.into()),
            payload: c.payload.unwrap_or_else(|| "payload".into()),
            status: optional(c.status, d_status),
            headers: optional(c.headers, None),
            idempotency_key: optional(c.idempotency_key, None),
            ordering_key: optional(c.ordering_key, d_ordering),
            created_at: optional(c.created_at, None),
            aggregate_type: optional(c.aggregate_type, d_aggregate),
            deliver_at: optional(c.deliver_at, None),
            traceparent: optional(c.traceparent, None),
        };
        let order_by = f.order_by.unwrap_or_else(|| columns.id.clone());
        for col in columns.all().into_iter().chain([order_by.as_str()]) {
            if !valid_identifier(col, false) {
                return Err(format!(
                    "column `{col}` must be a plain name (letters, digits, `_`, `$`, starting with a letter or `_`)"
                ));
            }
        }
        let on_relayed = match (f.on_relayed.as_deref(), &columns.status) {
            (Some(s), _) => s.parse()?,
            (None, Some(_)) => OnRelayed::Mark,
            (None, None) => OnRelayed::Delete,
        };
        if on_relayed == OnRelayed::Mark && columns.status.is_none() {
            return Err("`on_relayed = \"mark\"` needs a status column: set `columns.status`".into());
        }
        let pending_value = f.pending_value.unwrap_or_else(|| "pending".into());
        let done_value = f.done_value.unwrap_or_else(|| "done".into());
        let failed_value = f.failed_value.unwrap_or_else(|| "failed".into());
        if columns.status.is_some() && (pending_value == done_value || pending_value == failed_value) {
            return Err("`pending_value` must differ from `done_value` and `failed_value`".into());
        }
        let batch_size = f.batch_size.unwrap_or(500);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(format!("`batch_size` must be between 1 and {MAX_BATCH_SIZE}"));
        }
        let poll_ms = f.poll_interval_ms.unwrap_or(100);
        if !(1..=3_600_000).contains(&poll_ms) {
            return Err("`poll_interval_ms` must be between 1 and 3600000".into());
        }
        if let Some(ch) = &f.notify_channel {
            if kind != SourceKind::Postgres {
                return Err("`notify_channel` applies only to `postgres` sources".into());
            }
            if !valid_identifier(ch, false) {
                return Err(format!("`notify_channel` `{ch}` must be a plain name"));
            }
        }
        if f.busy_timeout_ms.is_some() && kind != SourceKind::Sqlite {
            return Err("`busy_timeout_ms` applies only to `sqlite` sources".into());
        }
        Ok(Self {
            name: f.name,
            kind,
            location,
            table,
            schema,
            columns,
            order_by,
            on_relayed,
            pending_value,
            done_value,
            failed_value,
            batch_size,
            poll_interval: Duration::from_millis(poll_ms),
            notify_channel: f.notify_channel,
            busy_timeout: Duration::from_millis(f.busy_timeout_ms.unwrap_or(5_000)),
        })
    }
}

/// Checks every `[[sources]]` entry; the message names the entry.
pub fn from_files(files: Vec<SourceFile>, base: &Path) -> Result<Vec<SourceConfig>, String> {
    let mut out: Vec<SourceConfig> = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let label = format!("sources[{i}] `{}`", f.name);
        let s = SourceConfig::from_file(f, base).map_err(|e| format!("{label}: {e}"))?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(format!("{label}: another source has the name `{}`", s.name));
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SourceConfig, String> {
        let f: SourceFile = toml::from_str(text).map_err(|e| e.to_string())?;
        SourceConfig::from_file(f, Path::new("/base"))
    }

    #[test]
    fn simple_preset_marks_rows() {
        let s = parse("name = \"shop\"\nkind = \"sqlite\"\npath = \"app.db\"").unwrap();
        assert_eq!(s.location, Location::SqlitePath("/base/app.db".into()));
        assert_eq!(s.table, "outbox");
        assert_eq!(s.columns.event_type, "event_type");
        assert_eq!(s.columns.status.as_deref(), Some("status"));
        assert_eq!(s.on_relayed, OnRelayed::Mark);
        assert_eq!(s.order_by, "id");
        assert_eq!((s.batch_size, s.poll_interval.as_millis()), (500, 100));
    }

    #[test]
    fn debezium_preset_deletes_and_orders_by_aggregate() {
        let s = parse(
            "name = \"pg\"\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\nschema = \"debezium\"\norder_by = \"seq\"\ntable = \"public.outboxevent\"",
        )
        .unwrap();
        assert_eq!(s.columns.event_type, "type");
        assert_eq!(s.columns.ordering_key.as_deref(), Some("aggregateid"));
        assert_eq!(s.columns.aggregate_type.as_deref(), Some("aggregatetype"));
        assert_eq!(s.columns.status, None);
        assert_eq!(s.on_relayed, OnRelayed::Delete);
        assert_eq!(s.order_by, "seq");
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let base = "name = \"a\"\nkind = \"sqlite\"\npath = \"x.db\"\n";
        let unknown = parse(&format!("{base}tabel = \"outbox\"")).unwrap_err();
        assert!(unknown.contains("unknown field `tabel`"), "{unknown}");
        let col = parse(&format!("{base}[columns]\npayload = \"p; DROP TABLE x\"")).unwrap_err();
        assert!(col.contains("plain name"), "{col}");
        let mark = parse(&format!("{base}schema = \"debezium\"\non_relayed = \"mark\"")).unwrap_err();
        assert!(mark.contains("status column"), "{mark}");
        let url = parse("name = \"a\"\nkind = \"postgres\"\npath = \"x.db\"").unwrap_err();
        assert!(url.contains("needs `url`"), "{url}");
        let chan = parse(&format!("{base}notify_channel = \"c\"")).unwrap_err();
        assert!(chan.contains("only to `postgres`"), "{chan}");
        let kind = parse("name = \"a\"\nkind = \"oracle\"\nurl = \"x\"").unwrap_err();
        assert!(kind.contains("sqlite, postgres or mysql"), "{kind}");
        assert!(parse(&format!("{base}batch_size = 0")).is_err());
    }

    #[test]
    fn identifiers_are_plain_names() {
        assert!(valid_identifier("outbox", false));
        assert!(valid_identifier("app.outbox", true));
        assert!(!valid_identifier("app.outbox", false));
        assert!(!valid_identifier("1x", false));
        assert!(!valid_identifier("a\"b", false));
        assert!(!valid_identifier("", false));
    }
}
