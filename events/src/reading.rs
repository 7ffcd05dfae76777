//! Readings: what a terminal measured, in the canonical form that is fingerprinted, deduplicated and stored.
//!
//! Every value is converted to its kind's base unit and kept as an integer count of the kind's resolution
//! unit, so that equal quantities written in different units (152.3 kg and 152300 g) have equal canonical
//! bytes and so equal fingerprints. Conversion multiplies in `f64` and rounds half away from zero.
//!
//! | kind          | base unit | stored as (resolution) | accepted units            | range (base unit)   |
//! |---------------|-----------|------------------------|---------------------------|---------------------|
//! | `weight`      | kg        | mg (10⁻⁶ kg)           | `g`, `kg`, `t`, `lb`      | 0 ..= 1,000,000 kg  |
//! | `level`       | m         | µm (10⁻⁶ m), `um`      | `mm`, `cm`, `m`           | 0 ..= 1,000 m       |
//! | `temperature` | °C        | m°C (10⁻³ °C), `mdegC` | `degC`, `C`, `K`, `degF`, `F` | −273.15 ..= 2,000 °C |
//! | `humidity`    | %RH       | 10⁻³ %RH, `mpctRH`     | `%`, `%RH`                | 0 ..= 100 %RH       |
//!
//! `container_id`, `stage` and `waste_code` are optional for every kind: a scale weighing a drum sends all
//! three, a tank load cell or a temperature sensor none.

use std::fmt::Write as _;

use rkyv::{Archive, Deserialize, Serialize};
use serde::Deserialize as SerdeDeserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Rejection;
use crate::canonical::Jcs;
use crate::ids::{ContainerId, ManifestId, TerminalId};
pub use crate::limits::READING_SEQ_MAX;

/// Readings measured before this instant (2000-01-01T00:00:00Z) are refused as a broken terminal clock.
pub const MEASURED_AT_MIN_NS: i64 = 946_684_800_000_000_000;

named_enum! {
    /// What a reading measures.
    #[derive(serde::Serialize, serde::Deserialize, PartialOrd, Ord, Hash)]
    pub enum ReadingKind {
        Weight => "weight",
        Level => "level",
        Temperature => "temperature",
        Humidity => "humidity",
    }
}

impl ReadingKind {
    /// The unit that values are reported in by the read models.
    pub fn base_unit(self) -> &'static str {
        match self {
            ReadingKind::Weight => "kg",
            ReadingKind::Level => "m",
            ReadingKind::Temperature => "degC",
            ReadingKind::Humidity => "%RH",
        }
    }

    /// The unit of the stored integer.
    pub fn resolution_unit(self) -> &'static str {
        match self {
            ReadingKind::Weight => "mg",
            ReadingKind::Level => "um",
            ReadingKind::Temperature => "mdegC",
            ReadingKind::Humidity => "mpctRH",
        }
    }

    /// Resolution units per base unit.
    pub fn resolution_per_base(self) -> i64 {
        match self {
            ReadingKind::Weight | ReadingKind::Level => 1_000_000,
            ReadingKind::Temperature | ReadingKind::Humidity => 1_000,
        }
    }

    /// The physically meaningful range, in the base unit.
    pub fn base_range(self) -> (f64, f64) {
        match self {
            ReadingKind::Weight => (0.0, 1_000_000.0),
            ReadingKind::Level => (0.0, 1_000.0),
            ReadingKind::Temperature => (-273.15, 2_000.0),
            ReadingKind::Humidity => (0.0, 100.0),
        }
    }

    /// Converts `value` given in `unit` to the base unit, or `None` when the unit is not one of this kind's.
    pub fn to_base(self, value: f64, unit: &str) -> Option<f64> {
        Some(match (self, unit) {
            (ReadingKind::Weight, "g") => value / 1_000.0,
            (ReadingKind::Weight, "kg") => value,
            (ReadingKind::Weight, "t") => value * 1_000.0,
            (ReadingKind::Weight, "lb") => value * 0.453_592_37,
            (ReadingKind::Level, "mm") => value / 1_000.0,
            (ReadingKind::Level, "cm") => value / 100.0,
            (ReadingKind::Level, "m") => value,
            (ReadingKind::Temperature, "degC" | "C") => value,
            (ReadingKind::Temperature, "K") => value - 273.15,
            (ReadingKind::Temperature, "degF" | "F") => (value - 32.0) * 5.0 / 9.0,
            (ReadingKind::Humidity, "%" | "%RH") => value,
            _ => return None,
        })
    }

    /// Converts to the stored integer directly from the reported unit where the factor is exact, so that
    /// 152300 g and 152.3 kg round to the same milligrams.
    fn to_resolution(self, value: f64, unit: &str) -> Option<f64> {
        let per_base = self.resolution_per_base() as f64;
        Some(match (self, unit) {
            (ReadingKind::Weight, "g") => value * 1_000.0,
            (ReadingKind::Weight, "kg") => value * 1_000_000.0,
            (ReadingKind::Weight, "t") => value * 1_000_000_000.0,
            (ReadingKind::Weight, "lb") => value * 453_592.37,
            (ReadingKind::Level, "mm") => value * 1_000.0,
            (ReadingKind::Level, "cm") => value * 10_000.0,
            (ReadingKind::Level, "m") => value * 1_000_000.0,
            _ => self.to_base(value, unit)? * per_base,
        })
    }
}

named_enum! {
    /// Where in the custody chain a weighing was taken.
    #[derive(serde::Serialize, serde::Deserialize, PartialOrd, Ord, Hash)]
    pub enum Stage {
        Generation => "generation",
        StorageIn => "storage_in",
        StorageOut => "storage_out",
        TransferOut => "transfer_out",
        TransferIn => "transfer_in",
        Disposal => "disposal",
    }
}

/// A reading as a terminal sends it, before validation. Unknown fields are refused.
/// Which units a kind takes and the range of its values are in the table above (`unknown_unit`,
/// `value_out_of_range` per reading).
#[derive(SerdeDeserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawReading {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::reading_seq))]
    #[serde(deserialize_with = "crate::json_int::u64")]
    pub seq: u64,
    /// RFC 3339 with an offset, from 2000-01-01 to the node's clock plus the allowed skew.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::instant))]
    pub measured_at: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::reading_kind))]
    pub kind: String,
    pub value: f64,
    /// One of the kind's units: weight g, kg, t, lb; level mm, cm, m; temperature degC, C, K, degF, F;
    /// humidity %, %RH.
    pub unit: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_id))]
    pub container_id: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_stage))]
    pub stage: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_waste_code))]
    pub waste_code: Option<String>,
    /// The manifest (transfer order) a `transfer_out` / `transfer_in` weighing belongs to.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::optional_id))]
    pub manifest_id: Option<String>,
}

/// The limits a reading is checked against; the clock reading comes in from outside the domain core.
#[derive(Debug, Clone, Copy)]
pub struct ReadingCheck {
    /// The receiving node's clock, in UTC nanoseconds since the Unix epoch.
    pub now_ns: i64,
    /// How far into the future a `measured_at` may lie (terminal clocks drift).
    pub future_skew_ns_max: i64,
}

/// A validated reading in canonical form.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub terminal_id: TerminalId,
    pub seq: u64,
    /// UTC nanoseconds since the Unix epoch.
    pub measured_at_ns: i64,
    pub kind: ReadingKind,
    /// An integer count of `kind.resolution_unit()`.
    pub value: i64,
    pub container_id: Option<ContainerId>,
    pub stage: Option<Stage>,
    pub waste_code: Option<String>,
    pub manifest_id: Option<ManifestId>,
}

impl Reading {
    /// Validates and normalises what a terminal sent.
    pub fn normalize(
        terminal_id: &TerminalId,
        raw: &RawReading,
        check: ReadingCheck,
    ) -> Result<Reading, Rejection> {
        if raw.seq == 0 || raw.seq > READING_SEQ_MAX {
            return Err(Rejection::new(
                "invalid_seq",
                format!(
                    "seq {} is out of range; use 1 ..= {READING_SEQ_MAX}",
                    raw.seq
                ),
            ));
        }
        let measured_at = OffsetDateTime::parse(&raw.measured_at, &Rfc3339).map_err(|e| {
            Rejection::new(
                "invalid_timestamp",
                format!(
                    "measured_at {:?} is not an RFC 3339 timestamp with offset: {e}",
                    raw.measured_at
                ),
            )
        })?;
        let measured_at_ns = i64::try_from(measured_at.unix_timestamp_nanos()).map_err(|_| {
            Rejection::new(
                "measured_at_out_of_range",
                format!("measured_at {} is out of range", raw.measured_at),
            )
        })?;
        if measured_at_ns < MEASURED_AT_MIN_NS {
            return Err(Rejection::new(
                "measured_at_out_of_range",
                format!(
                    "measured_at {} is before 2000-01-01T00:00:00Z; check the terminal's clock",
                    raw.measured_at
                ),
            ));
        }
        if measured_at_ns > check.now_ns.saturating_add(check.future_skew_ns_max) {
            return Err(Rejection::new(
                "measured_at_in_future",
                format!(
                    "measured_at {} is more than {} s ahead of the node's clock ({}); check the terminal's clock",
                    raw.measured_at,
                    check.future_skew_ns_max / 1_000_000_000,
                    format_utc_ns(check.now_ns)
                ),
            ));
        }
        let kind = ReadingKind::parse(&raw.kind).ok_or_else(|| {
            Rejection::new(
                "unknown_kind",
                format!(
                    "kind {:?} is not one of weight, level, temperature, humidity",
                    raw.kind
                ),
            )
        })?;
        if !raw.value.is_finite() {
            return Err(Rejection::new(
                "value_not_finite",
                format!("value {} is not a finite number", raw.value),
            ));
        }
        let base = kind.to_base(raw.value, &raw.unit).ok_or_else(|| {
            Rejection::new(
                "unknown_unit",
                format!("unit {:?} is not a unit of {}", raw.unit, kind.name()),
            )
        })?;
        let (lo, hi) = kind.base_range();
        if !(lo..=hi).contains(&base) {
            return Err(Rejection::new(
                "value_out_of_range",
                format!(
                    "{} {} {} is {base} {}, outside {lo} ..= {hi} {}",
                    kind.name(),
                    raw.value,
                    raw.unit,
                    kind.base_unit(),
                    kind.base_unit()
                ),
            ));
        }
        let value = kind
            .to_resolution(raw.value, &raw.unit)
            .expect("unit checked above")
            .round() as i64;
        let container_id = match &raw.container_id {
            None => None,
            Some(c) => Some(ContainerId::parse(c).map_err(|e| {
                Rejection::new("invalid_container_id", format!("container_id {c:?}: {e}"))
            })?),
        };
        let stage = match &raw.stage {
            None => None,
            Some(s) => Some(Stage::parse(s).ok_or_else(|| {
                Rejection::new(
                    "unknown_stage",
                    format!(
                        "stage {s:?} is not one of generation, storage_in, storage_out, transfer_out, transfer_in, disposal"
                    ),
                )
            })?),
        };
        let waste_code = match &raw.waste_code {
            None => None,
            Some(w) if is_waste_code(w) => Some(w.clone()),
            Some(w) => {
                return Err(Rejection::new(
                    "invalid_waste_code",
                    format!(
                        "waste_code {w:?} is neither a category (HW01 ..= HW50) nor a full code like 900-041-49"
                    ),
                ));
            }
        };
        let manifest_id = match &raw.manifest_id {
            None => None,
            Some(m) => Some(ManifestId::parse(m).map_err(|e| {
                Rejection::new("invalid_manifest_id", format!("manifest_id {m:?}: {e}"))
            })?),
        };
        Ok(Reading {
            terminal_id: terminal_id.clone(),
            seq: raw.seq,
            measured_at_ns,
            kind,
            value,
            container_id,
            stage,
            waste_code,
            manifest_id,
        })
    }

    /// The canonical JSON object (RFC 8785) whose SHA-256 is the reading's fingerprint.
    pub fn canonical(&self) -> Jcs {
        let mut fields = vec![
            ("terminal_id", Jcs::str(self.terminal_id.as_str())),
            ("seq", Jcs::Int(self.seq as i64)),
            ("measured_at", Jcs::Str(format_utc_ns(self.measured_at_ns))),
            ("kind", Jcs::str(self.kind.name())),
            ("value", Jcs::Int(self.value)),
            ("unit", Jcs::str(self.kind.resolution_unit())),
        ];
        if let Some(c) = &self.container_id {
            fields.push(("container_id", Jcs::str(c.as_str())));
        }
        if let Some(s) = self.stage {
            fields.push(("stage", Jcs::str(s.name())));
        }
        if let Some(w) = &self.waste_code {
            fields.push(("waste_code", Jcs::str(w.as_str())));
        }
        if let Some(m) = &self.manifest_id {
            fields.push(("manifest_id", Jcs::str(m.as_str())));
        }
        Jcs::obj(fields)
    }
}

/// `HW01` ..= `HW50` (the categories of China's National Hazardous Waste List) or a full 8-digit code
/// `NNN-NNN-NN` (for example `900-041-49`).
pub fn is_waste_code(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() == 4 && &b[..2] == b"HW" && b[2..].iter().all(u8::is_ascii_digit) {
        let n = (b[2] - b'0') * 10 + (b[3] - b'0');
        return (1..=50).contains(&n);
    }
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            3 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Formats UTC nanoseconds as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the canonical timestamp form (always nine
/// fraction digits, so equal instants have equal text).
pub fn format_utc_ns(ns: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .expect("every i64 nanosecond count is a valid OffsetDateTime");
    let mut s = String::with_capacity(30);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW_NS: i64 = 1_795_000_000_000_000_000; // 2026-11-18T11:06:40Z

    fn check() -> ReadingCheck {
        ReadingCheck {
            now_ns: NOW_NS,
            future_skew_ns_max: 300_000_000_000,
        }
    }

    fn raw(value: f64, unit: &str) -> RawReading {
        RawReading {
            seq: 1,
            measured_at: "2026-11-16T04:00:00+08:00".into(),
            kind: "weight".into(),
            value,
            unit: unit.into(),
            container_id: Some("C-9".into()),
            stage: Some("generation".into()),
            waste_code: Some("HW08".into()),
            manifest_id: None,
        }
    }

    fn t1() -> TerminalId {
        TerminalId::parse("T-1").unwrap()
    }

    #[test]
    fn canonical_form_matches_the_documented_example() {
        let r = Reading::normalize(&t1(), &raw(152.3, "kg"), check()).unwrap();
        assert_eq!(
            r.canonical().to_text(),
            r#"{"container_id":"C-9","kind":"weight","measured_at":"2026-11-15T20:00:00.000000000Z","seq":1,"stage":"generation","terminal_id":"T-1","unit":"mg","value":152300000,"waste_code":"HW08"}"#
        );
    }

    #[test]
    fn equal_weights_in_different_units_are_equal() {
        let kg = Reading::normalize(&t1(), &raw(152.3, "kg"), check()).unwrap();
        let g = Reading::normalize(&t1(), &raw(152_300.0, "g"), check()).unwrap();
        let t = Reading::normalize(&t1(), &raw(0.1523, "t"), check()).unwrap();
        assert_eq!(kg, g);
        assert_eq!(kg, t);
        let lb = Reading::normalize(&t1(), &raw(1.0, "lb"), check()).unwrap();
        assert_eq!(lb.value, 453_592);
    }

    #[test]
    fn offsets_normalise_to_utc() {
        let mut a = raw(1.0, "kg");
        a.measured_at = "2026-11-16T04:00:00.5+08:00".into();
        let mut b = raw(1.0, "kg");
        b.measured_at = "2026-11-15T20:00:00.500000000Z".into();
        assert_eq!(
            Reading::normalize(&t1(), &a, check()).unwrap(),
            Reading::normalize(&t1(), &b, check()).unwrap()
        );
    }

    #[test]
    fn bad_readings_are_rejected_with_their_codes() {
        // 1 kg as `raw` makes it, with one thing changed.
        let with = |change: fn(&mut RawReading)| {
            let mut r = raw(1.0, "kg");
            change(&mut r);
            r
        };
        let cases: Vec<(RawReading, &str)> = vec![
            (raw(-0.5, "kg"), "value_out_of_range"),
            (raw(2_000_000.0, "kg"), "value_out_of_range"),
            (raw(f64::NAN, "kg"), "value_not_finite"),
            (raw(f64::INFINITY, "kg"), "value_not_finite"),
            (raw(1.0, "stone"), "unknown_unit"),
            (raw(1.0, "degC"), "unknown_unit"),
            (with(|r| r.seq = 0), "invalid_seq"),
            (with(|r| r.seq = READING_SEQ_MAX + 1), "invalid_seq"),
            (with(|r| r.kind = "mass".into()), "unknown_kind"),
            (with(|r| r.stage = Some("lost".into())), "unknown_stage"),
            (
                with(|r| {
                    r.waste_code = Some("HW51".into());
                    r.manifest_id = None;
                }),
                "invalid_waste_code",
            ),
            (
                with(|r| r.container_id = Some("C 9".into())),
                "invalid_container_id",
            ),
            (
                with(|r| r.measured_at = "yesterday".into()),
                "invalid_timestamp",
            ),
            (
                with(|r| r.measured_at = "2026-11-16T04:00:00".into()),
                "invalid_timestamp",
            ),
            (
                with(|r| r.measured_at = "1999-12-31T23:59:59Z".into()),
                "measured_at_out_of_range",
            ),
            (
                with(|r| r.measured_at = "2026-11-19T00:00:00Z".into()),
                "measured_at_in_future",
            ),
        ];
        for (r, code) in cases {
            let got = Reading::normalize(&t1(), &r, check());
            assert_eq!(
                got.as_ref().err().map(|e| e.code),
                Some(code),
                "{r:?} gave {got:?}"
            );
        }
    }

    #[test]
    fn a_reading_within_the_skew_is_accepted() {
        let r = RawReading {
            measured_at: format_utc_ns(NOW_NS + 299_000_000_000),
            ..raw(1.0, "kg")
        };
        assert!(Reading::normalize(&t1(), &r, check()).is_ok());
    }

    #[test]
    fn load_cells_need_no_container_stage_or_waste_code() {
        let r = RawReading {
            container_id: None,
            stage: None,
            waste_code: None,
            manifest_id: None,
            ..raw(3.5, "t")
        };
        let got = Reading::normalize(&t1(), &r, check()).unwrap();
        assert_eq!(
            got.canonical().to_text(),
            r#"{"kind":"weight","measured_at":"2026-11-15T20:00:00.000000000Z","seq":1,"terminal_id":"T-1","unit":"mg","value":3500000000}"#
        );
    }

    #[test]
    fn other_kinds_convert_to_their_base_units() {
        for (kind, value, unit, stored) in [
            ("temperature", 25.0, "degC", 25_000),
            ("temperature", 298.15, "K", 25_000),
            ("temperature", 77.0, "degF", 25_000),
            ("level", 125.0, "cm", 1_250_000),
            ("humidity", 45.5, "%RH", 45_500),
        ] {
            let r = RawReading {
                kind: kind.into(),
                ..raw(value, unit)
            };
            let got = Reading::normalize(&t1(), &r, check()).unwrap().value;
            assert_eq!(got, stored, "{value} {unit} of {kind}");
        }
    }

    #[test]
    fn waste_codes() {
        for (code, valid) in [
            ("HW01", true),
            ("HW50", true),
            ("HW00", false),
            ("HW5", false),
            ("900-041-49", true),
            ("900-041-4x", false),
            ("900041-49", false),
        ] {
            assert_eq!(is_waste_code(code), valid, "{code}");
        }
    }

    proptest! {
        /// Grams and kilograms of the same integer gram count always give the same canonical milligrams.
        #[test]
        fn grams_and_kilograms_agree(grams in 0u64..=1_000_000_000) {
            let kg = Reading::normalize(&t1(), &raw(grams as f64 / 1000.0, "kg"), check()).unwrap();
            let g = Reading::normalize(&t1(), &raw(grams as f64, "g"), check()).unwrap();
            prop_assert_eq!(kg.canonical().to_bytes(), g.canonical().to_bytes());
        }

        /// Formatting a nanosecond instant and parsing it back gives the same instant.
        #[test]
        fn canonical_timestamps_round_trip(ns in MEASURED_AT_MIN_NS..4_102_444_800_000_000_000i64) {
            let text = format_utc_ns(ns);
            let back = OffsetDateTime::parse(&text, &Rfc3339).unwrap().unix_timestamp_nanos();
            prop_assert_eq!(back, ns as i128);
        }
    }
}
