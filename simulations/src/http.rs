//! The node's HTTP API inside the simulation: the real router ([`custodian_node::api::router`]) over the
//! simulated log, with the real ingest handler — body limits, JSON parsing, SM2 signature checks,
//! validation, sealing with the enterprise's data key, the atomic append — and the real registration
//! handlers. Terminals sign their upload bodies with their own SM2 keys (registered with the terminal), the
//! administrator registers enterprises and terminals and opens manifests with the node's admin token, and
//! the node's clock tick is appended the way the node's ticker appends it.
//!
//! **The network** is in-process: a request is handed to the router as a `tower` call and its future is
//! polled by the simulator, in the simulator's order, with no sockets and no threads, so a run stays a
//! function of its seed. What the network does wrong is the simulator's choice ([`crate::sim`]): a request
//! lost on the way (the terminal times out and sends it again), an acknowledgement lost on the way back
//! (the terminal sends the same body again and must be answered `duplicate`), uploads late by minutes or
//! hours and shuffled backlogs (the workload's).
//!
//! **Signature checks** follow the node's real setting `ingest.require_signature`: with
//! [`Signatures::On`] every terminal is registered with a public key, signs every body, and the node
//! refuses unsigned uploads; with [`Signatures::Off`] terminals are registered without keys and send
//! unsigned bodies, which a node with `ingest.require_signature = false` accepts — the simulation's way to
//! measure the rest of the path without SM2's cost.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use custodian_events::crypto::{Entropy, Sm2KeyPair};
use custodian_events::event::{EnterpriseRegistered, ManifestOpened, TerminalRegistered};
use custodian_events::keyring::Keyring;
use custodian_events::{Clock, Event, Reading, ReadingKind, TerminalId};
use custodian_log::{AppendOutcome, EventLog};
use custodian_node::config::Config;
use custodian_node::state::{AppState, StateParts};
use custodian_node::upload::{ReadingResult, SIGNATURE_HEADER, UploadResponse};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// The administrator's bearer token in the simulation.
pub const ADMIN_TOKEN: &str = "simulated-admin-token-0123456789abcdef";

/// What the node answered to one call, as the log's outcomes of the events it carried (for an upload, one
/// per reading); `Err` when the call was refused as a whole (a crashed log answers 503).
pub type Answer = Result<Vec<AppendOutcome>, String>;
/// A call on its way: polled by the simulator until the node answers.
pub type Pending = Pin<Box<dyn Future<Output = Answer>>>;

/// Whether terminals sign and the node checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    On,
    Off,
}

/// The terminals' own SM2 keys (none with [`Signatures::Off`]).
pub struct TerminalKeys(BTreeMap<TerminalId, Arc<Sm2KeyPair>>);

impl TerminalKeys {
    /// One key per terminal, from the seed.
    pub fn generate<'a>(
        seed: u64,
        terminals: impl IntoIterator<Item = &'a TerminalId>,
        signatures: Signatures,
    ) -> TerminalKeys {
        TerminalKeys(match signatures {
            Signatures::Off => BTreeMap::new(),
            Signatures::On => terminals
                .into_iter()
                .map(|t| {
                    (
                        t.clone(),
                        Arc::new(custodian_tools::terminal_sim::terminal_key(
                            t.as_str(),
                            seed,
                        )),
                    )
                })
                .collect(),
        })
    }

    fn get(&self, terminal: &TerminalId) -> Option<&Arc<Sm2KeyPair>> {
        self.0.get(terminal)
    }
}

/// One life of the node: its state and router over the simulated log. A crash ends it; the restarted node
/// is a new one over the recovered log.
pub struct HttpNode {
    pub state: Arc<AppState>,
    router: axum::Router,
}

impl HttpNode {
    /// A node over `log` whose keyring is `keyring` (the one the log opens sealed payloads with).
    pub fn start(
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        keyring: Arc<Keyring>,
        signatures: Signatures,
        derived_seq: Arc<AtomicU64>,
        platform_key: Sm2KeyPair,
    ) -> HttpNode {
        let config = HttpNode::config(signatures);
        HttpNode::start_with(
            log,
            clock,
            entropy,
            keyring,
            config,
            derived_seq,
            platform_key,
        )
    }

    /// The node's configuration in the simulation.
    pub fn config(signatures: Signatures) -> Config {
        let mut config = Config::default();
        config.ingest.require_signature = signatures == Signatures::On;
        // The simulator settles the deriver after every step; the node must not push back inside one.
        config.derive.lag_events_max = u64::MAX;
        config.projections.postgres_enabled = false;
        config.projections.influx_enabled = false;
        config.projections.search_enabled = false;
        config
    }

    /// [`HttpNode::start`] with a configuration of the caller's (an edge's, say).
    pub fn start_with(
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        keyring: Arc<Keyring>,
        config: Config,
        derived_seq: Arc<AtomicU64>,
        platform_key: Sm2KeyPair,
    ) -> HttpNode {
        let directory = custodian_projections::directory::Directory::load(log.as_ref())
            .expect("the simulated log reads");
        let state = Arc::new(AppState::new(StateParts {
            log,
            config,
            clock,
            keyring,
            entropy,
            tokens: custodian_node::tokens::Tokens::with_key(platform_key),
            admin_token: ADMIN_TOKEN.to_owned(),
            audit: None,
            directory: Arc::new(std::sync::RwLock::new(directory)),
            derived_seq,
        }));
        HttpNode {
            router: custodian_node::api::router(state.clone()),
            state,
        }
    }

    /// Sends one upload of `terminal`, signed when the terminal has a key.
    pub fn upload(
        &self,
        keys: &TerminalKeys,
        terminal: &TerminalId,
        readings: &[Reading],
    ) -> Pending {
        let body = upload_body(terminal, readings);
        let mut request =
            Request::post("/v1/uploads").header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = keys.get(terminal) {
            request = request.header(
                SIGNATURE_HEADER,
                custodian_tools::terminal_sim::signature_header(key, &body),
            );
        }
        let request = request.body(Body::from(body)).expect("a valid request");
        let call = self.router.clone().oneshot(request);
        let n = readings.len();
        Box::pin(async move {
            let response = call.await.expect("the router is infallible");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if status != StatusCode::OK {
                return Err(format!(
                    "upload answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            let answer: UploadResponse = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the upload answer is not an UploadResponse: {e}"))?;
            if answer.results.len() != n {
                return Err(format!("{} results for {n} readings", answer.results.len()));
            }
            answer
                .results
                .into_iter()
                .map(|r| match r {
                    ReadingResult::Accepted { event_seq, .. } => {
                        Ok(AppendOutcome::Appended { seq: event_seq })
                    }
                    ReadingResult::Duplicate { event_seq, .. } => {
                        Ok(AppendOutcome::Duplicate { seq: event_seq })
                    }
                    ReadingResult::Rejected {
                        code,
                        event_seq: Some(original_seq),
                        evidence_event_seq,
                        ..
                    } if code == "seq_conflict" => Ok(AppendOutcome::Conflict {
                        original_seq,
                        evidence_seq: evidence_event_seq,
                    }),
                    ReadingResult::Rejected {
                        seq, code, message, ..
                    } => Err(format!("reading {seq:?} rejected: {code}: {message}")),
                })
                .collect()
        })
    }

    /// The administrator's calls that make `events` (registrations, manifests), one after the other.
    pub fn api(&self, keys: &TerminalKeys, events: Vec<Event>) -> Pending {
        let calls: Vec<_> = events
            .iter()
            .map(|event| {
                let (path, body) = api_body(keys, event);
                let request = Request::post(path)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
                    .body(Body::from(body.to_string()))
                    .expect("a valid request");
                (path, self.router.clone(), request)
            })
            .collect();
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(calls.len());
            for (path, router, request) in calls {
                let response = router.oneshot(request).await.expect("infallible");
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let seq = answer["event_seq"].as_u64();
                outcomes.push(match (status, seq) {
                    (StatusCode::CREATED, Some(seq)) => AppendOutcome::Appended { seq },
                    (StatusCode::OK, Some(seq)) => AppendOutcome::Duplicate { seq },
                    _ => {
                        return Err(format!(
                            "POST {path} answered {status}: {}",
                            String::from_utf8_lossy(&bytes)
                        ));
                    }
                });
            }
            Ok(outcomes)
        })
    }

    /// The node's clock tick at `at_ns`, appended as the node's ticker appends it.
    pub fn tick(&self, at_ns: i64) -> Pending {
        let state = self.state.clone();
        Box::pin(async move {
            custodian_node::server::append_tick(&state, at_ns)
                .await
                .map_err(|e| format!("the clock tick: {e}"))
        })
    }
}

/// The exact JSON a terminal sends for `readings` (values in kg, m, °C or %, timestamps in RFC 3339 with
/// nanoseconds), which the node normalises back to the same readings, byte for byte.
pub fn upload_body(terminal: &TerminalId, readings: &[Reading]) -> Vec<u8> {
    let readings: Vec<Value> = readings.iter().map(reading_json).collect();
    serde_json::to_vec(&json!({ "terminal_id": terminal.as_str(), "readings": readings }))
        .expect("JSON")
}

fn reading_json(r: &Reading) -> Value {
    let (per_unit, unit) = match r.kind {
        ReadingKind::Weight => (1e6, "kg"),
        ReadingKind::Level => (1e6, "m"),
        ReadingKind::Temperature => (1e3, "degC"),
        ReadingKind::Humidity => (1e3, "%"),
    };
    let measured_at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.measured_at_ns))
        .expect("a simulated instant")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let mut v = json!({
        "seq": r.seq,
        "measured_at": measured_at,
        "kind": r.kind.name(),
        "value": r.value as f64 / per_unit,
        "unit": unit,
    });
    if let Some(c) = &r.container_id {
        v["container_id"] = json!(c.as_str());
    }
    if let Some(s) = r.stage {
        v["stage"] = json!(s.name());
    }
    if let Some(w) = &r.waste_code {
        v["waste_code"] = json!(w);
    }
    if let Some(m) = &r.manifest_id {
        v["manifest_id"] = json!(m.as_str());
    }
    v
}

/// The administrator's request for a registration or a manifest.
fn api_body(keys: &TerminalKeys, event: &Event) -> (&'static str, Value) {
    match event {
        Event::EnterpriseRegistered(EnterpriseRegistered {
            id,
            name,
            province_code,
            city_code,
            storage_capacity_mg,
        }) => (
            "/v1/enterprises",
            json!({
                "id": id.as_str(),
                "name": name,
                "province_code": province_code,
                "city_code": city_code,
                "storage_capacity_kg": *storage_capacity_mg as f64 / 1e6,
            }),
        ),
        Event::TerminalRegistered(TerminalRegistered {
            id,
            enterprise_id,
            kind,
            capacity_mg,
            report_interval_s,
            ..
        }) => {
            let mut body = json!({
                "id": id.as_str(),
                "enterprise_id": enterprise_id.as_str(),
                "kind": kind.name(),
                "capacity_kg": *capacity_mg as f64 / 1e6,
                "report_interval_s": report_interval_s,
            });
            if let Some(key) = keys.get(id) {
                body["public_key_pem"] = json!(key.public_key_pem());
            }
            ("/v1/terminals", body)
        }
        Event::ManifestOpened(ManifestOpened {
            id,
            generator_id,
            receiver_id,
            waste_code,
            container_ids,
            declared_mg,
            notes,
        }) => (
            "/v1/manifests",
            json!({
                "id": id.as_str(),
                "generator_id": generator_id.as_str(),
                "receiver_id": receiver_id.as_str(),
                "waste_code": waste_code,
                "container_ids": container_ids.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "declared_kg": *declared_mg as f64 / 1e6,
                "notes": notes,
            }),
        ),
        other => panic!(
            "the simulated administrator has no call for {}",
            other.event_type()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_events::{ContainerId, ReadingCheck, Stage};

    /// What the simulated terminal sends normalises back to the very reading it stands for.
    #[test]
    fn upload_bodies_round_trip_to_the_same_readings() {
        let t = TerminalId::parse("S-1").unwrap();
        let mut readings = Vec::new();
        for (i, (kind, value)) in [
            (ReadingKind::Weight, 152_300_123i64),
            (ReadingKind::Weight, 999_999_999_999),
            (ReadingKind::Temperature, -12_345),
            (ReadingKind::Temperature, 23_456),
        ]
        .into_iter()
        .enumerate()
        {
            readings.push(Reading {
                terminal_id: t.clone(),
                seq: i as u64 + 1,
                measured_at_ns: crate::workload::T0 + 123_456_789 * i as i64,
                kind,
                value,
                container_id: (kind == ReadingKind::Weight)
                    .then(|| ContainerId::parse("C-1").unwrap()),
                stage: (kind == ReadingKind::Weight).then_some(Stage::Generation),
                waste_code: None,
                manifest_id: None,
            });
        }
        let body: Value = serde_json::from_slice(&upload_body(&t, &readings)).unwrap();
        for (raw, reading) in body["readings"].as_array().unwrap().iter().zip(&readings) {
            let raw: custodian_events::RawReading = serde_json::from_value(raw.clone()).unwrap();
            let back = Reading::normalize(
                &t,
                &raw,
                ReadingCheck {
                    now_ns: i64::MAX,
                    future_skew_ns_max: 0,
                },
            )
            .unwrap();
            assert_eq!(&back, reading);
        }
    }
}
