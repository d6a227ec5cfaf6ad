//! The operations document's and DESIGN.md's own example blocks validate
//! (copied into tests/golden/seed/, never read from outside the repository).

use dnsbridge::config::{Destination, Source, load_file, parse_str};
use dnsbridge::name::Name;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("tests/golden/seed/{name}")).unwrap()
}

#[test]
fn public_load_balancer_block_is_clean() {
    let p = parse_str(&read("seed-public-load-balancer.yaml"));
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let c = p.config.unwrap();
    assert_eq!(c.proxy_tag, Some(202311201628));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(
        c.routes[0].source,
        Source::Exact(Name::parse("customer.registry.private.domain").unwrap())
    );
    assert_eq!(
        c.routes[0].destination,
        Destination::Name(Name::parse("customer.loadbalancer.public.domain").unwrap())
    );
}

#[test]
fn design_configuration_block_is_clean() {
    let c = load_file("tests/golden/seed/design-configuration.yaml".as_ref()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].resolver, Some("10.0.0.2:53".parse().unwrap()));
}

#[test]
fn aws_block_is_a_template_until_filled_in() {
    let text = read("seed-aws-privatelink.yaml");
    // As written, the one finding is the placeholders, at the destination.
    let p = parse_str(&text);
    let found: Vec<_> = p
        .diagnostics
        .iter()
        .map(|d| (d.rule, d.pos.line, d.pos.column))
        .collect();
    assert_eq!(found, vec![("name-malformed", 8, 24)]);
    assert!(p.diagnostics[0].message.contains("`<ID>`, `<HASH>`, `<REGION>`"));
    // Filled in the way the document says (the regional name), it is clean.
    let filled = text
        .replace("<ID>", "0a1b2c3d4e5f60718-abcd1234")
        .replace("<HASH>", "0123456789abcdef0")
        .replace("<REGION>", "us-east-1")
        .replace("CUSTOMER.DOMAIN", "acme.example");
    let p = parse_str(&filled);
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    assert_eq!(
        p.config.unwrap().routes[0].source,
        Source::Exact(Name::parse("private.acme.example").unwrap())
    );
}
