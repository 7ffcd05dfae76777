//! Identifier newtypes. Ids cross crate boundaries only as these types, never as bare strings.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// The longest id accepted, in bytes. Ids are keys in the log's dedupe index and in every read model.
pub const ID_LEN_MAX: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long; at most {ID_LEN_MAX} are allowed")]
    TooLong { len: usize },
    #[error("id contains {ch:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadChar { ch: char },
}

/// Checks `^[A-Za-z0-9._-]{1,64}$` without a regex engine.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > ID_LEN_MAX {
        return Err(IdError::TooLong { len: s.len() });
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(ch) => Err(IdError::BadChar { ch }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize,
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against `^[A-Za-z0-9._-]{1,64}$`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A smart terminal: a scale, a tank load cell, a storage sensor.
    TerminalId
);
id_type!(
    /// An enterprise that generates, stores or disposes of hazardous waste.
    EnterpriseId
);
id_type!(
    /// A waste container (drum, tote, bag) that terminals weigh.
    ContainerId
);
id_type!(
    /// A manifest (联单): a transfer order for containers from a generator enterprise to a receiver.
    ManifestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_pattern() {
        assert!(TerminalId::parse("T-1").is_ok());
        assert!(TerminalId::parse("a.b_c-D9").is_ok());
        assert_eq!(TerminalId::parse(""), Err(IdError::Empty));
        assert_eq!(
            TerminalId::parse(&"x".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
        assert!(TerminalId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(TerminalId::parse("T 1"), Err(IdError::BadChar { ch: ' ' }));
        assert_eq!(
            TerminalId::parse("终端"),
            Err(IdError::BadChar { ch: '终' })
        );
        assert!(TerminalId::parse("T/1").is_err());
    }
}
