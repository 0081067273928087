//! Registry presets discovered from fake package-tool configuration under a temporary
//! directory, overrides, and the errors for presets a machine does not define.

use errand_proxy::{Discovery, Policy, Presets};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn entries(p: &Presets, name: &str) -> Vec<String> {
    p.expand(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .entries
}

/// A machine with every kind of configuration, all under `root`.
fn fake_machine(root: &Path) -> Discovery {
    write(
        root,
        "home/.cargo/config.toml",
        r#"
[source.crates-io]
replace-with = "mirror"

[source.mirror]
registry = "sparse+https://crates-mirror.example.test/index/"

[registries.corp]
index = "https://user:secret@corp-idx.example.test:8443/git/index"
"#,
    );
    write(
        root,
        "home/.cargo/registry/index/idx.example.test-0123456789abcdef/config.json",
        r#"{"dl": "https://dl.example.test:443/api/v1/crates", "api": "https://api.example.test"}"#,
    );
    // Not a HOST-HASH directory: ignored.
    std::fs::create_dir_all(root.join("home/.cargo/registry/index/junk")).unwrap();
    write(
        root,
        "etc/pip.conf",
        "[global]\nindex-url = https://pypi-mirror.example.test/simple\n",
    );
    write(
        root,
        "home/.config/pip/pip.conf",
        "[global]\nextra-index-url =\n    https://extra1.example.test/simple\n    http://extra2.example.test:8080/simple\n",
    );
    write(
        root,
        "home/.npmrc",
        "; comment\nregistry=https://npm.example.test/\n@corp:registry=https://npm-corp.example.test:4873/\n//npm.example.test/:_authToken=secret\n",
    );
    write(
        root,
        "home/.config/go/env",
        "GOPROXY=https://goproxy.example.test|https://goproxy2.example.test,direct\n",
    );
    write(
        root,
        "etc/apt/sources.list",
        "# main\ndeb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://deb.example.test/debian bookworm main\ndeb-src http://deb-src.example.test/debian bookworm main\n",
    );
    write(
        root,
        "etc/apt/sources.list.d/extra.sources",
        "Types: deb\nURIs: https://sec.example.test/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://off.example.test/debian\nEnabled: no\n",
    );
    write(
        root,
        "etc/apt/sources.list.d/ignored.list.disabled",
        "deb http://disabled.example.test/debian bookworm main\n",
    );
    let mut d = Discovery::isolated(root);
    d.env.insert(
        "PIP_EXTRA_INDEX_URL".into(),
        "https://env-extra.example.test/simple".into(),
    );
    d.env.insert(
        "GOSUMDB".into(),
        "sum.example.test+key https://sumproxy.example.test".into(),
    );
    d
}

#[test]
fn registries_are_discovered_from_package_tool_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let p = Presets::new(fake_machine(dir.path()), BTreeMap::new());
    assert_eq!(
        entries(&p, "registry:rust"),
        s(&[
            "api.example.test",
            "corp-idx.example.test:8443",
            "crates-mirror.example.test",
            "dl.example.test",
            "idx.example.test",
        ])
    );
    // An index is configured, so pip's default is not asked for (commands are off anyway).
    assert_eq!(
        entries(&p, "registry:python"),
        s(&[
            "env-extra.example.test",
            "extra1.example.test",
            "extra2.example.test:8080",
            "pypi-mirror.example.test",
        ])
    );
    assert_eq!(
        entries(&p, "registry:javascript"),
        s(&["npm-corp.example.test:4873", "npm.example.test"])
    );
    assert_eq!(
        entries(&p, "registry:go"),
        s(&[
            "goproxy.example.test",
            "goproxy2.example.test",
            "sumproxy.example.test"
        ])
    );
    assert_eq!(
        entries(&p, "registry:debian"),
        s(&[
            "deb-src.example.test",
            "deb.example.test",
            "sec.example.test"
        ])
    );
    // `registries` is all of them.
    let all = entries(&p, "registries");
    assert_eq!(all.len(), 5 + 4 + 2 + 3 + 3, "{all:?}");
    assert!(p.expand("registries").unwrap().notes.is_empty());
}

#[test]
fn a_policy_with_presets_allows_their_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let p = Presets::new(fake_machine(dir.path()), BTreeMap::new());
    let policy = Policy::parse_with(&s(&["registry:rust", "registry:python"]), &[], &p).unwrap();
    let d = policy.check_name("dl.example.test", 443);
    assert!(d.allowed);
    assert_eq!(d.reason, "allowed by rule registry:rust (dl.example.test)");
    assert!(policy.check_name("corp-idx.example.test", 8443).allowed);
    assert!(!policy.check_name("corp-idx.example.test", 443).allowed);
    assert!(policy.check_name("extra2.example.test", 8080).allowed);
    assert!(!policy.check_name("npm.example.test", 443).allowed);
    let d = policy.check_name("elsewhere.test", 443);
    assert_eq!(
        d.reason,
        "elsewhere.test is not in the allowlist (allowed: registry:rust, registry:python)"
    );
    assert!(
        policy.summary().contains("(9 hosts from presets)"),
        "{}",
        policy.summary()
    );
}

#[test]
fn go_settings_come_from_the_environment_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = fake_machine(dir.path());
    d.env.insert(
        "GOPROXY".into(),
        "https://envproxy.example.test/mod,off".into(),
    );
    d.env.insert("GOSUMDB".into(), "off".into());
    let p = Presets::new(d, BTreeMap::new());
    assert_eq!(entries(&p, "registry:go"), s(&["envproxy.example.test"]));
    let dir = tempfile::tempdir().unwrap();
    let mut d = Discovery::isolated(dir.path());
    d.env.insert("GOSUMDB".into(), "sum.example.test".into());
    assert_eq!(
        entries(&Presets::new(d, BTreeMap::new()), "registry:go"),
        s(&["sum.example.test"])
    );
}

#[test]
fn cargo_home_and_pip_config_file_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "elsewhere/cargo/config",
        "[registries.x]\nindex = \"https://legacy-config.example.test/index\"\n",
    );
    write(
        dir.path(),
        "elsewhere/pip.ini",
        "[install]\nindex_url: https://pip-file.example.test/simple\n",
    );
    let mut d = Discovery::isolated(dir.path());
    d.env.insert(
        "CARGO_HOME".into(),
        dir.path().join("elsewhere/cargo").display().to_string(),
    );
    d.env.insert(
        "PIP_CONFIG_FILE".into(),
        dir.path().join("elsewhere/pip.ini").display().to_string(),
    );
    d.env.insert(
        "CARGO_REGISTRIES_OTHER_INDEX".into(),
        "sparse+https://env-idx.example.test/".into(),
    );
    let p = Presets::new(d, BTreeMap::new());
    assert_eq!(
        entries(&p, "registry:rust"),
        s(&["env-idx.example.test", "legacy-config.example.test"])
    );
    assert_eq!(
        entries(&p, "registry:python"),
        s(&["pip-file.example.test"])
    );
}

#[test]
fn an_undefined_preset_says_how_to_define_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = Presets::new(Discovery::isolated(dir.path()), BTreeMap::new());
    let e = Policy::parse_with(&s(&["registry:go"]), &[], &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preset 'registry:go' resolves to no hosts on this machine"),
        "{e}"
    );
    assert!(
        e.contains(r#"[network.presets] "registry:go" = ["your.registry.host"]"#),
        "{e}"
    );
    assert!(e.contains("$GOPROXY"), "{e}");
    let e = Policy::parse_with(&s(&["registries"]), &[], &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preset 'registries' resolves to no hosts"),
        "{e}"
    );
}

#[test]
fn registries_leaves_out_the_undefined_ones_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "home/.npmrc",
        "registry=https://npm.example.test/\n",
    );
    let p = Presets::new(Discovery::isolated(dir.path()), BTreeMap::new());
    let policy = Policy::parse_with(&s(&["registries"]), &[], &p).unwrap();
    assert!(policy.check_name("npm.example.test", 443).allowed);
    let sum = policy.summary();
    assert!(
        sum.contains(
            "registries leaves out registry:rust, registry:python, registry:go, registry:debian"
        ),
        "{sum}"
    );
}

#[test]
fn overrides_win_over_discovery_and_may_define_new_presets() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = BTreeMap::new();
    o.insert(
        "registry:rust".to_string(),
        s(&["https://override.example.test/x", "*.cdn.example.test"]),
    );
    o.insert("Corp".to_string(), s(&["corp.example.test:8443"]));
    o.insert("registry:go".to_string(), vec![]);
    let p = Presets::new(fake_machine(dir.path()), o);
    assert_eq!(
        entries(&p, "registry:rust"),
        s(&["*.cdn.example.test", "override.example.test"])
    );
    let policy = Policy::parse_with(&s(&["registry:rust", "corp"]), &[], &p).unwrap();
    assert!(policy.check_name("a.cdn.example.test", 443).allowed);
    assert!(!policy.check_name("dl.example.test", 443).allowed);
    assert_eq!(
        policy.check_name("corp.example.test", 8443).reason,
        "allowed by rule corp (corp.example.test:8443)"
    );
    let e = p.expand("registry:go").unwrap_err().to_string();
    assert!(
        e.contains("its [network.presets] entry, which is empty"),
        "{e}"
    );
    // A bad override entry names the entry and the preset.
    let mut o = BTreeMap::new();
    o.insert("registry:rust".to_string(), s(&["bad host"]));
    let p = Presets::new(Discovery::isolated(dir.path()), o);
    let e = Policy::parse_with(&s(&["registry:rust"]), &[], &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad allow entry 'bad host' (from preset 'registry:rust'"),
        "{e}"
    );
}

#[test]
fn discovery_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "home/.npmrc",
        "registry=https://one.example.test/\n",
    );
    let p = Presets::new(Discovery::isolated(dir.path()), BTreeMap::new());
    assert_eq!(entries(&p, "registry:javascript"), s(&["one.example.test"]));
    write(
        dir.path(),
        "home/.npmrc",
        "registry=https://two.example.test/\n",
    );
    // The same source (clones share it) answers from its cache.
    let clone = p.clone();
    assert_eq!(
        entries(&clone, "registry:javascript"),
        s(&["one.example.test"])
    );
    // A new source reads again.
    let fresh = Presets::new(Discovery::isolated(dir.path()), BTreeMap::new());
    assert_eq!(
        entries(&fresh, "registry:javascript"),
        s(&["two.example.test"])
    );
}

#[cfg(unix)]
#[test]
fn package_tools_are_asked_when_nothing_is_configured_with_a_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "npm",
        r#"[ "$1 $2 $3" = "config get registry" ] && echo https://npm-cmd.example.test/"#,
    );
    script(
        "python3",
        "echo https://pip-cmd.example.test/simple; echo files.example.test",
    );
    // `go` hangs: discovery gives up after the timeout.
    script("go", "exec sleep 30");
    let mut d = Discovery::isolated(dir.path());
    d.run_commands = true;
    d.command_timeout = Duration::from_millis(500);
    d.env.insert("PATH".into(), bin.display().to_string());
    let p = Presets::new(d.clone(), BTreeMap::new());
    assert_eq!(
        entries(&p, "registry:javascript"),
        s(&["npm-cmd.example.test"])
    );
    assert_eq!(
        entries(&p, "registry:python"),
        s(&["files.example.test", "pip-cmd.example.test"])
    );
    let started = Instant::now();
    let e = p.expand("registry:go").unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a hanging tool must not hang discovery"
    );
    assert!(e.contains("`go env GOPROXY GOSUMDB`"), "{e}");
    // Without run_commands, the tools are not asked.
    d.run_commands = false;
    assert!(
        Presets::new(d, BTreeMap::new())
            .expand("registry:javascript")
            .is_err()
    );
}
