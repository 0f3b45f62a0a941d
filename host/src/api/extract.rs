//! Extractors whose refusals are the API's JSON errors: axum's own rejections answer in
//! plain text, which no client of this API expects.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::ApiError;

/// The one path parameter of a route (an event id, a target name), as text. A parameter
/// that is not valid UTF-8 after percent-decoding is a `400` with a JSON body.
#[derive(Debug, Clone)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid path parameter: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The largest whole number the API takes: 2^53 - 1, the largest that every JSON parser
/// (JavaScript's included) reads exactly, and the bound the OpenAPI document gives.
pub const MAX_WHOLE: i64 = (1 << 53) - 1;

/// A whole number as a JSON body sends it (`5`, or `5.0`, which JSON Schema counts as an
/// integer too) or as a query string does (`"5"`), between -[`MAX_WHOLE`] and [`MAX_WHOLE`]:
/// beyond that a number written as a float may stand for several integers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Whole {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Whole {
    fn get<T: TryFrom<i64>>(self) -> Option<T> {
        let n = match self {
            Whole::Int(n) => n,
            Whole::Float(f) if f.fract() == 0.0 && f.abs() <= MAX_WHOLE as f64 => f as i64,
            Whole::Float(_) => return None,
            Whole::Text(s) => s.trim().parse().ok()?,
        };
        if n.abs() > MAX_WHOLE {
            return None;
        }
        T::try_from(n).ok()
    }
}

/// The OpenAPI schema of a list of whole numbers taken by [`whole_list`].
pub fn whole_list_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(-MAX_WHOLE as f64))
                .maximum(Some(MAX_WHOLE as f64)),
        )
        .build()
}

/// `deserialize_with` for an optional whole number (see [`Whole`]).
pub fn opt_whole<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Whole>::deserialize(d)?
        .map(|w| {
            w.get()
                .ok_or_else(|| D::Error::custom("expected a whole number in range"))
        })
        .transpose()
}

/// `deserialize_with` for a list of whole numbers (see [`Whole`]).
pub fn whole_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Whole>::deserialize(d)?
        .into_iter()
        .map(|w| w.get().ok_or_else(|| D::Error::custom("expected whole numbers")))
        .collect()
}

/// Checks the paging parameters of a listing: `limit` 1 to `max` (default `default`) and
/// `after` a delivery id or 0 (default 0). The message names the parameter.
pub fn paging(after: Option<i64>, limit: Option<usize>, default: usize, max: usize) -> Result<(i64, usize), ApiError> {
    let limit = match limit {
        None => default,
        Some(l) if (1..=max).contains(&l) => l,
        Some(l) => {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be between 1 and {max}, not {l}"
            )));
        }
    };
    let after = match after {
        None => 0,
        Some(a) if a >= 0 => a,
        Some(a) => {
            return Err(ApiError::BadRequest(format!(
                "`after` must be a delivery id (0 or more), not {a}"
            )));
        }
    };
    Ok((after, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_refuses_values_outside_the_documented_ranges_naming_them() {
        assert_eq!(paging(None, None, 100, 1000).unwrap(), (0, 100));
        assert_eq!(paging(Some(7), Some(1000), 100, 1000).unwrap(), (7, 1000));
        for (after, limit, word) in [
            (None, Some(0), "`limit`"),
            (None, Some(100_000), "`limit`"),
            (Some(-1), None, "`after`"),
        ] {
            let e = paging(after, limit, 100, 1000).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }

    #[derive(Deserialize)]
    struct Ids {
        #[serde(deserialize_with = "whole_list")]
        ids: Vec<i64>,
    }

    #[test]
    fn whole_numbers_are_taken_as_floats_too_up_to_2_to_the_53() {
        let ids: Ids = serde_json::from_str(r#"{"ids": [784.0, 9007199254740991.0, -3704, "12"]}"#).unwrap();
        assert_eq!(ids.ids, vec![784, MAX_WHOLE, -3704, 12]);
        for bad in [
            r#"{"ids": [1.5]}"#,
            r#"{"ids": [1e19]}"#,
            r#"{"ids": ["x"]}"#,
            // Past 2^53 a float stands for several integers; past int64 an integer is rounded.
            r#"{"ids": [9007199254740992.0]}"#,
            r#"{"ids": [9007199254740992]}"#,
            r#"{"ids": [-9223372036854775809]}"#,
        ] {
            assert!(serde_json::from_str::<Ids>(bad).is_err(), "{bad}");
        }
    }
}
