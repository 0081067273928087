//! The setup phase of an attempt, and its cache.
//!
//! An environment's `setup` (a script in the repository or a shell command) runs before the
//! agent, in a box of its own: with the setup network mode and every secret in its
//! environment. Its output streams as events (`call_id` `"setup"`) under a notice. Then that
//! box is destroyed, and the agent's box starts with the agent network mode and only the
//! secrets exposed to the agent.
//!
//! What setup produced outside git (untracked and ignored files in the workspace, such as
//! `node_modules/`, `.venv/` or `target/`, and the box's private `$HOME`) is saved as a
//! snapshot under the worker's cache, keyed by the setup command, the setup script and the
//! lockfiles (their git object ids at the attempt's commit), the rootfs and the environment.
//! A later attempt with the same key restores the snapshot instead of running setup (an
//! extra read-only lower layer of its overlay workspace, or a copy into a plain checkout),
//! then runs `maintenance` when the environment has one.
//!
//! `$HOME` lives on a tmpfs inside the box, so it travels as a tar archive made and unpacked
//! *inside* boxes; the host only stores the bytes and never unpacks what a box produced. The
//! workspace side is listed by [`errand_git::scan`] through a fresh git directory, and copied
//! on the host without following symlinks and without overwriting tracked files.
//!
//! Setup gets every secret, the agent only the exposed ones: before the outputs are cached or
//! handed to the agent's box, the values of the secrets not exposed to the agent are replaced
//! in every file setup (or maintenance) wrote, in the workspace and in the `$HOME` archive
//! ([`crate::setup_scrub`]), with a notice per file. A snapshot is saved scrubbed, so a hit
//! restores no value; the notices are kept in its metadata and repeated.
//!
//! Untracked files that setup created (and no `.gitignore` covers) are kept out of the
//! agent's commit: the commit excludes them, and the agent's box gets them in
//! `.git/info/exclude` so that `git status` does not show them either.

use crate::checkpoint::CheckpointSink;
use crate::setup_scrub::SetupScrubbed;
use crate::{LEASE_WALL_TIME, RunError, RunState, Worker};
use errand_agent::tools::StreamedCommand;
use errand_core::{EnvironmentSnapshot, NetworkConfig, NetworkMode, SetupInfo};
use errand_sandbox::ns::NetMode;
use errand_sandbox::{BoxSpec, ExecRequest, SandboxBox, Stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Well-known lockfiles at the repository root that key the snapshot when the environment
/// names none.
pub const DEFAULT_LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lockb",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "requirements.txt",
    "go.sum",
    "Gemfile.lock",
    "composer.lock",
];

/// Format of a snapshot directory; a different version is a miss. 2: the values of secrets
/// not exposed to the agent are scrubbed from it.
const SNAPSHOT_VERSION: u32 = 2;
/// The `call_id` of setup and maintenance commands in the event log.
pub const SETUP_CALL_ID: &str = "setup";
/// Lines of a failed setup's output quoted in the attempt's error.
const ERROR_TAIL_LINES: usize = 12;
/// Files of setup's outputs named one by one in notices when they held a secret's value.
const MAX_SCRUB_NOTICES: usize = 20;

// -------------------------------------------------------------------------------------------
// Secrets
// -------------------------------------------------------------------------------------------

/// The environment's secrets with their values, read from the worker's own environment.
/// Held in memory only: never written to the task, the snapshot, the store or an event.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Every secret: the setup phase (and maintenance) gets these.
    all: Vec<(String, String)>,
    /// Names of the secrets with `expose_to_agent`.
    exposed: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.names())
            .field("exposed", &self.exposed)
            .finish()
    }
}

impl Secrets {
    /// Reads each secret's `from_env` variable through `lookup`. A variable that is not set
    /// (or not UTF-8) fails with a message naming the secret and the variable.
    pub fn resolve_with(
        secrets: &BTreeMap<String, errand_core::SecretConfig>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, String> {
        let mut out = Secrets::default();
        for (name, sc) in secrets {
            let Some(value) = lookup(&sc.from_env) else {
                return Err(format!(
                    "secret {name}: the worker's environment variable {} is not set; set it where the worker runs (errand serve), or remove the secret from the environment",
                    sc.from_env
                ));
            };
            // A value too short to redact reliably is not given to any box (the worker says so).
            if value.len() < errand_core::redact::MIN_SECRET_LEN {
                continue;
            }
            out.all.push((name.clone(), value));
            if sc.expose_to_agent {
                out.exposed.push(name.clone());
            }
        }
        Ok(out)
    }

    /// [`Secrets::resolve_with`] over this process's environment.
    pub fn resolve(snapshot: &EnvironmentSnapshot) -> Result<Secrets, String> {
        Secrets::resolve_with(&snapshot.secrets, |var| std::env::var(var).ok())
    }

    /// Names of every secret, in order.
    pub fn names(&self) -> Vec<&str> {
        self.all.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Variables for the setup phase: every secret.
    pub fn for_setup(&self) -> Vec<(String, String)> {
        self.all.clone()
    }

    /// Variables for the agent's box and the checks: only the exposed secrets.
    pub fn for_agent(&self) -> Vec<(String, String)> {
        self.all
            .iter()
            .filter(|(k, _)| self.exposed.contains(k))
            .cloned()
            .collect()
    }

    /// A redactor of the secrets not exposed to the agent: what the setup phase wrote into
    /// files is scrubbed with it before the agent's box or the cache gets it.
    pub fn hidden_redactor(&self) -> errand_core::redact::Redactor {
        errand_core::redact::Redactor::new(
            self.all
                .iter()
                .filter(|(k, _)| !self.exposed.contains(k))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// The values, for redacting them from output (log redaction plugs in here).
    pub fn values(&self) -> Vec<&str> {
        self.all.iter().map(|(_, v)| v.as_str()).collect()
    }
}

// -------------------------------------------------------------------------------------------
// Network of a phase (the egress proxy's integration point)
// -------------------------------------------------------------------------------------------

/// What a phase's box needs for its network mode.
#[derive(Debug, Clone)]
pub struct PhaseNetwork {
    /// `setup` or `agent`.
    pub phase: &'static str,
    /// The mode the box is created with.
    pub net: NetMode,
    /// Extra variables for every command of the box (in `allowlist` mode: `HTTP_PROXY`,
    /// `HTTPS_PROXY`, `NO_PROXY` pointing at the bridged proxy).
    pub env: Vec<(String, String)>,
    /// Host Unix sockets bridged onto the box's loopback (the egress proxy).
    pub bridges: Vec<errand_sandbox::Bridge>,
    /// The egress proxy's denials, for the agent's tool output.
    pub proxy_feed: Option<crate::egress::DenialFeed>,
}

impl PhaseNetwork {
    /// Adds this phase's network to a box specification.
    pub fn apply(&self, spec: &mut BoxSpec) {
        spec.net = Some(self.net);
        spec.env.extend(self.env.iter().cloned());
        spec.bridges.extend(self.bridges.iter().cloned());
    }
}

impl Worker {
    /// The network of one phase's box, decided before anything runs: `off` and `open` need
    /// nothing but the box's own mode; `allowlist` starts the phase's egress proxy (kept in
    /// `state` until the attempt ends) on a socket in `dir`, bridged to `127.0.0.1:3128` in the
    /// box, with the proxy variables set. Every decision of the proxy becomes a `net` event.
    pub(crate) async fn phase_network(
        &self,
        attempt: &str,
        phase: &'static str,
        mode: NetworkMode,
        policy: &NetworkConfig,
        dir: &Path,
        state: &mut RunState,
    ) -> Result<PhaseNetwork, RunError> {
        let mut out = PhaseNetwork {
            phase,
            net: NetMode::Off,
            env: Vec::new(),
            bridges: Vec::new(),
            proxy_feed: None,
        };
        match mode {
            NetworkMode::Off => {}
            NetworkMode::Open => {
                self.notice(
                    attempt,
                    format!(
                        "network of the {phase} phase: OPEN (the host's network, as the environment asks)"
                    ),
                )
                .await?;
                out.net = NetMode::Open;
            }
            NetworkMode::Allowlist => {
                if !self.sandbox.isolated() {
                    return Err(RunError::Failed(format!(
                        "network mode 'allowlist' for the {phase} phase needs the box (its own network namespace); this worker runs with --sandbox none, where commands use the host's network"
                    )));
                }
                let pol = crate::egress::policy(policy, &policy.presets)
                    .await
                    .map_err(RunError::Failed)?;
                let proxy = crate::egress::start(
                    phase,
                    pol,
                    dir,
                    self.client.clone(),
                    attempt,
                    &self.config.name,
                )
                .await
                .map_err(|e| RunError::Failed(format!("starting the egress proxy: {e}")))?;
                self.notice(
                    attempt,
                    format!(
                        "network of the {phase} phase: allowlist through the egress proxy on 127.0.0.1:{} — {}",
                        crate::egress::PROXY_PORT,
                        proxy.summary()
                    ),
                )
                .await?;
                out.net = NetMode::Allowlist;
                out.env = errand_sandbox::proxy_env(crate::egress::PROXY_PORT);
                out.bridges.push(errand_sandbox::Bridge {
                    port: crate::egress::PROXY_PORT,
                    socket: proxy.socket.clone(),
                    // The proxy takes the box's connections itself: one relay, not two.
                    handoff: true,
                });
                out.proxy_feed = Some(proxy.feed());
                state.proxies.push(proxy);
            }
        }
        Ok(out)
    }
}

// -------------------------------------------------------------------------------------------
// The cache key and the snapshot store
// -------------------------------------------------------------------------------------------

/// What the setup phase of one attempt will do, decided before the workspace is made.
#[derive(Debug)]
pub struct SetupPlan {
    pub command: String,
    /// 64 hex digits.
    pub key: String,
    /// The cached snapshot for `key`, if there is a usable one.
    pub snapshot: Option<Snapshot>,
}

impl SetupPlan {
    pub fn short_key(&self) -> &str {
        &self.key[..12.min(self.key.len())]
    }
}

/// A saved snapshot: `<cache>/<key>/` holding `meta.json`, `files/` (the workspace paths
/// setup left outside git, at their relative paths) and `home.tar` (the box's `$HOME`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
}

impl Snapshot {
    pub fn files(&self) -> PathBuf {
        self.dir.join("files")
    }
    pub fn home_tar(&self) -> Option<PathBuf> {
        let p = self.dir.join("home.tar");
        (self.meta.home && p.is_file()).then_some(p)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub version: u32,
    pub key: String,
    /// The setup command that made it.
    pub setup: String,
    /// The environment name, or the repository.
    pub scope: String,
    pub created_ms: i64,
    /// Files plus `home.tar`.
    pub bytes: u64,
    /// Untracked, not ignored paths: kept out of commits.
    pub untracked: Vec<String>,
    /// Ignored paths.
    pub ignored: Vec<String>,
    /// Whether `home.tar` holds the box's `$HOME`.
    pub home: bool,
    /// The files in which setup had written a secret's value, replaced before saving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrubbed: Vec<crate::setup_scrub::SetupScrubbed>,
}

/// What a snapshot belongs to: the environment (if any) and the repository.
fn scope(task: &errand_core::Task) -> String {
    match &task.environment.name {
        Some(n) => format!("env:{n} repo:{}", task.repo),
        None => format!("repo:{}", task.repo),
    }
}

/// The exclude patterns of what setup left: its untracked paths (kept out of `git status`
/// and the commit) and its ignored ones (so that they stay out of the commit even if the
/// agent edits `.gitignore`).
fn exclude_patterns(untracked: &[String], ignored: &[String]) -> Vec<String> {
    let mut v: Vec<String> = untracked
        .iter()
        .chain(ignored)
        .map(|p| errand_git::scan::exclude_pattern(p))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The paths whose contents key the snapshot: the setup command's first word (when it is a
/// file of the repository), and the lockfiles.
fn keyed_paths(snapshot: &EnvironmentSnapshot, command: &str) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    if let Some(first) = command.split_whitespace().next() {
        paths.push(first.to_string());
    }
    match &snapshot.lockfiles {
        Some(l) => paths.extend(l.iter().cloned()),
        None => paths.extend(DEFAULT_LOCKFILES.iter().map(|s| s.to_string())),
    }
    paths
}

/// The snapshot key: sha256 over the setup command, the tree entries (path, mode, object id)
/// of the keyed files at the attempt's commit, the lockfiles the environment names (found or
/// not), the rootfs, the scope and the names of the secrets kept from the agent (a snapshot
/// keeps the values of the exposed ones, so one made while a secret was exposed is never
/// restored once it is not).
pub fn cache_key(
    command: &str,
    lockfiles: Option<&[String]>,
    entries: &[errand_git::scan::TreeEntry],
    rootfs: Option<&str>,
    scope: &str,
    hidden: &[&str],
) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("errand-setup", &SNAPSHOT_VERSION.to_string());
    field("setup", command);
    field("rootfs", rootfs.unwrap_or(""));
    field("scope", scope);
    if let Some(l) = lockfiles {
        field("lockfiles", &l.join("\n"));
    }
    if !hidden.is_empty() {
        field("hidden-secrets", &hidden.join("\n"));
    }
    for e in entries {
        field(
            &format!("file:{}", e.path),
            &format!("{} {}", e.mode, e.oid),
        );
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Snapshots in use by running attempts of this process (an overlay's lower layer, or a copy
/// in progress): never pruned.
static IN_USE: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// Marks a snapshot as in use until dropped.
#[derive(Debug)]
pub struct InUse(PathBuf);

impl InUse {
    pub fn new(dir: &Path) -> InUse {
        if let Ok(mut m) = IN_USE.lock() {
            *m.entry(dir.to_path_buf()).or_insert(0) += 1;
        }
        InUse(dir.to_path_buf())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Ok(mut m) = IN_USE.lock()
            && let Some(n) = m.get_mut(&self.0)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.0);
            }
        }
    }
}

fn in_use(dir: &Path) -> bool {
    IN_USE.lock().map(|m| m.contains_key(dir)).unwrap_or(true)
}

/// Reads the snapshot for `key`, if one is there and usable. A broken one is moved aside.
pub fn lookup(cache: &Path, key: &str) -> Option<Snapshot> {
    let dir = cache.join(key);
    if !dir.is_dir() {
        return None;
    }
    let meta = std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<SnapshotMeta>(&b).ok());
    match meta {
        Some(meta)
            if meta.version == SNAPSHOT_VERSION
                && meta.key == key
                && dir.join("files").is_dir() =>
        {
            // Recently used snapshots are pruned last.
            let _ = std::fs::write(dir.join("used"), errand_core::now_ms().to_string());
            Some(Snapshot { dir, meta })
        }
        _ => {
            tracing::warn!(dir = %dir.display(), "setup snapshot is unreadable; discarding it");
            if !in_use(&dir) {
                discard(cache, &dir);
            }
            None
        }
    }
}

/// Renames a snapshot aside (so it vanishes at once) and removes it.
fn discard(cache: &Path, dir: &Path) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = cache.join(format!(".trash-{name}-{}", errand_core::new_id()));
    match std::fs::rename(dir, &trash) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&trash);
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a setup snapshot failed")
        }
    }
}

/// Keeps the `keep` most recently made or used snapshots (and any in use), removes the rest
/// and leftovers of interrupted saves. Returns (snapshots kept, their total bytes).
pub fn prune(cache: &Path, keep: usize) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return (0, 0);
    };
    let mut snaps: Vec<(i64, PathBuf, u64)> = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".trash-") {
            // Interrupted saves: old enough that no save of this process is still writing.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if old {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        let meta = std::fs::read(path.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SnapshotMeta>(&b).ok());
        let Some(meta) = meta else { continue };
        let used = std::fs::read_to_string(path.join("used"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        snaps.push((used.max(meta.created_ms), path, meta.bytes));
    }
    snaps.sort_by_key(|s| std::cmp::Reverse(s.0));
    let (mut kept, mut bytes) = (0, 0);
    for (i, (_, path, size)) in snaps.into_iter().enumerate() {
        if i < keep || in_use(&path) {
            kept += 1;
            bytes += size;
        } else {
            tracing::info!(dir = %path.display(), "pruning setup snapshot");
            discard(cache, &path);
        }
    }
    (kept, bytes)
}

/// Decides the setup phase of an attempt: nothing without `setup`; else the key and, when
/// one is cached, the snapshot (marked in use by the returned guard).
pub async fn plan(
    cache: &Path,
    mirror: &Path,
    commit: &str,
    task: &errand_core::Task,
) -> Result<Option<(SetupPlan, Option<InUse>)>, String> {
    let snap = &task.environment;
    let Some(command) = snap.setup.as_ref().filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let paths = keyed_paths(snap, command);
    let entries = errand_git::scan::tree_entries(mirror, commit, &paths)
        .await
        .map_err(|e| format!("reading the setup script and lockfiles: {e}"))?;
    let hidden: Vec<&str> = snap
        .secrets
        .iter()
        .filter(|(_, s)| !s.expose_to_agent)
        .map(|(n, _)| n.as_str())
        .collect();
    let key = cache_key(
        command,
        snap.lockfiles.as_deref(),
        &entries,
        snap.rootfs.as_deref(),
        &scope(task),
        &hidden,
    );
    let (cache, k) = (cache.to_path_buf(), key.clone());
    let snapshot = tokio::task::spawn_blocking(move || lookup(&cache, &k))
        .await
        .unwrap_or(None);
    let guard = snapshot.as_ref().map(|s| InUse::new(&s.dir));
    Ok(Some((
        SetupPlan {
            command: command.clone(),
            key,
            snapshot,
        },
        guard,
    )))
}

/// `cp` that never follows a symlink in what it copies, keeps modes and times (build tools
/// compare them), and shares blocks where the file system can.
fn cp_command(target_dir: &Path, sources: &[PathBuf]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("cp");
    c.args([
        "-R",
        "--no-dereference",
        "--preserve=mode,timestamps,links",
        "--reflink=auto",
        "-t",
    ])
    .arg(target_dir)
    .arg("--")
    .args(sources)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    c
}

async fn run_cp(target_dir: &Path, sources: &[PathBuf]) -> Result<(), String> {
    for chunk in sources.chunks(256) {
        let out = cp_command(target_dir, chunk)
            .output()
            .await
            .map_err(|e| format!("running cp: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "copying into {}: {}",
                target_dir.display(),
                errand_core::text::title_of(err.trim(), 300)
            ));
        }
    }
    Ok(())
}

/// Drops paths that lie under another path of the list (`a/` covers `a/b`); strips the
/// trailing `/` of directories.
fn outermost(paths: &[String]) -> Vec<String> {
    let mut v: Vec<String> = paths
        .iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty() && !p.split('/').any(|c| c == ".." || c == "." || c.is_empty()))
        .collect();
    v.sort();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in v {
        if !out.iter().any(|o| p.starts_with(&format!("{o}/"))) {
            out.push(p);
        }
    }
    out
}

/// Copies `paths` (relative, listed by git: real paths inside `ws`) from `ws` into `dest`,
/// creating their parent directories.
async fn copy_out(ws: &Path, dest: &Path, paths: &[String]) -> Result<(), String> {
    let mut by_parent: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for p in outermost(paths) {
        let parent = p
            .rsplit_once('/')
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        by_parent.entry(parent).or_default().push(ws.join(&p));
    }
    for (parent, sources) in by_parent {
        let target = dest.join(&parent);
        tokio::fs::create_dir_all(&target)
            .await
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
        run_cp(&target, &sources).await?;
    }
    Ok(())
}

/// Copies the tree at `src` into `dst` without replacing anything that exists (tracked files
/// win) and without following a symlink of `dst`: existing real directories are merged,
/// anything else that exists is left alone. Returns how many entries were left alone.
async fn merge_in(src: &Path, dst: &Path) -> Result<usize, String> {
    let (src, dst) = (src.to_path_buf(), dst.to_path_buf());
    let (plan, skipped) = tokio::task::spawn_blocking(move || {
        let mut plan: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
        let mut skipped = 0usize;
        let mut stack = vec![(src, dst)];
        while let Some((s, d)) = stack.pop() {
            let rd = std::fs::read_dir(&s).map_err(|e| format!("reading {}: {e}", s.display()))?;
            let mut fresh = Vec::new();
            for e in rd.flatten() {
                let sp = e.path();
                let dp = d.join(e.file_name());
                let s_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                match std::fs::symlink_metadata(&dp) {
                    Ok(m) if m.is_dir() && s_dir => stack.push((sp, dp)),
                    Ok(_) => skipped += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh.push(sp),
                    Err(e) => return Err(format!("{}: {e}", dp.display())),
                }
            }
            if !fresh.is_empty() {
                plan.push((d, fresh));
            }
        }
        Ok::<_, String>((plan, skipped))
    })
    .await
    .map_err(|e| format!("copying the snapshot: {e}"))??;
    for (target, sources) in plan {
        run_cp(&target, &sources).await?;
    }
    Ok(skipped)
}

/// Bytes of the regular files under `dir` (symlinks count as themselves).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// Saves a snapshot atomically: built in `<cache>/.tmp-…`, renamed to `<cache>/<key>`.
/// Another attempt that saved the same key first wins. Returns the snapshot's size.
#[allow(clippy::too_many_arguments)]
pub async fn save(
    cache: &Path,
    key: &str,
    ws: &Path,
    scan: &errand_git::scan::WorkspaceScan,
    home_tar: Option<&Path>,
    setup: &str,
    scope: &str,
    scrubbed: &[crate::setup_scrub::SetupScrubbed],
) -> Result<u64, String> {
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let tmp = cache.join(format!(
        ".tmp-{}-{}",
        &key[..12.min(key.len())],
        errand_core::new_id()
    ));
    let result = async {
        let files = tmp.join("files");
        tokio::fs::create_dir_all(&files)
            .await
            .map_err(|e| format!("creating {}: {e}", files.display()))?;
        let mut all = scan.untracked.clone();
        all.extend(scan.ignored.iter().cloned());
        copy_out(ws, &files, &all).await?;
        if let Some(h) = home_tar {
            let to = tmp.join("home.tar");
            if std::fs::hard_link(h, &to).is_err() {
                tokio::fs::copy(h, &to)
                    .await
                    .map_err(|e| format!("copying $HOME's archive: {e}"))?;
            }
        }
        let t = tmp.clone();
        let bytes = tokio::task::spawn_blocking(move || tree_bytes(&t))
            .await
            .unwrap_or(0);
        let meta = SnapshotMeta {
            version: SNAPSHOT_VERSION,
            key: key.to_string(),
            setup: setup.to_string(),
            scope: scope.to_string(),
            created_ms: errand_core::now_ms(),
            bytes,
            untracked: scan.untracked.clone(),
            ignored: scan.ignored.clone(),
            home: home_tar.is_some(),
            scrubbed: scrubbed.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        tokio::fs::write(tmp.join("meta.json"), text)
            .await
            .map_err(|e| format!("writing the snapshot's metadata: {e}"))?;
        let dest = cache.join(key);
        match tokio::fs::rename(&tmp, &dest).await {
            Ok(()) => Ok(bytes),
            // Someone saved this key meanwhile: theirs stands.
            Err(_) if dest.join("meta.json").is_file() => Ok(bytes),
            Err(e) => Err(format!("moving the snapshot into place: {e}")),
        }
    }
    .await;
    if tmp.exists() {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }
    result
}

// -------------------------------------------------------------------------------------------
// Inside boxes: $HOME archives, the exclude list
// -------------------------------------------------------------------------------------------

/// Single-quotes `s` for bash.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The silent command that prepares a box from the carry directory: unpacks `$HOME`, and
/// adds the setup's untracked paths to `.git/info/exclude`.
fn restore_script(carry: &Path, home: bool, exclude: bool) -> Option<String> {
    let c = carry.display().to_string();
    let mut s = String::from("set -e\n");
    if home {
        s.push_str(&format!(
            "tar -xf {} -C \"$HOME\" --no-overwrite-dir --no-same-owner\n",
            sh_quote(&format!("{c}/home.tar"))
        ));
    }
    if exclude {
        s.push_str(&format!(
            "if [ -d .git ] && [ ! -L .git ]; then mkdir -p .git/info && cat {} >> .git/info/exclude || true; fi\n",
            sh_quote(&format!("{c}/exclude"))
        ));
    }
    (home || exclude).then_some(s)
}

/// Runs a worker command in a box without events; returns its exit code and the end of its
/// stderr.
async fn exec_quiet(
    b: &dyn SandboxBox,
    command: String,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(Option<i32>, String), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let exec = b.exec(
        ExecRequest {
            command,
            workdir: None,
            timeout,
            cancel: cancel.child_token(),
        },
        tx,
    );
    tokio::pin!(exec);
    let mut err = Vec::new();
    let mut keep = |chunk: errand_sandbox::OutputChunk| {
        if chunk.stream == Stream::Stderr && err.len() < 4096 {
            err.extend_from_slice(&chunk.data[..chunk.data.len().min(4096 - err.len())]);
        }
    };
    let res = loop {
        tokio::select! {
            Some(chunk) = rx.recv() => keep(chunk),
            r = &mut exec => break r,
        }
    };
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        keep(chunk);
    }
    let res = res.map_err(|e| e.to_string())?;
    Ok((
        res.exit_code,
        String::from_utf8_lossy(&err).trim().to_string(),
    ))
}

/// Archives the box's `$HOME` (inside the box) into `dest` on the host. `Ok(None)` when the
/// box has no `tar`.
async fn capture_home(
    b: &dyn SandboxBox,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<Option<u64>, String> {
    let part = dest.with_extension("tar.part");
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| format!("creating {}: {e}", part.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let exec = b.exec(
        ExecRequest {
            command: "tar --numeric-owner -C \"$HOME\" -cf - .".into(),
            workdir: None,
            timeout: Duration::from_secs(600),
            cancel: cancel.child_token(),
        },
        tx,
    );
    tokio::pin!(exec);
    let mut err = Vec::new();
    let mut write_err: Option<std::io::Error> = None;
    let mut written = 0u64;
    // Output while the command runs, then what is still in the channel once it has ended.
    let mut res = None;
    loop {
        let chunk = if res.is_none() {
            tokio::select! {
                Some(chunk) = rx.recv() => chunk,
                r = &mut exec => {
                    res = Some(r);
                    continue;
                }
            }
        } else {
            match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(chunk)) => chunk,
                _ => break,
            }
        };
        match chunk.stream {
            Stream::Stdout if write_err.is_none() => {
                written += chunk.data.len() as u64;
                if let Err(e) = file.write_all(&chunk.data).await {
                    write_err = Some(e);
                }
            }
            Stream::Stderr if err.len() < 4096 => err.extend_from_slice(&chunk.data),
            _ => {}
        }
    }
    let flushed = file.flush().await;
    drop(file);
    let fail = |m: String| {
        let _ = std::fs::remove_file(&part);
        Err(m)
    };
    let res = match res {
        Some(Ok(r)) => r,
        Some(Err(e)) => return fail(format!("archiving $HOME: {e}")),
        None => return fail("archiving $HOME: the command gave no result".into()),
    };
    if res.exit_code == Some(127) {
        let _ = std::fs::remove_file(&part);
        return Ok(None);
    }
    if !res.success() {
        let e = String::from_utf8_lossy(&err);
        return fail(format!(
            "archiving $HOME failed (exit {}): {}",
            res.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            errand_core::text::title_of(e.trim(), 300)
        ));
    }
    if let Some(e) = write_err.or(flushed.err()) {
        return fail(format!("writing {}: {e}", part.display()));
    }
    tokio::fs::rename(&part, dest)
        .await
        .map_err(|e| format!("moving {}: {e}", part.display()))?;
    Ok(Some(written))
}

/// Prepares a freshly created box from the setup phase: `$HOME` unpacked from the carry
/// directory, the exclude list added. Nothing to do without a carry directory.
pub async fn prepare_box(
    b: &dyn SandboxBox,
    carry: Option<&Carry>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let Some(c) = carry else { return Ok(()) };
    let Some(script) = restore_script(&c.dir, c.home, c.exclude) else {
        return Ok(());
    };
    let (code, err) = exec_quiet(b, script, Duration::from_secs(600), cancel).await?;
    if code != Some(0) {
        return Err(format!(
            "restoring $HOME from the setup phase failed (exit {}): {}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            errand_core::text::title_of(&err, 300)
        ));
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// The phase
// -------------------------------------------------------------------------------------------

/// What the setup phase hands to the rest of the attempt.
#[derive(Debug, Default)]
pub struct SetupOutcome {
    /// Gitignore patterns of the paths setup created (untracked and ignored): kept out of the
    /// commit.
    pub exclude: Vec<String>,
    /// Files for the agent's box (bound read-only).
    pub carry: Option<Carry>,
}

/// A directory of the attempt holding `home.tar` (the setup's `$HOME`) and `exclude` (the
/// patterns for `.git/info/exclude`), bound read-only into the next box.
#[derive(Debug, Clone)]
pub struct Carry {
    pub dir: PathBuf,
    pub home: bool,
    pub exclude: bool,
}

/// Everything the phase needs from `drive`.
pub struct PhaseInput<'a> {
    pub c: &'a errand_store::ClaimedAttempt,
    pub dir: &'a Path,
    pub ws: &'a Path,
    pub mirror: &'a Path,
    pub commit: &'a str,
    pub seed_index: Option<&'a Path>,
    /// The snapshot is already a lower layer of the workspace.
    pub layered: bool,
    pub plan: &'a SetupPlan,
    pub secrets: &'a Secrets,
    pub net: &'a PhaseNetwork,
    pub cancel: &'a CancellationToken,
    pub lease: &'a AtomicU8,
}

/// The last `n` non-empty lines of `text`, each cut to 300 characters.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| errand_core::text::title_of(l, 300))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Worker {
    /// Runs the setup phase: restores a cached snapshot (then `maintenance`), or runs
    /// `setup` and saves what it produced. Records a [`SetupInfo`] either way.
    pub(crate) async fn setup_phase(
        &self,
        inp: PhaseInput<'_>,
        state: &mut RunState,
    ) -> Result<SetupOutcome, RunError> {
        let aid = inp.c.attempt.id.as_str();
        let start = Instant::now();
        let carry_dir = inp.dir.join("setup-carry");
        tokio::fs::create_dir_all(&carry_dir)
            .await
            .map_err(|e| RunError::Failed(format!("creating {}: {e}", carry_dir.display())))?;
        let mut info = SetupInfo {
            cache: "miss".into(),
            key: inp.plan.short_key().to_string(),
            ..Default::default()
        };
        let result = match &inp.plan.snapshot {
            Some(snap) => self.warm(&inp, snap, &carry_dir, &mut info, state).await,
            None => self.cold(&inp, &carry_dir, &mut info, state).await,
        };
        // The phase's box never outlives it.
        if let Some(b) = state.sandbox_box.take()
            && let Err(e) = b.destroy().await
        {
            tracing::warn!(attempt = %aid, error = %e, "destroying the setup box failed");
        }
        info.duration_ms = start.elapsed().as_millis() as u64;
        info.failed = result.is_err();
        if let Err(e) = self
            .client
            .record_setup(aid, &self.config.name, &info)
            .await
        {
            if matches!(e, errand_store::StoreError::LeaseLost(_)) {
                return Err(RunError::LeaseLost);
            }
            tracing::warn!(attempt = %aid, error = %e, "recording the setup phase failed");
        }
        let (exclude, home) = result?;
        let exclude_file = !exclude.is_empty();
        if exclude_file {
            let mut text = exclude.join("\n");
            text.push('\n');
            tokio::fs::write(carry_dir.join("exclude"), text)
                .await
                .map_err(|e| RunError::Failed(format!("writing the exclude list: {e}")))?;
        }
        Ok(SetupOutcome {
            exclude,
            carry: Some(Carry {
                dir: carry_dir,
                home,
                exclude: exclude_file,
            }),
        })
    }

    /// Creates the box of a setup-phase command (setup or maintenance).
    async fn phase_box(
        &self,
        inp: &PhaseInput<'_>,
        carry: &Path,
        state: &mut RunState,
    ) -> Result<(), RunError> {
        let task = &inp.c.task;
        let mut spec = BoxSpec {
            workspace: inp.ws.to_path_buf(),
            scratch: inp.dir.join("setup-scratch"),
            ro_binds: vec![inp.mirror.join("objects"), carry.to_path_buf()],
            rootfs: task.environment.rootfs.as_ref().map(PathBuf::from),
            quota_dir: Some(inp.dir.join("upper")).filter(|u| u.is_dir()),
            env: task
                .environment
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        spec.env.extend(inp.secrets.for_setup());
        inp.net.apply(&mut spec);
        let _ = tokio::fs::remove_dir_all(&spec.scratch).await;
        let b = self
            .sandbox
            .create(spec)
            .await
            .map_err(|e| RunError::Failed(format!("creating the setup box: {e}")))?;
        let enforced = b.as_ns().map(|ns| ns.enforced.summary());
        state.sandbox_box = Some(b);
        if let Some(summary) = enforced {
            self.notice(inp.c.attempt.id.as_str(), format!("setup box: {summary}"))
                .await?;
        }
        Ok(())
    }

    /// Runs one setup-phase command in the phase's box, streamed as events. Fails with its
    /// exit code and its last lines.
    async fn phase_command(
        &self,
        inp: &PhaseInput<'_>,
        what: &str,
        command: &str,
        state: &RunState,
    ) -> Result<(), RunError> {
        let aid = inp.c.attempt.id.as_str();
        let b: &dyn SandboxBox = state
            .sandbox_box
            .as_deref()
            .ok_or(RunError::Failed("setup box missing".into()))?;
        // The setup phase's commands only emit events: no checkpoints, no usage.
        let sink = CheckpointSink::new(
            self.client.clone(),
            aid,
            &self.config.name,
            None,
            Default::default(),
            0,
        );
        let r = StreamedCommand {
            sandbox: b,
            sink: &sink,
            call_id: Some(SETUP_CALL_ID.into()),
            command: command.to_string(),
            workdir: None,
            timeout: self.config.setup_timeout,
            cancel: inp.cancel.child_token(),
        }
        .run()
        .await?;
        let res = match r.result {
            Ok(res) => res,
            Err(e) => {
                return Err(RunError::Failed(format!(
                    "{what} `{command}` could not run: {e}"
                )));
            }
        };
        if res.success() {
            return Ok(());
        }
        if inp.cancel.is_cancelled() {
            if inp.lease.load(Ordering::SeqCst) == LEASE_WALL_TIME {
                return Err(RunError::Failed(format!(
                    "stopped during {what}: the attempt ran past its wall-time limit of {}s",
                    self.config.attempt_timeout.as_secs()
                )));
            }
            return Err(RunError::Failed(format!("cancelled during {what}")));
        }
        let how = match (res.exit_code, &res.killed_by, res.signal) {
            (_, Some(k), _) => format!("killed by {k}"),
            (Some(code), None, _) => format!("exit {code}"),
            (None, None, Some(sig)) => format!("signal {sig}"),
            _ => "no exit code".into(),
        };
        let tail = tail_lines(&r.output, ERROR_TAIL_LINES);
        Err(RunError::Failed(if tail.is_empty() {
            format!("{what} `{command}` failed ({how}) and printed nothing")
        } else {
            format!("{what} `{command}` failed ({how}); its last lines:\n{tail}")
        }))
    }

    /// Archives `$HOME` of the phase's box into the carry directory. Returns whether it did.
    async fn carry_home(
        &self,
        inp: &PhaseInput<'_>,
        carry: &Path,
        state: &RunState,
    ) -> Result<bool, RunError> {
        let aid = inp.c.attempt.id.as_str();
        let Some(b) = state.sandbox_box.as_deref() else {
            return Ok(false);
        };
        match capture_home(b, &carry.join("home.tar"), inp.cancel).await {
            Ok(Some(_)) => Ok(true),
            Ok(None) => {
                self.notice(
                    aid,
                    "the box has no tar: $HOME from setup is not carried over to the agent or cached"
                        .into(),
                )
                .await?;
                Ok(false)
            }
            Err(e) => Err(RunError::Failed(e)),
        }
    }

    /// Lists what the phase left in the workspace (the box is gone by then).
    async fn scan(
        &self,
        inp: &PhaseInput<'_>,
    ) -> Result<errand_git::scan::WorkspaceScan, RunError> {
        let scan = errand_git::scan::scan_workspace(
            inp.mirror,
            inp.ws,
            &inp.dir.join("setup-scan.git"),
            inp.commit,
            inp.seed_index,
        )
        .await
        .map_err(|e| RunError::Failed(format!("listing what setup produced: {e}")))?;
        if scan.unusable > 0 {
            self.notice(
                inp.c.attempt.id.as_str(),
                format!(
                    "setup created {} path(s) whose names are not UTF-8 or hold a newline; they are not cached",
                    scan.unusable
                ),
            )
            .await?;
        }
        Ok(scan)
    }

    /// Replaces, in what the phase wrote (the workspace and the carried `$HOME`), the values
    /// of the secrets not exposed to the agent with their placeholders, with a notice per file
    /// (see [`crate::setup_scrub`]). A `$HOME` archive that can't be read is not carried.
    /// Returns the files and the scan (taken again when a path was removed).
    async fn scrub_outputs(
        &self,
        inp: &PhaseInput<'_>,
        carry: &Path,
        home: &mut bool,
        scan: errand_git::scan::WorkspaceScan,
    ) -> Result<(Vec<SetupScrubbed>, errand_git::scan::WorkspaceScan), RunError> {
        let redactor = inp.secrets.hidden_redactor();
        if redactor.is_empty() {
            return Ok((Vec::new(), scan));
        }
        let aid = inp.c.attempt.id.as_str();
        let upper = inp.dir.join("upper");
        let upper = upper.is_dir().then_some(upper);
        let (ws, red, listed) = (inp.ws.to_path_buf(), redactor.clone(), scan.clone());
        let mut found = tokio::task::spawn_blocking(move || {
            let files = crate::setup_scrub::workspace_files(&ws, upper.as_deref(), &listed);
            crate::setup_scrub::scrub_workspace(&ws, &red, files, &listed.modified)
        })
        .await
        .map_err(|e| RunError::Failed(format!("checking setup's files for secret values: {e}")))?;
        let removed_in_ws = found.iter().any(|f| f.removed);
        if *home {
            let tar = carry.join("home.tar");
            let (t, red) = (tar.clone(), redactor.clone());
            let done = tokio::task::spawn_blocking(move || crate::setup_scrub::scrub_tar(&t, &red))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match done {
                Ok(f) => found.extend(f),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tar).await;
                    *home = false;
                    self.notice(
                        aid,
                        format!(
                            "$HOME from setup could not be checked for secret values ({e}); it is not carried to the agent's box or cached"
                        ),
                    )
                    .await?;
                }
            }
        }
        announce(self, aid, &found, false).await?;
        if let Some(f) = found.iter().find(|f| f.failed()) {
            return Err(RunError::Failed(f.notice(false)));
        }
        let scan = if removed_in_ws {
            self.scan(inp).await?
        } else {
            scan
        };
        Ok((found, scan))
    }

    /// No snapshot: run setup, carry its `$HOME`, save the snapshot.
    async fn cold(
        &self,
        inp: &PhaseInput<'_>,
        carry: &Path,
        info: &mut SetupInfo,
        state: &mut RunState,
    ) -> Result<(Vec<String>, bool), RunError> {
        let aid = inp.c.attempt.id.as_str();
        let names = inp.secrets.names();
        self.notice(
            aid,
            format!(
                "setup: no cached snapshot (key {}); running `{}` in its own box (network {}; {})",
                inp.plan.short_key(),
                inp.plan.command,
                inp.net.net_name(),
                if names.is_empty() {
                    "no secrets".to_string()
                } else {
                    format!("secrets {}", names.join(", "))
                }
            ),
        )
        .await?;
        self.phase_box(inp, carry, state).await?;
        self.phase_command(inp, "setup", &inp.plan.command, state)
            .await?;
        let mut home = self.carry_home(inp, carry, state).await?;
        if let Some(b) = state.sandbox_box.take() {
            b.destroy()
                .await
                .map_err(|e| RunError::Failed(format!("destroying the setup box: {e}")))?;
        }
        let scan = self.scan(inp).await?;
        // Before anything is cached or handed on: no value the agent must not have.
        let (scrubbed, scan) = self.scrub_outputs(inp, carry, &mut home, scan).await?;
        if !scan.modified.is_empty() {
            let shown: Vec<&str> = scan.modified.iter().take(5).map(String::as_str).collect();
            self.notice(
                aid,
                format!(
                    "setup changed {} tracked file(s) ({}{}); those changes are not cached, and they are part of the agent's workspace",
                    scan.modified.len(),
                    shown.join(", "),
                    if scan.modified.len() > 5 { ", …" } else { "" }
                ),
            )
            .await?;
        }
        let exclude = exclude_patterns(&scan.untracked, &scan.ignored);
        let home_tar = carry.join("home.tar");
        let saved = save(
            &self.config.setup_cache,
            &inp.plan.key,
            inp.ws,
            &scan,
            home.then_some(home_tar.as_path()),
            &inp.plan.command,
            &scope(&inp.c.task),
            &scrubbed,
        )
        .await;
        match saved {
            Ok(bytes) => {
                info.cache = "miss".into();
                info.bytes = bytes;
                let (cache, keep) = (
                    self.config.setup_cache.clone(),
                    self.config.setup_cache_keep,
                );
                let (kept, total) = tokio::task::spawn_blocking(move || prune(&cache, keep))
                    .await
                    .unwrap_or((0, 0));
                tracing::info!(
                    key = %inp.plan.short_key(),
                    bytes,
                    snapshots = kept,
                    cache_bytes = total,
                    "setup snapshot saved"
                );
                self.notice(
                    aid,
                    format!(
                        "setup: snapshot saved (key {}, {}; {} untracked and {} ignored path(s){}); the setup cache holds {} snapshot(s), {}",
                        inp.plan.short_key(),
                        errand_core::text::human_bytes(bytes),
                        scan.untracked.len(),
                        scan.ignored.len(),
                        if home { ", $HOME" } else { "" },
                        kept,
                        errand_core::text::human_bytes(total)
                    ),
                )
                .await?;
            }
            Err(e) => {
                info.cache = "off".into();
                tracing::warn!(attempt = %aid, error = %e, "saving the setup snapshot failed");
                self.notice(
                    aid,
                    format!("setup: the snapshot could not be saved ({e}); the next attempt runs setup again"),
                )
                .await?;
            }
        }
        Ok((exclude, home))
    }

    /// A snapshot: restore it, then run maintenance if the environment has one.
    async fn warm(
        &self,
        inp: &PhaseInput<'_>,
        snap: &Snapshot,
        carry: &Path,
        info: &mut SetupInfo,
        state: &mut RunState,
    ) -> Result<(Vec<String>, bool), RunError> {
        let aid = inp.c.attempt.id.as_str();
        info.cache = "hit".into();
        info.bytes = snap.meta.bytes;
        let how = if inp.layered {
            "a read-only layer of the workspace".to_string()
        } else {
            let skipped = merge_in(&snap.files(), inp.ws)
                .await
                .map_err(|e| RunError::Failed(format!("restoring the setup snapshot: {e}")))?;
            if skipped > 0 {
                format!(
                    "copied into the workspace; {skipped} path(s) the checkout already has were kept"
                )
            } else {
                "copied into the workspace".to_string()
            }
        };
        let mut home = false;
        if let Some(h) = snap.home_tar() {
            let to = carry.join("home.tar");
            let _ = std::fs::remove_file(&to);
            if std::fs::hard_link(&h, &to).is_err() {
                tokio::fs::copy(&h, &to)
                    .await
                    .map_err(|e| RunError::Failed(format!("copying $HOME's archive: {e}")))?;
            }
            home = true;
        }
        self.notice(
            aid,
            format!(
                "setup: cache hit (key {}, {}); setup does not run; snapshot {}{}",
                inp.plan.short_key(),
                errand_core::text::human_bytes(snap.meta.bytes),
                how,
                if home { ", $HOME restored" } else { "" }
            ),
        )
        .await?;
        announce(self, aid, &snap.meta.scrubbed, true).await?;
        let mut exclude = exclude_patterns(&snap.meta.untracked, &snap.meta.ignored);
        let maintenance = inp
            .c
            .task
            .environment
            .maintenance
            .as_ref()
            .filter(|m| !m.trim().is_empty());
        if let Some(m) = maintenance {
            self.notice(
                aid,
                format!(
                    "maintenance: running `{m}` in the setup box (network {})",
                    inp.net.net_name()
                ),
            )
            .await?;
            self.phase_box(inp, carry, state).await?;
            info.maintenance_ran = true;
            let carried = Carry {
                dir: carry.to_path_buf(),
                home,
                exclude: false,
            };
            if let Some(b) = state.sandbox_box.as_deref() {
                prepare_box(b, Some(&carried), inp.cancel)
                    .await
                    .map_err(RunError::Failed)?;
            }
            self.phase_command(inp, "maintenance", m, state).await?;
            home = self.carry_home(inp, carry, state).await? || home;
            if let Some(b) = state.sandbox_box.take() {
                b.destroy()
                    .await
                    .map_err(|e| RunError::Failed(format!("destroying the setup box: {e}")))?;
            }
            // Maintenance may create new files; they stay out of the commit too. What it
            // wrote holds no value the agent must not have.
            let scan = self.scan(inp).await?;
            let (_, scan) = self.scrub_outputs(inp, carry, &mut home, scan).await?;
            exclude.extend(exclude_patterns(&scan.untracked, &scan.ignored));
            exclude.sort();
            exclude.dedup();
        }
        Ok((exclude, home))
    }
}

impl PhaseNetwork {
    fn net_name(&self) -> &'static str {
        match self.net {
            NetMode::Off if self.env.is_empty() => "off",
            NetMode::Off | NetMode::Allowlist => "allowlist",
            NetMode::Open => "OPEN",
        }
    }
}

/// Notices for the files of setup's outputs that held a secret's value (at most
/// [`MAX_SCRUB_NOTICES`], then how many more).
async fn announce(
    w: &Worker,
    aid: &str,
    found: &[SetupScrubbed],
    cached: bool,
) -> Result<(), RunError> {
    for f in found.iter().take(MAX_SCRUB_NOTICES) {
        w.notice(aid, f.notice(cached)).await?;
    }
    if found.len() > MAX_SCRUB_NOTICES {
        w.notice(
            aid,
            format!(
                "{} more file(s) of setup's outputs held secret values or could not be checked; they are handled the same way",
                found.len() - MAX_SCRUB_NOTICES
            ),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use errand_core::SecretConfig;
    use errand_git::scan::TreeEntry;

    fn entry(path: &str, oid: &str) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            mode: "100644".into(),
            oid: oid.into(),
        }
    }

    #[test]
    fn the_key_follows_script_lockfiles_rootfs_and_scope() {
        let base = cache_key(
            "./setup.sh",
            None,
            &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
            None,
            "env:shop",
            &[],
        );
        assert_eq!(base.len(), 64);
        let same = cache_key(
            "./setup.sh",
            None,
            &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
            None,
            "env:shop",
            &[],
        );
        assert_eq!(base, same);
        for other in [
            cache_key(
                "./setup.sh --x",
                None,
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
                None,
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a2"), entry("Cargo.lock", "b1")],
                None,
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b2")],
                None,
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a1")],
                None,
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
                Some("/srv/rootfs"),
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
                None,
                "env:other",
                &[],
            ),
            cache_key(
                "./setup.sh",
                Some(&["deps.lock".to_string()]),
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
                None,
                "env:shop",
                &[],
            ),
            cache_key(
                "./setup.sh",
                None,
                &[entry("setup.sh", "a1"), entry("Cargo.lock", "b1")],
                None,
                "env:shop",
                &["NPM_TOKEN"],
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn keyed_paths_take_the_first_word_and_the_lockfiles() {
        let mut snap = EnvironmentSnapshot::default();
        let p = keyed_paths(&snap, "./scripts/bootstrap.sh --ci");
        assert_eq!(p[0], "./scripts/bootstrap.sh");
        assert!(p.contains(&"Cargo.lock".to_string()) && p.contains(&"go.sum".to_string()));
        snap.lockfiles = Some(vec!["web/package-lock.json".into()]);
        assert_eq!(
            keyed_paths(&snap, "npm ci"),
            ["npm", "web/package-lock.json"]
        );
    }

    #[test]
    fn secrets_come_from_the_workers_environment_and_split_by_phase() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "NPM_TOKEN".to_string(),
            SecretConfig {
                from_env: "SHOP_NPM_TOKEN".into(),
                expose_to_agent: false,
            },
        );
        cfg.insert(
            "PUBLIC_KEY".to_string(),
            SecretConfig {
                from_env: "SHOP_PUBLIC".into(),
                expose_to_agent: true,
            },
        );
        let env = |v: &str| match v {
            "SHOP_NPM_TOKEN" => Some("tok-123".to_string()),
            "SHOP_PUBLIC" => Some("pub-456".to_string()),
            _ => None,
        };
        let s = Secrets::resolve_with(&cfg, env).unwrap();
        assert_eq!(s.for_setup().len(), 2);
        assert_eq!(
            s.for_agent(),
            vec![("PUBLIC_KEY".to_string(), "pub-456".to_string())]
        );
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("pub-456"),
            "{shown}"
        );
        assert!(shown.contains("NPM_TOKEN"));

        let err =
            Secrets::resolve_with(&cfg, |v| (v == "SHOP_PUBLIC").then(|| "x".into())).unwrap_err();
        assert!(
            err.contains("secret NPM_TOKEN") && err.contains("SHOP_NPM_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn outermost_paths_cover_their_children() {
        let v = outermost(&[
            "deps/".into(),
            "deps/a/b.txt".into(),
            "gen.txt".into(),
            "../x".into(),
            "a/./b".into(),
            "depsX".into(),
        ]);
        assert_eq!(v, ["deps", "depsX", "gen.txt"]);
    }

    #[test]
    fn restore_script_quotes_paths() {
        let s = restore_script(Path::new("/d/it's"), true, true).unwrap();
        assert!(
            s.contains("tar -xf '/d/it'\\''s/home.tar' -C \"$HOME\""),
            "{s}"
        );
        assert!(
            s.contains("cat '/d/it'\\''s/exclude' >> .git/info/exclude"),
            "{s}"
        );
        assert!(restore_script(Path::new("/d"), false, false).is_none());
    }

    fn meta(key: &str, created_ms: i64) -> SnapshotMeta {
        SnapshotMeta {
            version: SNAPSHOT_VERSION,
            key: key.into(),
            setup: "./setup.sh".into(),
            scope: "env:x".into(),
            created_ms,
            bytes: 10,
            untracked: vec![],
            ignored: vec!["deps/".into()],
            home: false,
            scrubbed: vec![],
        }
    }

    fn put(cache: &Path, key: &str, created_ms: i64) -> PathBuf {
        let d = cache.join(key);
        std::fs::create_dir_all(d.join("files")).unwrap();
        std::fs::write(
            d.join("meta.json"),
            serde_json::to_vec(&meta(key, created_ms)).unwrap(),
        )
        .unwrap();
        d
    }

    #[test]
    fn lookup_checks_the_snapshot_and_prune_keeps_the_newest_and_those_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        for i in 0..5 {
            put(cache, &format!("k{i}"), 1000 + i);
        }
        // k0 is the oldest but in use: it stays.
        let guard = InUse::new(&cache.join("k0"));
        let (kept, bytes) = prune(cache, 2);
        assert_eq!((kept, bytes), (3, 30));
        let mut left: Vec<String> = std::fs::read_dir(cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["k0", "k3", "k4"]);
        drop(guard);
        assert_eq!(prune(cache, 2).0, 2);
        assert!(!cache.join("k0").exists());

        // A hit marks the snapshot as used, so it outlives newer ones.
        assert!(lookup(cache, "k3").is_some());
        put(cache, "k9", errand_core::now_ms() - 10_000);
        prune(cache, 2);
        assert!(cache.join("k3").exists() && cache.join("k9").exists());
        assert!(!cache.join("k4").exists());

        // A snapshot whose metadata names another key, or none, is a miss and goes away.
        let d = put(cache, "k5", 1);
        std::fs::write(
            d.join("meta.json"),
            serde_json::to_vec(&meta("other", 1)).unwrap(),
        )
        .unwrap();
        assert!(lookup(cache, "k5").is_none());
        assert!(!d.exists());
        assert!(lookup(cache, "nothing").is_none());
    }

    #[tokio::test]
    async fn merge_in_never_replaces_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (
            tmp.path().join("src"),
            tmp.path().join("dst"),
            tmp.path().join("outside"),
        );
        for d in [&src, &dst, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(src.join("deps/a")).unwrap();
        std::fs::write(src.join("deps/a/x.txt"), "dep").unwrap();
        std::fs::write(src.join("tracked.txt"), "from the snapshot").unwrap();
        std::fs::create_dir_all(src.join("vendor")).unwrap();
        std::fs::write(src.join("vendor/evil.txt"), "evil").unwrap();
        std::fs::create_dir_all(src.join("shared")).unwrap();
        std::fs::write(src.join("shared/new.txt"), "new").unwrap();
        // The checkout: a tracked file, a tracked symlink to a host directory, a real dir.
        std::fs::write(dst.join("tracked.txt"), "tracked").unwrap();
        std::os::unix::fs::symlink(&outside, dst.join("vendor")).unwrap();
        std::fs::create_dir_all(dst.join("shared")).unwrap();
        std::fs::write(dst.join("shared/old.txt"), "old").unwrap();

        let skipped = merge_in(&src, &dst).await.unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(
            std::fs::read_to_string(dst.join("deps/a/x.txt")).unwrap(),
            "dep"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("tracked.txt")).unwrap(),
            "tracked"
        );
        assert!(
            !outside.join("evil.txt").exists(),
            "a symlink in the checkout is not followed"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("shared/new.txt")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("shared/old.txt")).unwrap(),
            "old"
        );
    }

    #[test]
    fn tails_are_short() {
        let text = (1..=30).map(|i| format!("line {i}\n")).collect::<String>();
        let t = tail_lines(&text, 3);
        assert_eq!(t, "line 28\nline 29\nline 30");
    }
}
