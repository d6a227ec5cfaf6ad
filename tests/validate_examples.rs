//! Every config in examples/ validates cleanly (even with --strict), loads
//! the way `serve` loads it, and the customer setups of DESIGN.md each have
//! one.

use std::path::PathBuf;

use dnsbridge::config::{ALLOW_MARKER, Destination, load_file, parse_str};
use dnsbridge::validate::{Color, Format, ValidateArgs, validate_to};

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_validates_cleanly_even_strict() {
    let files = examples();
    let args = ValidateArgs {
        files: files.clone(),
        format: Format::Human,
        strict: true,
        color: Color::Never,
        list_rules: false,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = validate_to(&args, &mut out, &mut err, false);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim_end().lines().collect::<Vec<_>>().len(),
        1,
        "only the summary line: {out}"
    );
    assert!(out.starts_with(&format!("checked {} files: {} valid", files.len(), files.len())));
    for f in &files {
        let c = load_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!c.routes.is_empty(), "{} has routes", f.display());
    }
}

#[test]
fn each_customer_setup_has_an_example() {
    for name in [
        "public-load-balancer",
        "aws-privatelink",
        "gcp-private-service-connect",
        "on-premise-ip",
        "production",
    ] {
        let path = PathBuf::from(format!("examples/{name}.yaml"));
        assert!(path.exists(), "{} is missing", path.display());
    }
    let prod = std::fs::read_to_string("examples/production.yaml").unwrap();
    let c = parse_str(&prod).config.unwrap();
    assert!(c.runtime.listen.len() >= 2 && !c.runtime.upstreams.is_empty() && c.runtime.metrics.is_some());
    let psc = load_file("examples/gcp-private-service-connect.yaml".as_ref()).unwrap();
    assert!(psc.routes.iter().all(|r| matches!(r.destination, Destination::Ips(_))));
}

/// The `dnsbridge-allow` comments in the examples accept only the firewall
/// warning, which is the point of those setups: without them, that warning
/// and nothing else comes back.
#[test]
fn allow_comments_hide_only_the_firewall_warning() {
    for f in examples() {
        let text = std::fs::read_to_string(&f).unwrap();
        let bare: String = text
            .lines()
            .map(|l| match l.find(ALLOW_MARKER) {
                Some(i) => l[..i].trim_end_matches([' ', '#']),
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let rules: Vec<&str> = parse_str(&bare).diagnostics.iter().map(|d| d.rule).collect();
        let allowed = text.matches(ALLOW_MARKER).count();
        assert!(
            rules.iter().all(|r| *r == "firewall-blocked-ip"),
            "{}: {rules:?}",
            f.display()
        );
        if allowed > 0 {
            assert!(
                !rules.is_empty(),
                "{}: an allow comment with nothing to allow",
                f.display()
            );
        }
    }
}
