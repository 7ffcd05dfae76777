//! What the platform refuses of edge traffic, and what an edge does with what the platform refuses, against
//! real nodes on loopback (in-process platforms over real HTTP, a real `custodian edge` process):
//!
//! - `POST /v1/edge/batches` from no edge, an unregistered edge, or an impostor (a body that is no envelope,
//!   sealed by another key, to another recipient, tampered with, naming another edge): 401 `edge_unknown` /
//!   `envelope_invalid`, and nothing of the batch is in the log;
//! - inside an accepted batch, each upload refused on its own (`terminal_out_of_scope`, `unknown_terminal`,
//!   `signature_invalid`, `invalid_body`) and each anomaly (`invalid_anomaly`), the rest taken;
//! - `POST /v1/edge/registrations` refused to strangers, stale or foreign requests, and scoped to the edge's
//!   enterprises when answered;
//! - `POST /v1/edges` refusals, and the edge's endpoints on a platform (`not_an_edge`);
//! - at the edge: an out-of-scope upload dead-lettered with its code, `POST /v1/edge/dead-letters/retry`
//!   moving it back to the outbox and the platform refusing it again without anything duplicated; and a
//!   dead letter whose cause an operator fixed (the terminal registered) delivered exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use custodian_events::crypto::{OsEntropy, Sm2KeyPair, Sm2PublicKey};
use custodian_node::edge::wire::{
    EDGE_HEADER, ForwardAnomaly, ForwardBatch, ForwardUpload, Registrations, RegistrationsRequest,
    b64, decode_event,
};
use custodian_tests::edge::*;
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{enterprise_body, terminal_body, terminal_key};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------
// Helpers (the edge harness itself is `custodian_tests::edge`, shared with tests/tests/edge.rs).

async fn dead_letters(edge: &NodeClient) -> Vec<Value> {
    edge.get_admin("/v1/edge/dead-letters")
        .await
        .expect("GET /v1/edge/dead-letters")["items"]
        .as_array()
        .expect("items")
        .clone()
}

async fn retry_dead_letters(edge: &NodeClient) -> u64 {
    let (status, v) = edge
        .post_admin("/v1/edge/dead-letters/retry", &json!({}))
        .await
        .expect("POST /v1/edge/dead-letters/retry");
    assert_eq!(status, 200, "{v}");
    v["requeued"].as_u64().expect("requeued")
}

/// The platform's log once the domain core has caught up with it (derived events land after what caused
/// them): its last sequence.
async fn settled_seq(c: &NodeClient) -> u64 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let h = c.healthz().await.expect("healthz");
        if h["derived_seq"] == h["last_seq"] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = c.healthz().await.expect("healthz");
            if again["last_seq"] == h["last_seq"] && again["derived_seq"] == h["last_seq"] {
                return h["last_seq"].as_u64().expect("last_seq");
            }
        }
        assert!(Instant::now() < until, "the platform never settled: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the platform's log (checked: gapless, fingerprints, no reading twice) that is about
/// terminal `t`: its type and, for readings, the seq.
async fn events_of_terminal(c: &NodeClient, t: &str) -> Vec<(String, Option<u64>)> {
    let events = c.all_events(1).await.expect("GET /v1/events");
    check_log(&events);
    events
        .iter()
        .filter(|e| e["payload"]["terminal_id"] == t)
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["payload"]["seq"].as_u64(),
            )
        })
        .collect()
}

/// The seqs of terminal `t`'s readings in the platform's log, in log order.
async fn readings_of(c: &NodeClient, t: &str) -> Vec<u64> {
    events_of_terminal(c, t)
        .await
        .into_iter()
        .filter(|(ty, _)| ty == "ReadingRecorded")
        .map(|(_, s)| s.unwrap())
        .collect()
}

async fn platform_key(c: &NodeClient) -> Sm2PublicKey {
    let v = c
        .get_admin("/v1/edge/public-key")
        .await
        .expect("GET /v1/edge/public-key");
    Sm2PublicKey::from_pem(v["public_key_pem"].as_str().unwrap()).unwrap()
}

fn seal(payload: &[u8], to: &Sm2PublicKey, by: &Sm2KeyPair) -> Vec<u8> {
    custodian_events::digital_envelope::seal(payload, to, by, &OsEntropy).unwrap()
}

/// POSTs `body` to the platform's `path` as an edge would (`X-Custodian-Edge: edge` when given); the status,
/// and the raw answer.
async fn post_edge(base: &str, path: &str, edge: Option<&str>, body: Vec<u8>) -> (u16, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(e) = edge {
        req = req.header(EDGE_HEADER, e);
    }
    let resp = req.send().await.unwrap_or_else(|e| {
        panic!("POST {path} got no answer (the handler died?): {e}");
    });
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A forwarded upload: the terminal's body and its signature, as the edge holds them.
fn forward_upload(id: u64, body: &[u8], signature: String) -> ForwardUpload {
    ForwardUpload {
        id,
        body_b64: b64(body),
        signature,
    }
}

fn batch_bytes(
    edge_id: &str,
    anomalies: Vec<ForwardAnomaly>,
    uploads: Vec<ForwardUpload>,
) -> Vec<u8> {
    serde_json::to_vec(&ForwardBatch {
        edge_id: edge_id.to_owned(),
        anomalies,
        uploads,
    })
    .unwrap()
}

/// Registers enterprises E-0 and E-1, and signing terminal `T-A0` under E-0 and `T-B0` under E-1.
async fn register_e0_and_e1(c: &NodeClient) -> TerminalKeys {
    let mut keys = TerminalKeys::default();
    for (e, t) in [(0, T_A0), (1, T_B0)] {
        c.register("/v1/enterprises", &enterprise_body(e))
            .await
            .unwrap();
        keys.register(c, t, e, 11).await;
    }
    keys
}

/// A platform with enterprises E-0 and E-1, signing terminal `T-A0` under E-0 and `T-B0` under E-1, and
/// edge `EDGE-A` (key `edge_key`) registered for E-0 only.
struct Platform {
    node: custodian_node::server::Node,
    c: NodeClient,
    key: Sm2PublicKey,
    keys: TerminalKeys,
    edge_key: Sm2KeyPair,
}

impl Platform {
    /// POSTs `payload` to `path` as `EDGE-A` does: sealed by its key to the platform's.
    async fn post_as_edge_a(&self, path: &str, payload: &[u8]) -> (u16, Vec<u8>) {
        post_edge(
            self.c.base(),
            path,
            Some(EDGE_A),
            seal(payload, &self.key, &self.edge_key),
        )
        .await
    }
}

const EDGE_A: &str = "EDGE-A";
const T_A0: &str = "T-A0";
const T_B0: &str = "T-B0";

async fn platform_with_edge(dir: &Path) -> Platform {
    let (node, c) = start_node(dir, |_| {}).await;
    let keys = register_e0_and_e1(&c).await;
    let edge_key = terminal_key("edge key of EDGE-A", 5);
    let (status, v) = c
        .post_admin(
            "/v1/edges",
            &json!({"id": EDGE_A, "public_key_pem": edge_key.public_key_pem(), "enterprise_ids": ["E-0"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let key = platform_key(&c).await;
    Platform {
        node,
        c,
        key,
        keys,
        edge_key,
    }
}

/// A request an edge might send: what it is, its `X-Custodian-Edge`, its body, and the status and code it
/// is refused with.
type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);

#[track_caller]
fn assert_refused(answer: &(u16, Vec<u8>), status: u16, code: &str, case: &str) {
    let v = json_of(&answer.1);
    assert_eq!(answer.0, status, "{case}: {v}");
    assert_eq!(v["code"], code, "{case}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: a refusal says why: {v}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The platform's refusals.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_unknown_edges_or_impostors_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = platform_with_edge(&dir.path().join("cloud")).await;
    let base = p.c.base().to_owned();
    // A second registered edge, for E-1, with its own key.
    let edge_b_key = terminal_key("edge key of EDGE-B", 5);
    let (status, v) =
        p.c.post_admin(
            "/v1/edges",
            &json!({"id": "EDGE-B", "public_key_pem": edge_b_key.public_key_pem(), "enterprise_ids": ["E-1"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");

    // Every refused request carries a good upload of an in-scope terminal: had it got through, the reading
    // would be in the log.
    let body = one_reading(T_A0, 1, 60);
    let upload = || forward_upload(1, &body, p.keys.sign(T_A0, &body));
    let batch = batch_bytes(EDGE_A, vec![], vec![upload()]);
    let stranger = terminal_key("nobody registered this edge key", 5);
    let other_platform = terminal_key("another platform's key", 5);
    let metrics_before = p.c.metrics().await.unwrap();
    let before = settled_seq(&p.c).await;

    let cases: Vec<Case> = vec![
        (
            "no X-Custodian-Edge header",
            None,
            seal(&batch, &p.key, &p.edge_key),
            401,
            "edge_unknown",
        ),
        (
            "an empty X-Custodian-Edge header",
            Some(""),
            seal(&batch, &p.key, &p.edge_key),
            401,
            "edge_unknown",
        ),
        (
            "an edge that is not registered",
            Some("EDGE-NOBODY"),
            seal(
                &batch_bytes("EDGE-NOBODY", vec![], vec![upload()]),
                &p.key,
                &stranger,
            ),
            401,
            "edge_unknown",
        ),
        (
            "the batch in the clear, not an envelope",
            Some(EDGE_A),
            batch.clone(),
            401,
            "envelope_invalid",
        ),
        (
            "an empty body",
            Some(EDGE_A),
            Vec::new(),
            401,
            "envelope_invalid",
        ),
        (
            "sealed by a key that is not the edge's",
            Some(EDGE_A),
            seal(&batch, &p.key, &stranger),
            401,
            "envelope_invalid",
        ),
        (
            "sealed by another registered edge's key",
            Some(EDGE_A),
            seal(&batch, &p.key, &edge_b_key),
            401,
            "envelope_invalid",
        ),
        (
            "sealed by the edge to another platform",
            Some(EDGE_A),
            seal(
                &batch,
                &Sm2PublicKey::from_der(&other_platform.public_key_der()).unwrap(),
                &p.edge_key,
            ),
            401,
            "envelope_invalid",
        ),
        (
            "sealed by the edge, then changed on the way",
            Some(EDGE_A),
            {
                let mut s = seal(&batch, &p.key, &p.edge_key);
                let mid = s.len() / 2;
                s[mid] ^= 0x01;
                s
            },
            401,
            "envelope_invalid",
        ),
        (
            "sealed by the edge, cut short",
            Some(EDGE_A),
            {
                let s = seal(&batch, &p.key, &p.edge_key);
                s[..s.len() - 10].to_vec()
            },
            401,
            "envelope_invalid",
        ),
        (
            "sealed by edge B, naming edge A inside",
            Some("EDGE-B"),
            seal(&batch, &p.key, &edge_b_key),
            401,
            "envelope_invalid",
        ),
        (
            "sealed by the edge, a payload that is not JSON",
            Some(EDGE_A),
            seal(b"{not json", &p.key, &p.edge_key),
            400,
            "malformed_json",
        ),
        (
            "sealed by the edge, JSON of another shape",
            Some(EDGE_A),
            seal(
                &serde_json::to_vec(&json!({"edge_id": EDGE_A, "uploads": [], "extra": 1}))
                    .unwrap(),
                &p.key,
                &p.edge_key,
            ),
            422,
            "invalid_body",
        ),
    ];
    for (case, edge, body, status, code) in cases {
        let answer = post_edge(&base, "/v1/edge/batches", edge, body).await;
        assert_refused(&answer, status, code, case);
    }

    assert_eq!(
        settled_seq(&p.c).await,
        before,
        "a refused batch appends nothing"
    );
    assert!(
        events_of_terminal(&p.c, T_A0).await.is_empty(),
        "no reading, no signed upload of {T_A0} in the log"
    );
    let received = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("custodian_edge_readings_received_total "))
            .map(str::to_owned)
    };
    assert_eq!(
        received(&p.c.metrics().await.unwrap()),
        received(&metrics_before)
    );

    // The same batch, sealed properly by the edge it names: taken, once.
    let answer = p.post_as_edge_a("/v1/edge/batches", &batch).await;
    let v = json_of(&answer.1);
    assert_eq!(answer.0, 200, "{v}");
    assert_eq!(v["uploads"][0]["outcome"], "done", "{v}");
    assert_eq!(v["uploads"][0]["id"], 1, "{v}");
    assert_eq!(v["uploads"][0]["results"][0]["status"], "accepted", "{v}");
    // Sent again (a lost answer): a duplicate, not a second reading.
    let again = p.post_as_edge_a("/v1/edge/batches", &batch).await;
    let v2 = json_of(&again.1);
    assert_eq!(again.0, 200, "{v2}");
    assert_eq!(
        v2["uploads"][0]["results"][0]["status"], "duplicate",
        "{v2}"
    );
    assert_eq!(
        v2["uploads"][0]["results"][0]["event_seq"],
        v["uploads"][0]["results"][0]["event_seq"]
    );
    assert_eq!(readings_of(&p.c, T_A0).await, [1]);
    p.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_forwarded_upload_is_refused_on_its_own_and_the_rest_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let p = platform_with_edge(&dir.path().join("cloud")).await;
    let before = settled_seq(&p.c).await;

    // 1: a terminal of E-1, which EDGE-A is not registered for, properly signed by that terminal.
    let out_of_scope = one_reading(T_B0, 1, 60);
    // 2: a terminal nobody registered.
    let unknown = one_reading("T-NOBODY", 1, 60);
    let unknown_key = terminal_key("T-NOBODY", 11);
    // 3: an in-scope terminal's upload signed by another key (an edge inventing readings).
    let forged = one_reading(T_A0, 7, 60);
    let forged_sig = custodian_tools::terminal_sim::signature_header(&unknown_key, &forged);
    // 4: not base64.
    // 5: a good upload of the in-scope terminal.
    let good = one_reading(T_A0, 1, 30);
    let batch = batch_bytes(
        EDGE_A,
        vec![ForwardAnomaly {
            id: 100,
            anomaly_b64: b64(b"not an anomaly"),
        }],
        vec![
            forward_upload(1, &out_of_scope, p.keys.sign(T_B0, &out_of_scope)),
            forward_upload(
                2,
                &unknown,
                custodian_tools::terminal_sim::signature_header(&unknown_key, &unknown),
            ),
            forward_upload(3, &forged, forged_sig),
            ForwardUpload {
                id: 4,
                body_b64: "%%% not base64 %%%".into(),
                signature: p.keys.sign(T_A0, &good),
            },
            forward_upload(5, &good, p.keys.sign(T_A0, &good)),
        ],
    );
    let answer = p.post_as_edge_a("/v1/edge/batches", &batch).await;
    let v = json_of(&answer.1);
    assert_eq!(answer.0, 200, "the batch as a whole is taken: {v}");
    let uploads = v["uploads"].as_array().expect("uploads");
    assert_eq!(uploads.len(), 5, "one outcome per upload, in order: {v}");
    let expect = [
        (1, "rejected", Some("terminal_out_of_scope")),
        (2, "rejected", Some("unknown_terminal")),
        (3, "rejected", Some("signature_invalid")),
        (4, "rejected", Some("invalid_body")),
        (5, "done", None),
    ];
    for (u, (id, outcome, code)) in uploads.iter().zip(expect) {
        assert_eq!(u["id"], id, "{v}");
        assert_eq!(u["outcome"], outcome, "upload {id}: {u}");
        if let Some(code) = code {
            assert_eq!(u["code"], code, "upload {id}: {u}");
        }
    }
    assert_eq!(uploads[4]["results"][0]["status"], "accepted", "{v}");
    assert_eq!(
        v["anomalies"],
        json!([{"outcome": "rejected", "id": 100, "code": "invalid_anomaly",
                "message": v["anomalies"][0]["message"]}]),
        "{v}"
    );

    // Only the good upload is in the log: its signed body and its reading.
    let after = settled_seq(&p.c).await;
    assert_eq!(after, before + 2, "one UploadSigned and one reading");
    assert_eq!(
        events_of_terminal(&p.c, T_A0).await,
        [
            ("UploadSigned".to_owned(), None),
            ("ReadingRecorded".to_owned(), Some(1))
        ]
    );
    assert!(
        events_of_terminal(&p.c, T_B0).await.is_empty(),
        "nothing of the out-of-scope terminal"
    );
    assert!(events_of_terminal(&p.c, "T-NOBODY").await.is_empty());

    // The same out-of-scope upload sent directly by its terminal is fine: the refusal is the edge's scope.
    let direct = p
        .keys
        .upload(&p.c, T_B0, out_of_scope.clone())
        .await
        .expect("the terminal may upload to the platform itself");
    assert_accepted(&direct, "the terminal's own upload");
    // … and sent by the edge again afterwards it is still refused, not answered `duplicate`.
    let again = p
        .post_as_edge_a(
            "/v1/edge/batches",
            &batch_bytes(
                EDGE_A,
                vec![],
                vec![forward_upload(
                    9,
                    &out_of_scope,
                    p.keys.sign(T_B0, &out_of_scope),
                )],
            ),
        )
        .await;
    let v = json_of(&again.1);
    assert_eq!(again.0, 200, "{v}");
    assert_eq!(v["uploads"][0]["outcome"], "rejected", "{v}");
    assert_eq!(v["uploads"][0]["code"], "terminal_out_of_scope", "{v}");
    assert_eq!(readings_of(&p.c, T_B0).await, [1]);
    p.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_refused_to_strangers_stale_or_foreign_requests_and_scoped_when_answered()
{
    let dir = tempfile::tempdir().unwrap();
    let p = platform_with_edge(&dir.path().join("cloud")).await;
    let base = p.c.base().to_owned();
    let now_ns = || time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let request = |edge_id: &str, at_ns: i64| {
        serde_json::to_vec(&RegistrationsRequest {
            edge_id: edge_id.to_owned(),
            at_ns,
        })
        .unwrap()
    };
    let stranger = terminal_key("nobody registered this edge key", 5);
    let before = settled_seq(&p.c).await;

    let cases: Vec<Case> = vec![
        (
            "no X-Custodian-Edge header",
            None,
            seal(&request(EDGE_A, now_ns()), &p.key, &p.edge_key),
            401,
            "edge_unknown",
        ),
        (
            "an edge that is not registered",
            Some("EDGE-NOBODY"),
            seal(&request("EDGE-NOBODY", now_ns()), &p.key, &stranger),
            401,
            "edge_unknown",
        ),
        (
            "sealed by a key that is not the edge's",
            Some(EDGE_A),
            seal(&request(EDGE_A, now_ns()), &p.key, &stranger),
            401,
            "envelope_invalid",
        ),
        (
            "in the clear",
            Some(EDGE_A),
            request(EDGE_A, now_ns()),
            401,
            "envelope_invalid",
        ),
        (
            "ten minutes old (a replay)",
            Some(EDGE_A),
            seal(
                &request(EDGE_A, now_ns() - 600_000_000_000),
                &p.key,
                &p.edge_key,
            ),
            401,
            "envelope_invalid",
        ),
        (
            "ten minutes ahead",
            Some(EDGE_A),
            seal(
                &request(EDGE_A, now_ns() + 600_000_000_000),
                &p.key,
                &p.edge_key,
            ),
            401,
            "envelope_invalid",
        ),
        (
            "naming another edge",
            Some(EDGE_A),
            seal(&request("EDGE-B", now_ns()), &p.key, &p.edge_key),
            401,
            "envelope_invalid",
        ),
    ];
    for (case, edge, body, status, code) in cases {
        let answer = post_edge(&base, "/v1/edge/registrations", edge, body).await;
        assert_refused(&answer, status, code, case);
    }

    // A proper request: the answer is sealed to the edge, and holds E-0 and its terminal, not E-1's.
    let answer = p
        .post_as_edge_a("/v1/edge/registrations", &request(EDGE_A, now_ns()))
        .await;
    assert_eq!(answer.0, 200, "{}", json_of(&answer.1));
    assert!(
        custodian_events::digital_envelope::open(&answer.1, &stranger, &p.key).is_err(),
        "only the edge can open its registrations"
    );
    let plain = custodian_events::digital_envelope::open(&answer.1, &p.edge_key, &p.key)
        .expect("sealed to the edge by the platform");
    let regs: Registrations = serde_json::from_slice(&plain).unwrap();
    let mut seen = Vec::new();
    for text in &regs.events_b64 {
        match decode_event(text).unwrap() {
            custodian_events::Event::EnterpriseRegistered(e) => seen.push(e.id.to_string()),
            custodian_events::Event::TerminalRegistered(t) => seen.push(t.id.to_string()),
            other => panic!("not a registration: {other:?}"),
        }
    }
    assert_eq!(seen, ["E-0", T_A0], "the edge's enterprises only");
    assert_eq!(settled_seq(&p.c).await, before, "nothing was appended");
    p.node.stop().await.unwrap();
}

/// A registrations request whose clock is as far off as an `i64` goes must be refused like any stale one,
/// not kill the handler (`(now - at_ns).abs()` overflowed once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrations_request_with_an_absurd_clock_is_refused_not_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let p = platform_with_edge(&dir.path().join("cloud")).await;
    for at_ns in [i64::MIN, i64::MIN / 2 - 1] {
        let body = serde_json::to_vec(&RegistrationsRequest {
            edge_id: EDGE_A.to_owned(),
            at_ns,
        })
        .unwrap();
        let answer = p.post_as_edge_a("/v1/edge/registrations", &body).await;
        assert_refused(&answer, 401, "envelope_invalid", &format!("at_ns {at_ns}"));
    }
    p.node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_registrations_are_refused_when_wrong_and_edges_are_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let p = platform_with_edge(&dir.path().join("cloud")).await;
    let before = settled_seq(&p.c).await;
    let pem = p.edge_key.public_key_pem();
    let other_pem = terminal_key("another key", 5).public_key_pem();

    // Without the admin token.
    let anonymous = NodeClient::new(p.c.base(), None);
    let (status, v) = anonymous
        .post_admin(
            "/v1/edges",
            &json!({"id": "EDGE-X", "public_key_pem": pem, "enterprise_ids": ["E-0"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("missing_token")),
        "{v}"
    );

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "an enterprise that is not registered",
            json!({"id": "EDGE-X", "public_key_pem": pem, "enterprise_ids": ["E-0", "E-9"]}),
            422,
            "unknown_enterprise",
        ),
        (
            "no enterprises",
            json!({"id": "EDGE-X", "public_key_pem": pem, "enterprise_ids": []}),
            422,
            "value_out_of_range",
        ),
        (
            "not a public key",
            json!({"id": "EDGE-X", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "enterprise_ids": ["E-0"]}),
            422,
            "invalid_public_key",
        ),
        (
            "a bad id",
            json!({"id": "EDGE X/1", "public_key_pem": pem, "enterprise_ids": ["E-0"]}),
            422,
            "invalid_id",
        ),
        (
            "an unknown field",
            json!({"id": "EDGE-X", "public_key_pem": pem, "enterprise_ids": ["E-0"], "note": 1}),
            422,
            "invalid_body",
        ),
        (
            "an edge id taken, with another key",
            json!({"id": EDGE_A, "public_key_pem": other_pem, "enterprise_ids": ["E-0"]}),
            409,
            "edge_exists",
        ),
        (
            "an edge id taken, with one more enterprise",
            json!({"id": EDGE_A, "public_key_pem": pem, "enterprise_ids": ["E-0", "E-1"]}),
            409,
            "edge_exists",
        ),
    ];
    for (case, body, status, code) in cases {
        let (s, v) = p.c.post_admin("/v1/edges", &body).await.unwrap();
        assert_eq!(s, status, "{case}: {v}");
        assert_eq!(v["code"], code, "{case}: {v}");
    }
    assert_eq!(
        settled_seq(&p.c).await,
        before,
        "no refusal appended anything"
    );

    // The same registration again is answered 200 with the original event, not recorded twice.
    let (s, v) =
        p.c.post_admin(
            "/v1/edges",
            &json!({"id": EDGE_A, "public_key_pem": pem, "enterprise_ids": ["E-0", "E-0"]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(settled_seq(&p.c).await, before);

    // The edge's own endpoints are not a platform's.
    assert_get_refused(
        &p.c,
        &["/v1/edge/outbox", "/v1/edge/dead-letters"],
        404,
        "not_an_edge",
    )
    .await;
    let (s, v) =
        p.c.post_admin("/v1/edge/dead-letters/retry", &json!({}))
            .await
            .unwrap();
    assert_eq!((s, v["code"].as_str()), (404, Some("not_an_edge")), "{v}");
    p.node.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// Dead letters at the edge.

/// A real `custodian edge` seeded (as at commissioning) with the registrations of its own enterprise and,
/// by mistake, of another edge's: it takes the other enterprise's terminal's upload, the platform refuses
/// it `terminal_out_of_scope`, and it is dead-lettered. Edges are immutable, so the cause cannot be fixed;
/// a retry moves it back to the outbox (seen while the platform is away), and the platform refuses it
/// again: one dead letter, nothing of it in the platform's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_scope_upload_is_dead_lettered_and_a_retry_requeues_it_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud_dir, edge_dir) = (dir.path().join("cloud"), dir.path().join("edge"));
    let cloud_port = free_port();
    let listen = |c: &mut custodian_node::config::Config| {
        c.listen = format!("127.0.0.1:{cloud_port}").parse().unwrap()
    };
    let (cloud, c) = start_node(&cloud_dir, listen).await;
    let keys = register_e0_and_e1(&c).await;
    let edge_b_key = terminal_key("edge key of EDGE-B", 5);
    for (id, pem, enterprise) in [
        (EDGE_A, public_key_of_edge(&edge_dir), "E-0"),
        ("EDGE-B", edge_b_key.public_key_pem(), "E-1"),
    ] {
        let (status, v) = c
            .post_admin(
                "/v1/edges",
                &json!({"id": id, "public_key_pem": pem, "enterprise_ids": [enterprise]}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{v}");
    }
    // The seed: EDGE-A's registrations and EDGE-B's.
    let mut events = Vec::new();
    for id in [EDGE_A, "EDGE-B"] {
        let regs = c
            .get_admin(&format!("/v1/admin/edges/{id}/registrations"))
            .await
            .unwrap();
        events.extend(regs["events_b64"].as_array().unwrap().iter().cloned());
    }
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, json!({"events_b64": events}).to_string()).unwrap();

    let edge = spawn_edge(
        &edge_dir,
        free_port(),
        c.base(),
        EDGE_A,
        &dir.path().join("edge.log"),
        &["--seed-registrations".as_ref(), seed.as_os_str()],
        &[
            ("CUSTODIAN_EDGE__RETRY_CAP_MS", "500"),
            ("CUSTODIAN_DERIVE__TICK_INTERVAL_S", "0"),
        ],
    );
    let e = edge.client();
    wait_ready(&e).await;

    // The edge has not been told, so it takes both terminals' uploads.
    let out_body = one_reading(T_B0, 1, 60);
    for (t, body) in [(T_B0, out_body.clone()), (T_A0, one_reading(T_A0, 1, 60))] {
        let r = keys.upload(&e, t, body).await.expect("the edge takes it");
        assert_accepted(&r, t);
    }
    wait_for(
        "the out-of-scope upload to be dead-lettered and the other forwarded",
        Duration::from_secs(30),
        async || {
            // The feeder runs a moment behind the edge's log: wait for the whole log to be in the outbox.
            let o = outbox(&e).await;
            o["outbox"]["checkpoint"] == o["log_last_seq"]
                && o["outbox"]["dead_letters"] == 1
                && o["outbox"]["uploads"] == 0
                && o["forwarding"]["uploads_forwarded"] == 1
        },
    )
    .await;
    let letters = dead_letters(&e).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = letters[0].clone();
    assert_eq!(letter["terminal_id"], T_B0, "{letter}");
    assert_eq!(letter["code"], "terminal_out_of_scope", "{letter}");
    assert_eq!(letter["seqs"], json!([1]), "{letter}");
    assert_eq!(
        letter["body"].as_str(),
        Some(std::str::from_utf8(&out_body).unwrap()),
        "the terminal's exact body is kept"
    );
    assert!(
        letter["message"]
            .as_str()
            .is_some_and(|m| m.contains("E-1")),
        "{letter}"
    );
    let o = outbox(&e).await;
    assert_eq!(o["forwarding"]["dead_lettered"], 1, "{o}");
    assert_eq!(o["forwarding"]["uploads_forwarded"], 1, "{o}");
    assert_eq!(
        readings_of(&c, T_A0).await,
        [1],
        "the in-scope upload arrived"
    );
    assert!(
        events_of_terminal(&c, T_B0).await.is_empty(),
        "nothing of the out-of-scope upload reached the platform's log"
    );
    let platform_seq = settled_seq(&c).await;

    // The dead letters' endpoints want the admin token and a proper query.
    let anonymous = NodeClient::new(e.base(), None);
    assert_get_refused(
        &anonymous,
        &["/v1/edge/dead-letters", "/v1/edge/outbox"],
        401,
        "missing_token",
    )
    .await;
    let (s, v) = anonymous
        .post_admin("/v1/edge/dead-letters/retry", &json!({}))
        .await
        .unwrap();
    assert_eq!((s, v["code"].as_str()), (401, Some("missing_token")), "{v}");
    assert_get_refused(
        &e,
        &[
            "/v1/edge/dead-letters?limit=many",
            "/v1/edge/dead-letters?color=red",
        ],
        400,
        "invalid_query",
    )
    .await;
    assert_eq!(
        e.get_admin("/v1/edge/dead-letters?limit=0").await.unwrap()["items"],
        json!([])
    );
    assert_eq!(
        dead_letters(&e).await.len(),
        1,
        "the refused retry moved nothing"
    );

    // Edges are immutable: the platform will not widen EDGE-A to E-1.
    let (s, v) = c
        .post_admin(
            "/v1/edges",
            &json!({"id": EDGE_A, "public_key_pem": public_key_of_edge(&edge_dir), "enterprise_ids": ["E-0", "E-1"]}),
        )
        .await
        .unwrap();
    assert_eq!((s, v["code"].as_str()), (409, Some("edge_exists")), "{v}");

    // With the platform away, a retry puts the upload back in its terminal's queue, where it waits.
    cloud.stop().await.unwrap();
    assert_eq!(retry_dead_letters(&e).await, 1);
    let o = outbox(&e).await;
    assert_eq!(o["outbox"]["uploads"], 1, "back in the outbox: {o}");
    assert_eq!(o["outbox"]["dead_letters"], 0, "{o}");
    assert!(dead_letters(&e).await.is_empty());
    assert_eq!(retry_dead_letters(&e).await, 0, "nothing left to retry");
    assert_eq!(outbox(&e).await["outbox"]["uploads"], 1, "not queued twice");

    // The platform is back: it refuses the upload again; one dead letter, the same one.
    let (cloud, c) = start_node(&cloud_dir, listen).await;
    wait_outbox_holds(&e, "the upload to be dead-lettered again", 0, 1).await;
    let again = dead_letters(&e).await;
    assert_eq!(again.len(), 1, "{again:?}");
    for field in ["log_seq", "terminal_id", "seqs", "code", "body"] {
        assert_eq!(again[0][field], letter[field], "{field}");
    }
    let o = outbox(&e).await;
    assert_eq!(o["forwarding"]["dead_lettered"], 2, "{o}");
    assert_eq!(o["forwarding"]["uploads_forwarded"], 1, "{o}");
    assert!(events_of_terminal(&c, T_B0).await.is_empty());
    assert_eq!(readings_of(&c, T_A0).await, [1]);
    assert_eq!(
        settled_seq(&c).await,
        platform_seq,
        "the retried refusal appended nothing at the platform"
    );

    // Nobody can fix this one: the operator discards it, freeing its bytes in the outbox. Bad requests
    // change nothing.
    let bytes_before = outbox(&e).await["outbox"]["bytes"].as_u64().unwrap();
    let (s, v) = anonymous
        .post_admin("/v1/edge/dead-letters/discard", &json!({"all": true}))
        .await
        .unwrap();
    assert_eq!((s, v["code"].as_str()), (401, Some("missing_token")), "{v}");
    for bad in [
        json!({}),
        json!({"log_seqs": []}),
        json!({"all": false}),
        json!({"all": true, "log_seqs": [1]}),
        json!({"log_seqs": ["one"]}),
        json!({"everything": true}),
    ] {
        let (s, v) = e
            .post_admin("/v1/edge/dead-letters/discard", &bad)
            .await
            .unwrap();
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some("invalid_body")),
            "{bad}: {v}"
        );
    }
    let malformed = reqwest::Client::new()
        .post(format!("{}/v1/edge/dead-letters/discard", e.base()))
        .bearer_auth(custodian_tests::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"log_seqs\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        dead_letters(&e).await.len(),
        1,
        "the refusals changed nothing"
    );
    let seq = letter["log_seq"].as_u64().unwrap();
    let (s, v) = e
        .post_admin(
            "/v1/edge/dead-letters/discard",
            &json!({"log_seqs": [seq, 999_999]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["discarded"], &v["log_seqs"], &v["not_found"]),
        (&json!(1), &json!([seq]), &json!([999_999])),
        "{v}"
    );
    assert!(dead_letters(&e).await.is_empty());
    let o = outbox(&e).await;
    assert_eq!(
        (&o["outbox"]["dead_letters"], &o["outbox"]["uploads"]),
        (&json!(0), &json!(0)),
        "{o}"
    );
    assert!(
        o["outbox"]["bytes"].as_u64().unwrap() < bytes_before,
        "its bytes are freed: {o}"
    );
    let (s, v) = e
        .post_admin("/v1/edge/dead-letters/discard", &json!({"all": true}))
        .await
        .unwrap();
    assert_eq!((s, &v["discarded"]), (200, &json!(0)), "asking again: {v}");
    assert_eq!(
        settled_seq(&c).await,
        platform_seq,
        "discarding sent nothing to the platform"
    );
    drop(edge);
    cloud.stop().await.unwrap();
}

/// An edge seeded at commissioning from a staging platform knows a terminal the production platform has not
/// registered yet: the platform refuses its uploads `unknown_terminal` and they are dead-lettered. The
/// operator registers the terminal (the documented fix) and retries: each reading arrives exactly once, in
/// order, and the edge's dead letters and outbox are empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_cause_is_fixed_arrives_exactly_once_after_retry() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = dir.path().join("edge");
    let edge_pem = public_key_of_edge(&edge_dir);
    let late = "T-LATE";
    let late_key = terminal_key(late, 11);
    let late_registration = terminal_body(late, 0, Some(&late_key.public_key_pem()));
    let mut keys = TerminalKeys::default();
    keys.0
        .insert(late.to_owned(), std::sync::Arc::new(late_key));

    // Staging: E-0, T-LATE and the edge; its registrations seed the edge.
    let (staging, s) = start_node(&dir.path().join("staging"), |_| {}).await;
    s.register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    s.register("/v1/terminals", &late_registration)
        .await
        .unwrap();
    let edge_registration =
        json!({"id": EDGE_A, "public_key_pem": edge_pem, "enterprise_ids": ["E-0"]});
    assert_eq!(
        s.post_admin("/v1/edges", &edge_registration)
            .await
            .unwrap()
            .0,
        201
    );
    let seed = s
        .get_admin(&format!("/v1/admin/edges/{EDGE_A}/registrations"))
        .await
        .unwrap();
    staging.stop().await.unwrap();
    let seed_file = dir.path().join("seed.json");
    std::fs::write(&seed_file, seed.to_string()).unwrap();

    // Production: E-0 and the edge, not the terminal yet.
    let (cloud, c) = start_node(&dir.path().join("cloud"), |_| {}).await;
    c.register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    assert_eq!(
        c.post_admin("/v1/edges", &edge_registration)
            .await
            .unwrap()
            .0,
        201
    );
    let (edge, e) = start_edge(&edge_dir, c.base(), EDGE_A, |cfg| {
        cfg.edge.seed_registrations_file = Some(seed_file.clone());
        cfg.edge.retry_cap_ms = 500;
    })
    .await;

    let bodies: Vec<Vec<u8>> = (1..=2)
        .map(|seq| one_reading(late, seq, 120 - seq as i64))
        .collect();
    for body in &bodies {
        let r = keys
            .upload(&e, late, body.clone())
            .await
            .expect("the edge knows the terminal");
        assert_accepted(&r, "an upload of the late terminal");
    }
    wait_for(
        "both uploads to be dead-lettered",
        Duration::from_secs(30),
        async || outbox(&e).await["outbox"]["dead_letters"] == 2,
    )
    .await;
    let letters = dead_letters(&e).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (l, seq) in letters.iter().zip([1, 2]) {
        assert_eq!(l["terminal_id"], late, "{l}");
        assert_eq!(l["code"], "unknown_terminal", "{l}");
        assert_eq!(l["seqs"], json!([seq]), "oldest first: {l}");
    }
    assert_eq!(outbox(&e).await["outbox"]["uploads"], 0);
    assert!(events_of_terminal(&c, late).await.is_empty());

    // The operator registers the terminal at the platform, with the key it signs with, and retries.
    c.register("/v1/terminals", &late_registration)
        .await
        .unwrap();
    assert_eq!(retry_dead_letters(&e).await, 2);
    wait_outbox_holds(&e, "the retried uploads to be delivered", 0, 0).await;
    let o = outbox(&e).await;
    assert_eq!(o["forwarding"]["uploads_forwarded"], 2, "{o}");
    assert_eq!(
        o["forwarding"]["dead_lettered"], 2,
        "only the first refusals: {o}"
    );
    assert!(dead_letters(&e).await.is_empty());
    assert_eq!(retry_dead_letters(&e).await, 0, "nothing left to retry");
    assert_eq!(
        readings_of(&c, late).await,
        [1, 2],
        "each reading exactly once, in order"
    );
    assert_eq!(
        events_of_terminal(&c, late)
            .await
            .iter()
            .filter(|(t, _)| t == "UploadSigned")
            .count(),
        2,
        "each signed upload once"
    );

    // The terminal resends its first upload to the edge (a lost answer): a duplicate, nothing forwarded.
    let r = keys
        .upload(&e, late, bodies[0].clone())
        .await
        .expect("a resend");
    assert!(
        matches!(
            r.results[0],
            custodian_node::api::ReadingResult::Duplicate { .. }
        ),
        "{r:?}"
    );
    // And a new reading flows straight through now.
    keys.upload(&e, late, one_reading(late, 3, 30))
        .await
        .expect("a new upload");
    wait_for("the new reading", Duration::from_secs(30), async || {
        readings_of(&c, late).await.len() == 3
    })
    .await;
    assert_eq!(readings_of(&c, late).await, [1, 2, 3]);
    assert!(dead_letters(&e).await.is_empty());
    edge.stop().await.unwrap();
    cloud.stop().await.unwrap();
}
