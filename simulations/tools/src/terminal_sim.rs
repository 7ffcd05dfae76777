//! Simulated terminals: enterprises, terminals and believable readings, for the demo, the benchmark and
//! the tests. Seeded, so a run can be repeated.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use custodian_events::crypto::{Entropy, Sm2KeyPair};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A few real provinces and cities (administrative division codes).
pub const SITES: [(&str, &str, &str); 3] = [
    ("440000", "440100", "广州"),
    ("320000", "320500", "苏州"),
    ("330000", "330100", "杭州"),
];

pub fn enterprise_body(i: usize) -> Value {
    let (province, city, name) = SITES[i % SITES.len()];
    json!({
        "id": format!("E-{i}"),
        "name": format!("{name}危废处置中心 {i}"),
        "province_code": province,
        "city_code": city,
        "storage_capacity_kg": 200_000.0,
    })
}

/// A terminal registration, with the terminal's SM2 public key when it signs.
pub fn terminal_body(id: &str, enterprise: usize, public_key_pem: Option<&str>) -> Value {
    let mut body = json!({
        "id": id,
        "enterprise_id": format!("E-{enterprise}"),
        "kind": "scale",
        "capacity_kg": 3_000.0,
        "report_interval_s": 10,
    });
    if let Some(pem) = public_key_pem {
        body["public_key_pem"] = json!(pem);
    }
    body
}

/// Randomness from a seed, so a simulated terminal's key is the same in every run with that seed.
pub struct SeededEntropy(Mutex<SmallRng>);

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy(Mutex::new(SmallRng::seed_from_u64(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        self.0.lock().expect("entropy lock").fill(buf);
    }
}

/// The SM2 key of simulated terminal `id` under `seed`.
pub fn terminal_key(id: &str, seed: u64) -> Sm2KeyPair {
    let mix = id
        .bytes()
        .fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    Sm2KeyPair::generate(&SeededEntropy::new(mix))
}

/// base64 of the DER SM2 signature over `body`, for `X-Custodian-Signature`.
pub fn signature_header(key: &Sm2KeyPair, body: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.sign(body))
}

/// One simulated scale: numbers its readings 1, 2, 3, … and weighs a handful of drums; signs its uploads.
pub struct SimTerminal {
    pub id: String,
    pub next_seq: u64,
    pub key: Arc<Sm2KeyPair>,
    rng: SmallRng,
    drum_kg: Vec<f64>,
}

/// Drums each simulated scale weighs.
const DRUMS: usize = 20;
/// Weighings (per thousand) at which a drum loses 40 % of its weight.
const LOSS_PER_MILLE: u32 = 2;

impl SimTerminal {
    pub fn new(id: impl Into<String>, seed: u64) -> Self {
        let id = id.into();
        SimTerminal {
            key: Arc::new(terminal_key(&id, seed)),
            id,
            next_seq: 1,
            rng: SmallRng::seed_from_u64(seed),
            drum_kg: Vec::new(),
        }
    }

    /// The registration of this terminal under enterprise `E-{enterprise}`, with its public key.
    pub fn registration(&self, enterprise: usize) -> Value {
        terminal_body(&self.id, enterprise, Some(&self.key.public_key_pem()))
    }

    /// The signature header value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        signature_header(&self.key, body)
    }

    /// The JSON text of one reading with sequence `seq`, measured at `measured_at` (RFC 3339).
    pub fn reading_json(&mut self, seq: u64, measured_at: &str) -> String {
        let drum = self.rng.random_range(1..=DRUMS);
        if self.drum_kg.is_empty() {
            self.drum_kg = (0..DRUMS)
                .map(|_| self.rng.random_range(50.0..400.0))
                .collect();
        }
        // Scales wobble by a few percent between weighings; now and then a drum really loses weight
        // (a leak, or waste taken out unrecorded): that is what the weight-fluctuation rule must catch.
        let w = &mut self.drum_kg[drum - 1];
        if self.rng.random_range(0..1000u32) < LOSS_PER_MILLE {
            *w *= 0.6;
        } else {
            *w *= 1.0 + self.rng.random_range(-0.03..0.03);
        }
        *w = w.clamp(10.0, 2_000.0);
        let kg = *w;
        let stages = ["generation", "storage_in", "storage_out", "transfer_out"];
        let stage = stages[self.rng.random_range(0..stages.len())];
        format!(
            r#"{{"seq":{seq},"measured_at":"{measured_at}","kind":"weight","value":{kg:.1},"unit":"kg","container_id":"{}-C{drum}","stage":"{stage}","waste_code":"HW08"}}"#,
            self.id
        )
    }

    /// The next `n` readings as an upload body, and the sequences they carry.
    pub fn next_body(&mut self, n: usize, measured_at: &str) -> (Vec<u8>, Vec<u64>) {
        let mut readings = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            readings.push(self.reading_json(seq, measured_at));
            seqs.push(seq);
        }
        (upload_body(&self.id, &readings), seqs)
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }
}

/// An upload body around readings given as JSON texts.
pub fn upload_body(terminal_id: &str, readings: &[String]) -> Vec<u8> {
    let mut s = String::with_capacity(64 + readings.iter().map(|r| r.len() + 1).sum::<usize>());
    let _ = write!(s, r#"{{"terminal_id":"{terminal_id}","readings":["#);
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r);
    }
    s.push_str("]}");
    s.into_bytes()
}

/// Now, as RFC 3339 UTC (terminals stamp readings with their own clocks).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting the current time")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_keys_follow_the_seed() {
        assert_eq!(
            terminal_key("T-1", 7).public_key_der(),
            terminal_key("T-1", 7).public_key_der()
        );
        assert_ne!(
            terminal_key("T-1", 7).public_key_der(),
            terminal_key("T-2", 7).public_key_der()
        );
    }

    #[test]
    fn bodies_are_valid_uploads() {
        let mut t = SimTerminal::new("T-1", 7);
        let (body, seqs) = t.next_body(3, "2026-11-26T04:00:00+08:00");
        assert_eq!(seqs, vec![1, 2, 3]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["terminal_id"], "T-1");
        assert_eq!(v["readings"].as_array().unwrap().len(), 3);
        assert_eq!(v["readings"][2]["seq"], 3);
    }
}
