//! Test harness: the real `errand` binary, real git repos in temp dirs, real HTTP on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_errand");

/// A running `errand serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Starts a server with extra environment variables (model keys, for example). The
    /// provider keys of the test process's own environment are removed.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("ERRAND_SERVER");
        for var in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "OLLAMA_HOST",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("ERRAND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn errand serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.url, args, None)
    }

    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> Output {
        cli_with(&self.url, args, Some(dir))
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cli_with(server: &str, args: &[&str], dir: Option<&Path>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("ERRAND_SERVER", server)
        .env("ERRAND_LOG", "warn");
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.output().expect("run errand")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "command failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts a one-line `error:` failure containing every needle; returns stderr.
pub fn fails_with(o: Output, needles: &[&str]) -> String {
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "expected failure, got success:\n{}",
        stdout(&o)
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    err
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repo with a main branch, a tag `v1` and two commits.
pub fn make_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    std::fs::write(repo.join("README.md"), "# sample\n").unwrap();
    std::fs::write(repo.join("src/lib.txt"), "one\ntwo\nthree\n").unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("src/lib.txt"), "one\ntwo\nthree\nfour\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "second"]);
    repo
}

/// Everything observable about a repo's state, to prove it was not modified.
pub fn repo_fingerprint(repo: &Path) -> String {
    let refs = git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let status = git(repo, &["status", "--porcelain", "--untracked-files=all"]);
    let head = git(repo, &["rev-parse", "HEAD"]);
    let stash = Command::new("git")
        .current_dir(repo)
        .args(["stash", "list"])
        .output()
        .unwrap()
        .stdout;
    format!(
        "{refs}\n{status}\n{head}\n{}",
        String::from_utf8_lossy(&stash)
    )
}

pub fn write_script(dir: &Path, name: &str, script: serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(&script).unwrap()).unwrap();
    p
}

pub fn http() -> reqwest::Client {
    errand_model::install_tls();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn get_json(url: &str) -> serde_json::Value {
    let r = http().get(url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

pub async fn events(s: &Server, task: &str) -> Vec<serde_json::Value> {
    let v = get_json(&s.api(&format!("/tasks/{task}/events?limit=10000"))).await;
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Polls until `f` returns Some, or panics after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_status(
    s: &Server,
    task: &str,
    statuses: &[&str],
    limit: Duration,
) -> serde_json::Value {
    wait_for(
        &format!("task {task} to reach {statuses:?}"),
        limit,
        || async {
            let t = get_json(&s.api(&format!("/tasks/{task}"))).await;
            let st = t["status"].as_str().unwrap_or("").to_string();
            statuses.contains(&st.as_str()).then_some(t)
        },
    )
    .await
}

/// Asserts that event seqs are exactly 1..=n.
pub fn assert_contiguous(events: &[serde_json::Value]) {
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "event seqs must be 1..=n with no gaps or duplicates"
    );
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(needle) {
                    found.push(format!("{name}: {cmd}"));
                }
            }
        }
    }
    found
}
