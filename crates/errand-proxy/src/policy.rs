//! The egress policy of one attempt phase: which hosts, ports and addresses the box may reach
//! through the proxy.
//!
//! Entries (the same syntax for `allow` and `deny`):
//!
//! | entry | means |
//! |---|---|
//! | `example.org` | that host (case-insensitive, a trailing dot ignored), ports 80 and 443 |
//! | `*.example.org` | any subdomain of `example.org` (not `example.org` itself), ports 80 and 443 |
//! | `example.org:8443`, `*.example.org:8443` | only that port |
//! | `example.org:*` | any port |
//! | `203.0.113.7`, `10.0.0.0/8`, `[::1]`, `fd00::/8`, `[fd00::/8]:8080` | addresses (IP literals, and names resolving there) |
//! | `registry:rust` `registry:python` `registry:javascript` `registry:go` `registry:debian` | the hosts of a package registry preset ([`crate::presets`]) |
//! | `registries` | all the registry presets that this machine defines |
//! | `git:github` `git:gitlab` `git:bitbucket` | git hosting |
//!
//! In the deny list an entry without a port covers every port. The deny list always wins.
//! Cloud metadata addresses (and the name `metadata.google.internal`) are always denied unless an
//! allow entry names the address (or a CIDR holding it), or the name exactly. A name that
//! resolves to a loopback, private, link-local, shared (CGNAT), unspecified, broadcast,
//! multicast or metadata address is refused unless an allow entry covers that address (the
//! DNS-rebinding guard); the name's own rule still decides the port.

use crate::presets::Presets;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The accepted forms, for error messages.
pub const ACCEPTED_FORMS: &str = "host, *.host, host:PORT, *.host:PORT, host:*, an IP address or \
CIDR (203.0.113.7, 10.0.0.0/8, [::1], fd00::/8), registry:rust|python|javascript|go|debian, \
registries, git:github|gitlab|bitbucket";

/// Names that are always denied unless an allow entry names them exactly.
const METADATA_NAMES: [&str; 1] = ["metadata.google.internal"];

/// How many allow entries a "not in the allowlist" reason lists.
const LIST_MAX: usize = 12;

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// An entry that is not in any accepted form.
    #[error("bad {list} entry '{entry}': {problem}; accepted forms: {ACCEPTED_FORMS}")]
    BadEntry {
        /// `allow` or `deny`.
        list: &'static str,
        entry: String,
        problem: String,
    },
    /// A preset that this machine does not define (see [`crate::presets`]).
    #[error("{list} entry '{entry}': {source}")]
    Preset {
        list: &'static str,
        entry: String,
        #[source]
        source: crate::presets::PresetError,
    },
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Which rule allowed it, or why it was denied, in words meant for the agent.
    pub reason: String,
}

impl Decision {
    fn allow(reason: impl Into<String>) -> Decision {
        Decision {
            allowed: true,
            reason: reason.into(),
        }
    }

    fn deny(reason: impl Into<String>) -> Decision {
        Decision {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// The ports an entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// 80 and 443 (an entry without a port in the allow list).
    Web,
    One(u16),
    Any,
}

impl Ports {
    fn allows(self, port: u16) -> bool {
        match self {
            Ports::Web => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Exact(String),
    /// `*.example.org`, stored as `.example.org`.
    Suffix(String),
}

impl HostPat {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPat::Exact(h) => h == host,
            HostPat::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn new(addr: IpAddr, prefix: u8) -> IpNet {
        // An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) becomes the IPv4 range.
        match (addr, canonical(addr)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) if prefix >= 96 => IpNet {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            },
            _ => IpNet { addr, prefix },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
enum Target {
    Host(HostPat),
    Net(IpNet),
}

#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    ports: Ports,
    /// How the user wrote it, for reasons (`*.b.test:443`, `registry:rust (a.example.test)`).
    label: String,
}

/// One attempt phase's egress policy. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    open: bool,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// The entries as written, for summaries and reasons.
    allow_entries: Vec<String>,
    deny_entries: Vec<String>,
    /// Remarks about how presets expanded (a `registries` member this machine does not define).
    notes: Vec<String>,
}

impl Policy {
    /// Builds a policy, expanding presets with this machine's discovered registries
    /// ([`Presets::system`]). Discovery may run package tools once per process (short
    /// timeouts); call it off the async executor (`spawn_blocking`) if that matters.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<Policy, PolicyError> {
        Policy::parse_with(allow, deny, &Presets::system())
    }

    /// Builds a policy, expanding presets with `presets` (overrides from `[network.presets]`,
    /// or a test discovery).
    pub fn parse_with(
        allow: &[String],
        deny: &[String],
        presets: &Presets,
    ) -> Result<Policy, PolicyError> {
        let mut notes = Vec::new();
        let allow_rules = parse_list("allow", allow, Ports::Web, presets, &mut notes)?;
        let deny_rules = parse_list("deny", deny, Ports::Any, presets, &mut notes)?;
        Ok(Policy {
            open: false,
            allow: allow_rules,
            deny: deny_rules,
            allow_entries: clean_list(allow),
            deny_entries: clean_list(deny),
            notes,
        })
    }

    /// A policy that allows everything (no guard): for logging requests in `open` mode.
    pub fn open() -> Policy {
        Policy {
            open: true,
            allow: Vec::new(),
            deny: Vec::new(),
            allow_entries: Vec::new(),
            deny_entries: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Whether this is [`Policy::open`].
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// One line saying what the policy allows and denies.
    pub fn summary(&self) -> String {
        if self.open {
            return "open network: every host and address is allowed".into();
        }
        let mut s = if self.allow_entries.is_empty() {
            "allow: nothing".to_string()
        } else {
            format!("allow: {}", self.allow_entries.join(", "))
        };
        let expanded = self.allow.iter().filter(|r| r.label.contains(" (")).count();
        if expanded > 0 {
            s += &format!(" ({expanded} hosts from presets)");
        }
        if !self.deny_entries.is_empty() {
            s += &format!("; deny: {}", self.deny_entries.join(", "));
        }
        s += "; always denied unless allowed by address: cloud metadata, and names resolving to \
              loopback, private, link-local or other special addresses";
        for n in &self.notes {
            s += "; ";
            s += n;
        }
        s
    }

    /// The verdict on `host:port` before resolving it (the deny list, the built-in denies and
    /// the allow list). `host` may be a name or an IP literal (`[::1]` or `::1`).
    pub fn check_name(&self, host: &str, port: u16) -> Decision {
        if self.open {
            return Decision::allow("open network");
        }
        let host = normalize_host(host);
        if let Some(ip) = parse_ip_literal(&host) {
            return self.check_literal(ip, port);
        }
        if !valid_host(&host) {
            return Decision::deny(format!("'{host}' is not a valid host name"));
        }
        if let Some(r) = self.deny.iter().find(|r| r.matches_host(&host, port)) {
            return Decision::deny(format!("denied by rule {}", r.label));
        }
        if METADATA_NAMES.contains(&host.as_str())
            && !self
                .allow
                .iter()
                .any(|r| matches!(&r.target, Target::Host(HostPat::Exact(h)) if *h == host))
        {
            return Decision::deny(format!(
                "{host} is a cloud metadata name (name it exactly in the allowlist to reach it)"
            ));
        }
        let matching: Vec<&Rule> = self
            .allow
            .iter()
            .filter(|r| matches!(&r.target, Target::Host(p) if p.matches(&host)))
            .collect();
        if let Some(r) = matching.iter().find(|r| r.ports.allows(port)) {
            return Decision::allow(format!("allowed by rule {}", r.label));
        }
        if !matching.is_empty() {
            return Decision::deny(format!(
                "port {port} is not allowed for {host} (allowed ports: {})",
                describe_ports(matching.iter().map(|r| r.ports))
            ));
        }
        Decision::deny(format!(
            "{host} is not in the allowlist ({})",
            self.allowed_list()
        ))
    }

    /// The full verdict on `host:port` once it resolved to `addrs`: [`Policy::check_name`],
    /// then the deny list's addresses and the DNS-rebinding guard on every address. The proxy
    /// connects only to addresses that passed this check.
    pub fn check_addrs(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Decision {
        let d = self.check_name(host, port);
        if !d.allowed || self.open {
            return d;
        }
        let name = normalize_host(host);
        if parse_ip_literal(&name).is_some() {
            return d;
        }
        if addrs.is_empty() {
            return Decision::deny(format!("{name} resolves to no address"));
        }
        for &ip in addrs {
            let ip = canonical(ip);
            if let Some(r) = self.deny.iter().find(|r| r.matches_addr(ip, port)) {
                return Decision::deny(format!(
                    "{name} resolves to {ip}, denied by rule {}",
                    r.label
                ));
            }
            if let Some(kind) = special_kind(ip)
                && !self.allow_covers(ip)
            {
                return Decision::deny(format!(
                    "{name} resolves to {ip}, {kind} (add the address or a CIDR holding it to \
                     the allowlist if this is intended)"
                ));
            }
        }
        d
    }

    fn check_literal(&self, ip: IpAddr, port: u16) -> Decision {
        let ip = canonical(ip);
        if let Some(r) = self.deny.iter().find(|r| r.matches_addr(ip, port)) {
            return Decision::deny(format!("denied by rule {}", r.label));
        }
        let covering: Vec<&Rule> = self
            .allow
            .iter()
            .filter(|r| matches!(&r.target, Target::Net(n) if n.contains(ip)))
            .collect();
        if let Some(r) = covering.iter().find(|r| r.ports.allows(port)) {
            return Decision::allow(format!("allowed by rule {}", r.label));
        }
        if !covering.is_empty() {
            return Decision::deny(format!(
                "port {port} is not allowed for {ip} (allowed ports: {})",
                describe_ports(covering.iter().map(|r| r.ports))
            ));
        }
        if is_metadata(ip) {
            return Decision::deny(format!(
                "{ip} is a cloud metadata address (name the address in the allowlist to reach it)"
            ));
        }
        Decision::deny(format!(
            "IP address {ip} is not allowed: connect by host name, or add the address or a CIDR \
             holding it to the allowlist ({})",
            self.allowed_list()
        ))
    }

    fn allow_covers(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|r| matches!(&r.target, Target::Net(n) if n.contains(ip)))
    }

    fn allowed_list(&self) -> String {
        if self.allow_entries.is_empty() {
            return "the allowlist is empty".into();
        }
        let mut s = String::from("allowed: ");
        s += &self
            .allow_entries
            .iter()
            .take(LIST_MAX)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.allow_entries.len() > LIST_MAX {
            s += &format!(", and {} more", self.allow_entries.len() - LIST_MAX);
        }
        s
    }
}

impl Rule {
    fn matches_host(&self, host: &str, port: u16) -> bool {
        matches!(&self.target, Target::Host(p) if p.matches(host)) && self.ports.allows(port)
    }

    fn matches_addr(&self, ip: IpAddr, port: u16) -> bool {
        matches!(&self.target, Target::Net(n) if n.contains(ip)) && self.ports.allows(port)
    }
}

fn clean_list(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

fn describe_ports(ports: impl Iterator<Item = Ports>) -> String {
    let mut list: Vec<u16> = Vec::new();
    for p in ports {
        match p {
            Ports::Any => return "any".into(),
            Ports::Web => list.extend([80, 443]),
            Ports::One(p) => list.push(p),
        }
    }
    list.sort_unstable();
    list.dedup();
    list.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_list(
    list: &'static str,
    entries: &[String],
    default_ports: Ports,
    presets: &Presets,
    notes: &mut Vec<String>,
) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for raw in entries {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let lower = entry.to_ascii_lowercase();
        if presets.is_preset(&lower) {
            let expanded = presets
                .expand(&lower)
                .map_err(|source| PolicyError::Preset {
                    list,
                    entry: entry.to_string(),
                    source,
                })?;
            notes.extend(expanded.notes);
            for host in expanded.entries {
                let mut rule =
                    parse_entry(&host, default_ports).map_err(|problem| PolicyError::BadEntry {
                        list,
                        entry: format!("{host}' (from preset '{lower}"),
                        problem,
                    })?;
                rule.label = format!("{lower} ({})", rule.label);
                rules.push(rule);
            }
            continue;
        }
        let rule = parse_entry(entry, default_ports).map_err(|problem| PolicyError::BadEntry {
            list,
            entry: entry.to_string(),
            problem,
        })?;
        rules.push(rule);
    }
    Ok(rules)
}

/// Parses one non-preset entry. The error is the problem, in words.
fn parse_entry(entry: &str, default_ports: Ports) -> Result<Rule, String> {
    let e = entry.trim().to_ascii_lowercase();
    if e.contains("://") {
        return Err("write the host (and port), not a URL".into());
    }
    let (target, ports) = if let Some(rest) = e.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address in brackets needs the closing ']'")?;
        let net = parse_net(inside)?;
        if !matches!(net.addr, IpAddr::V6(_)) && !inside.contains(':') {
            return Err("brackets are for IPv6 addresses".into());
        }
        let ports = match after {
            "" => default_ports,
            p => parse_port(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?)?,
        };
        (Target::Net(net), ports)
    } else if e.matches(':').count() > 1 {
        // A bare IPv6 address or range (a port needs brackets).
        (Target::Net(parse_net(&e)?), default_ports)
    } else {
        let (host, ports) = match e.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (e.as_str(), default_ports),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.contains('/') || host.parse::<Ipv4Addr>().is_ok() {
            (Target::Net(parse_net(host)?), ports)
        } else {
            (Target::Host(parse_host_pattern(host)?), ports)
        }
    };
    Ok(Rule {
        target,
        ports,
        label: e.strip_suffix('.').unwrap_or(&e).to_string(),
    })
}

fn parse_port(p: &str) -> Result<Ports, String> {
    if p == "*" {
        return Ok(Ports::Any);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "'{p}' is not a port (expected a number from 1 to 65535, or *)"
        )),
        Ok(n) => Ok(Ports::One(n)),
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{addr}' is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "'/{p}' is not a prefix length (expected 0 to {max})"
                ));
            }
        },
    };
    Ok(IpNet::new(ip, prefix))
}

fn parse_host_pattern(host: &str) -> Result<HostPat, String> {
    if host == "*" {
        return Err("'*' alone would allow every host; use the open network mode instead".into());
    }
    if let Some(rest) = host.strip_prefix("*.") {
        if rest.contains('*') {
            return Err(
                "a wildcard is allowed only as the whole first label (*.example.org)".into(),
            );
        }
        if !valid_host(rest) {
            return Err(format!("'{rest}' is not a valid host name"));
        }
        return Ok(HostPat::Suffix(format!(".{rest}")));
    }
    if host.contains('*') {
        return Err("a wildcard is allowed only as the whole first label (*.example.org)".into());
    }
    if !valid_host(host) {
        return Err(format!(
            "'{host}' is not a valid host name (letters, digits, '-', '_' and dots)"
        ));
    }
    Ok(HostPat::Exact(host.to_string()))
}

/// Lowercase, no trailing dot, no IPv6 brackets.
pub(crate) fn normalize_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h);
    match h.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        Some(inner) => inner.to_string(),
        None => h.to_string(),
    }
}

/// `host` (already normalized) as an IP literal, if it is one.
pub(crate) fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_metadata(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    }
}

/// What kind of address the rebinding guard refuses, if it is one.
fn special_kind(ip: IpAddr) -> Option<&'static str> {
    if is_metadata(ip) {
        return Some("a cloud metadata address");
    }
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 0 || v4.is_unspecified() {
                Some("an unspecified address")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_broadcast() {
                Some("a broadcast address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if o[0] >= 240 {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6.is_unspecified() {
                Some("an unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfec0 {
                Some("a private (unique local) address")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: judge the IPv4 address inside.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                special_kind(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_contain_their_addresses() {
        let n = parse_net("10.0.0.0/8").unwrap();
        assert!(n.contains("10.9.8.7".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let n = parse_net("fd00::/8").unwrap();
        assert!(n.contains("fd12::1".parse().unwrap()));
        assert!(!n.contains("fe80::1".parse().unwrap()));
        let all = parse_net("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.7".parse().unwrap()));
        let mapped = parse_net("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.contains("192.168.3.4".parse().unwrap()));
        assert!(!mapped.contains("192.169.0.1".parse().unwrap()));
    }

    #[test]
    fn special_addresses_are_classified() {
        let k = |s: &str| special_kind(s.parse().unwrap());
        assert_eq!(k("127.0.0.1"), Some("a loopback address"));
        assert_eq!(k("::1"), Some("a loopback address"));
        assert_eq!(k("::ffff:127.0.0.1"), Some("a loopback address"));
        assert_eq!(k("10.1.1.1"), Some("a private address"));
        assert_eq!(k("172.16.0.1"), Some("a private address"));
        assert_eq!(k("192.168.1.1"), Some("a private address"));
        assert_eq!(k("169.254.169.254"), Some("a cloud metadata address"));
        assert_eq!(k("100.100.100.200"), Some("a cloud metadata address"));
        assert_eq!(k("fd00:ec2::254"), Some("a cloud metadata address"));
        assert_eq!(k("169.254.1.1"), Some("a link-local address"));
        assert_eq!(
            k("100.64.0.1"),
            Some("a shared (carrier-grade NAT) address")
        );
        assert_eq!(k("0.0.0.0"), Some("an unspecified address"));
        assert_eq!(k("::"), Some("an unspecified address"));
        assert_eq!(k("255.255.255.255"), Some("a broadcast address"));
        assert_eq!(k("224.0.0.1"), Some("a multicast address"));
        assert_eq!(k("ff02::1"), Some("a multicast address"));
        assert_eq!(k("fe80::1"), Some("a link-local address"));
        assert_eq!(k("fd12:3456::1"), Some("a private (unique local) address"));
        assert_eq!(k("64:ff9b::10.0.0.1"), Some("a private address"));
        assert_eq!(k("203.0.113.7"), None);
        assert_eq!(k("100.128.0.1"), None);
        assert_eq!(k("2001:db8::1"), None);
    }

    #[test]
    fn entries_parse_into_rules() {
        let r = parse_entry("Example.ORG.", Ports::Web).unwrap();
        assert!(matches!(r.target, Target::Host(HostPat::Exact(ref h)) if h == "example.org"));
        assert_eq!(r.ports, Ports::Web);
        let r = parse_entry("*.example.org:8443", Ports::Web).unwrap();
        assert!(matches!(r.target, Target::Host(HostPat::Suffix(ref h)) if h == ".example.org"));
        assert_eq!(r.ports, Ports::One(8443));
        assert_eq!(
            parse_entry("h.test:*", Ports::Web).unwrap().ports,
            Ports::Any
        );
        assert_eq!(parse_entry("h.test", Ports::Any).unwrap().ports, Ports::Any);
        for (e, ports) in [
            ("203.0.113.7", Ports::Web),
            ("203.0.113.7:8080", Ports::One(8080)),
            ("10.0.0.0/8", Ports::Web),
            ("10.0.0.0/8:*", Ports::Any),
            ("[::1]", Ports::Web),
            ("[::1]:8080", Ports::One(8080)),
            ("fd00::/8", Ports::Web),
            ("[fd00::/8]:22", Ports::One(22)),
        ] {
            let r = parse_entry(e, Ports::Web).unwrap_or_else(|p| panic!("{e}: {p}"));
            assert!(matches!(r.target, Target::Net(_)), "{e}");
            assert_eq!(r.ports, ports, "{e}");
        }
        for bad in [
            "*",
            "a.*.test",
            "foo*.test",
            "h.test:0",
            "h.test:99999",
            "h.test:http",
            "https://h.test/",
            "10.0.0.0/33",
            "fd00::/129",
            "[::1",
            "bad host.test",
            "a..test",
            "[10.0.0.1]",
        ] {
            assert!(
                parse_entry(bad, Ports::Web).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
