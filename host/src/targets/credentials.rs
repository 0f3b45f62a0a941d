//! The credentials of a target's manifest, which the host holds and its plugin never sees:
//! `[headers]` (set on every request), `[oauth2]` (client credentials for a bearer token) and
//! `[tls]` (a client certificate and a private CA). Each value may be written in the manifest
//! or read from the environment or a file (`{ env = … }`, `{ file = … }`: see `crate::secret`),
//! and is read and checked when the manifest loads: a bad one is a load error naming its key,
//! never quoting its value.

use std::path::Path;

use serde::Deserialize;

use crate::domain::normalize_host_port;
use crate::plugin::oauth2::{AuthStyle, OAuth2Config};
use crate::plugin::tls::ClientTls;
use crate::secret::{ConfigValue, Secret, Written};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuth2File {
    token_url: String,
    client_id: Written,
    client_secret: Written,
    scope: Option<String>,
    audience: Option<String>,
    auth_style: Option<String>,
    hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    client_cert: Option<Written>,
    client_key: Option<Written>,
    ca: Option<Written>,
}

/// Whether `host` (of a URL) is a loopback address or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The manifest's `[oauth2]`. `token_url` must be `https://` (or `http://` to a loopback
/// address, for a token service on the same machine) with no user info or fragment; the host
/// reaches it for the token request alone, so it need not be (and is best not) in
/// `allowed_hosts`. The token goes to `hosts`, which must be among `allowed_hosts` (default:
/// all of them).
pub fn oauth2(table: toml::Table, dir: &Path, allowed_hosts: &[String]) -> Result<OAuth2Config, String> {
    let file: OAuth2File = toml::Value::Table(table)
        .try_into()
        .map_err(|e| format!("`oauth2`: {e}"))?;
    let token_url: reqwest::Url = file
        .token_url
        .parse()
        .map_err(|e| format!("`oauth2.token_url`: not a URL ({e})"))?;
    match token_url.scheme() {
        "https" => {}
        "http" if is_loopback(&token_url) => {}
        "http" => {
            return Err(
                "`oauth2.token_url` must be https:// (http:// only to a loopback address): \
                        the client secret goes in the request"
                    .into(),
            );
        }
        other => return Err(format!("`oauth2.token_url`: scheme `{other}` is not https")),
    }
    if token_url.host_str().is_none() || !token_url.username().is_empty() || token_url.password().is_some() {
        return Err("`oauth2.token_url` must name a host, without user info".into());
    }
    if token_url.fragment().is_some() {
        return Err("`oauth2.token_url` must not have a fragment".into());
    }
    let resolve = |key: &str, written: &Written| written.resolve(dir).map_err(|e| format!("`oauth2.{key}`: {e}"));
    let client_id = resolve("client_id", &file.client_id)?;
    let client_id = if file.client_id.is_indirect() {
        ConfigValue::Secret(Secret::new(client_id))
    } else {
        ConfigValue::Plain(client_id)
    };
    let client_secret = Secret::new(resolve("client_secret", &file.client_secret)?);
    if client_id.as_str().is_empty() {
        return Err("`oauth2.client_id` is empty".into());
    }
    if client_secret.expose().is_empty() {
        return Err("`oauth2.client_secret` is empty".into());
    }
    let auth_style = match file.auth_style.as_deref() {
        None | Some("basic") => AuthStyle::Basic,
        Some("body") => AuthStyle::Body,
        Some(other) => return Err(format!("`oauth2.auth_style` must be `basic` or `body`, not `{other}`")),
    };
    let hosts = match file.hosts {
        None => allowed_hosts.to_vec(),
        Some(hosts) => hosts
            .iter()
            .map(|h| {
                let hp = normalize_host_port(h).ok_or_else(|| format!("`oauth2.hosts`: `{h}` is not `host:port`"))?;
                if allowed_hosts.contains(&hp) {
                    Ok(hp)
                } else {
                    Err(format!("`oauth2.hosts`: `{h}` is not in `allowed_hosts`"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if hosts.is_empty() {
        return Err("`oauth2`: the token would go nowhere: list the receiver in `allowed_hosts`".into());
    }
    Ok(OAuth2Config {
        token_url,
        client_id,
        client_secret,
        scope: file.scope.filter(|s| !s.is_empty()),
        audience: file.audience.filter(|s| !s.is_empty()),
        auth_style,
        hosts,
    })
}

/// The manifest's `[tls]`: PEM texts, checked by building the identity they make.
pub fn tls(table: toml::Table, dir: &Path) -> Result<ClientTls, String> {
    let file: TlsFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e| format!("`tls`: {e}"))?;
    let read = |key: &str, written: &Option<Written>| {
        written
            .as_ref()
            .map(|w| w.resolve(dir).map_err(|e| format!("`tls.{key}`: {e}")))
            .transpose()
    };
    let cert = read("client_cert", &file.client_cert)?;
    let key = read("client_key", &file.client_key)?.map(Secret::new);
    let ca = read("ca", &file.ca)?;
    ClientTls::from_pem(cert.as_deref(), key.as_ref(), ca.as_deref())
}

/// The manifest's `[headers]`: each a string or a value read from the environment or a file
/// (then a secret), with a valid HTTP name and value; at most 32, and no `host`,
/// `content-length` or `transfer-encoding`, which the host's HTTP client owns.
pub fn held_headers(table: toml::Table, dir: &Path) -> Result<Vec<(String, ConfigValue)>, String> {
    use reqwest::header::{HeaderName, HeaderValue};
    if table.len() > 32 {
        return Err("`headers` may hold at most 32 headers".into());
    }
    let mut out = Vec::with_capacity(table.len());
    for (name, value) in table {
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(format!("`headers`: `{name}` is not a valid header name"));
        }
        if matches!(lower.as_str(), "host" | "content-length" | "transfer-encoding") {
            return Err(format!("`headers.{name}`: the host sets this header itself"));
        }
        let value = match Written::from_toml(&value).map_err(|e| format!("`headers.{name}`: {e}"))? {
            Some(written) => ConfigValue::Secret(Secret::new(
                written.resolve(dir).map_err(|e| format!("`headers.{name}`: {e}"))?,
            )),
            None => match value {
                toml::Value::String(s) => ConfigValue::Plain(s),
                _ => {
                    return Err(format!(
                        "`headers.{name}` must be a string, `{{ env = … }}` or `{{ file = … }}`"
                    ));
                }
            },
        };
        // Never quoted: the value may be a credential.
        if HeaderValue::from_str(value.as_str()).is_err() {
            return Err(format!("`headers.{name}`: the value is not a valid header value"));
        }
        out.push((lower, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn allowed() -> Vec<String> {
        vec!["api.example.com:443".into(), "files.example.com:443".into()]
    }

    #[test]
    fn oauth2_is_read_with_defaults_and_checked() {
        let dir = Path::new("/nowhere");
        let c = oauth2(
            table(
                r#"token_url = "https://auth.example.com/token"
                   client_id = "id"
                   client_secret = "s3cret""#,
            ),
            dir,
            &allowed(),
        )
        .unwrap();
        assert_eq!(
            (c.auth_style, c.hosts.clone(), c.scope.clone()),
            (AuthStyle::Basic, allowed(), None)
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = oauth2(
            table(
                r#"token_url = "http://127.0.0.1:9/token"
                   client_id = "id"
                   client_secret = "s"
                   auth_style = "body"
                   hosts = ["API.example.com:443"]"#,
            ),
            dir,
            &allowed(),
        )
        .unwrap();
        assert_eq!(
            (c.auth_style, c.hosts),
            (AuthStyle::Body, vec!["api.example.com:443".to_owned()])
        );

        let err = |text: &str| oauth2(table(text), dir, &allowed()).unwrap_err();
        let base = "client_id = \"id\"\nclient_secret = \"s3cret\"\n";
        let e = err(&format!("{base}token_url = \"http://auth.example.com/token\""));
        assert!(e.contains("must be https://"), "{e}");
        let e = err(&format!("{base}token_url = \"https://u:p@auth.example.com/token\""));
        assert!(e.contains("without user info"), "{e}");
        let e = err(&format!(
            "{base}token_url = \"https://a.example/t\"\nhosts = [\"evil.example:443\"]"
        ));
        assert!(e.contains("not in `allowed_hosts`"), "{e}");
        let e = err(&format!(
            "{base}token_url = \"https://a.example/t\"\nauth_style = \"jwt\""
        ));
        assert!(e.contains("`basic` or `body`"), "{e}");
        let e = err(&format!(
            "{base}token_url = \"https://a.example/t\"\ngrant = \"password\""
        ));
        assert!(e.contains("unknown field `grant`"), "{e}");
        let e = err("token_url = \"https://a.example/t\"\nclient_id = \"id\"");
        assert!(e.contains("client_secret"), "{e}");
        let e = err(
            "token_url = \"https://a.example/t\"\nclient_id = \"id\"\nclient_secret = { env = \"OUTBOXD_TEST_SURELY_UNSET\" }",
        );
        assert!(e.contains("`oauth2.client_secret`: environment variable"), "{e}");
        let e = oauth2(table(&format!("{base}token_url = \"https://a.example/t\"")), dir, &[]).unwrap_err();
        assert!(e.contains("allowed_hosts"), "{e}");
        assert!(!e.contains("s3cret"));
    }

    #[test]
    fn tls_errors_name_the_key_and_never_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = tls(
            table("client_cert = \"not pem\"\nclient_key = { file = \"key.pem\" }"),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e, "`tls.client_cert`: no PEM certificate found");
        let e = tls(table("client_key = { file = \"key.pem\" }"), dir.path()).unwrap_err();
        assert_eq!(e, "`tls.client_key` needs `tls.client_cert`");
        let e = tls(table("client_cert = { file = \"missing.pem\" }"), dir.path()).unwrap_err();
        assert!(e.starts_with("`tls.client_cert`: cannot read"), "{e}");
        let e = tls(table("ca = \"nothing\""), dir.path()).unwrap_err();
        assert!(e.starts_with("`tls.ca`"), "{e}");
        assert!(tls(table(""), dir.path()).unwrap_err().contains("needs"));
        let e = tls(table("key = 1"), dir.path()).unwrap_err();
        assert!(e.contains("unknown field `key`") && !e.contains("SECRETKEY"), "{e}");
    }
}
