//! `demo-receiver`: a local webhook receiver for trying outboxd by hand.
//!
//! Accepts any request at any path (the path names the target, e.g. `/crm`),
//! answers 200, and prints one line per request: time, path, event type,
//! idempotency key, signature check (`ok`, `BAD` or `absent`) and an excerpt
//! of the body.
//!
//! ```text
//! demo-receiver [--listen 127.0.0.1:9000] [--secret whsec_...]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use testkit::{Receiver, RecordedRequest, verify_standard_webhook};

const USAGE: &str = "usage: demo-receiver [--listen ADDR] [--secret whsec_...]\n\
  --listen ADDR    address to listen on (default 127.0.0.1:9000)\n\
  --secret SECRET  Standard Webhooks secret to verify signatures with\n\
                   (also read from DEMO_RECEIVER_SECRET)";

struct Args {
    listen: SocketAddr,
    secret: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 9000).into();
    let mut secret = std::env::var("DEMO_RECEIVER_SECRET").ok().filter(|s| !s.is_empty());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--listen" | "-l" => {
                let v = value("--listen")?;
                listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v}: {e} (expected e.g. 127.0.0.1:9000)"))?;
            }
            "--secret" | "-s" => secret = Some(value("--secret")?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args { listen, secret })
}

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time.
fn clock(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.subsec_millis()
    )
}

fn describe(req: &RecordedRequest, secret: Option<&str>) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
    let event_type = req
        .header("outboxd-event-type")
        .map(str::to_owned)
        .or_else(|| json.as_ref().and_then(|j| j["type"].as_str().map(str::to_owned)))
        .unwrap_or_else(|| "-".to_owned());
    let signature = match (req.header("webhook-signature"), secret) {
        (None, _) => "absent",
        (Some(_), None) => "unchecked",
        (Some(_), Some(secret)) => {
            if verify_standard_webhook(secret, &req.headers, &req.body) {
                "ok"
            } else {
                "BAD"
            }
        }
    };
    let body = req.body_text().replace(['\n', '\r'], " ");
    let mut excerpt: String = body.chars().take(100).collect();
    if body.chars().count() > 100 {
        excerpt.push('…');
    }
    format!(
        "{}  {} {:<12} {:<18} key={} attempt={} sig={}  {}",
        clock(req.received_at_wall),
        req.method,
        req.path,
        event_type,
        req.idempotency_key().unwrap_or("-"),
        req.header("outboxd-attempt").unwrap_or("-"),
        signature,
        excerpt
    )
}

/// Until Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo-receiver: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let secret = args.secret.clone();
    let receiver = Receiver::builder()
        .bind(args.listen)
        .keep_requests(false)
        .on_request(move |req| println!("{}", describe(req, secret.as_deref())))
        .try_start()
        .await;
    let receiver = match receiver {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo-receiver: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "demo-receiver listening on http://{} (signatures {})",
        receiver.addr(),
        if args.secret.is_some() {
            "verified"
        } else {
            "not checked: no --secret"
        }
    );
    wait_for_stop().await;
    println!("demo-receiver: stopping");
    drop(receiver);
    ExitCode::SUCCESS
}
