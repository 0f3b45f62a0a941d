//! `outboxd source status`: the relay status of every source, read from the running
//! service's `GET /v1/sources` (relay state lives in the service, not in the database).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::CliError;
use crate::api::sources::SourceOut;
use crate::server::config::ServiceConfig;

/// The base URL of the running service: `--url`, else `http://<listen>` (a wildcard address
/// becomes loopback).
fn base_url(config: &ServiceConfig, url: Option<String>) -> Result<String, CliError> {
    if let Some(u) = url {
        return Ok(u.trim_end_matches('/').to_owned());
    }
    let mut addr = config.listen;
    if addr.port() == 0 {
        return Err(CliError::Input(
            "`listen` has port 0 (a free port picked at start): give the service's address with --url".into(),
        ));
    }
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    Ok(format!("http://{addr}"))
}

/// Fetches `GET /v1/sources` and prints one line per source.
pub async fn source_status(
    config: &ServiceConfig,
    url: Option<String>,
    token: Option<String>,
) -> Result<String, CliError> {
    let base = base_url(config, url)?;
    let endpoint = format!("{base}/v1/sources");
    let unreachable = |e: reqwest::Error| CliError::Service(format!("{endpoint}: {e} (is `outboxd serve` running?)"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let mut request = client.get(&endpoint);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(CliError::Service(format!("{endpoint}: HTTP {status}: {body}")));
    }
    let sources: Vec<SourceOut> = response.json().await.map_err(unreachable)?;
    Ok(render(&sources))
}

fn render(sources: &[SourceOut]) -> String {
    let mut out = String::new();
    if sources.is_empty() {
        out.push_str("no sources configured\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<24} {:<9} {:>10} {:>8} {:>9}  LAST POLL / LAST ERROR",
        "SOURCE", "KIND", "TABLE", "STATE", "RELAYED", "FAILED", "LAG MS"
    );
    for s in sources {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<24} {:<9} {:>10} {:>8} {:>9}  {}",
            s.name,
            s.kind,
            s.table,
            s.state,
            s.rows_relayed,
            s.rows_failed,
            s.lag_ms.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            s.last_poll_at.as_deref().unwrap_or("-"),
        );
        if let Some(e) = &s.last_error {
            let _ = writeln!(out, "    last error at {}: {}", e.at, e.message);
        }
        if let Some(b) = &s.last_bad_row {
            let _ = writeln!(out, "    last refused row at {}: {}", b.at, b.message);
        }
    }
    out
}
