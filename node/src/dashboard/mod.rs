//! The regulators' dashboard in the browser: server-rendered HTML (askama templates in
//! `node/templates/dashboard/`), served by the node from its binary under `/ui`, with its own styles and
//! the vendored htmx and uPlot (`assets/`), nothing from any other origin.
//!
//! - **Sign-in** with a regulator token (`/ui/sign-in`): verified exactly as the API verifies a bearer
//!   token, then kept in the session cookie `custodian_session` (HttpOnly, SameSite=Strict, Path=/ui, no
//!   expiry: gone with the browser session; `Secure` with `dashboard.secure_cookies`). Every page
//!   resolves the cookie the same way (the [`Session`] extractor), so a revoked or expired token signs
//!   the browser out on its next page.
//! - **Scopes exactly as the API**: every page reads through the query layer (`crate::query`, the very
//!   functions the API reads with) in the caller's scope, and a page outside it answers 404 like a page
//!   that does not exist.
//! - **State-changing forms** (sign-in, sign-out, acknowledge, resolve) check `Origin` against the
//!   request's host: anything else is refused 403 and changes nothing.
//! - **Audit**: every request but the assets' is in the audit trail beside the API's reads ([`audited`]).
//! - **Headers** on every `/ui` response: `Content-Security-Policy: default-src 'self'` (plus
//!   `frame-ancestors 'none'`, `form-action 'self'`, `base-uri 'none'`), `X-Content-Type-Options:
//!   nosniff`, `Referrer-Policy: same-origin` (not `no-referrer`, with which browsers send `Origin: null`
//!   on form posts and the Origin check could not pass).
//! - **Languages**: zh-CN (default) and English, switched by `/ui/lang?to=en&back=/ui/...` (a cookie);
//!   `lang` set on every page.
//!
//! - **Alarm descriptions** are written in the page's language from the anomaly's typed fields
//!   ([`describe`]), in the table and in the live feed alike.
//! - **Time**: "today" and "the last 7 days" are China Standard Time days by the node's clock
//!   (`AppState::clock`).
//!
//! Pages: the overview, a province, an enterprise, a container's custody chain, a terminal's chart, a
//! manifest, search, the alarms (with acknowledge/resolve and the live feed). See `docs/dashboard.md`.

pub mod assets;
pub mod describe;
pub mod i18n;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::query::postgres as db;
use crate::state::{AppState, Reads};
use crate::tokens::{Caller, Scope, Tier};
use i18n::{Lang, PROVINCES, province_name};

/// The session cookie holding the signed-in token.
pub const SESSION_COOKIE: &str = "custodian_session";
/// The language cookie.
pub const LANG_COOKIE: &str = "custodian_lang";

/// Every `/ui` response carries these.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The dashboard's routes (merged into the node's router); every request but the assets' goes through
/// [`audited`].
pub fn routes(st: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/lang", get(switch_language))
        .route("/ui/provinces/{code}", get(province))
        .route("/ui/enterprises/{id}", get(enterprise))
        .route("/ui/containers/{id}", get(container))
        .route("/ui/terminals/{id}", get(terminal))
        .route("/ui/manifests/{id}", get(manifest))
        .route("/ui/search", get(search))
        .route("/ui/alarms", get(alarms))
        .route("/ui/alarms/{id}", post(handle_alarm))
        .route("/ui/alarms/feed", get(alarm_feed))
        .layer(axum::middleware::from_fn_with_state(st, audited))
        .route("/ui/assets/{*file}", get(assets::serve))
}

/// The caller a request's session cookie names (`None`: no session, or one whose token is no longer
/// valid), resolved once by [`audited`] and read by [`Session`].
#[derive(Clone)]
struct SignedIn(Option<Caller>);

/// A signed-in page request: its language, who is asking (the session's token, verified exactly as the
/// API verifies a bearer token) and the PostgreSQL read model's pool. Without a valid session the request
/// is sent to the sign-in page; with the read model down it answers the 503 page.
struct Session {
    lang: Lang,
    caller: Caller,
    pool: sqlx::PgPool,
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let st = &st.reads;
        let lang = lang_of(&parts.headers);
        let caller = match parts.extensions.get::<SignedIn>() {
            Some(SignedIn(c)) => c.clone(),
            None => signed_in(st, &parts.headers),
        };
        let Some(caller) = caller else {
            return Err(redirect("/ui/sign-in"));
        };
        match db::pool(st) {
            Some(pool) => Ok(Session { lang, caller, pool }),
            None => Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                Some(&caller),
            )),
        }
    }
}

impl Session {
    /// The caller's scope, which every read of a page is narrowed to.
    fn scope(&self) -> &Scope {
        &self.caller.scope
    }

    fn error(&self, status: StatusCode) -> Response {
        error_page(status, self.lang, Some(&self.caller))
    }

    /// Out of scope answers exactly like a page that does not exist.
    fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND)
    }

    fn unavailable(&self) -> Response {
        self.error(StatusCode::SERVICE_UNAVAILABLE)
    }

    fn chrome(&self, title: &str, back: &str) -> Chrome {
        chrome(self.lang, title, back, Some(&self.caller))
    }
}

/// How many rows a page showed, for the audit trail (a page that does not say counts as one).
#[derive(Clone, Copy)]
struct AuditRows(i64);

fn with_rows(mut response: Response, rows: usize) -> Response {
    response.extensions_mut().insert(AuditRows(rows as i64));
    response
}

/// Middleware: the dashboard's requests in the audit trail, beside the API's reads (`crate::audit`) —
/// who (the session's token, or `-`), which page, the status and how many rows it showed. As in the API,
/// a signed-in read is never answered without its record: with no room in the audit queue for
/// `AUDIT_WAIT` the page is replaced by the 503 page. Everything else (no session, a form's post, whose
/// effect is in the event log already) is recorded when there is room at once, and counted in
/// `/metrics` when there is not.
async fn audited(
    State(st): State<Reads>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let lang = lang_of(req.headers());
    let caller = signed_in(&st, req.headers());
    req.extensions_mut().insert(SignedIn(caller.clone()));
    let response = next.run(req).await;
    let Some(audit) = &st.audit else {
        return response;
    };
    let status = response.status().as_u16();
    let rows = response
        .extensions()
        .get::<AuditRows>()
        .map_or(i64::from(status == 200), |r| r.0);
    let (scope, token_id, tier) = match &caller {
        Some(c) => {
            let (province, enterprise) = c.scope.binds();
            (province.or(enterprise), c.token_id.clone(), c.tier.name())
        }
        None => (None, "-".to_owned(), "none"),
    };
    let entry = crate::audit::AuditEntry {
        at_ns: st.clock.now_ns(),
        token_id,
        tier,
        scope,
        method: method.to_string(),
        uri,
        status,
        rows,
        cached: false,
        duration_us: started.elapsed().as_micros() as i64,
    };
    match &caller {
        Some(c) if method == axum::http::Method::GET => {
            if audit.record(entry).await {
                response
            } else {
                error_page(StatusCode::SERVICE_UNAVAILABLE, lang, Some(c))
            }
        }
        _ => {
            if !audit.try_record(entry) {
                st.metrics
                    .audit_refusals_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            response
        }
    }
}

/// A breadcrumb step.
pub struct Crumb {
    pub label: String,
    pub href: Option<String>,
}

/// What every page's frame shows.
pub struct Chrome {
    pub lang: Lang,
    pub title: String,
    /// Where the language switch comes back to.
    pub back: String,
    pub who: Option<String>,
    pub crumbs: Vec<Crumb>,
}

impl Chrome {
    /// The breadcrumb of a page below the overview: the overview, then each `(label, link)` of `via`,
    /// then this page, `here`, unlinked.
    fn trail(mut self, via: &[(&str, String)], here: &str) -> Chrome {
        let overview = Crumb {
            label: self.lang.t("overview").to_owned(),
            href: Some("/ui".into()),
        };
        let via = via.iter().map(|(label, href)| Crumb {
            label: (*label).to_owned(),
            href: Some(href.clone()),
        });
        let here = Crumb {
            label: here.to_owned(),
            href: None,
        };
        self.crumbs = std::iter::once(overview)
            .chain(via)
            .chain(std::iter::once(here))
            .collect();
        self
    }

    /// `back` as a query value for the language switch's link: percent-encoded, so that its own query
    /// (`?days=7&until=…`, a search's encoded text) comes back whole.
    pub fn back_query(&self) -> String {
        percent(&self.back)
    }
}

#[derive(Template)]
#[template(path = "dashboard/sign_in.html")]
struct SignInPage {
    chrome: Chrome,
    failed: bool,
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage {
    chrome: Chrome,
    message: String,
}

struct KindRow {
    label: String,
    count: String,
}

struct ProvinceTile {
    code: String,
    name: String,
    enterprises: String,
    open: String,
    /// `ok` or `alarm` (a class) — always with `state_label` and `mark`, never colour alone.
    state: &'static str,
    state_label: &'static str,
    mark: &'static str,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    heading: String,
    enterprises: String,
    terminals: String,
    online: String,
    kg_in_storage: String,
    open_total: String,
    kinds: Vec<KindRow>,
    provinces: Vec<ProvinceTile>,
}

struct EnterpriseRow {
    id: String,
    name: String,
    city: String,
    open: String,
    state: &'static str,
    mark: &'static str,
}

#[derive(Template)]
#[template(path = "dashboard/province.html")]
struct ProvincePage {
    chrome: Chrome,
    heading: String,
    enterprises: Vec<EnterpriseRow>,
}

struct AlarmRow {
    id: String,
    detected_at: String,
    kind: String,
    severity: String,
    severity_label: &'static str,
    severity_mark: &'static str,
    enterprise: String,
    description: String,
    state: String,
    state_label: &'static str,
    handled: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/alarms.html")]
struct AlarmsPage {
    chrome: Chrome,
    heading: String,
    all: bool,
    problem: Option<String>,
    rows: Vec<AlarmRow>,
    /// The anomaly kinds' labels in this language, as JSON for the live feed's script (a data block,
    /// not executed; `<` escaped so that it cannot close its element).
    kind_labels: String,
}

/// Every anomaly kind's label in `lang`, as JSON safe inside a `<script type="application/json">`.
fn kind_labels(lang: Lang) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        custodian_events::domain::AnomalyKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_owned(),
                    lang.t(&format!("kind_{}", k.name())).into(),
                )
            })
            .collect();
    serde_json::Value::Object(map)
        .to_string()
        .replace('<', "\\u003c")
}

struct TerminalRow {
    id: String,
    kind: String,
    state: &'static str,
    state_label: &'static str,
    mark: &'static str,
    last: String,
    readings: String,
}

struct ContainerRow {
    id: String,
    waste_code: String,
    stage: String,
    weight_kg: String,
    last: String,
}

struct KpiRow {
    /// The day in words, and as `YYYY-MM-DD` for the `<time>` element.
    day: String,
    day_iso: String,
    readings: String,
    weighed_kg: String,
    in_kg: String,
    out_kg: String,
    anomalies: String,
}

#[derive(Template)]
#[template(path = "dashboard/enterprise.html")]
struct EnterprisePage {
    chrome: Chrome,
    heading: String,
    id: String,
    province_code: String,
    province: String,
    city: String,
    capacity_kg: String,
    in_storage_kg: String,
    open_alarms: String,
    terminals: Vec<TerminalRow>,
    containers: Vec<ContainerRow>,
    kpis: Vec<KpiRow>,
    /// The days the KPIs cover, in words (`2026年12月1日 – 2026年12月7日`).
    kpi_range: String,
}

struct CustodyStep {
    at: String,
    stage: String,
    terminal: String,
    weight_kg: String,
    manifest: String,
    seq: i64,
    fingerprint: String,
}

#[derive(Template)]
#[template(path = "dashboard/container.html")]
struct ContainerPage {
    chrome: Chrome,
    heading: String,
    enterprise: String,
    waste_code: String,
    stage: String,
    weight_kg: String,
    steps: Vec<CustodyStep>,
}

struct RangeLink {
    label: &'static str,
    href: String,
    current: bool,
}

struct PointRow {
    at: String,
    kg: String,
}

/// A terminal's newest reading (`terminals.last_measured_at`), for a range without readings.
struct LastReading {
    /// When, in words, and how long ago (`2026年11月20日 16:00:02（17 天前）`).
    said: String,
    /// A range of the same length that ends on its day, and that link's words.
    href: String,
    link: String,
}

#[derive(Template)]
#[template(path = "dashboard/terminal.html")]
struct TerminalPage {
    chrome: Chrome,
    heading: String,
    range_label: String,
    ranges: Vec<RangeLink>,
    problem: Option<String>,
    thinned_note: String,
    chart_label: String,
    points: Vec<PointRow>,
    /// `{"t": [seconds], "v": [kg], "from", "to" (the range, seconds), "width", "label", "legend" (the
    /// legend table's name), "time_label", "unit"}` for the chart's script, which fixes the time axis to `from..to`.
    series_json: String,
    /// Set when no range was asked for and the default one was moved back to end on the day of the
    /// newest reading (older than the default range): says so.
    moved_note: Option<String>,
    /// The newest reading, shown when the range has none; `None` when the terminal has none at all.
    last: Option<LastReading>,
}

/// The chart's width in pixels: the series is thinned to at most two points per pixel.
pub const CHART_WIDTH_PX: usize = 720;

/// Thins a time-ordered series to at most `2 · width` points: the span `from..to` is cut into `width`
/// slices (one per pixel) and each slice keeps its lowest and its highest point, in time order — so
/// every spike and every drop a regulator must see survives, whatever the density.
pub fn thin(points: &[(i64, f64)], from_ns: i64, to_ns: i64, width: usize) -> Vec<(i64, f64)> {
    if points.len() <= 2 * width || width == 0 || to_ns <= from_ns {
        return points.to_vec();
    }
    let span = (to_ns - from_ns) as i128;
    type Point = (i64, f64);
    let mut slices: Vec<Option<(Point, Point)>> = vec![None; width];
    for &(t, v) in points {
        let k =
            (((t - from_ns).max(0) as i128 * width as i128) / span).min(width as i128 - 1) as usize;
        let slot = &mut slices[k];
        *slot = Some(match *slot {
            None => ((t, v), (t, v)),
            Some((lo, hi)) => (
                if v < lo.1 { (t, v) } else { lo },
                if v > hi.1 { (t, v) } else { hi },
            ),
        });
    }
    let mut out = Vec::with_capacity(2 * width);
    for (lo, hi) in slices.into_iter().flatten() {
        if lo.0 == hi.0 {
            out.push(lo);
        } else if lo.0 < hi.0 {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    }
    out
}

#[derive(Template)]
#[template(path = "dashboard/manifest.html")]
struct ManifestPage {
    chrome: Chrome,
    heading: String,
    status: String,
    generator: String,
    generator_visible: bool,
    receiver: String,
    receiver_visible: bool,
    waste_code: String,
    declared_kg: String,
    dispatched_kg: String,
    received_kg: String,
    opened_at: String,
    dispatched_at: String,
    received_at: String,
    notes: String,
    containers: Vec<String>,
}

struct Hit {
    kind: String,
    href: String,
    text: String,
    enterprise: String,
    at: String,
}

#[derive(Template)]
#[template(path = "dashboard/search.html")]
struct SearchPage {
    chrome: Chrome,
    q: String,
    searched: bool,
    problem: Option<String>,
    hits_heading: String,
    hits: Vec<Hit>,
}

/// One row of the alarms table, alone: what htmx swaps in after acknowledge or resolve.
#[derive(Template)]
#[template(path = "dashboard/alarm_row.html")]
struct AlarmRowPartial {
    chrome: Chrome,
    r: AlarmRow,
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie(headers, LANG_COOKIE).map_or(Lang::ZhCn, Lang::parse)
}

/// The signed-in caller, resolved from the session cookie exactly as the API resolves a bearer token.
fn signed_in(st: &Reads, headers: &HeaderMap) -> Option<Caller> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let mut bearer = HeaderMap::new();
    bearer.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    crate::api::auth::caller(&st.access, &bearer).ok()
}

fn who(caller: &Caller, lang: Lang) -> String {
    match (&caller.scope, caller.tier) {
        (_, Tier::Admin) => lang.t("tier_admin").to_owned(),
        (Scope::All, _) => lang.t("tier_national").to_owned(),
        (Scope::Province(p), _) => {
            format!("{} · {}", lang.t("tier_province"), province_name(p, lang))
        }
        (Scope::Enterprise(e), _) => format!("{} · {e}", lang.t("tier_enterprise")),
    }
}

/// Adds the headers every `/ui` response carries.
pub fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => secure(
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response(),
        ),
        Err(e) => secure(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the page could not be rendered: {e}"),
            )
                .into_response(),
        ),
    }
}

fn redirect(to: &str) -> Response {
    secure(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_str(to).expect("a path"))],
        )
            .into_response(),
    )
}

fn chrome(lang: Lang, title: &str, back: &str, caller: Option<&Caller>) -> Chrome {
    Chrome {
        lang,
        title: title.to_owned(),
        back: back.to_owned(),
        who: caller.map(|c| who(c, lang)),
        crumbs: Vec::new(),
    }
}

fn error_page(status: StatusCode, lang: Lang, caller: Option<&Caller>) -> Response {
    let (title, message) = match status {
        StatusCode::FORBIDDEN => ("forbidden_title", "forbidden"),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable_title", "unavailable"),
        _ => ("not_found_title", "not_found"),
    };
    html(
        status,
        &ErrorPage {
            chrome: chrome(lang, lang.t(title), "/ui", caller),
            message: lang.t(message).to_owned(),
        },
    )
}

/// Whether a state-changing request comes from this site: its `Origin` is this host's.
fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

async fn sign_in_page(headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    html(
        StatusCode::OK,
        &SignInPage {
            chrome: chrome(lang, lang.t("sign_in_title"), "/ui/sign-in", None),
            failed: false,
        },
    )
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

async fn sign_in(
    State(st): State<Reads>,
    headers: HeaderMap,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let lang = lang_of(&headers);
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, lang, None);
    }
    let token = form
        .map(|f| f.0.token.trim().to_owned())
        .unwrap_or_default();
    // A token is printable ASCII (`cst1.…`); anything else cannot be one and must not reach a cookie.
    let plausible = !token.is_empty()
        && token.len() <= 4096
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    let mut bearer = HeaderMap::new();
    let verified = plausible
        && HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .map(|v| bearer.insert(header::AUTHORIZATION, v))
            .is_some()
        && crate::api::auth::caller(&st.access, &bearer).is_ok();
    if !verified {
        return html(
            StatusCode::UNAUTHORIZED,
            &SignInPage {
                chrome: chrome(lang, lang.t("sign_in_title"), "/ui/sign-in", None),
                failed: true,
            },
        );
    }
    let mut response = redirect("/ui");
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{}",
            secure_attr(&st)
        ))
        .expect("a printable cookie"),
    );
    response
}

/// `; Secure` when the dashboard is configured to be reached over HTTPS only (`dashboard.secure_cookies`).
fn secure_attr(st: &Reads) -> &'static str {
    if st.config.dashboard.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

async fn sign_out(State(st): State<Reads>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, lang_of(&headers), None);
    }
    let mut response = redirect("/ui/sign-in");
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
            secure_attr(&st)
        ))
        .expect("a printable cookie"),
    );
    response
}

#[derive(Deserialize)]
struct LangQuery {
    to: Option<String>,
    back: Option<String>,
}

async fn switch_language(State(st): State<Reads>, Query(q): Query<LangQuery>) -> Response {
    let lang = Lang::parse(q.to.as_deref().unwrap_or(""));
    // Only back into the dashboard: never an open redirect.
    let back = q
        .back
        .filter(|b| {
            b.starts_with("/ui")
                && !b.starts_with("//")
                && b.bytes().all(|c| c.is_ascii_graphic() && c != b'\\')
        })
        .unwrap_or_else(|| "/ui".to_owned());
    let mut response = redirect(&back);
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={}; Path=/ui; SameSite=Strict; Max-Age=31536000{}",
            lang.tag(),
            secure_attr(&st)
        ))
        .expect("a printable cookie"),
    );
    response
}

fn alarm_state(open: i64, lang: Lang) -> (&'static str, &'static str, &'static str) {
    if open > 0 {
        ("alarm", lang.t("status_alarm"), "⚠")
    } else {
        ("ok", lang.t("status_ok"), "✓")
    }
}

async fn overview(State(st): State<Reads>, s: Session) -> Response {
    let (lang, caller, pool) = (s.lang, &s.caller, &s.pool);
    let Ok(counts) = db::overview_counts(pool, s.scope(), st.clock.now_ns()).await else {
        return s.unavailable();
    };
    let Ok(by_province) = db::province_figures(pool, s.scope()).await else {
        return s.unavailable();
    };
    let figures: std::collections::BTreeMap<String, (i64, i64)> = by_province
        .into_iter()
        .map(|p| (p.code, (p.enterprises, p.open)))
        .collect();
    // The grid: every province for the national tier; the caller's own otherwise.
    let own_province = match &caller.scope {
        Scope::All => None,
        Scope::Province(p) => Some(p.clone()),
        Scope::Enterprise(_) => figures
            .iter()
            .find(|(_, (n, _))| *n > 0)
            .map(|(code, _)| code.clone()),
    };
    let mut codes: Vec<String> = match &own_province {
        Some(p) => vec![p.clone()],
        None => PROVINCES.iter().map(|(c, _, _)| (*c).to_owned()).collect(),
    };
    if own_province.is_none() {
        // Codes with data that the list does not name (none, normally) still get a tile.
        for code in figures.keys() {
            if !codes.contains(code) {
                codes.push(code.clone());
            }
        }
    }
    let provinces = codes
        .into_iter()
        .map(|code| {
            let (n, open) = figures.get(&code).copied().unwrap_or((0, 0));
            let (state, state_label, mark) = alarm_state(open, lang);
            ProvinceTile {
                name: province_name(&code, lang),
                code,
                enterprises: lang.int(n),
                open: lang.int(open),
                state,
                state_label,
                mark,
            }
        })
        .collect();
    let kinds: Vec<KindRow> = counts
        .open_by_kind
        .iter()
        .map(|(kind, n)| KindRow {
            label: match lang.t(&format!("kind_{kind}")) {
                "?" => kind.clone(),
                l => l.to_owned(),
            },
            count: lang.int(*n),
        })
        .collect();
    let open_total: i64 = figures.values().map(|(_, o)| o).sum();
    let heading = match &caller.scope {
        Scope::All => lang.t("national").to_owned(),
        Scope::Province(p) => province_name(p, lang),
        Scope::Enterprise(e) => e.clone(),
    };
    let mut ch = s.chrome(lang.t("overview"), "/ui");
    ch.crumbs.push(Crumb {
        label: lang.t("overview").to_owned(),
        href: None,
    });
    html(
        StatusCode::OK,
        &OverviewPage {
            chrome: ch,
            heading,
            enterprises: lang.int(counts.enterprises),
            terminals: lang.int(counts.terminals),
            online: lang.int(counts.online),
            kg_in_storage: lang.dec1(counts.in_storage_mg as f64 / 1e6),
            open_total: lang.int(open_total),
            kinds,
            provinces,
        },
    )
}

async fn province(s: Session, Path(code): Path<String>) -> Response {
    let lang = s.lang;
    // Another province's page answers like one that does not exist.
    if let Scope::Province(p) = &s.caller.scope
        && *p != code
    {
        return s.not_found();
    }
    let Ok(rows) = db::province_enterprises(&s.pool, s.scope(), &code).await else {
        return s.unavailable();
    };
    let known = PROVINCES.iter().any(|(c, _, _)| *c == code);
    // Nothing in scope here: for an enterprise's token any other province; for anyone, a code that is
    // neither a province nor has enterprises.
    if rows.is_empty() && (!known || matches!(s.caller.scope, Scope::Enterprise(_))) {
        return s.not_found();
    }
    let shown = rows.len();
    let enterprises = rows
        .into_iter()
        .map(|r| {
            let (state, _, mark) = alarm_state(r.open, lang);
            EnterpriseRow {
                id: r.id,
                name: r.name,
                city: r.city_code.unwrap_or_default(),
                open: lang.int(r.open),
                state,
                mark,
            }
        })
        .collect();
    let heading = province_name(&code, lang);
    let ch = s
        .chrome(&heading, &format!("/ui/provinces/{code}"))
        .trail(&[], &heading);
    with_rows(
        html(
            StatusCode::OK,
            &ProvincePage {
                chrome: ch,
                heading,
                enterprises,
            },
        ),
        shown,
    )
}

/// How many China Standard Time days the enterprise page's KPIs cover, today included.
const KPI_DAYS: i64 = 7;

/// The China Standard Time day of an instant.
fn cst_date(ns: i64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .map(|t| t.to_offset(time::macros::offset!(+8)).date())
        .unwrap_or(time::Date::MIN)
}

/// A China Standard Time day as the pages write it (`2026年12月7日`, `7 Dec 2026`).
fn day_words(lang: Lang, day: time::Date) -> String {
    lang.cst(&format!("{day} 00:00:00"))
        .trim_end_matches(" 00:00:00")
        .trim_end_matches(',')
        .to_owned()
}

async fn enterprise(State(st): State<Reads>, s: Session, Path(id): Path<String>) -> Response {
    let (lang, pool) = (s.lang, &s.pool);
    let f = match db::enterprise_figures(pool, s.scope(), &id).await {
        Ok(Some(f)) => f,
        // Out of scope answers like an enterprise that does not exist.
        Ok(None) => return s.not_found(),
        Err(_) => return s.unavailable(),
    };
    let now_ns = st.clock.now_ns();
    let Ok(terminals) = db::enterprise_terminals(pool, &id, now_ns).await else {
        return s.unavailable();
    };
    let Ok(containers) = db::stored_containers(pool, &id).await else {
        return s.unavailable();
    };
    // The last 7 China Standard Time days by the page's clock, today included — not the 7 latest days
    // that have figures, however old; the newest first.
    let today = cst_date(now_ns);
    let first_day = today - time::Duration::days(KPI_DAYS - 1);
    let Ok(kpis) = db::daily_kpis(pool, &id, Some(first_day), Some(today)).await else {
        return s.unavailable();
    };
    let kg = |mg: i64| lang.dec1(mg as f64 / 1e6);
    let db::EnterpriseFigures {
        enterprise: e,
        in_storage_mg,
        open,
    } = f;
    let name = e.name;
    let province_code = e.province_code;
    let province = province_name(&province_code, lang);
    let heading = format!("{name}（{id}）");
    let ch = s.chrome(&name, &format!("/ui/enterprises/{id}")).trail(
        &[(&province, format!("/ui/provinces/{province_code}"))],
        &name,
    );
    html(
        StatusCode::OK,
        &EnterprisePage {
            chrome: ch,
            heading,
            id: id.clone(),
            province,
            province_code,
            city: e.city_code,
            capacity_kg: kg(e.storage_capacity_mg),
            in_storage_kg: kg(in_storage_mg),
            open_alarms: lang.int(open),
            terminals: terminals
                .into_iter()
                .map(|t| {
                    let online = t.online;
                    TerminalRow {
                        id: t.id,
                        kind: t.kind,
                        state: if online { "online" } else { "offline" },
                        state_label: lang.t(if online { "online" } else { "offline" }),
                        mark: if online { "●" } else { "○" },
                        last: lang.cst(&t.last_cst.unwrap_or_default()),
                        readings: lang.int(t.readings),
                    }
                })
                .collect(),
            containers: containers
                .into_iter()
                .map(|c| ContainerRow {
                    id: c.id,
                    waste_code: c.waste_code.unwrap_or_default(),
                    stage: c.stage.unwrap_or_default(),
                    weight_kg: kg(c.last_weight_mg),
                    last: lang.cst(&c.last_cst.unwrap_or_default()),
                })
                .collect(),
            kpi_range: format!(
                "{} – {}",
                day_words(lang, first_day),
                day_words(lang, today)
            ),
            kpis: kpis
                .into_iter()
                .rev()
                .take(KPI_DAYS as usize)
                .map(|k| KpiRow {
                    day: {
                        let fmt = time::macros::format_description!("[year]-[month]-[day]");
                        time::Date::parse(&k.day, fmt)
                            .map_or_else(|_| k.day.clone(), |d| day_words(lang, d))
                    },
                    day_iso: k.day,
                    readings: lang.int(k.readings),
                    weighed_kg: kg(k.weighed_mg),
                    in_kg: kg(k.storage_in_mg),
                    out_kg: kg(k.storage_out_mg),
                    anomalies: lang.int(k.anomalies),
                })
                .collect(),
        },
    )
}

async fn container(State(st): State<Reads>, s: Session, Path(id): Path<String>) -> Response {
    let (lang, pool) = (s.lang, &s.pool);
    let c = match db::container(pool, s.scope(), &id).await {
        Ok(Some(c)) => c,
        Ok(None) => return s.not_found(),
        Err(_) => return s.unavailable(),
    };
    let Ok(chain) = db::custody(pool, &c, 2000).await else {
        return s.unavailable();
    };
    let enterprise = c.enterprise_id;
    // Each step's fingerprint, from the log itself: what a court would be shown.
    let shown = chain.len();
    let steps = chain
        .into_iter()
        .map(|r| {
            let seq = r.event_seq;
            let fingerprint = st
                .log
                .read(seq as u64, 1)
                .ok()
                .and_then(|e| e.into_iter().next())
                .filter(|e| e.seq == seq as u64)
                .map(|e| e.fingerprint_hex())
                .unwrap_or_default();
            CustodyStep {
                at: lang.cst(&r.measured_cst.unwrap_or_default()),
                stage: r.stage,
                terminal: r.terminal_id,
                weight_kg: lang.dec1(r.weight_mg as f64 / 1e6),
                manifest: r.manifest_id.unwrap_or_default(),
                seq,
                fingerprint,
            }
        })
        .collect();
    let heading = format!("{}：{id}", lang.t("container"));
    let ch = s.chrome(&heading, &format!("/ui/containers/{id}")).trail(
        &[(&enterprise, format!("/ui/enterprises/{enterprise}"))],
        &id,
    );
    with_rows(
        html(
            StatusCode::OK,
            &ContainerPage {
                chrome: ch,
                heading,
                enterprise,
                waste_code: c.waste_code.unwrap_or_default(),
                stage: c.stage.unwrap_or_default(),
                weight_kg: lang.dec1(c.last_weight_mg as f64 / 1e6),
                steps,
            },
        ),
        shown,
    )
}

#[derive(Deserialize)]
struct TerminalQuery {
    days: Option<u32>,
    /// The range's last China Standard Time day (`YYYY-MM-DD`); today by default.
    until: Option<String>,
}

/// The last day of a terminal's range, and whether it was moved back from today: the day asked for;
/// else today — unless the newest reading (`last_day`) is older than the `days` days ending today,
/// when the range ends on that reading's day, so the page opens on the latest readings rather than on
/// an empty chart.
fn range_end(
    asked: Option<time::Date>,
    last_day: Option<time::Date>,
    today: time::Date,
    days: u32,
) -> (time::Date, bool) {
    let window_start = today - time::Duration::days(i64::from(days) - 1);
    match (asked, last_day) {
        (Some(d), _) => (d, false),
        (None, Some(d)) if d < window_start => (d, true),
        _ => (today, false),
    }
}

fn cst_time(ns: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .map(|t| t.to_offset(time::macros::offset!(+8)))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

async fn terminal(
    State(st): State<Reads>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
) -> Response {
    let lang = s.lang;
    let t = match db::terminal(&s.pool, s.scope(), &id).await {
        Ok(Some(t)) => t,
        Ok(None) => return s.not_found(),
        Err(_) => return s.unavailable(),
    };
    let enterprise = t.enterprise_id.clone();
    let days = q.days.filter(|d| matches!(d, 1 | 7 | 30)).unwrap_or(7);
    let cst = time::macros::offset!(+8);
    let ymd = time::macros::format_description!("[year]-[month]-[day]");
    let today = cst_date(st.clock.now_ns());
    // The newest reading (China Standard Time), and its day.
    let last_at = t.last_cst.clone();
    let last_day = last_at
        .as_deref()
        .and_then(|at| time::Date::parse(at.get(..10)?, ymd).ok());
    let asked = q
        .until
        .as_deref()
        .and_then(|d| time::Date::parse(d, ymd).ok());
    let (until, moved) = range_end(asked, last_day, today, days);
    let end = until
        .next_day()
        .unwrap_or(until)
        .midnight()
        .assume_offset(cst);
    let start = end - time::Duration::days(i64::from(days));
    let (from_ns, to_ns) = (
        start.unix_timestamp_nanos() as i64,
        end.unix_timestamp_nanos() as i64,
    );
    // One day raw; longer ranges as hourly minima and maxima (the API's limit on raw points).
    let aggs: &[Option<&str>] = if days == 1 {
        &[None]
    } else {
        &[Some("min"), Some("max")]
    };
    let mut raw: Vec<(i64, f64)> = Vec::new();
    let mut problem = None;
    let client = crate::query::influx::client(&st);
    for agg in aggs {
        let r = crate::query::influx::Readings {
            kind: "weight",
            from_ns,
            to_ns,
            every: agg.map(|_| "1h"),
            agg: agg.unwrap_or("mean"),
        };
        let read = match &client {
            Some(c) => crate::query::influx::readings(c, s.scope(), &t, &r)
                .await
                .ok(),
            None => None,
        };
        let Some(points) = read else {
            problem = Some(lang.t("readings_unavailable").to_owned());
            break;
        };
        raw.extend(
            points
                .iter()
                .filter_map(|p| Some((p.time_ns()?, p.value()?))),
        );
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let points = thin(&raw, from_ns, to_ns, CHART_WIDTH_PX);
    let range_label = format!(
        "{} – {}",
        lang.cst(&cst_time(from_ns)),
        lang.cst(&cst_time(to_ns - 1_000_000_000))
    );
    let ranges = [(1, "range_day"), (7, "range_week"), (30, "range_month")]
        .iter()
        .map(|(d, key)| RangeLink {
            label: lang.t(key),
            href: format!("/ui/terminals/{id}?days={d}&until={until}"),
            current: *d == days,
        })
        .collect();
    let range_name = |d: u32| match d {
        1 => lang.t("range_day"),
        30 => lang.t("range_month"),
        _ => lang.t("range_week"),
    };
    // How long ago, in China Standard Time calendar days by the page's clock.
    let said = |at: &str, day: time::Date| {
        let ago = (today - day).whole_days().max(0);
        let ago = match ago {
            0 => lang.t("today").to_owned(),
            1 => lang.t("day_ago").to_owned(),
            n => lang.t("days_ago").replace("{n}", &lang.int(n)),
        };
        lang.t("last_reading")
            .replace("{at}", &lang.cst(at))
            .replace("{ago}", &ago)
    };
    let last = last_at
        .as_deref()
        .zip(last_day)
        .map(|(at, day)| LastReading {
            said: said(at, day),
            href: format!("/ui/terminals/{id}?days={days}&until={day}"),
            link: lang
                .t("show_last")
                .replace("{range}", range_name(days))
                .replace("{day}", &day_words(lang, day)),
        });
    let moved_note = last_at
        .as_deref()
        .zip(last_day)
        .filter(|_| moved)
        .map(|(at, day)| {
            lang.t("range_moved")
                .replace("{range}", range_name(days))
                .replace("{last}", &said(at, day))
        });
    let chart_label = format!("{} {id} · {}", lang.t("weights_chart"), lang.t("weight_kg"));
    // Times in seconds (uPlot's default unit), and the range itself: uPlot must not derive the time
    // axis from the points, which may all fall in one instant (an hour's minimum and maximum), a
    // zero-width range it would widen by years.
    let series_json = serde_json::json!({
        "t": points.iter().map(|(t, _)| *t as f64 / 1e9).collect::<Vec<_>>(),
        "v": points.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        "from": from_ns as f64 / 1e9,
        "to": to_ns as f64 / 1e9,
        "width": CHART_WIDTH_PX,
        "label": lang.t("weight_kg"),
        "legend": lang.t("chart_legend"),
        "time_label": lang.t("measured_at"),
        "unit": "kg",
    })
    .to_string()
    .replace('<', "\\u003c");
    let thinned_note = lang
        .t("thinned")
        .replace("{n}", &lang.int(raw.len() as i64))
        .replace("{m}", &lang.int(points.len() as i64));
    let heading = format!("{}：{id}", lang.t("terminal"));
    let ch = s
        .chrome(
            &heading,
            &format!("/ui/terminals/{id}?days={days}&until={until}"),
        )
        .trail(
            &[(&enterprise, format!("/ui/enterprises/{enterprise}"))],
            &id,
        );
    let shown = points.len();
    with_rows(
        html(
            StatusCode::OK,
            &TerminalPage {
                chrome: ch,
                heading,
                range_label,
                ranges,
                problem,
                thinned_note,
                chart_label,
                points: points
                    .iter()
                    .map(|(t, v)| PointRow {
                        at: lang.cst(&cst_time(*t)),
                        kg: lang.dec1(*v),
                    })
                    .collect(),
                series_json,
                moved_note,
                last,
            },
        ),
        shown,
    )
}

async fn manifest(s: Session, Path(id): Path<String>) -> Response {
    let lang = s.lang;
    // Visible when either party is in scope, as in the API.
    let m = match db::manifest(&s.pool, s.scope(), &id).await {
        Ok(Some(m)) => m,
        Ok(None) => return s.not_found(),
        Err(_) => return s.unavailable(),
    };
    let kg = |mg: Option<i64>| {
        mg.map(|v| lang.dec1(v as f64 / 1e6))
            .unwrap_or_else(|| "—".into())
    };
    let status = m.status;
    let status_label = match lang.t(&format!("status_{status}")) {
        "?" => status.clone(),
        l => l.to_owned(),
    };
    let heading = format!("{}：{id}", lang.t("manifest"));
    let ch = s
        .chrome(&heading, &format!("/ui/manifests/{id}"))
        .trail(&[], &id);
    let dash = |v: Option<String>| v.map_or_else(|| "—".into(), |t| lang.cst(&t));
    html(
        StatusCode::OK,
        &ManifestPage {
            chrome: ch,
            heading,
            status: status_label,
            generator: m.generator_id,
            generator_visible: m.generator_visible,
            receiver: m.receiver_id,
            receiver_visible: m.receiver_visible,
            waste_code: m.waste_code,
            declared_kg: lang.dec1(m.declared_mg as f64 / 1e6),
            dispatched_kg: kg(m.dispatched_mg),
            received_kg: kg(m.received_mg),
            opened_at: dash(m.opened_cst),
            dispatched_at: dash(m.dispatched_cst),
            received_at: dash(m.received_cst),
            notes: m.notes.unwrap_or_default(),
            containers: m.container_ids,
        },
    )
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn search(State(st): State<Reads>, s: Session, Query(q): Query<SearchQuery>) -> Response {
    let lang = s.lang;
    let text = q.q.unwrap_or_default().trim().to_owned();
    let mut hits = Vec::new();
    let mut problem = None;
    let searched = !text.is_empty();
    if searched {
        use crate::query::search::{self, SearchError};
        let found = match search::index(&st) {
            Some(index) => {
                search::hits(index, text.clone(), search::scoped(s.scope(), None), 50).await
            }
            None => Err(SearchError::Failed("no index".into())),
        };
        match found {
            Ok(found) => {
                for h in found {
                    let doc = h.doc;
                    let kind = doc.kind.as_str();
                    let enterprise = doc.enterprise_id.unwrap_or_default();
                    let href = match (kind, doc.doc_id.split_once(':')) {
                        ("anomaly", Some((_, hex))) => format!("/ui/alarms?all=1#a-{hex}"),
                        ("manifest", Some((_, id))) => format!("/ui/manifests/{id}"),
                        _ if !enterprise.is_empty() => format!("/ui/enterprises/{enterprise}"),
                        _ => "/ui".to_owned(),
                    };
                    hits.push(Hit {
                        kind: match lang.t(&format!("kind_doc_{kind}")) {
                            "?" => kind.to_owned(),
                            l => l.to_owned(),
                        },
                        href,
                        text: doc.text,
                        enterprise,
                        at: lang.cst(&cst_time(doc.at_ns)),
                    });
                }
            }
            Err(SearchError::Query(e)) => problem = Some(format!("{e:#}")),
            Err(SearchError::Failed(_)) => problem = Some(lang.t("search_unavailable").to_owned()),
        }
    }
    let hits_heading = format!("{}（{}）", lang.t("hits"), lang.int(hits.len() as i64));
    let back = if searched {
        format!("/ui/search?q={}", percent(&text))
    } else {
        "/ui/search".to_owned()
    };
    let ch = s
        .chrome(lang.t("search"), &back)
        .trail(&[], lang.t("search"));
    let shown = hits.len();
    with_rows(
        html(
            if problem.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            &SearchPage {
                chrome: ch,
                q: text,
                searched,
                problem,
                hits_heading,
                hits,
            },
        ),
        shown,
    )
}

/// Percent-encodes everything but unreserved characters (for a query value in a link).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

fn alarm_row(r: db::Anomaly, lang: Lang) -> AlarmRow {
    let kind = r.kind;
    let severity = r.severity;
    let state = r.state;
    let (severity_label, severity_mark) = match severity.as_str() {
        "high" => (lang.t("severity_high"), "▲▲▲"),
        "medium" => (lang.t("severity_medium"), "▲▲"),
        _ => (lang.t("severity_low"), "▲"),
    };
    let state_label = match state.as_str() {
        "acknowledged" => lang.t("state_acknowledged"),
        "resolved" => lang.t("state_resolved"),
        _ => lang.t("state_open"),
    };
    let by = r.state_by.unwrap_or_default();
    let handled = r.state_at_cst.map(|at| format!("{by} · {}", lang.cst(&at)));
    AlarmRow {
        id: r.anomaly_id,
        detected_at: lang.cst(&r.detected_cst.unwrap_or_default()),
        kind: match lang.t(&format!("kind_{kind}")) {
            "?" => kind.clone(),
            l => l.to_owned(),
        },
        severity,
        severity_label,
        severity_mark,
        enterprise: r.enterprise_id.unwrap_or_default(),
        // In this language from the typed columns, not the stored mixed-language line.
        description: describe::describe(
            lang,
            &describe::AnomalyFacts {
                kind: kind.clone(),
                subject: r.subject,
                terminal_id: r.terminal_id,
                container_id: r.container_id,
                manifest_id: r.manifest_id,
                previous_value: r.previous_value,
                current_value: r.current_value,
                change_ratio_ppm: r.change_ratio_ppm,
                limit_value: r.limit_value,
            },
        ),
        state,
        state_label,
        handled,
    }
}

/// How long handling an alarm waits for the PostgreSQL model to show it, so that the page it returns to
/// (and any reload) shows the new state.
const HANDLED_VISIBLE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Deserialize)]
struct AlarmsQuery {
    all: Option<String>,
}

async fn alarms(s: Session, Query(q): Query<AlarmsQuery>) -> Response {
    alarms_page(&s, q.all.is_some(), None, StatusCode::OK).await
}

async fn alarms_page(
    s: &Session,
    all: bool,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let lang = s.lang;
    let Ok(rows) = db::alarms(&s.pool, s.scope(), all).await else {
        return s.unavailable();
    };
    let rows: Vec<AlarmRow> = rows.into_iter().map(|r| alarm_row(r, lang)).collect();
    let heading = lang
        .t(if all { "alarms_all" } else { "alarms_open" })
        .to_owned();
    let back = if all {
        "/ui/alarms?all=1"
    } else {
        "/ui/alarms"
    };
    let ch = s.chrome(&heading, back).trail(&[], lang.t("alarms"));
    let shown = rows.len();
    with_rows(
        html(
            status,
            &AlarmsPage {
                chrome: ch,
                heading,
                all,
                problem,
                rows,
                kind_labels: kind_labels(lang),
            },
        ),
        shown,
    )
}

/// `GET /ui/alarms/feed`: the API's anomaly feed (`/v1/anomalies/stream`) for the signed-in session —
/// the same scope filter, the same `Last-Event-ID` replay — authenticated by the session cookie, which
/// an `EventSource` sends where it could not send a header. Each event gains `text`, its description in
/// the session's language ([`describe::describe`]), which the page shows instead of the API's
/// mixed-language `description`.
async fn alarm_feed(State(st): State<Reads>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    let Some(token) = cookie(&headers, SESSION_COOKIE) else {
        return secure((StatusCode::UNAUTHORIZED, "sign in first").into_response());
    };
    let mut api = HeaderMap::new();
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) => api.insert(header::AUTHORIZATION, v),
        Err(_) => return secure((StatusCode::UNAUTHORIZED, "sign in first").into_response()),
    };
    if let Some(last) = headers.get("last-event-id") {
        api.insert("last-event-id", last.clone());
    }
    match crate::api::query::anomaly_stream(State(st), api).await {
        Ok(stream) => {
            let (parts, body) = stream.into_response().into_parts();
            let events = in_words(body.into_data_stream(), lang);
            secure(Response::from_parts(
                parts,
                axum::body::Body::from_stream(events),
            ))
        }
        Err(e) => secure(e.into_response()),
    }
}

/// The most a feed event may hold before it is passed on as it is (an API event is well under 4 KiB).
const FEED_EVENT_BYTES_MAX: usize = 64 * 1024;

/// The API's server-sent events with `text` added to each `anomaly` event's JSON: its description in
/// `lang`. Events are cut at the blank line that ends each; anything that is not an anomaly's JSON (the
/// keep-alive comments) passes unchanged, and so does an event longer than [`FEED_EVENT_BYTES_MAX`].
fn in_words<S, E>(body: S, lang: Lang) -> impl futures_util::Stream<Item = Result<bytes::Bytes, E>>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
{
    use futures_util::StreamExt;
    let mut pending: Vec<u8> = Vec::new();
    body.map(move |chunk| {
        let chunk = chunk?;
        pending.extend_from_slice(&chunk);
        let mut out = Vec::with_capacity(pending.len() + 256);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            out.extend_from_slice(&with_text(&event, lang));
        }
        if pending.len() > FEED_EVENT_BYTES_MAX {
            out.append(&mut pending);
        }
        Ok(bytes::Bytes::from(out))
    })
}

/// One server-sent event (ending in a blank line) with `text` added to its `data:` JSON, if it has one.
fn with_text(event: &[u8], lang: Lang) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(event) else {
        return event.to_vec();
    };
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let data = line
            .strip_prefix("data:")
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok());
        match data {
            Some(mut v) if v["anomaly"].is_object() => {
                let facts = describe::AnomalyFacts::from_json(&v["anomaly"]);
                v["text"] = describe::describe(lang, &facts).into();
                out.push_str("data: ");
                out.push_str(&v.to_string());
                out.push('\n');
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

#[derive(Deserialize)]
struct HandleForm {
    action: String,
    note: String,
}

/// Acknowledges or resolves an alarm from the list's form, then shows the list again (303) once the
/// model shows the new state. Handling it again into a state it is in already changes nothing.
async fn handle_alarm(
    State(st): State<Reads>,
    headers: HeaderMap,
    s: Result<Session, Response>,
    Path(id): Path<String>,
    form: Result<axum::Form<HandleForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    use custodian_events::event::AnomalyState;
    // The Origin check first: a foreign post is refused before anything else is looked at.
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, lang_of(&headers), None);
    }
    let s = match s {
        Ok(s) => s,
        Err(rejection) => return rejection,
    };
    let note_required = || {
        alarms_page(
            &s,
            false,
            Some(s.lang.t("note_required").to_owned()),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    let Ok(axum::Form(form)) = form else {
        return note_required().await;
    };
    let wanted = match form.action.as_str() {
        "acknowledge" => AnomalyState::Acknowledged,
        "resolve" => AnomalyState::Resolved,
        _ => return s.not_found(),
    };
    match crate::api::query::handle(&st, &s.caller, &id, &form.note, wanted, true).await {
        Ok(appended) => {
            if let Some(seq) = appended {
                wait_projected(&st, seq).await;
            }
            handled(&s, &headers, &id).await
        }
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => note_required().await,
        Err(e) if e.status == StatusCode::NOT_FOUND => s.not_found(),
        Err(_) => s.unavailable(),
    }
}

/// The answer to a handled alarm: for htmx (`HX-Request`), the alarm's row as it is now, which it swaps
/// in place; for a plain form, back to the list (303).
async fn handled(s: &Session, headers: &HeaderMap, id: &str) -> Response {
    if headers.get("hx-request").is_none() {
        return redirect(&format!("/ui/alarms#a-{id}"));
    }
    match db::anomaly(&s.pool, s.scope(), id).await {
        Ok(Some(r)) => html(
            StatusCode::OK,
            &AlarmRowPartial {
                chrome: s.chrome("", "/ui/alarms"),
                r: alarm_row(r, s.lang),
            },
        ),
        Ok(None) => s.not_found(),
        Err(_) => s.unavailable(),
    }
}

/// Waits (up to [`HANDLED_VISIBLE_WAIT`]) until the PostgreSQL model has applied sequence `seq`.
async fn wait_projected(st: &Reads, seq: u64) {
    let started = std::time::Instant::now();
    while started.elapsed() < HANDLED_VISIBLE_WAIT {
        let done = st.models.runners.get().is_none_or(|runners| {
            runners
                .iter()
                .filter(|r| r.name() == "postgres")
                .all(|r| r.status().checkpoint >= seq)
        });
        if done {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_every_slices_extremes_in_time_order_and_at_most_two_points_a_pixel() {
        // 100,000 points over 1,000 s with one spike and one drop.
        let mut pts: Vec<(i64, f64)> = (0..100_000)
            .map(|i| (i as i64 * 10_000_000, 50.0 + ((i % 7) as f64)))
            .collect();
        pts[31_337].1 = 400.0;
        pts[77_777].1 = -3.0;
        let out = thin(&pts, 0, 1_000_000_000_000, 720);
        assert!(out.len() <= 1440, "{}", out.len());
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "time order");
        assert!(out.contains(&pts[31_337]) && out.contains(&pts[77_777]));
        let max = out.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let min = out.iter().map(|p| p.1).fold(f64::MAX, f64::min);
        assert_eq!((min, max), (-3.0, 400.0));
        // Few points pass untouched.
        assert_eq!(thin(&pts[..10], 0, 1_000, 720), pts[..10].to_vec());
    }

    #[test]
    fn a_terminals_default_range_ends_on_its_newest_reading_when_that_is_older() {
        use time::macros::date;
        let today = date!(2026 - 12 - 07);
        let old = Some(date!(2026 - 11 - 20));
        assert_eq!(
            range_end(None, old, today, 7),
            (date!(2026 - 11 - 20), true)
        );
        assert_eq!(
            range_end(None, old, today, 30),
            (today, false),
            "inside 30 days"
        );
        // Six days ago is inside the 7 days ending today; seven is not.
        assert_eq!(
            range_end(None, Some(date!(2026 - 12 - 01)), today, 7),
            (today, false)
        );
        assert!(range_end(None, Some(date!(2026 - 11 - 30)), today, 7).1);
        assert_eq!(range_end(None, None, today, 7), (today, false));
        // A range asked for is never moved.
        assert_eq!(range_end(Some(today), old, today, 7), (today, false));
    }

    #[tokio::test]
    async fn the_feeds_anomaly_events_gain_their_text_and_nothing_else_changes() {
        use futures_util::StreamExt;
        let data = serde_json::json!({"event_seq": 9, "enterprise_id": "E-A",
            "description": "重量异常波动 weight_fluctuation (medium) container:C-1",
            "anomaly": {"kind": "weight_fluctuation", "subject": "container:C-1", "container_id": "C-1",
                        "previous_value": 100_000_000, "current_value": 60_000_000,
                        "change_ratio_ppm": 400_000}});
        let event = format!("event: anomaly\nid: 9\ndata: {data}\n\n");
        // Cut anywhere, a keep-alive between.
        let whole = format!(":\n\n{event}");
        let (a, b) = whole.split_at(17);
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(a.to_owned())),
            Ok(bytes::Bytes::from(b.to_owned())),
        ];
        let out: Vec<u8> = in_words(futures_util::stream::iter(chunks), Lang::En)
            .map(|c| c.unwrap().to_vec())
            .concat()
            .await;
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(":\n\nevent: anomaly\nid: 9\ndata: {"),
            "{out}"
        );
        assert!(out.ends_with("}\n\n"), "{out}");
        let line = out.lines().find(|l| l.starts_with("data:")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line[5..]).unwrap();
        assert_eq!(
            v["text"],
            "Container C-1 went from 100.0 kg to 60.0 kg (a change of 40.00%)."
        );
        assert_eq!(v["event_seq"], 9);
    }

    #[test]
    fn cookies_are_found_by_name_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; custodian_lang=en"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("custodian_session=cst1.x.y"),
        );
        assert_eq!(cookie(&h, "custodian_lang"), Some("en"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("cst1.x.y"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(lang_of(&h), Lang::En);
    }

    #[test]
    fn only_this_hosts_origin_may_post() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!same_origin(&h), "no Origin");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
