//! A throwaway PostgreSQL database for the PostgreSQL runs: `outboxd_bench_<random>`, created
//! on the server of `--postgres` through `psql` and dropped (`WITH (FORCE)`) when the value is
//! dropped, so also when a run fails. A run killed outright (SIGKILL, a second Ctrl-C) leaves
//! its database behind: drop `outboxd_bench_*` by hand then.

use std::hash::{BuildHasher, RandomState};
use std::process::Command;

/// A database of this run, dropped on drop.
pub struct PgDatabase {
    server: Server,
    name: String,
}

impl PgDatabase {
    /// Creates a fresh, empty database on `server`.
    pub fn create(server: &Server) -> Result<Self, String> {
        let name = format!("outboxd_bench_{:016x}", RandomState::new().hash_one(std::process::id()));
        psql(&server.url_of("postgres"), &format!("CREATE DATABASE {name}")).map_err(|e| {
            format!(
                "cannot create a database on {} (--postgres needs a server where the user may \
                 create databases): {e}",
                server.redacted()
            )
        })?;
        Ok(Self {
            server: server.clone(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, for `database` in `outboxd.toml`.
    pub fn url(&self) -> String {
        self.server.url_of(&self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.server.url_of("postgres"), &sql) {
            eprintln!("bench: could not drop the database {}: {e}", self.name);
        }
    }
}

/// The server of `--postgres`, its URL split where a database name goes: `scheme://authority`
/// and `?query`.
#[derive(Clone)]
pub struct Server {
    base: String,
    query: String,
}

impl Server {
    /// `postgres://user@host:port` (or `postgresql://`, with an optional `?query`), without a
    /// database.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
            .ok_or_else(|| format!("--postgres {url:?}: expected postgres://user@host:port"))?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        if !path.is_empty() {
            return Err(format!(
                "--postgres {:?}: give the server without a database (the benchmark creates its own)",
                outboxd::store::postgres::redact(url)
            ));
        }
        Ok(Self {
            base: format!("{scheme}://{authority}"),
            query: if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            },
        })
    }

    /// Connects once (`SELECT 1`), so that an unreachable server fails the run at its start.
    pub fn check(&self) -> Result<(), String> {
        psql(&self.url_of("postgres"), "SELECT 1").map_err(|e| format!("--postgres {}: {e}", self.redacted()))
    }

    /// Runs one query on `database` and returns its output (unaligned, tuples only), trimmed.
    pub fn query(&self, database: &str, sql: &str) -> Result<String, String> {
        psql_output(&self.url_of(database), sql)
    }

    fn url_of(&self, database: &str) -> String {
        format!("{}/{database}{}", self.base, self.query)
    }

    /// The URL with any password hidden, for messages and the report.
    pub fn redacted(&self) -> String {
        outboxd::store::postgres::redact(&format!("{}{}", self.base, self.query))
    }
}

/// `psql` running one command, quietly.
fn psql(url: &str, sql: &str) -> Result<(), String> {
    psql_output(url, sql).map(drop)
}

/// `psql` running one command, quietly; its output, trimmed.
fn psql_output(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run psql (the PostgreSQL client): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "psql exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
