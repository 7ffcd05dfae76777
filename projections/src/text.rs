//! The search read model: anomaly descriptions, manifest notes and inspection notes in a tantivy index
//! (see [`crate::search`] for the index and its CJK tokenizer). Generation N lives in
//! `DATA_DIR/search/gN`; the live one is named in `DATA_DIR/projections/search.generation`. The checkpoint
//! is the payload of the index's own commit, so documents and checkpoint commit together.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use custodian_events::{Envelope, Event};

use crate::describe::anomaly_description;
use crate::directory::SharedDirectory;
use crate::runner::{BoxFuture, Family, Prepared, Projection, ProjectionError};
use crate::sealed_dir::SealKey;
use crate::search::{SearchDoc, SearchIndex};

/// How far the stored checkpoint may trail when batches bring no documents.
const CHECKPOINT_GAP_MAX: u64 = 50_000;

#[derive(Clone)]
pub struct SearchFamily {
    root: PathBuf,
    pointer: PathBuf,
    directory: SharedDirectory,
    key: SealKey,
}

impl SearchFamily {
    /// Indexes under `root` (`DATA_DIR/search`), sealed with `key`; the pointer under `state_dir`.
    pub fn new(
        root: PathBuf,
        state_dir: &std::path::Path,
        directory: SharedDirectory,
        key: SealKey,
    ) -> Self {
        SearchFamily {
            pointer: crate::pointer::path(state_dir, "search"),
            root,
            directory,
            key,
        }
    }

    pub fn dir_of(&self, generation: u32) -> PathBuf {
        self.root.join(format!("g{generation}"))
    }
}

impl Family for SearchFamily {
    fn name(&self) -> &'static str {
        "search"
    }

    crate::pointer::family_generations!(pointer);

    fn open(&self, generation: u32) -> Arc<dyn Projection> {
        Arc::new(TextProjection {
            dir: self.dir_of(generation),
            key: self.key.clone(),
            generation,
            index: OnceLock::new(),
            directory: self.directory.clone(),
        })
    }

    fn discard(&self, generation: u32) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(async move {
            let dir = self.dir_of(generation);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ProjectionError::Failed(format!(
                    "removing {}: {e}",
                    dir.display()
                ))),
            }
        })
    }
}

pub struct TextProjection {
    dir: PathBuf,
    key: SealKey,
    generation: u32,
    index: OnceLock<Arc<SearchIndex>>,
    directory: SharedDirectory,
}

impl TextProjection {
    /// The index, once prepared.
    pub fn index(&self) -> Option<Arc<SearchIndex>> {
        self.index.get().cloned()
    }
}

/// The documents a batch adds.
pub fn docs_of(events: &[Envelope], dir: &crate::directory::Directory) -> Vec<SearchDoc> {
    let province = |e: &Option<String>| {
        e.as_deref()
            .and_then(|e| dir.province_of(e).map(str::to_owned))
    };
    let mut docs = Vec::new();
    for env in events {
        match &env.event {
            Event::AnomalyDetected(a) => {
                let (enterprise, _) = dir.scope_of_anomaly(a);
                docs.push(SearchDoc {
                    doc_id: format!("anomaly:{}", hex::encode(a.anomaly_id)),
                    kind: "anomaly".into(),
                    province_code: province(&enterprise),
                    enterprise_id: enterprise,
                    container_id: a.container_id.as_ref().map(ToString::to_string),
                    text: anomaly_description(a),
                    seq: env.seq,
                    at_ns: env.recorded_at_ns,
                });
            }
            Event::ManifestOpened(m) => {
                if let Some(notes) = &m.notes {
                    let enterprise = Some(m.generator_id.to_string());
                    docs.push(SearchDoc {
                        doc_id: format!("manifest:{}", m.id),
                        kind: "manifest".into(),
                        province_code: province(&enterprise),
                        enterprise_id: enterprise,
                        container_id: None,
                        text: format!(
                            "{notes} (联单 manifest {} {} → {}, {})",
                            m.id, m.generator_id, m.receiver_id, m.waste_code
                        ),
                        seq: env.seq,
                        at_ns: env.recorded_at_ns,
                    });
                }
            }
            Event::NoteFiled(n) => {
                let enterprise = Some(n.enterprise_id.to_string());
                docs.push(SearchDoc {
                    doc_id: format!("note:{}", env.seq),
                    kind: "note".into(),
                    province_code: province(&enterprise),
                    enterprise_id: enterprise,
                    container_id: n.container_id.as_ref().map(ToString::to_string),
                    text: format!("{} — {}", n.text, n.author),
                    seq: env.seq,
                    at_ns: n.filed_at_ns,
                });
            }
            _ => {}
        }
    }
    docs
}

impl Projection for TextProjection {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &'static str {
        "search"
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn target(&self) -> String {
        self.dir.display().to_string()
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "AnomalyDetected" | "ManifestOpened" | "NoteFiled"
        )
    }

    fn set_log_genesis(&self, genesis: &str) {
        if let Some(i) = self.index.get() {
            i.set_log_genesis(genesis);
        }
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Prepared, ProjectionError>> {
        Box::pin(async move {
            let prepared = |i: &SearchIndex| Prepared {
                checkpoint: i.checkpoint(),
                log_genesis: i.log_genesis(),
            };
            if let Some(i) = self.index.get() {
                return Ok(prepared(i));
            }
            let (dir, key) = (self.dir.clone(), self.key.clone());
            let index = tokio::task::spawn_blocking(move || SearchIndex::open(&dir, key))
                .await
                .map_err(|e| ProjectionError::Failed(e.to_string()))?
                .map_err(|e| {
                    ProjectionError::Failed(format!(
                        "opening the search index in {}: {e:#}",
                        self.dir.display()
                    ))
                })?;
            let index = self.index.get_or_init(|| Arc::new(index));
            Ok(prepared(index))
        })
    }

    fn apply<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let index = self
                .index
                .get()
                .cloned()
                .ok_or_else(|| ProjectionError::Failed("the index is not open".into()))?;
            let docs = docs_of(events, &self.directory.read().expect("directory lock"));
            // A commit costs an fsync: batches without documents move the stored checkpoint only now
            // and then (starting over from an older one re-scans events that add nothing).
            if docs.is_empty() && upto.saturating_sub(index.checkpoint()) < CHECKPOINT_GAP_MAX {
                return Ok(());
            }
            tokio::task::spawn_blocking(move || index.apply(&docs, upto))
                .await
                .map_err(|e| ProjectionError::Failed(e.to_string()))?
                .map_err(|e| ProjectionError::Failed(format!("writing the search index: {e:#}")))
        })
    }
}
