//! The regulators' fixture that the scope tests (`query_scopes`), the dashboard's tests (`dashboard`) and
//! the browser tests' node (`dashboard-fixture`) share: three enterprises in two provinces, signing
//! terminals whose first weighings drop 40 % (a `weight_fluctuation` alarm each), and tokens per tier.

use std::sync::Arc;

use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{terminal_body, terminal_key};
use serde_json::{Value, json};

use crate::TerminalKeys;

/// `(id, province, city)`: E-A and E-B in Guangdong, E-C in Jiangsu.
pub const ENTERPRISES: [(&str, &str, &str); 3] = [
    ("E-A", "440000", "440100"),
    ("E-B", "440000", "440300"),
    ("E-C", "320000", "320100"),
];

/// An upload of `terminal`'s readings `first` and `first + 1` into `container`: 100 kg, then 60 kg — a
/// drop of 40 % flags `weight_fluctuation`. Reading `seq` is measured `seq` seconds after
/// 2026-11-20T08:00:00Z (16:00 in China Standard Time).
pub fn weighings(terminal: &str, container: &str, first: u64) -> Vec<u8> {
    let readings: Vec<Value> = [(first, 100.0), (first + 1, 60.0)]
        .iter()
        .map(|(seq, kg)| {
            json!({"seq": seq, "measured_at": format!("2026-11-20T08:{:02}:{:02}Z", seq / 60, seq % 60),
                   "kind": "weight", "value": kg, "unit": "kg", "container_id": container,
                   "stage": "storage_in", "waste_code": "HW08"})
        })
        .collect();
    serde_json::to_vec(&json!({"terminal_id": terminal, "readings": readings})).unwrap()
}

/// Registers [`ENTERPRISES`] (named `"{id} 危废处置"`, 100 t of storage each).
pub async fn register_enterprises(admin: &NodeClient) {
    for (id, province, city) in ENTERPRISES {
        admin
            .register(
                "/v1/enterprises",
                &json!({"id": id, "name": format!("{id} 危废处置"), "province_code": province,
                        "city_code": city, "storage_capacity_kg": 100000.0}),
            )
            .await
            .unwrap_or_else(|e| panic!("registering enterprise {id}: {e}"));
    }
}

/// Registers `terminal` of `enterprise` with its SM2 key (seed 7) and keeps the key in `keys`.
pub async fn register_signing_terminal(
    admin: &NodeClient,
    keys: &mut TerminalKeys,
    terminal: &str,
    enterprise: &str,
) {
    let key = terminal_key(terminal, 7);
    let mut body = terminal_body(terminal, 0, Some(&key.public_key_pem()));
    body["enterprise_id"] = json!(enterprise);
    admin
        .register("/v1/terminals", &body)
        .await
        .unwrap_or_else(|e| panic!("registering terminal {terminal}: {e}"));
    keys.0.insert(terminal.to_owned(), Arc::new(key));
}

/// [`register_signing_terminal`], then uploads its first weighings (readings 1 and 2, container
/// `{terminal}-C0`), which raise an alarm.
pub async fn signing_terminal(
    admin: &NodeClient,
    keys: &mut TerminalKeys,
    terminal: &str,
    enterprise: &str,
) {
    register_signing_terminal(admin, keys, terminal, enterprise).await;
    keys.upload(
        admin,
        terminal,
        weighings(terminal, &format!("{terminal}-C0"), 1),
    )
    .await
    .unwrap_or_else(|e| panic!("uploading {terminal}'s weighings: {e}"));
}

/// Opens manifest M-1 across the provinces: E-A (Guangdong) sends container T-A-C0, 100 kg declared, to
/// E-C (Jiangsu).
pub async fn open_cross_province_manifest(admin: &NodeClient) {
    admin
        .register(
            "/v1/manifests",
            &json!({"id": "M-1", "generator_id": "E-A", "receiver_id": "E-C", "waste_code": "HW08",
                    "container_ids": ["T-A-C0"], "declared_kg": 100.0}),
        )
        .await
        .unwrap_or_else(|e| panic!("opening manifest M-1: {e}"));
}

/// Issues a regulator's token of `tier` (over `scope`, if any) through the admin API: `(token, id)`.
pub async fn issue_token(admin: &NodeClient, tier: &str, scope: Option<&str>) -> (String, String) {
    let body = match scope {
        Some(s) => json!({"tier": tier, "scope": s}),
        None => json!({"tier": tier}),
    };
    let (status, v) = admin
        .post_admin("/v1/admin/tokens", &body)
        .await
        .unwrap_or_else(|e| panic!("issuing a {tier} token: {e}"));
    assert_eq!(status, 201, "issuing {body}: {v}");
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}
