//! `outboxd source status`: the relay status of every source, read from the running
//! service's `GET /v1/sources` (relay state lives in the service, not in the database).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::CliError;
use super::table::{Col, Table};
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
    if sources.is_empty() {
        return "no sources configured\n".into();
    }
    const COLS: &[Col] = &[
        Col::Left(20),
        Col::Left(8),
        Col::Left(24),
        Col::Left(9),
        Col::Right(10),
        Col::Right(8),
        Col::Right(9),
        Col::Rest,
    ];
    let mut table = Table::new(
        COLS,
        " ",
        &[
            "SOURCE",
            "KIND",
            "TABLE",
            "STATE",
            "RELAYED",
            "FAILED",
            "LAG MS",
            " LAST POLL / LAST ERROR",
        ],
    );
    for s in sources {
        table.row(&[
            s.name.clone(),
            s.kind.clone(),
            s.table.clone(),
            s.state.clone(),
            s.rows_relayed.to_string(),
            s.rows_failed.to_string(),
            s.lag_ms.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            format!(" {}", s.last_poll_at.as_deref().unwrap_or("-")),
        ]);
        if let Some(e) = &s.last_error {
            table.note(&format!("    last error at {}: {}", e.at, e.message));
        }
        if let Some(b) = &s.last_bad_row {
            table.note(&format!("    last refused row at {}: {}", b.at, b.message));
        }
    }
    table.finish()
}
