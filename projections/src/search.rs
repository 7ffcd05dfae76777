//! The platform's full-text search index: anomaly descriptions, manifest notes and inspection notes,
//! kept in a tantivy index that is a projection of the event log like any other read model (drop the
//! directory and it is rebuilt from the log).
//!
//! # Tokenizing mixed Chinese and English
//!
//! tantivy's default tokenizer does not segment CJK text: a whole run of Han characters would become one
//! token, so a word inside a sentence could never be found. The index registers its own tokenizer,
//! [`CJK_TOKENIZER_NAME`] (`"cjk"`, [`CjkTokenizer`]):
//!
//! * a run of CJK characters (Han, Hiragana/Katakana, Hangul; CJK punctuation such as `，。、` is a
//!   separator, not part of a run) becomes its overlapping character bigrams: `危险废物` →
//!   `危险`, `险废`, `废物`; a run of a single character becomes that unigram;
//! * everything else is split on non-alphanumeric characters and lowercased: `Container C-9 超过20%` →
//!   `container`, `c`, `9`, `超过`, `20`. Words longer than [`MAX_WORD_BYTES`] are dropped.
//!
//! Why bigrams rather than a dictionary segmenter: there is no dictionary to ship or keep current
//! (waste codes, place and company names are rarely in one), recall is there for any word of any length,
//! and precision comes from the query side: queries go through the same tokenizer, and *every* token of
//! the query must occur in a hit. Within one CJK run of the query the bigrams must even be adjacent and
//! in order (a phrase query), so a CJK query matches exactly the texts containing it as a substring:
//! `废物` does not match `废水` (they share only the character `废`), and `危险废物` does not match a text
//! that merely contains `危险` here and `废物` there.
//!
//! A query consisting of a single CJK character (`废`) cannot be looked up as one term, since the index
//! holds bigrams; it is matched against every indexed bigram containing the character (a regex over the
//! term dictionary), so it finds `废物` and `废水` alike. That scans the term dictionary, which is fine at
//! the platform's size.
//!
//! # Queries are plain words
//!
//! User input never reaches tantivy's `QueryParser`: the query is tokenized and the tantivy query is built
//! from the tokens, so `enterprise_id:E-1 OR x` is just the words `enterprise`, `id`, `e`, `1`, `or`, `x`,
//! all required. Filters ([`SearchFilter`]) are separate, exact, non-scoring term conditions.
//!
//! # Exactly once
//!
//! Each [`SearchIndex::apply`] replaces the batch's documents (delete by `doc_id` + add, so re-applying a
//! batch is idempotent) and commits them together with the log sequence they cover, in the commit
//! payload of the same tantivy commit. [`SearchIndex::checkpoint`] reads it back, also after a restart,
//! so the tailer resumes right after the last applied event: never an event twice, never one lost.
//!
//! All methods block (tantivy does file I/O and joins its indexing threads); async callers use
//! `spawn_blocking`. [`SearchIndex`] is `Send + Sync`; writes are serialized by a mutex, searches run
//! concurrently against the last committed state.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;

use crate::sealed_dir::{SealKey, SealedDirectory};
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, Occur, PhraseQuery, Query, RegexQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    Value,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// The name under which [`CjkTokenizer`] is registered and which the `text` field uses.
pub const CJK_TOKENIZER_NAME: &str = "cjk";

/// Non-CJK words longer than this (in UTF-8 bytes) are not indexed (nor searched for).
pub const MAX_WORD_BYTES: usize = 128;

/// The writer's memory budget (one indexing thread): texts are short and come in small batches.
const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// One searchable text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchDoc {
    /// Stable identity: "anomaly:<hex id>", "manifest:<id>", "note:<seq>". Applying a doc with an id the
    /// index already holds replaces it (delete term + add), so re-applying a batch is idempotent.
    pub doc_id: String,
    /// "anomaly" | "manifest" | "note"
    pub kind: String,
    pub enterprise_id: Option<String>,
    /// 6-digit province code of the enterprise, if known
    pub province_code: Option<String>,
    pub container_id: Option<String>,
    pub text: String,
    /// The log sequence of the event the doc came from.
    pub seq: u64,
    /// UTC ns
    pub at_ns: i64,
}

/// The kinds of documents the index holds (`SearchFilter::kind`).
pub const DOC_KINDS: [&str; 3] = ["anomaly", "manifest", "note"];

/// Restricts a search. Every condition that is set must hold (AND); `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// Only docs of one of these enterprises. `Some(vec![])` matches nothing (no enterprise is visible),
    /// and docs without an enterprise never match a `Some`.
    pub enterprise_ids: Option<Vec<String>>,
    /// Only docs whose enterprise is in this 6-digit province code (exact match).
    pub province_code: Option<String>,
    /// Only docs of this kind ("anomaly" | "manifest" | "note").
    pub kind: Option<String>,
}

/// A search result: the stored doc and its BM25 score (higher is better).
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub doc: SearchDoc,
    pub score: f32,
}

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
struct Fields {
    doc_id: Field,
    kind: Field,
    enterprise_id: Field,
    province_code: Field,
    container_id: Field,
    text: Field,
    seq: Field,
    at_ns: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let mut builder = Schema::builder();
        let text_options = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(CJK_TOKENIZER_NAME)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let fields = Fields {
            doc_id: builder.add_text_field("doc_id", STRING | STORED),
            kind: builder.add_text_field("kind", STRING | STORED),
            enterprise_id: builder.add_text_field("enterprise_id", STRING | STORED),
            province_code: builder.add_text_field("province_code", STRING | STORED),
            container_id: builder.add_text_field("container_id", STRING | STORED),
            text: builder.add_text_field("text", text_options),
            seq: builder.add_u64_field("seq", INDEXED | STORED),
            at_ns: builder.add_i64_field("at_ns", STORED),
        };
        (builder.build(), fields)
    }

    fn encode(&self, doc: &SearchDoc) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        out.add_text(self.doc_id, &doc.doc_id);
        out.add_text(self.kind, &doc.kind);
        if let Some(enterprise_id) = &doc.enterprise_id {
            out.add_text(self.enterprise_id, enterprise_id);
        }
        if let Some(province_code) = &doc.province_code {
            out.add_text(self.province_code, province_code);
        }
        if let Some(container_id) = &doc.container_id {
            out.add_text(self.container_id, container_id);
        }
        out.add_text(self.text, &doc.text);
        out.add_u64(self.seq, doc.seq);
        out.add_i64(self.at_ns, doc.at_ns);
        out
    }

    fn decode(&self, doc: &TantivyDocument) -> anyhow::Result<SearchDoc> {
        let text = |field: Field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let required = |field: Field, name: &str| {
            text(field).ok_or_else(|| anyhow!("stored search doc lacks its {name}"))
        };
        Ok(SearchDoc {
            doc_id: required(self.doc_id, "doc_id")?,
            kind: required(self.kind, "kind")?,
            enterprise_id: text(self.enterprise_id),
            province_code: text(self.province_code),
            container_id: text(self.container_id),
            text: required(self.text, "text")?,
            seq: doc
                .get_first(self.seq)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| anyhow!("stored search doc lacks its seq"))?,
            at_ns: doc
                .get_first(self.at_ns)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| anyhow!("stored search doc lacks its at_ns"))?,
        })
    }
}

/// What the index keeps in the payload of each tantivy commit.
#[derive(Debug, Serialize, Deserialize)]
struct CommitPayload {
    /// The log sequence up to which events have been applied.
    upto_seq: u64,
    /// The fingerprint of the first event of the log the index was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_genesis: Option<String>,
}

struct WriterState {
    writer: IndexWriter<TantivyDocument>,
    /// The checkpoint of the last commit (the same value as `SearchIndex::checkpoint`, owned by the lock
    /// holder so that read-modify-write is race free).
    checkpoint: u64,
}

/// The full-text search index. See the [module documentation](self).
pub struct SearchIndex {
    fields: Fields,
    writer: Mutex<WriterState>,
    reader: IndexReader,
    checkpoint: AtomicU64,
    log_genesis: Mutex<Option<String>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("checkpoint", &self.checkpoint())
            .field("num_docs", &self.num_docs())
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating dir and index if missing. Writer memory budget 15-50 MB.
    ///
    /// Fails if another writer (in this or another process) holds the index, or if the directory holds an
    /// index with a different schema (delete the directory: the index is rebuilt from the log).
    ///
    /// Every file rests sealed with `key` ([`crate::sealed_dir`]). An index of the older, unsealed layout
    /// is removed first (it is rebuilt from the log): its files hold ids and texts in the clear.
    pub fn open(dir: &Path, key: SealKey) -> anyhow::Result<SearchIndex> {
        let meta = dir.join("meta.json");
        if let Ok(bytes) = std::fs::read(&meta)
            && !bytes.starts_with(b"CSA1")
        {
            tracing::warn!(
                dir = %dir.display(),
                "the search index is of the older, unsealed layout; removing it (it is rebuilt from the log)"
            );
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the unsealed search index {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating search index directory {}", dir.display()))?;
        let (schema, fields) = Fields::schema();
        let directory = MmapDirectory::open(dir)
            .with_context(|| format!("opening search index directory {}", dir.display()))?;
        let directory = SealedDirectory::new(directory, key);
        let index = Index::builder()
            .schema(schema)
            .open_or_create(directory)
            .with_context(|| {
                format!(
                    "opening the search index in {} (if the schema changed, delete the directory to \
                     rebuild the index from the log)",
                    dir.display()
                )
            })?;
        // Tokenizers are not persisted with the index: register ours on every open, before any writer or
        // reader uses the `text` field.
        index
            .tokenizers()
            .register(CJK_TOKENIZER_NAME, CjkTokenizer);

        let (checkpoint, log_genesis) = match index.load_metas()?.payload {
            None => (0, None),
            Some(payload) => {
                let p = serde_json::from_str::<CommitPayload>(&payload)
                    .with_context(|| format!("search index commit payload {payload:?}"))?;
                (p.upto_seq, p.log_genesis)
            }
        };
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .with_context(|| format!("taking the search index writer in {}", dir.display()))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("opening the search index reader")?;
        Ok(SearchIndex {
            fields,
            writer: Mutex::new(WriterState { writer, checkpoint }),
            reader,
            checkpoint: AtomicU64::new(checkpoint),
            log_genesis: Mutex::new(log_genesis),
        })
    }

    /// The fingerprint of the first event of the log the index was built from, as last committed (or set).
    pub fn log_genesis(&self) -> Option<String> {
        self.log_genesis.lock().expect("genesis lock").clone()
    }

    /// Records which log the index is built from; kept with every following commit.
    pub fn set_log_genesis(&self, genesis: &str) {
        *self.log_genesis.lock().expect("genesis lock") = Some(genesis.to_owned());
    }

    /// The log sequence up to which the index has applied events: kept in the commit payload of the last
    /// tantivy commit (0 for a new index). This is what makes it exactly-once: docs and checkpoint commit
    /// together.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Replaces/adds `docs`, then commits with payload = `upto_seq` (even if docs is empty, when upto_seq
    /// moved). Reloads the reader so searches see it at once.
    ///
    /// Within `docs`, a later doc with the same `doc_id` wins. The checkpoint never moves backwards: an
    /// `upto_seq` below the current checkpoint still applies the docs but keeps the checkpoint. On error
    /// before the commit nothing of the batch is committed (the writer is rolled back); either way the
    /// batch can simply be retried.
    pub fn apply(&self, docs: &[SearchDoc], upto_seq: u64) -> anyhow::Result<()> {
        if let Some(doc) = docs.iter().find(|doc| doc.doc_id.is_empty()) {
            bail!(
                "search doc without a doc_id (kind {:?}, seq {})",
                doc.kind,
                doc.seq
            );
        }
        let mut state = self
            .writer
            .lock()
            .map_err(|_| anyhow!("the search index writer lock is poisoned"))?;
        let current = state.checkpoint;
        if docs.is_empty() && upto_seq <= current {
            return Ok(());
        }
        if upto_seq < current {
            tracing::warn!(
                upto_seq,
                checkpoint = current,
                "search index: batch below the checkpoint, applying its docs but keeping the checkpoint"
            );
        }
        let checkpoint = upto_seq.max(current);
        if let Err(err) = self.write_and_commit(&mut state.writer, docs, checkpoint) {
            // Drop whatever the failed batch left pending, so it cannot ride along with the next commit.
            if let Err(rollback_err) = state.writer.rollback() {
                tracing::warn!(error = %rollback_err, "search index: rollback after a failed apply failed");
            }
            return Err(err);
        }
        state.checkpoint = checkpoint;
        self.checkpoint.store(checkpoint, Ordering::Release);
        drop(state);
        self.reader
            .reload()
            .context("reloading the search index reader after a commit")
    }

    fn write_and_commit(
        &self,
        writer: &mut IndexWriter<TantivyDocument>,
        docs: &[SearchDoc],
        checkpoint: u64,
    ) -> anyhow::Result<()> {
        for doc in docs {
            writer.delete_term(Term::from_field_text(self.fields.doc_id, &doc.doc_id));
            writer
                .add_document(self.fields.encode(doc))
                .with_context(|| format!("adding search doc {}", doc.doc_id))?;
        }
        let payload = serde_json::to_string(&CommitPayload {
            upto_seq: checkpoint,
            log_genesis: self.log_genesis(),
        })?;
        let mut prepared = writer
            .prepare_commit()
            .context("preparing the search index commit")?;
        prepared.set_payload(&payload);
        prepared.commit().context("committing the search index")?;
        Ok(())
    }

    /// Hits for `query`, best first, at most `limit`, within `filter`. An empty/whitespace-only query is an
    /// error (anyhow with a clear message). Query syntax is plain words, not tantivy query language: do not
    /// let user input reach QueryParser syntax (no injection of field:value etc.).
    ///
    /// Every token of the query must occur in a hit (see the module documentation). A query that has
    /// characters but no searchable token (only punctuation, say) is an error too.
    pub fn search(
        &self,
        query: &str,
        filter: &SearchFilter,
        limit: usize,
    ) -> anyhow::Result<Vec<SearchHit>> {
        if query.trim().is_empty() {
            bail!("the search query is empty: enter at least one word");
        }
        // Punctuation or symbols only: nothing to look for, so nothing is found.
        let Some(text_query) = self.text_query(query)? else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query)];
        if let Some(enterprise_ids) = &filter.enterprise_ids {
            if enterprise_ids.is_empty() {
                return Ok(Vec::new());
            }
            let terms = enterprise_ids
                .iter()
                .map(|id| Term::from_field_text(self.fields.enterprise_id, id));
            clauses.push((Occur::Must, non_scoring(Box::new(TermSetQuery::new(terms)))));
        }
        if let Some(province_code) = &filter.province_code {
            clauses.push((
                Occur::Must,
                non_scoring(exact(self.fields.province_code, province_code)),
            ));
        }
        if let Some(kind) = &filter.kind {
            clauses.push((Occur::Must, non_scoring(exact(self.fields.kind, kind))));
        }
        let query = BooleanQuery::new(clauses);

        let searcher = self.reader.searcher();
        let num_docs = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
        if num_docs == 0 {
            return Ok(Vec::new());
        }
        // `TopDocs` allocates for `limit` (and panics on 0): never more than there are docs.
        let top = searcher
            .search(
                &query,
                &TopDocs::with_limit(limit.min(num_docs)).order_by_score(),
            )
            .context("searching the search index")?;
        top.into_iter()
            .map(|(score, address)| {
                let stored: TantivyDocument = searcher
                    .doc(address)
                    .context("reading a stored search doc")?;
                Ok(SearchHit {
                    doc: self.fields.decode(&stored)?,
                    score,
                })
            })
            .collect()
    }

    /// The query on the `text` field: every token required, each CJK run of the query as a phrase of its
    /// bigrams; `None` when the query holds no word at all.
    fn text_query(&self, query: &str) -> anyhow::Result<Option<Box<dyn Query>>> {
        let field = self.fields.text;
        let pieces = analyze(query);
        if pieces.is_empty() {
            return Ok(None);
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut seen_words = std::collections::HashSet::new();
        let mut rest = pieces.as_slice();
        while let Some(first) = rest.first() {
            let group_len = match first.cjk_run {
                Some(run) => rest.iter().take_while(|p| p.cjk_run == Some(run)).count(),
                None => 1,
            };
            let (group, tail) = rest.split_at(group_len);
            rest = tail;
            let clause: Box<dyn Query> = match group {
                [lone] if lone.cjk_run.is_some() && lone.text.chars().count() == 1 => {
                    // A single CJK character: any indexed unigram or bigram containing it. CJK
                    // characters are never regex metacharacters.
                    let c = &lone.text;
                    Box::new(
                        RegexQuery::from_pattern(&format!("{c}|{c}.|.{c}"), field)
                            .context("building the single-character query")?,
                    )
                }
                [single] => {
                    if !seen_words.insert(single.text.as_str()) {
                        continue;
                    }
                    Box::new(TermQuery::new(
                        Term::from_field_text(field, &single.text),
                        IndexRecordOption::WithFreqs,
                    ))
                }
                bigrams => Box::new(PhraseQuery::new(
                    bigrams
                        .iter()
                        .map(|p| Term::from_field_text(field, &p.text))
                        .collect(),
                )),
            };
            clauses.push((Occur::Must, clause));
        }
        Ok(Some(Box::new(BooleanQuery::new(clauses))))
    }

    /// Number of docs.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// Docs whose raw (untokenized) `field` is exactly `value`.
fn exact(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

/// A filter clause: restricts the hits without changing their scores.
fn non_scoring(query: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(query, 0.0))
}

/// The tokenizer registered as [`CJK_TOKENIZER_NAME`]: CJK runs as overlapping bigrams (a lone CJK
/// character as its unigram), other text split on non-alphanumeric characters and lowercased. See the
/// module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CjkTokenizer;

/// The tokens of one text, produced by [`CjkTokenizer`].
#[derive(Debug)]
pub struct CjkTokenStream {
    tokens: Vec<Token>,
    /// Index of the current token + 1 (0 before the first `advance`).
    next: usize,
    /// Returned by `token()` before the first `advance`.
    empty: Token,
}

impl Tokenizer for CjkTokenizer {
    type TokenStream<'a> = CjkTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CjkTokenStream {
        let tokens = analyze(text)
            .into_iter()
            .enumerate()
            .map(|(position, piece)| Token {
                offset_from: piece.offset_from,
                offset_to: piece.offset_to,
                position,
                text: piece.text,
                position_length: 1,
            })
            .collect();
        CjkTokenStream {
            tokens,
            next: 0,
            empty: Token::default(),
        }
    }
}

impl TokenStream for CjkTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        match self.next.checked_sub(1) {
            Some(i) => &self.tokens[i],
            None => &self.empty,
        }
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) => &mut self.tokens[i],
            None => &mut self.empty,
        }
    }
}

/// One token of [`analyze`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    text: String,
    /// Byte offsets of the token's source in the text.
    offset_from: usize,
    offset_to: usize,
    /// For CJK grams: the number of the CJK run they come from (consecutive grams of one run share it).
    cjk_run: Option<usize>,
}

/// The tokens of `text`, in order. See [`CjkTokenizer`].
fn analyze(text: &str) -> Vec<Piece> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(offset, _)| offset);
    let mut pieces = Vec::new();
    let mut runs = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let start = i;
        if is_cjk(c) {
            while i < chars.len() && is_cjk(chars[i].1) {
                i += 1;
            }
            let run = &chars[start..i];
            if run.len() == 1 {
                pieces.push(Piece {
                    text: c.to_string(),
                    offset_from: chars[start].0,
                    offset_to: end_of(i),
                    cjk_run: Some(runs),
                });
            } else {
                for (k, pair) in run.windows(2).enumerate() {
                    pieces.push(Piece {
                        text: [pair[0].1, pair[1].1].iter().collect(),
                        offset_from: pair[0].0,
                        offset_to: end_of(start + k + 2),
                        cjk_run: Some(runs),
                    });
                }
            }
            runs += 1;
        } else if c.is_alphanumeric() {
            let mut word = String::new();
            while i < chars.len() && chars[i].1.is_alphanumeric() && !is_cjk(chars[i].1) {
                word.extend(chars[i].1.to_lowercase());
                i += 1;
            }
            if word.len() <= MAX_WORD_BYTES {
                pieces.push(Piece {
                    text: word,
                    offset_from: chars[start].0,
                    offset_to: end_of(i),
                    cjk_run: None,
                });
            }
        } else {
            i += 1;
        }
    }
    pieces
}

/// Whether `c` is a CJK character that [`CjkTokenizer`] turns into bigrams: Han ideographs, Hiragana,
/// Katakana, Hangul. CJK punctuation and symbols (`，。、「」・` etc.) are not.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF // Hangul Jamo
        | 0x3005..=0x3007 // 々 〆 〇
        | 0x3041..=0x309F // Hiragana
        | 0x30A1..=0x30FA | 0x30FC..=0x30FF // Katakana, without ゠ and the middle dot ・
        | 0x3131..=0x318E // Hangul compatibility Jamo
        | 0x31F0..=0x31FF // Katakana phonetic extensions
        | 0x3400..=0x4DBF // CJK unified ideographs extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xA960..=0xA97F // Hangul Jamo extended-A
        | 0xAC00..=0xD7AF // Hangul syllables
        | 0xD7B0..=0xD7FF // Hangul Jamo extended-B
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF66..=0xFF9F // halfwidth Katakana
        | 0xFFA0..=0xFFDC // halfwidth Hangul
        | 0x1B000..=0x1B16F // Kana supplement and extensions
        | 0x20000..=0x323AF // CJK unified ideographs extensions B-H, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    fn test_key() -> crate::sealed_dir::SealKey {
        crate::sealed_dir::SealKey::new(
            &[3; 16],
            std::sync::Arc::new(custodian_events::crypto::OsEntropy),
        )
    }

    use super::*;
    use proptest::prelude::*;
    use tantivy::tokenizer::TextAnalyzer;

    fn texts(text: &str) -> Vec<String> {
        analyze(text).into_iter().map(|p| p.text).collect()
    }

    /// The tokens as tantivy sees them (through a `TextAnalyzer`, as the index uses the tokenizer).
    fn tantivy_tokens(text: &str) -> Vec<Token> {
        let mut analyzer = TextAnalyzer::from(CjkTokenizer);
        let mut stream = analyzer.token_stream(text);
        let mut tokens = Vec::new();
        stream.process(&mut |token| tokens.push(token.clone()));
        tokens
    }

    fn doc(
        doc_id: &str,
        enterprise: Option<&str>,
        province: Option<&str>,
        text: &str,
    ) -> SearchDoc {
        SearchDoc {
            doc_id: doc_id.to_owned(),
            kind: doc_id.split(':').next().unwrap_or("note").to_owned(),
            enterprise_id: enterprise.map(str::to_owned),
            province_code: province.map(str::to_owned),
            container_id: Some("C-9".to_owned()),
            text: text.to_owned(),
            seq: 7,
            at_ns: 1_700_000_000_000_000_000,
        }
    }

    fn ids(hits: &[SearchHit]) -> Vec<&str> {
        let mut ids: Vec<&str> = hits.iter().map(|h| h.doc.doc_id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    fn find(index: &SearchIndex, query: &str) -> Vec<String> {
        let hits = index.search(query, &SearchFilter::default(), 100).unwrap();
        let mut ids: Vec<String> = hits.into_iter().map(|h| h.doc.doc_id).collect();
        ids.sort_unstable();
        ids
    }

    fn corpus() -> Vec<SearchDoc> {
        vec![
            doc(
                "anomaly:01",
                Some("E-1"),
                Some("330100"),
                "危险废物贮存超期，请尽快处置",
            ),
            doc(
                "anomaly:02",
                Some("E-2"),
                Some("330100"),
                "工厂排放废水超标",
            ),
            doc(
                "manifest:7",
                Some("E-3"),
                Some("440300"),
                "Container C-9 重量波动 超过20%",
            ),
            doc(
                "note:9",
                None,
                None,
                "Inspection: WEIGHT fluctuation on the scale, 危险",
            ),
        ]
    }

    #[test]
    fn cjk_run_becomes_overlapping_bigrams() {
        assert_eq!(
            texts("危险废物贮存超期"),
            ["危险", "险废", "废物", "物贮", "贮存", "存超", "超期"]
        );
        // A lone CJK character is its unigram; CJK punctuation separates runs.
        assert_eq!(texts("水"), ["水"]);
        assert_eq!(texts("废物，水。危险"), ["废物", "水", "危险"]);
        // Kana and Hangul are CJK too.
        assert_eq!(texts("カタカナ"), ["カタ", "タカ", "カナ"]);
        assert_eq!(texts("한국어"), ["한국", "국어"]);
    }

    #[test]
    fn mixed_text_gives_lowercased_words_digits_and_bigrams() {
        assert_eq!(
            texts("Container C-9 重量波动 超过20%"),
            ["container", "c", "9", "重量", "量波", "波动", "超过", "20"]
        );
        assert_eq!(texts("ÉTÉ abc123"), ["été", "abc123"]);
        assert!(texts("  ,.!%  ").is_empty());
        assert!(texts(&"x".repeat(MAX_WORD_BYTES + 1)).is_empty());
    }

    #[test]
    fn token_stream_reports_offsets_and_positions() {
        let text = "C-9 危险废物";
        let tokens = tantivy_tokens(text);
        let summary: Vec<(&str, &str, usize)> = tokens
            .iter()
            .map(|t| {
                (
                    t.text.as_str(),
                    &text[t.offset_from..t.offset_to],
                    t.position,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("c", "C", 0),
                ("9", "9", 1),
                ("危险", "危险", 2),
                ("险废", "险废", 3),
                ("废物", "废物", 4),
            ]
        );
        assert!(tantivy_tokens("").is_empty());
    }

    proptest! {
        #[test]
        fn tokens_are_well_formed(text in "[a-zA-Z0-9 ,.\\-%危险废物水超过한국カナ，。]{0,40}") {
            let tokens = tantivy_tokens(&text);
            for (i, token) in tokens.iter().enumerate() {
                prop_assert_eq!(token.position, i);
                prop_assert!(!token.text.is_empty());
                prop_assert!(token.offset_from < token.offset_to);
                let source = &text[token.offset_from..token.offset_to];
                prop_assert_eq!(source.to_lowercase(), token.text.clone());
            }
        }
    }

    #[test]
    fn finds_chinese_words_inside_longer_text_but_not_other_words() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        index.apply(&corpus(), 10).unwrap();

        assert_eq!(find(&index, "危险废物"), ["anomaly:01"]);
        assert_eq!(find(&index, "贮存"), ["anomaly:01"]);
        assert_eq!(find(&index, "废物"), ["anomaly:01"]);
        assert_eq!(find(&index, "废水"), ["anomaly:02"]);
        assert_eq!(find(&index, "危险"), ["anomaly:01", "note:9"]);
        // The bigrams of a CJK word must be adjacent: 危险 and 废物 both occur in 危险废物贮存超期, but
        // 危险超期 does not.
        assert!(find(&index, "危险超期").is_empty());
        // Words are ANDed: 危险 occurs in two docs, weight only in one of them.
        assert_eq!(find(&index, "危险 weight"), ["note:9"]);
        assert!(find(&index, "危险 废水").is_empty());
        // A single character finds every word containing it.
        assert_eq!(find(&index, "废"), ["anomaly:01", "anomaly:02"]);
        assert_eq!(find(&index, "超过20"), ["manifest:7"]);

        // Repeated bigrams in one phrase.
        index
            .apply(&[doc("note:40", None, None, "他笑:哈哈哈哈")], 11)
            .unwrap();
        assert_eq!(find(&index, "哈哈哈"), ["note:40"]);
        assert_eq!(find(&index, "笑"), ["note:40"]);
    }

    #[test]
    fn english_search_is_case_insensitive() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        index.apply(&corpus(), 10).unwrap();

        assert_eq!(find(&index, "weight"), ["note:9"]);
        assert_eq!(find(&index, "CONTAINER"), ["manifest:7"]);
        assert_eq!(find(&index, "Fluctuation Weight"), ["note:9"]);
        assert_eq!(find(&index, "c-9"), ["manifest:7"]);
        assert!(find(&index, "container weight").is_empty());
    }

    #[test]
    fn hits_carry_the_stored_doc_and_a_score() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        let docs = corpus();
        index.apply(&docs, 10).unwrap();

        let hits = index.search("重量", &SearchFilter::default(), 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].doc, docs[2]);
        assert!(hits[0].score > 0.0);
        let hits = index
            .search("Inspection", &SearchFilter::default(), 10)
            .unwrap();
        assert_eq!(hits[0].doc, docs[3]);
        assert_eq!(hits[0].doc.enterprise_id, None);

        // Best first, at most `limit`.
        let more = vec![
            doc("note:20", None, None, "泄漏 泄漏 泄漏"),
            doc(
                "note:21",
                None,
                None,
                "泄漏 and a lot of other words around it here",
            ),
        ];
        index.apply(&more, 11).unwrap();
        let hits = index.search("泄漏", &SearchFilter::default(), 10).unwrap();
        assert_eq!(ids(&hits), ["note:20", "note:21"]);
        assert_eq!(hits[0].doc.doc_id, "note:20");
        assert!(hits[0].score >= hits[1].score);
        assert_eq!(
            index
                .search("泄漏", &SearchFilter::default(), 1)
                .unwrap()
                .len(),
            1
        );
        assert!(
            index
                .search("泄漏", &SearchFilter::default(), 0)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            index
                .search("泄漏", &SearchFilter::default(), usize::MAX)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn filters_by_enterprise_province_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        let docs = vec![
            doc("anomaly:a", Some("E-1"), Some("330100"), "泄漏报警"),
            doc("anomaly:b", Some("E-2"), Some("330100"), "泄漏报警"),
            doc("manifest:c", Some("E-3"), Some("440300"), "泄漏报警"),
            doc("note:d", None, None, "泄漏报警"),
        ];
        index.apply(&docs, 4).unwrap();
        let search = |filter: SearchFilter| index.search("泄漏", &filter, 10).unwrap();
        let enterprises = |list: &[&str]| SearchFilter {
            enterprise_ids: Some(list.iter().map(|s| s.to_string()).collect()),
            ..SearchFilter::default()
        };

        assert_eq!(search(SearchFilter::default()).len(), 4);
        assert_eq!(ids(&search(enterprises(&["E-1"]))), ["anomaly:a"]);
        assert_eq!(
            ids(&search(enterprises(&["E-1", "E-3", "E-404"]))),
            ["anomaly:a", "manifest:c"]
        );
        assert!(search(enterprises(&[])).is_empty());
        let province = |code: &str| SearchFilter {
            province_code: Some(code.to_owned()),
            ..SearchFilter::default()
        };
        assert_eq!(ids(&search(province("330100"))), ["anomaly:a", "anomaly:b"]);
        assert_eq!(ids(&search(province("440300"))), ["manifest:c"]);
        assert!(search(province("3301")).is_empty());
        let both = SearchFilter {
            province_code: Some("330100".to_owned()),
            ..enterprises(&["E-2", "E-3"])
        };
        assert_eq!(ids(&search(both)), ["anomaly:b"]);
        let kind = SearchFilter {
            kind: Some("note".to_owned()),
            ..SearchFilter::default()
        };
        assert_eq!(ids(&search(kind)), ["note:d"]);

        // Filters do not change scores: the same text scores the same with or without them.
        let all = search(SearchFilter::default());
        let one = search(enterprises(&["E-1"]));
        let unfiltered = all.iter().find(|h| h.doc.doc_id == "anomaly:a").unwrap();
        assert_eq!(one[0].score, unfiltered.score);
    }

    #[test]
    fn applying_a_batch_twice_equals_applying_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        let docs = corpus();
        index.apply(&docs, 10).unwrap();
        let once = (
            index.num_docs(),
            find(&index, "危险"),
            index.search("危险", &SearchFilter::default(), 10).unwrap(),
        );
        index.apply(&docs, 10).unwrap();
        let twice = (
            index.num_docs(),
            find(&index, "危险"),
            index.search("危险", &SearchFilter::default(), 10).unwrap(),
        );
        assert_eq!(once.0, 4);
        assert_eq!(once.0, twice.0);
        assert_eq!(once.1, twice.1);
        let docs_of = |hits: &[SearchHit]| hits.iter().map(|h| h.doc.clone()).collect::<Vec<_>>();
        assert_eq!(docs_of(&once.2), docs_of(&twice.2));
        assert_eq!(index.checkpoint(), 10);

        // A doc with a known id replaces the old one.
        let mut changed = docs[1].clone();
        changed.text = "废水已处理".to_owned();
        index.apply(&[changed.clone()], 11).unwrap();
        assert_eq!(index.num_docs(), 4);
        assert!(find(&index, "超标").is_empty());
        let hits = index.search("废水", &SearchFilter::default(), 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].doc, changed);

        // Within one batch, the last doc with an id wins.
        let mut first = docs[0].clone();
        first.text = "第一版".to_owned();
        let mut second = docs[0].clone();
        second.text = "第二版".to_owned();
        index.apply(&[first, second], 12).unwrap();
        assert_eq!(index.num_docs(), 4);
        assert!(find(&index, "第一版").is_empty());
        assert_eq!(find(&index, "第二版"), ["anomaly:01"]);
    }

    #[test]
    fn checkpoint_commits_with_the_docs_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = SearchIndex::open(dir.path(), test_key()).unwrap();
            assert_eq!(index.checkpoint(), 0);
            assert_eq!(index.num_docs(), 0);
            assert!(find(&index, "危险").is_empty());
            index.apply(&corpus(), 42).unwrap();
            assert_eq!(index.checkpoint(), 42);
        }
        {
            let index = SearchIndex::open(dir.path(), test_key()).unwrap();
            assert_eq!(index.checkpoint(), 42);
            assert_eq!(index.num_docs(), 4);
            // The tokenizer is registered again on reopen.
            assert_eq!(find(&index, "废物"), ["anomaly:01"]);
            // An empty batch still moves the checkpoint...
            index.apply(&[], 50).unwrap();
            assert_eq!(index.checkpoint(), 50);
            // ...but never backwards.
            index.apply(&[], 49).unwrap();
            index
                .apply(&[doc("note:60", None, None, "迟到")], 45)
                .unwrap();
            assert_eq!(index.checkpoint(), 50);
            assert_eq!(index.num_docs(), 5);
        }
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        assert_eq!(index.checkpoint(), 50);
        assert_eq!(index.num_docs(), 5);
        assert_eq!(find(&index, "迟到"), ["note:60"]);
    }

    #[test]
    fn query_language_is_not_interpreted() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        let mut docs = corpus();
        docs.push(doc(
            "note:30",
            Some("E-9"),
            None,
            "text foo, or enterprise_id E-1!",
        ));
        index.apply(&docs, 30).unwrap();

        // Only the doc containing all of the words matches; no field:value, no OR.
        assert_eq!(find(&index, "text:foo OR enterprise_id:E-1"), ["note:30"]);
        assert!(find(&index, "enterprise_id:E-1").len() == 1);
        assert!(find(&index, "kind:anomaly").is_empty());
        for query in [
            "\"unbalanced (quote",
            "foo* ?",
            "foo^2 AND -bar",
            "[a TO z]",
            "废物~2",
            "/废.*/",
        ] {
            index
                .search(query, &SearchFilter::default(), 10)
                .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        }
        // Punctuation only: nothing to search for, nothing found (not a refusal: the words were valid).
        for query in ["*:*", "`", ".\u{9c}", "\u{84}"] {
            let hits = index.search(query, &SearchFilter::default(), 10).unwrap();
            assert!(hits.is_empty(), "{query:?}: {hits:?}");
        }
    }

    #[test]
    fn empty_query_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        for query in ["", "   ", "\t\n "] {
            let err = index
                .search(query, &SearchFilter::default(), 10)
                .unwrap_err();
            assert!(err.to_string().contains("empty"), "{err}");
        }
    }

    #[test]
    fn rejects_docs_without_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), test_key()).unwrap();
        let err = index.apply(&[doc("", None, None, "x")], 1).unwrap_err();
        assert!(err.to_string().contains("doc_id"), "{err}");
        assert_eq!(index.checkpoint(), 0);
    }

    #[test]
    fn search_index_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SearchIndex>();
    }
}
