//! Regulators' tokens and scopes: three enterprises in two provinces; national, provincial and enterprise
//! tokens each see exactly their scope on every read endpoint (lists, single objects, KPIs, anomalies,
//! custody chains, search), and an object out of scope answers exactly like one that does not exist.

use std::collections::BTreeSet;
use std::time::Duration;

use custodian_tests::scopes::{issue_token, register_enterprises, signing_terminal};
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{terminal_body, terminal_key};
use serde_json::{Value, json};

fn weighings(terminal: &str, container: &str) -> Vec<u8> {
    custodian_tests::scopes::weighings(terminal, container, 1)
}

fn ids(v: &Value, field: &str) -> BTreeSet<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_str().unwrap_or("").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_sees_exactly_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let models = ReadModels::new("scopes");
    let (node, admin) = start_node(dir.path(), |c| models.enable(c)).await;
    register_enterprises(&admin).await;
    let mut keys = TerminalKeys::default();
    for (t, e) in [("T-A", "E-A"), ("T-B", "E-B"), ("T-C", "E-C")] {
        signing_terminal(&admin, &mut keys, t, e).await;
        let (status, _) = admin
            .post_admin(
                "/v1/notes",
                &json!({"enterprise_id": e, "author": "检查员", "text": format!("{e} 危险废物贮存间检查")}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    wait_projected(&admin, Duration::from_secs(60)).await;

    // Tokens: the national one through the CLI, as an operator would.
    let out = admin_cli_ok(&[
        "token",
        "issue",
        "--tier",
        "national",
        "--ttl",
        "1h",
        "--node",
        &node.url(),
    ]);
    let national = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        national.starts_with("cst1."),
        "stdout holds the token alone: {national}"
    );
    let issue = |tier: &'static str, scope: &'static str| issue_token(&admin, tier, Some(scope));
    let (province, province_id) = issue("province", "440000").await;
    let (enterprise, enterprise_id) = issue("enterprise", "E-A").await;
    for bad in [
        json!({"tier": "province", "scope": "440100"}),
        json!({"tier": "enterprise", "scope": "E-Z"}),
        json!({"tier": "mayor"}),
        json!({"tier": "national", "ttl_s": 0}),
    ] {
        let (status, v) = admin.post_admin("/v1/admin/tokens", &bad).await.unwrap();
        assert_eq!(status, 422, "{bad}: {v}");
    }
    let as_ = |token: &str| NodeClient::new(node.url(), Some(token.to_owned()));
    let (n, p, e) = (as_(&national), as_(&province), as_(&enterprise));

    // Lists.
    let all = set(&["E-A", "E-B", "E-C"]);
    let gd = set(&["E-A", "E-B"]);
    let a = set(&["E-A"]);
    for (who, want) in [(&n, &all), (&p, &gd), (&e, &a)] {
        assert_eq!(
            &ids(&get_json(who, "/v1/enterprises").await.unwrap(), "id"),
            want
        );
        assert_eq!(
            &ids(
                &get_json(who, "/v1/anomalies").await.unwrap(),
                "enterprise_id"
            ),
            want,
            "anomalies"
        );
        let hits = get_json(who, "/v1/search?q=%E5%8D%B1%E9%99%A9%E5%BA%9F%E7%89%A9")
            .await
            .unwrap();
        let seen: BTreeSet<String> = hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["doc"]["enterprise_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(&seen, want, "search hits");
    }
    // A filter cannot widen the scope.
    assert!(
        ids(
            &get_json(&p, "/v1/enterprises?province_code=320000")
                .await
                .unwrap(),
            "id"
        )
        .is_empty()
    );
    assert!(
        ids(
            &get_json(&e, "/v1/anomalies?enterprise_id=E-B")
                .await
                .unwrap(),
            "enterprise_id"
        )
        .is_empty()
    );

    // Single objects: out of scope is indistinguishable from absent.
    let absent = get_json(&n, "/v1/enterprises/E-Z").await.unwrap_err();
    assert_eq!(absent.0, 404);
    for (who, path) in [
        (&p, "/v1/enterprises/E-C"),
        (&e, "/v1/enterprises/E-B"),
        (&e, "/v1/enterprises/E-B/kpis"),
        (&p, "/v1/containers/T-C-C0"),
        (&e, "/v1/containers/T-B-C0"),
    ] {
        let (status, body) = get_json(who, path).await.unwrap_err();
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["code"], absent.1["code"], "{path}");
    }
    assert_eq!(
        get_json(&n, "/v1/enterprises/E-C").await.unwrap()["province_code"],
        "320000"
    );
    let kpis = get_json(&e, "/v1/enterprises/E-A/kpis?from=2026-11-20&to=2026-11-20")
        .await
        .unwrap();
    assert_eq!(kpis["items"][0]["readings"], 2, "{kpis}");
    let c = get_json(&p, "/v1/containers/T-A-C0").await.unwrap();
    assert_eq!(c["custody"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["last_weight_kg"], 60.0);

    // Time series from InfluxDB, scoped the same way.
    let day = "from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z";
    let raw = get_json(&e, &format!("/v1/terminals/T-A/readings?{day}"))
        .await
        .unwrap();
    let values: Vec<f64> = raw["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![100.0, 60.0], "{raw}");
    let per_day = get_json(
        &n,
        &format!("/v1/terminals/T-C/readings?{day}&every=1d&agg=sum"),
    )
    .await
    .unwrap();
    assert_eq!(per_day["items"][0]["value"], 160.0, "{per_day}");
    assert!(
        per_day["items"][0]["time"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-19T16:00:00"),
        "day buckets start at midnight China Standard Time: {per_day}"
    );
    let counted = get_json(
        &p,
        &format!("/v1/terminals/T-B/readings?{day}&every=1h&agg=count"),
    )
    .await
    .unwrap();
    assert_eq!(counted["items"][0]["value"], 2, "{counted}");
    for (who, path) in [(&p, "T-C"), (&e, "T-B"), (&n, "T-Z")] {
        let (status, body) = get_json(who, &format!("/v1/terminals/{path}/readings?{day}"))
            .await
            .unwrap_err();
        assert_eq!((status, &body["code"]), (404, &absent.1["code"]), "{path}");
    }
    let (status, body) = get_json(
        &n,
        "/v1/terminals/T-A/readings?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z&every=1m",
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("range_too_large"))
    );
    assert_eq!(
        get_json(&n, &format!("/v1/terminals/T-A/readings?{day}&every=5m"))
            .await
            .unwrap_err()
            .0,
        400
    );

    // A manifest from E-A to E-C: both provinces see it, E-B does not.
    let (status, v) = admin
        .post_admin(
            "/v1/manifests",
            &json!({"id": "M-1", "generator_id": "E-A", "receiver_id": "E-C", "waste_code": "HW08",
                    "container_ids": ["T-A-C0"], "declared_kg": 60.0}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    wait_projected(&admin, Duration::from_secs(30)).await;
    let (eb, _) = issue("enterprise", "E-B").await;
    let c_token = issue("province", "320000").await.0;
    for who in [&n, &p, &e, &as_(&c_token)] {
        assert_eq!(
            get_json(who, "/v1/manifests/M-1").await.unwrap()["receiver_id"],
            "E-C"
        );
    }
    let (status, body) = get_json(&as_(&eb), "/v1/manifests/M-1").await.unwrap_err();
    assert_eq!((status, &body["code"]), (404, &absent.1["code"]));

    // The same question from the same scope is answered from the cache.
    let hits = |m: &str| {
        custodian_node::metrics::sample(m, "custodian_query_cache_hits_total").unwrap_or(0.0)
    };
    let before = hits(&admin.metrics().await.unwrap());
    get_json(&p, "/v1/enterprises").await.unwrap();
    let again = get_json(&p, "/v1/enterprises").await.unwrap();
    assert_eq!(ids(&again, "id"), gd);
    assert!(
        hits(&admin.metrics().await.unwrap()) > before,
        "a cache hit is counted"
    );

    // The landing view.
    for (who, enterprises) in [(&n, 3), (&p, 2), (&e, 1)] {
        let o = get_json(who, "/v1/overview").await.unwrap();
        assert_eq!(o["enterprises"], enterprises, "{o}");
        assert_eq!(o["terminals"], enterprises, "{o}");
        assert_eq!(
            o["open_anomalies_by_kind"]["weight_fluctuation"], enterprises,
            "{o}"
        );
        assert_eq!(o["kg_in_storage"], 60.0 * enterprises as f64, "{o}");
    }

    // Acknowledge and resolve, within scope only; both are events, and the state shows in the model.
    let a_id = get_json(&e, "/v1/anomalies").await.unwrap()["items"][0]["anomaly_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c_id = get_json(&n, "/v1/anomalies?enterprise_id=E-C")
        .await
        .unwrap()["items"][0]["anomaly_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let note = json!({"note": "已通知企业复核称重"});
    let (status, v) = p
        .post_admin(&format!("/v1/anomalies/{c_id}/resolve"), &note)
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("not_found")),
        "out of scope"
    );
    let (status, v) = e
        .post_admin(&format!("/v1/anomalies/{a_id}/acknowledge"), &note)
        .await
        .unwrap();
    assert_eq!(status, 202, "{v}");
    let (status, _) = p
        .post_admin(&format!("/v1/anomalies/{a_id}/resolve"), &note)
        .await
        .unwrap();
    assert_eq!(status, 202);
    let (status, v) = e
        .post_admin(&format!("/v1/anomalies/{a_id}/wave"), &note)
        .await
        .unwrap();
    assert_eq!(status, 404, "{v}");
    let (status, _) = e
        .post_admin(
            &format!("/v1/anomalies/{a_id}/resolve"),
            &json!({"note": ""}),
        )
        .await
        .unwrap();
    assert_eq!(status, 422);
    wait_projected(&admin, Duration::from_secs(30)).await;
    // (A cursor no page gave, to step past the cache.)
    let resolved = get_json(&e, "/v1/anomalies?state=resolved&cursor=999999999")
        .await
        .unwrap();
    assert_eq!(ids(&resolved, "anomaly_id"), set(&[&a_id]), "{resolved}");
    assert_eq!(resolved["items"][0]["state_note"], "已通知企业复核称重");
    let (status, v) = e
        .post_admin(&format!("/v1/anomalies/{a_id}/acknowledge"), &note)
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_resolved"))
    );
    assert!(
        ids(
            &get_json(&e, "/v1/anomalies?state=open").await.unwrap(),
            "anomaly_id"
        )
        .is_empty()
    );
    assert_eq!(
        get_json(&n, "/v1/anomalies?state=closed")
            .await
            .unwrap_err()
            .0,
        400
    );
    // The cached overview is at most `query.cache_ttl_ms` (1 s) stale.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let o = get_json(&n, "/v1/overview").await.unwrap();
    assert_eq!(o["open_anomalies_by_kind"]["weight_fluctuation"], 2, "{o}");
    assert_eq!(
        get_json(&n, "/v1/overview?province_code=440000")
            .await
            .unwrap_err()
            .1["code"],
        "invalid_query",
        "the overview takes no parameters"
    );

    // Each handling names the token that did it, in the payload and in the envelope.
    let handled = admin.events(1, None, &["AnomalyHandled"]).await.unwrap();
    let causes: Vec<&str> = handled
        .iter()
        .map(|e| e["caused_by"].as_str().unwrap())
        .collect();
    assert_eq!(causes[..2], [enterprise_id.as_str(), province_id.as_str()]);
    assert!(handled.iter().all(|e| e["caused_by"] == e["payload"]["by"]));

    // Paging: one at a time, the national view walks all three anomalies.
    let mut seen = Vec::new();
    let mut path = "/v1/anomalies?limit=1".to_owned();
    loop {
        let page = get_json(&n, &path).await.unwrap();
        seen.extend(ids(&page, "anomaly_id"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/anomalies?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);

    // The API describes itself.
    let doc = get_json(&NodeClient::new(node.url(), None), "/v1/openapi.json")
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/terminals/{id}/readings"]["get"].is_object());

    // Regulators only read.
    let (status, v) = p
        .post_admin(
            "/v1/notes",
            &json!({"enterprise_id": "E-A", "author": "x", "text": "y"}),
        )
        .await
        .unwrap();
    assert_eq!((status, v["code"].as_str()), (403, Some("admin_only")));
    assert_eq!(get_json(&p, "/v1/events").await.unwrap_err().0, 403);
    // Bad input.
    assert_eq!(
        get_json(&n, "/v1/anomalies?limit=0").await.unwrap_err().1["code"],
        "invalid_query"
    );
    assert_eq!(
        get_json(&n, "/v1/anomalies?from=yesterday")
            .await
            .unwrap_err()
            .0,
        400
    );
    // Bad input is the caller's error (4xx), never the read model's (5xx) or a panic: a NUL byte anywhere
    // in the URL (PostgreSQL's text cannot hold one), days and instants out of range, a huge Last-Event-ID.
    assert_get_refused(
        &n,
        &[
            "/v1/anomalies?kind=%00weight_fluctuation",
            "/v1/anomalies?province_code=%00",
            "/v1/anomalies?enterprise_id=E-A%00",
            "/v1/enterprises?province_code=%0044",
            "/v1/enterprises?city_code=%00&cursor=%00",
            "/v1/enterprises/E-A%00",
            "/v1/enterprises/%00/kpis",
            "/v1/containers/C%00",
            "/v1/manifests/%00",
        ],
        400,
        "invalid_url",
    )
    .await;
    // Days and instants beyond what is kept bound a range as its ends do (the OpenAPI document takes
    // every RFC 3339 date and instant); a range too wide for one answer is refused with its own code.
    for path in [
        "/v1/enterprises/E-A/kpis?from=-9999-01-01",
        "/v1/enterprises/E-A/kpis?from=0001-01-01&to=1969-12-31",
        "/v1/enterprises/E-A/kpis?from=9999-12-31T16:00:00Z",
        "/v1/enterprises/E-A/kpis?to=9999-12-31T23:59:59-23:59",
        "/v1/anomalies?from=9999-12-31T00:00:00Z",
        "/v1/anomalies?from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59-23:59",
    ] {
        get_json(&n, path)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
    }
    assert_get_refused(
        &n,
        &[
            "/v1/terminals/T-A/readings?from=1700-01-01T00:00:00Z&to=2200-01-01T00:00:00Z&every=1d",
            "/v1/terminals/T-A/readings?from=0001-01-01T00:00:00Z&to=9999-01-01T00:00:00Z",
        ],
        400,
        "range_too_large",
    )
    .await;
    // Filters outside what the document states are refused, not answered with nothing.
    assert_get_refused(
        &n,
        &[
            "/v1/anomalies?kind=bogus",
            "/v1/anomalies?province_code=44",
            "/v1/anomalies?cursor=-1",
            "/v1/enterprises?province_code=440100",
            "/v1/enterprises?city_code=440000",
            "/v1/search?q=x&kind=bogus",
        ],
        400,
        "invalid_query",
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/anomalies/stream", node.url()))
        .bearer_auth(&national)
        .header("last-event-id", u64::MAX.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "Last-Event-ID u64::MAX");
    // Integers may be written as JSON numbers with a zero fraction (JSON Schema's `integer`).
    let (status, v) = admin
        .post_admin(
            "/v1/admin/tokens",
            &json!({"tier": "national", "ttl_s": 600.0}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    for (path, body) in [
        (
            "/v1/notes",
            json!({"enterprise_id": "E-A", "author": "x", "text": "a\u{0}b"}),
        ),
        (
            "/v1/notes",
            json!({"enterprise_id": "E-A", "author": "x\u{0}", "text": "b"}),
        ),
        (
            "/v1/enterprises",
            json!({"id": "E-NUL", "name": "N\u{0}", "province_code": "440000", "city_code": "440100", "storage_capacity_kg": 1.0}),
        ),
    ] {
        let (status, v) = admin.post_admin(path, &body).await.unwrap();
        assert_eq!(status, 422, "{path} {body}: {v}");
    }
    let (status, v) = get_json(&as_("cst1.forged.token"), "/v1/enterprises")
        .await
        .unwrap_err();
    assert_eq!((status, v["code"].as_str()), (401, Some("invalid_token")));
    assert_eq!(
        get_json(&NodeClient::new(node.url(), None), "/v1/enterprises")
            .await
            .unwrap_err()
            .0,
        401
    );

    // Revocation takes effect at once, and both token events are in the log.
    admin_cli_ok(&["token", "revoke", &province_id, "--node", &node.url()]);
    assert_eq!(get_json(&p, "/v1/enterprises").await.unwrap_err().0, 401);
    let events = admin
        .events(1, None, &["TokenIssued", "TokenRevoked"])
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        7,
        "5 issued, 1 issued with a ttl_s of 600.0, 1 revoked"
    );
    assert!(
        events
            .iter()
            .all(|e| !e["payload"].to_string().contains("cst1.")),
        "the log never holds a token"
    );

    // Every read is in the audit trail, with its rows.
    let pool = models.pool().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rows: Vec<(String, i32, i64, bool)> = loop {
        let rows = sqlx::query_as(
            "SELECT uri, status, rows, cached FROM custodian_meta.audit WHERE token_id = $1 \
             AND uri = '/v1/enterprises' ORDER BY id",
        )
        .bind(&province_id)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        if rows.len() >= 2 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rows.len() >= 2, "{rows:?}");
    assert_eq!((rows[0].1, rows[0].2), (200, 2), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.3),
        "the cached answer is audited too: {rows:?}"
    );
    let out_of_scope: i64 =
        sqlx::query_scalar("SELECT count(*) FROM custodian_meta.audit WHERE status = 404")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(out_of_scope >= 5, "refused reads are audited as well");
    let unauthorized: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT token_id, tier, status FROM custodian_meta.audit WHERE status = 401 ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        unauthorized.len() >= 3
            && unauthorized
                .iter()
                .all(|r| (r.0.as_str(), r.1.as_str()) == ("-", "none")),
        "forged, missing and revoked tokens are audited under no identity: {unauthorized:?}"
    );
    pool.close().await;
    node.stop().await.unwrap();
    models.drop_all().await;
}

/// Reads server-sent events from `resp` until `done` says so (or 15 s pass); answers the `data` objects.
async fn sse_until(mut resp: reqwest::Response, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut buf = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(&seen) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("the feed went quiet")
            .unwrap()
            .expect("the feed ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    seen.push(serde_json::from_str(d.trim()).unwrap());
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anomaly_feed_carries_only_the_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (node, admin) = start_node(dir.path(), |_| {}).await;
    let mut keys = TerminalKeys::default();
    for (e, province, t) in [("E-A", "440000", "T-A"), ("E-C", "320000", "T-C")] {
        admin
            .register(
                "/v1/enterprises",
                &json!({"id": e, "name": e, "province_code": province,
                        "city_code": format!("{}0100", &province[..2]), "storage_capacity_kg": 100000.0}),
            )
            .await
            .unwrap();
        let key = terminal_key(t, 7);
        let mut body = terminal_body(t, 0, Some(&key.public_key_pem()));
        body["enterprise_id"] = json!(e);
        admin.register("/v1/terminals", &body).await.unwrap();
        keys.0.insert(t.to_owned(), std::sync::Arc::new(key));
    }
    let (status, v) = admin
        .post_admin(
            "/v1/admin/tokens",
            &json!({"tier": "province", "scope": "440000"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let token = v["token"].as_str().unwrap().to_owned();
    let open = |last: Option<String>| {
        let (url, token) = (format!("{}/v1/anomalies/stream", node.url()), token.clone());
        async move {
            let mut req = reqwest::Client::new().get(url).bearer_auth(token);
            if let Some(l) = last {
                req = req.header("last-event-id", l);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp
        }
    };
    let feed = open(None).await;
    // Out of scope first, then in scope: if the first leaked, it would arrive before the second.
    keys.upload(&admin, "T-C", weighings("T-C", "T-C-C0"))
        .await
        .unwrap();
    keys.upload(&admin, "T-A", weighings("T-A", "T-A-C0"))
        .await
        .unwrap();
    let seen = sse_until(feed, |s| s.iter().any(|d| d["enterprise_id"] == "E-A")).await;
    assert!(
        seen.iter().all(|d| d["province_code"] == "440000"),
        "{seen:?}"
    );
    let a = seen.iter().find(|d| d["enterprise_id"] == "E-A").unwrap();
    assert_eq!(a["anomaly"]["kind"], "weight_fluctuation");
    // Resuming after an earlier event replays what came since.
    let seq = a["event_seq"].as_u64().unwrap();
    let again = sse_until(open(Some((seq - 1).to_string())).await, |s| !s.is_empty()).await;
    assert_eq!(again[0]["event_seq"], seq);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_an_administrator_causes_names_the_token() {
    // Proves: writes record the id of the token that caused them (outside the fingerprint, so the same
    // registration by another token stays one fact); what terminals send and what the platform derives
    // names none.
    let dir = tempfile::tempdir().unwrap();
    let (node, bootstrap) = start_node(dir.path(), |_| {}).await;
    let (status, v) = bootstrap
        .post_admin("/v1/admin/tokens", &json!({"tier": "admin"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let staff_id = v["id"].as_str().unwrap().to_owned();
    let staff = NodeClient::new(node.url(), Some(v["token"].as_str().unwrap().to_owned()));
    let enterprise = json!({"id": "E-A", "name": "甲", "province_code": "440000",
                            "city_code": "440100", "storage_capacity_kg": 100000.0});
    staff
        .register("/v1/enterprises", &enterprise)
        .await
        .unwrap();
    let again = bootstrap
        .register("/v1/enterprises", &enterprise)
        .await
        .unwrap();
    assert_eq!(again["status"], "unchanged", "one fact, whoever repeats it");
    let key = terminal_key("T-A1", 7);
    let mut body = terminal_body("T-A1", 0, Some(&key.public_key_pem()));
    body["enterprise_id"] = json!("E-A");
    staff.register("/v1/terminals", &body).await.unwrap();
    let mut keys = TerminalKeys::default();
    keys.0.insert("T-A1".to_owned(), std::sync::Arc::new(key));
    let (status, v) = staff
        .post_admin(
            "/v1/notes",
            &json!({"enterprise_id": "E-A", "author": "检查员", "text": "台账齐全"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, v) = bootstrap
        .post_admin("/v1/admin/data-keys/E-A/rotate", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, v) = bootstrap
        .post_admin("/v1/admin/data-keys/NOPE/rotate", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("unknown_scope")),
        "{v}"
    );
    keys.upload(&bootstrap, "T-A1", weighings("T-A1", "T-A1-C0"))
        .await
        .unwrap();
    let events = bootstrap.events(1, None, &[]).await.unwrap();
    let cause = |t: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == t)
            .map(|e| e["caused_by"].clone())
            .collect()
    };
    assert_eq!(cause("TokenIssued"), [json!("bootstrap")]);
    assert_eq!(cause("EnterpriseRegistered"), [json!(staff_id)]);
    assert_eq!(cause("TerminalRegistered"), [json!(staff_id)]);
    assert_eq!(cause("NoteFiled"), [json!(staff_id)]);
    assert!(cause("DataKeyIssued").contains(&json!("bootstrap")));
    assert_eq!(cause("ReadingRecorded"), [Value::Null, Value::Null]);
    assert_eq!(cause("UploadSigned"), [Value::Null]);
    node.stop().await.unwrap();
}
