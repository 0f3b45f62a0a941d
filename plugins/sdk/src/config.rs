//! The target's own configuration (the `[config]` table of its manifest)
//! through the `config` import.
//!
//! Values come back as text: strings as they are; numbers, booleans, arrays
//! and tables as their JSON text (so `timeout_ms = 5000` reads as `"5000"`).
//! A missing or unusable required value is a configuration mistake that
//! retrying cannot fix, so the helpers report it as a permanent error.

use std::fmt::Display;
use std::str::FromStr;

use crate::DeliveryError;
use crate::bindings::outboxd::target::config;

/// The value of `key`, or `None` if the manifest does not set it.
pub fn get(key: &str) -> Option<String> {
    config::get(key)
}

/// The value of `key`, or a permanent error naming the key if it is not set.
///
/// Use it with `?` inside [`Target::deliver`](crate::Target::deliver):
/// `let url = config::require("url")?;`.
pub fn require(key: &str) -> Result<String, DeliveryError> {
    get(key).ok_or_else(|| missing(key))
}

/// The value of `key` parsed as `T`: `Ok(None)` if it is not set, a permanent
/// error naming the key if it does not parse.
///
/// For example `config::get_as::<u32>("timeout_ms")?`.
pub fn get_as<T>(key: &str) -> Result<Option<T>, DeliveryError>
where
    T: FromStr,
    T::Err: Display,
{
    get(key).map(|value| parse(key, &value)).transpose()
}

fn missing(key: &str) -> DeliveryError {
    DeliveryError::permanent(format!("missing required config key `{key}`"))
}

fn parse<T>(key: &str, value: &str) -> Result<T, DeliveryError>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .trim()
        .parse()
        .map_err(|err| DeliveryError::permanent(format!("invalid config key `{key}`: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_a_permanent_error_naming_it() {
        assert_eq!(
            missing("url"),
            DeliveryError::permanent("missing required config key `url`")
        );
    }

    #[test]
    fn values_parse_or_fail_permanently_naming_the_key() {
        assert_eq!(parse::<u32>("timeout_ms", "5000"), Ok(5000));
        let err = parse::<u32>("timeout_ms", "soon").unwrap_err();
        assert!(!err.is_retry());
        assert!(err.reason().starts_with("invalid config key `timeout_ms`: "));
    }
}
