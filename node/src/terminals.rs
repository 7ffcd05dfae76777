//! The terminals the upload path knows: read from the log on first use and kept in a bounded cache.

use std::sync::Arc;

use custodian_events::crypto::Sm2PublicKey;
use custodian_events::envelope::Fingerprint;
use custodian_events::event::{TerminalRegistered, dedupe_key_terminal, dedupe_key_terminal_keys};
use custodian_events::terminal_keys::TerminalKeys;
use custodian_events::{Event, TerminalId};
use custodian_log::{EventLog, EventLogError};

/// Key changes one terminal may have (rotations and revocations). Far beyond any real rotation schedule;
/// it bounds the probe of the log when a terminal is loaded.
pub const TERMINAL_KEY_CHANGES_MAX: u64 = 1024;

/// What the upload path needs to know about a terminal.
pub struct TerminalEntry {
    pub registration: TerminalRegistered,
    pub keys: TerminalKeys,
    /// Parsed verifying keys, by fingerprint, for the usable keys (newest first).
    pub verifiers: Vec<(Fingerprint, Sm2PublicKey)>,
}

/// Terminals for the upload path, read from the log on first use and kept in a bounded cache. A key
/// change on this node invalidates the terminal's entry.
pub struct Registry {
    terminals: moka::sync::Cache<TerminalId, Arc<TerminalEntry>>,
}

impl Registry {
    pub fn new(entries_max: u64) -> Self {
        Registry {
            terminals: moka::sync::Cache::new(entries_max),
        }
    }

    pub fn invalidate(&self, id: &TerminalId) {
        self.terminals.invalidate(id);
    }

    /// The terminal `id` with its keys, if the log holds its registration.
    pub fn terminal(
        &self,
        log: &dyn EventLog,
        id: &TerminalId,
    ) -> Result<Option<Arc<TerminalEntry>>, EventLogError> {
        if let Some(t) = self.terminals.get(id) {
            return Ok(Some(t));
        }
        let Some(registration) = read_event(log, &dedupe_key_terminal(id))? else {
            return Ok(None);
        };
        let Event::TerminalRegistered(registration) = registration else {
            return Ok(None);
        };
        let mut changes = Vec::new();
        for change in 1..=TERMINAL_KEY_CHANGES_MAX {
            match read_event(log, &dedupe_key_terminal_keys(id, change))? {
                Some(e) => changes.push(e),
                None => break,
            }
        }
        let keys = TerminalKeys::from_history(&registration, &changes);
        let verifiers = keys
            .usable()
            .filter_map(|k| Some((k.fingerprint, Sm2PublicKey::from_der(&k.public_key).ok()?)))
            .collect();
        let entry = Arc::new(TerminalEntry {
            registration,
            keys,
            verifiers,
        });
        self.terminals.insert(id.clone(), entry.clone());
        Ok(Some(entry))
    }
}

/// The durable event stored under `key`, if any.
pub(crate) fn read_event(
    log: &dyn EventLog,
    key: &custodian_events::event::DedupeKey,
) -> Result<Option<Event>, EventLogError> {
    let Some(entry) = log.lookup(key)? else {
        return Ok(None);
    };
    // The index may run ahead of durability by one group commit; until then the event is not there.
    Ok(log
        .read(entry.seq, 1)?
        .into_iter()
        .next()
        .filter(|e| e.seq == entry.seq)
        .map(|e| e.event))
}
