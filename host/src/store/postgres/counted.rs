//! Every statement this store sends, counted: `sqlx`'s `query`, `query_as` and `query_scalar`
//! under the same names, each adding one to the `outboxd_store_statements_total` metric (a
//! transaction's `BEGIN` and `COMMIT` are counted where it is run). With the events and
//! deliveries it handled, that gives the round trips per unit of work that the benchmark
//! prints.

use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};

use crate::telemetry::metrics;

/// Counts `n` statements sent outside these functions (`BEGIN`, `COMMIT`).
pub(super) fn count(n: u64) {
    metrics::store_statements(n);
}

/// [`sqlx::query`], counted.
pub(super) fn query(sql: &str) -> Query<'_, Postgres, PgArguments> {
    count(1);
    sqlx::query(sql)
}

/// [`sqlx::query_as`], counted.
pub(super) fn query_as<'q, O>(sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    count(1);
    sqlx::query_as(sql)
}

/// [`sqlx::query_scalar`], counted.
pub(super) fn query_scalar<'q, O>(sql: &'q str) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    count(1);
    sqlx::query_scalar(sql)
}
