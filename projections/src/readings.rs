//! The InfluxDB read model: every reading as a point of measurement `readings`.
//!
//! - Tags (few values each, so few series): `enterprise_id`, `province_code`, `terminal_id`, `kind`, and
//!   `stage` when the reading names one. Never `seq` or a container id: those would make a series per
//!   reading or per container.
//! - Fields: `value` (float, in the kind's base unit: kg, m, °C, %RH), `seq` (the terminal's sequence),
//!   `event_seq` (the log's), `suspect` (whether the Hampel filter flagged it), `container_id` (string).
//! - Timestamp: `measured_at` truncated to the millisecond plus `seq mod 1,000,000` nanoseconds. A
//!   terminal's readings of one kind then never share a point, even two measured in the same millisecond,
//!   and a reading always maps to the same point, so a batch written twice overwrites itself. The exact
//!   `measured_at` stays in the log (and in the PostgreSQL custody chain).
//!
//! The checkpoint is itself a point (`custodian_checkpoint`, tag `projection=readings`, timestamp 0), written
//! after the batch's points: a crash between the two writes the batch again, which changes nothing. It
//! lives in the same database as the points, so dropping the database starts the model over from 0. Each
//! InfluxDB write request costs a WAL fsync, so the checkpoint is stored at most once a second (or after
//! `CHECKPOINT_GAP_MAX` events); a restart re-applies what came after it, which changes nothing either.
//!
//! A `ReadingSuspect` rewrites its reading's point with `suspect=true`; when the reading is not in the same
//! batch it is read back from the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use custodian_events::reading::Reading;
use custodian_events::{Envelope, Event};
use custodian_log::EventLog;

use crate::directory::{Directory, SharedDirectory};
use crate::influx::{InfluxClient, InfluxError, Line};
use crate::runner::{BoxFuture, Family, Prepared, Projection, ProjectionError};

pub const MEASUREMENT: &str = "readings";
pub const CHECKPOINT_MEASUREMENT: &str = "custodian_checkpoint";

/// The stored checkpoint trails by at most this long…
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// …or this many events.
const CHECKPOINT_GAP_MAX: u64 = 50_000;

fn influx_error(doing: &str, e: InfluxError) -> ProjectionError {
    let m = format!("{doing}: {e}");
    if e.is_unavailable() {
        ProjectionError::Unavailable(m)
    } else {
        ProjectionError::Failed(m)
    }
}

/// The point timestamp of a reading (see the module doc).
pub fn point_ns(measured_at_ns: i64, seq: u64) -> i64 {
    measured_at_ns - measured_at_ns.rem_euclid(1_000_000) + (seq % 1_000_000) as i64
}

/// The line of one reading.
pub fn reading_line(r: &Reading, event_seq: u64, suspect: bool, dir: &Directory) -> String {
    let terminal = r.terminal_id.as_str();
    let enterprise = dir.enterprise_of(terminal).unwrap_or("");
    let province = dir.province_of(enterprise).unwrap_or("");
    let mut line = Line::new(MEASUREMENT)
        .tag("enterprise_id", enterprise)
        .tag("province_code", province)
        .tag("terminal_id", terminal)
        .tag("kind", r.kind.name());
    if let Some(s) = r.stage {
        line = line.tag("stage", s.name());
    }
    line = line
        .field_f64(
            "value",
            r.value as f64 / r.kind.resolution_per_base() as f64,
        )
        .field_i64("seq", r.seq as i64)
        .field_i64("event_seq", event_seq as i64)
        .field_bool("suspect", suspect);
    if let Some(c) = &r.container_id {
        line = line.field_str("container_id", c.as_str());
    }
    line.timestamp_ns(point_ns(r.measured_at_ns, r.seq)).build()
}

/// The generations of the InfluxDB model: generation 1 writes to the configured database (v1) or bucket
/// (v2), generation N to `<it>_gN`. The live generation is kept in `DATA_DIR/projections/influx.generation`.
#[derive(Clone)]
pub struct InfluxFamily {
    client: InfluxClient,
    base: String,
    pointer: PathBuf,
    log: Arc<dyn EventLog>,
    directory: SharedDirectory,
}

impl InfluxFamily {
    pub fn new(
        client: InfluxClient,
        state_dir: &std::path::Path,
        log: Arc<dyn EventLog>,
        directory: SharedDirectory,
    ) -> InfluxFamily {
        InfluxFamily {
            base: client.target().to_owned(),
            client,
            pointer: crate::pointer::path(state_dir, "influx"),
            log,
            directory,
        }
    }

    pub fn target_of(&self, generation: u32) -> String {
        if generation <= 1 {
            self.base.clone()
        } else {
            format!("{}_g{generation}", self.base)
        }
    }
}

impl Family for InfluxFamily {
    fn name(&self) -> &'static str {
        "influx"
    }

    crate::pointer::family_generations!(pointer);

    fn open(&self, generation: u32) -> Arc<dyn Projection> {
        Arc::new(InfluxProjection {
            client: self.client.with_target(&self.target_of(generation)),
            stored: std::sync::Mutex::new((0, None)),
            genesis: std::sync::Mutex::new(None),
            generation,
            log: self.log.clone(),
            directory: self.directory.clone(),
        })
    }

    fn discard(&self, generation: u32) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(async move {
            self.client
                .with_target(&self.target_of(generation))
                .drop_target()
                .await
                .map_err(|e| influx_error("dropping a replaced database", e))
        })
    }
}

pub struct InfluxProjection {
    client: InfluxClient,
    /// The checkpoint last stored, and when.
    stored: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
    genesis: std::sync::Mutex<Option<String>>,
    generation: u32,
    log: Arc<dyn EventLog>,
    directory: SharedDirectory,
}

impl InfluxProjection {
    pub fn client(&self) -> &InfluxClient {
        &self.client
    }

    /// The lines a batch writes (the checkpoint's excepted). Blocking: a flag on a reading of an earlier
    /// batch reads that reading back from the log.
    fn lines(&self, events: &[Envelope]) -> Result<Vec<String>, ProjectionError> {
        // Which readings of this batch a later event of it flags.
        let mut suspect: HashMap<(&str, u64), ()> = HashMap::new();
        let mut in_batch: HashMap<(&str, u64), ()> = HashMap::new();
        for e in events {
            match &e.event {
                Event::ReadingSuspect(s) => {
                    suspect.insert((s.terminal_id.as_str(), s.seq), ());
                }
                Event::ReadingRecorded(r) => {
                    in_batch.insert((r.terminal_id.as_str(), r.seq), ());
                }
                _ => {}
            }
        }
        // Flags of readings from earlier batches: read them back.
        let mut earlier = Vec::new();
        for e in events {
            if let Event::ReadingSuspect(s) = &e.event
                && !in_batch.contains_key(&(s.terminal_id.as_str(), s.seq))
            {
                let at = s.cause_seq;
                let read = self.log.read(at, 1).map_err(|e| {
                    ProjectionError::Failed(format!("reading event {at} from the log: {e}"))
                })?;
                match read.into_iter().next() {
                    Some(Envelope {
                        seq,
                        event: Event::ReadingRecorded(r),
                        ..
                    }) if r.terminal_id == s.terminal_id && r.seq == s.seq => {
                        earlier.push((r, seq))
                    }
                    _ => tracing::warn!(
                        terminal = %s.terminal_id,
                        seq = s.seq,
                        cause_seq = at,
                        "a suspect flag whose reading is not at its cause_seq; left unflagged"
                    ),
                }
            }
        }
        let dir = self.directory.read().expect("directory lock");
        let mut lines = Vec::with_capacity(events.len());
        for e in events {
            if let Event::ReadingRecorded(r) = &e.event {
                let flagged = suspect.contains_key(&(r.terminal_id.as_str(), r.seq));
                lines.push(reading_line(r, e.seq, flagged, &dir));
            }
        }
        for (r, seq) in &earlier {
            lines.push(reading_line(r, *seq, true, &dir));
        }
        Ok(lines)
    }
}

impl Projection for InfluxProjection {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &'static str {
        "influx"
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn target(&self) -> String {
        self.client.target().to_owned()
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(event_type, "ReadingRecorded" | "ReadingSuspect")
    }

    fn set_log_genesis(&self, genesis: &str) {
        *self.genesis.lock().expect("genesis lock") = Some(genesis.to_owned());
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Prepared, ProjectionError>> {
        Box::pin(async move {
            self.client
                .ensure_target()
                .await
                .map_err(|e| influx_error("creating the database", e))?;
            let answer = self
                .client
                .query(&format!(
                    "SELECT * FROM \"{CHECKPOINT_MEASUREMENT}\" WHERE \"projection\" = 'readings'"
                ))
                .await
                .map_err(|e| influx_error("reading the checkpoint", e))?;
            let series = answer.pointer("/results/0/series/0");
            let column = |name: &str| {
                let columns = series?.get("columns")?.as_array()?;
                let i = columns.iter().position(|c| c == name)?;
                series?.pointer(&format!("/values/0/{i}")).cloned()
            };
            let seq = column("seq").and_then(|v| v.as_u64()).unwrap_or(0);
            let log_genesis = column("log_genesis").and_then(|v| v.as_str().map(str::to_owned));
            // The first batch after a start stores the checkpoint (and which log it is from) at once.
            *self.stored.lock().expect("checkpoint lock") = (seq, None);
            Ok(Prepared {
                checkpoint: seq,
                log_genesis,
            })
        })
    }

    fn encode(
        &self,
        events: &[Envelope],
    ) -> Result<Option<crate::runner::Encoded>, ProjectionError> {
        Ok(Some(Box::new(self.lines(events)?)))
    }

    fn apply<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.apply_encoded(events, upto, None)
    }

    fn apply_encoded<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
        encoded: Option<crate::runner::Encoded>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let lines = match encoded.map(|e| e.downcast::<Vec<String>>()) {
                Some(Ok(lines)) => *lines,
                _ => self.lines(events)?,
            };
            self.client
                .write_lines(&lines)
                .await
                .map_err(|e| influx_error("writing points", e))?;
            let (stored, at) = *self.stored.lock().expect("checkpoint lock");
            if upto.saturating_sub(stored) < CHECKPOINT_GAP_MAX
                && at.is_some_and(|t| t.elapsed() < CHECKPOINT_INTERVAL)
            {
                return Ok(());
            }
            let mut checkpoint = Line::new(CHECKPOINT_MEASUREMENT)
                .tag("projection", "readings")
                .field_i64("seq", upto as i64);
            if let Some(g) = self.genesis.lock().expect("genesis lock").as_deref() {
                checkpoint = checkpoint.field_str("log_genesis", g);
            }
            let checkpoint = checkpoint.timestamp_ns(0).build();
            self.client
                .write_lines(&[checkpoint])
                .await
                .map_err(|e| influx_error("moving the checkpoint", e))?;
            *self.stored.lock().expect("checkpoint lock") = (upto, Some(std::time::Instant::now()));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_one_millisecond_get_distinct_points_and_keep_them() {
        let t = 1_700_000_000_123_456_789;
        assert_ne!(point_ns(t, 1), point_ns(t, 2));
        assert_eq!(point_ns(t, 7), point_ns(t, 7));
        // Truncated to the millisecond, offset below it.
        assert_eq!(point_ns(t, 1_000_001) - point_ns(t, 0), 1);
        assert_eq!(point_ns(t, 0) % 1_000_000, 0);
    }
}
