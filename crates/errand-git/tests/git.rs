//! Errand's git plumbing against real repositories in temp dirs, through the real `git` CLI.

use errand_git::{GitError, MirrorCache, commit_all, create_workspace, diff, resolve_local};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs git in `dir` (as a test user) and returns its stdout; panics on failure.
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
            "-c",
            "tag.gpgsign=false",
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

fn rev(dir: &Path, spec: &str) -> String {
    git(dir, &["rev-parse", "--verify", spec])
        .trim()
        .to_string()
}

fn write(dir: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// `refname objectname` of every ref, sorted.
fn refs(dir: &Path) -> Vec<String> {
    let mut r: Vec<String> = git(dir, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .map(str::to_string)
        .collect();
    r.sort();
    r
}

fn ref_names(dir: &Path) -> Vec<String> {
    let mut r: Vec<String> = git(dir, &["for-each-ref", "--format=%(refname)"])
        .lines()
        .map(str::to_string)
        .collect();
    r.sort();
    r
}

/// Everything observable about a user's repo, to prove Errand never changed it.
fn fingerprint(repo: &Path) -> String {
    format!(
        "{:?}\n{}\n{}\n{}",
        refs(repo),
        git(repo, &["status", "--porcelain", "--untracked-files=all"]),
        git(repo, &["symbolic-ref", "-q", "HEAD"]),
        rev(repo, "HEAD"),
    )
}

/// A user repo with history on `trunk` (its default branch), a `feature` branch, an annotated
/// tag `v1` on the first commit and a lightweight tag `light` on the second.
struct Upstream {
    path: PathBuf,
    first: String,
    second: String,
    feature: String,
}

fn make_upstream(dir: &Path) -> Upstream {
    let path = dir.join("upstream");
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "--quiet", "--initial-branch=trunk"]);
    write(&path, "README.md", "# upstream\n");
    write(&path, "src/lib.txt", "one\ntwo\nthree\n");
    git(&path, &["add", "."]);
    git(&path, &["commit", "--quiet", "-m", "first"]);
    let first = rev(&path, "HEAD");
    git(&path, &["tag", "-a", "v1", "-m", "version 1"]);
    write(&path, "src/lib.txt", "one\ntwo\nthree\nfour\n");
    git(&path, &["commit", "--quiet", "-am", "second"]);
    let second = rev(&path, "HEAD");
    git(&path, &["tag", "light"]);
    git(&path, &["checkout", "--quiet", "-b", "feature"]);
    write(&path, "feature.txt", "feature\n");
    git(&path, &["add", "."]);
    git(&path, &["commit", "--quiet", "-m", "feature work"]);
    let feature = rev(&path, "HEAD");
    git(&path, &["checkout", "--quiet", "trunk"]);
    Upstream {
        path,
        first,
        second,
        feature,
    }
}

fn url(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// resolve_local
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resolve_local_default_branch_tags_and_shas() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let before = fingerprint(&up.path);

    let r = resolve_local(&up.path, None).await.unwrap();
    assert_eq!(r.name, "trunk");
    assert_eq!(r.commit, up.second);

    let r = resolve_local(&up.path, Some("feature")).await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.commit.as_str()),
        ("feature", up.feature.as_str())
    );

    // An annotated tag resolves to its commit, not to the tag object.
    let r = resolve_local(&up.path, Some("v1")).await.unwrap();
    assert_eq!(r.name, "v1");
    assert_eq!(r.commit, up.first);
    assert_ne!(r.commit, rev(&up.path, "refs/tags/v1"));
    assert_eq!(
        resolve_local(&up.path, Some("light")).await.unwrap().commit,
        up.second
    );

    let short = &up.first[..8];
    let r = resolve_local(&up.path, Some(short)).await.unwrap();
    assert_eq!(r.name, short);
    assert_eq!(r.commit, up.first);
    assert_eq!(
        resolve_local(&up.path, Some(&up.feature))
            .await
            .unwrap()
            .commit,
        up.feature
    );
    assert_eq!(
        resolve_local(&up.path, Some("trunk~1"))
            .await
            .unwrap()
            .commit,
        up.first
    );

    // A subdirectory of the checkout is the same repository.
    assert_eq!(
        resolve_local(&up.path.join("src"), None)
            .await
            .unwrap()
            .commit,
        up.second
    );

    assert_eq!(before, fingerprint(&up.path));
}

#[tokio::test]
async fn resolve_local_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());

    match resolve_local(&up.path, Some("no-such-branch")).await {
        Err(GitError::UnknownRef { reference, repo }) => {
            assert_eq!(reference, "no-such-branch");
            assert_eq!(repo, up.path.display().to_string());
        }
        other => panic!("{other:?}"),
    }
    // Option-looking refs are refs, not options.
    assert!(matches!(
        resolve_local(&up.path, Some("--all")).await,
        Err(GitError::UnknownRef { .. })
    ));
    // A tree is not a commit.
    let tree = rev(&up.path, "HEAD^{tree}");
    assert!(matches!(
        resolve_local(&up.path, Some(&tree)).await,
        Err(GitError::UnknownRef { .. })
    ));

    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert!(
        matches!(resolve_local(&plain, None).await, Err(GitError::NotARepo(p)) if p == plain.display().to_string())
    );
    assert!(matches!(
        resolve_local(&plain, Some("main")).await,
        Err(GitError::NotARepo(_))
    ));

    let missing = tmp.path().join("missing");
    let e = resolve_local(&missing, None).await.unwrap_err();
    assert!(matches!(&e, GitError::NoSuchPath(p) if *p == missing.display().to_string()));
    assert!(e.to_string().contains("does not exist"), "{e}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    git(&empty, &["init", "--quiet", "--initial-branch=main"]);
    let e = resolve_local(&empty, None).await.unwrap_err();
    assert!(matches!(e, GitError::UnknownRef { .. }), "{e:?}");
    assert!(e.to_string().contains("no commits yet"), "{e}");
    assert!(e.to_string().contains("'main"), "{e}");
}

#[tokio::test]
async fn resolve_local_on_a_detached_head() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    git(&up.path, &["checkout", "--quiet", "--detach", &up.first]);
    let r = resolve_local(&up.path, None).await.unwrap();
    assert_eq!(r.name, "HEAD");
    assert_eq!(r.commit, up.first);
}

// ---------------------------------------------------------------------------
// MirrorCache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sync_creates_a_bare_mirror_with_remote_branches_and_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let before = fingerprint(&up.path);
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let repo = url(&up.path);

    let mirror = cache.sync(&repo).await.unwrap();
    assert_eq!(mirror, cache.mirror_path(&repo));
    assert!(mirror.starts_with(tmp.path().join("mirrors")));
    assert!(
        mirror
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("upstream-"),
        "{}",
        mirror.display()
    );
    assert_eq!(
        git(&mirror, &["rev-parse", "--is-bare-repository"]).trim(),
        "true"
    );
    assert_eq!(
        ref_names(&mirror),
        vec![
            "refs/remotes/origin/feature",
            "refs/remotes/origin/trunk",
            "refs/tags/light",
            "refs/tags/v1",
        ]
    );
    assert_eq!(rev(&mirror, "refs/remotes/origin/trunk"), up.second);
    assert_eq!(rev(&mirror, "refs/remotes/origin/feature"), up.feature);
    assert_eq!(rev(&mirror, "refs/tags/v1"), rev(&up.path, "refs/tags/v1"));
    assert_eq!(git(&mirror, &["config", "remote.origin.url"]).trim(), repo);
    // No temporary directories left behind.
    let entries: Vec<_> = std::fs::read_dir(tmp.path().join("mirrors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries, vec![mirror.clone()]);

    // Default branch through the remote's HEAD, then branches, tags, shas.
    let r = cache.resolve(&mirror, &repo, None).await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.commit.as_str()),
        ("trunk", up.second.as_str())
    );
    assert_eq!(
        cache
            .resolve(&mirror, &repo, Some("feature"))
            .await
            .unwrap()
            .commit,
        up.feature
    );
    assert_eq!(
        cache
            .resolve(&mirror, &repo, Some("v1"))
            .await
            .unwrap()
            .commit,
        up.first
    );
    assert_eq!(
        cache
            .resolve(&mirror, &repo, Some("light"))
            .await
            .unwrap()
            .commit,
        up.second
    );
    assert_eq!(
        cache
            .resolve(&mirror, &repo, Some(&up.first[..10]))
            .await
            .unwrap()
            .commit,
        up.first
    );
    assert_eq!(
        cache
            .resolve(&mirror, &repo, Some(&up.feature))
            .await
            .unwrap()
            .commit,
        up.feature
    );
    match cache.resolve(&mirror, &repo, Some("nope")).await {
        Err(GitError::UnknownRef { reference, repo: r }) => {
            assert_eq!(reference, "nope");
            assert_eq!(r, repo);
        }
        other => panic!("{other:?}"),
    }

    // The remote's default branch follows the upstream's HEAD.
    git(&up.path, &["checkout", "--quiet", "feature"]);
    let r = cache.resolve(&mirror, &repo, None).await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.commit.as_str()),
        ("feature", up.feature.as_str())
    );
    git(&up.path, &["checkout", "--quiet", "trunk"]);

    assert_eq!(before, fingerprint(&up.path));
}

#[tokio::test]
async fn sync_fetches_incrementally_prunes_upstream_branches_and_keeps_errand_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let repo = url(&up.path);
    let mirror = cache.sync(&repo).await.unwrap();

    // An attempt's branch, imported into the mirror from a workspace.
    let ws = tmp.path().join("ws");
    create_workspace(&mirror, &ws, "errand/abc-work", &up.second)
        .await
        .unwrap();
    write(&ws, "agent.txt", "agent work\n");
    let agent_commit = commit_all(&ws, "Agent work", &[]).await.unwrap().unwrap();
    cache
        .import_branch(&mirror, &ws, "errand/abc-work")
        .await
        .unwrap();
    assert_eq!(rev(&mirror, "refs/heads/errand/abc-work"), agent_commit);

    // Upstream moves on: a new commit on trunk, a new tag, feature deleted.
    write(&up.path, "src/lib.txt", "one\ntwo\nthree\nfour\nfive\n");
    git(&up.path, &["commit", "--quiet", "-am", "third"]);
    let third = rev(&up.path, "HEAD");
    git(&up.path, &["tag", "v2"]);
    git(&up.path, &["branch", "--quiet", "-D", "feature"]);

    let again = cache.sync(&repo).await.unwrap();
    assert_eq!(again, mirror);
    assert_eq!(rev(&mirror, "refs/remotes/origin/trunk"), third);
    assert_eq!(
        cache.resolve(&mirror, &repo, None).await.unwrap().commit,
        third
    );
    assert_eq!(
        ref_names(&mirror),
        vec![
            "refs/heads/errand/abc-work",
            "refs/remotes/origin/trunk",
            "refs/tags/light",
            "refs/tags/v1",
            "refs/tags/v2",
        ]
    );
    // The attempt's branch and its commit survived the fetch and the prune.
    assert_eq!(rev(&mirror, "refs/heads/errand/abc-work"), agent_commit);
    assert!(matches!(
        cache.resolve(&mirror, &repo, Some("feature")).await,
        Err(GitError::UnknownRef { .. })
    ));
    // The upstream never saw the attempt's branch.
    assert!(!ref_names(&up.path).iter().any(|r| r.contains("errand")));
}

#[tokio::test]
async fn sync_of_an_unreachable_repo_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let missing = url(&tmp.path().join("does-not-exist"));
    match cache.sync(&missing).await {
        Err(GitError::Unreachable { repo, message }) => {
            assert_eq!(repo, missing);
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let file_url = format!("file://{}", tmp.path().join("nope.git").display());
    assert!(matches!(
        cache.sync(&file_url).await,
        Err(GitError::Unreachable { .. })
    ));
    // A directory that is not a repository.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let e = cache.sync(&url(&plain)).await.unwrap_err();
    assert!(matches!(e, GitError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().starts_with("cannot reach repository"), "{e}");
}

#[tokio::test]
async fn mirror_paths_are_distinct_per_repo() {
    let cache = MirrorCache::new("/var/cache/errand");
    let a = cache.mirror_path("https://example.com/org/app.git");
    let b = cache.mirror_path("https://example.com/other/app.git");
    assert_ne!(a, b);
    assert_eq!(a, cache.mirror_path("https://example.com/org/app.git"));
    assert!(a.starts_with("/var/cache/errand"));
    let name = a.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("app-") && name.ends_with(".git"), "{name}");
    let scp = cache.mirror_path("git@example.com:org/tool.git");
    assert!(
        scp.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tool-"),
        "{}",
        scp.display()
    );
}

#[tokio::test]
async fn ensure_commit_fetches_a_commit_no_branch_points_to() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    // A commit only reachable from a ref outside heads and tags (like a pull request head).
    git(&up.path, &["checkout", "--quiet", "-b", "tmp-pr"]);
    write(&up.path, "pr.txt", "pr\n");
    git(&up.path, &["add", "."]);
    git(&up.path, &["commit", "--quiet", "-m", "pr"]);
    let pr = rev(&up.path, "HEAD");
    git(&up.path, &["update-ref", "refs/pull/1/head", &pr]);
    git(&up.path, &["checkout", "--quiet", "trunk"]);
    git(&up.path, &["branch", "--quiet", "-D", "tmp-pr"]);

    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let repo = url(&up.path);
    let mirror = cache.sync(&repo).await.unwrap();
    assert!(
        Command::new("git")
            .current_dir(&mirror)
            .args(["cat-file", "-e", &format!("{pr}^{{commit}}")])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    cache.ensure_commit(&mirror, &repo, &pr).await.unwrap();
    assert_eq!(rev(&mirror, &format!("{pr}^{{commit}}")), pr);
    // Already there: nothing to do.
    cache
        .ensure_commit(&mirror, &repo, &up.first)
        .await
        .unwrap();
    let bogus = "0123456789abcdef0123456789abcdef01234567";
    assert!(matches!(
        cache.ensure_commit(&mirror, &repo, bogus).await,
        Err(GitError::UnknownRef { reference, .. }) if reference == bogus
    ));
}

// ---------------------------------------------------------------------------
// Workspaces, commits, branches
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_workspace_checks_out_the_base_on_an_errand_branch_without_a_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let before = fingerprint(&up.path);
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&up.path)).await.unwrap();
    let ws = tmp.path().join("work/attempt-1");
    // A stale workspace from an earlier run is replaced.
    write(&ws, "stale.txt", "old\n");

    create_workspace(&mirror, &ws, "errand/abc123-fix-it", &up.first)
        .await
        .unwrap();

    assert!(!ws.join("stale.txt").exists());
    assert_eq!(rev(&ws, "HEAD"), up.first);
    assert_eq!(
        git(&ws, &["symbolic-ref", "--short", "HEAD"]).trim(),
        "errand/abc123-fix-it"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("src/lib.txt")).unwrap(),
        "one\ntwo\nthree\n"
    );
    assert_eq!(
        git(&ws, &["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    // No remote: the agent cannot push anywhere.
    assert_eq!(git(&ws, &["remote"]), "");
    assert_eq!(ref_names(&ws), vec!["refs/heads/errand/abc123-fix-it"]);
    // Objects come from the mirror through alternates; none were copied.
    let alternates = std::fs::read_to_string(ws.join(".git/objects/info/alternates")).unwrap();
    assert_eq!(
        alternates.trim(),
        mirror
            .join("objects")
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    );
    let packs: Vec<_> = std::fs::read_dir(ws.join(".git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(packs.is_empty(), "{packs:?}");
    let counts = git(&ws, &["count-objects", "-v"]);
    assert!(
        counts.contains("\ncount: 0\n") || counts.starts_with("count: 0\n"),
        "{counts}"
    );
    assert!(counts.contains("in-pack: 0\n"), "{counts}");
    // The full history is readable anyway.
    assert_eq!(git(&ws, &["log", "--format=%s", "HEAD"]).trim(), "first");
    assert_eq!(rev(&ws, &format!("{}^{{commit}}", up.feature)), up.feature);

    assert_eq!(before, fingerprint(&up.path));
}

#[tokio::test]
async fn create_workspace_refuses_branches_outside_errand() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&up.path)).await.unwrap();
    for (i, branch) in [
        "main",
        "master",
        "trunk",
        "feature/x",
        "errand/",
        "errand/../main",
        "refs/heads/errand/x",
    ]
    .into_iter()
    .enumerate()
    {
        let ws = tmp.path().join(format!("ws-{i}"));
        match create_workspace(&mirror, &ws, branch, &up.first).await {
            Err(GitError::ForbiddenBranch(b)) => assert_eq!(b, branch),
            other => panic!("{branch}: {other:?}"),
        }
        assert!(!ws.exists(), "{branch}");
    }
    // An existing directory is left alone when the branch is refused.
    let keep = tmp.path().join("keep");
    write(&keep, "precious.txt", "x");
    assert!(
        create_workspace(&mirror, &keep, "main", &up.first)
            .await
            .is_err()
    );
    assert!(keep.join("precious.txt").exists());
}

#[tokio::test]
async fn commit_all_and_import_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let before = fingerprint(&up.path);
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let repo = url(&up.path);
    let mirror = cache.sync(&repo).await.unwrap();
    let base = cache.resolve(&mirror, &repo, None).await.unwrap().commit;
    let ws = tmp.path().join("ws");
    let branch = "errand/abc123-fix-it";
    create_workspace(&mirror, &ws, branch, &base).await.unwrap();

    let trailers = [("Errand-Task", "tsk_123"), ("Errand-Attempt", "att_456")];
    // Nothing changed: no commit.
    assert_eq!(commit_all(&ws, "Fix it", &trailers).await.unwrap(), None);
    assert_eq!(rev(&ws, "HEAD"), base);

    // Added, modified, deleted, and a file in a new directory.
    write(&ws, "src/lib.txt", "one\nTWO\nthree\nfour\n");
    write(&ws, "new/dir/added.txt", "added\n");
    std::fs::remove_file(ws.join("README.md")).unwrap();
    let commit = commit_all(&ws, "Fix it\n\nLonger body.\n\n", &trailers)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rev(&ws, "HEAD"), commit);
    assert_eq!(rev(&ws, &format!("refs/heads/{branch}")), commit);
    assert_eq!(rev(&ws, "HEAD^"), base);
    assert_eq!(
        git(&ws, &["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
    assert_eq!(
        git(&ws, &["log", "-1", "--format=%an <%ae>|%cn <%ce>"]).trim(),
        "Errand Agent <agent@errand.invalid>|Errand Agent <agent@errand.invalid>"
    );
    assert_eq!(
        git(&ws, &["log", "-1", "--format=%B"]),
        "Fix it\n\nLonger body.\n\nErrand-Task: tsk_123\nErrand-Attempt: att_456\n\n"
    );
    assert_eq!(
        git(
            &ws,
            &[
                "log",
                "-1",
                "--format=%(trailers:key=Errand-Task,valueonly)"
            ]
        )
        .trim(),
        "tsk_123"
    );
    assert_eq!(
        git(
            &ws,
            &[
                "log",
                "-1",
                "--format=%(trailers:key=Errand-Attempt,valueonly)"
            ]
        )
        .trim(),
        "att_456"
    );
    let mut files: Vec<String> = git(&ws, &["show", "--name-status", "--format=", "HEAD"])
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec!["A\tnew/dir/added.txt", "D\tREADME.md", "M\tsrc/lib.txt"]
    );
    // Committing again with nothing new is a no-op.
    assert_eq!(commit_all(&ws, "again", &trailers).await.unwrap(), None);

    // Import into the mirror.
    cache.import_branch(&mirror, &ws, branch).await.unwrap();
    assert_eq!(rev(&mirror, &format!("refs/heads/{branch}")), commit);
    // The diff is computable in the mirror.
    let (_, stats) = diff(&mirror, &base, &commit).await.unwrap();
    assert_eq!(stats.files_changed, 3);

    // A later commit on the same branch moves the mirror's branch forward.
    write(&ws, "more.txt", "more\n");
    let second = commit_all(&ws, "More", &trailers).await.unwrap().unwrap();
    cache.import_branch(&mirror, &ws, branch).await.unwrap();
    assert_eq!(rev(&mirror, &format!("refs/heads/{branch}")), second);

    // Only errand/ branches may be written.
    let mirror_refs = refs(&mirror);
    git(&ws, &["branch", "main"]);
    git(&ws, &["branch", "master"]);
    git(&ws, &["branch", "feature/x"]);
    for bad in ["main", "master", "feature/x", "trunk", "errand/../main"] {
        match cache.import_branch(&mirror, &ws, bad).await {
            Err(GitError::ForbiddenBranch(b)) => assert_eq!(b, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert_eq!(refs(&mirror), mirror_refs);
    // Importing a branch the workspace does not have fails without touching the mirror.
    assert!(matches!(
        cache.import_branch(&mirror, &ws, "errand/missing").await,
        Err(GitError::Command { .. })
    ));
    assert_eq!(refs(&mirror), mirror_refs);

    // Through all of this, the user's repository never changed.
    assert_eq!(before, fingerprint(&up.path));
    // A later sync keeps the imported branch.
    cache.sync(&repo).await.unwrap();
    assert_eq!(rev(&mirror, &format!("refs/heads/{branch}")), second);
}

#[tokio::test]
async fn commit_all_ignores_the_users_hooks_and_gitignore_rules_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&up.path)).await.unwrap();
    let ws = tmp.path().join("ws");
    create_workspace(&mirror, &ws, "errand/x", &up.second)
        .await
        .unwrap();
    // A hook that would refuse every commit.
    write(&ws, ".git/hooks/pre-commit", "#!/bin/sh\nexit 1\n");
    write(&ws, ".git/hooks/commit-msg", "#!/bin/sh\nexit 1\n");
    for h in ["pre-commit", "commit-msg"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            ws.join(".git/hooks").join(h),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    write(&ws, ".gitignore", "target/\n");
    write(&ws, "target/big.bin", "build output");
    write(&ws, "kept.txt", "kept\n");
    let c = commit_all(&ws, "With hooks", &[]).await.unwrap().unwrap();
    let mut files: Vec<String> = git(&ws, &["show", "--name-only", "--format=", &c])
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    assert_eq!(files, vec![".gitignore", "kept.txt"]);
    assert_eq!(git(&ws, &["log", "-1", "--format=%B"]), "With hooks\n\n");
}

// ---------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------

#[tokio::test]
async fn diff_detects_renames_deletions_and_binary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    let long: String = (1..=50)
        .map(|i| format!("line {i} of a long file\n"))
        .collect();
    write(&repo, "old_name.txt", &long);
    write(&repo, "gone.txt", "a\nb\nc\n");
    write(&repo, "image.bin", b"\x89PNG\x00\x01\x02\x03\x00binary");
    write(&repo, "edit.txt", "keep\nchange me\nkeep too\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "base"]);
    let base = rev(&repo, "HEAD");

    std::fs::create_dir_all(repo.join("dir")).unwrap();
    git(&repo, &["mv", "old_name.txt", "dir/new name.txt"]);
    git(&repo, &["rm", "--quiet", "gone.txt"]);
    write(&repo, "image.bin", b"\x89PNG\x00\xff\xfe\x00changed");
    write(
        &repo,
        "edit.txt",
        "keep\nchanged\nkeep too\nadded 1\nadded 2\n",
    );
    write(&repo, "naïve file.txt", "unicode name\n");
    git(&repo, &["add", "--all"]);
    git(&repo, &["commit", "--quiet", "-m", "head"]);
    let head = rev(&repo, "HEAD");
    let before = fingerprint(&repo);

    let (text, stats) = diff(&repo, &base, &head).await.unwrap();

    let by_path = |p: &str| {
        stats
            .files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("{p} not in {:#?}", stats.files))
    };
    let renamed = by_path("old_name.txt => dir/new name.txt");
    assert_eq!((renamed.insertions, renamed.deletions), (Some(0), Some(0)));
    let gone = by_path("gone.txt");
    assert_eq!((gone.insertions, gone.deletions), (Some(0), Some(3)));
    let bin = by_path("image.bin");
    assert_eq!((bin.insertions, bin.deletions), (None, None));
    let edit = by_path("edit.txt");
    assert_eq!((edit.insertions, edit.deletions), (Some(3), Some(1)));
    let uni = by_path("naïve file.txt");
    assert_eq!((uni.insertions, uni.deletions), (Some(1), Some(0)));

    assert_eq!(stats.files_changed, 5);
    assert_eq!(stats.files.len(), 5);
    assert_eq!(stats.insertions, 4);
    assert_eq!(stats.deletions, 4);
    assert_eq!(
        stats.insertions,
        stats.files.iter().filter_map(|f| f.insertions).sum::<u64>()
    );
    assert_eq!(
        stats.deletions,
        stats.files.iter().filter_map(|f| f.deletions).sum::<u64>()
    );

    assert!(
        text.contains("rename from old_name.txt\nrename to dir/new name.txt\n"),
        "{text}"
    );
    assert!(text.contains("similarity index 100%"), "{text}");
    assert!(
        text.contains("diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\n"),
        "{text}"
    );
    assert!(
        text.contains("Binary files a/image.bin and b/image.bin differ"),
        "{text}"
    );
    assert!(text.contains("-change me\n+changed\n"), "{text}");
    assert!(text.contains("+unicode name\n"), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in the diff");

    // Identical commits: an empty diff.
    let (text, stats) = diff(&repo, &head, &head).await.unwrap();
    assert_eq!(text, "");
    assert_eq!(stats.files_changed, 0);
    assert!(stats.files.is_empty());

    // Unknown revisions are errors.
    assert!(matches!(
        diff(&repo, &base, "no-such-rev").await,
        Err(GitError::Command { .. })
    ));
    assert_eq!(before, fingerprint(&repo));
}

/// The base checkout's index seeds the commit; a same-size edit made in the same second as the
/// checkout must still be seen (git's racy-clean check needs the index's own mtime).
#[tokio::test]
async fn commit_workspace_sees_same_size_edits_right_after_the_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let up = make_upstream(tmp.path());
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&up.path)).await.unwrap();
    for round in 0..2 {
        let base = tmp.path().join(format!("checkouts/base-{round}"));
        assert!(
            errand_git::prepare_base(&mirror, &up.second, &base)
                .await
                .unwrap()
        );
        // Same length as "two\n", written immediately.
        write(&base, "src/lib.txt", "one\nTWO\nthree\nfour\n");
        // The commit happens in a later second than the checkout and the edit.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let head = errand_git::commit_workspace(
            &mirror,
            &base,
            &tmp.path().join(format!("commit-{round}.git")),
            &up.second,
            "errand/abc-race",
            "edit",
            &[("Errand-Task", "t")],
            Some(&base.join(".git/index")),
        )
        .await
        .unwrap()
        .expect("the edit must be committed");
        let shown = git(&mirror, &["show", &format!("{head}:src/lib.txt")]);
        assert_eq!(shown, "one\nTWO\nthree\nfour\n");
    }
    // And an untouched workspace commits nothing.
    let base = tmp.path().join("checkouts/clean");
    errand_git::prepare_base(&mirror, &up.second, &base)
        .await
        .unwrap();
    let none = errand_git::commit_workspace(
        &mirror,
        &base,
        &tmp.path().join("commit-clean.git"),
        &up.second,
        "errand/abc-clean",
        "nothing",
        &[],
        Some(&base.join(".git/index")),
    )
    .await
    .unwrap();
    assert_eq!(none, None);
}

/// What a setup script leaves behind, as the scan sees it through a fresh git directory:
/// untracked files (a wholly untracked directory as one entry, a symlink as itself, never
/// followed), ignored ones, and changed tracked files; the commit leaves out the excluded ones.
#[tokio::test]
async fn scan_lists_setup_outputs_and_the_commit_can_leave_them_out() {
    use errand_git::scan::{exclude_pattern, scan_workspace, tree_entries};
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    write(&repo, "README.md", "# r\n");
    write(&repo, ".gitignore", "deps/\n*.log\n");
    write(&repo, "package-lock.json", "{\"v\": 1}\n");
    write(&repo, "scripts/setup.sh", "#!/bin/sh\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    let head = rev(&repo, "HEAD");
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&repo)).await.unwrap();
    let ws = tmp.path().join("checkouts/ws");
    errand_git::prepare_base(&mirror, &head, &ws).await.unwrap();

    // What "setup" did.
    write(&ws, "deps/a/b.txt", "dep\n");
    write(&ws, "gen.txt", "generated\n");
    write(&ws, "out.log", "log\n");
    write(&ws, "sub/new/x.txt", "x\n");
    write(&ws, "README.md", "# r changed\n");
    std::os::unix::fs::symlink("/etc", ws.join("link")).unwrap();
    // A hook planted in the workspace's own .git must never run.
    write(
        &ws,
        ".git/hooks/post-index-change",
        "#!/bin/sh\ntouch /tmp/never\n",
    );

    let scan = scan_workspace(
        &mirror,
        &ws,
        &tmp.path().join("scan.git"),
        &head,
        Some(&ws.join(".git/index")),
    )
    .await
    .unwrap();
    assert!(!tmp.path().join("scan.git").exists(), "scratch removed");
    let mut untracked = scan.untracked.clone();
    untracked.sort();
    assert_eq!(untracked, ["gen.txt", "link", "sub/"]);
    let mut ignored = scan.ignored.clone();
    ignored.sort();
    assert_eq!(ignored, ["deps/", "out.log"]);
    assert_eq!(scan.modified, ["README.md"]);
    assert_eq!(scan.unusable, 0);

    let entries = tree_entries(
        &mirror,
        &head,
        &[
            "./package-lock.json".into(),
            "missing.lock".into(),
            "scripts/setup.sh".into(),
            "../escape".into(),
            "/etc/passwd".into(),
        ],
    )
    .await
    .unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["package-lock.json", "scripts/setup.sh"]);
    assert_eq!(entries[0].oid, rev(&repo, "HEAD:package-lock.json"));
    assert_eq!(entries[1].mode, "100644");

    let exclude: Vec<String> = scan.untracked.iter().map(|p| exclude_pattern(p)).collect();
    let commit = errand_git::commit_workspace_excluding(
        &mirror,
        &ws,
        &tmp.path().join("commit.git"),
        &head,
        "errand/abc-setup",
        "work",
        &[],
        Some(&ws.join(".git/index")),
        &exclude,
    )
    .await
    .unwrap()
    .expect("the README change is committed");
    let files = git(
        &mirror,
        &["show", "--name-only", "--format=", commit.as_str()],
    );
    assert_eq!(files.trim(), "README.md", "setup outputs stay out: {files}");
}

/// A scrub step that leaves paths out: an added one is not committed, a changed one keeps the
/// base's version; what it rewrites is staged again.
#[tokio::test]
async fn the_scrub_step_can_leave_files_out_of_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    write(&repo, "README.md", "# r\n");
    write(&repo, "keep-tok-1234.txt", "base\n");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    let head = rev(&repo, "HEAD");
    let cache = MirrorCache::new(tmp.path().join("mirrors"));
    let mirror = cache.sync(&url(&repo)).await.unwrap();
    let ws = tmp.path().join("checkouts/ws");
    errand_git::prepare_base(&mirror, &head, &ws).await.unwrap();

    write(&ws, "notes.txt", "token tok-1234\n");
    write(&ws, "dir-tok-1234/a.txt", "a\n");
    write(&ws, "keep-tok-1234.txt", "changed\n");
    write(&ws, "README.md", "# r changed\n");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (root, got) = (ws.clone(), seen.clone());
    let scrub: errand_git::Scrub = Box::new(move |paths| {
        Box::pin(async move {
            *got.lock().unwrap() = paths.clone();
            std::fs::write(root.join("notes.txt"), "token [REDACTED]\n").unwrap();
            errand_git::ScrubOutcome {
                rewrote: true,
                leave_out: paths
                    .into_iter()
                    .filter(|p| p.to_string_lossy().contains("tok-1234"))
                    .collect(),
            }
        })
    });
    let commit = errand_git::commit_workspace_with(
        &mirror,
        &ws,
        &tmp.path().join("commit.git"),
        &head,
        "errand/abc-scrub",
        "work",
        &[],
        Some(&ws.join(".git/index")),
        Some(scrub),
        &[],
    )
    .await
    .unwrap()
    .expect("a commit");
    let mut listed: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "README.md",
            "dir-tok-1234/a.txt",
            "keep-tok-1234.txt",
            "notes.txt"
        ]
    );
    let files = git(&mirror, &["ls-tree", "-r", "--name-only", commit.as_str()]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "keep-tok-1234.txt", "notes.txt"]
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{commit}:keep-tok-1234.txt")]),
        "base\n",
        "a changed file left out keeps the base's version"
    );
    assert_eq!(
        git(&mirror, &["show", &format!("{commit}:notes.txt")]),
        "token [REDACTED]\n"
    );
}
