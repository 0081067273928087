//! Pushing attempt branches: to a real bare repository on disk, and to a real
//! `git http-backend` over loopback behind HTTP basic authentication.

use errand_fakes::git_http::GitHttpServer;
use errand_git::push::{check_push_branch, push_refspec};
use errand_git::{Credentials, GitError, MirrorCache, PushStatus, Secret, push_branch};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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
            "init.defaultBranch=main",
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

fn rev(dir: &Path, spec: &str) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "--verify", "--quiet", spec])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every ref of a repository with its value, sorted.
fn refs(dir: &Path) -> Vec<String> {
    let mut r: Vec<String> = git(dir, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .map(str::to_string)
        .collect();
    r.sort();
    r
}

/// A remote (`origin.git`, bare, default branch `main`), a working clone to make commits in,
/// and Errand's mirror of the remote.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    origin: PathBuf,
    work: PathBuf,
    mirror: PathBuf,
}

const BRANCH: &str = "errand/abc123-fix-cart";

impl Setup {
    async fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let origin = root.join("remotes/origin.git");
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "--quiet", "--bare", "-b", "main"]);
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "-b", "main"]);
        std::fs::write(work.join("cart.txt"), "items\n").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "--quiet", "-m", "initial"]);
        git(
            &work,
            &["push", "--quiet", origin.to_str().unwrap(), "main"],
        );
        let cache = MirrorCache::new(root.join("mirrors"));
        let mirror = cache.sync(origin.to_str().unwrap()).await.unwrap();
        Setup {
            _tmp: tmp,
            root,
            origin,
            work,
            mirror,
        }
    }

    fn origin_url(&self) -> String {
        self.origin.to_string_lossy().into_owned()
    }

    /// Commits on `branch` in the working clone (branching from `from` when new) and copies
    /// the branch into the mirror, as the worker does after an attempt. Returns the commit.
    fn commit_on(&self, branch: &str, from: &str, file: &str, text: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch, from]);
        std::fs::write(self.work.join(file), text).unwrap();
        git(&self.work, &["add", "."]);
        git(
            &self.work,
            &["commit", "--quiet", "-m", &format!("edit {file}")],
        );
        self.import(branch)
    }

    fn import(&self, branch: &str) -> String {
        let spec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        git(
            &self.mirror,
            &["fetch", "--quiet", self.work.to_str().unwrap(), &spec],
        );
        rev(&self.mirror, &format!("refs/heads/{branch}")).unwrap()
    }
}

// ---------------------------------------------------------------------------
// A bare repository on disk
// ---------------------------------------------------------------------------

#[tokio::test]
async fn push_creates_updates_then_is_up_to_date() {
    let s = Setup::new().await;
    let main_before = rev(&s.origin, "refs/heads/main");
    let c1 = s.commit_on(BRANCH, "main", "cart.txt", "items\nempty cart\n");

    let out = push_branch(&s.mirror, &s.origin_url(), BRANCH, None, false)
        .await
        .unwrap();
    assert_eq!(out.status, PushStatus::Created);
    assert_eq!(out.commit, c1);
    assert_eq!(out.previous, None);
    assert_eq!(out.branch, BRANCH);
    assert_eq!(out.default_branch.as_deref(), Some("main"));
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(c1.clone())
    );

    let c2 = s.commit_on(BRANCH, BRANCH, "test.txt", "covers the empty cart\n");
    let out = push_branch(&s.mirror, &s.origin_url(), BRANCH, None, false)
        .await
        .unwrap();
    assert_eq!(out.status, PushStatus::Updated);
    assert_eq!(out.previous, Some(c1));
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(c2.clone())
    );

    let out = push_branch(&s.mirror, &s.origin_url(), BRANCH, None, false)
        .await
        .unwrap();
    assert_eq!(out.status, PushStatus::UpToDate);
    assert_eq!(out.commit, c2);
    // Nothing else on the remote moved.
    assert_eq!(rev(&s.origin, "refs/heads/main"), main_before);
}

#[tokio::test]
async fn refuses_every_branch_outside_errand_before_git_runs() {
    let s = Setup::new().await;
    s.commit_on(BRANCH, "main", "cart.txt", "changed\n");
    // The mirror holds these too, so only the rule can stop them.
    let head = format!("refs/heads/{BRANCH}");
    git(&s.mirror, &["update-ref", "refs/heads/main", &head]);
    git(&s.mirror, &["update-ref", "refs/heads/feature/x", &head]);
    let before = refs(&s.origin);
    // An unreachable remote: if git ran, the error would be about the remote instead.
    let nowhere = s.root.join("no-such-remote.git");
    for target in [s.origin_url(), nowhere.to_string_lossy().into_owned()] {
        for bad in [
            "main",
            "master",
            "feature/x",
            "errand/x:main",
            "errand/x:refs/heads/main",
            "errand/abc:errand/other",
            "errand/../main",
            "errand/x/../../main",
            "-errand/x",
            "--force",
            "+errand/x",
            "+refs/heads/errand/x:refs/heads/main",
            "refs/heads/errand/x",
            "errand/",
            "errand/x ",
            "errand/x\tmain",
            "errand/@{-1}",
            "errand/x~1",
            "errand/x^",
            "errand/*",
            "errand//x",
            "errand/.x",
            "errand/x.lock",
        ] {
            let err = push_branch(&s.mirror, &target, bad, None, true)
                .await
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was pushed"));
            assert!(
                matches!(err, GitError::ForbiddenBranch(_)),
                "{bad:?}: {err}"
            );
            assert!(check_push_branch(bad).is_err(), "{bad:?}");
            assert!(push_refspec(bad).is_err(), "{bad:?}");
        }
    }
    assert_eq!(refs(&s.origin), before, "the remote changed");
}

#[tokio::test]
async fn refuses_the_remotes_default_branch() {
    let s = Setup::new().await;
    // A remote whose default branch is itself an errand/ branch.
    let odd = s.root.join("remotes/odd.git");
    std::fs::create_dir_all(&odd).unwrap();
    git(&odd, &["init", "--quiet", "--bare", "-b", "main"]);
    git(
        &s.work,
        &[
            "push",
            "--quiet",
            odd.to_str().unwrap(),
            "main:refs/heads/errand/trunk",
        ],
    );
    git(&odd, &["symbolic-ref", "HEAD", "refs/heads/errand/trunk"]);
    let before = refs(&odd);
    s.commit_on("errand/trunk", "main", "cart.txt", "rewritten\n");

    for force in [false, true] {
        let err = push_branch(
            &s.mirror,
            odd.to_str().unwrap(),
            "errand/trunk",
            None,
            force,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("pushed to the default branch (force {force})"));
        match &err {
            GitError::PushRefused { branch, reason } => {
                assert_eq!(branch, "errand/trunk");
                assert!(reason.contains("default branch"), "{reason}");
            }
            e => panic!("expected PushRefused, got {e}"),
        }
    }
    assert_eq!(refs(&odd), before);
}

#[tokio::test]
async fn force_push_rewrites_only_the_attempts_branch() {
    let s = Setup::new().await;
    let other = "errand/zzz999-other";
    let theirs = s.commit_on(other, "main", "other.txt", "another attempt\n");
    push_branch(&s.mirror, &s.origin_url(), other, None, false)
        .await
        .unwrap();

    let first = s.commit_on(BRANCH, "main", "cart.txt", "first try\n");
    push_branch(&s.mirror, &s.origin_url(), BRANCH, None, false)
        .await
        .unwrap();

    // The attempt's branch is rewritten (a new run from the base): not a fast-forward.
    let rewritten = s.commit_on(BRANCH, "main", "cart.txt", "second try\n");
    let err = push_branch(&s.mirror, &s.origin_url(), BRANCH, None, false)
        .await
        .err()
        .unwrap_or_else(|| panic!("a non-fast-forward push went through without force"));
    match &err {
        GitError::PushRejected { branch, reason, .. } => {
            assert_eq!(branch, BRANCH);
            assert!(reason.contains("force"), "{reason}");
        }
        e => panic!("expected PushRejected, got {e}"),
    }
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(first.clone())
    );

    let main_before = rev(&s.origin, "refs/heads/main");
    let out = push_branch(&s.mirror, &s.origin_url(), BRANCH, None, true)
        .await
        .unwrap();
    assert_eq!(out.status, PushStatus::ForceUpdated);
    assert_eq!(out.previous, Some(first));
    assert_eq!(out.commit, rewritten);
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(rewritten)
    );
    assert_eq!(rev(&s.origin, "refs/heads/main"), main_before);
    assert_eq!(rev(&s.origin, &format!("refs/heads/{other}")), Some(theirs));
}

#[tokio::test]
async fn a_branch_missing_from_the_mirror_is_an_error() {
    let s = Setup::new().await;
    let err = push_branch(&s.mirror, &s.origin_url(), "errand/nope", None, false)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, GitError::UnknownRef { .. }), "{err}");
}

#[tokio::test]
async fn refuses_remote_urls_with_credentials_or_options() {
    let s = Setup::new().await;
    s.commit_on(BRANCH, "main", "cart.txt", "x\n");
    for url in [
        "https://bot:ghp_inline_secret@example.com/acme/shop.git",
        "--upload-pack=touch /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned",
    ] {
        let err = push_branch(&s.mirror, url, BRANCH, None, false)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"));
        assert!(matches!(err, GitError::BadRemote(_)), "{url}: {err}");
        assert!(!err.to_string().contains("ghp_inline_secret"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// git http-backend over loopback, HTTP basic auth
// ---------------------------------------------------------------------------

const TOKEN: &str = "ghs_Errand7estT0ken_abcdef0123456789";

fn creds(token: &str) -> Credentials {
    Credentials {
        username: "x-access-token".to_string(),
        token: Secret::new(token),
        token_env: Some("ERRAND_TEST_PUSH_TOKEN".to_string()),
    }
}

#[tokio::test]
async fn pushes_over_http_with_basic_auth_through_askpass() {
    let s = Setup::new().await;
    let server = GitHttpServer::start(&s.root.join("remotes"), Some(("x-access-token", TOKEN)));
    let url = server.url("origin.git");
    let c1 = s.commit_on(BRANCH, "main", "cart.txt", "over http\n");

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        push_branch(&s.mirror, &url, BRANCH, Some(&creds(TOKEN)), false),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}\nbackend: {}", server.backend_stderr()));
    assert_eq!(out.status, PushStatus::Created);
    assert_eq!(out.default_branch.as_deref(), Some("main"));
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(c1.clone())
    );

    let reqs = server.requests();
    // git asked without credentials first, got the challenge, and came back with them.
    assert!(
        reqs.iter().any(|r| r.status == 401 && r.user.is_none()),
        "{reqs:#?}"
    );
    let pushes: Vec<_> = reqs
        .iter()
        .filter(|r| r.uri.contains("git-receive-pack") && r.method == "POST")
        .collect();
    assert!(!pushes.is_empty(), "{reqs:#?}");
    assert!(
        pushes
            .iter()
            .all(|r| r.user.as_deref() == Some("x-access-token") && r.status == 200),
        "{reqs:#?}"
    );
    for r in &reqs {
        assert!(!r.uri.contains(TOKEN), "token in a request URI: {}", r.uri);
        assert!(
            !r.uri.contains('@'),
            "credentials in a request URI: {}",
            r.uri
        );
        if let Some(s) = &r.auth_scheme {
            assert_eq!(s, "Basic");
        }
    }
    // The git processes alive during the requests (our `git push` among them) had no token in
    // their arguments.
    let seen: Vec<&String> = reqs.iter().flat_map(|r| &r.git_processes).collect();
    assert!(
        seen.iter()
            .any(|p| p.contains(" push ") && p.contains(&url)),
        "the push process was not seen: {seen:#?}"
    );
    for p in &seen {
        assert!(!p.contains(TOKEN), "token in a command line: {p}");
    }

    // A second push of a new commit updates the branch; up to date after that.
    let c2 = s.commit_on(BRANCH, BRANCH, "more.txt", "more\n");
    let out = push_branch(&s.mirror, &url, BRANCH, Some(&creds(TOKEN)), false)
        .await
        .unwrap();
    assert_eq!((out.status, out.previous), (PushStatus::Updated, Some(c1)));
    assert_eq!(rev(&s.origin, &format!("refs/heads/{BRANCH}")), Some(c2));
}

#[tokio::test]
async fn a_wrong_token_fails_clearly_without_showing_it() {
    let s = Setup::new().await;
    let server = GitHttpServer::start(&s.root.join("remotes"), Some(("x-access-token", TOKEN)));
    let url = server.url("origin.git");
    s.commit_on(BRANCH, "main", "cart.txt", "nope\n");
    let wrong = "ghs_Wr0ngTokenThatMustNeverBeShown_42";

    let err = tokio::time::timeout(
        Duration::from_secs(60),
        push_branch(&s.mirror, &url, BRANCH, Some(&creds(wrong)), true),
    )
    .await
    .unwrap()
    .err()
    .unwrap_or_else(|| panic!("a wrong token pushed"));
    let msg = err.to_string();
    assert!(matches!(err, GitError::AuthFailed { .. }), "{msg}");
    assert!(msg.contains("ERRAND_TEST_PUSH_TOKEN"), "{msg}");
    assert!(msg.contains("x-access-token"), "{msg}");
    assert!(!msg.contains(wrong), "{msg}");
    assert!(!format!("{err:?}").contains(wrong));
    assert_eq!(rev(&s.origin, &format!("refs/heads/{BRANCH}")), None);
    for r in server.requests() {
        assert!(!r.uri.contains(wrong), "{}", r.uri);
        assert!(r.user.is_none(), "{r:?}");
    }
}

#[tokio::test]
async fn no_credentials_fails_at_once_instead_of_prompting() {
    let s = Setup::new().await;
    let server = GitHttpServer::start(&s.root.join("remotes"), Some(("x-access-token", TOKEN)));
    s.commit_on(BRANCH, "main", "cart.txt", "anon\n");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        push_branch(&s.mirror, &server.url("origin.git"), BRANCH, None, false),
    )
    .await
    .unwrap_or_else(|_| panic!("the push waited for a prompt"))
    .err()
    .unwrap();
    assert!(matches!(err, GitError::AuthFailed { .. }), "{err}");
    assert!(err.to_string().contains("token_env"), "{err}");
}

#[tokio::test]
async fn force_push_over_http_uses_a_lease() {
    let s = Setup::new().await;
    let server = GitHttpServer::start(&s.root.join("remotes"), Some(("x-access-token", TOKEN)));
    let url = server.url("origin.git");
    let first = s.commit_on(BRANCH, "main", "cart.txt", "one\n");
    push_branch(&s.mirror, &url, BRANCH, Some(&creds(TOKEN)), false)
        .await
        .unwrap();
    let second = s.commit_on(BRANCH, "main", "cart.txt", "two\n");
    let out = push_branch(&s.mirror, &url, BRANCH, Some(&creds(TOKEN)), true)
        .await
        .unwrap();
    assert_eq!(out.status, PushStatus::ForceUpdated);
    assert_eq!(out.previous, Some(first));
    assert_eq!(
        rev(&s.origin, &format!("refs/heads/{BRANCH}")),
        Some(second)
    );
}
