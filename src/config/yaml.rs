//! A YAML tree that keeps the position of every node.
//!
//! The config is read into this tree first and interpreted second, so that a
//! mistake found late (a cycle between two routes, a duplicate source) still
//! points at the line and column it came from, and so that every mistake in a
//! file can be reported at once instead of stopping at the first.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in the source file: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// One YAML node and where it stands in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

impl Node {
    /// Looks up a key in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_key().as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar used as a key or value ("42" for an integer).
    pub fn as_key(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Int(i) => Some(i.to_string()),
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Float(x) => Some(x.to_string()),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "nothing",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "a number",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Spanned<Kind> = Spanned::deserialize(d)?;
        Ok(Node {
            kind: s.value,
            pos: Pos {
                line: s.referenced.line() as u32,
                column: s.referenced.column() as u32,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v as i128))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v as i128))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(Kind::Int(v.min(i128::MAX as u128) as i128))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Kind::Map(entries))
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses a whole document into a positioned tree. An empty document is Null.
///
/// Repeated keys are passed through (every entry is kept, in order) rather
/// than failing the whole file, so that the config reader can report them
/// with both positions next to every other finding.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            kind: Kind::Null,
            pos: Pos { line: 1, column: 1 },
        });
    }
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or(Pos { line: 1, column: 1 });
        SyntaxError {
            pos,
            message: clean_message(&e.to_string()),
        }
    })
}

/// The library's message repeats the position ("error: line 3 column 5:
/// ...") and may add a snippet; keep the first line without the prefix.
fn clean_message(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or("invalid YAML").trim();
    let mut m = first.strip_prefix("error:").unwrap_or(first).trim_start();
    if let Some(rest) = m.strip_prefix("line ")
        && let Some(i) = rest.find(": ")
        && rest[..i]
            .split(" column ")
            .all(|p| p.trim().bytes().all(|b| b.is_ascii_digit()))
    {
        m = &rest[i + 2..];
    }
    let m = m.trim().trim_end_matches('.');
    if m.is_empty() {
        "invalid YAML".to_string()
    } else {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_kept_on_nested_values() {
        let doc = "spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: 202311201628\n      routes:\n        - source: a.example\n          destination: b.example\n";
        let n = parse(doc).unwrap();
        let dns = n
            .get("spec")
            .unwrap()
            .get("infrastructure")
            .unwrap()
            .get("executorPrivateDNS")
            .unwrap();
        let tag = dns.get("proxyTag").unwrap();
        assert_eq!(tag.kind, Kind::Int(202311201628));
        assert_eq!(tag.pos, Pos { line: 4, column: 17 });
        let Kind::Seq(routes) = &dns.get("routes").unwrap().kind else {
            panic!()
        };
        let dest = routes[0].get("destination").unwrap();
        assert_eq!(dest.kind, Kind::Str("b.example".into()));
        assert_eq!(dest.pos, Pos { line: 7, column: 24 });
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.pos.line >= 1);
        assert!(!e.message.starts_with("error"), "{}", e.message);
    }

    #[test]
    fn repeated_keys_are_kept() {
        let n = parse("a: 1\nb: 2\na: 3\n").unwrap();
        let Kind::Map(entries) = &n.kind else { panic!() };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].0.pos, Pos { line: 3, column: 1 });
        assert_eq!(n.get("a").unwrap().kind, Kind::Int(1));
    }
}
