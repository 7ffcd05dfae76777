//! Words for facts: how an anomaly reads in the read models and the search index (Chinese first, for the
//! regulators who read it, then the English name the API uses).

use custodian_events::anomaly::AnomalyKind;
use custodian_events::domain::AnomalyDetected;

pub fn kind_zh(kind: AnomalyKind) -> &'static str {
    match kind {
        AnomalyKind::WeightFluctuation => "重量异常波动",
        AnomalyKind::ManifestWeightMismatch => "联单重量不符",
        AnomalyKind::StorageOverdue => "贮存超期",
        AnomalyKind::OverCapacity => "超出贮存能力",
        AnomalyKind::TerminalSilent => "终端离线",
        AnomalyKind::TamperSuspected => "疑似篡改",
    }
}

fn kg(mg: i64) -> String {
    format!("{:.3} kg", mg as f64 / 1_000_000.0)
}

/// One line describing the anomaly, e.g.
/// `重量异常波动 weight_fluctuation (high) container:C-9: 120.000 kg → 80.000 kg, 33.33% 终端 T-1`.
pub fn anomaly_description(a: &AnomalyDetected) -> String {
    let mut s = format!(
        "{} {} ({}) {}",
        kind_zh(a.kind),
        a.kind.name(),
        a.severity.name(),
        a.subject
    );
    let weights = matches!(
        a.kind,
        AnomalyKind::WeightFluctuation
            | AnomalyKind::ManifestWeightMismatch
            | AnomalyKind::OverCapacity
    );
    match (a.previous_value, a.current_value) {
        (Some(p), Some(c)) if weights => s.push_str(&format!(": {} → {}", kg(p), kg(c))),
        (None, Some(c)) if weights => s.push_str(&format!(": {}", kg(c))),
        _ => {}
    }
    if let Some(ppm) = a.change_ratio_ppm {
        s.push_str(&format!(", {:.2}%", ppm as f64 / 10_000.0));
    }
    if let Some(l) = a.limit_value {
        if weights {
            s.push_str(&format!(", 上限 limit {}", kg(l)));
        } else {
            s.push_str(&format!(", 上限 limit {l} s"));
        }
    }
    if let Some(t) = &a.terminal_id {
        s.push_str(&format!(", 终端 terminal {t}"));
    }
    if let Some(c) = &a.container_id {
        s.push_str(&format!(", 容器 container {c}"));
    }
    if let Some(m) = &a.manifest_id {
        s.push_str(&format!(", 联单 manifest {m}"));
    }
    s
}
