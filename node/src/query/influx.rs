//! The InfluxQL reads of the InfluxDB read model (written by `custodian_projections::readings`): a
//! terminal's readings, raw or aggregated per interval. The scope is part of the InfluxQL (the
//! `enterprise_id` and `province_code` tags) as well as of the terminal's own read
//! (`postgres::terminal`).

use serde_json::Value;

use crate::query::postgres::Terminal;
use crate::state::Reads;
use crate::tokens::Scope;

pub use custodian_projections::influx::{InfluxClient, InfluxError};

/// Most points one series answer holds; a wider range needs a coarser interval.
pub const SERIES_POINTS_MAX: i64 = 10_000;

/// The live InfluxDB model's client, if it is running.
pub fn client(st: &Reads) -> Option<InfluxClient> {
    st.models.live_model(
        "influx",
        |p: &custodian_projections::readings::InfluxProjection| Some(p.client().clone()),
    )
}

/// Which readings: all of a kind in a range, raw, or one aggregate per interval.
pub struct Readings<'a> {
    /// A reading kind's name (`weight`, …).
    pub kind: &'a str,
    /// The range, Unix ns: `from` included, `to` excluded.
    pub from_ns: i64,
    pub to_ns: i64,
    /// `1m`, `1h` or `1d` (days start at midnight China Standard Time); raw readings without.
    pub every: Option<&'a str>,
    /// `mean`, `min`, `max`, `sum` or `count`, with `every`.
    pub agg: &'a str,
}

/// One point of a series: its columns by name, `time` (Unix ns) and, raw, `value`, `seq`, `suspect`,
/// `container_id`; aggregated, `value` (the aggregate's column).
pub struct Point(pub serde_json::Map<String, Value>);

impl Point {
    pub fn time_ns(&self) -> Option<i64> {
        self.0.get("time").and_then(Value::as_i64)
    }

    pub fn value(&self) -> Option<f64> {
        self.0.get("value").and_then(Value::as_f64)
    }
}

/// Terminal `t`'s readings (`t` as a read in `scope` returned it) that `r` asks for, in time order; raw
/// readings at most [`SERIES_POINTS_MAX`]. Ids match `[A-Za-z0-9._-]` and codes are digits (checked
/// where they were taken in), so they are safe inside single quotes.
pub async fn readings(
    influx: &InfluxClient,
    scope: &Scope,
    t: &Terminal,
    r: &Readings<'_>,
) -> Result<Vec<Point>, InfluxError> {
    let (id, enterprise, kind, from, to) = (&t.id, &t.enterprise_id, r.kind, r.from_ns, r.to_ns);
    let mut filter = format!(
        "\"terminal_id\" = '{id}' AND \"enterprise_id\" = '{enterprise}' AND \"kind\" = '{kind}' \
         AND time >= {from} AND time < {to}"
    );
    if let (Some(p), _) = scope.binds() {
        filter.push_str(&format!(" AND \"province_code\" = '{p}'"));
    }
    let agg = r.agg;
    let influxql = match r.every {
        Some(every) => {
            // Day buckets start at midnight China Standard Time.
            let offset = if every == "1d" { ", -8h" } else { "" };
            format!(
                "SELECT {agg}(\"value\") FROM \"readings\" WHERE {filter} GROUP BY time({every}{offset}) fill(none)"
            )
        }
        None => format!(
            "SELECT \"value\", \"seq\", \"suspect\", \"container_id\" FROM \"readings\" WHERE {filter} LIMIT {SERIES_POINTS_MAX}"
        ),
    };
    let answer = influx.query(&influxql).await?;
    let series = answer.pointer("/results/0/series/0");
    let columns: Vec<String> = series
        .and_then(|s| s["columns"].as_array())
        .map(|c| {
            c.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(series
        .and_then(|s| s["values"].as_array())
        .into_iter()
        .flatten()
        .map(|row| {
            let mut point = serde_json::Map::new();
            for (c, v) in columns.iter().zip(row.as_array().into_iter().flatten()) {
                let key = if c == "time" {
                    "time"
                } else if c == agg {
                    "value"
                } else {
                    c.as_str()
                };
                point.insert(key.to_owned(), v.clone());
            }
            Point(point)
        })
        .collect())
}
