//! The read models against the real PostgreSQL and InfluxDB: their counts and sums equal a fold this test
//! computes itself from `GET /v1/events` (no projection code); a rebuild yields identical rows, points and
//! search results; Chinese notes are found by their words; and each database, really stopped (a private
//! server of this test's own), leaves ingest acknowledging and the model catching up with nothing lost or
//! doubled once it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use custodian_tests::private_services::{PrivateInflux, PrivatePostgres};
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use serde_json::{Value, json};
use sqlx::Row as _;

/// Readings of `terminal`: weighings of 4 containers, 40 minutes apart, across the CST midnight of
/// 2026-11-20 (16:00 UTC), with stages in turn and now and then a drop of more than 20 %.
fn readings(terminal: &str, from_seq: u64, n: u64, seed: u64) -> Vec<u8> {
    let stages = ["storage_in", "storage_out", "transfer_out", "generation"];
    let readings: Vec<Value> = (from_seq..from_seq + n)
        .map(|seq| {
            let minute = seq * 7 + seed;
            let at = time::macros::datetime!(2026-11-20 14:00 UTC)
                + time::Duration::minutes(minute as i64)
                + time::Duration::milliseconds((seq * 13 % 1000) as i64);
            let base = 100.0 + ((seq * 37 + seed * 11) % 50) as f64;
            let kg = if seq % 9 == 0 { base * 0.6 } else { base };
            json!({
                "seq": seq,
                "measured_at": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "kind": "weight",
                "value": kg,
                "unit": "kg",
                "container_id": format!("{terminal}-C{}", seq % 4),
                "stage": stages[(seq % 4) as usize],
                "waste_code": "HW08",
            })
        })
        .collect();
    serde_json::to_vec(&json!({"terminal_id": terminal, "readings": readings})).unwrap()
}

/// What the read models must hold, folded from the log as an auditor sees it.
#[derive(Debug, Default)]
struct Expected {
    readings_by_terminal: BTreeMap<String, i64>,
    /// Σ kg per terminal, in mg.
    mg_by_terminal: BTreeMap<String, i64>,
    /// (enterprise, CST day) → (readings, weighed mg, storage_in mg)
    kpis: BTreeMap<(String, String), (i64, i64, i64)>,
    /// container → (last weight mg, weighings)
    containers: BTreeMap<String, (i64, i64)>,
    custody: i64,
    anomalies: BTreeSet<String>,
    notes: i64,
    manifests: BTreeMap<String, String>,
}

fn ns_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp_nanos() as i64
}

fn cst_day(ns: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap()
        .to_offset(time::macros::offset!(+8));
    t.date().to_string()
}

fn fold(events: &[Value]) -> Expected {
    let mut x = Expected::default();
    let mut enterprise_of = BTreeMap::new();
    let mut newest: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    for e in events {
        let p = &e["payload"];
        let seq = e["event_seq"].as_u64().unwrap();
        match e["type"].as_str().unwrap() {
            "TerminalRegistered" => {
                enterprise_of.insert(
                    p["id"].as_str().unwrap().to_owned(),
                    p["enterprise_id"].as_str().unwrap().to_owned(),
                );
            }
            "ReadingRecorded" => {
                let t = p["terminal_id"].as_str().unwrap().to_owned();
                let v = p["value"].as_i64().unwrap();
                let at = ns_of(p["measured_at"].as_str().unwrap());
                *x.readings_by_terminal.entry(t.clone()).or_default() += 1;
                *x.mg_by_terminal.entry(t.clone()).or_default() += v;
                let k = x
                    .kpis
                    .entry((enterprise_of[&t].clone(), cst_day(at)))
                    .or_default();
                k.0 += 1;
                k.1 += v;
                if p["stage"] == "storage_in" {
                    k.2 += v;
                }
                if let Some(c) = p["container_id"].as_str() {
                    if p["stage"].is_string() {
                        x.custody += 1;
                    }
                    let entry = x.containers.entry(c.to_owned()).or_default();
                    entry.1 += 1;
                    let n = newest.entry(c.to_owned()).or_insert((i64::MIN, 0));
                    if (at, seq) > *n {
                        *n = (at, seq);
                        entry.0 = v;
                    }
                }
            }
            "AnomalyDetected" => {
                x.anomalies
                    .insert(p["anomaly_id"].as_str().unwrap().to_owned());
            }
            "NoteFiled" => x.notes += 1,
            "ManifestOpened" => {
                x.manifests
                    .insert(p["id"].as_str().unwrap().to_owned(), "opened".into());
            }
            "ManifestProgressed" => {
                x.manifests.insert(
                    p["manifest_id"].as_str().unwrap().to_owned(),
                    p["status"].as_str().unwrap().to_owned(),
                );
            }
            _ => {}
        }
    }
    x
}

/// Checks the PostgreSQL model in `schema` and the InfluxDB model in `database` against `x`.
async fn check_models(models: &ReadModels, schema: &str, database: &str, x: &Expected) {
    let pool = models.pool().await;
    let q = |sql: &str| sqlx::AssertSqlSafe(sql.replace("S.", &format!("{schema}.")));
    let rows = sqlx::query(q("SELECT id, readings FROM S.terminals"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let got: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("readings")))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(got, x.readings_by_terminal, "readings per terminal");
    let rows = sqlx::query(q(
        "SELECT enterprise_id, day::text AS day, readings, weighed_mg, storage_in_mg FROM S.daily_kpis \
         WHERE readings > 0",
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: BTreeMap<(String, String), (i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                (r.get("enterprise_id"), r.get("day")),
                (
                    r.get("readings"),
                    r.get("weighed_mg"),
                    r.get("storage_in_mg"),
                ),
            )
        })
        .collect();
    assert_eq!(got, x.kpis, "daily KPIs (CST days)");
    assert!(got.len() >= 2, "the readings span two CST days: {got:?}");
    let rows = sqlx::query(q("SELECT id, last_weight_mg, weighings FROM S.containers"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let got: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r.get("id"), (r.get("last_weight_mg"), r.get("weighings"))))
        .collect();
    assert_eq!(got, x.containers, "containers: last weight and weighings");
    let custody: i64 = sqlx::query_scalar(q("SELECT count(*) FROM S.custody"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(custody, x.custody, "custody chain entries");
    let anomalies: Vec<String> = sqlx::query_scalar(q("SELECT anomaly_id FROM S.anomalies"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        anomalies.into_iter().collect::<BTreeSet<_>>(),
        x.anomalies,
        "anomalies"
    );
    let notes: i64 = sqlx::query_scalar(q("SELECT count(*) FROM S.notes"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(notes, x.notes, "notes");
    let rows = sqlx::query(q("SELECT id, status FROM S.manifests"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let got: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("status")))
        .collect();
    assert_eq!(got, x.manifests, "manifests");
    pool.close().await;

    let influx = models.influx(Some(database));
    let answer = influx
        .query("SELECT count(\"value\"), sum(\"value\") FROM \"readings\" GROUP BY \"terminal_id\"")
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for s in answer["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let t = s["tags"]["terminal_id"].as_str().unwrap().to_owned();
        let count = s["values"][0][1].as_i64().unwrap();
        let sum_kg = s["values"][0][2].as_f64().unwrap();
        let want_kg = x.mg_by_terminal[&t] as f64 / 1e6;
        assert!(
            (sum_kg - want_kg).abs() < 1e-6 * want_kg.max(1.0),
            "Σ kg of {t} in InfluxDB {sum_kg} != {want_kg} folded from the log"
        );
        counts.insert(t, count);
    }
    assert_eq!(
        counts, x.readings_by_terminal,
        "points per terminal in InfluxDB"
    );
}

/// Every row of the model in `schema` (but the checkpoint's clock and sqlx's bookkeeping), as text.
async fn dump_postgres(models: &ReadModels, schema: &str) -> BTreeMap<String, Vec<String>> {
    let pool = models.pool().await;
    let mut out = BTreeMap::new();
    for table in [
        "enterprises",
        "terminals",
        "containers",
        "custody",
        "manifests",
        "anomalies",
        "notes",
        "daily_kpis",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {schema}.{table} t ORDER BY 1"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        out.insert(table.to_owned(), rows);
    }
    pool.close().await;
    out
}

async fn dump_influx(models: &ReadModels, database: &str) -> Value {
    models
        .influx(Some(database))
        .query("SELECT * FROM \"readings\" GROUP BY *")
        .await
        .unwrap()
}

async fn search(client: &NodeClient, q: &str) -> Vec<Value> {
    client
        .get_admin(&format!(
            "/v1/admin/search?q={}&limit=200",
            q.replace(' ', "%20")
        ))
        .await
        .unwrap()["hits"]
        .as_array()
        .unwrap()
        .clone()
}

async fn schema_names(models: &ReadModels) -> Vec<String> {
    let pool = models.pool().await;
    let names = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'custodian%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_equal_a_fold_of_the_log_and_rebuild_identically() {
    let dir = tempfile::tempdir().unwrap();
    let models = ReadModels::new("fold");
    let (node, client) = start_node(dir.path(), |c| models.enable(c)).await;
    let terminals = ["T-1", "T-2", "T-3"];
    let keys = register_terminals(&client, &terminals).await;
    for (i, t) in terminals.iter().enumerate() {
        for chunk in 0..3 {
            let body = readings(t, 1 + chunk * 20, 20, i as u64);
            keys.upload(&client, t, body.clone()).await.unwrap();
            // A resend: stored once.
            keys.upload(&client, t, body).await.unwrap();
        }
    }
    client
        .register(
            "/v1/enterprises",
            &custodian_tools::terminal_sim::enterprise_body(1),
        )
        .await
        .unwrap();
    let (status, _) = client
        .post_admin(
            "/v1/manifests",
            &json!({"id": "M-1", "generator_id": "E-0", "receiver_id": "E-1", "waste_code": "HW08",
                    "container_ids": ["T-1-C0"], "declared_kg": 120.0,
                    "notes": "废矿物油桶两只，封口完好"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    for (text, author) in [
        (
            "现场检查：危险废物贮存间标识齐全，台账与称重记录一致",
            "检查员 王",
        ),
        (
            "Drum T-2-C1 lid cracked; asked the operator to re-pack it",
            "inspector Li",
        ),
        ("废水处理站运行正常", "检查员 张"),
    ] {
        let (status, v) = client
            .post_admin(
                "/v1/notes",
                &json!({"enterprise_id": "E-0", "author": author, "text": text}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{v}");
    }
    // Bad notes change nothing.
    for bad in [
        json!({"enterprise_id": "E-9", "author": "a", "text": "x"}),
        json!({"enterprise_id": "E-0", "author": "", "text": "x"}),
        json!({"enterprise_id": "E-0", "author": "a", "text": "x", "extra": 1}),
    ] {
        let (status, v) = client.post_admin("/v1/notes", &bad).await.unwrap();
        assert!((400..500).contains(&status), "{bad} got {status} {v}");
        assert!(v["code"].is_string(), "{v}");
    }

    wait_projected(&client, Duration::from_secs(60)).await;
    let events = client.all_events(1).await.unwrap();
    let x = fold(&events);
    assert_eq!(x.readings_by_terminal.values().sum::<i64>(), 180);
    assert!(!x.anomalies.is_empty(), "the drops were flagged");
    check_models(&models, "custodian_g1", &models.name, &x).await;

    // Chinese words are found inside longer text, and not by a word sharing one character.
    let hits = search(&client, "危险废物").await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["doc"]["kind"], "note");
    assert_eq!(search(&client, "废水").await.len(), 1);
    assert_eq!(search(&client, "封口").await[0]["doc"]["kind"], "manifest");
    assert_eq!(search(&client, "LID cracked").await.len(), 1);
    let fluctuations = search(&client, "重量异常波动").await;
    assert_eq!(
        fluctuations.len(),
        x.anomalies.len(),
        "every anomaly is indexed"
    );
    let bad = client
        .get_admin("/v1/admin/search?q=%20")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some("invalid_query"));

    // Rebuild all three: the postgres one through the CLI, as an operator would.
    let pg_before = dump_postgres(&models, "custodian_g1").await;
    let influx_before = dump_influx(&models, &models.name).await;
    let search_before: Vec<Value> = search(&client, "重量异常波动").await;
    let out = admin_cli_ok(&["projections", "rebuild", "postgres", "--node", &node.url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("generation 2 is live"), "{stderr}");
    assert_eq!(client.rebuild_projection("influx").await.unwrap(), 2);
    assert_eq!(client.rebuild_projection("search").await.unwrap(), 2);
    let refused = client.rebuild_projection("nosuch").await.unwrap_err();
    assert_eq!(refused.code(), Some("unknown_projection"));
    let status = wait_projected(&client, Duration::from_secs(60)).await;
    for p in status["projections"].as_array().unwrap() {
        assert_eq!(p["generation"], 2, "{p}");
    }
    assert_eq!(
        dump_postgres(&models, "custodian_g2").await,
        pg_before,
        "a rebuilt PostgreSQL model has the same rows"
    );
    assert_eq!(
        schema_names(&models).await,
        vec!["custodian_g2".to_owned(), "custodian_meta".to_owned()],
        "the replaced schema is dropped"
    );
    let g2 = format!("{}_g2", models.name);
    assert_eq!(
        dump_influx(&models, &g2).await,
        influx_before,
        "a rebuilt InfluxDB model has the same points"
    );
    let search_after = search(&client, "重量异常波动").await;
    let ids = |h: &[Value]| -> BTreeSet<String> {
        h.iter()
            .map(|h| h["doc"]["doc_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&search_after), ids(&search_before));
    check_models(&models, "custodian_g2", &g2, &x).await;

    // /metrics carries lag and throughput per model.
    let metrics = client.metrics().await.unwrap();
    for name in ["postgres", "influx", "search"] {
        let line = format!("custodian_projection_lag_events{{projection=\"{name}\"}} 0");
        assert!(metrics.contains(&line), "{line} missing from /metrics");
    }
    node.stop().await.unwrap();
    models.drop_all().await;
}

/// Uploads `n` readings of T-1 from `from_seq`, each acknowledged.
async fn upload_run(client: &NodeClient, keys: &TerminalKeys, from_seq: u64, n: u64) {
    for chunk in (0..n).step_by(20) {
        let body = readings("T-1", from_seq + chunk, 20.min(n - chunk), 0);
        let r = keys.upload(client, "T-1", body).await.unwrap();
        assert!(!r.results.is_empty(), "{r:?}");
    }
}

async fn wait_state(client: &NodeClient, name: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = client.projection(name).await.unwrap().unwrap();
        if p["state"] == state {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never became {state}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Terminal T-1's 140 readings around an outage of read model `name`'s database `db`: 40 projected, then
/// `stop`, 60 more until the read model is `failing` with an error naming `server`, 40 more still
/// acknowledged while it is down, then `start`, and every read model caught up again.
async fn ride_out_outage<S>(
    client: &NodeClient,
    name: &str,
    server: &str,
    db: &mut S,
    stop: fn(&mut S),
    start: fn(&mut S),
) {
    let keys = register_terminals(client, &["T-1"]).await;
    upload_run(client, &keys, 1, 40).await;
    wait_projected(client, Duration::from_secs(30)).await;

    stop(db);
    upload_run(client, &keys, 41, 60).await;
    let failing = wait_state(client, name, "failing").await;
    assert!(
        failing["last_error"].as_str().unwrap().contains(server),
        "{failing}"
    );
    // Still acknowledging while the database is down.
    upload_run(client, &keys, 101, 40).await;
    start(db);
    wait_projected(client, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_ingest_going_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = PrivatePostgres::start_new(&dir.path().join("pg"));
    let models = ReadModels::on(
        "pgout",
        pg.url().trim_end_matches("/postgres"),
        "http://127.0.0.1:8086",
    );
    let (node, client) = start_node(&dir.path().join("node"), |c| {
        models.enable(c);
        c.projections.influx_enabled = false;
        c.projections.search_enabled = false;
    })
    .await;
    ride_out_outage(
        &client,
        "postgres",
        "PostgreSQL",
        &mut pg,
        PrivatePostgres::stop,
        PrivatePostgres::start,
    )
    .await;
    let p = client.projection("postgres").await.unwrap().unwrap();
    assert_eq!(p["state"], "running");
    assert!(p["failures_total"].as_u64().unwrap() >= 1);
    let events = client.all_events(1).await.unwrap();
    let x = fold(&events);
    assert_eq!(x.readings_by_terminal["T-1"], 140);
    let pool = models.pool().await;
    let (n, mg): (i64, i64) = sqlx::query_as(
        "SELECT readings, (SELECT sum(weighed_mg)::int8 FROM custodian_g1.daily_kpis) \
         FROM custodian_g1.terminals WHERE id = 'T-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 140, "nothing lost or doubled");
    assert_eq!(mg, x.mg_by_terminal["T-1"]);
    pool.close().await;
    node.stop().await.unwrap();
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influx_outage_keeps_ingest_going_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut influx = PrivateInflux::start_new(&dir.path().join("influx"));
    let models = ReadModels::on("ifout", "postgres://postgres@127.0.0.1:5432", &influx.url());
    let (node, client) = start_node(&dir.path().join("node"), |c| {
        models.enable(c);
        c.projections.postgres_enabled = false;
        c.projections.search_enabled = false;
    })
    .await;
    ride_out_outage(
        &client,
        "influx",
        "InfluxDB",
        &mut influx,
        PrivateInflux::stop,
        PrivateInflux::start,
    )
    .await;
    let events = client.all_events(1).await.unwrap();
    let x = fold(&events);
    let answer = models
        .influx(None)
        .query("SELECT count(\"value\"), sum(\"value\") FROM \"readings\"")
        .await
        .unwrap();
    let values = &answer["results"][0]["series"][0]["values"][0];
    assert_eq!(
        values[1].as_i64(),
        Some(140),
        "nothing lost or doubled: {answer}"
    );
    let want = x.mg_by_terminal["T-1"] as f64 / 1e6;
    assert!((values[2].as_f64().unwrap() - want).abs() < 1e-6 * want);
    node.stop().await.unwrap();
    drop(influx);
}

/// `GET path` with the admin token: status and JSON body.
async fn get_status(client: &NodeClient, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", client.base()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_built_from_another_log_is_never_served_and_rebuilt_beside_it_if_allowed() {
    let models = ReadModels::new("other");
    let first = tempfile::tempdir().unwrap();
    let (node, client) = start_node(first.path(), |c| models.enable(c)).await;
    let keys = register_terminals(&client, &["T-1"]).await;
    upload_run(&client, &keys, 1, 20).await;
    wait_projected(&client, Duration::from_secs(30)).await;
    node.stop().await.unwrap();

    // A second node with a log of its own, pointed at the same databases, default settings: the models
    // are the first log's, so nothing of them is served and nothing written.
    let second = tempfile::tempdir().unwrap();
    let (node, client) = start_node(second.path(), |c| models.enable(c)).await;
    let keys = register_terminals(&client, &["T-1"]).await;
    upload_run(&client, &keys, 1, 60).await;
    for name in ["postgres", "influx"] {
        let p = wait_state(&client, name, "foreign_log").await;
        assert!(
            p["last_error"]
                .as_str()
                .unwrap()
                .contains("built from another event log"),
            "{p}"
        );
    }
    for path in [
        "/v1/enterprises",
        "/v1/anomalies",
        "/v1/overview",
        "/v1/terminals/T-1/readings?from=2026-11-19T00:00:00Z&to=2026-11-22T00:00:00Z",
    ] {
        let (status, body) = get_status(&client, path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["code"], "read_model_unavailable", "{path}: {body}");
        let m = body["message"].as_str().unwrap();
        assert!(
            m.contains("another event log") && m.contains("on_foreign_log"),
            "{path}: the answer says what to do: {m}"
        );
    }
    let pool = models.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT readings FROM custodian_g1.terminals WHERE id = 'T-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 20, "the first log's model is untouched");
    node.stop().await.unwrap();

    // The same node allowed to build its own: a generation of its own beside the first log's.
    let (node, client) = start_node(second.path(), |c| {
        models.enable(c);
        c.projections.on_foreign_log = custodian_node::config::OnForeignLog::Rebuild;
    })
    .await;
    let p = wait_projected(&client, Duration::from_secs(60)).await;
    for m in p["projections"].as_array().unwrap() {
        if m["name"] != "search" {
            assert_eq!(m["generation"], 2, "{m}");
            assert_eq!(m["state"], "running", "{m}");
        }
    }
    let (status, body) = get_status(
        &client,
        "/v1/terminals/T-1/readings?from=2026-11-19T00:00:00Z&to=2026-11-22T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let n: i64 = sqlx::query_scalar("SELECT readings FROM custodian_g2.terminals WHERE id = 'T-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 60, "the second log's own model");
    let n: i64 = sqlx::query_scalar("SELECT readings FROM custodian_g1.terminals WHERE id = 'T-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 20, "the first log's model is still untouched");
    node.stop().await.unwrap();

    // The first node again: it finds its own generation (the pointers are per log) and serves it.
    let (node, client) = start_node(first.path(), |c| models.enable(c)).await;
    let p = wait_projected(&client, Duration::from_secs(60)).await;
    let pg = p["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "postgres")
        .unwrap()
        .clone();
    assert_eq!(pg["generation"], 1, "{pg}");
    let (status, body) = get_status(&client, "/v1/enterprises").await;
    assert_eq!(status, 200, "{body}");
    pool.close().await;
    node.stop().await.unwrap();
    models.drop_all().await;
}
