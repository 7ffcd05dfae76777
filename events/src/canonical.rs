//! Canonical JSON (RFC 8785, "JCS") for the subset of JSON that Custodian's events use: objects, strings,
//! integers within ±(2^53 − 1) and nothing else. Fingerprints are SHA-256 over these bytes, so an auditor can
//! recompute them with any JCS implementation from what `GET /v1/events` shows.
//!
//! Why our own writer instead of `serde_json` with a sorted map: serde_json's key order silently becomes
//! insertion order when any crate in the build enables its `preserve_order` feature, and floats would render
//! differently from ECMAScript. This writer sorts keys itself and has no floats to get wrong.

use std::fmt::Write as _;

/// The largest magnitude an integer may have to be exact in every JSON reader (IEEE 754 doubles); RFC 8785
/// serialises numbers as ECMAScript does, which is exact only up to here.
pub const JSON_INT_ABS_MAX: i64 = (1 << 53) - 1;

/// A JSON value in the canonical subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jcs {
    Str(String),
    /// Must lie within ±[`JSON_INT_ABS_MAX`]; the writer asserts it.
    Int(i64),
    Obj(Vec<(&'static str, Jcs)>),
    /// Elements keep their order.
    Arr(Vec<Jcs>),
}

impl Jcs {
    /// Builds an object; keys are sorted when written, so callers may list them in any order.
    pub fn obj(fields: Vec<(&'static str, Jcs)>) -> Self {
        Jcs::Obj(fields)
    }

    /// Adds `key` to an object when `value` is present (absent optional fields are omitted, not null).
    pub fn with_optional(mut self, key: &'static str, value: Option<Jcs>) -> Self {
        if let (Jcs::Obj(fields), Some(v)) = (&mut self, value) {
            fields.push((key, v));
        }
        self
    }

    pub fn str(s: impl Into<String>) -> Self {
        Jcs::Str(s.into())
    }

    /// The canonical bytes of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        self.write(&mut out);
        out.into_bytes()
    }

    /// The canonical text of this value.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Jcs::Str(s) => write_str(out, s),
            Jcs::Int(i) => {
                // A broken invariant, not bad input: every integer is range-checked where it enters the domain.
                assert!(
                    i.abs() <= JSON_INT_ABS_MAX,
                    "integer {i} is outside the exact JSON range"
                );
                let _ = write!(out, "{i}");
            }
            Jcs::Obj(fields) => {
                // RFC 8785 sorts by UTF-16 code units; our keys are ASCII, where that equals byte order.
                let mut sorted: Vec<&(&'static str, Jcs)> = fields.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in sorted.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
            Jcs::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
        }
    }

    /// Converts to a `serde_json::Value` (for showing an event over the API).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Jcs::Str(s) => serde_json::Value::String(s.clone()),
            Jcs::Int(i) => serde_json::Value::from(*i),
            Jcs::Obj(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_value()))
                    .collect(),
            ),
            Jcs::Arr(items) => serde_json::Value::Array(items.iter().map(Jcs::to_value).collect()),
        }
    }
}

/// Writes a JSON string as ECMAScript's `JSON.stringify` does (RFC 8785 section 3.2.2.2).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    // Most strings (ids, base64, timestamps) need no escaping at all: copy them whole.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_sorted_and_there_is_no_whitespace() {
        let v = Jcs::obj(vec![
            ("value", Jcs::Int(152_300_000)),
            ("kind", Jcs::str("weight")),
            (
                "a",
                Jcs::obj(vec![("z", Jcs::Int(-1)), ("b", Jcs::str(""))]),
            ),
        ]);
        assert_eq!(
            v.to_text(),
            r#"{"a":{"b":"","z":-1},"kind":"weight","value":152300000}"#
        );
    }

    #[test]
    fn arrays_keep_their_order() {
        let v = Jcs::obj(vec![(
            "a",
            Jcs::Arr(vec![Jcs::Int(2), Jcs::str("x"), Jcs::Arr(vec![])]),
        )]);
        assert_eq!(v.to_text(), r#"{"a":[2,"x",[]]}"#);
    }

    #[test]
    fn strings_escape_like_ecmascript() {
        let v = Jcs::str("q\"b\\s/\u{08}\u{0c}\n\r\t\u{01}\u{1f}é€😀\u{2028}");
        assert_eq!(
            v.to_text(),
            "\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001fé€😀\u{2028}\""
        );
    }

    #[test]
    #[should_panic(expected = "outside the exact JSON range")]
    fn integers_beyond_2_pow_53_are_a_broken_invariant() {
        Jcs::Int(JSON_INT_ABS_MAX + 1).to_text();
    }

    proptest! {
        /// Whatever the strings, the canonical text is valid JSON that reads back to the same value.
        #[test]
        fn canonical_text_is_json_that_reads_back(a in ".*", b in ".*", n in -JSON_INT_ABS_MAX..=JSON_INT_ABS_MAX) {
            let v = Jcs::obj(vec![("b", Jcs::Str(b.clone())), ("a", Jcs::Str(a.clone())), ("n", Jcs::Int(n))]);
            let text = v.to_text();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(parsed, v.to_value());
            // Keys come out sorted.
            let ia = text.find("\"a\":").unwrap();
            prop_assert!(ia == 1);
        }

        /// Writing a value, reading it and writing it again gives the same bytes (a fixed point).
        #[test]
        fn canonical_form_is_a_fixed_point(s in ".*", n in -JSON_INT_ABS_MAX..=JSON_INT_ABS_MAX) {
            let v = Jcs::obj(vec![("s", Jcs::Str(s)), ("n", Jcs::Int(n))]);
            let text = v.to_text();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            let again = Jcs::obj(vec![
                ("s", Jcs::Str(parsed["s"].as_str().unwrap().to_owned())),
                ("n", Jcs::Int(parsed["n"].as_i64().unwrap())),
            ]);
            prop_assert_eq!(again.to_text(), text);
        }
    }
}
