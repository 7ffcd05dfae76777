//! Which enterprise a terminal belongs to, and which province an enterprise is in: what the read models
//! need to place a reading, learnt from the registrations in the log.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use custodian_events::{Envelope, Event};
use custodian_log::{EventLog, EventLogError};

/// Registrations scanned per step when loading.
const LOAD_STEP: usize = 50_000;

#[derive(Debug, Default, Clone)]
pub struct Directory {
    enterprise_of_terminal: HashMap<String, String>,
    province_of_enterprise: HashMap<String, String>,
}

/// One directory shared by the projections of a node (learning is idempotent, so any of them may teach it).
pub type SharedDirectory = Arc<RwLock<Directory>>;

impl Directory {
    /// Learns from a registration; ignores every other event.
    pub fn learn(&mut self, event: &Event) {
        match event {
            Event::EnterpriseRegistered(e) => {
                self.province_of_enterprise
                    .insert(e.id.to_string(), e.province_code.clone());
            }
            Event::TerminalRegistered(t) => {
                self.enterprise_of_terminal
                    .insert(t.id.to_string(), t.enterprise_id.to_string());
            }
            _ => {}
        }
    }

    pub fn learn_all(&mut self, events: &[Envelope]) {
        for e in events {
            self.learn(&e.event);
        }
    }

    pub fn enterprise_of(&self, terminal: &str) -> Option<&str> {
        self.enterprise_of_terminal
            .get(terminal)
            .map(String::as_str)
    }

    /// The enterprise an anomaly is about (the one it names, else its terminal's) and that enterprise's
    /// province, as far as the registrations tell.
    pub fn scope_of_anomaly(
        &self,
        a: &custodian_events::domain::AnomalyDetected,
    ) -> (Option<String>, Option<String>) {
        let enterprise = a
            .enterprise_id
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| {
                a.terminal_id
                    .as_ref()
                    .and_then(|t| self.enterprise_of(t.as_str()).map(str::to_owned))
            });
        let province = enterprise
            .as_deref()
            .and_then(|e| self.province_of(e).map(str::to_owned));
        (enterprise, province)
    }

    /// The terminals registered to `enterprise`, sorted.
    pub fn terminals_of(&self, enterprise: &str) -> Vec<String> {
        self.enterprise_of_terminal
            .iter()
            .filter(|(_, e)| e.as_str() == enterprise)
            .map(|(t, _)| t.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    pub fn province_of(&self, enterprise: &str) -> Option<&str> {
        self.province_of_enterprise
            .get(enterprise)
            .map(String::as_str)
    }

    /// Every registration in the log (they are few; the scan opens only those).
    pub fn load(log: &dyn EventLog) -> Result<Directory, EventLogError> {
        let mut dir = Directory::default();
        let want = |t: &str| t == "EnterpriseRegistered" || t == "TerminalRegistered";
        let mut from = 1;
        let head = log.last_seq();
        while from <= head {
            let (events, last) = log.read_where(from, LOAD_STEP, &want)?;
            dir.learn_all(&events);
            if last == 0 {
                break;
            }
            from = last + 1;
        }
        Ok(dir)
    }
}
