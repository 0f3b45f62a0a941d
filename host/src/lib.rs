//! outboxd: a transactional outbox delivery service. Events are persisted first (SQLite or
//! PostgreSQL, one delivery per subscribed target), then delivered to every target by sandboxed
//! WebAssembly plugins with retries, backoff and leases. See `docs/architecture.md` for the
//! modules and the path of an event.

pub mod api;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod outbox;
pub mod plugin;
pub mod policy;
pub mod redact;
pub mod replay;
pub mod secret;
pub mod server;
pub mod source;
pub mod store;
pub mod targets;
pub mod telemetry;
pub mod whole;
