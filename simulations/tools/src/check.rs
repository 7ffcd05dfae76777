//! Checks of what a node says, computed without the node's own code: RFC 8785 canonical JSON of an event's
//! payload and its SHA-256, so that a fingerprint in `GET /v1/events` can be recomputed as anyone outside
//! would. The cluster benchmark and the integration tests both check fingerprints with these.

use serde_json::Value;

/// RFC 8785 canonical JSON for the subset events use (objects, arrays, strings, integers, booleans,
/// null), written independently of the node's own writer: serde_json's map is sorted by key (no
/// `preserve_order` here) and writes no whitespace, and its string escaping matches ECMAScript's for every
/// character. A number that is not an integer is refused: events carry integers only.
pub fn canonical_json(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut fields = Vec::with_capacity(keys.len());
            for k in keys {
                fields.push(format!(
                    "{}:{}",
                    Value::String(k.clone()),
                    canonical_json(&m[k])?
                ));
            }
            format!("{{{}}}", fields.join(","))
        }
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            return Err(format!("events carry integers only: {n}"));
        }
        Value::Array(items) => {
            let items: Result<Vec<String>, String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items?.join(","))
        }
        other => other.to_string(),
    })
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether `event` (as `GET /v1/events` shows it) carries the SHA-256 of its payload's canonical JSON.
pub fn fingerprint_holds(event: &Value) -> bool {
    canonical_json(&event["payload"])
        .is_ok_and(|c| Some(sha256_hex(c.as_bytes()).as_str()) == event["fingerprint"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sorted_no_whitespace_integers_only() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, "é\u0007"], "a": {"z": null, "y": true}}"#).unwrap();
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#"{"a":{"y":true,"z":null},"b":[1,"é\u0007"]}"#
        );
        assert!(canonical_json(&serde_json::json!({"x": 1.5})).is_err());
    }

    #[test]
    fn a_fingerprint_is_recomputed_and_a_changed_payload_fails() {
        let payload = serde_json::json!({"seq": 7, "terminal_id": "T-1"});
        let fp = sha256_hex(canonical_json(&payload).unwrap().as_bytes());
        let mut event = serde_json::json!({"payload": payload, "fingerprint": fp});
        assert!(fingerprint_holds(&event));
        event["payload"]["seq"] = 8.into();
        assert!(!fingerprint_holds(&event));
    }
}
