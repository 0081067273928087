//! Named host sets for policies: package registries and git hosting.
//!
//! Git hosting presets (`git:github`, `git:gitlab`, `git:bitbucket`) are built in. Registry
//! presets (`registry:rust`, `registry:python`, `registry:javascript`, `registry:go`,
//! `registry:debian`) name no host in this code: each comes from the caller's overrides
//! (`[network.presets] "registry:rust" = ["your.registry.host"]`), or else is discovered from
//! the worker machine's own package-tool configuration, so a policy reaches the registries (or
//! mirrors) this machine's tools already use:
//!
//! - Rust: `$CARGO_HOME` (default `~/.cargo`) `config.toml`/`config`: `[source.*] registry` and
//!   `[registries.*] index` URLs; `CARGO_REGISTRIES_*_INDEX`; the `HOST-HASH` directory names
//!   under `$CARGO_HOME/registry/index/` and the `dl`/`api` URLs in each one's `config.json`.
//! - Python: `PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL` (and uv's `UV_INDEX_URL`,
//!   `UV_DEFAULT_INDEX`, `UV_EXTRA_INDEX_URL`, `UV_INDEX`), pip config files (`PIP_CONFIG_FILE`,
//!   `/etc/pip.conf`, `/etc/xdg/pip/pip.conf`, `~/.config/pip/pip.conf`, `~/.pip/pip.conf`:
//!   `index-url`, `extra-index-url`); with no index configured, pip's own default index and file
//!   host as the installed pip reports them (`python3`, best effort).
//! - JavaScript: `NPM_CONFIG_REGISTRY`, `YARN_NPM_REGISTRY_SERVER`, `~/.npmrc` and
//!   `/etc/npmrc` (`registry=`, `@scope:registry=`); with no registry configured,
//!   `npm config get registry` (best effort).
//! - Go: `GOPROXY` and `GOSUMDB` from the environment, else the `go env` file, else
//!   `go env GOPROXY GOSUMDB` (best effort).
//! - Debian: the hosts of the `deb`/`deb-src` lines of `/etc/apt/sources.list` and
//!   `/etc/apt/sources.list.d/*.list`, and the `URIs:` of `*.sources` (enabled stanzas).
//!
//! Commands run with a short timeout, from `/`, and only when [`Discovery::run_commands`] is
//! set. What a preset resolves to is cached per [`Presets`] source (process-wide for
//! [`Presets::system`]), and sorted, so a policy built twice is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The registry presets, in the order `registries` lists them.
pub const REGISTRY_PRESETS: [&str; 5] = [
    "registry:rust",
    "registry:python",
    "registry:javascript",
    "registry:go",
    "registry:debian",
];

/// The git hosting presets.
pub const GIT_PRESETS: [&str; 3] = ["git:github", "git:gitlab", "git:bitbucket"];

fn git_hosts(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "git:github" => &["github.com", "*.github.com", "*.githubusercontent.com"],
        "git:gitlab" => &["gitlab.com", "*.gitlab.com"],
        "git:bitbucket" => &["bitbucket.org", "*.bitbucket.org"],
        _ => return None,
    })
}

/// Why a preset could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    #[error("unknown preset '{name}'; known presets: registries, {}, {}", REGISTRY_PRESETS.join(", "), GIT_PRESETS.join(", "))]
    Unknown { name: String },
    #[error(
        "preset '{name}' resolves to no hosts on this machine (looked at: {looked}); define it in \
         errand.toml: [network.presets] \"{name}\" = [\"your.registry.host\"]"
    )]
    Empty { name: String, looked: String },
}

/// A preset's entries (`host`, `*.host`, `host:PORT`, addresses), and remarks for the policy
/// summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    pub entries: Vec<String>,
    pub notes: Vec<String>,
}

/// Where discovery looks. [`Discovery::system`] reads this machine; tests point it at a
/// temporary directory with [`Discovery::isolated`].
#[derive(Clone)]
pub struct Discovery {
    /// The environment variables discovery reads (and the environment of the commands).
    pub env: BTreeMap<String, String>,
    /// The home directory (`~`).
    pub home: Option<PathBuf>,
    /// The system configuration directory (`/etc`).
    pub etc: PathBuf,
    /// Whether to ask `python3`, `npm` and `go` (best effort, with `command_timeout`).
    pub run_commands: bool,
    pub command_timeout: Duration,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are not printed: the environment may hold secrets.
        f.debug_struct("Discovery")
            .field("env_vars", &self.env.len())
            .field("home", &self.home)
            .field("etc", &self.etc)
            .field("run_commands", &self.run_commands)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl Discovery {
    /// This machine: the process environment, `$HOME`, `/etc`, and the package tools.
    pub fn system() -> Discovery {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let home = env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        Discovery {
            env,
            home,
            etc: PathBuf::from("/etc"),
            run_commands: true,
            command_timeout: Duration::from_secs(3),
        }
    }

    /// Only `root/home` and `root/etc`, no environment, no commands.
    pub fn isolated(root: &Path) -> Discovery {
        Discovery {
            env: BTreeMap::new(),
            home: Some(root.join("home")),
            etc: root.join("etc"),
            run_commands: false,
            command_timeout: Duration::from_secs(3),
        }
    }
}

/// A preset's discovered entries and where discovery looked.
#[derive(Debug, Clone, Default)]
struct Found {
    entries: BTreeSet<String>,
    looked: Vec<String>,
}

impl Found {
    fn url(&mut self, url: &str) {
        if let Some(e) = url_entry(url) {
            self.entries.insert(e);
        }
    }
}

struct Source {
    discovery: Discovery,
    cache: Mutex<BTreeMap<&'static str, Arc<Found>>>,
}

impl Source {
    fn found(&self, name: &'static str) -> Arc<Found> {
        // Hold the lock while discovering: concurrent callers wait for one discovery.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(name) {
            return f.clone();
        }
        let d = &self.discovery;
        let mut f = Found::default();
        match name {
            "registry:rust" => d.rust(&mut f),
            "registry:python" => d.python(&mut f),
            "registry:javascript" => d.javascript(&mut f),
            "registry:go" => d.go(&mut f),
            "registry:debian" => d.debian(&mut f),
            _ => {}
        }
        tracing::debug!(preset = name, hosts = f.entries.len(), "discovered preset");
        let f = Arc::new(f);
        cache.insert(name, f.clone());
        f
    }
}

/// Resolves preset names to entries: overrides first, then discovery (cached).
#[derive(Clone)]
pub struct Presets {
    overrides: BTreeMap<String, Vec<String>>,
    source: Arc<Source>,
}

impl fmt::Debug for Presets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presets")
            .field("overrides", &self.overrides)
            .field("discovery", &self.source.discovery)
            .finish()
    }
}

fn system_source() -> Arc<Source> {
    static SYSTEM: OnceLock<Arc<Source>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            Arc::new(Source {
                discovery: Discovery::system(),
                cache: Mutex::new(BTreeMap::new()),
            })
        })
        .clone()
}

impl Presets {
    /// This machine's presets, no overrides. Discovery is shared by the whole process.
    pub fn system() -> Presets {
        Presets::with_overrides(BTreeMap::new())
    }

    /// This machine's presets, with `[network.presets]` overrides (`"registry:rust" =
    /// ["your.registry.host"]`; a key may also name a new preset). Override values are entries
    /// or URLs (`https://mirror.example.test:8443/simple` counts as `mirror.example.test:8443`).
    pub fn with_overrides(overrides: BTreeMap<String, Vec<String>>) -> Presets {
        Presets {
            overrides: lower_keys(overrides),
            source: system_source(),
        }
    }

    /// Presets discovered from `discovery` (its own cache), with overrides.
    pub fn new(discovery: Discovery, overrides: BTreeMap<String, Vec<String>>) -> Presets {
        Presets {
            overrides: lower_keys(overrides),
            source: Arc::new(Source {
                discovery,
                cache: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Whether `name` (lowercase) is written as a preset: `registries`, `registry:…`, `git:…`,
    /// or an override's key.
    pub fn is_preset(&self, name: &str) -> bool {
        name == "registries"
            || name.starts_with("registry:")
            || name.starts_with("git:")
            || self.overrides.contains_key(name)
    }

    /// The entries of preset `name`. An override wins over discovery and the built-ins. A
    /// preset with no hosts is an error saying how to define it; `registries` skips the
    /// registries this machine does not define (with a note) and fails only if none is.
    pub fn expand(&self, name: &str) -> Result<Expanded, PresetError> {
        let name = name.trim().to_ascii_lowercase();
        if let Some(list) = self.overrides.get(&name) {
            let entries = override_entries(list);
            if entries.is_empty() {
                return Err(PresetError::Empty {
                    name: name.clone(),
                    looked: "its [network.presets] entry, which is empty".into(),
                });
            }
            return Ok(Expanded {
                entries,
                notes: Vec::new(),
            });
        }
        if name == "registries" {
            let mut out = Expanded::default();
            let mut missing = Vec::new();
            for reg in REGISTRY_PRESETS {
                match self.expand(reg) {
                    Ok(e) => out.entries.extend(e.entries),
                    Err(_) => missing.push(reg),
                }
            }
            if out.entries.is_empty() {
                return Err(PresetError::Empty {
                    name,
                    looked: "the configuration of every registry preset".into(),
                });
            }
            if !missing.is_empty() {
                tracing::warn!(missing = ?missing, "registries: presets not defined on this machine");
                out.notes.push(format!(
                    "registries leaves out {} (not defined on this machine; set them in [network.presets])",
                    missing.join(", ")
                ));
            }
            out.entries.sort();
            out.entries.dedup();
            return Ok(out);
        }
        if let Some(hosts) = git_hosts(&name) {
            return Ok(Expanded {
                entries: hosts.iter().map(|h| h.to_string()).collect(),
                notes: Vec::new(),
            });
        }
        let Some(reg) = REGISTRY_PRESETS.iter().find(|r| **r == name) else {
            return Err(PresetError::Unknown { name });
        };
        let found = self.source.found(reg);
        if found.entries.is_empty() {
            let looked = if found.looked.is_empty() {
                "nothing".to_string()
            } else {
                found.looked.join(", ")
            };
            return Err(PresetError::Empty { name, looked });
        }
        Ok(Expanded {
            entries: found.entries.iter().cloned().collect(),
            notes: Vec::new(),
        })
    }
}

fn lower_keys(m: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    m.into_iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v))
        .collect()
}

fn override_entries(list: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for e in list {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        if e.contains("://") {
            if let Some(x) = url_entry(e) {
                out.insert(x);
            }
        } else {
            out.insert(e.to_ascii_lowercase());
        }
    }
    out.into_iter().collect()
}

/// The policy entry for a URL (`https://user@host:8443/path` → `host:8443`; ports 80 and 443
/// are dropped, since an entry without a port allows both). Accepts the `sparse+`,
/// `registry+`, `git+`, `mirror+` and `tor+` prefixes, and a bare `host[:port]`. Credentials
/// are never kept.
pub fn url_entry(url: &str) -> Option<String> {
    let mut u = url.trim().trim_matches(|c| c == '"' || c == '\'');
    for prefix in ["sparse+", "registry+", "git+", "mirror+", "tor+"] {
        if let Some(rest) = u.strip_prefix(prefix) {
            u = rest;
        }
    }
    let rest = match u.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
                return None;
            }
            rest
        }
        None => u,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.[]:".contains(&b))
    {
        return None;
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(80)) | Some(Ok(443)) => Some(host),
        Some(Ok(p)) if p > 0 => Some(format!("{host}:{p}")),
        Some(_) => None,
    }
}

impl Discovery {
    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn config_home(&self) -> Option<PathBuf> {
        match self.var("XDG_CONFIG_HOME") {
            Some(x) => Some(PathBuf::from(x)),
            None => self.home.as_ref().map(|h| h.join(".config")),
        }
    }

    /// Reads a small text file, noting that it was looked at.
    fn read(&self, path: &Path, f: &mut Found) -> Option<String> {
        f.looked.push(path.display().to_string());
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() || meta.len() > 1024 * 1024 {
            return None;
        }
        std::fs::read_to_string(path).ok()
    }

    /// Runs a package tool, best effort: its stdout, or `None` on any failure or timeout.
    fn run(&self, program: &str, args: &[&str], f: &mut Found) -> Option<String> {
        if !self.run_commands {
            return None;
        }
        f.looked.push(format!("`{program} {}`", args.join(" ")));
        let mut child = std::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + self.command_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(program, "preset discovery command timed out");
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        };
        if !status.success() {
            return None;
        }
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()?
            .take(64 * 1024)
            .read_to_string(&mut out)
            .ok()?;
        Some(out)
    }

    fn rust(&self, f: &mut Found) {
        let cargo_home = match self.var("CARGO_HOME") {
            Some(h) => PathBuf::from(h),
            None => match &self.home {
                Some(h) => h.join(".cargo"),
                None => return,
            },
        };
        for file in ["config.toml", "config"] {
            let Some(text) = self.read(&cargo_home.join(file), f) else {
                continue;
            };
            let Ok(doc) = text.parse::<toml::Table>() else {
                tracing::debug!(file, "cargo config is not valid TOML");
                continue;
            };
            let tables = |key: &str| {
                doc.get(key)
                    .and_then(|v| v.as_table())
                    .map(|t| t.values().filter_map(|v| v.as_table()).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            for src in tables("source") {
                if let Some(u) = src.get("registry").and_then(|v| v.as_str()) {
                    f.url(u);
                }
            }
            for reg in tables("registries") {
                if let Some(u) = reg.get("index").and_then(|v| v.as_str()) {
                    f.url(u);
                }
            }
        }
        let env_indexes: Vec<String> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("CARGO_REGISTRIES_") && k.ends_with("_INDEX"))
            .map(|(_, v)| v.clone())
            .collect();
        for u in env_indexes {
            f.url(&u);
        }
        let index = cargo_home.join("registry/index");
        f.looked.push(index.display().to_string());
        let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&index)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        dirs.sort();
        for (name, path) in dirs {
            // `HOST-HASH`, the hash being 16 hex digits.
            let Some((host, hash)) = name.rsplit_once('-') else {
                continue;
            };
            if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            f.url(host);
            let Some(text) = self.read(&path.join("config.json"), f) else {
                continue;
            };
            let Ok(cfg) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            for key in ["dl", "api"] {
                if let Some(u) = cfg.get(key).and_then(|v| v.as_str()) {
                    f.url(u);
                }
            }
        }
    }

    fn python(&self, f: &mut Found) {
        let mut has_index = false;
        for var in ["PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"] {
            f.looked.push(format!("${var}"));
            if let Some(v) = self.var(var) {
                f.url(v);
                has_index = true;
            }
        }
        for var in ["PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX"] {
            f.looked.push(format!("${var}"));
            for u in self.var(var).unwrap_or("").split_whitespace() {
                // uv's `UV_INDEX` entries may be `name=url`.
                f.url(u.rsplit_once('=').map_or(u, |(_, url)| url));
            }
        }
        let mut files = Vec::new();
        match self.var("PIP_CONFIG_FILE") {
            Some("/dev/null") | Some("os.devnull") => {}
            Some(p) => files.push(PathBuf::from(p)),
            None => {}
        }
        files.push(self.etc.join("pip.conf"));
        files.push(self.etc.join("xdg/pip/pip.conf"));
        if let Some(c) = self.config_home() {
            files.push(c.join("pip/pip.conf"));
        }
        if let Some(h) = &self.home {
            files.push(h.join(".pip/pip.conf"));
        }
        for file in files {
            let Some(text) = self.read(&file, f) else {
                continue;
            };
            for (key, values) in ini_values(&text) {
                match key.replace('_', "-").as_str() {
                    "index-url" => {
                        has_index = true;
                        values.iter().for_each(|u| f.url(u));
                    }
                    "extra-index-url" => values.iter().for_each(|u| f.url(u)),
                    _ => {}
                }
            }
        }
        if !has_index {
            let script = "from pip._internal.models.index import PyPI\n\
                          print(PyPI.simple_url)\nprint(PyPI.file_storage_domain)\n";
            if let Some(out) = self.run("python3", &["-c", script], f) {
                out.lines().for_each(|l| f.url(l));
            }
        }
    }

    fn javascript(&self, f: &mut Found) {
        let mut has_registry = false;
        for var in [
            "NPM_CONFIG_REGISTRY",
            "npm_config_registry",
            "YARN_NPM_REGISTRY_SERVER",
        ] {
            f.looked.push(format!("${var}"));
            if let Some(v) = self.var(var) {
                f.url(v);
                has_registry = true;
            }
        }
        let mut files = Vec::new();
        if let Some(h) = &self.home {
            files.push(h.join(".npmrc"));
        }
        files.push(self.etc.join("npmrc"));
        for file in files {
            let Some(text) = self.read(&file, f) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with(['#', ';']) {
                    continue;
                }
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let key = key.trim();
                if key == "registry" {
                    has_registry = true;
                    f.url(value);
                } else if key.starts_with('@') && key.ends_with(":registry") {
                    f.url(value);
                }
            }
        }
        if !has_registry && let Some(out) = self.run("npm", &["config", "get", "registry"], f) {
            out.lines().for_each(|l| f.url(l));
        }
    }

    fn go(&self, f: &mut Found) {
        let mut goproxy = self.var("GOPROXY").map(str::to_string);
        let mut gosumdb = self.var("GOSUMDB").map(str::to_string);
        f.looked.push("$GOPROXY".into());
        f.looked.push("$GOSUMDB".into());
        let goenv = match self.var("GOENV") {
            Some(p) => Some(PathBuf::from(p)),
            None => self.config_home().map(|c| c.join("go/env")),
        };
        if let Some(path) = goenv
            && (goproxy.is_none() || gosumdb.is_none())
            && let Some(text) = self.read(&path, f)
        {
            for line in text.lines() {
                if let Some((k, v)) = line.trim().split_once('=') {
                    let v = v.trim().to_string();
                    match k.trim() {
                        "GOPROXY" if goproxy.is_none() => goproxy = Some(v),
                        "GOSUMDB" if gosumdb.is_none() => gosumdb = Some(v),
                        _ => {}
                    }
                }
            }
        }
        if (goproxy.is_none() || gosumdb.is_none())
            && let Some(out) = self.run("go", &["env", "GOPROXY", "GOSUMDB"], f)
        {
            let mut lines = out.lines();
            let (p, s) = (lines.next(), lines.next());
            if goproxy.is_none() {
                goproxy = p.map(str::to_string);
            }
            if gosumdb.is_none() {
                gosumdb = s.map(str::to_string);
            }
        }
        for p in goproxy.unwrap_or_default().split([',', '|']) {
            let p = p.trim();
            if !p.is_empty() && p != "direct" && p != "off" {
                f.url(p);
            }
        }
        let sumdb = gosumdb.unwrap_or_default();
        let parts: Vec<&str> = sumdb.split_whitespace().collect();
        match parts.as_slice() {
            [] | ["off"] => {}
            [name] => f.url(name.split('+').next().unwrap_or(name)),
            [_, url, ..] => f.url(url),
        }
    }

    fn debian(&self, f: &mut Found) {
        let apt = self.etc.join("apt");
        let mut files = vec![apt.join("sources.list")];
        let dir = apt.join("sources.list.d");
        f.looked.push(dir.display().to_string());
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        extra.sort();
        files.extend(extra);
        for file in files {
            let Some(text) = self.read(&file, f) else {
                continue;
            };
            if file.extension().is_some_and(|x| x == "sources") {
                for uri in deb822_uris(&text) {
                    f.url(&uri);
                }
            } else {
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("");
                    let mut words = line.split_whitespace();
                    if !matches!(words.next(), Some("deb") | Some("deb-src")) {
                        continue;
                    }
                    let mut uri = words.next();
                    if uri.is_some_and(|w| w.starts_with('[')) {
                        // Options: `[arch=amd64 signed-by=…]`, possibly several words.
                        let mut w = uri;
                        while let Some(word) = w {
                            if word.ends_with(']') {
                                break;
                            }
                            w = words.next();
                        }
                        uri = words.next();
                    }
                    if let Some(u) = uri {
                        f.url(u);
                    }
                }
            }
        }
    }
}

/// `key = value` pairs of an INI file (any section), with indented continuation lines as
/// further values.
fn ini_values(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, values)) = out.last_mut() {
                values.extend(trimmed.split_whitespace().map(str::to_string));
            }
            continue;
        }
        if trimmed.starts_with('[') {
            out.push((String::new(), Vec::new()));
            continue;
        }
        let Some((k, v)) = trimmed.split_once(['=', ':']) else {
            continue;
        };
        out.push((
            k.trim().to_ascii_lowercase(),
            v.split_whitespace().map(str::to_string).collect(),
        ));
    }
    out
}

/// The `URIs:` of the enabled stanzas of a deb822 `.sources` file.
fn deb822_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let flush = |stanza: &mut Vec<(String, String)>, out: &mut Vec<String>| {
        let enabled = !stanza
            .iter()
            .any(|(k, v)| k == "enabled" && v.trim().eq_ignore_ascii_case("no"));
        if enabled {
            for (k, v) in stanza.iter() {
                if k == "uris" {
                    out.extend(v.split_whitespace().map(str::to_string));
                }
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stanza, &mut out);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    flush(&mut stanza, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_entries() {
        assert_eq!(
            url_entry("https://user:tok@Mirror.Example.Test/simple/").as_deref(),
            Some("mirror.example.test")
        );
        assert_eq!(
            url_entry("sparse+https://idx.example.test:443/").as_deref(),
            Some("idx.example.test")
        );
        assert_eq!(
            url_entry("http://m.example.test:8080/x").as_deref(),
            Some("m.example.test:8080")
        );
        assert_eq!(
            url_entry("sum.example.test").as_deref(),
            Some("sum.example.test")
        );
        assert_eq!(
            url_entry("http://[fd00::1]:3128/").as_deref(),
            Some("[fd00::1]:3128")
        );
        assert_eq!(url_entry("file:///srv/mirror"), None);
        assert_eq!(url_entry("https://"), None);
    }

    #[test]
    fn ini_and_deb822_are_read() {
        let ini = "[global]\nindex-url = https://a.example.test/simple\nextra-index-url =\n    https://b.example.test/x\n    https://c.example.test/y\n";
        let v = ini_values(ini);
        assert_eq!(v[1].0, "index-url");
        assert_eq!(
            v[2].1,
            vec!["https://b.example.test/x", "https://c.example.test/y"]
        );
        let sources = "Types: deb\nURIs: http://d.example.test/debian\n  http://e.example.test/debian\nSuites: x\n\n# off\nTypes: deb\nURIs: http://off.example.test/\nEnabled: no\n";
        assert_eq!(
            deb822_uris(sources),
            vec![
                "http://d.example.test/debian",
                "http://e.example.test/debian"
            ]
        );
    }
}
