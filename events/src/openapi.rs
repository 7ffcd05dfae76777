//! JSON Schemas of what the API accepts, built from the constants and lists the validators themselves use
//! (feature `openapi`). The node's OpenAPI document takes its request bodies and parameters from here and
//! from types deriving `utoipa::ToSchema`, so the document cannot state another limit than the code keeps.
//!
//! Patterns are ECMA-262 as JSON Schema asks, written within the subset every generator and validator
//! reads alike (no look-around).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, Object, ObjectBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};

use crate::ids::ID_LEN_MAX;
use crate::limits::{
    CAPACITY_KG_MAX, MANIFEST_CONTAINERS_MAX, NAME_CHARS_MAX, NOTE_CHARS_MAX, READING_KINDS,
    READING_SEQ_MAX, REPORT_INTERVAL_S_MAX, STAGES, TERMINAL_KINDS,
};

/// Names a schema function as a type, for `#[param(value_type = …, inline)]` and `value_type` in bodies:
/// utoipa drops `required` and the doc comment of a parameter given by `schema_with`, and keeps both for
/// a `value_type` (whose `Option` says whether it is required).
#[macro_export]
macro_rules! openapi_schema_type {
    ($($(#[$doc:meta])* $name:ident => $f:path;)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::RefOr::T($f().into())
            }
        }

        impl utoipa::ToSchema for $name {}
    )+};
}

openapi_schema_type! {
    /// An id.
    Id => id;
    /// A province's division code.
    ProvinceCode => province_code;
    /// A city's division code.
    CityCode => city_code;
    /// An RFC 3339 instant.
    Instant => instant;
    /// A key fingerprint.
    Fingerprint => fingerprint;
    /// A reading kind.
    ReadingKindName => reading_kind;
}

/// `^[A-Za-z0-9._-]{1,64}$`: every id.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// A province's 6-digit division code (GB/T 2260): not starting with 0, ending in 0000.
pub const PROVINCE_CODE_PATTERN: &str = "^[1-9][0-9]0000$";
/// A 6-digit division code below a province: not starting with 0, not ending in 0000 (checked per province
/// where the body names both).
pub const CITY_CODE_PATTERN: &str =
    "^[1-9][0-9](000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})$";
/// A waste category HW01 ..= HW50, or a full code of the National Hazardous Waste List (e.g. 900-041-49).
pub const WASTE_CODE_PATTERN: &str = "^(HW(0[1-9]|[1-4][0-9]|50)|[0-9]{3}-[0-9]{3}-[0-9]{2})$";
/// A key fingerprint: SHA-256 of the SubjectPublicKeyInfo DER, 64 lower-case hex digits.
pub const FINGERPRINT_PATTERN: &str = "^[0-9a-f]{64}$";
/// The shape of a PEM public key (`openssl pkey -pubout`). That it holds an SM2 point is checked on receipt
/// (`invalid_public_key`): no schema can say so.
pub const PUBLIC_KEY_PEM_PATTERN: &str =
    "^\\s*-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\\s]+-----END PUBLIC KEY-----\\s*$";

/// Characters `check_text` refuses on one line: every Unicode control character (Cc).
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";
/// ... and in multi-line text, where tab, LF and CR are allowed.
const CONTROL_BUT_LINE_BREAKS: &str = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// An id: `^[A-Za-z0-9._-]{1,64}$`.
pub fn id() -> Object {
    string()
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(ID_LEN_MAX))
        .build()
}

/// Free text as the validators take it, `check_text(s.trim(), max, one_line)`: once trimmed of white space,
/// 1 ..= `max` characters, no control characters (but tab, LF and CR when not `one_line`). The pattern says
/// it exactly: white space around a core that starts and ends with another character.
pub fn text(max: usize, one_line: bool) -> Object {
    let no = if one_line {
        CONTROL
    } else {
        CONTROL_BUT_LINE_BREAKS
    };
    let inner = max.saturating_sub(2);
    string()
        .pattern(Some(format!(
            "^\\s*([^\\s{no}]|[^\\s{no}][^{no}]{{0,{inner}}}[^\\s{no}])\\s*$"
        )))
        .min_length(Some(1))
        .build()
}

/// `schema` or JSON `null`: an optional body field (`Option` in serde takes `null` as absent).
pub fn or_null(mut schema: Object) -> Object {
    if let SchemaType::Type(t) = schema.schema_type {
        schema.schema_type = SchemaType::Array(vec![t, Type::Null]);
    }
    if let Some(values) = &mut schema.enum_values {
        values.push(serde_json::Value::Null);
    }
    schema
}

/// An optional id in a body.
pub fn optional_id() -> Object {
    or_null(id())
}

/// An optional public key in a body.
pub fn optional_public_key_pem() -> Object {
    or_null(public_key_pem())
}

/// An optional stage in a body.
pub fn optional_stage() -> Object {
    or_null(stage())
}

/// An optional waste code in a body.
pub fn optional_waste_code() -> Object {
    or_null(waste_code())
}

/// A manifest's `notes`: white space only (or `null`) is no notes, else a note.
pub fn manifest_notes() -> Object {
    let mut notes = or_null(note());
    notes.pattern = notes.pattern.map(|p| p.replacen("\\s*(", "\\s*(|", 1));
    notes.min_length = None;
    notes
}

/// A reading's `seq`: 1 ..= 2^53 - 1 (what a JSON number holds exactly).
pub fn reading_seq() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(READING_SEQ_MAX))
        .build()
}

/// A name (enterprise): one line, 1 ..= `NAME_CHARS_MAX` characters.
pub fn name() -> Object {
    text(NAME_CHARS_MAX, true)
}

/// A note: 1 ..= `NOTE_CHARS_MAX` characters, line breaks allowed.
pub fn note() -> Object {
    text(NOTE_CHARS_MAX, false)
}

/// A province's division code.
pub fn province_code() -> Object {
    string().pattern(Some(PROVINCE_CODE_PATTERN)).build()
}

/// A city's (prefecture's) division code.
pub fn city_code() -> Object {
    string().pattern(Some(CITY_CODE_PATTERN)).build()
}

/// A mass in kg: (0, `CAPACITY_KG_MAX`].
pub fn kilograms() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .exclusive_minimum(Some(0))
        .maximum(Some(CAPACITY_KG_MAX))
        .build()
}

/// A waste code.
pub fn waste_code() -> Object {
    string().pattern(Some(WASTE_CODE_PATTERN)).build()
}

/// A key fingerprint.
pub fn fingerprint() -> Object {
    string().pattern(Some(FINGERPRINT_PATTERN)).build()
}

/// A PEM public key.
pub fn public_key_pem() -> Object {
    string()
        .pattern(Some(PUBLIC_KEY_PEM_PATTERN))
        .max_length(Some(4096))
        .description(Some(
            "An SM2 public key as SubjectPublicKeyInfo PEM (`openssl pkey -pubout`, `custodian terminal --keygen`)",
        ))
        .build()
}

/// An RFC 3339 instant.
pub fn instant() -> Object {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .build()
}

/// A terminal kind.
pub fn terminal_kind() -> Object {
    string().enum_values(Some(TERMINAL_KINDS)).build()
}

/// A reading kind.
pub fn reading_kind() -> Object {
    string().enum_values(Some(READING_KINDS)).build()
}

/// A custody stage.
pub fn stage() -> Object {
    string().enum_values(Some(STAGES)).build()
}

/// A terminal's report interval in seconds: 1 ..= `REPORT_INTERVAL_S_MAX`.
pub fn report_interval_s() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(REPORT_INTERVAL_S_MAX))
        .build()
}

/// `container_ids` of a manifest: 1 ..= `MANIFEST_CONTAINERS_MAX` distinct ids.
pub fn container_ids() -> Schema {
    ArrayBuilder::new()
        .items(id())
        .min_items(Some(1))
        .max_items(Some(MANIFEST_CONTAINERS_MAX))
        .unique_items(true)
        .build()
        .into()
}

/// `POST /v1/enterprises`: the city must lie in the province, which JSON Schema states only one branch per
/// province prefix (10 ..= 99); the other fields are the same in every branch.
pub fn enterprise_body() -> RefOr<Schema> {
    let mut any = AnyOfBuilder::new().description(Some(
        "An enterprise: id, name, the province and the city within it (6-digit GB/T 2260 codes), storage capacity in kg",
    ));
    for prefix in 10..=99 {
        let province = format!("{prefix}0000");
        let city = CITY_CODE_PATTERN.replacen("[1-9][0-9]", &prefix.to_string(), 1);
        any = any.item(
            ObjectBuilder::new()
                .property("id", id())
                .property("name", name())
                .property(
                    "province_code",
                    string().enum_values(Some([province])).build(),
                )
                .property("city_code", string().pattern(Some(city)).build())
                .property("storage_capacity_kg", kilograms())
                .required("id")
                .required("name")
                .required("province_code")
                .required("city_code")
                .required("storage_capacity_kg")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .build(),
        );
    }
    RefOr::T(Schema::AnyOf(any.build()))
}

#[cfg(test)]
mod tests {
    //! Each pattern against the validator it stands for: the one matches exactly what the other takes.

    use proptest::prelude::*;

    use super::*;
    use crate::event::{EnterpriseRegistered, RawEnterprise, check_text};

    fn matches(schema: &Object, s: &str) -> bool {
        thread_local! {
            static COMPILED: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
                Default::default();
        }
        let pattern = schema.pattern.clone().expect("a pattern");
        let re = COMPILED.with_borrow_mut(|c| {
            c.entry(pattern.clone())
                .or_insert_with(|| {
                    regex::RegexBuilder::new(&pattern)
                        .size_limit(1 << 30)
                        .build()
                        .unwrap()
                })
                .clone()
        });
        let n = s.chars().count();
        re.is_match(s)
            && schema.min_length.is_none_or(|m| n >= m)
            && schema.max_length.is_none_or(|m| n <= m)
    }

    fn enterprise(province: &str, city: &str) -> bool {
        let raw = RawEnterprise {
            id: "E-1".into(),
            name: "n".into(),
            province_code: province.into(),
            city_code: city.into(),
            storage_capacity_kg: 1.0,
        };
        EnterpriseRegistered::from_raw(&raw).is_ok()
    }

    /// The enterprise body's branch for `province`, if any, and whether `city` matches it.
    fn enterprise_schema_takes(province: &str, city: &str) -> bool {
        let RefOr::T(Schema::AnyOf(any)) = enterprise_body() else {
            panic!("an anyOf");
        };
        any.items.iter().any(|branch| {
            let RefOr::T(Schema::Object(o)) = branch else {
                return false;
            };
            let prop = |name: &str| match &o.properties[name] {
                RefOr::T(Schema::Object(p)) => p.clone(),
                _ => panic!("{name} inline"),
            };
            let p = prop("province_code");
            p.enum_values.as_ref().unwrap()[0] == province && matches(&prop("city_code"), city)
        })
    }

    proptest! {
        #[test]
        fn the_id_pattern_is_check_id(s in "[A-Za-z0-9._/é -]{0,70}") {
            prop_assert_eq!(matches(&id(), &s), crate::ids::check_id(&s).is_ok());
        }

        #[test]
        fn the_text_patterns_are_check_text_of_the_trimmed(
            s in "[ a\u{3000}\t\n\r\u{1}\u{85}\u{7f}中]{0,12}", one_line: bool,
        ) {
            prop_assert_eq!(matches(&text(10, one_line), &s), check_text(s.trim(), 10, one_line).is_ok());
        }

        #[test]
        fn the_enterprise_branches_are_the_division_rules(p in "[0-9]{2}(0000|[0-9]{4})", c in "[0-9]{2}(0000|0[0-9]{3}|[0-9]{4})") {
            prop_assert_eq!(enterprise_schema_takes(&p, &c), enterprise(&p, &c));
        }

        #[test]
        fn the_manifest_notes_pattern_is_the_manifests_rule(s in "[ a\t\n\u{1}\u{85}中]{0,8}") {
            let manifest = crate::domain::manifest::RawManifest {
                id: "M-1".into(),
                generator_id: "E-1".into(),
                receiver_id: "E-2".into(),
                waste_code: "HW08".into(),
                container_ids: vec!["C-1".into()],
                declared_kg: 1.0,
                notes: Some(s.clone()),
            };
            let ok = crate::event::ManifestOpened::from_raw(&manifest).is_ok();
            prop_assert_eq!(matches(&manifest_notes(), &s), ok);
        }

        #[test]
        fn the_waste_code_pattern_is_is_waste_code(s in "(HW[0-9]{2}|[0-9]{3}-[0-9]{3}-[0-9]{2}|[0-9HW-]{0,11})") {
            prop_assert_eq!(matches(&waste_code(), &s), crate::reading::is_waste_code(&s));
        }
    }

    #[test]
    fn the_longest_texts_are_the_validators_longest() {
        for (max, one_line) in [(NAME_CHARS_MAX, true), (NOTE_CHARS_MAX, false)] {
            for n in [max - 1, max, max + 1] {
                let s = format!(" {} ", "字".repeat(n));
                assert_eq!(
                    matches(&text(max, one_line), &s),
                    check_text(s.trim(), max, one_line).is_ok(),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn the_province_pattern_is_the_enterprises_rule() {
        for p in ["440000", "010000", "440100", "44000", "100000", "990000"] {
            let ok = enterprise(p, &format!("{}0100", &p[..2.min(p.len())]));
            assert_eq!(matches(&province_code(), p), ok, "{p}");
        }
    }
}
