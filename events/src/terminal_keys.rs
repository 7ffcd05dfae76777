//! A terminal's signing keys over time: the pure rules for rotation, revocation and which key may vouch
//! for which reading.
//!
//! - The key given at registration is the first key. A rotation adds a new key effective from the
//!   rotation's time; the key before it stays valid for readings *measured before* that time (a terminal's
//!   offline backlog signed before it learnt the new key). The newest key is valid for every reading.
//! - A revoked key verifies nothing, whatever the reading's time.
//! - Every change (rotation or revocation) takes the next change number, which is its dedupe slot in the
//!   log: two administrators changing one terminal's keys at once cannot both succeed.

use crate::Rejection;
use crate::envelope::{Fingerprint, fingerprint};
use crate::event::{Event, TerminalKeyRevoked, TerminalKeyRotated, TerminalRegistered};

/// One key of a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalKey {
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// SHA-256 of `public_key`.
    pub fingerprint: Fingerprint,
    /// Readings measured at or after this instant (UTC ns) need a newer key; `None` for the newest key.
    pub valid_before_ns: Option<i64>,
    pub revoked: bool,
}

impl TerminalKey {
    /// Whether this key may vouch for a reading measured at `measured_at_ns`.
    pub fn covers(&self, measured_at_ns: i64) -> bool {
        !self.revoked && self.valid_before_ns.is_none_or(|b| measured_at_ns < b)
    }
}

/// Every key a terminal has had, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalKeys {
    keys: Vec<TerminalKey>,
    changes: u64,
}

impl TerminalKeys {
    /// Folds the registration and the key changes (in log order) into the terminal's keys.
    pub fn from_history<'a>(
        registration: &TerminalRegistered,
        changes: impl IntoIterator<Item = &'a Event>,
    ) -> Self {
        let mut keys = TerminalKeys::default();
        if let Some(pk) = &registration.public_key {
            keys.keys.push(TerminalKey {
                fingerprint: fingerprint(pk),
                public_key: pk.clone(),
                valid_before_ns: None,
                revoked: false,
            });
        }
        for change in changes {
            keys.apply(change);
        }
        keys
    }

    /// Applies one key change event; other events are ignored.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::TerminalKeyRotated(r) => {
                if let Some(last) = self.keys.last_mut() {
                    last.valid_before_ns = Some(r.effective_from_ns);
                }
                self.keys.push(TerminalKey {
                    fingerprint: fingerprint(&r.public_key),
                    public_key: r.public_key.clone(),
                    valid_before_ns: None,
                    revoked: false,
                });
                self.changes = self.changes.max(r.change);
            }
            Event::TerminalKeyRevoked(r) => {
                for k in self
                    .keys
                    .iter_mut()
                    .filter(|k| k.fingerprint == r.key_fingerprint)
                {
                    k.revoked = true;
                }
                self.changes = self.changes.max(r.change);
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that may still verify something, newest first.
    pub fn usable(&self) -> impl Iterator<Item = &TerminalKey> {
        self.keys.iter().rev().filter(|k| !k.revoked)
    }

    pub fn all(&self) -> &[TerminalKey] {
        &self.keys
    }

    /// The number of changes recorded so far; the next change takes this plus one.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Decides a rotation to `public_key` at `now_ns`: `None` when it is already the current key.
    pub fn decide_rotation(
        &self,
        terminal: &TerminalRegistered,
        public_key: Vec<u8>,
        now_ns: i64,
    ) -> Result<Option<Event>, Rejection> {
        let fp = fingerprint(&public_key);
        if let Some(current) = self.keys.last()
            && current.fingerprint == fp
            && !current.revoked
        {
            return Ok(None);
        }
        if self.keys.iter().any(|k| k.fingerprint == fp) {
            return Err(Rejection::new(
                "key_reused",
                format!(
                    "key {} was used by terminal {} before; rotate to a fresh key",
                    hex::encode(fp),
                    terminal.id
                ),
            ));
        }
        Ok(Some(Event::TerminalKeyRotated(TerminalKeyRotated {
            terminal_id: terminal.id.clone(),
            change: self.changes + 1,
            public_key,
            effective_from_ns: now_ns,
        })))
    }

    /// Decides the revocation of the key with `key_fingerprint`: `None` when it is already revoked.
    pub fn decide_revocation(
        &self,
        terminal: &TerminalRegistered,
        key_fingerprint: Fingerprint,
        now_ns: i64,
    ) -> Result<Option<Event>, Rejection> {
        match self.keys.iter().find(|k| k.fingerprint == key_fingerprint) {
            None => Err(Rejection::new(
                "unknown_key",
                format!(
                    "terminal {} has no key with fingerprint {}",
                    terminal.id,
                    hex::encode(key_fingerprint)
                ),
            )),
            Some(k) if k.revoked => Ok(None),
            Some(_) => Ok(Some(Event::TerminalKeyRevoked(TerminalKeyRevoked {
                terminal_id: terminal.id.clone(),
                change: self.changes + 1,
                key_fingerprint,
                revoked_at_ns: now_ns,
            }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TerminalKind;
    use crate::ids::{EnterpriseId, TerminalId};

    fn registration(pk: Option<&[u8]>) -> TerminalRegistered {
        TerminalRegistered {
            id: TerminalId::parse("T-1").unwrap(),
            enterprise_id: EnterpriseId::parse("E-1").unwrap(),
            kind: TerminalKind::Scale,
            capacity_mg: 1,
            report_interval_s: 10,
            public_key: pk.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn the_old_key_covers_readings_measured_before_the_rotation_only() {
        let reg = registration(Some(b"key-a"));
        let mut keys = TerminalKeys::from_history(&reg, []);
        let rot = keys
            .decide_rotation(&reg, b"key-b".to_vec(), 1_000)
            .unwrap()
            .unwrap();
        keys.apply(&rot);
        let [a, b] = keys.all() else {
            panic!("two keys")
        };
        assert!(a.covers(999));
        assert!(!a.covers(1_000));
        assert!(b.covers(1) && b.covers(1_000) && b.covers(i64::MAX));
        assert_eq!(keys.usable().next().unwrap().public_key, b"key-b");
        assert_eq!(keys.changes(), 1);
    }

    #[test]
    fn a_revoked_key_covers_nothing() {
        let reg = registration(Some(b"key-a"));
        let mut keys = TerminalKeys::from_history(&reg, []);
        let fp = fingerprint(b"key-a");
        let rev = keys.decide_revocation(&reg, fp, 5).unwrap().unwrap();
        keys.apply(&rev);
        assert!(!keys.all()[0].covers(0));
        assert_eq!(keys.usable().count(), 0);
        // Revoking again changes nothing; revoking an unknown key is refused.
        assert_eq!(keys.decide_revocation(&reg, fp, 6).unwrap(), None);
        assert_eq!(
            keys.decide_revocation(&reg, [0; 32], 6).unwrap_err().code,
            "unknown_key"
        );
        // A fresh key can follow; the revoked one cannot come back.
        assert!(
            keys.decide_rotation(&reg, b"key-b".to_vec(), 7)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            keys.decide_rotation(&reg, b"key-a".to_vec(), 7)
                .unwrap_err()
                .code,
            "key_reused"
        );
    }

    #[test]
    fn rotating_to_the_current_key_is_no_change_and_changes_are_numbered() {
        let reg = registration(None);
        let mut keys = TerminalKeys::from_history(&reg, []);
        assert!(keys.is_empty());
        let r1 = keys
            .decide_rotation(&reg, b"k1".to_vec(), 1)
            .unwrap()
            .unwrap();
        keys.apply(&r1);
        assert_eq!(keys.decide_rotation(&reg, b"k1".to_vec(), 2).unwrap(), None);
        let r2 = keys
            .decide_rotation(&reg, b"k2".to_vec(), 3)
            .unwrap()
            .unwrap();
        match &r2 {
            Event::TerminalKeyRotated(r) => assert_eq!(r.change, 2),
            other => panic!("{other:?}"),
        }
        keys.apply(&r2);
        assert_eq!(keys.changes(), 2);
    }
}
