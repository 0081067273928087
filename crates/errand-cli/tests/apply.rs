//! `errand diff --file` and `errand apply` against real repos: renames, deletions, binary
//! files, a checkout that has diverged (with and without conflicts), and refusals.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};

/// A repo with a text file to edit, one to delete, one to rename, and one nobody touches.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("a.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(repo.join("gone.txt"), "delete me\n").unwrap();
    std::fs::write(
        repo.join("old_name.txt"),
        "a file that is moved\nwith several lines\nso the rename is found\n",
    )
    .unwrap();
    std::fs::write(repo.join("other.txt"), "untouched\n").unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "base"]);
    repo
}

/// Runs a scripted attempt that edits, adds, deletes, renames and writes a binary file.
fn run_attempt(tmp: &Path, server: &Server, repo: &Path) -> String {
    let script = write_script(
        tmp,
        "change.json",
        json!({"turns": [
            {"tool_calls": [
                {"name": "edit", "arguments": {"path": "a.txt", "old": "two", "new": "TWO"}},
                {"name": "write_file", "arguments": {"path": "new.txt", "content": "brand new\n"}},
                {"name": "shell", "arguments": {"command": "rm gone.txt && mv old_name.txt new_name.txt && printf '\\000\\001\\002\\377' > bin.dat"}}
            ]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "changed things"}}]}
        ]}),
    );
    let out = ok(server.cli(&[
        "run",
        "Change things",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        &format!("scripted:{}", script.display()),
        "--json",
    ]));
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_status(
        server,
        &id,
        &["done", "failed"],
        std::time::Duration::from_secs(60),
    ));
    id
}

fn clone_at_base(src: &Path, dest: &Path) -> PathBuf {
    let out = std::process::Command::new("git")
        .args(["clone", "--quiet"])
        .arg(src)
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success());
    dest.to_path_buf()
}

#[test]
fn diff_shows_renames_deletions_binary_and_one_file_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let id = run_attempt(tmp.path(), &server, &repo);
    let diff = ok(server.cli(&["diff", &id]));
    assert!(
        diff.contains("rename from old_name.txt\nrename to new_name.txt"),
        "{diff}"
    );
    assert!(diff.contains("deleted file mode 100644"), "{diff}");
    assert!(
        diff.contains("Binary files /dev/null and b/bin.dat differ"),
        "{diff}"
    );
    let one = ok(server.cli(&["diff", &id, "--file", "a.txt"]));
    assert!(one.starts_with("diff --git a/a.txt b/a.txt"), "{one}");
    assert!(one.contains("+TWO"));
    assert!(!one.contains("new.txt"));
    let err = fails_with(
        server.cli(&["diff", &id, "--file", "nope.txt"]),
        &["does not touch 'nope.txt'"],
    );
    assert!(
        err.contains("a.txt"),
        "it lists what the diff changes: {err}"
    );
}

#[test]
fn apply_onto_a_diverged_checkout_cleanly_then_again() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let id = run_attempt(tmp.path(), &server, &repo);

    // The user's checkout moved on, in a file the attempt did not touch.
    let work = clone_at_base(&repo, &tmp.path().join("work"));
    std::fs::write(work.join("other.txt"), "changed locally\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "local work"]);

    let out = ok(server.cli_in(&work, &["apply", &id]));
    assert!(out.contains("applied cleanly"), "{out}");
    for p in ["a.txt", "new.txt", "gone.txt", "new_name.txt", "bin.dat"] {
        assert!(out.contains(p), "{p} listed: {out}");
    }
    assert_eq!(
        std::fs::read_to_string(work.join("a.txt")).unwrap(),
        "one\nTWO\nthree\n"
    );
    assert_eq!(
        std::fs::read(work.join("bin.dat")).unwrap(),
        vec![0u8, 1, 2, 255]
    );
    assert!(!work.join("gone.txt").exists());
    assert!(!work.join("old_name.txt").exists() && work.join("new_name.txt").exists());
    assert_eq!(
        std::fs::read_to_string(work.join("other.txt")).unwrap(),
        "changed locally\n"
    );

    // Again: already there.
    let out = ok(server.cli_in(&work, &["apply", &id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["method"], "already_applied");
}

#[test]
fn apply_with_a_conflict_merges_the_rest_and_names_the_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let id = run_attempt(tmp.path(), &server, &repo);

    let work = clone_at_base(&repo, &tmp.path().join("work"));
    std::fs::write(work.join("a.txt"), "one\nzwei\nthree\n").unwrap();
    git(
        &work,
        &["commit", "--quiet", "-am", "a different second line"],
    );

    let o = server.cli_in(&work, &["apply", &id, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["method"], "3way");
    assert_eq!(v["conflicted"], json!(["a.txt"]));
    let applied: Vec<String> = serde_json::from_value(v["applied"].clone()).unwrap();
    assert!(applied.contains(&"new.txt".to_string()), "{applied:?}");
    let a = std::fs::read_to_string(work.join("a.txt")).unwrap();
    assert!(
        a.contains("<<<<<<<") && a.contains("zwei") && a.contains("TWO"),
        "{a}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("new.txt")).unwrap(),
        "brand new\n"
    );
    let status = git(&work, &["status", "--porcelain"]);
    assert!(status.contains("UU a.txt"), "{status}");
}

#[test]
fn apply_refuses_without_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--workers", "1"]);
    let id = run_attempt(tmp.path(), &server, &repo);

    // Not a checkout.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    fails_with(
        server.cli_in(&plain, &["apply", &id]),
        &["is not a git checkout"],
    );

    // Uncommitted changes in a file the attempt changes, conflicting with it.
    let work = clone_at_base(&repo, &tmp.path().join("work"));
    std::fs::write(work.join("a.txt"), "one\nlocal edit\nthree\n").unwrap();
    let before = git(&work, &["status", "--porcelain"]);
    fails_with(
        server.cli_in(&work, &["apply", &id]),
        &["nothing was changed", "commit or stash your changes"],
    );
    assert_eq!(
        git(&work, &["status", "--porcelain"]),
        before,
        "the checkout is as it was"
    );
    assert!(!work.join("new.txt").exists());
}
