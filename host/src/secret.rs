//! Secrets kept out of configuration files: wherever a secret may be written (a `[config]`
//! value of a target manifest, an API token, the database URL), `{ env = "NAME" }` or
//! `{ file = "PATH" }` may stand in place of the string. Either is read when the file is loaded
//! (at start, at every plugin reload and at every `SIGHUP`), and the value is held as a
//! [`Secret`] or a [`ConfigValue::Secret`], whose `Debug` never shows it.
//!
//! A relative `file` is relative to `$CREDENTIALS_DIRECTORY` when that is set (systemd's
//! `LoadCredential=`), else to the directory of the configuration file that names it. One
//! trailing newline (`\n` or `\r\n`) of the file is trimmed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use thiserror::Error;

/// The variable systemd sets to the directory of a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A string that must not be shown: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why an `{ env = … }` or `{ file = … }` could not be read. Never holds the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    Unset(String),
    #[error("environment variable `{0}` is not valid UTF-8")]
    NotUnicode(String),
    #[error("cannot read {}: {kind}", .path.display())]
    File { path: PathBuf, kind: std::io::ErrorKind },
    #[error("{} is not UTF-8 text", .path.display())]
    FileNotUnicode { path: PathBuf },
}

/// A string as written: the value itself, or where to read it from.
#[derive(Clone, PartialEq, Eq)]
pub enum Written {
    Plain(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(***)"),
            Self::Env(name) => write!(f, "Env({name:?})"),
            Self::File(path) => write!(f, "File({path:?})"),
        }
    }
}

impl Written {
    /// Whether the value is read from elsewhere (and so is a secret).
    pub fn is_indirect(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The value: itself, the variable's, or the file's (one trailing newline trimmed). `base`
    /// is the directory of the configuration file, for a relative `file` when
    /// `$CREDENTIALS_DIRECTORY` is not set.
    pub fn resolve(&self, base: &Path) -> Result<String, SecretError> {
        match self {
            Self::Plain(text) => Ok(text.clone()),
            Self::Env(name) => match std::env::var(name) {
                Ok(value) => Ok(value),
                Err(std::env::VarError::NotPresent) => Err(SecretError::Unset(name.clone())),
                Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode(name.clone())),
            },
            Self::File(path) => {
                let path = file_path(path, base);
                let bytes = std::fs::read(&path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    kind: e.kind(),
                })?;
                let mut text = String::from_utf8(bytes).map_err(|_| SecretError::FileNotUnicode { path })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(text)
            }
        }
    }

    /// A manifest's `[config]` value: a table with an `env` or a `file` key is a reference
    /// (and may hold no other key); `None` for any other value, which stays as it is.
    pub fn from_toml(value: &toml::Value) -> Result<Option<Self>, String> {
        let toml::Value::Table(table) = value else {
            return Ok(None);
        };
        if !table.contains_key("env") && !table.contains_key("file") {
            return Ok(None);
        }
        let mut found = None;
        for (key, v) in table {
            let text = || {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`{key}` must be a string"))
            };
            let this = match key.as_str() {
                "env" => Self::Env(text()?),
                "file" => Self::File(PathBuf::from(text()?)),
                other => {
                    return Err(format!(
                        "unknown key `{other}` beside `env`/`file` (expected only one of them)"
                    ));
                }
            };
            if found.replace(this).is_some() {
                return Err("give one of `env` and `file`, not both".into());
            }
        }
        found.map(Some).ok_or_else(|| "expected `env` or `file`".into())
    }
}

/// `path`, or for a relative one: under `$CREDENTIALS_DIRECTORY` if set, else under `base`.
fn file_path(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    match std::env::var_os(CREDENTIALS_DIRECTORY) {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join(path),
        _ => base.join(path),
    }
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Written;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, `{ env = \"NAME\" }` or `{ file = \"PATH\" }`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Written, E> {
                Ok(Written::Plain(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Written, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let this = match key.as_str() {
                        "env" => Written::Env(map.next_value()?),
                        "file" => Written::File(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(this).is_some() {
                        return Err(de::Error::custom("give one of `env` and `file`, not both"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("expected `env` or `file`"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A manifest's `[config]` value as the plugin's `config.get` returns it: written in the
/// manifest, or read through `{ env }`/`{ file }` and then never shown.
#[derive(Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Plain(String),
    Secret(Secret),
}

impl ConfigValue {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Plain(text) => text,
            Self::Secret(secret) => secret.expose(),
        }
    }
}

impl From<String> for ConfigValue {
    fn from(text: String) -> Self {
        Self::Plain(text)
    }
}

impl fmt::Debug for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(text) => fmt::Debug::fmt(text, f),
            Self::Secret(secret) => fmt::Debug::fmt(secret, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        value: Written,
    }

    fn parse(text: &str) -> Result<Written, String> {
        toml::from_str::<File>(text).map(|f| f.value).map_err(|e| e.to_string())
    }

    #[test]
    fn the_three_forms_parse_and_other_keys_are_refused() {
        assert_eq!(parse("value = \"x\"").unwrap(), Written::Plain("x".into()));
        assert_eq!(parse("value = { env = \"X\" }").unwrap(), Written::Env("X".into()));
        assert_eq!(
            parse("value = { file = \"a/b\" }").unwrap(),
            Written::File("a/b".into())
        );
        let e = parse("value = { env = \"X\", other = 1 }").unwrap_err();
        assert!(e.contains("unknown field `other`"), "{e}");
        let e = parse("value = { env = \"X\", file = \"y\" }").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        assert!(parse("value = {}").unwrap_err().contains("`env` or `file`"));
        assert!(parse("value = 3").is_err());

        let t = |s: &str| s.parse::<toml::Table>().unwrap()["v"].clone();
        assert_eq!(Written::from_toml(&t("v = 3")).unwrap(), None);
        assert_eq!(Written::from_toml(&t("v = { a = 1 }")).unwrap(), None);
        assert_eq!(
            Written::from_toml(&t("v = { env = \"X\" }")).unwrap(),
            Some(Written::Env("X".into()))
        );
        let e = Written::from_toml(&t("v = { env = \"X\", other = 1 }")).unwrap_err();
        assert!(e.contains("`other`"), "{e}");
        assert!(Written::from_toml(&t("v = { file = 1 }")).is_err());
    }

    #[test]
    fn files_lose_one_trailing_newline_and_errors_hold_no_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "whsec_abc\r\n").unwrap();
        std::fs::write(dir.path().join("t"), "two\n\n").unwrap();
        // Only when CREDENTIALS_DIRECTORY is unset does `base` apply; tests do not set it.
        if std::env::var_os(CREDENTIALS_DIRECTORY).is_none() {
            assert_eq!(Written::File("s".into()).resolve(dir.path()).unwrap(), "whsec_abc");
            assert_eq!(Written::File("t".into()).resolve(dir.path()).unwrap(), "two\n");
        }
        let abs = dir.path().join("s");
        assert_eq!(Written::File(abs).resolve(Path::new("/nowhere")).unwrap(), "whsec_abc");
        let e = Written::File(dir.path().join("missing"))
            .resolve(dir.path())
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = Written::Env("OUTBOXD_TEST_SURELY_UNSET_VARIABLE".into())
            .resolve(dir.path())
            .unwrap_err();
        assert_eq!(e, SecretError::Unset("OUTBOXD_TEST_SURELY_UNSET_VARIABLE".into()));
        let v = ConfigValue::Secret(Secret::new("whsec_abc".into()));
        assert_eq!(v.as_str(), "whsec_abc");
        assert!(!format!("{v:?} {:?}", Written::Plain("whsec_abc".into())).contains("abc"));
    }
}
