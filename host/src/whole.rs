//! Whole numbers as clients write them: JSON's `5` and `5.0` (JSON Schema counts both as
//! integers), and a query string's `"5"`, bounded to what every JSON parser reads exactly.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

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

#[cfg(test)]
mod tests {
    use super::*;

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
