//! The setup phase end to end: a real server, a real repository whose setup script installs
//! an ignored dependency directory and a file in `$HOME`, real boxes, the scripted model.
//! Setup runs in its own box with its own network mode and every secret; the agent's box gets
//! neither unless the environment says so; the result is cached and restored, maintenance
//! runs on a hit, a changed lockfile misses, and failures are clear.
//!
//! The setup and maintenance scripts report each run to a TCP listener on 127.0.0.1 that the
//! test owns (`network.setup = "open"`): a counter outside the repository that no cached
//! result can fake. The agent's box has the network off, so its own attempt to reach the
//! listener must fail.

mod common;

use common::*;
use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "s3cr3t-Value-4f9a7c21-do-not-leak";
const LIMIT: Duration = Duration::from_secs(180);

/// Counts lines sent to a loopback port, one connection per line. Stops on drop.
struct Counter {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    fn start() -> Counter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut text = String::new();
                        let _ = conn.read_to_string(&mut text);
                        l.lock().unwrap().push(text.trim().to_string());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Counter {
            port,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        wait_for(
            &format!("{n} line(s) at the counter"),
            Duration::from_secs(20),
            || async {
                let l = self.lines();
                (l.len() >= n).then_some(l)
            },
        )
        .await
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn write_exec(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The sample repo plus a lockfile, an ignored `deps/`, and the setup, maintenance and
/// failing scripts.
fn make_setup_repo(dir: &Path, sleep_marker: &str) -> PathBuf {
    let repo = make_repo(dir);
    std::fs::write(repo.join(".gitignore"), "deps/\n").unwrap();
    std::fs::write(repo.join("package-lock.json"), "{\"lockfileVersion\": 1}\n").unwrap();
    write_exec(
        &repo.join("scripts/setup.sh"),
        r#"#!/bin/bash
set -e
echo "setup: installing"
printf 'setup\n' > "/dev/tcp/127.0.0.1/$COUNTER_PORT"
mkdir -p deps
echo "dependency v1" > deps/lib.txt
printf %s "$SHOP_TOKEN" | sha256sum | cut -d' ' -f1 > deps/token.sha
echo "home marker" > "$HOME/.setup-home-marker"
echo "generated" > generated.txt
echo "touched by setup" >> README.md
echo "setup: done"
"#,
    );
    write_exec(
        &repo.join("scripts/maint.sh"),
        r#"#!/bin/bash
set -e
printf 'maintenance\n' > "/dev/tcp/127.0.0.1/$COUNTER_PORT"
test -f deps/lib.txt
test -f "$HOME/.setup-home-marker"
printf %s "$SHOP_TOKEN" | sha256sum | cut -d' ' -f1 > deps/maint-token.sha
echo "maintenance: ok"
"#,
    );
    write_exec(
        &repo.join("scripts/fail.sh"),
        &format!(
            "#!/bin/bash\nsleep {sleep_marker} &\necho 'fetching packages'\necho 'boom: cannot install' >&2\nexit 7\n"
        ),
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "setup scripts"]);
    repo
}

/// The agent: look at what setup left, whether the secret is in its environment and whether
/// it can reach the network; then write one file and finish.
fn agent_script(dir: &Path) -> PathBuf {
    let look = concat!(
        "cat deps/lib.txt; echo \"token-sha=$(cat deps/token.sha)\"; cat ~/.setup-home-marker; ",
        "if [ -n \"${SHOP_TOKEN+x}\" ]; then echo TOKEN-PRESENT; echo \"agent-sha=$(printf %s \"$SHOP_TOKEN\" | sha256sum | cut -d' ' -f1)\"; else echo TOKEN-ABSENT; fi; ",
        "(printf 'agent\\n' > \"/dev/tcp/127.0.0.1/$COUNTER_PORT\") 2>/dev/null && echo NET-OPEN || echo NET-BLOCKED; ",
        "git status --porcelain --untracked-files=all > /tmp/st && echo STATUS-OK; cat /tmp/st"
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

fn config(repo: &Path, script: &Path, port: u16) -> String {
    let head = |name: &str| {
        format!(
            "[environments.{name}]\nrepo = \"{}\"\nmodel = \"scripted:{}\"\n",
            repo.display(),
            script.display()
        )
    };
    let port_env = |name: &str| format!("[environments.{name}.env]\nCOUNTER_PORT = \"{port}\"\n");
    let mut t = String::new();
    t += &head("shop");
    t += "setup = \"./scripts/setup.sh\"\nmaintenance = \"./scripts/maint.sh\"\n";
    t += "checks = [{ name = \"deps\", command = \"test -f deps/lib.txt && test -f ~/.setup-home-marker\" }]\n";
    t += "[environments.shop.network]\nsetup = \"open\"\n";
    t += &port_env("shop");
    t += "[environments.shop.secrets]\nSHOP_TOKEN = { from_env = \"ERRAND_TEST_SHOP_TOKEN\" }\n\n";
    t += &head("exposed");
    t += "setup = \"./scripts/setup.sh\"\n";
    t += "[environments.exposed.network]\nsetup = \"open\"\n";
    t += &port_env("exposed");
    t += "[environments.exposed.secrets]\nSHOP_TOKEN = { from_env = \"ERRAND_TEST_SHOP_TOKEN\", expose_to_agent = true }\n\n";
    t += &head("broken");
    t += "setup = \"./scripts/fail.sh\"\n\n";
    t += &head("nosecret");
    t += "setup = \"./scripts/setup.sh\"\n";
    t += "[environments.nosecret.secrets]\nSHOP_TOKEN = { from_env = \"ERRAND_TEST_UNSET_VARIABLE_X\" }\n\n";
    t += &head("plain");
    t
}

/// Starts a task in `env` and waits for it to end.
async fn run_env(server: &Server, env: &str, expect: &str) -> (String, serde_json::Value) {
    let out = ok(server.cli(&["run", &format!("look ({env})"), "--env", env, "--json"]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = wait_status(server, &id, &["done", "failed", "cancelled"], LIMIT).await;
    assert_eq!(t["status"], expect, "task {id} ({env}): {t:#}");
    (id, t)
}

/// The stdout of every command with `call_id` (or every agent command when `None`).
fn output_of(evs: &[serde_json::Value], call_id: Option<&str>) -> String {
    evs.iter()
        .filter(|e| e["type"] == "output")
        .filter(|e| match call_id {
            Some(c) => e["call_id"] == c,
            None => {
                e["call_id"] != "setup"
                    && !e["call_id"].as_str().unwrap_or("").starts_with("check:")
            }
        })
        .map(|e| e["data"].as_str().unwrap_or(""))
        .collect()
}

fn commands(evs: &[serde_json::Value]) -> Vec<(String, String)> {
    evs.iter()
        .filter(|e| e["type"] == "command_started")
        .map(|e| {
            (
                e["call_id"].as_str().unwrap_or("").to_string(),
                e["command"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn mirror_of(data: &Path) -> PathBuf {
    let mirrors: Vec<_> = std::fs::read_dir(data.join("mirrors"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(mirrors.len(), 1);
    mirrors[0].clone()
}

/// Whether any file under `dir` contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

fn attempt(t: &serde_json::Value) -> &serde_json::Value {
    &t["attempts"][0]
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_runs_in_its_own_box_is_cached_and_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("{}.{}", 600 + std::process::id() % 300, 41);
    let repo = make_setup_repo(tmp.path(), &marker);
    let script = agent_script(tmp.path());
    let counter = Counter::start();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        config(&repo, &script, counter.port),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &[], &[("ERRAND_TEST_SHOP_TOKEN", SECRET)]);
    let secret_sha = sha256_hex(SECRET);

    // 1. Cold: setup runs in its own box (network open, the secret present), its output is in
    //    the log, its results reach the agent, which has neither the secret nor the network.
    let (id1, t1) = run_env(&server, "shop", "done").await;
    let a1 = attempt(&t1);
    assert_eq!(a1["setup"]["cache"], "miss", "{a1:#}");
    assert_eq!(a1["setup"]["maintenance_ran"], false);
    assert!(a1["setup"]["bytes"].as_u64().unwrap() > 0, "{a1:#}");
    let key1 = a1["setup"]["key"].as_str().unwrap().to_string();
    assert_eq!(key1.len(), 12);
    assert_eq!(counter.wait_for(1).await, ["setup"]);
    let evs = events(&server, &id1).await;
    assert_contiguous(&evs);
    let cmds = commands(&evs);
    assert!(
        cmds.contains(&("setup".into(), "./scripts/setup.sh".into())),
        "{cmds:?}"
    );
    let setup_out = output_of(&evs, Some("setup"));
    assert!(
        setup_out.contains("setup: installing") && setup_out.contains("setup: done"),
        "{setup_out}"
    );
    let notices: Vec<&str> = evs
        .iter()
        .filter(|e| e["type"] == "notice")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("setup: no cached snapshot")
                && n.contains("network OPEN")
                && n.contains("secrets SHOP_TOKEN")),
        "{notices:#?}"
    );
    assert!(
        notices.iter().any(|n| n
            .contains("setup changed 1 tracked file(s) (README.md); those changes are not cached")),
        "{notices:#?}"
    );
    let agent_out = output_of(&evs, None);
    for needle in [
        "dependency v1",
        &format!("token-sha={secret_sha}"),
        "home marker",
        "TOKEN-ABSENT",
        "NET-BLOCKED",
        "STATUS-OK",
        " M README.md",
    ] {
        assert!(
            agent_out.contains(needle),
            "agent output lacks {needle:?}:\n{agent_out}"
        );
    }
    assert!(
        !agent_out.contains("generated.txt") && !agent_out.contains("deps/"),
        "setup's files are not untracked changes for the agent:\n{agent_out}"
    );
    assert_eq!(a1["checks"][0]["passed"], true, "{a1:#}");
    // Setup's files stay out of the commit; the agent's file is in it.
    let mirror = mirror_of(&data);
    let branch = a1["branch"].as_str().unwrap();
    let stat = git(&mirror, &["show", "--stat", "--format=", branch]);
    assert!(
        stat.contains("notes.txt") && stat.contains("README.md"),
        "{stat}"
    );
    assert!(
        !stat.contains("generated.txt") && !stat.contains("deps") && !stat.contains("token"),
        "{stat}"
    );
    let shown = ok(server.cli(&["show", &id1]));
    assert!(
        shown.contains("Setup     ran in ") && shown.contains("snapshot saved"),
        "{shown}"
    );
    let cache: Vec<PathBuf> = std::fs::read_dir(data.join("setup-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert!(
        cache[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&key1)
    );
    assert!(cache[0].join("files/deps/lib.txt").is_file());
    assert!(cache[0].join("home.tar").is_file());

    // 2. Warm: same repo and lockfile. Setup does not run; the snapshot and $HOME are
    //    restored; maintenance runs (with the secret, and sees both).
    let (id2, t2) = run_env(&server, "shop", "done").await;
    let a2 = attempt(&t2);
    assert_eq!(a2["setup"]["cache"], "hit", "{a2:#}");
    assert_eq!(a2["setup"]["maintenance_ran"], true);
    assert_eq!(a2["setup"]["key"], key1.as_str());
    assert_eq!(counter.wait_for(2).await, ["setup", "maintenance"]);
    let evs = events(&server, &id2).await;
    let cmds = commands(&evs);
    assert!(
        !cmds.iter().any(|(_, c)| c.contains("setup.sh")),
        "setup must not run on a hit: {cmds:?}"
    );
    assert!(
        cmds.contains(&("setup".into(), "./scripts/maint.sh".into())),
        "{cmds:?}"
    );
    assert!(output_of(&evs, Some("setup")).contains("maintenance: ok"));
    assert!(
        evs.iter().any(|e| e["type"] == "notice"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("snapshot a read-only layer of the workspace, $HOME restored")),
        "the overlay takes the snapshot as a layer: {evs:#?}"
    );
    let agent_out = output_of(&evs, None);
    for needle in [
        "dependency v1",
        &format!("token-sha={secret_sha}"),
        "home marker",
        "TOKEN-ABSENT",
        "NET-BLOCKED",
        "STATUS-OK",
    ] {
        assert!(
            agent_out.contains(needle),
            "agent output lacks {needle:?}:\n{agent_out}"
        );
    }
    assert!(!agent_out.contains("generated.txt"), "{agent_out}");
    let branch2 = a2["branch"].as_str().unwrap();
    let stat = git(&mirror, &["show", "--stat", "--format=", branch2]);
    assert!(
        stat.contains("notes.txt") && !stat.contains("generated.txt") && !stat.contains("deps"),
        "{stat}"
    );
    let shown = ok(server.cli(&["show", &id2]));
    assert!(
        shown.contains(&format!(
            "Setup     cache hit (key {key1}), maintenance `./scripts/maint.sh` ran in "
        )),
        "{shown}"
    );
    let json_show: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["show", &id2, "--json"]))).unwrap();
    assert_eq!(json_show["attempts"][0]["setup"]["cache"], "hit");

    // 3. A changed lockfile is a miss: setup runs again, under another key.
    std::fs::write(repo.join("package-lock.json"), "{\"lockfileVersion\": 2}\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "bump the lockfile"]);
    let (_, t3) = run_env(&server, "shop", "done").await;
    let a3 = attempt(&t3);
    assert_eq!(a3["setup"]["cache"], "miss", "{a3:#}");
    assert_ne!(a3["setup"]["key"], key1.as_str());
    assert_eq!(counter.wait_for(3).await, ["setup", "maintenance", "setup"]);

    // 4. A secret exposed to the agent is in the agent's environment too.
    let (id4, t4) = run_env(&server, "exposed", "done").await;
    assert_eq!(
        attempt(&t4)["setup"]["cache"],
        "miss",
        "another environment, another key"
    );
    assert_eq!(counter.wait_for(4).await.len(), 4);
    let agent_out = output_of(&events(&server, &id4).await, None);
    assert!(agent_out.contains("TOKEN-PRESENT"), "{agent_out}");
    assert!(
        agent_out.contains(&format!("agent-sha={secret_sha}")),
        "{agent_out}"
    );

    // 5. A failing setup fails the attempt with its exit code and last lines, the agent never
    //    runs, and nothing of its box is left.
    let (id5, t5) = run_env(&server, "broken", "failed").await;
    let a5 = attempt(&t5);
    let err = a5["error"].as_str().unwrap();
    assert!(
        err.contains("setup `./scripts/fail.sh` failed (exit 7)")
            && err.contains("boom: cannot install"),
        "{err}"
    );
    assert_eq!(a5["setup"]["failed"], true, "{a5:#}");
    let evs = events(&server, &id5).await;
    assert!(
        !evs.iter().any(|e| e["type"] == "model_turn"),
        "the agent must not run"
    );
    wait_for(
        "the setup box's processes to die",
        Duration::from_secs(10),
        || async {
            processes_with(&format!("sleep {marker}"))
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let shown = ok(server.cli(&["show", &id5]));
    assert!(shown.contains("Setup     failed after"), "{shown}");

    // 6. A secret whose variable is not set fails before anything runs, naming both.
    let (id6, t6) = run_env(&server, "nosecret", "failed").await;
    let err = attempt(&t6)["error"].as_str().unwrap();
    assert!(
        err.contains("secret SHOP_TOKEN") && err.contains("ERRAND_TEST_UNSET_VARIABLE_X"),
        "{err}"
    );
    let evs = events(&server, &id6).await;
    assert!(commands(&evs).is_empty(), "nothing may run: {evs:#?}");

    // 7. Without setup, `show` says so.
    let (id7, _) = run_env(&server, "plain", "done").await;
    let shown = ok(server.cli(&["show", &id7]));
    assert!(shown.contains("Setup     none"), "{shown}");
    assert_eq!(
        counter.lines(),
        ["setup", "maintenance", "setup", "setup"],
        "only setup and maintenance reach the counter"
    );

    // The secret's value is nowhere: not in the task, the events, the store, the cache.
    for id in [&id1, &id2, &id4, &id5, &id6] {
        let t = get_json(&server.api(&format!("/tasks/{id}"))).await;
        assert!(!t.to_string().contains(SECRET));
        let evs = events(&server, id).await;
        assert!(!serde_json::to_string(&evs).unwrap().contains(SECRET));
    }
    let leaked = files_containing(&data, SECRET.as_bytes());
    assert!(
        leaked.is_empty(),
        "the secret's value was written to {leaked:?}"
    );
    // Every attempt's directory is gone, and no box is left.
    let work: Vec<_> = std::fs::read_dir(data.join("work"))
        .unwrap()
        .flatten()
        .collect();
    assert!(work.is_empty(), "workspaces left behind: {work:?}");
}

/// Without an overlay (`--sandbox none` does not mount one), a hit copies the snapshot into
/// the checkout.
#[tokio::test(flavor = "multi_thread")]
async fn without_an_overlay_the_snapshot_is_copied_in() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_setup_repo(tmp.path(), "0.1");
    let script = agent_script(tmp.path());
    let counter = Counter::start();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        config(&repo, &script, counter.port),
    )
    .unwrap();
    let server = Server::start_with_env(
        &data,
        &["--sandbox", "none"],
        &[("ERRAND_TEST_SHOP_TOKEN", SECRET)],
    );
    let (_, t1) = run_env(&server, "shop", "done").await;
    assert_eq!(attempt(&t1)["setup"]["cache"], "miss");
    let (id2, t2) = run_env(&server, "shop", "done").await;
    let a2 = attempt(&t2);
    assert_eq!(a2["setup"]["cache"], "hit", "{a2:#}");
    // Unisolated, the agent reaches the network too; only setup and maintenance matter here.
    let phases: Vec<String> = counter
        .wait_for(3)
        .await
        .into_iter()
        .filter(|l| l != "agent")
        .collect();
    assert_eq!(phases, ["setup", "maintenance"]);
    let evs = events(&server, &id2).await;
    assert!(
        evs.iter().any(|e| e["type"] == "notice"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("copied into the workspace")),
        "{evs:#?}"
    );
    let agent_out = output_of(&evs, None);
    assert!(
        agent_out.contains("dependency v1") && agent_out.contains("home marker"),
        "{agent_out}"
    );
    let stat = git(
        &mirror_of(&data),
        &[
            "show",
            "--stat",
            "--format=",
            a2["branch"].as_str().unwrap(),
        ],
    );
    assert!(
        stat.contains("notes.txt") && !stat.contains("generated.txt") && !stat.contains("deps"),
        "{stat}"
    );
}
