//! `named_enum!`: the field-less enums of the vocabulary, each variant with a fixed snake_case name (how
//! canonical JSON, the read models and the API spell it).

/// Declares `pub enum $name` with the derives every named enum has (rkyv's, for the log; `Debug`, `Clone`,
/// `Copy`, `PartialEq`, `Eq`) and the attributes given before it, and implements:
/// - `ALL`: every variant, in declaration order;
/// - `name()`: the variant's name, as written after its `=>`;
/// - `parse()`: the variant a name names, `None` for any other text.
///
/// The variants stand in the order written, so rkyv's encoding of them is that of the enum written out.
macro_rules! named_enum {
    (
        $(#[$attr:meta])*
        pub enum $name:ident {
            $($(#[$variant_attr:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$attr])*
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$variant_attr])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|k| k.name() == s)
            }
        }
    };
}
