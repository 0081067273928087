//! Checkpoints of a workspace on the mirror's hidden ref, and restoring one into a fresh
//! workspace, against real repositories through the real `git` CLI.

use errand_git::{
    Checkpointer, MirrorCache, create_workspace, delete_checkpoint_ref, restore_checkpoint,
};
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=Test User",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    mirror: std::path::PathBuf,
    base: String,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let up = root.join("upstream");
    std::fs::create_dir_all(&up).unwrap();
    git(&up, &["init", "--quiet", "--initial-branch=main"]);
    write(&up, "README.md", "# upstream\n");
    write(&up, "src/lib.txt", "one\ntwo\n");
    write(&up, "src/gone.txt", "to be deleted\n");
    write(&up, ".gitignore", "*.log\n");
    git(&up, &["add", "."]);
    git(&up, &["commit", "--quiet", "-m", "first"]);
    let base = git(&up, &["rev-parse", "HEAD"]).trim().to_string();
    let mirrors = MirrorCache::new(root.join("mirrors"));
    let mirror = mirrors.sync(&up.display().to_string()).await.unwrap();
    Setup {
        _tmp: tmp,
        root,
        mirror,
        base,
    }
}

const ATTEMPT: &str = "0abcdefghijk";

#[tokio::test]
async fn checkpoints_go_to_a_hidden_ref_and_restore_into_a_fresh_workspace() {
    let s = setup().await;
    let ws = s.root.join("attempt/repo");
    create_workspace(&s.mirror, &ws, "errand/abc-x", &s.base)
        .await
        .unwrap();
    let heads_before = git(
        &s.mirror,
        &["for-each-ref", "--format=%(refname)", "refs/heads"],
    );
    let mut cp = Checkpointer::new(
        &s.mirror,
        &ws,
        &s.root.join("attempt/checkpoint.git"),
        ATTEMPT,
        &s.base,
        Some(&ws.join(".git/index")),
    )
    .await
    .unwrap();
    assert_eq!(cp.reference(), format!("refs/errand/checkpoints/{ATTEMPT}"));

    // Nothing changed yet: no commit, the checkpoint is the base itself.
    assert!(!cp.snapshot().await.unwrap().changed);
    assert_eq!(cp.commit("after turn 1").await.unwrap(), s.base);

    // Edit, add, delete, and an ignored file.
    write(&ws, "src/lib.txt", "one\nTWO\n");
    write(&ws, "src/new.txt", "new\n");
    std::fs::remove_file(ws.join("src/gone.txt")).unwrap();
    write(&ws, "build.log", "noise\n");
    let snap = cp.snapshot().await.unwrap();
    assert!(snap.changed);
    let c1 = cp.commit("errand checkpoint after turn 2").await.unwrap();
    assert_ne!(c1, s.base);
    assert_eq!(
        git(&s.mirror, &["rev-parse", cp.reference()]).trim(),
        c1,
        "the hidden ref points at the checkpoint"
    );
    assert_eq!(
        git(&s.mirror, &["rev-parse", &format!("{c1}^")]).trim(),
        s.base
    );
    assert_eq!(
        git(&s.mirror, &["show", &format!("{c1}:src/lib.txt")]),
        "one\nTWO\n"
    );
    let files = git(&s.mirror, &["ls-tree", "-r", "--name-only", &c1]);
    assert!(files.contains("src/new.txt"), "{files}");
    assert!(!files.contains("gone.txt"), "{files}");
    assert!(
        !files.contains("build.log"),
        "ignored files are not kept: {files}"
    );

    // Unchanged again: same commit; a later change chains on top.
    assert!(!cp.snapshot().await.unwrap().changed);
    assert_eq!(cp.commit("after turn 3").await.unwrap(), c1);
    write(&ws, "src/new.txt", "newer\n");
    let c2 = cp.commit("after turn 4").await.unwrap();
    assert_eq!(git(&s.mirror, &["rev-parse", &format!("{c2}^")]).trim(), c1);
    // Never a branch, and the workspace's own git saw nothing.
    assert_eq!(
        git(
            &s.mirror,
            &["for-each-ref", "--format=%(refname)", "refs/heads"]
        ),
        heads_before
    );
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]).trim(), s.base);

    // A fresh workspace at the base, brought to the checkpoint: the same files, as
    // uncommitted changes on the branch (HEAD still at the base).
    let ws2 = s.root.join("attempt-r2/repo");
    create_workspace(&s.mirror, &ws2, "errand/abc-x", &s.base)
        .await
        .unwrap();
    restore_checkpoint(&ws2, &s.base, &c2).await.unwrap();
    assert_eq!(read(&ws2, "src/lib.txt"), "one\nTWO\n");
    assert_eq!(read(&ws2, "src/new.txt"), "newer\n");
    assert!(!ws2.join("src/gone.txt").exists());
    assert!(!ws2.join("build.log").exists());
    assert_eq!(git(&ws2, &["rev-parse", "HEAD"]).trim(), s.base);
    let status = git(&ws2, &["status", "--porcelain"]);
    assert!(status.contains(" M src/lib.txt"), "{status}");
    assert!(status.contains(" D src/gone.txt"), "{status}");
    assert!(status.contains("?? src/new.txt"), "{status}");

    // A checkpointer resuming from there starts at the checkpoint: nothing changed yet.
    let mut again = Checkpointer::new(
        &s.mirror,
        &ws2,
        &s.root.join("attempt-r2/checkpoint.git"),
        ATTEMPT,
        &c2,
        Some(&ws2.join(".git/index")),
    )
    .await
    .unwrap();
    assert!(!again.snapshot().await.unwrap().changed);
    assert_eq!(again.commit("after turn 5").await.unwrap(), c2);

    delete_checkpoint_ref(&s.mirror, ATTEMPT).await.unwrap();
    assert!(
        git(&s.mirror, &["for-each-ref", "refs/errand"])
            .trim()
            .is_empty()
    );
    // Deleting again is fine.
    delete_checkpoint_ref(&s.mirror, ATTEMPT).await.unwrap();
}

#[tokio::test]
async fn checkpoints_ignore_the_workspaces_own_git_and_refuse_odd_ids() {
    let s = setup().await;
    let ws = s.root.join("a/repo");
    create_workspace(&s.mirror, &ws, "errand/abc-y", &s.base)
        .await
        .unwrap();
    let mut cp = Checkpointer::new(
        &s.mirror,
        &ws,
        &s.root.join("a/checkpoint.git"),
        ATTEMPT,
        &s.base,
        None,
    )
    .await
    .unwrap();
    // The agent plants a hook and a fsmonitor command in the workspace's git directory, and
    // makes commits of its own: none of it runs or matters.
    let marker = s.root.join("hook-ran");
    let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());
    write(&ws, ".git/hooks/pre-commit", &hook);
    write(&ws, ".git/hooks/post-index-change", &hook);
    git(
        &ws,
        &[
            "config",
            "core.fsmonitor",
            &format!("touch {}", marker.display()),
        ],
    );
    write(&ws, "src/lib.txt", "agent\n");
    let c = cp.commit("after turn 1").await.unwrap();
    assert!(!marker.exists(), "a hook of the workspace ran");
    assert_eq!(
        git(&s.mirror, &["show", &format!("{c}:src/lib.txt")]),
        "agent\n"
    );
    let files = git(&s.mirror, &["ls-tree", "-r", "--name-only", &c]);
    assert!(!files.contains(".git/"), "{files}");

    for bad in ["", "../x", "a/b", "a b", "refs/heads/main"] {
        assert!(
            Checkpointer::new(
                &s.mirror,
                &ws,
                &s.root.join("b/checkpoint.git"),
                bad,
                &s.base,
                None
            )
            .await
            .is_err(),
            "{bad:?}"
        );
    }
}
