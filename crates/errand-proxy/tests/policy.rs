//! The policy's verdicts and reasons, without a proxy.

use errand_proxy::{Discovery, Policy, Presets};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Presets with no discovery at all (tests must not depend on this machine's registries).
fn no_presets() -> Presets {
    let dir = std::env::temp_dir().join("errand-proxy-no-such-dir");
    Presets::new(Discovery::isolated(&dir), BTreeMap::new())
}

fn policy(allow: &[&str], deny: &[&str]) -> Policy {
    Policy::parse_with(&s(allow), &s(deny), &no_presets()).unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|x| x.parse().unwrap()).collect()
}

#[test]
fn exact_hosts_are_case_insensitive_and_ignore_a_trailing_dot() {
    let p = policy(&["Example.ORG."], &[]);
    for h in ["example.org", "EXAMPLE.org", "example.org."] {
        let d = p.check_name(h, 443);
        assert!(d.allowed, "{h}: {}", d.reason);
        assert_eq!(d.reason, "allowed by rule example.org");
    }
    let d = p.check_name("www.example.org", 443);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "www.example.org is not in the allowlist (allowed: Example.ORG.)"
    );
    assert!(!p.check_name("example.org.evil.test", 443).allowed);
    assert!(!p.check_name("notexample.org", 443).allowed);
}

#[test]
fn wildcards_cover_subdomains_but_not_the_apex() {
    let p = policy(&["a.test", "*.b.test:443"], &[]);
    assert!(p.check_name("x.b.test", 443).allowed);
    assert!(p.check_name("deep.x.b.test", 443).allowed);
    assert_eq!(
        p.check_name("x.b.test", 443).reason,
        "allowed by rule *.b.test:443"
    );
    let d = p.check_name("b.test", 443);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "b.test is not in the allowlist (allowed: a.test, *.b.test:443)"
    );
    assert!(!p.check_name("xb.test", 443).allowed);
}

#[test]
fn ports_default_to_80_and_443() {
    let p = policy(&["example.org", "alt.test:8443", "any.test:*"], &[]);
    assert!(p.check_name("example.org", 80).allowed);
    assert!(p.check_name("example.org", 443).allowed);
    let d = p.check_name("example.org", 8443);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "port 8443 is not allowed for example.org (allowed ports: 80, 443)"
    );
    assert!(p.check_name("alt.test", 8443).allowed);
    let d = p.check_name("alt.test", 443);
    assert_eq!(
        d.reason,
        "port 443 is not allowed for alt.test (allowed ports: 8443)"
    );
    assert!(p.check_name("any.test", 1).allowed);
    assert!(p.check_name("any.test", 65535).allowed);
    // Two rules for one host: their ports add up.
    let p = policy(&["h.test:8080", "h.test"], &[]);
    assert!(p.check_name("h.test", 8080).allowed);
    assert!(p.check_name("h.test", 443).allowed);
    assert_eq!(
        p.check_name("h.test", 22).reason,
        "port 22 is not allowed for h.test (allowed ports: 80, 443, 8080)"
    );
}

#[test]
fn the_deny_list_always_wins() {
    let p = policy(
        &["*.example.com", "*.internal.example.com:*", "10.0.0.0/8:*"],
        &[
            "*.internal.example.com",
            "10.9.0.0/16",
            "ok.example.com:8080",
        ],
    );
    assert!(p.check_name("www.example.com", 443).allowed);
    let d = p.check_name("db.internal.example.com", 443);
    assert!(!d.allowed);
    assert_eq!(d.reason, "denied by rule *.internal.example.com");
    // A deny entry without a port covers every port.
    assert!(!p.check_name("db.internal.example.com", 5432).allowed);
    // A deny entry with a port covers only that port.
    assert!(p.check_name("ok.example.com", 443).allowed);
    let d = p.check_name("ok.example.com", 8080);
    assert_eq!(d.reason, "denied by rule ok.example.com:8080");
    // The deny list applies to addresses too: literals and resolved names.
    assert!(p.check_name("10.1.2.3", 80).allowed);
    assert_eq!(
        p.check_name("10.9.1.1", 80).reason,
        "denied by rule 10.9.0.0/16"
    );
    let d = p.check_addrs("www.example.com", 443, &ips(&["10.9.3.4"]));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "www.example.com resolves to 10.9.3.4, denied by rule 10.9.0.0/16"
    );
}

#[test]
fn ip_literals_need_an_address_entry() {
    let p = policy(&["example.org"], &[]);
    let d = p.check_name("203.0.113.7", 443);
    assert!(!d.allowed);
    assert!(
        d.reason
            .starts_with("IP address 203.0.113.7 is not allowed: connect by host name"),
        "{}",
        d.reason
    );
    for (allow, host, port) in [
        ("203.0.113.7", "203.0.113.7", 443),
        ("203.0.113.0/24", "203.0.113.99", 80),
        ("[::1]:8080", "[::1]", 8080),
        ("[::1]:8080", "::1", 8080),
        ("fd00::/8", "[fd12::5]", 443),
        ("127.0.0.1:*", "::ffff:127.0.0.1", 9),
    ] {
        let p = policy(&[allow], &[]);
        let d = p.check_name(host, port);
        assert!(
            d.allowed,
            "{allow} should allow {host}:{port}: {}",
            d.reason
        );
        assert_eq!(d.reason, format!("allowed by rule {allow}"));
        // Once allowed, the literal is its own address.
        assert!(p.check_addrs(host, port, &[]).allowed);
    }
    let p = policy(&["[::1]:8080"], &[]);
    assert_eq!(
        p.check_name("::1", 80).reason,
        "port 80 is not allowed for ::1 (allowed ports: 8080)"
    );
}

#[test]
fn metadata_is_denied_unless_named() {
    let p = policy(&["*.internal", "169.254.0.0/16:*"], &[]);
    // The metadata name needs an exact entry; a wildcard is not enough.
    let d = p.check_name("metadata.google.internal", 80);
    assert!(!d.allowed);
    assert!(
        d.reason
            .starts_with("metadata.google.internal is a cloud metadata name"),
        "{}",
        d.reason
    );
    assert!(
        policy(&["metadata.google.internal"], &[])
            .check_name("metadata.google.internal", 80)
            .allowed
    );
    // Metadata literals without an entry covering them.
    let p = policy(&["example.org"], &[]);
    for ip in ["169.254.169.254", "100.100.100.200", "[fd00:ec2::254]"] {
        let d = p.check_name(ip, 80);
        assert!(!d.allowed);
        assert!(
            d.reason.contains("is a cloud metadata address"),
            "{ip}: {}",
            d.reason
        );
    }
    // Named explicitly, it is reachable.
    assert!(
        policy(&["169.254.169.254"], &[])
            .check_name("169.254.169.254", 80)
            .allowed
    );
}

#[test]
fn names_resolving_to_special_addresses_are_refused() {
    let p = policy(&["*.test:*"], &[]);
    for (addr, kind) in [
        ("169.254.169.254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.20.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd12::1", "a private (unique local) address"),
        ("169.254.3.3", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("100.64.1.1", "a shared (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("255.255.255.255", "a broadcast address"),
        ("239.1.1.1", "a multicast address"),
    ] {
        let d = p.check_addrs("x.test", 443, &ips(&[addr]));
        assert!(!d.allowed, "{addr}");
        let shown: IpAddr = addr.parse().unwrap();
        let shown = match shown {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(IpAddr::V6(v6), IpAddr::V4)
                .to_string(),
            v4 => v4.to_string(),
        };
        assert!(
            d.reason
                .starts_with(&format!("x.test resolves to {shown}, {kind}")),
            "{addr}: {}",
            d.reason
        );
    }
    // One bad address among good ones is enough to refuse.
    assert!(
        !p.check_addrs("x.test", 443, &ips(&["203.0.113.7", "10.0.0.1"]))
            .allowed
    );
    assert!(
        p.check_addrs("x.test", 443, &ips(&["203.0.113.7", "2001:db8::1"]))
            .allowed
    );
    let d = p.check_addrs("x.test", 443, &[]);
    assert_eq!(d.reason, "x.test resolves to no address");
    // The name's own verdict comes first.
    let d = p.check_addrs("x.other", 443, &ips(&["203.0.113.7"]));
    assert!(!d.allowed);
    assert!(d.reason.contains("not in the allowlist"));
}

#[test]
fn an_address_entry_lifts_the_guard_and_the_name_keeps_deciding_the_port() {
    let p = policy(&["git.test:*", "127.0.0.1", "10.0.0.0/8"], &[]);
    let d = p.check_addrs("git.test", 8080, &ips(&["127.0.0.1"]));
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.reason, "allowed by rule git.test:*");
    assert!(
        p.check_addrs("git.test", 8080, &ips(&["10.4.4.4", "::ffff:127.0.0.1"]))
            .allowed
    );
    // Not covered: another loopback address, or metadata.
    assert!(
        !p.check_addrs("git.test", 8080, &ips(&["127.0.0.2"]))
            .allowed
    );
    assert!(
        !p.check_addrs("git.test", 8080, &ips(&["169.254.169.254"]))
            .allowed
    );
}

#[test]
fn bad_entries_name_the_entry_and_the_accepted_forms() {
    for (entry, problem) in [
        ("*", "'*' alone would allow every host"),
        (
            "a.*.test",
            "a wildcard is allowed only as the whole first label",
        ),
        ("h.test:99999", "'99999' is not a port"),
        ("h.test:0", "'0' is not a port"),
        ("https://h.test/", "write the host (and port), not a URL"),
        (
            "10.0.0.0/40",
            "'/40' is not a prefix length (expected 0 to 32)",
        ),
        ("bad host", "'bad host' is not a valid host name"),
    ] {
        let e = Policy::parse_with(&s(&["ok.test", entry]), &[], &no_presets())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("bad allow entry '{entry}': {problem}")),
            "{entry}: {e}"
        );
        assert!(
            e.contains("accepted forms: host, *.host, host:PORT"),
            "{entry}: {e}"
        );
        assert!(
            e.contains("registry:rust|python|javascript|go|debian"),
            "{e}"
        );
    }
    let e = Policy::parse_with(&[], &s(&["x.test:port"]), &no_presets())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad deny entry 'x.test:port'"), "{e}");
    let e = Policy::parse_with(&s(&["registry:cobol"]), &[], &no_presets())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown preset 'registry:cobol'"), "{e}");
    assert!(e.contains("registry:javascript"), "{e}");
}

#[test]
fn git_presets_are_built_in() {
    let p = Policy::parse_with(&s(&["git:github"]), &[], &no_presets()).unwrap();
    assert!(p.check_name("github.com", 443).allowed);
    assert!(p.check_name("api.github.com", 443).allowed);
    assert!(p.check_name("raw.githubusercontent.com", 443).allowed);
    assert_eq!(
        p.check_name("codeload.github.com", 443).reason,
        "allowed by rule git:github (*.github.com)"
    );
    assert!(!p.check_name("gitlab.com", 443).allowed);
    assert!(!p.check_name("github.com", 22).allowed);
    let p = Policy::parse_with(&s(&["git:gitlab", "git:bitbucket"]), &[], &no_presets()).unwrap();
    assert!(p.check_name("gitlab.com", 443).allowed);
    assert!(p.check_name("bitbucket.org", 443).allowed);
    // Presets work in the deny list too.
    let p = Policy::parse_with(&s(&["*.com"]), &s(&["git:github"]), &no_presets()).unwrap();
    assert_eq!(
        p.check_name("github.com", 443).reason,
        "denied by rule git:github (github.com)"
    );
}

#[test]
fn the_summary_lists_entries_and_the_open_policy_allows_everything() {
    let p = policy(&["a.test", "*.b.test:443"], &["*.internal.example.com"]);
    let sum = p.summary();
    assert!(
        sum.starts_with("allow: a.test, *.b.test:443; deny: *.internal.example.com;"),
        "{sum}"
    );
    assert!(sum.contains("cloud metadata"), "{sum}");
    assert_eq!(
        policy(&[], &[]).check_name("a.test", 443).reason,
        "a.test is not in the allowlist (the allowlist is empty)"
    );
    let open = Policy::open();
    assert!(open.is_open());
    assert!(open.check_name("anything.test", 1).allowed);
    assert!(open.check_name("169.254.169.254", 80).allowed);
    assert!(open.check_addrs("x.test", 80, &ips(&["127.0.0.1"])).allowed);
}

#[test]
fn a_long_allowlist_is_shortened_in_reasons() {
    let many: Vec<String> = (0..20).map(|i| format!("h{i}.test")).collect();
    let p = Policy::parse_with(&many, &[], &no_presets()).unwrap();
    let d = p.check_name("other.test", 443);
    assert!(d.reason.contains("h0.test, h1.test"), "{}", d.reason);
    assert!(d.reason.contains("h11.test, and 8 more)"), "{}", d.reason);
    assert!(!d.reason.contains("h12.test"), "{}", d.reason);
}
