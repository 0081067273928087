//! Push and pull request end to end: an environment with `push = true`, `pr = "draft"` and a
//! GitHub forge; the remote is a real `git http-backend` behind HTTP basic auth; the forge is a
//! loopback fake of the GitHub REST API. A follow-up pushes to the same branch and updates the
//! same pull request; `errand pr` does it on demand.

mod common;

use common::*;
use errand_fakes::forge::{FakeForge, ForgeVendor};
use errand_fakes::git_http::GitHttpServer;
use serde_json::json;

const TOKEN: &str = "ghp_e2eSecretToken0123456789";

#[test]
fn a_task_opens_a_draft_pr_and_its_followup_updates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let remotes = tmp.path().join("remotes");
    std::fs::create_dir_all(remotes.join("acme")).unwrap();
    let bare = remotes.join("acme/shop.git");
    let out = std::process::Command::new("git")
        .args(["clone", "--quiet", "--bare"])
        .arg(&repo)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    let git_server = GitHttpServer::start(&remotes, Some(("x-access-token", TOKEN)));
    let forge = FakeForge::start(ForgeVendor::GitHub, "acme/shop", TOKEN);
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "two", "new": "TWO"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Upper-cased two."}}]},
            {"tool_calls": [{"name": "edit", "arguments": {"path": "src/lib.txt", "old": "three", "new": "THREE"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Upper-cased three as well."}}]}
        ]}),
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"
public_url = "http://errand.example.test"
[environments.shop]
repo = "{}"
model = "scripted:{}"
checks = [{{ name = "upper", command = "grep -q TWO src/lib.txt" }}]
push = true
pr = "draft"
remote = "{}"
[environments.shop.forge]
kind = "github"
api_url = "{}"
token_env = "GH_TOKEN"
"#,
            repo.display(),
            script.display(),
            git_server.url("acme/shop.git"),
            forge.api_url
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("GH_TOKEN", TOKEN)]);

    let out = ok(server.cli(&["run", "Upper-case two", "--env", "shop", "--follow"]));
    assert!(out.contains("pull request created: "), "{out}");
    let ls: serde_json::Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let t: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["show", &id, "--json"]))).unwrap();
    let a = &t["attempts"][0];
    let branch = a["branch"].as_str().unwrap().to_string();
    let head1 = a["head_commit"].as_str().unwrap().to_string();
    assert_eq!(a["delivery"]["push"], "created", "{a}");
    assert_eq!(a["delivery"]["pr_action"], "created");
    assert_eq!(
        git(&bare, &["rev-parse", &format!("refs/heads/{branch}")]).trim(),
        head1,
        "the branch is on the remote"
    );
    assert_eq!(
        git(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        git(&repo, &["rev-parse", "main"]).trim(),
        "main untouched"
    );

    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1);
    let pr = &pulls[0];
    assert!(pr.draft);
    assert_eq!(pr.head, branch);
    assert_eq!(pr.base, "main");
    assert_eq!(pr.title, "Upper-case two");
    assert!(pr.body.contains("Upper-cased two."), "{}", pr.body);
    assert!(pr.body.contains("upper"), "the checks table: {}", pr.body);
    assert!(
        pr.body.contains(&format!(
            "http://errand.example.test/api/v1/tasks/{id}/events"
        )),
        "{}",
        pr.body
    );
    let show = ok(server.cli(&["show", &id]));
    assert!(show.contains("Delivery  pushed"), "{show}");

    // The follow-up pushes to the same branch and updates the same pull request.
    let out = ok(server.cli(&["followup", &id, "Also three", "--follow"]));
    assert!(out.contains("pull request updated: "), "{out}");
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1, "no second pull request");
    assert!(
        pulls[0].body.contains("Upper-cased three as well."),
        "{}",
        pulls[0].body
    );
    let t: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["show", &id, "--json"]))).unwrap();
    let head2 = t["attempts"][0]["head_commit"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(head1, head2);
    assert_eq!(
        git(&bare, &["rev-parse", &format!("refs/heads/{branch}")]).trim(),
        head2
    );
    assert_eq!(t["attempts"][0]["delivery"]["push"], "updated");

    // On demand: up to date, same pull request.
    let out = ok(server.cli(&["pr", &id]));
    assert!(out.contains("up to date"), "{out}");
    assert!(out.contains("pull request updated"), "{out}");
    assert_eq!(forge.pulls().len(), 1);

    // The token is nowhere: not in the log, not in any URL the git server saw.
    let logs = ok(server.cli(&["logs", &id, "--json"]));
    assert!(!logs.contains(TOKEN));
    assert!(!ok(server.cli(&["show", &id, "--json"])).contains(TOKEN));
    for r in git_server.requests() {
        assert!(!r.uri.contains(TOKEN), "{}", r.uri);
        for p in &r.git_processes {
            assert!(!p.contains(TOKEN), "{p}");
        }
    }
}

#[test]
fn pr_without_a_forge_or_with_a_bad_token_says_what_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let script = write_script(
        tmp.path(),
        "s.json",
        json!({"turns": [{"tool_calls": [{"name": "finish", "arguments": {"summary": "nothing"}}]}]}),
    );
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let out = ok(server.cli(&[
        "run",
        "noop",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    fails_with(
        server.cli(&["pr", &id]),
        &["has no forge", "[environments.NAME.forge]"],
    );
    drop(server);

    // Bad config is refused when the server reads it.
    let data = tmp.path().join("data2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        "[environments.x]\nrepo = \"/tmp\"\npr = \"ready\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("push"), "{err}");
}
