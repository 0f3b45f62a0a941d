//! The database under a test [`Host`](crate::Host): a SQLite file in the host's directory
//! (the default) or, with `OUTBOXD_TEST_STORE=postgres`, a PostgreSQL database of its own,
//! `outboxd_test_<random>`, created on the server at `OUTBOXD_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432`) and dropped when the last host using it is dropped.
//!
//! Direct SQL assertions go through [`TestDatabase::query`], which works on both: SQLite
//! through rusqlite, PostgreSQL through `psql` (so the kit needs no async driver of its own).
//! Write such queries in the SQL both understand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Which store the e2e hosts run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    /// From `OUTBOXD_TEST_STORE` (`sqlite`, the default, or `postgres`).
    pub fn from_env() -> Self {
        match std::env::var("OUTBOXD_TEST_STORE").as_deref().map(str::trim) {
            Ok("postgres") | Ok("postgresql") | Ok("pg") => Self::Postgres,
            Ok("") | Ok("sqlite") | Err(_) => Self::Sqlite,
            Ok(other) => panic!("OUTBOXD_TEST_STORE={other:?}: expected `sqlite` or `postgres`"),
        }
    }
}

/// The end-to-end suite this process runs: the name of its test binary (`fc_dead` for
/// `target/debug/deps/fc_dead-0123456789abcdef`), if it can be told.
pub fn current_suite() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(suite_of(exe.file_stem()?.to_str()?))
}

/// A test binary's name without Cargo's `-<16 hex digits>` suffix.
fn suite_of(stem: &str) -> String {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem.to_owned(),
    }
}

/// What `OUTBOXD_TEST_PG_OPT_OUTS` (set by `cargo xtask test`, from its `PG_OPT_OUTS`) says of
/// `suite`: `no-host`, `sqlite-only` or `postgres-only`, if it is opted out of the PostgreSQL
/// pass.
fn pg_opt_out(suite: &str) -> Option<String> {
    let list = std::env::var("OUTBOXD_TEST_PG_OPT_OUTS").ok()?;
    let suite = suite.replace('-', "_");
    list.split(',').find_map(|entry| {
        let (name, kind) = entry.trim().split_once('=')?;
        (name.trim().replace('-', "_") == suite).then(|| kind.trim().to_owned())
    })
}

/// Holds a suite opted out of the PostgreSQL pass to the reason it was opted out for: a
/// `no-host` suite creates no host at all, a `sqlite-only` one none on PostgreSQL, a
/// `postgres-only` one none on SQLite. Called for every host the kit creates.
///
/// # Panics
/// When the host contradicts the opt-out (the fix is in xtask's `PG_OPT_OUTS`).
pub fn check_pg_opt_out(kind: StoreKind) {
    let Some(suite) = current_suite() else { return };
    let Some(opt_out) = pg_opt_out(&suite) else { return };
    let contradiction = match (opt_out.as_str(), kind) {
        ("no-host", _) => Some("it starts no host, yet it creates one"),
        ("sqlite-only", StoreKind::Postgres) => Some("it is SQLite-only, yet it creates a host on PostgreSQL"),
        ("postgres-only", StoreKind::Sqlite) => Some("it always runs on PostgreSQL, yet it creates a host on SQLite"),
        ("sqlite-only" | "postgres-only", _) => None,
        (other, _) => panic!("OUTBOXD_TEST_PG_OPT_OUTS: unknown kind {other:?} for suite {suite}"),
    };
    if let Some(why) = contradiction {
        panic!(
            "suite {suite} is opted out of the PostgreSQL pass ({opt_out}) because {why}: \
             remove it from PG_OPT_OUTS in xtask/src/main.rs (so that it runs on PostgreSQL too), \
             or give it the right reason"
        );
    }
}

/// The PostgreSQL server the tests use (no database in the URL).
pub fn pg_server_url() -> String {
    std::env::var("OUTBOXD_TEST_PG_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A test's database.
#[derive(Debug)]
pub enum TestDatabase {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database owned by this value: dropped on drop.
    Postgres { name: String, url: String },
}

impl TestDatabase {
    /// A SQLite database at `path` (created by outboxd on first use).
    pub fn sqlite(path: &Path) -> Self {
        Self::Sqlite(path.to_owned())
    }

    /// A fresh, empty PostgreSQL database.
    ///
    /// # Panics
    /// If the server cannot be reached (with how to point the tests at one).
    pub fn postgres() -> Self {
        let name = format!("outboxd_test_{:016x}", rand::random::<u64>());
        let server = pg_server_url();
        psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "cannot create a PostgreSQL test database on {server} (set OUTBOXD_TEST_PG_URL to a server \
                 where the user may create databases): {e}"
            )
        });
        Self::Postgres {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// What `database` in `outboxd.toml` says.
    pub fn config_value(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres { url, .. } => url.clone(),
        }
    }

    /// Which store this is.
    pub fn kind(&self) -> StoreKind {
        match self {
            Self::Sqlite(_) => StoreKind::Sqlite,
            Self::Postgres { .. } => StoreKind::Postgres,
        }
    }

    /// Runs `sql` (one statement, in SQL both stores understand) and returns every row as
    /// text (NULL as the empty string).
    ///
    /// # Panics
    /// If the query fails.
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            Self::Sqlite(path) => sqlite_rows(path, sql),
            Self::Postgres { url, .. } => {
                let out = psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                out.split('\u{1e}')
                    .map(|r| r.trim_end_matches('\n'))
                    .filter(|r| !r.is_empty())
                    .map(|r| r.split('\u{1f}').map(str::to_owned).collect())
                    .collect()
            }
        }
    }

    /// The single integer `sql` returns.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let rows = self.query(sql);
        let cell = rows
            .first()
            .and_then(|r| r.first())
            .unwrap_or_else(|| panic!("{sql}: no row"));
        cell.parse()
            .unwrap_or_else(|e| panic!("{sql}: {cell:?} is not an integer: {e}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { name, .. } = self {
            let server = pg_server_url();
            if let Err(e) = psql(
                &format!("{server}/postgres"),
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ) {
                eprintln!("testkit: could not drop test database {name}: {e}");
            }
        }
    }
}

/// Runs `sql` (one statement) on the SQLite database at `path`, read-only with a 5 s busy
/// timeout, and returns every row as text (NULL as the empty string). For the store of a
/// [`Host`](crate::Host) use [`TestDatabase::query`]; this is for the other SQLite files of a
/// test, such as an application's outbox.
///
/// # Panics
/// If the file cannot be opened or the query fails.
pub fn sqlite_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(5)).expect("set busy timeout");
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = stmt.column_count();
    stmt.query_map([], |r| {
        (0..columns)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(f) => f.to_string(),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `psql` with one command: unaligned, fields separated by U+001F, rows by U+001E.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\u{1f}",
            "-R",
            "\u{1e}",
            "-c",
        ])
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run psql (the PostgreSQL client): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_is_its_test_binary_without_the_hash() {
        assert_eq!(suite_of("fc_dead-0123456789abcdef"), "fc_dead");
        assert_eq!(suite_of("fc_dead"), "fc_dead");
        assert_eq!(suite_of("plugin-cli-0123"), "plugin-cli-0123");
    }
}
