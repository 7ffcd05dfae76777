//! An alarm's description in the page's language, written from the anomaly's typed fields (the
//! `anomalies` read model's columns, or the same fields of the live feed's event), never from the stored
//! `description` line: that one mixes Chinese, the API's codes (`weight_fluctuation`, `(medium)`) and the
//! raw subject (`container:C-9`), for the search index and the API. Kind and severity have columns of
//! their own on the page, so the description says only what happened, with its values.

use super::i18n::Lang;

/// What an anomaly says, as the read model and the feed give it. Weights are in mg, durations in
/// seconds, ratios in parts per million (`custodian_events::domain::AnomalyDetected`).
#[derive(Debug, Clone, Default)]
pub struct AnomalyFacts {
    /// The kind's API name (`weight_fluctuation`).
    pub kind: String,
    /// `container:C-9`, `terminal:T-1`, `manifest:M-1`, `enterprise:E-1`.
    pub subject: String,
    pub terminal_id: Option<String>,
    pub container_id: Option<String>,
    pub manifest_id: Option<String>,
    pub previous_value: Option<i64>,
    pub current_value: Option<i64>,
    pub change_ratio_ppm: Option<i64>,
    pub limit_value: Option<i64>,
}

impl AnomalyFacts {
    /// The fields of an `AnomalyDetected` event as canonical JSON (the live feed's `anomaly`).
    pub fn from_json(v: &serde_json::Value) -> AnomalyFacts {
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        AnomalyFacts {
            kind: text("kind").unwrap_or_default(),
            subject: text("subject").unwrap_or_default(),
            terminal_id: text("terminal_id"),
            container_id: text("container_id"),
            manifest_id: text("manifest_id"),
            previous_value: v["previous_value"].as_i64(),
            current_value: v["current_value"].as_i64(),
            change_ratio_ppm: v["change_ratio_ppm"].as_i64(),
            limit_value: v["limit_value"].as_i64(),
        }
    }
}

/// The description of `a` in `lang`: one sentence, its weights in kg, durations in words.
pub fn describe(lang: Lang, a: &AnomalyFacts) -> String {
    let kg = |mg: i64| lang.dec1(mg as f64 / 1e6);
    let pct = |ppm: i64| format!("{:.2}", ppm as f64 / 10_000.0);
    let fill = |key: &str, vars: &[(&str, String)]| {
        vars.iter()
            .fold(lang.t(key).to_owned(), |s, (k, v)| s.replace(k, v))
    };
    let container = a
        .container_id
        .clone()
        .or_else(|| subject_id(a, "container"));
    let terminal = a.terminal_id.clone().or_else(|| subject_id(a, "terminal"));
    let manifest = a.manifest_id.clone().or_else(|| subject_id(a, "manifest"));
    let ratio = |key: &str| {
        a.change_ratio_ppm
            .map(|p| fill(key, &[("{pct}", pct(p))]))
            .unwrap_or_default()
    };
    // What the sentence is about: the terminal for a terminal's own rules, else the container, else the
    // terminal, else the subject's own id — in words.
    let terminal_first = matches!(a.kind.as_str(), "terminal_silent" | "tamper_suspected");
    let (about, about_is) = match (&container, &terminal) {
        (_, Some(t)) if terminal_first => {
            (fill("desc_terminal", &[("{id}", t.clone())]), "terminal")
        }
        (Some(c), _) => (fill("desc_container", &[("{id}", c.clone())]), "container"),
        (None, Some(t)) => (fill("desc_terminal", &[("{id}", t.clone())]), "terminal"),
        _ => (subject_words(lang, &a.subject), "subject"),
    };
    let mut s = match (a.kind.as_str(), a.previous_value, a.current_value) {
        ("weight_fluctuation", Some(p), Some(c)) => fill(
            "desc_weight_fluctuation",
            &[
                ("{what}", about.clone()),
                ("{from}", kg(p)),
                ("{to}", kg(c)),
                ("{ratio}", ratio("desc_change")),
            ],
        ),
        ("manifest_weight_mismatch", Some(p), Some(c)) => fill(
            "desc_manifest_weight_mismatch",
            &[
                ("{manifest}", manifest.clone().unwrap_or_default()),
                ("{from}", kg(p)),
                ("{to}", kg(c)),
                ("{ratio}", ratio("desc_apart")),
            ],
        ),
        ("storage_overdue", _, Some(held)) => fill(
            "desc_storage_overdue",
            &[("{what}", about.clone()), ("{held}", lang.duration(held))],
        ),
        ("over_capacity", Some(p), Some(c)) => {
            fill("desc_over_capacity", &[("{from}", kg(p)), ("{to}", kg(c))])
        }
        ("terminal_silent", _, Some(held)) => fill(
            "desc_terminal_silent",
            &[("{what}", about.clone()), ("{held}", lang.duration(held))],
        ),
        ("tamper_suspected", _, _) => fill("desc_tamper_suspected", &[("{what}", about.clone())]),
        // A kind this page does not know, or facts missing: what it is about, in words.
        _ => about.clone(),
    };
    // The limit the rule held the value against, in its unit.
    if let Some(l) = a.limit_value {
        let limit = match a.kind.as_str() {
            "over_capacity" => Some(fill("desc_limit_kg", &[("{limit}", kg(l))])),
            "storage_overdue" | "terminal_silent" => {
                Some(fill("desc_limit_time", &[("{limit}", lang.duration(l))]))
            }
            "manifest_weight_mismatch" => {
                Some(fill("desc_limit_pct", &[("{limit}", l.to_string())]))
            }
            _ => None,
        };
        if let Some(limit) = limit {
            s.push_str(&limit);
        }
    }
    // Where it happened, when the sentence has not said so already.
    let said = |what: &str| {
        about_is == what
            && !matches!(
                a.kind.as_str(),
                "manifest_weight_mismatch" | "over_capacity"
            )
    };
    let weighed = matches!(
        a.kind.as_str(),
        "weight_fluctuation" | "storage_overdue" | "over_capacity"
    );
    let mut place = Vec::new();
    if let Some(t) = &terminal
        && !said("terminal")
    {
        let key = if weighed {
            "desc_by_terminal"
        } else {
            "desc_terminal"
        };
        place.push(fill(key, &[("{id}", t.clone())]));
    }
    if let Some(c) = &container
        && !said("container")
    {
        place.push(fill("desc_container", &[("{id}", c.clone())]));
    }
    if let Some(m) = &manifest
        && a.kind != "manifest_weight_mismatch"
    {
        place.push(fill("desc_manifest", &[("{id}", m.clone())]));
    }
    if !place.is_empty() {
        s.push_str(&fill(
            "desc_where",
            &[("{where}", place.join(lang.t("desc_list_sep")))],
        ));
    }
    s.push_str(lang.t("desc_end"));
    capitalized(s)
}

/// The id of the subject when it is a `prefix:id`.
fn subject_id(a: &AnomalyFacts, prefix: &str) -> Option<String> {
    a.subject
        .split_once(':')
        .filter(|(p, _)| *p == prefix)
        .map(|(_, id)| id.to_owned())
}

/// A subject (`enterprise:E-1`) in words, never its raw form.
fn subject_words(lang: Lang, subject: &str) -> String {
    let (key, id) = match subject.split_once(':') {
        Some(("container", id)) => ("desc_container", id),
        Some(("terminal", id)) => ("desc_terminal", id),
        Some(("manifest", id)) => ("desc_manifest", id),
        Some(("enterprise", id)) => ("desc_enterprise", id),
        Some((_, id)) => return id.to_owned(),
        None => return subject.to_owned(),
    };
    lang.t(key).replace("{id}", id)
}

/// English sentences start with a capital; Chinese has none (a no-op there).
fn capitalized(s: String) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) if first.is_lowercase() => first.to_uppercase().chain(chars).collect(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fluctuation() -> AnomalyFacts {
        AnomalyFacts {
            kind: "weight_fluctuation".into(),
            subject: "container:T-C-C0".into(),
            terminal_id: Some("T-C".into()),
            container_id: Some("T-C-C0".into()),
            previous_value: Some(100_000_000),
            current_value: Some(60_000_000),
            change_ratio_ppm: Some(400_000),
            ..AnomalyFacts::default()
        }
    }

    /// Every kind with every field it can carry.
    fn every_kind() -> Vec<AnomalyFacts> {
        let mut out = vec![fluctuation()];
        out.push(AnomalyFacts {
            kind: "manifest_weight_mismatch".into(),
            subject: "manifest:M-1".into(),
            manifest_id: Some("M-1".into()),
            previous_value: Some(200_000_000),
            current_value: Some(159_000_000),
            change_ratio_ppm: Some(205_000),
            limit_value: Some(5),
            ..AnomalyFacts::default()
        });
        out.push(AnomalyFacts {
            kind: "storage_overdue".into(),
            subject: "container:C-9".into(),
            container_id: Some("C-9".into()),
            terminal_id: Some("T-1".into()),
            previous_value: Some(5_000_000),
            current_value: Some(31 * 86_400 + 3_600),
            limit_value: Some(30 * 86_400),
            ..AnomalyFacts::default()
        });
        out.push(AnomalyFacts {
            kind: "over_capacity".into(),
            subject: "enterprise:E-1".into(),
            terminal_id: Some("T-1".into()),
            container_id: Some("C-9".into()),
            previous_value: Some(99_000_000_000),
            current_value: Some(101_000_000_000),
            limit_value: Some(100_000_000_000),
            ..AnomalyFacts::default()
        });
        out.push(AnomalyFacts {
            kind: "terminal_silent".into(),
            subject: "terminal:T-1".into(),
            terminal_id: Some("T-1".into()),
            current_value: Some(31),
            limit_value: Some(30),
            ..AnomalyFacts::default()
        });
        out.push(AnomalyFacts {
            kind: "tamper_suspected".into(),
            subject: "terminal:T-1".into(),
            terminal_id: Some("T-1".into()),
            container_id: Some("C-9".into()),
            current_value: Some(7),
            ..AnomalyFacts::default()
        });
        out
    }

    #[test]
    fn a_fluctuation_reads_in_each_language_with_its_values_and_no_codes() {
        assert_eq!(
            describe(Lang::ZhCn, &fluctuation()),
            "容器 T-C-C0 的重量由 100.0 千克变为 60.0 千克（变化 40.00%），称重终端 T-C。"
        );
        assert_eq!(
            describe(Lang::En, &fluctuation()),
            "Container T-C-C0 went from 100.0 kg to 60.0 kg (a change of 40.00%), weighed by terminal T-C."
        );
    }

    #[test]
    fn every_kind_is_described_without_raw_codes_in_both_languages() {
        for a in every_kind() {
            for lang in [Lang::ZhCn, Lang::En] {
                let d = describe(lang, &a);
                for code in [
                    a.kind.as_str(),
                    a.subject.as_str(),
                    "(low)",
                    "(medium)",
                    "(high)",
                    "container:",
                    "terminal:",
                    "manifest:",
                    "enterprise:",
                    "{",
                ] {
                    assert!(!d.contains(code), "{code:?} in {d:?}");
                }
                let han = d.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
                assert_eq!(han, lang == Lang::ZhCn, "one language only: {d:?}");
            }
        }
    }

    #[test]
    fn limits_are_in_their_units() {
        let all = every_kind();
        let zh: Vec<String> = all.iter().map(|a| describe(Lang::ZhCn, a)).collect();
        assert!(zh[1].contains("5%"), "{}", zh[1]);
        assert!(
            zh[2].contains("31 天 1 小时") && zh[2].contains("30 天"),
            "{}",
            zh[2]
        );
        assert!(zh[3].contains("100,000.0 千克"), "{}", zh[3]);
        let en = describe(Lang::En, &all[4]);
        assert_eq!(
            en,
            "Terminal T-1 has sent nothing for 31 seconds, longer than the 30 seconds allowed."
        );
    }

    #[test]
    fn the_live_feeds_json_gives_the_same_facts() {
        let v = serde_json::json!({"kind": "weight_fluctuation", "subject": "container:T-C-C0",
            "terminal_id": "T-C", "container_id": "T-C-C0", "previous_value": 100_000_000,
            "current_value": 60_000_000, "change_ratio_ppm": 400_000, "severity": "medium"});
        assert_eq!(
            describe(Lang::En, &AnomalyFacts::from_json(&v)),
            describe(Lang::En, &fluctuation())
        );
    }
}
