//! The limits of what the platform accepts, and the names of its kinds, in one leaf module: the validators
//! (`event`, `reading`, `domain`) and the API's schemas (`openapi`) both take them from here, so that
//! neither imports the other for a number.

/// The longest enterprise name accepted, in characters.
pub const NAME_CHARS_MAX: usize = 200;

/// The largest capacity a terminal or enterprise may register, in kg (a million tonnes).
pub const CAPACITY_KG_MAX: f64 = 1.0e9;

/// The longest report interval a terminal may register: one day.
pub const REPORT_INTERVAL_S_MAX: u32 = 86_400;

/// The longest note or manifest remark accepted, in characters.
pub const NOTE_CHARS_MAX: usize = 4_000;

/// The longest author name of a note, in characters.
pub const AUTHOR_CHARS_MAX: usize = 200;

/// The most containers one manifest may list.
pub const MANIFEST_CONTAINERS_MAX: usize = 1_000;

/// The largest `seq` a terminal may use: sequence numbers must stay exact in every JSON reader.
pub const READING_SEQ_MAX: u64 = crate::canonical::JSON_INT_ABS_MAX as u64;

/// The names of `event::TerminalKind`, in its order (a test keeps them equal).
pub const TERMINAL_KINDS: [&str; 3] = ["scale", "load_cell", "storage_sensor"];

/// The names of `reading::ReadingKind`, in its order (a test keeps them equal).
pub const READING_KINDS: [&str; 4] = ["weight", "level", "temperature", "humidity"];

/// The names of `reading::Stage`, in its order (a test keeps them equal).
pub const STAGES: [&str; 6] = [
    "generation",
    "storage_in",
    "storage_out",
    "transfer_out",
    "transfer_in",
    "disposal",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_names_are_the_enums_names() {
        use crate::event::TerminalKind;
        use crate::reading::{ReadingKind, Stage};
        assert_eq!(TerminalKind::ALL.map(TerminalKind::name), TERMINAL_KINDS);
        assert_eq!(ReadingKind::ALL.map(ReadingKind::name), READING_KINDS);
        assert_eq!(Stage::ALL.map(Stage::name), STAGES);
    }
}
