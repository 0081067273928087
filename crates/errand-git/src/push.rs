//! Pushing an attempt's branch from the mirror to a remote.
//!
//! Rules enforced here, before any git command runs:
//! - only a branch that passes [`check_agent_branch`] (`errand/…`) is pushed, and only to the
//!   branch of the same name: the refspec is always `refs/heads/B:refs/heads/B`, built here and
//!   never taken from the caller;
//! - the remote URL carries no password and is not an option or an exotic transport.
//!
//! Then `git ls-remote` tells the remote's default branch (refused if it is the branch being
//! pushed) and the branch's current value there, which a force-push uses as its lease
//! (`--force-with-lease=refs/heads/B:<value seen>`): a force-push rewrites only the attempt's
//! own branch, and only from the state just observed.
//!
//! Credentials go through `GIT_ASKPASS`: a small script in a private (0700) temporary
//! directory (under `TMPDIR`, which must allow executing files) that prints the user name and
//! token from two environment variables set only on the git process (and inherited by its
//! helpers). The token is never in the URL, the
//! arguments, the output kept, or an error; credential helpers are disabled so that git does
//! not store it, and git's trace variables are removed from the child's environment.

use crate::secret::Credentials;
use crate::{GitError, Result, base_command, check_agent_branch, first_line};
use std::path::Path;
use tokio::process::Command;

/// What a push did to the remote branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    /// The branch did not exist on the remote.
    Created,
    /// The remote branch moved forward to the commit.
    Updated,
    /// The remote branch was rewritten (force-push with a lease).
    ForceUpdated,
    /// The remote branch already was at the commit; nothing was sent.
    UpToDate,
}

impl PushStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Created => "created",
            PushStatus::Updated => "updated",
            PushStatus::ForceUpdated => "force_updated",
            PushStatus::UpToDate => "up_to_date",
        }
    }
}

/// The result of [`push_branch`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushOutcome {
    /// The branch pushed, `errand/…`.
    pub branch: String,
    /// The commit the remote branch now points at.
    pub commit: String,
    /// What the remote branch pointed at before, if it existed.
    pub previous: Option<String>,
    pub status: PushStatus,
    /// The remote's default branch (its `HEAD`), when it advertises one: the natural base of
    /// a pull request.
    pub default_branch: Option<String>,
}

/// Refuses what must never be pushed: anything [`check_agent_branch`] refuses (every branch
/// outside `errand/`, `..`, refspec syntax such as `:` or a leading `+`, options such as a
/// leading `-`), and full ref names.
pub fn check_push_branch(branch: &str) -> Result<()> {
    check_agent_branch(branch)
}

/// The only refspec a push uses: `refs/heads/B:refs/heads/B` for a branch that passes
/// [`check_push_branch`], without a `+` (forcing goes through a lease instead).
pub fn push_refspec(branch: &str) -> Result<String> {
    check_push_branch(branch)?;
    Ok(format!("refs/heads/{branch}:refs/heads/{branch}"))
}

/// Transports a push may use (`GIT_ALLOW_PROTOCOL`): no `ext::`, `fd::` or remote helpers.
const ALLOWED_PROTOCOLS: &str = "https:http:ssh:git:file";

/// Refuses remote URLs that carry a password, look like an option, or name a transport other
/// than https, http, ssh, git or file. The error never repeats the URL's userinfo.
pub fn check_remote_url(url: &str) -> Result<()> {
    let refuse = |reason: &str| Err(GitError::BadRemote(reason.to_string()));
    if url.is_empty() || url.trim() != url || url.chars().any(|c| c.is_control()) {
        return refuse("the remote URL is empty or has spaces or control characters around it");
    }
    if url.starts_with('-') {
        return refuse("the remote URL starts with '-'");
    }
    if url.contains("::") {
        return refuse("the remote URL names a remote helper (<transport>::<address>)");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !["https", "http", "ssh", "git", "file"].contains(&scheme.as_str())
            && !scheme.starts_with("git+ssh")
            && scheme != "ssh+git"
        {
            return refuse("the remote URL's scheme is not https, http, ssh, git or file");
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return refuse(
                "the remote URL contains a password; give the token through the forge's token_env instead",
            );
        }
    }
    Ok(())
}

/// The remote URL as shown in messages: without any userinfo.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return format!("{scheme}://{host}{tail}");
    }
    url.to_string()
}

/// The `GIT_ASKPASS` helper: the script in a private temporary directory, removed on drop.
struct Askpass {
    _dir: tempfile::TempDir,
    script: std::path::PathBuf,
}

const USER_VAR: &str = "ERRAND_ASKPASS_USERNAME";
const TOKEN_VAR: &str = "ERRAND_ASKPASS_TOKEN";

impl Askpass {
    fn new() -> Result<Askpass> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = tempfile::Builder::new()
            .prefix("errand-askpass-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let script = dir.path().join("askpass");
        // git asks "Username for '…': " then "Password for '…': ". The script holds no secret:
        // it prints variables that only the git process it was given to has.
        let text = format!(
            "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' \"${USER_VAR}\" ;;\n  *) printf '%s\\n' \"${TOKEN_VAR}\" ;;\nesac\n"
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&script)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        Ok(Askpass { _dir: dir, script })
    }
}

/// Variables that would make git (or curl under it) log requests or credentials.
const TRACE_VARS: &[&str] = &[
    "GIT_TRACE",
    "GIT_TRACE_CURL",
    "GIT_TRACE_CURL_NO_DATA",
    "GIT_TRACE_PACKET",
    "GIT_TRACE_PACK_ACCESS",
    "GIT_TRACE_PERFORMANCE",
    "GIT_TRACE_SETUP",
    "GIT_TRACE_SHALLOW",
    "GIT_TRACE2",
    "GIT_TRACE2_EVENT",
    "GIT_TRACE2_PERF",
    "GIT_CURL_VERBOSE",
];

/// A git command that talks to the remote: the hardened base environment, no credential
/// helpers (git would store the token in them), no prompts but our askpass, no trace output,
/// only the allowed transports.
fn remote_command(mirror: &Path, credentials: Option<(&Credentials, &Askpass)>) -> Command {
    let mut c = base_command(Some(mirror));
    for v in TRACE_VARS {
        c.env_remove(v);
    }
    c.env("GIT_TRACE_REDACT", "1")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env_remove("SSH_ASKPASS")
        .env_remove(USER_VAR)
        .env_remove(TOKEN_VAR);
    c.args([
        "-c",
        "credential.helper=",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "push.gpgSign=false",
    ]);
    match credentials {
        Some((cr, askpass)) => {
            c.env("GIT_ASKPASS", &askpass.script)
                .env(USER_VAR, &cr.username)
                .env(TOKEN_VAR, cr.token.expose());
        }
        None => {
            // An empty core.askPass stops git from falling back to SSH_ASKPASS or a desktop
            // prompt; with GIT_TERMINAL_PROMPT=0 an authentication request then fails at once.
            c.env_remove("GIT_ASKPASS").args(["-c", "core.askPass="]);
        }
    }
    c
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run_remote(
    mirror: &Path,
    credentials: Option<(&Credentials, &Askpass)>,
    args: &[&str],
) -> Result<Output> {
    let out = remote_command(mirror, credentials)
        .args(args)
        .output()
        .await?;
    let scrub = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        match credentials {
            Some((c, _)) => c.scrub(&s),
            None => s,
        }
    };
    Ok(Output {
        ok: out.status.success(),
        stdout: scrub(&out.stdout),
        stderr: scrub(&out.stderr).trim().to_string(),
    })
}

/// What `git ls-remote --symref URL HEAD refs/heads/B` says.
#[derive(Debug, Default, PartialEq, Eq)]
struct RemoteState {
    default_branch: Option<String>,
    current: Option<String>,
}

fn parse_ls_remote(out: &str, branch: &str) -> RemoteState {
    let full = format!("refs/heads/{branch}");
    let mut st = RemoteState::default();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("ref: ") {
            if let Some((target, name)) = rest.split_once('\t')
                && name == "HEAD"
            {
                st.default_branch = target.strip_prefix("refs/heads/").map(str::to_string);
            }
        } else if let Some((oid, name)) = line.split_once('\t')
            && name == full
        {
            st.current = Some(oid.to_string());
        }
    }
    st
}

/// Turns a failed remote command into an error, classifying what git said.
fn remote_error(
    what: &str,
    remote: &str,
    branch: &str,
    credentials: Option<&Credentials>,
    out: &Output,
) -> GitError {
    let all = format!("{}\n{}", out.stderr, out.stdout);
    let lower = all.to_ascii_lowercase();
    if lower.contains("authentication failed")
        || lower.contains("could not read username")
        || lower.contains("could not read password")
        || lower.contains("terminal prompts disabled")
        || lower.contains("invalid username or password")
        || lower.contains("http basic: access denied")
        || lower.contains("the requested url returned error: 401")
        || lower.contains("the requested url returned error: 403")
        || lower.contains("permission denied (publickey")
    {
        let hint = match credentials {
            Some(c) => format!(
                "the remote refused {} (user '{}'); check that it is valid and may push to this repository",
                c.describe_source(),
                c.username
            ),
            None => "the remote needs credentials; set forge.token_env (HTTPS) or use an ssh URL with a key the worker has".to_string(),
        };
        return GitError::AuthFailed {
            remote: remote.to_string(),
            hint,
        };
    }
    for line in out.stdout.lines() {
        // Porcelain: "!\trefs/heads/B:refs/heads/B\t[rejected] (reason)".
        if let Some(rest) = line.strip_prefix("!\t") {
            let summary = rest.split('\t').nth(1).unwrap_or(rest).to_string();
            let reason = if summary.contains("stale info") {
                format!(
                    "{summary}: the remote branch moved while pushing; run the push again to use its new value as the lease"
                )
            } else if summary.contains("non-fast-forward") || summary.contains("fetch first") {
                format!(
                    "{summary}: the remote branch has commits the attempt's branch does not; push with force to replace it"
                )
            } else {
                summary
            };
            return GitError::PushRejected {
                branch: branch.to_string(),
                remote: remote.to_string(),
                reason,
            };
        }
    }
    if lower.contains("could not resolve host")
        || lower.contains("failed to connect")
        || lower.contains("connection refused")
        || lower.contains("unable to access")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("repository not found")
        || lower.contains("not found")
    {
        return GitError::Unreachable {
            repo: remote.to_string(),
            message: first_line(&out.stderr),
        };
    }
    GitError::Command {
        args: what.to_string(),
        stderr: out.stderr.clone(),
    }
}

/// Pushes `refs/heads/<branch>` of the mirror to the branch of the same name at `remote_url`.
///
/// `branch` must pass [`check_push_branch`] and must not be the remote's default branch; both
/// are checked before anything is sent. Without `force`, the push only creates the branch or
/// moves it forward (a remote branch with other commits is an error,
/// [`GitError::PushRejected`]). With `force`, the remote branch is replaced, with a lease on
/// the value `ls-remote` just saw. `credentials` (HTTPS user name and token) are given to git
/// through `GIT_ASKPASS` only; without them no prompt is possible and authentication fails at
/// once. Every error text has the token scrubbed.
pub async fn push_branch(
    mirror: &Path,
    remote_url: &str,
    branch: &str,
    credentials: Option<&Credentials>,
    force: bool,
) -> Result<PushOutcome> {
    let refspec = push_refspec(branch)?;
    check_remote_url(remote_url)?;
    let shown = redact_url(remote_url);
    let local_ref = format!("refs/heads/{branch}^{{commit}}");
    let local = crate::run(
        Some(mirror),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &local_ref,
        ],
    )
    .await?;
    if !local.ok {
        return Err(GitError::UnknownRef {
            reference: branch.to_string(),
            repo: mirror.display().to_string(),
        });
    }
    let commit = local.stdout.trim().to_string();
    // The helper lives (and its directory exists) until this function returns.
    let askpass = match credentials {
        Some(c) => Some((c, Askpass::new()?)),
        None => None,
    };
    let auth = askpass.as_ref().map(|(c, a)| (*c, a));
    let full = format!("refs/heads/{branch}");
    let ls = run_remote(
        mirror,
        auth,
        &["ls-remote", "--symref", "--", remote_url, "HEAD", &full],
    )
    .await?;
    if !ls.ok {
        return Err(remote_error("ls-remote", &shown, branch, credentials, &ls));
    }
    let state = parse_ls_remote(&ls.stdout, branch);
    if state.default_branch.as_deref() == Some(branch) {
        return Err(GitError::PushRefused {
            branch: branch.to_string(),
            reason: format!("it is the default branch of {shown}"),
        });
    }
    if state.current.as_deref() == Some(commit.as_str()) {
        return Ok(PushOutcome {
            branch: branch.to_string(),
            commit: commit.clone(),
            previous: Some(commit),
            status: PushStatus::UpToDate,
            default_branch: state.default_branch,
        });
    }
    let lease = format!(
        "--force-with-lease=refs/heads/{branch}:{}",
        state.current.as_deref().unwrap_or("")
    );
    let mut args = vec![
        "push",
        "--porcelain",
        "--no-verify",
        "--no-follow-tags",
        "--no-recurse-submodules",
        "--no-signed",
    ];
    if force {
        args.push(&lease);
    }
    args.extend(["--", remote_url, &refspec]);
    let out = run_remote(mirror, auth, &args).await?;
    if !out.ok {
        return Err(remote_error("push", &shown, branch, credentials, &out));
    }
    // Porcelain: "<flag>\t<from>:<to>\t<summary>"; '*' new, ' ' fast-forward, '+' forced,
    // '=' up to date.
    let flag = out
        .stdout
        .lines()
        .find(|l| l.split('\t').nth(1) == Some(refspec.as_str()))
        .and_then(|l| l.chars().next());
    let status = match flag {
        Some('*') => PushStatus::Created,
        Some('+') => PushStatus::ForceUpdated,
        Some('=') => PushStatus::UpToDate,
        Some(' ') => PushStatus::Updated,
        _ if state.current.is_none() => PushStatus::Created,
        _ => PushStatus::Updated,
    };
    Ok(PushOutcome {
        branch: branch.to_string(),
        commit,
        previous: state.current,
        status,
        default_branch: state.default_branch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refspec_is_same_name_and_unforced() {
        assert_eq!(
            push_refspec("errand/abc-fix").ok().as_deref(),
            Some("refs/heads/errand/abc-fix:refs/heads/errand/abc-fix")
        );
        for bad in [
            "main",
            "feature/x",
            "errand/x:main",
            "errand/x:refs/heads/main",
            "+errand/x",
            "-errand/x",
            "errand/../main",
            "refs/heads/errand/x",
            "errand/x\nmain",
            "errand/x main",
        ] {
            assert!(push_refspec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_urls() {
        for ok in [
            "https://example.com/a/b.git",
            "https://bot@example.com/a/b.git",
            "git@example.com:a/b.git",
            "ssh://git@example.com:2222/a/b.git",
            "/srv/git/b.git",
            "file:///srv/git/b.git",
        ] {
            assert!(check_remote_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://bot:hunter2@example.com/a/b.git",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/x",
            "fd::3",
            "ftp://example.com/a.git",
            " https://example.com/a.git",
            "",
        ] {
            let e = check_remote_url(bad).err().map(|e| e.to_string());
            assert!(e.is_some(), "{bad}");
            assert!(!e.unwrap_or_default().contains("hunter2"));
        }
        assert_eq!(
            redact_url("https://bot@example.com/a/b.git"),
            "https://example.com/a/b.git"
        );
        assert_eq!(
            redact_url("git@example.com:a/b.git"),
            "git@example.com:a/b.git"
        );
    }

    #[test]
    fn ls_remote_output() {
        let out = "ref: refs/heads/main\tHEAD\n1111\tHEAD\n2222\trefs/heads/errand/x\n3333\trefs/remotes/x/refs/heads/errand/x\n";
        assert_eq!(
            parse_ls_remote(out, "errand/x"),
            RemoteState {
                default_branch: Some("main".into()),
                current: Some("2222".into()),
            }
        );
        assert_eq!(parse_ls_remote("", "errand/x"), RemoteState::default());
    }
}
