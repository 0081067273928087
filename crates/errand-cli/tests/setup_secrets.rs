//! Secrets that the setup phase writes into files: a real server, real boxes, the scripted
//! model. Setup writes a secret the agent must not have into `~/.npmrc`, a workspace `.env`,
//! a base64 file and a file name, and an exposed one into `~/.publicrc`; maintenance (on the
//! cache hit) writes the hidden one into `~/.netrc` and another `.env`. The agent's box gets
//! the placeholder where the hidden value was (proved by hashes of the files the agent
//! computes in its box: the events are redacted anyway) and the exposed value as it was; the
//! setup cache and the whole data directory never hold the hidden value. The agent creates a
//! file whose name holds the exposed value: it is left out of the commit, with a notice.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Not exposed to the agent.
const HIDDEN: &str = "npm-Hidden-6b1f0e2d9c8a7";
/// Exposed to the agent.
const PUBLIC: &str = "pub-Shown-3c4d5e6f7a8b";
const HIDDEN_PH: &str = "[REDACTED:NPM_TOKEN]";
const LIMIT: Duration = Duration::from_secs(180);

fn write_exec(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn base64(v: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in v.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The repository: `config/.env` is ignored, the setup and maintenance scripts write the
/// secrets into files.
fn make_secret_repo(dir: &Path) -> PathBuf {
    let repo = make_repo(dir);
    std::fs::write(repo.join(".gitignore"), "config/.env\nconfig/maint.env\n").unwrap();
    write_exec(
        &repo.join("scripts/setup.sh"),
        r#"#!/bin/bash
set -e
mkdir -p config
echo "//registry.example.test/:_authToken=$NPM_TOKEN" > ~/.npmrc
printf 'NPM_TOKEN=%s\nAPI_URL=https://api.example.test\n' "$NPM_TOKEN" > config/.env
printf '%s' "$NPM_TOKEN" | base64 > config/token.b64
printf 'public=%s\n' "$PUBLIC_KEY" > ~/.publicrc
touch "config/cache-$NPM_TOKEN.lock"
echo "setup: done"
"#,
    );
    write_exec(
        &repo.join("scripts/maint.sh"),
        r#"#!/bin/bash
set -e
echo "machine git.example.test login ci password $NPM_TOKEN" > ~/.netrc
printf 'MAINT=%s\n' "$NPM_TOKEN" > config/maint.env
echo "maintenance: done"
"#,
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "setup scripts"]);
    repo
}

/// The agent hashes the files setup left (in its box), prints two of them, counts the files
/// named with the value, and creates a file whose name holds the exposed value.
fn agent_script(dir: &Path) -> PathBuf {
    let look = concat!(
        "cat ~/.npmrc config/.env; ",
        "sha256sum ~/.npmrc config/.env config/token.b64 ~/.publicrc; ",
        "if [ -f ~/.netrc ]; then sha256sum ~/.netrc config/maint.env; fi; ",
        "echo \"named-files=$(ls config | grep -c cache-)\"; ",
        "grep -c 'REDACTED:NPM_TOKEN' ~/.npmrc config/.env; ",
        "touch \"named-$PUBLIC_KEY.txt\""
    );
    write_script(
        dir,
        "agent.json",
        json!({"turns": [
            {"tool_calls": [{"name": "shell", "arguments": {"command": look}}]},
            {"tool_calls": [
                {"name": "write_file", "arguments": {"path": "notes.txt", "content": "agent was here\n"}},
                {"name": "finish", "arguments": {"summary": "looked at the setup"}}]}
        ]}),
    )
}

fn config(repo: &Path, script: &Path) -> String {
    format!(
        r#"[environments.npm]
repo = "{}"
model = "scripted:{}"
setup = "./scripts/setup.sh"
maintenance = "./scripts/maint.sh"
[environments.npm.secrets]
NPM_TOKEN = {{ from_env = "E2E_NPM_TOKEN" }}
PUBLIC_KEY = {{ from_env = "E2E_PUBLIC_KEY", expose_to_agent = true }}
"#,
        repo.display(),
        script.display()
    )
}

async fn run_task(server: &Server) -> (String, Value) {
    let out = ok(server.cli(&["run", "look at the setup", "--env", "npm", "--json"]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_status(server, &id, &["done", "failed", "cancelled"], LIMIT).await;
    assert_eq!(t["status"], "done", "task {id}: {t:#}");
    (id, t)
}

/// The agent's own output (not setup's, not the checks').
fn agent_output(evs: &[Value]) -> String {
    evs.iter()
        .filter(|e| e["type"] == "output" && e["call_id"] != "setup")
        .map(|e| e["data"].as_str().unwrap_or(""))
        .collect()
}

fn notices(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .filter(|e| e["type"] == "notice")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// The hash `sha256sum` printed for the file whose path ends with `suffix`.
fn hash_of(out: &str, suffix: &str) -> String {
    out.lines()
        .find(|l| l.len() > 66 && l.ends_with(suffix) && l.as_bytes()[64] == b' ')
        .map(|l| l[..64].to_string())
        .unwrap_or_else(|| panic!("no hash for {suffix} in:\n{out}"))
}

/// Files under `dir` whose content or name holds `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                found.push(p.clone());
            }
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

fn mirror_of(data: &Path) -> PathBuf {
    std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

/// What the agent's box must hold, by file.
fn expected() -> Vec<(&'static str, String)> {
    vec![
        (
            ".npmrc",
            format!("//registry.example.test/:_authToken={HIDDEN_PH}\n"),
        ),
        (
            "config/.env",
            format!("NPM_TOKEN={HIDDEN_PH}\nAPI_URL=https://api.example.test\n"),
        ),
        ("config/token.b64", format!("{HIDDEN_PH}\n")),
        (".publicrc", format!("public={PUBLIC}\n")),
    ]
}

fn maintenance_expected() -> Vec<(&'static str, String)> {
    vec![
        (
            ".netrc",
            format!("machine git.example.test login ci password {HIDDEN_PH}\n"),
        ),
        ("config/maint.env", format!("MAINT={HIDDEN_PH}\n")),
    ]
}

#[track_caller]
fn assert_box_files(out: &str, files: &[(&str, String)]) {
    for (file, content) in files {
        assert_eq!(
            hash_of(out, file),
            sha256_hex(content.as_bytes()),
            "{file} in the agent's box is not {content:?}:\n{out}"
        );
    }
}

#[track_caller]
fn assert_notice(notices: &[String], needle: &str) {
    assert!(
        notices.iter().any(|n| n.contains(needle)),
        "no notice with {needle:?}: {notices:#?}"
    );
}

async fn scenario(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_secret_repo(tmp.path());
    let script = agent_script(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("errand.toml"), config(&repo, &script)).unwrap();
    let server = Server::start_with_env(
        &data,
        extra,
        &[("E2E_NPM_TOKEN", HIDDEN), ("E2E_PUBLIC_KEY", PUBLIC)],
    );

    // 1. A miss: setup runs and writes the secrets; the agent's box gets placeholders for
    //    the hidden one, the exposed one as it is.
    let (id1, t1) = run_task(&server).await;
    assert_eq!(t1["attempts"][0]["setup"]["cache"], "miss", "{t1:#}");
    let evs = events(&server, &id1).await;
    let out = agent_output(&evs);
    assert!(
        out.contains(&format!(
            "//registry.example.test/:_authToken={HIDDEN_PH}\n"
        )) && out.contains(&format!("NPM_TOKEN={HIDDEN_PH}\n")),
        "{out}"
    );
    assert_box_files(&out, &expected());
    assert!(out.contains("named-files=0"), "{out}");
    assert!(!out.contains(".netrc"), "no maintenance on a miss: {out}");
    let n = notices(&evs);
    for file in ["~/.npmrc", "config/.env", "config/token.b64"] {
        assert_notice(
            &n,
            &format!(
                "setup wrote secret NPM_TOKEN into {file}; the agent's box gets {HIDDEN_PH} there (set expose_to_agent = true for NPM_TOKEN to keep it)"
            ),
        );
    }
    assert_notice(
        &n,
        &format!(
            "setup created config/cache-{HIDDEN_PH}.lock, whose name holds the value of secret NPM_TOKEN; it is removed"
        ),
    );
    assert!(
        !n.iter()
            .any(|m| m.contains(".publicrc") || m.contains("PUBLIC_KEY into")),
        "the exposed secret stays where setup wrote it: {n:#?}"
    );
    // A file named with a value is not committed; the agent's other file is.
    assert_notice(
        &n,
        "named-[REDACTED:PUBLIC_KEY].txt is left out of the commit: its path holds the value of secret PUBLIC_KEY",
    );
    let mirror = mirror_of(&data);
    let branch = t1["attempts"][0]["branch"].as_str().unwrap();
    let files = git(&mirror, &["ls-tree", "-r", "--name-only", branch]);
    assert!(files.contains("notes.txt"), "{files}");
    assert!(
        !files.contains("named-") && !files.contains("config/"),
        "{files}"
    );

    // The snapshot holds the placeholders, and the exposed value.
    let cache: Vec<PathBuf> = std::fs::read_dir(data.join("setup-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert_eq!(
        std::fs::read_to_string(cache[0].join("files/config/.env")).unwrap(),
        expected()[1].1
    );
    assert!(
        !cache[0]
            .join(format!("files/config/cache-{HIDDEN}.lock"))
            .exists()
    );
    let tar = cache[0].join("home.tar");
    let from_tar = |name: &str| {
        let o = Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg(name)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(from_tar("./.npmrc"), expected()[0].1);
    assert_eq!(from_tar("./.publicrc"), expected()[3].1);

    // 2. A hit: the snapshot is restored as it was saved, the notices say what setup had
    //    written, and maintenance's files are scrubbed too.
    let (id2, t2) = run_task(&server).await;
    let a2 = &t2["attempts"][0];
    assert_eq!(a2["setup"]["cache"], "hit", "{t2:#}");
    assert_eq!(a2["setup"]["maintenance_ran"], true, "{t2:#}");
    let evs = events(&server, &id2).await;
    let out = agent_output(&evs);
    assert_box_files(&out, &expected());
    assert_box_files(&out, &maintenance_expected());
    assert!(out.contains("named-files=0"), "{out}");
    let n = notices(&evs);
    // With the box the workspace is an overlay (setup's files are its upper layer's);
    // without, the scan finds them and the hit copies the snapshot in.
    assert_notice(
        &n,
        if extra.is_empty() {
            "snapshot a read-only layer of the workspace, $HOME restored"
        } else {
            "copied into the workspace"
        },
    );
    assert_notice(
        &n,
        "setup wrote secret NPM_TOKEN into ~/.npmrc (when the cached snapshot was made); the agent's box gets [REDACTED:NPM_TOKEN] there",
    );
    for file in ["~/.netrc", "config/maint.env"] {
        assert_notice(
            &n,
            &format!("setup wrote secret NPM_TOKEN into {file}; the agent's box gets {HIDDEN_PH}"),
        );
    }
    assert_notice(
        &n,
        "named-[REDACTED:PUBLIC_KEY].txt is left out of the commit",
    );
    let branch = a2["branch"].as_str().unwrap();
    let files = git(&mirror, &["ls-tree", "-r", "--name-only", branch]);
    assert!(
        files.contains("notes.txt") && !files.contains("named-"),
        "{files}"
    );

    // Nothing in the data directory holds the hidden value, in any form, in a file's content
    // or its name: not the setup cache, not the store, not the mirror.
    drop(server);
    for form in [HIDDEN.to_string(), base64(HIDDEN.as_bytes())] {
        let found = holding(&data, &form);
        assert!(found.is_empty(), "{form:?} is stored in {found:?}");
    }
    let objects = Command::new("git")
        .current_dir(&mirror)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    let objects = String::from_utf8_lossy(&objects.stdout);
    assert!(!objects.contains(HIDDEN) && !objects.contains(PUBLIC));
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_secrets_in_files_never_reach_the_agent_or_the_cache() {
    scenario(&[]).await;
}

/// Without the box there is no overlay: setup's files are found from the workspace's scan,
/// and a hit copies the snapshot in.
#[tokio::test(flavor = "multi_thread")]
async fn without_an_overlay_setup_secrets_are_scrubbed_too() {
    scenario(&["--sandbox", "none"]).await;
}
