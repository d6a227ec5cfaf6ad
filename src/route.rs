//! The route table: which route a query name falls under.
//!
//! Exact sources live in one hash map and wildcard suffixes in another, both
//! keyed by lowercase wire bytes. A lookup tries the exact map once, then each
//! proper suffix of the name from the longest down, so its cost grows with the
//! number of labels in the query (at most 127), never with the number of
//! routes, and the answer never depends on the order of the list.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Destination, Route, Source};
use crate::name::{Name, label_offsets};

/// How a name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
}

#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub route: &'a Route,
    pub kind: MatchKind,
    /// For wildcard matches: the labels in front of the suffix (wire form, no
    /// root label), kept for `*.suffix2` destinations.
    pub prefix_len: usize,
}

impl Match<'_> {
    /// The name this match resolves through, for a name destination: the
    /// destination itself, or the prefix kept in front of `*.suffix2`.
    /// None for IP destinations, or when the rewritten name would be too long.
    pub fn target(&self, qname_lower: &[u8]) -> Option<Name> {
        match &self.route.destination {
            Destination::Name(n) => Some(n.clone()),
            Destination::Wildcard(suffix) => suffix.prepend(&qname_lower[..self.prefix_len]),
            Destination::Ips(_) => None,
        }
    }
}

/// Identifies a route by what it does (source, destination, resolver, flatten,
/// TTL), not by its place in the file: equal across reloads when unchanged.
pub fn fingerprint(r: &Route) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.source.hash(&mut h);
    r.destination.to_string().hash(&mut h);
    matches!(r.destination, Destination::Wildcard(_)).hash(&mut h);
    r.resolver.hash(&mut h);
    r.flatten.hash(&mut h);
    r.ttl.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    fingerprints: Vec<u64>,
    exact: HashMap<Box<[u8]>, usize>,
    wildcard: HashMap<Box<[u8]>, usize>,
    /// Labels in the longest wildcard suffix: suffixes longer than this cannot
    /// match, so the walk skips them.
    max_wild_len: usize,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            match &r.source {
                Source::Exact(n) => {
                    t.exact.entry(n.wire().into()).or_insert(i);
                }
                Source::Wildcard(n) => {
                    t.max_wild_len = t.max_wild_len.max(n.wire().len());
                    t.wildcard.entry(n.wire().into()).or_insert(i);
                }
            }
        }
        t.fingerprints = routes.iter().map(fingerprint).collect();
        t.routes = routes;
        t
    }

    /// The fingerprint of route `index` (see [`fingerprint`]).
    pub fn fingerprint(&self, index: usize) -> u64 {
        self.fingerprints.get(index).copied().unwrap_or(0)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn shared(self) -> Arc<RouteTable> {
        Arc::new(self)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the route for a lowercase wire name.
    pub fn lookup(&self, qname_lower: &[u8]) -> Option<Match<'_>> {
        if self.routes.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(qname_lower) {
            return Some(Match {
                route: &self.routes[i],
                kind: MatchKind::Exact,
                prefix_len: 0,
            });
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Proper suffixes, longest first; the apex itself (offset 0) is
        // excluded because `*.suffix` does not cover `suffix`.
        for off in label_offsets(qname_lower).skip(1) {
            let suffix = &qname_lower[off..];
            if suffix.len() > self.max_wild_len {
                continue;
            }
            if let Some(&i) = self.wildcard.get(suffix) {
                return Some(Match {
                    route: &self.routes[i],
                    kind: MatchKind::Wildcard,
                    prefix_len: off,
                });
            }
        }
        None
    }

    pub fn lookup_name(&self, name: &Name) -> Option<Match<'_>> {
        self.lookup(name.wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::Pos;

    fn route(i: usize, src: &str, dst: &str) -> Route {
        let source = match src.strip_prefix("*.") {
            Some(s) => Source::Wildcard(Name::parse(s).unwrap()),
            None => Source::Exact(Name::parse(src).unwrap()),
        };
        let destination = match dst.strip_prefix("*.") {
            Some(s) => Destination::Wildcard(Name::parse(s).unwrap()),
            None => Destination::Name(Name::parse(dst).unwrap()),
        };
        Route {
            index: i,
            source,
            destination,
            resolver: None,
            flatten: None,
            ttl: None,
            source_pos: Pos::default(),
            destination_pos: Pos::default(),
        }
    }

    fn dest_of(t: &RouteTable, q: &str) -> Option<String> {
        let n = Name::parse(q).unwrap();
        t.lookup_name(&n).map(|m| m.target(n.wire()).unwrap().to_string())
    }

    #[test]
    fn precedence_is_independent_of_order() {
        let rs = [
            route(0, "*.corp.example", "wild.pub"),
            route(1, "*.eu.corp.example", "eu.pub"),
            route(2, "registry.eu.corp.example", "exact.pub"),
        ];
        for perm in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let t = RouteTable::new(perm.iter().map(|&i| rs[i].clone()).collect());
            assert_eq!(dest_of(&t, "Registry.EU.corp.example.").as_deref(), Some("exact.pub"));
            assert_eq!(dest_of(&t, "npm.eu.corp.example").as_deref(), Some("eu.pub"));
            assert_eq!(dest_of(&t, "a.b.eu.corp.example").as_deref(), Some("eu.pub"));
            assert_eq!(dest_of(&t, "npm.corp.example").as_deref(), Some("wild.pub"));
            assert_eq!(dest_of(&t, "corp.example"), None, "apex is not covered");
            assert_eq!(dest_of(&t, "eu.corp.example").as_deref(), Some("wild.pub"));
            assert_eq!(dest_of(&t, "example"), None);
        }
    }

    #[test]
    fn wildcard_destination_keeps_prefix() {
        let t = RouteTable::new(vec![route(0, "*.corp.example", "*.mirror.pub")]);
        assert_eq!(dest_of(&t, "a.b.corp.example").as_deref(), Some("a.b.mirror.pub"));
    }
}
