//! Reading configuration files: `outboxd.toml` (`server::config`) and the target manifests
//! (`targets::manifest`) are TOML parsed strictly, and every error they produce is a
//! [`ConfigError`] naming the file (and, for an unknown key, the key). Its `Display` (for the
//! log and the command line) quotes the offending line; [`ConfigError::located`] is what may
//! be shown to API clients: file, line, column and message, never the file's text, which may
//! hold secrets.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// A configuration file that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
        /// 1-based line and column of the error, when the parser located it.
        at: Option<(u32, u32)>,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ConfigError {
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// Where the error is and what it says, without any of the file's text.
    pub fn located(&self) -> Located {
        match self {
            Self::Read { path, source } => Located {
                file: path.clone(),
                line: None,
                column: None,
                message: format!("cannot read: {}", source.kind()),
            },
            Self::Parse { path, source, at } => Located {
                file: path.clone(),
                line: at.map(|(l, _)| l),
                column: at.map(|(_, c)| c),
                message: source.message().trim().to_owned(),
            },
            Self::Invalid { path, message } => Located {
                file: path.clone(),
                line: None,
                column: None,
                message: message.clone(),
            },
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Parse { path, .. } | Self::Invalid { path, .. } => path,
        }
    }
}

/// A configuration error as API clients may see it: where, and the parser's message alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses `text`, the contents of `path`.
pub fn parse_toml<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        at: source.span().map(|span| line_column(text, span.start)),
        source: Box::new(source),
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        name: Option<String>,
    }

    #[test]
    fn an_error_located_for_clients_holds_no_text_of_the_file() {
        let text = "name = \"a\"\nsecret = whsec_SECRET\n";
        let e = parse_toml::<File>(Path::new("t.toml"), text).unwrap_err();
        assert!(e.to_string().contains("whsec_SECRET"), "the log keeps the detail: {e}");
        let at = e.located();
        assert_eq!((at.line, at.column), (Some(2), Some(10)), "{at:?}");
        assert!(!at.message.contains("SECRET") && !at.message.is_empty(), "{at:?}");
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
    }
}
