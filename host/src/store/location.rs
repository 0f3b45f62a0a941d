//! Where the store is: the `database` setting, a SQLite file or a PostgreSQL URL.

use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file, owned by one `serve` at a time.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`), shared by any number of hosts.
    Postgres(String),
}

impl DatabaseLocation {
    /// A `postgres://` or `postgresql://` URL, or else a file path resolved against `base`.
    pub fn parse(value: &str, base: &Path) -> Self {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Self::Postgres(value.to_owned())
        } else {
            Self::Sqlite(base.join(value))
        }
    }
}

impl std::fmt::Display for DatabaseLocation {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&crate::store::postgres::redact(url)),
        }
    }
}

impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}
