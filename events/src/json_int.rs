//! Integer fields of request bodies, as JSON numbers. RFC 8259 has one number type and JSON Schema's
//! `integer` is "a number with a zero fractional part", so `5.0` is the integer 5: these take any number
//! without a fraction (within the target type) and refuse the rest, as the OpenAPI document states them.

use serde::Deserialize;
use serde::de::{Deserializer, Error};

/// The largest integer a JSON number written with a fraction or exponent holds exactly (2^53).
const EXACT_MAX: f64 = 9_007_199_254_740_992.0;

/// A `u64` from a JSON number without a fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonU64(pub u64);

impl<'de> Deserialize<'de> for JsonU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(u) = n.as_u64() {
            return Ok(JsonU64(u));
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (0.0..=EXACT_MAX).contains(&f) => Ok(JsonU64(f as u64)),
            _ => Err(D::Error::custom(format!(
                "invalid value: {n}, expected a non-negative integer"
            ))),
        }
    }
}

/// `#[serde(deserialize_with = "json_int::u64")]`
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    JsonU64::deserialize(d).map(|n| n.0)
}

/// `#[serde(deserialize_with = "json_int::u32")]`
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = JsonU64::deserialize(d)?.0;
    u32::try_from(n).map_err(|_| D::Error::custom(format!("invalid value: {n}, expected a u32")))
}

/// `#[serde(default, deserialize_with = "json_int::option_u64")]`
pub fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<JsonU64>::deserialize(d)?.map(|n| n.0))
}

/// `#[serde(default, deserialize_with = "json_int::option_vec_u64")]`
pub fn option_vec_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u64>>, D::Error> {
    Ok(Option::<Vec<JsonU64>>::deserialize(d)?.map(|v| v.into_iter().map(|n| n.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "u32")]
        a: u32,
        #[serde(default, deserialize_with = "option_u64")]
        b: Option<u64>,
    }

    #[test]
    fn integral_numbers_are_integers_and_the_rest_is_refused() {
        let t: T = serde_json::from_str(r#"{"a": 5.0, "b": 1e3}"#).unwrap();
        assert_eq!((t.a, t.b), (5, Some(1000)));
        let t: T = serde_json::from_str(r#"{"a": 7, "b": null}"#).unwrap();
        assert_eq!((t.a, t.b), (7, None));
        for bad in [
            r#"{"a": 5.5}"#,
            r#"{"a": -1}"#,
            r#"{"a": 4294967296}"#,
            r#"{"a": "5"}"#,
            r#"{"a": 1, "b": 1e300}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }
}
