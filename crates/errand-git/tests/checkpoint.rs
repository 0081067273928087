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
    write(&up, "docs/guide.txt", "read me\n");
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

/// A copy-on-write workspace, simulated without mounting: `lower` is the base checkout,
/// `ws` the merged view (a second checkout the test changes), `upper` holds what overlayfs
/// would put there (changed and new files, a placeholder for each whiteout).
struct FakeOverlay {
    lower: std::path::PathBuf,
    ws: std::path::PathBuf,
    upper: std::path::PathBuf,
}

impl FakeOverlay {
    fn write(&self, rel: &str, content: &str) {
        write(&self.ws, rel, content);
        // A directory made where a whiteout was replaces it (as an opaque directory).
        for a in std::path::Path::new(rel).ancestors().skip(1) {
            let p = self.upper.join(a);
            if !a.as_os_str().is_empty() && p.is_file() {
                std::fs::remove_file(&p).unwrap();
            }
        }
        write(&self.upper, rel, content);
    }
    fn delete(&self, rel: &str) {
        let p = self.ws.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        let u = self.upper.join(rel);
        if u.is_dir() {
            std::fs::remove_dir_all(&u).unwrap();
        }
        if self.lower.join(rel).exists() {
            write(&self.upper, rel, ""); // the whiteout
        } else if u.exists() {
            std::fs::remove_file(&u).unwrap();
        }
    }
}

/// Snapshots all three and checks that they found the same tree.
async fn all_same(
    fast: &mut Checkpointer,
    full: &mut Checkpointer,
    plain: &mut Checkpointer,
    what: &str,
) -> errand_git::checkpoint::Snapshot {
    let a = same(fast, full, what).await;
    assert_eq!(a.tree, plain.snapshot().await.unwrap().tree, "{what}");
    a
}

/// Snapshots both and checks that they found the same tree.
async fn same(
    fast: &mut Checkpointer,
    full: &mut Checkpointer,
    what: &str,
) -> errand_git::checkpoint::Snapshot {
    let a = fast.snapshot().await.unwrap();
    let b = full.snapshot().await.unwrap();
    assert_eq!(a.tree, b.tree, "{what}");
    a
}

#[tokio::test]
async fn in_a_copy_on_write_workspace_snapshots_look_only_at_the_upper_layer() {
    let s = setup().await;
    let o = FakeOverlay {
        lower: s.root.join("base"),
        ws: s.root.join("attempt/repo"),
        upper: s.root.join("attempt/upper"),
    };
    for d in [&o.lower, &o.ws] {
        create_workspace(&s.mirror, d, "errand/abc-z", &s.base)
            .await
            .unwrap();
    }
    write(&o.upper, ".git/HEAD", "ref: refs/heads/errand/abc-z\n");
    let mut fast = Checkpointer::new(
        &s.mirror,
        &o.ws,
        &s.root.join("attempt/checkpoint.git"),
        ATTEMPT,
        &s.base,
        Some(&o.lower.join(".git/index")),
    )
    .await
    .unwrap()
    .with_overlay(&o.upper, &o.lower);
    // The reference: the same workspace, every file looked at.
    let mut full = Checkpointer::new(
        &s.mirror,
        &o.ws,
        &s.root.join("attempt/reference.git"),
        "reference",
        &s.base,
        None,
    )
    .await
    .unwrap();

    assert!(!same(&mut fast, &mut full, "nothing changed").await.changed);
    // Only the upper layer is looked at: a change that is not in it (impossible on a real
    // overlay) goes unseen, which shows that the other files are not read.
    write(&o.ws, "README.md", "# changed behind the overlay's back\n");
    let unseen = fast.snapshot().await.unwrap();
    assert!(!unseen.changed);
    assert_ne!(unseen.tree, full.snapshot().await.unwrap().tree);
    write(
        &o.upper,
        "README.md",
        "# changed behind the overlay's back\n",
    );
    assert!(
        same(&mut fast, &mut full, "now in the upper layer")
            .await
            .changed
    );

    o.write("src/lib.txt", "one\nTWO\n");
    assert!(same(&mut fast, &mut full, "an edit").await.changed);
    o.write("newdir/a.txt", "a\n");
    o.write("newdir/deeper/b.txt", "b\n");
    o.write("build.log", "ignored\n");
    o.write("target/x.log", "ignored\n");
    o.write("src/extra.txt", "new next to tracked files\n");
    o.write("src/also.log", "ignored next to tracked files\n");
    std::os::unix::fs::symlink("lib.txt", o.ws.join("src/link")).unwrap();
    std::os::unix::fs::symlink("lib.txt", o.upper.join("src/link")).unwrap();
    assert!(
        same(&mut fast, &mut full, "new files, ignored ones")
            .await
            .changed
    );
    let c = fast.commit("new files").await.unwrap();
    let files = git(&s.mirror, &["ls-tree", "-r", "--name-only", &c]);
    assert!(
        files.contains("src/extra.txt") && files.contains("src/link"),
        "{files}"
    );
    assert!(!files.contains(".log"), "{files}");
    // New files did not make it look at everything either.
    write(
        &o.ws,
        "docs/guide.txt",
        "changed behind the overlay's back\n",
    );
    assert!(!fast.snapshot().await.unwrap().changed);
    write(
        &o.upper,
        "docs/guide.txt",
        "changed behind the overlay's back\n",
    );
    assert!(
        same(&mut fast, &mut full, "recorded in the upper layer")
            .await
            .changed
    );
    // A changed .gitignore changes what is ignored: `*.log` files are in now, `target/` is not.
    o.write(".gitignore", "target/\n");
    o.write("newdir/deeper/.gitignore", "*.tmp\n");
    o.write("newdir/deeper/c.tmp", "ignored by the nested one\n");
    assert!(
        same(&mut fast, &mut full, "a .gitignore changed")
            .await
            .changed
    );
    o.delete("src/gone.txt");
    assert!(same(&mut fast, &mut full, "a deletion").await.changed);
    o.write("src/lib.txt", "one\ntwo\n");
    assert!(same(&mut fast, &mut full, "an edit undone").await.changed);
    o.delete("newdir");
    assert!(
        same(&mut fast, &mut full, "a new directory removed again")
            .await
            .changed
    );
    assert!(!same(&mut fast, &mut full, "nothing more").await.changed);
    // A file that becomes a directory: update-index can't, so everything is added.
    o.delete("README.md");
    o.write("README.md/inside.txt", "now a directory\n");
    assert!(
        same(&mut fast, &mut full, "a file became a directory")
            .await
            .changed
    );
    o.delete("src");
    assert!(
        same(&mut fast, &mut full, "a whole directory deleted")
            .await
            .changed
    );
    let c = fast.commit("after all that").await.unwrap();
    let files = git(&s.mirror, &["ls-tree", "-r", "--name-only", &c]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        vec![
            ".gitignore",
            "README.md/inside.txt",
            "build.log",
            "docs/guide.txt"
        ]
    );
}

const VALUE: &str = "tok-Secret-9876543210";
const PH: &str = "[REDACTED:TOKEN]";

fn redactor() -> errand_core::redact::Redactor {
    errand_core::redact::Redactor::new([("TOKEN", VALUE)])
}

/// Every object of the mirror, reachable or not, printed; none holds the value or an encoding
/// of it.
fn assert_mirror_clean(mirror: &Path) {
    let out = Command::new("git")
        .current_dir(mirror)
        .args(["cat-file", "--batch-all-objects", "--batch", "--unordered"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(all.len() > 100, "no objects read: {all}");
    for form in [VALUE, "dG9rLVNlY3JldC05ODc2NTQzMjEw", "tok-Secret"] {
        assert!(
            !all.contains(form),
            "an object of the mirror holds {form:?}"
        );
    }
}

fn paths_of(files: &[errand_git::checkpoint::ScrubbedFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[tokio::test]
async fn with_secrets_the_checkpoint_holds_placeholders_and_the_workspace_keeps_its_files() {
    let s = setup().await;
    let ws = s.root.join("attempt/repo");
    create_workspace(&s.mirror, &ws, "errand/abc-s", &s.base)
        .await
        .unwrap();
    let mut cp = Checkpointer::new(
        &s.mirror,
        &ws,
        &s.root.join("attempt/checkpoint.git"),
        ATTEMPT,
        &s.base,
        Some(&ws.join(".git/index")),
    )
    .await
    .unwrap()
    .with_scrub(redactor(), Vec::new());

    // The value: in a new file, in a tracked one, base64-encoded, in an executable, as a
    // link's target and as a file's name; and a clean file next to them.
    write(&ws, "config/token.txt", &format!("token={VALUE}\n"));
    write(&ws, "src/lib.txt", &format!("one\n{VALUE}\n"));
    write(&ws, "notes.txt", "auth: dG9rLVNlY3JldC05ODc2NTQzMjEw\n");
    write(&ws, "run.sh", &format!("#!/bin/sh\necho {VALUE}\n"));
    std::fs::set_permissions(
        ws.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("/tmp/{VALUE}"), ws.join("link")).unwrap();
    write(&ws, &format!("named-{VALUE}.txt"), "clean content\n");
    write(&ws, "clean.txt", "nothing to hide\n");
    assert!(cp.snapshot().await.unwrap().changed);
    let c1 = cp.commit("after turn 1").await.unwrap();

    let show = |c: &str, p: &str| git(&s.mirror, &["show", &format!("{c}:{p}")]);
    assert_eq!(show(&c1, "config/token.txt"), format!("token={PH}\n"));
    assert_eq!(show(&c1, "src/lib.txt"), format!("one\n{PH}\n"));
    assert_eq!(show(&c1, "notes.txt"), format!("auth: {PH}\n"));
    assert_eq!(show(&c1, "run.sh"), format!("#!/bin/sh\necho {PH}\n"));
    assert_eq!(show(&c1, "link"), format!("/tmp/{PH}"));
    assert_eq!(show(&c1, "clean.txt"), "nothing to hide\n");
    let tree = git(&s.mirror, &["ls-tree", "-r", &c1]);
    assert!(
        tree.contains("100755 blob") && tree.contains("\trun.sh"),
        "{tree}"
    );
    assert!(
        tree.contains("120000 blob") && tree.contains("\tlink"),
        "{tree}"
    );
    assert!(
        !tree.contains("named-"),
        "a path with the value is left out: {tree}"
    );
    // The workspace's files are untouched.
    assert_eq!(read(&ws, "config/token.txt"), format!("token={VALUE}\n"));
    assert_eq!(read(&ws, "src/lib.txt"), format!("one\n{VALUE}\n"));
    assert_eq!(
        std::fs::read_link(ws.join("link")).unwrap(),
        Path::new(&format!("/tmp/{VALUE}"))
    );
    let listed = cp.scrubbed();
    assert_eq!(
        paths_of(&listed),
        vec![
            "config/token.txt",
            "link",
            &format!("named-{VALUE}.txt"),
            "notes.txt",
            "run.sh",
            "src/lib.txt"
        ]
    );
    assert!(
        listed
            .iter()
            .all(|f| f.secrets == ["TOKEN"] && f.problem.is_none() != f.path.starts_with("named-")),
        "{listed:?}"
    );

    // The agent removes the value from one file and deletes another: they are no longer
    // listed. Unchanged ones stay listed and the tree stays as it was for them.
    write(&ws, "config/token.txt", "token=from-the-environment\n");
    std::fs::remove_file(ws.join("notes.txt")).unwrap();
    let c2 = cp.commit("after turn 2").await.unwrap();
    assert_eq!(
        show(&c2, "config/token.txt"),
        "token=from-the-environment\n"
    );
    assert_eq!(show(&c2, "src/lib.txt"), format!("one\n{PH}\n"));
    let listed = cp.scrubbed();
    assert_eq!(
        paths_of(&listed),
        vec![
            "link",
            &format!("named-{VALUE}.txt"),
            "run.sh",
            "src/lib.txt"
        ]
    );
    assert!(!cp.snapshot().await.unwrap().changed);
    assert_eq!(cp.commit("after turn 3").await.unwrap(), c2);
    assert_mirror_clean(&s.mirror);

    // Resuming: the fresh workspace holds the placeholders; the files stay listed until the
    // agent changes them.
    let ws2 = s.root.join("attempt-r2/repo");
    create_workspace(&s.mirror, &ws2, "errand/abc-s", &s.base)
        .await
        .unwrap();
    restore_checkpoint(&ws2, &s.base, &c2).await.unwrap();
    assert_eq!(read(&ws2, "src/lib.txt"), format!("one\n{PH}\n"));
    assert_eq!(read(&ws2, "clean.txt"), "nothing to hide\n");
    let earlier: Vec<_> = listed.into_iter().filter(|f| f.problem.is_none()).collect();
    let mut again = Checkpointer::new(
        &s.mirror,
        &ws2,
        &s.root.join("attempt-r2/checkpoint.git"),
        ATTEMPT,
        &c2,
        Some(&ws2.join(".git/index")),
    )
    .await
    .unwrap()
    .with_scrub(redactor(), earlier);
    assert!(!again.snapshot().await.unwrap().changed);
    assert_eq!(
        paths_of(&again.scrubbed()),
        vec!["link", "run.sh", "src/lib.txt"]
    );
    assert_eq!(again.commit("after turn 4").await.unwrap(), c2);
    write(&ws2, "src/lib.txt", "one\nrewritten\n");
    let c3 = again.commit("after turn 5").await.unwrap();
    assert_eq!(show(&c3, "src/lib.txt"), "one\nrewritten\n");
    assert_eq!(paths_of(&again.scrubbed()), vec!["link", "run.sh"]);
    assert_mirror_clean(&s.mirror);
}

#[tokio::test]
async fn with_secrets_a_copy_on_write_workspace_gets_the_same_trees_as_a_full_look() {
    let s = setup().await;
    let o = FakeOverlay {
        lower: s.root.join("base"),
        ws: s.root.join("attempt/repo"),
        upper: s.root.join("attempt/upper"),
    };
    for d in [&o.lower, &o.ws] {
        create_workspace(&s.mirror, d, "errand/abc-t", &s.base)
            .await
            .unwrap();
    }
    write(&o.upper, ".git/HEAD", "ref: refs/heads/errand/abc-t\n");
    let mut fast = Checkpointer::new(
        &s.mirror,
        &o.ws,
        &s.root.join("attempt/checkpoint.git"),
        ATTEMPT,
        &s.base,
        Some(&o.lower.join(".git/index")),
    )
    .await
    .unwrap()
    .with_overlay(&o.upper, &o.lower)
    .with_scrub(redactor(), Vec::new());
    // Every file looked at, through `git ls-files` and the same scrubbing.
    let mut full = Checkpointer::new(
        &s.mirror,
        &o.ws,
        &s.root.join("attempt/full.git"),
        "full",
        &s.base,
        None,
    )
    .await
    .unwrap()
    .with_scrub(redactor(), Vec::new());
    // Without secrets: `git add` itself. The same trees while there is no value around.
    let mut plain = Checkpointer::new(
        &s.mirror,
        &o.ws,
        &s.root.join("attempt/plain.git"),
        "plain",
        &s.base,
        None,
    )
    .await
    .unwrap();
    assert!(
        !all_same(&mut fast, &mut full, &mut plain, "nothing changed")
            .await
            .changed
    );
    // The fast side reads only the upper layer, with secrets too: a change that is not in it
    // goes unseen (and a value in it would not be read at all).
    write(&o.ws, "docs/guide.txt", "behind the overlay's back\n");
    assert!(!fast.snapshot().await.unwrap().changed);
    assert!(full.snapshot().await.unwrap().changed);
    write(&o.upper, "docs/guide.txt", "behind the overlay's back\n");
    assert!(
        all_same(&mut fast, &mut full, &mut plain, "now in the upper layer")
            .await
            .changed
    );
    o.write("src/lib.txt", "one\nTWO\n");
    o.write("newdir/deeper/b.txt", "b\n");
    o.write("build.log", "ignored\n");
    std::os::unix::fs::symlink("lib.txt", o.ws.join("src/link")).unwrap();
    std::os::unix::fs::symlink("lib.txt", o.upper.join("src/link")).unwrap();
    assert!(
        all_same(&mut fast, &mut full, &mut plain, "edits, new files, a link")
            .await
            .changed
    );
    o.delete("src/gone.txt");
    o.write(".gitignore", "target/\n");
    assert!(
        all_same(&mut fast, &mut full, &mut plain, "a deletion, a .gitignore")
            .await
            .changed
    );
    o.delete("README.md");
    o.write("README.md/inside.txt", "now a directory\n");
    assert!(
        all_same(
            &mut fast,
            &mut full,
            &mut plain,
            "a file became a directory"
        )
        .await
        .changed
    );

    // From here on the value is around: `plain` is not used again (it would store it).
    o.write("src/lib.txt", &format!("one\n{VALUE}\n"));
    o.write("newdir/secret.env", &format!("TOKEN={VALUE}\n"));
    o.write("build.log", &format!("{VALUE}\n"));
    let snap = same(&mut fast, &mut full, "values in files").await;
    assert!(snap.changed);
    let c = fast.commit("values").await.unwrap();
    assert_eq!(
        git(&s.mirror, &["show", &format!("{c}:newdir/secret.env")]),
        format!("TOKEN={PH}\n")
    );
    assert_eq!(
        git(&s.mirror, &["show", &format!("{c}:build.log")]),
        format!("{PH}\n"),
        "not ignored any more since .gitignore changed"
    );
    assert_eq!(
        paths_of(&fast.scrubbed()),
        vec!["build.log", "newdir/secret.env", "src/lib.txt"]
    );
    assert_eq!(paths_of(&fast.scrubbed()), paths_of(&full.scrubbed()));
    assert_eq!(read(&o.ws, "newdir/secret.env"), format!("TOKEN={VALUE}\n"));
    // Unchanged: no git at all on the fast side, and still listed.
    assert!(!same(&mut fast, &mut full, "nothing more").await.changed);
    assert_eq!(fast.scrubbed().len(), 3);
    o.delete("newdir");
    o.write("src/lib.txt", "one\ntwo\n");
    assert!(same(&mut fast, &mut full, "values gone").await.changed);
    assert_eq!(paths_of(&fast.scrubbed()), vec!["build.log"]);
    assert_mirror_clean(&s.mirror);
}

#[tokio::test]
async fn work_in_progress_is_committed_with_placeholders_and_the_workspace_keeps_the_value() {
    let s = setup().await;
    let ws = s.root.join("attempt/repo");
    create_workspace(&s.mirror, &ws, "errand/abc-r", &s.base)
        .await
        .unwrap();
    let commit = |name: &'static str| {
        let (mirror, ws, root, base) =
            (s.mirror.clone(), ws.clone(), s.root.clone(), s.base.clone());
        async move {
            errand_git::checkpoint::commit_workspace_redacted(
                &mirror,
                &ws,
                &root.join(name),
                &base,
                "errand/abc-r",
                "work in progress",
                &[("Errand-Attempt", ATTEMPT)],
                Some(&ws.join(".git/index")),
                &redactor(),
                &["/setup-out/".to_string()],
            )
            .await
            .unwrap()
        }
    };
    let (none, listed) = commit("review1.git").await;
    assert!(none.is_none() && listed.is_empty(), "nothing changed");
    write(&ws, "src/lib.txt", &format!("one\ntwo {VALUE}\n"));
    write(&ws, "clean.txt", "clean\n");
    // What setup left (an excluded path) stays out of the commit.
    write(&ws, "setup-out/cache.bin", "built by setup\n");
    let (head, listed) = commit("review2.git").await;
    let head = head.unwrap();
    assert_eq!(
        git(&s.mirror, &["rev-parse", "refs/heads/errand/abc-r"]).trim(),
        head
    );
    assert_eq!(
        git(&s.mirror, &["show", &format!("{head}:src/lib.txt")]),
        format!("one\ntwo {PH}\n")
    );
    assert_eq!(
        git(&s.mirror, &["show", &format!("{head}:clean.txt")]),
        "clean\n"
    );
    let files = git(&s.mirror, &["ls-tree", "-r", "--name-only", &head]);
    assert!(!files.contains("setup-out"), "{files}");
    let msg = git(&s.mirror, &["log", "-1", "--format=%B", &head]);
    assert!(msg.contains(&format!("Errand-Attempt: {ATTEMPT}")), "{msg}");
    assert_eq!(paths_of(&listed), vec!["src/lib.txt"]);
    assert_eq!(read(&ws, "src/lib.txt"), format!("one\ntwo {VALUE}\n"));
    assert_mirror_clean(&s.mirror);
    // Only `errand/…` branches.
    assert!(
        errand_git::checkpoint::commit_workspace_redacted(
            &s.mirror,
            &ws,
            &s.root.join("review3.git"),
            &s.base,
            "main",
            "x",
            &[],
            None,
            &redactor(),
            &[],
        )
        .await
        .is_err()
    );
}
