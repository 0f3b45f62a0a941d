//! Extractors whose refusals are the API's JSON errors: axum's own rejections answer in
//! plain text, which no client of this API expects.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

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
}
