//! Recording a workspace's files before the checks and putting the workspace back to them
//! afterwards, against real repositories through the real `git` CLI.

use errand_git::{ChangeKind, MirrorCache, WorkspaceIndex, create_workspace};
use std::path::{Path, PathBuf};
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

#[tokio::test]
async fn what_the_checks_wrote_is_put_back_and_stays_out_of_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let up = root.join("upstream");
    std::fs::create_dir_all(&up).unwrap();
    git(&up, &["init", "--quiet", "--initial-branch=main"]);
    write(&up, "README.md", "# upstream\n");
    write(&up, "src/lib.txt", "one\ntwo\n");
    write(&up, "docs/guide.txt", "read me\n");
    write(&up, "old.txt", "the agent deletes this\n");
    write(&up, ".gitignore", "*.log\n");
    git(&up, &["add", "."]);
    git(&up, &["commit", "--quiet", "-m", "first"]);
    let base = git(&up, &["rev-parse", "HEAD"]).trim().to_string();
    let mirrors = MirrorCache::new(root.join("mirrors"));
    let mirror = mirrors.sync(&up.display().to_string()).await.unwrap();
    let ws = root.join("attempt/repo");
    create_workspace(&mirror, &ws, "errand/abc-checks", &base)
        .await
        .unwrap();

    // Seeded before anything ran, like the worker does.
    let wi = WorkspaceIndex::new(
        &mirror,
        &ws,
        &root.join("attempt/checks.git"),
        &base,
        Some(&ws.join(".git/index")),
    )
    .await
    .unwrap();
    // A setup script's output: excluded from the snapshots as from the commit.
    write(&ws, "setup-made.txt", "from setup\n");
    wi.set_exclude(&["/setup-made.txt".to_string()])
        .await
        .unwrap();

    // The agent's work.
    write(&ws, "src/fix.txt", "the fix\n");
    write(&ws, "src/lib.txt", "one\ntwo\nthree\n");
    std::fs::remove_file(ws.join("old.txt")).unwrap();
    let agent = wi.snapshot().await.unwrap();
    assert_eq!(wi.snapshot().await.unwrap(), agent, "nothing changed");

    // What the checks do.
    let outside = root.join("outside");
    write(&outside, "keep.txt", "not the workspace's\n");
    write(&ws, "junit.xml", "<testsuite tests=\"1\"/>\n");
    write(&ws, "build-out/obj/a.o", "object\n");
    let mut readme = read(&ws, "README.md");
    readme.push_str("x\n");
    write(&ws, "README.md", &readme);
    write(&ws, "src/fix.txt", "reformatted by a check\n");
    std::fs::remove_file(ws.join("src/lib.txt")).unwrap();
    write(&ws, "check.log", "ignored output\n");
    // A .gitignore changed to hide a report: the report must still go.
    write(&ws, ".gitignore", "*.log\nreport.txt\n");
    write(&ws, "report.txt", "hidden by the changed .gitignore\n");
    // A tracked directory replaced by a link out of the workspace.
    std::fs::remove_dir_all(ws.join("docs")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("docs")).unwrap();
    // An embedded repository, which git can't remove.
    let dep = ws.join("fixtures/dep");
    std::fs::create_dir_all(&dep).unwrap();
    git(&dep, &["init", "--quiet"]);
    write(&dep, "f.txt", "dep\n");
    git(&dep, &["add", "."]);
    git(&dep, &["commit", "--quiet", "-m", "dep"]);

    let after = wi.snapshot().await.unwrap();
    let seen: Vec<(String, ChangeKind)> = wi
        .changes(&agent, &after)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.path.display().to_string(), c.kind))
        .collect();
    assert!(
        seen.contains(&("junit.xml".into(), ChangeKind::Added))
            && seen.contains(&("README.md".into(), ChangeKind::Modified))
            && seen.contains(&("src/lib.txt".into(), ChangeKind::Deleted))
            && !seen
                .iter()
                .any(|(p, _)| p == "report.txt" || p == "check.log"),
        "{seen:?}"
    );

    let restored = wi.restore(&agent).await.unwrap();
    let undone: Vec<(String, ChangeKind)> = restored
        .undone
        .iter()
        .map(|c| (c.path.display().to_string(), c.kind))
        .collect();
    use ChangeKind::*;
    let want: Vec<(String, ChangeKind)> = [
        (".gitignore", Modified),
        ("README.md", Modified),
        ("build-out/obj/a.o", Added),
        ("docs", Added),
        ("docs/guide.txt", Deleted),
        ("junit.xml", Added),
        ("report.txt", Added),
        ("src/fix.txt", Modified),
        ("src/lib.txt", Deleted),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    assert_eq!(undone, want);
    assert_eq!(restored.kept_out, [PathBuf::from("fixtures/dep")]);

    // The workspace holds the agent's work again.
    assert_eq!(read(&ws, "README.md"), "# upstream\n");
    assert_eq!(read(&ws, "src/fix.txt"), "the fix\n");
    assert_eq!(read(&ws, "src/lib.txt"), "one\ntwo\nthree\n");
    assert_eq!(read(&ws, ".gitignore"), "*.log\n");
    assert!(!ws.join("old.txt").exists(), "the agent's deletion stays");
    for gone in ["junit.xml", "build-out", "report.txt"] {
        assert!(!ws.join(gone).exists(), "{gone} is removed");
    }
    assert!(
        std::fs::symlink_metadata(ws.join("docs"))
            .unwrap()
            .file_type()
            .is_dir(),
        "the link is replaced by the directory"
    );
    assert_eq!(read(&ws, "docs/guide.txt"), "read me\n");
    assert_eq!(read(&outside, "keep.txt"), "not the workspace's\n");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing written through the link"
    );
    // Ignored and excluded files are not the snapshot's business.
    assert_eq!(read(&ws, "check.log"), "ignored output\n");
    assert_eq!(read(&ws, "setup-made.txt"), "from setup\n");
    assert!(dep.join("f.txt").exists(), "the embedded repository stays");
    assert_eq!(wi.snapshot().await.unwrap(), agent);
    assert_eq!(
        wi.excluded(),
        ["/setup-made.txt".to_string(), "/fixtures/dep".to_string()]
    );

    // Nothing left to put back.
    let again = wi.restore(&agent).await.unwrap();
    assert!(again.undone.is_empty() && again.kept_out.is_empty());

    // The commit has the agent's work and nothing of the checks'.
    let commit = errand_git::commit_workspace_excluding(
        &mirror,
        &ws,
        &root.join("attempt/commit.git"),
        &base,
        "errand/abc-checks",
        "work",
        &[],
        Some(&ws.join(".git/index")),
        &wi.excluded(),
    )
    .await
    .unwrap()
    .expect("the agent's work is committed");
    let files = git(
        &mirror,
        &["show", "--name-status", "--format=", commit.as_str()],
    );
    let mut lines: Vec<&str> = files.lines().collect();
    lines.sort();
    assert_eq!(lines, ["A\tsrc/fix.txt", "D\told.txt", "M\tsrc/lib.txt"]);
}
