//! Domain names in uncompressed wire form, lowercased.
//!
//! Every name the proxy compares (route sources, destinations, cache keys) is
//! kept as lowercase wire bytes so that matching is a byte comparison. The
//! letter case a client sent is never stored here: it is echoed from the
//! client's own buffer.

use std::fmt;

use thiserror::Error;

/// The longest name the wire format allows, root label included.
pub const MAX_NAME_LEN: usize = 255;
/// The longest single label.
pub const MAX_LABEL_LEN: usize = 63;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("label {0:?} is empty (two dots in a row, or a leading dot)")]
    EmptyLabel(String),
    #[error("label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    #[error("the name is longer than 253 characters")]
    TooLong,
    #[error("label {label:?} contains {ch:?}: only letters, digits, '-' and '_' are allowed")]
    BadChar { label: String, ch: char },
    #[error("label {0:?} starts or ends with '-'")]
    Hyphen(String),
    #[error("'*' is only allowed as the whole first label (\"*.example.com\")")]
    MisplacedStar,
}

/// A lowercase domain name in uncompressed wire format (length-prefixed labels,
/// ending with the root label).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    wire: Box<[u8]>,
}

impl Name {
    /// The root name.
    pub fn root() -> Name {
        Name { wire: Box::new([0]) }
    }

    /// Parses a host name in presentation format (`registry.corp.example`, with
    /// or without the trailing dot). Letter case is folded. Only the characters
    /// a host name may hold are accepted: a route to a name no resolver can
    /// look up is a mistake worth reporting, not forwarding.
    pub fn parse(text: &str) -> Result<Name, NameError> {
        let t = text.strip_suffix('.').unwrap_or(text);
        if t.is_empty() {
            return Err(NameError::Empty);
        }
        let mut wire = Vec::with_capacity(t.len() + 2);
        for label in t.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(label.to_string()));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong(label.to_string()));
            }
            if label == "*" {
                return Err(NameError::MisplacedStar);
            }
            for ch in label.chars() {
                if !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                    return Err(NameError::BadChar {
                        label: label.to_string(),
                        ch,
                    });
                }
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::Hyphen(label.to_string()));
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        wire.push(0);
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        Ok(Name { wire: wire.into() })
    }

    /// Builds a name from wire bytes already known to be a valid uncompressed
    /// name; folds case.
    pub fn from_wire_lower(wire: &[u8]) -> Name {
        debug_assert!(wire_is_valid(wire));
        Name {
            wire: wire.iter().copied().map(fold_wire_byte(wire)).collect(),
        }
    }

    /// The wire bytes, lowercase, root label included.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    pub fn is_root(&self) -> bool {
        self.wire.len() == 1
    }

    /// Number of labels, root excluded.
    pub fn label_count(&self) -> usize {
        label_offsets(&self.wire).count()
    }

    /// True when `self` is `other` or lies below it.
    pub fn ends_with(&self, other: &Name) -> bool {
        wire_ends_with(&self.wire, &other.wire)
    }

    /// True when `self` lies strictly below `other`.
    pub fn is_strictly_below(&self, other: &Name) -> bool {
        self.wire.len() > other.wire.len() && self.ends_with(other)
    }

    /// The labels of `self` in front of `suffix` as wire bytes (no root), or
    /// None when `self` is not strictly below `suffix`.
    pub fn prefix_before(&self, suffix: &Name) -> Option<&[u8]> {
        if !self.is_strictly_below(suffix) {
            return None;
        }
        Some(&self.wire[..self.wire.len() - suffix.wire.len()])
    }

    /// `prefix` (wire labels, no root) followed by `self`; None when too long.
    pub fn prepend(&self, prefix: &[u8]) -> Option<Name> {
        if prefix.len() + self.wire.len() > MAX_NAME_LEN {
            return None;
        }
        let mut wire = Vec::with_capacity(prefix.len() + self.wire.len());
        wire.extend_from_slice(prefix);
        wire.extend_from_slice(&self.wire);
        Some(Name { wire: wire.into() })
    }

    /// The name without its first label; None for the root.
    pub fn parent(&self) -> Option<Name> {
        if self.is_root() {
            return None;
        }
        let skip = 1 + self.wire[0] as usize;
        Some(Name {
            wire: self.wire[skip..].into(),
        })
    }
}

/// Offsets of each label start in an uncompressed wire name (root excluded).
pub fn label_offsets(wire: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            return None;
        }
        let here = pos;
        pos += 1 + len;
        Some(here)
    })
}

/// Case-insensitive suffix test on uncompressed wire names, aligned on labels.
pub fn wire_ends_with(name: &[u8], suffix: &[u8]) -> bool {
    if suffix.len() > name.len() {
        return false;
    }
    let start = name.len() - suffix.len();
    // The suffix must start on a label boundary of `name`.
    let on_boundary = start == 0 || label_offsets(name).any(|o| o == start);
    on_boundary && name[start..].eq_ignore_ascii_case(suffix)
}

/// Validity check for an uncompressed wire name (used in debug assertions and
/// on input that did not come through the message parser).
pub fn wire_is_valid(wire: &[u8]) -> bool {
    let mut pos = 0usize;
    loop {
        let Some(&len) = wire.get(pos) else {
            return false;
        };
        if len == 0 {
            return pos + 1 == wire.len() && wire.len() <= MAX_NAME_LEN;
        }
        if len as usize > MAX_LABEL_LEN {
            return false;
        }
        pos += 1 + len as usize;
    }
}

/// Length bytes must not be folded: 'A'..'Z' are valid label lengths 65..90
/// only above the 63 limit, so folding every byte is safe; kept as a function
/// so the reasoning lives in one place.
fn fold_wire_byte(_wire: &[u8]) -> impl Fn(u8) -> u8 {
    // Label lengths are at most 63, below b'A' (65), so ASCII folding of the
    // whole buffer never changes a length byte.
    |b| b.to_ascii_lowercase()
}

/// Writes a wire name in presentation format (no trailing dot), escaping bytes
/// that are not printable.
pub fn fmt_wire(wire: &[u8], f: &mut impl fmt::Write) -> fmt::Result {
    if wire.first().copied().unwrap_or(0) == 0 {
        return f.write_char('.');
    }
    let mut first = true;
    for off in label_offsets(wire) {
        if !first {
            f.write_char('.')?;
        }
        first = false;
        let len = wire[off] as usize;
        for &b in &wire[off + 1..off + 1 + len] {
            match b {
                b'.' | b'\\' => write!(f, "\\{}", b as char)?,
                0x21..=0x7e => f.write_char(b as char)?,
                _ => write!(f, "\\{:03}", b)?,
            }
        }
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_wire(&self.wire, f)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_folds_case_and_trailing_dot() {
        let a = Name::parse("Registry.Corp.Example.").unwrap();
        let b = Name::parse("registry.corp.example").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "registry.corp.example");
        assert_eq!(a.label_count(), 3);
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(matches!(Name::parse(""), Err(NameError::Empty)));
        assert!(matches!(Name::parse("a..b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(Name::parse("a b.c"), Err(NameError::BadChar { .. })));
        assert!(matches!(Name::parse("-a.c"), Err(NameError::Hyphen(_))));
        assert!(matches!(Name::parse(&"a".repeat(64)), Err(NameError::LabelTooLong(_))));
        let long = vec!["abcdefghi"; 30].join(".");
        assert!(matches!(Name::parse(&long), Err(NameError::TooLong)));
        assert!(matches!(Name::parse("*.a.b"), Err(NameError::MisplacedStar)));
    }

    #[test]
    fn suffix_relations() {
        let n = Name::parse("x.y.corp.example").unwrap();
        let s = Name::parse("corp.example").unwrap();
        let t = Name::parse("orp.example").unwrap();
        assert!(n.is_strictly_below(&s));
        assert!(!n.ends_with(&t), "suffix must be label aligned");
        assert!(!s.is_strictly_below(&s));
        let prefix = n.prefix_before(&s).unwrap();
        let other = Name::parse("other.test").unwrap();
        assert_eq!(other.prepend(prefix).unwrap().to_string(), "x.y.other.test");
    }
}
