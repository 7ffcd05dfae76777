//! The dashboard over HTTP (no browser yet): sign-in into an HttpOnly, SameSite=Strict session cookie,
//! Origin checks on forms, the security headers, the province grid and a province's page in exactly the
//! API's scopes (another province's page answers like one that does not exist), the language switch
//! without an open redirect, the embedded vendored assets, and a revoked token signing the browser out.
//! The fixture's readings are dated 2026-11-20 (`scopes::weighings`) while the pages read the wall
//! clock: what is said here about "the last 7 days" holds on any day after 2026-11-26.

use std::time::Duration;

use custodian_tests::scopes::{
    issue_token, open_cross_province_manifest, register_enterprises, signing_terminal, weighings,
};
use custodian_tests::*;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, HeaderMap, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The dashboard's alarm feed as an EventSource reads it.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(b: &Browser, last_event_id: Option<u64>) -> Feed {
        let mut req = b
            .http
            .get(format!("{}/ui/alarms/feed", b.base))
            .header(COOKIE, b.cookies.join("; "));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Feed {
            response,
            buffer: String::new(),
        }
    }

    /// The next `anomaly` event (id, data), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<(u64, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("", None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = if v.trim() == "anomaly" { "anomaly" } else { "" };
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = serde_json::from_str::<Value>(v.trim()).ok();
                    }
                }
                if event == "anomaly"
                    && let (Some(id), Some(data)) = (id, data)
                {
                    return Some((id, data));
                }
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<String>,
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Browser {
    fn new(base: String) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base,
            cookies: Vec::new(),
        }
    }

    fn origin(&self) -> String {
        self.base.clone()
    }

    async fn get(&self, path: &str) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            req = req.header(COOKIE, self.cookies.join("; "));
        }
        Page::of(req.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        self.post_with(path, form, origin, &[]).await
    }

    async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Page {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if !self.cookies.is_empty() {
            req = req.header(COOKIE, self.cookies.join("; "));
        }
        Page::of(req.send().await.unwrap()).await
    }

    /// Keeps the cookies a response sets (name=value), dropping those it clears.
    /// A browser at `base` signed in with `token` from `origin`, keeping its session cookie.
    async fn signed_in(base: String, token: &str, origin: &str) -> Browser {
        let mut b = Browser::new(base);
        let p = b
            .post("/ui/sign-in", &[("token", token)], Some(origin))
            .await;
        b.keep(&p);
        b
    }

    fn keep(&mut self, page: &Page) {
        for c in page.headers.get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let pair = c.split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|k| !k.starts_with(&format!("{name}=")));
            if !c.contains("Max-Age=0") {
                self.cookies.push(pair);
            }
        }
    }
}

impl Page {
    async fn of(r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    fn location(&self) -> &str {
        self.headers.get(LOCATION).unwrap().to_str().unwrap()
    }

    fn title(&self) -> &str {
        let start = self.body.find("<title>").unwrap() + 7;
        &self.body[start..start + self.body[start..].find("</title>").unwrap()]
    }

    fn assert_secure(&self) {
        let csp = self
            .headers
            .get(CONTENT_SECURITY_POLICY)
            .expect("a Content-Security-Policy")
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert_eq!(self.headers["x-content-type-options"], "nosniff");
        // Nothing from another origin, no inline script or style.
        for bad in [
            "src=\"http",
            "href=\"http",
            "<script>",
            "style=\"",
            "<style",
        ] {
            assert!(!self.body.contains(bad), "{bad} in the page");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_scopes_language_and_assets() {
    let dir = tempfile::tempdir().unwrap();
    let models = ReadModels::new("dashboard");
    let (node, admin) = start_node(dir.path(), |c| models.enable(c)).await;
    register_enterprises(&admin).await;
    let mut keys = TerminalKeys::default();
    for (t, e) in [("T-A", "E-A"), ("T-C", "E-C")] {
        signing_terminal(&admin, &mut keys, t, e).await;
    }
    wait_projected(&admin, Duration::from_secs(60)).await;
    let (province, province_id) = issue_token(&admin, "province", Some("440000")).await;
    let (national, _) = issue_token(&admin, "national", None).await;
    let (enterprise, _) = issue_token(&admin, "enterprise", Some("E-C")).await;

    let mut b = Browser::new(node.url());
    // Not signed in: every page sends the browser to sign in.
    let p = b.get("/ui").await;
    assert_eq!((p.status, p.location()), (303, "/ui/sign-in"));
    p.assert_secure();
    let p = b.get("/ui/provinces/440000").await;
    assert_eq!((p.status, p.location()), (303, "/ui/sign-in"));
    let p = b.get("/ui/sign-in").await;
    assert_eq!(p.status, 200);
    p.assert_secure();
    assert!(p.body.contains("<html lang=\"zh-CN\">"));
    assert!(p.body.contains("<label for=\"token\">"));
    assert!(
        p.body.contains("lang=\"en\">English</a>"),
        "the switch offers English, in English"
    );
    assert_eq!(p.headers["referrer-policy"], "same-origin");

    // Forms from anywhere but this site are refused, and change nothing.
    let origin = b.origin();
    for bad in [None, Some("http://evil.example"), Some("null")] {
        let p = b.post("/ui/sign-in", &[("token", &province)], bad).await;
        assert_eq!(p.status, 403, "Origin {bad:?}");
        assert!(p.headers.get(SET_COOKIE).is_none());
    }
    // A wrong token: 401, said in words, no cookie.
    for wrong in ["cst1.forged.token", "", "a;b=c", &format!("{province}x")] {
        let p = b
            .post("/ui/sign-in", &[("token", wrong)], Some(&origin))
            .await;
        assert_eq!(p.status, 401, "{wrong:?}");
        assert!(p.body.contains("role=\"alert\""));
        assert!(p.headers.get(SET_COOKIE).is_none());
    }
    // The province token: a session cookie, HttpOnly and SameSite=Strict, for /ui only.
    let p = b
        .post("/ui/sign-in", &[("token", &province)], Some(&origin))
        .await;
    assert_eq!((p.status, p.location()), (303, "/ui"));
    let set = p.headers[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in [
        "custodian_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/ui",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "a session cookie: {set}"
    );
    b.keep(&p);

    // The overview: its own province only.
    let p = b.get("/ui").await;
    assert_eq!(p.status, 200, "{}", p.body);
    p.assert_secure();
    assert!(p.body.contains("广东省"));
    assert!(!p.body.contains("江苏省"), "another province's tile");
    assert_eq!(p.body.matches("class=\"tile ").count(), 1);
    assert!(
        p.body.contains("重量异常波动"),
        "the open alarm's kind, in words"
    );
    assert!(
        p.body.contains("有告警"),
        "alarm state said in words, not colour alone"
    );
    // Tables are named by the heading above them, not by a caption repeating it.
    assert!(
        !p.body.contains("<caption>"),
        "a caption repeating its heading"
    );
    assert!(
        p.body
            .contains("<table class=\"figures\" aria-labelledby=\"summary-h\">")
    );
    assert!(p.body.contains("aria-label=\"位置\""), "a breadcrumb");
    // Its province's page lists its enterprises; another province's answers like a page that does not
    // exist.
    let p = b.get("/ui/provinces/440000").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("E-A") && p.body.contains("E-B") && !p.body.contains("E-C"));
    assert!(p.body.contains("aria-current=\"page\""));
    let other = b.get("/ui/provinces/320000").await;
    let absent = b.get("/ui/provinces/999999").await;
    assert_eq!((other.status, absent.status), (404, 404));
    assert_eq!(other.title(), absent.title());
    assert!(!other.body.contains("E-C"));

    // Drill-down by links: province → enterprise → container, with the custody chain's fingerprints as
    // the log has them; out of scope, each answers like a page that does not exist.
    let p = b.get("/ui/provinces/440000").await;
    assert!(p.body.contains("href=\"/ui/enterprises/E-A\""));
    let p = b.get("/ui/enterprises/E-A").await;
    assert_eq!(p.status, 200, "{}", p.body);
    p.assert_secure();
    assert!(p.body.contains("E-A 危废处置"));
    assert!(p.body.contains("href=\"/ui/terminals/T-A\""));
    assert!(
        p.body.contains("href=\"/ui/containers/T-A-C0\""),
        "in storage: {}",
        p.body
    );
    assert!(p.body.contains("60.0"), "its last weight in kg");
    // The KPIs are the last 7 days by the page's clock: the readings' day (2026-11-20) is not among them.
    assert!(p.body.contains("id=\"kpis-range\""));
    assert!(
        !p.body.contains("datetime=\"2026-11-20\""),
        "a KPI day outside the last 7 days"
    );
    assert!(
        p.body.contains("href=\"/ui/provinces/440000\""),
        "breadcrumb back up"
    );
    let p = b.get("/ui/containers/T-A-C0").await;
    assert_eq!(p.status, 200, "{}", p.body);
    let logged = admin.events(1, None, &["ReadingRecorded"]).await.unwrap();
    let fingerprints: Vec<&str> = logged
        .iter()
        .filter(|e| e["stream"] == "terminal:T-A")
        .map(|e| e["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fingerprints.len(), 2);
    for f in &fingerprints {
        assert!(
            p.body.contains(f),
            "the custody chain shows fingerprint {f}"
        );
    }
    for path in [
        "/ui/enterprises/E-C",
        "/ui/enterprises/E-Z",
        "/ui/containers/T-C-C0",
        "/ui/containers/nope",
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, 404, "{path}");
        assert_eq!(p.title(), absent.title(), "{path}");
    }

    // A terminal's weights: the chart's data and its table alternative, from InfluxDB through the
    // API's own scoped query, in China Standard Time.
    let p = b.get("/ui/terminals/T-A?days=1&until=2026-11-20").await;
    assert_eq!(p.status, 200, "{}", p.body);
    p.assert_secure();
    assert!(p.body.contains("id=\"weights-chart\"") && p.body.contains("role=\"img\""));
    assert!(
        p.body
            .contains("/ui/assets/vendor/uPlot-1.6.32.iife.min.js")
    );
    let data_start = p.body.find("id=\"weights-data\">").unwrap() + "id=\"weights-data\">".len();
    let data: Value = serde_json::from_str(
        &p.body[data_start..data_start + p.body[data_start..].find("</script>").unwrap()],
    )
    .unwrap();
    assert_eq!(data["v"], json!([100.0, 60.0]), "{data}");
    // The chart's time axis is the range asked for (seconds), whatever the points.
    assert_eq!(
        (data["from"].as_f64(), data["to"].as_f64()),
        (Some(1_795_104_000.0), Some(1_795_190_400.0)),
        "2026-11-20 in China Standard Time"
    );
    // b reads zh-CN here: China Standard Time, written for the locale.
    assert!(
        p.body
            .contains("<td>2026年11月20日 16:00:01</td><td>100.0</td>"),
        "CST table row"
    );
    assert!(
        p.body
            .contains("<td>2026年11月20日 16:00:02</td><td>60.0</td>")
    );
    // No range asked for: the readings are older than the default 7 days, so the page opens on the 7
    // days that end on the day of the last one, and says so.
    let p = b.get("/ui/terminals/T-A").await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("id=\"range-moved\""), "{}", p.body);
    // Hourly minima and maxima beyond a day: both at the hour's start.
    assert!(
        p.body
            .contains("<td>2026年11月20日 16:00:00</td><td>60.0</td>")
    );
    assert!(
        p.body
            .contains("href=\"/ui/terminals/T-A?days=7&#38;until=2026-11-20\"")
    );
    // A range without readings says when the last one was and links to a range that shows it.
    let p = b.get("/ui/terminals/T-A?days=1&until=2026-11-25").await;
    assert!(p.body.contains("这段时间没有读数"), "{}", p.body);
    assert!(
        p.body.contains("最近一次读数在 2026年11月20日 16:00:02（"),
        "{}",
        p.body
    );
    assert!(
        p.body
            .contains("href=\"/ui/terminals/T-A?days=1&#38;until=2026-11-20\"")
    );
    assert!(
        !p.body.contains("id=\"range-moved\""),
        "a range asked for is kept"
    );
    assert_eq!(b.get("/ui/terminals/T-C").await.status, 404);
    assert_eq!(b.get("/ui/terminals/T-Z").await.status, 404);

    // Language: switched by a cookie, back to the page it came from; never to another site.
    let p = b.get("/ui/lang?to=en&back=/ui/provinces/440000").await;
    assert_eq!((p.status, p.location()), (303, "/ui/provinces/440000"));
    b.keep(&p);
    let p = b.get("/ui/provinces/440000").await;
    assert!(p.body.contains("<html lang=\"en\">"));
    assert!(p.body.contains("Guangdong") && p.body.contains("Enterprises in this province"));
    let p = b.get("/ui/terminals/T-A?days=1&until=2026-11-20").await;
    assert!(
        p.body
            .contains("<td>20 Nov 2026, 16:00:01</td><td>100.0</td>"),
        "English dates"
    );
    // The switch comes back to the page whole, its query included.
    let back = "/ui/terminals/T-A?days=1&until=2026-11-20";
    let link = format!("/ui/lang?to=zh-CN&amp;back={}", urlencode(back));
    assert!(p.body.contains(&link), "{link} not in the page");
    let p = b.get(&link.replace("&amp;", "&")).await;
    assert_eq!((p.status, p.location()), (303, back));
    let p = b.get(&format!("/ui/search?q={}", urlencode("危废"))).await;
    let link = format!(
        "/ui/lang?to=zh-CN&amp;back={}",
        urlencode(&format!("/ui/search?q={}", urlencode("危废")))
    );
    assert!(p.body.contains(&link), "{link} not in the page");
    let p = b.get(&link.replace("&amp;", "&")).await;
    assert_eq!(p.location(), format!("/ui/search?q={}", urlencode("危废")));
    for evil in ["https://evil.example", "//evil.example", "/ui\\..\\x"] {
        let p = b
            .get(&format!("/ui/lang?to=en&back={}", urlencode(evil)))
            .await;
        assert_eq!(p.location(), "/ui", "{evil}");
    }

    // The vendored files come from the node itself, byte for byte as listed.
    let js = b.get("/ui/assets/vendor/htmx-2.0.11.min.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        hex::encode(Sha256::digest(js.body.as_bytes())),
        "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
    );
    assert_eq!(b.get("/ui/assets/../Cargo.toml").await.status, 404);
    assert_eq!(b.get("/ui/assets/vendor/nope.js").await.status, 404);

    // The national token sees every province; an enterprise's token its own province only.
    let mut n = Browser::signed_in(node.url(), &national, &origin).await;
    let p = n.get("/ui").await;
    assert_eq!(p.body.matches("class=\"tile ").count(), 31);
    assert!(p.body.contains("江苏省") && p.body.contains("广东省"));
    assert_eq!(n.get("/ui/provinces/320000").await.status, 200);
    let e = Browser::signed_in(node.url(), &enterprise, &origin).await;
    let p = e.get("/ui").await;
    assert_eq!(p.body.matches("class=\"tile ").count(), 1);
    assert!(p.body.contains("江苏省"));
    assert_eq!(e.get("/ui/provinces/440000").await.status, 404);
    let p = e.get("/ui/provinces/320000").await;
    assert!(p.body.contains("E-C") && !p.body.contains("E-A"));

    // Alarms: acknowledge then resolve, shown with who and when, surviving reload, idempotent.
    let p = n.get("/ui/alarms").await;
    assert_eq!(p.status, 200);
    p.assert_secure();
    let rows = alarm_rows(&p.body);
    assert_eq!(
        rows.len(),
        2,
        "one weight_fluctuation per enterprise with a terminal"
    );
    let (a_alarm, c_alarm) = (
        rows.iter().find(|(_, e)| e == "E-A").unwrap().0.clone(),
        rows.iter().find(|(_, e)| e == "E-C").unwrap().0.clone(),
    );
    assert!(p.body.contains("重量异常波动") && p.body.contains("未处理"));
    // Descriptions in the page's language, from the typed fields: no codes, no raw subjects.
    let row = alarm_row(&p.body, &a_alarm);
    assert!(
        row.contains(
            "容器 T-A-C0 的重量由 100.0 千克变为 60.0 千克（变化 40.00%），称重终端 T-A。"
        ),
        "{row}"
    );
    for code in ["weight_fluctuation", "(medium)", "container:", " kg"] {
        assert!(!row.contains(code), "{code} in {row}");
    }
    let handled = || async {
        admin
            .events(1, None, &["AnomalyHandled"])
            .await
            .unwrap()
            .len()
    };
    let path = format!("/ui/alarms/{a_alarm}");
    let ack = [("action", "acknowledge"), ("note", "现场已核查")];
    assert_eq!(n.post(&path, &ack, None).await.status, 403);
    assert_eq!(
        n.post(&path, &ack, Some("http://evil.example"))
            .await
            .status,
        403
    );
    assert_eq!(handled().await, 0, "refused forms change nothing");
    let p = n.post(&path, &ack, Some(&origin)).await;
    assert_eq!(
        (p.status, p.location()),
        (303, format!("/ui/alarms#a-{a_alarm}").as_str())
    );
    let p = n.get("/ui/alarms").await;
    let row = alarm_row(&p.body, &a_alarm);
    assert!(row.contains("已确认"), "{row}");
    assert!(
        row.contains(" · 20") && row.contains("年"),
        "who and when (China Standard Time): {row}"
    );
    assert!(
        !row.contains("value=\"acknowledge\""),
        "no second acknowledge offered"
    );
    // Again: nothing new.
    assert_eq!(n.post(&path, &ack, Some(&origin)).await.status, 303);
    assert_eq!(handled().await, 1);
    // Resolving needs a note.
    let p = n
        .post(
            &path,
            &[("action", "resolve"), ("note", "  ")],
            Some(&origin),
        )
        .await;
    assert_eq!(p.status, 422);
    assert!(p.body.contains("role=\"alert\""));
    assert_eq!(handled().await, 1);
    let resolve = [("action", "resolve"), ("note", "已转运处置")];
    assert_eq!(n.post(&path, &resolve, Some(&origin)).await.status, 303);
    let p = n.get("/ui/alarms").await;
    assert!(
        !p.body.contains(&format!("id=\"a-{a_alarm}\"")),
        "a resolved alarm leaves the open list"
    );
    let p = n.get("/ui/alarms?all=1").await;
    assert!(alarm_row(&p.body, &a_alarm).contains("已解决"));
    assert_eq!(n.post(&path, &resolve, Some(&origin)).await.status, 303);
    assert_eq!(
        handled().await,
        2,
        "resolved is final: resolving again changes nothing"
    );
    // From htmx (the list's forms carry hx-post): the alarm's row alone, as it is now, to swap in place.
    let p = n
        .post_with(
            &format!("/ui/alarms/{c_alarm}"),
            &ack,
            Some(&origin),
            &[("hx-request", "true")],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(
        p.body
            .trim_start()
            .starts_with(&format!("<tr id=\"a-{c_alarm}\"")),
        "{}",
        p.body
    );
    assert!(p.body.contains("已确认") && !p.body.contains("<html"));
    assert_eq!(handled().await, 3);
    // Out of scope: like an alarm that does not exist.
    let p = b
        .post(&format!("/ui/alarms/{c_alarm}"), &ack, Some(&origin))
        .await;
    assert_eq!(p.status, 404);
    assert_eq!(handled().await, 3);
    let p = b.get("/ui/alarms?all=1").await;
    assert!(p.body.contains(&a_alarm) && !p.body.contains(&c_alarm));

    // The live feed: an alarm caused through the ingest API reaches the province's feed; E-C's never
    // does; after a dropped connection, Last-Event-ID replays what was missed.
    let p = b.get("/ui/alarms").await;
    assert!(p.body.contains("aria-live=\"polite\"") && p.body.contains("id=\"kind-labels\""));
    assert_eq!(
        Browser::new(node.url()).get("/ui/alarms/feed").await.status,
        401,
        "no feed without a session"
    );
    let mut feed = Feed::open(&b, None).await;
    keys.upload(&admin, "T-C", weighings("T-C", "T-C-C0", 3))
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    keys.upload(&admin, "T-A", weighings("T-A", "T-A-C0", 3))
        .await
        .unwrap();
    let (first_id, first) = feed
        .next(Duration::from_secs(10))
        .await
        .expect("an alarm in the feed");
    let latency = sent.elapsed();
    eprintln!("ingest → alarm in the dashboard's feed: {latency:?}");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    assert_eq!(first["enterprise_id"], "E-A", "{first}");
    // b reads English by now: the feed's text is the description in English, from the typed fields.
    let text = first["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Container T-A-C0 went from ")
            && text.ends_with(", weighed by terminal T-A."),
        "{first}"
    );
    for code in [
        "weight_fluctuation",
        "container:",
        "(high)",
        "(medium)",
        "终端",
    ] {
        assert!(!text.contains(code), "{code} in {text}");
    }
    let mut seen = vec![first_id];
    while let Some((id, a)) = feed.next(Duration::from_millis(1500)).await {
        assert_eq!(a["enterprise_id"], "E-A", "out of scope in the feed: {a}");
        seen.push(id);
    }
    drop(feed);
    // Missed while disconnected: replayed after the last id seen.
    keys.upload(&admin, "T-A", weighings("T-A", "T-A-C0", 5))
        .await
        .unwrap();
    let mut feed = Feed::open(&b, Some(*seen.last().unwrap())).await;
    let (id, a) = feed
        .next(Duration::from_secs(10))
        .await
        .expect("the missed alarm, replayed");
    assert!(id > *seen.last().unwrap());
    assert_eq!(a["enterprise_id"], "E-A");
    drop(feed);

    // A manifest between the two provinces: visible from either side, each party linked only if in scope.
    open_cross_province_manifest(&admin).await;
    wait_projected(&admin, Duration::from_secs(60)).await;
    let p = n.get("/ui/manifests/M-1").await;
    assert_eq!(p.status, 200, "{}", p.body);
    p.assert_secure();
    assert!(p.body.contains("已开具") && p.body.contains("100.0"));
    assert!(p.body.contains("href=\"/ui/containers/T-A-C0\""));
    assert!(p.body.contains("href=\"/ui/enterprises/E-C\""));
    let p = b.get("/ui/manifests/M-1").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("href=\"/ui/enterprises/E-A\""));
    assert!(
        !p.body.contains("href=\"/ui/enterprises/E-C\""),
        "the other party is not in scope"
    );
    assert_eq!(
        e.get("/ui/manifests/M-1").await.status,
        200,
        "the receiver's side"
    );
    assert_eq!(n.get("/ui/manifests/M-9").await.status, 404);

    // Search: full text within the scope, each hit a link.
    let q = urlencode("重量异常波动");
    let p = n.get(&format!("/ui/search?q={q}")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    p.assert_secure();
    assert!(p.body.contains("role=\"search\""));
    assert!(p.body.contains("href=\"/ui/alarms?all=1#a-"));
    assert!(p.body.contains("E-A") && p.body.contains("E-C"));
    let p = b.get(&format!("/ui/search?q={q}")).await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("E-A") && !p.body.contains("E-C"),
        "out of scope in the hits"
    );
    let p = b.get("/ui/search").await;
    assert_eq!(p.status, 200);
    assert!(!p.body.contains("class=\"hits\""));

    // Every dashboard request is in the audit trail beside the API's reads: the session's token, the
    // page, its status and how many rows it showed; requests without a session under no identity; the
    // static assets not at all.
    let pool = models.pool().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audited: Vec<(String, String, i32, i64)> = loop {
        let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
            "SELECT method, uri, status, rows FROM custodian_meta.audit \
             WHERE token_id = $1 AND uri LIKE '/ui%' ORDER BY id",
        )
        .bind(&province_id)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        if rows.iter().any(|r| r.1 == "/ui/search") || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |uri: &str, status: i32| {
        audited
            .iter()
            .find(|r| r.1 == uri && r.2 == status)
            .unwrap_or_else(|| panic!("{uri} {status} not audited: {audited:?}"))
    };
    assert_eq!(find("/ui", 200).0, "GET");
    find("/ui/provinces/320000", 404);
    assert_eq!(find("/ui/provinces/440000", 200).3, 2, "E-A and E-B shown");
    assert!(
        find(&format!("/ui/search?q={q}"), 200).3 >= 1,
        "the hits in scope are counted"
    );
    assert!(
        audited.iter().all(|r| !r.1.starts_with("/ui/assets/")),
        "assets are not audited: {audited:?}"
    );
    let anonymous: Vec<(String, i32)> = sqlx::query_as(
        "SELECT uri, status FROM custodian_meta.audit WHERE token_id = '-' AND tier = 'none' \
           AND uri LIKE '/ui%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        anonymous.contains(&("/ui".to_owned(), 303))
            && anonymous.contains(&("/ui/sign-in".to_owned(), 401)),
        "no session, and failed sign-ins: {anonymous:?}"
    );
    pool.close().await;

    // Signing out needs this site's Origin too, and clears the cookie.
    assert_eq!(n.post("/ui/sign-out", &[], None).await.status, 403);
    let p = n.post("/ui/sign-out", &[], Some(&origin)).await;
    assert_eq!((p.status, p.location()), (303, "/ui/sign-in"));
    n.keep(&p);
    assert_eq!(n.get("/ui").await.status, 303);

    // A revoked token signs the browser out on its next page.
    let (status, v) = admin
        .post_admin(
            &format!("/v1/admin/tokens/{province_id}/revoke"),
            &json!({}),
        )
        .await
        .unwrap();
    assert!(status == 200 || status == 204, "{status} {v}");
    let p = b.get("/ui").await;
    assert_eq!((p.status, p.location()), (303, "/ui/sign-in"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// (alarm id, enterprise) of every row of the alarms table.
fn alarm_rows(body: &str) -> Vec<(String, String)> {
    body.split("<tr id=\"a-")
        .skip(1)
        .map(|row| {
            let id = row[..row.find('"').unwrap()].to_owned();
            let enterprise = if row.contains("<td>E-A</td>") {
                "E-A"
            } else if row.contains("<td>E-C</td>") {
                "E-C"
            } else {
                "?"
            };
            (id, enterprise.to_owned())
        })
        .collect()
}

fn alarm_row<'a>(body: &'a str, id: &str) -> &'a str {
    let start = body
        .find(&format!("<tr id=\"a-{id}\""))
        .unwrap_or_else(|| panic!("no row for {id}"));
    let rest = &body[start..];
    &rest[..rest.find("</tr>").unwrap()]
}

/// Behind TLS (`dashboard.secure_cookies`), every cookie the dashboard sets is `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _admin) = start_node(dir.path(), |c| c.dashboard.secure_cookies = true).await;
    let b = Browser::new(node.url());
    let origin = b.origin();
    let p = b
        .post("/ui/sign-in", &[("token", ADMIN_TOKEN)], Some(&origin))
        .await;
    assert_eq!((p.status, p.location()), (303, "/ui"));
    let p2 = b.post("/ui/sign-out", &[], Some(&origin)).await;
    let p3 = b.get("/ui/lang?to=en&back=/ui").await;
    for page in [&p, &p2, &p3] {
        let set = page.headers[SET_COOKIE].to_str().unwrap();
        assert!(set.ends_with("; Secure"), "{set}");
    }
    node.stop().await.unwrap();
}
