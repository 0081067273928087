//! Pull requests through the REST APIs of GitHub, GitLab and Gitea.
//!
//! [`ForgeClient::create_or_update_pr`] opens a pull request (a merge request on GitLab) from
//! an `errand/…` branch, or, when the forge says one is already open for that branch, finds it
//! and updates its title and body, so that a follow-up on the same branch updates the same
//! pull request:
//!
//! | forge | create | already open | find | update |
//! | --- | --- | --- | --- | --- |
//! | GitHub | `POST /repos/{o}/{r}/pulls` | 422 "A pull request already exists" | `GET /repos/{o}/{r}/pulls?head={o}:{branch}&state=open` | `PATCH /repos/{o}/{r}/pulls/{number}` |
//! | GitLab | `POST /projects/{path}/merge_requests` | 409 "Another open merge request already exists" | `GET /projects/{path}/merge_requests?source_branch={branch}&state=opened` | `PUT /projects/{path}/merge_requests/{iid}` |
//! | Gitea | `POST /repos/{o}/{r}/pulls` | 409 (or 422 "already exists") | `GET /repos/{o}/{r}/pulls?state=open&limit=50&page={n}` | `PATCH /repos/{o}/{r}/pulls/{index}` |
//!
//! [`ForgeClient::close_pr`] closes a pull request Errand opened, after checking that it is
//! still open and comes from the expected `errand/…` branch, then leaves a comment on it:
//!
//! | forge | read | close | comment |
//! | --- | --- | --- | --- |
//! | GitHub | `GET /repos/{o}/{r}/pulls/{number}` | `PATCH …/pulls/{number}` `{"state":"closed"}` → 200 | `POST /repos/{o}/{r}/issues/{number}/comments` `{"body"}` → 201 |
//! | GitLab | `GET /projects/{path}/merge_requests/{iid}` | `PUT …/merge_requests/{iid}` `{"state_event":"close"}` → 200 | `POST …/merge_requests/{iid}/notes` `{"body"}` → 201 |
//! | Gitea | `GET /repos/{o}/{r}/pulls/{index}` | `PATCH …/pulls/{index}` `{"state":"closed"}` → 201 | `POST /repos/{o}/{r}/issues/{index}/comments` `{"body"}` → 201 |
//!
//! Drafts: GitHub's `draft` field; GitLab's `Draft: ` title prefix; Gitea's `WIP: ` title
//! prefix. An update never changes whether the pull request is a draft (GitHub's REST API
//! cannot, and a person may have marked it ready).
//!
//! Errors are [`ForgeError`]s: a [`ForgeErrorKind`], the HTTP status, whether trying again can
//! help ([`ForgeError::retryable`]) and how long the forge asked to wait
//! ([`ForgeError::retry_after`]). No message ever contains the token.

mod body;
mod gitea;
mod github;
mod gitlab;
mod remote;

pub use body::{
    Align, CHECK_COLUMNS, PrBody, check_cells, checks_table, format_duration, pr_title,
};
pub use errand_core::{ForgeConfig, ForgeKind};
pub use remote::{RemoteRepo, RepoId, parse_remote_url, repo_id};

use crate::secret::{Credentials, Secret};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Installs the TLS crypto provider (ring) once per process; reqwest is built without a
/// default one. The same call as `errand_model::install_tls`, repeated here so that this crate
/// does not depend on the model crate.
pub fn install_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What to open (or update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrRequest {
    /// The title without any draft marker (see [`pr_title`]).
    pub title: String,
    /// Markdown (see [`PrBody`]).
    pub body: String,
    /// The branch with the changes: an `errand/…` branch already pushed to the same repository.
    pub head: String,
    /// The branch to merge into (the remote's default branch, or the task's base).
    pub base: String,
    /// Open as a draft (ignored when the pull request already exists).
    pub draft: bool,
}

/// Whether [`ForgeClient::create_or_update_pr`] opened a pull request or updated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    Created,
    Updated,
}

/// A pull request (merge request) as the forge returned it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PullRequest {
    /// GitHub and Gitea `number`, GitLab `iid`: the number people see (`#12`, `!12`).
    pub number: u64,
    /// The page to open in a browser.
    pub url: String,
    pub title: String,
    pub head: String,
    pub base: String,
    pub draft: bool,
    pub action: PrAction,
}

/// A pull request's state on the forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    Open,
    /// Closed without being merged.
    Closed,
    Merged,
}

/// What [`ForgeClient::close_pr`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseOutcome {
    /// It was open: Errand closed it (and commented on it).
    Closed,
    /// Someone had closed it already: left as it is, no comment.
    AlreadyClosed,
    /// It had been merged: left as it is, no comment.
    Merged,
}

/// The answer of [`ForgeClient::close_pr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedPr {
    pub number: u64,
    /// The pull request's page.
    pub url: String,
    pub outcome: CloseOutcome,
    /// The comment's page (GitLab: the merge request's page with the note's anchor), when the
    /// comment was posted.
    pub comment_url: Option<String>,
    /// Why the comment could not be posted; the pull request is closed all the same.
    pub comment_error: Option<ForgeError>,
}

/// The kind of a forge failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeErrorKind {
    /// Errand's own settings: an unusable remote URL or API URL, a missing token, a request
    /// that can never succeed (a head outside `errand/`).
    Config,
    /// 401: the token is missing, wrong or expired.
    Auth,
    /// 403: the token may not do this.
    Forbidden,
    /// 404: no such repository, or the token cannot see it.
    NotFound,
    /// 400/409/422 (and other 4xx): the forge refused the request (no commits between the
    /// branches, the head branch is not on the remote, an archived repository, …).
    Validation,
    /// 429, or GitHub's 403 with its rate-limit headers.
    RateLimited,
    /// 5xx.
    Server,
    /// No answer within the timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// An answer that does not follow the forge's API.
    BadResponse,
}

impl ForgeErrorKind {
    /// Whether the same request can succeed later without any change.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ForgeErrorKind::RateLimited
                | ForgeErrorKind::Server
                | ForgeErrorKind::Timeout
                | ForgeErrorKind::Connection
        )
    }
}

/// A forge failure. Its message is safe to show and to store: it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeError {
    pub forge: ForgeKind,
    pub kind: ForgeErrorKind,
    /// The HTTP status, when the forge answered.
    pub status: Option<u16>,
    pub message: String,
    retry_after: Option<Duration>,
}

impl ForgeError {
    fn new(forge: ForgeKind, kind: ForgeErrorKind, message: impl Into<String>) -> ForgeError {
        ForgeError {
            forge,
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether trying again later can help (rate limits, 5xx, timeouts, broken connections).
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// How long the forge asked to wait (`Retry-After`, or until the rate-limit reset).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for ForgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.forge.as_str(), self.message)
    }
}

impl std::error::Error for ForgeError {}

pub type ForgeResult<T> = std::result::Result<T, ForgeError>;

/// A client for one repository on one forge.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    kind: ForgeKind,
    api_root: String,
    repo: RepoId,
    token: Secret,
    token_env: Option<String>,
    http: reqwest::Client,
}

/// A forge's answer, read whole.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
}

/// Answers are read up to this size.
const MAX_BODY: usize = 8 << 20;
const USER_AGENT: &str = concat!("errand/", env!("CARGO_PKG_VERSION"));

impl ForgeClient {
    /// A client for the repository `remote_url` names on the forge `config` describes, with
    /// the token read from the variable `config.token_env` of this process.
    pub fn from_env(config: &ForgeConfig, remote_url: &str) -> ForgeResult<ForgeClient> {
        let creds = Credentials::from_env(config.username(), &config.token_env)
            .map_err(|e| ForgeError::new(config.kind, ForgeErrorKind::Config, e.to_string()))?;
        ForgeClient::new(config, remote_url, creds.token)
    }

    /// A client for the repository `remote_url` names on the forge `config` describes.
    pub fn new(config: &ForgeConfig, remote_url: &str, token: Secret) -> ForgeResult<ForgeClient> {
        let kind = config.kind;
        let cfg_err = |m: String| ForgeError::new(kind, ForgeErrorKind::Config, m);
        config
            .validate()
            .map_err(|m| cfg_err(token.scrub(&m, None)))?;
        let api_root = api_root(kind, config.api_url().as_deref().unwrap_or_default());
        let repo = repo_id(kind, &api_root, remote_url).ok_or_else(|| {
            cfg_err(format!(
                "cannot tell the repository from the remote URL '{}'; expected {}",
                token.scrub(&crate::push::redact_url(remote_url), None),
                match kind {
                    ForgeKind::Github =>
                        "https://HOST/OWNER/REPO(.git) or git@HOST:OWNER/REPO.git",
                    ForgeKind::Gitlab =>
                        "https://HOST/GROUP/PROJECT(.git) or git@HOST:GROUP/PROJECT.git (subgroups allowed)",
                    ForgeKind::Gitea => "https://HOST/OWNER/REPO(.git) or git@HOST:OWNER/REPO.git",
                }
            ))
        })?;
        if token.is_empty() || token.expose().chars().any(|c| c.is_control()) {
            return Err(cfg_err(format!(
                "the token in {} is empty or has control characters",
                config.token_env
            )));
        }
        install_tls();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(60))
            .user_agent(USER_AGENT)
            // A redirect could carry the token header to another host: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| cfg_err(format!("building the HTTP client: {e}")))?;
        Ok(ForgeClient {
            kind,
            api_root,
            repo,
            token,
            token_env: Some(config.token_env.clone()),
            http,
        })
    }

    pub fn kind(&self) -> ForgeKind {
        self.kind
    }

    /// The API root requests go to (no trailing `/`).
    pub fn api_root(&self) -> &str {
        &self.api_root
    }

    /// The repository, as the API names it.
    pub fn repo(&self) -> &RepoId {
        &self.repo
    }

    /// Opens a pull request for `req.head` into `req.base`, or, when one is already open for
    /// that branch, updates its title and body. Returns the pull request either way.
    pub async fn create_or_update_pr(&self, req: &PrRequest) -> ForgeResult<PullRequest> {
        crate::check_agent_branch(&req.head).map_err(|e| self.err(ForgeErrorKind::Config, e))?;
        if req.base.trim().is_empty() || req.base == req.head {
            return Err(self.err(
                ForgeErrorKind::Config,
                format!(
                    "the base branch '{}' must be set and differ from the head '{}'",
                    req.base, req.head
                ),
            ));
        }
        if req.title.trim().is_empty() {
            return Err(self.err(ForgeErrorKind::Config, "the title is empty"));
        }
        match self.kind {
            ForgeKind::Github => github::create_or_update(self, req).await,
            ForgeKind::Gitlab => gitlab::create_or_update(self, req).await,
            ForgeKind::Gitea => gitea::create_or_update(self, req).await,
        }
    }

    /// Finds the open pull request from `head` (into `base` when several are open).
    pub async fn find_open_pr(&self, head: &str, base: &str) -> ForgeResult<Option<PullRequest>> {
        match self.kind {
            ForgeKind::Github => github::find_open(self, head, base).await,
            ForgeKind::Gitlab => gitlab::find_open(self, head, base).await,
            ForgeKind::Gitea => gitea::find_open(self, head, base).await,
        }
    }

    /// Reads pull request `number` (GitLab: the merge request's iid) and its state.
    pub async fn get_pr(&self, number: u64) -> ForgeResult<(PullRequest, PrState)> {
        let path = self.pr_path(number);
        let a = self.call(reqwest::Method::GET, &path, None).await?;
        if a.status != 200 {
            return Err(self.not_found_pr(&a, number, "read pull requests"));
        }
        let parsed = match self.kind {
            ForgeKind::Github => github::parse_with_state(&a.json),
            ForgeKind::Gitlab => gitlab::parse_with_state(&a.json),
            ForgeKind::Gitea => gitea::parse_with_state(&a.json),
        };
        parsed.ok_or_else(|| self.bad_answer("the read", &a))
    }

    /// Closes the pull request `number`, which must come from the branch `head` (an `errand/…`
    /// branch: Errand closes only what it opened), and comments `comment` on it. A pull request
    /// that is already closed or merged is left as it is (no comment). The branch is never
    /// deleted. Failing to comment after closing is not an error: it is in
    /// [`ClosedPr::comment_error`].
    pub async fn close_pr(&self, number: u64, head: &str, comment: &str) -> ForgeResult<ClosedPr> {
        crate::check_agent_branch(head).map_err(|e| self.err(ForgeErrorKind::Config, e))?;
        if comment.trim().is_empty() {
            return Err(self.err(ForgeErrorKind::Config, "the closing comment is empty"));
        }
        let (pr, state) = self.get_pr(number).await?;
        if pr.head != head {
            return Err(self.err(
                ForgeErrorKind::Config,
                format!(
                    "pull request {} ({}) comes from the branch '{}', not '{head}'; Errand closes only the pull requests it opened",
                    self.pr_ref(number),
                    pr.url,
                    pr.head
                ),
            ));
        }
        let mut out = ClosedPr {
            number,
            url: pr.url.clone(),
            outcome: match state {
                PrState::Open => CloseOutcome::Closed,
                PrState::Closed => CloseOutcome::AlreadyClosed,
                PrState::Merged => CloseOutcome::Merged,
            },
            comment_url: None,
            comment_error: None,
        };
        if state != PrState::Open {
            return Ok(out);
        }
        let path = self.pr_path(number);
        let a = match self.kind {
            ForgeKind::Github | ForgeKind::Gitea => {
                let body = serde_json::json!({ "state": "closed" });
                self.call(reqwest::Method::PATCH, &path, Some(&body))
                    .await?
            }
            ForgeKind::Gitlab => {
                let body = serde_json::json!({ "state_event": "close" });
                self.call(reqwest::Method::PUT, &path, Some(&body)).await?
            }
        };
        // Gitea answers an edit with 201, the others with 200.
        let ok = a.status == 200 || (self.kind == ForgeKind::Gitea && a.status == 201);
        if !ok {
            return Err(self.not_found_pr(&a, number, &format!("close {}", self.noun())));
        }
        let after = match self.kind {
            ForgeKind::Github => github::parse_with_state(&a.json),
            ForgeKind::Gitlab => gitlab::parse_with_state(&a.json),
            ForgeKind::Gitea => gitea::parse_with_state(&a.json),
        };
        match after {
            Some((_, PrState::Closed)) => {}
            Some((_, PrState::Merged)) => {
                out.outcome = CloseOutcome::Merged;
                return Ok(out);
            }
            Some((_, PrState::Open)) => {
                let mut e = self.err(
                    ForgeErrorKind::BadResponse,
                    format!(
                        "the forge accepted closing {} (HTTP {}) but says it is still open",
                        self.pr_ref(number),
                        a.status
                    ),
                );
                e.status = Some(a.status);
                return Err(e);
            }
            None => return Err(self.bad_answer("the close", &a)),
        }
        let posted = match self.kind {
            ForgeKind::Github => github::comment(self, number, comment).await,
            ForgeKind::Gitlab => gitlab::comment(self, number, &pr.url, comment).await,
            // Gitea takes GitHub's call: the same path, body, 201 and `html_url`.
            ForgeKind::Gitea => github::comment(self, number, comment).await,
        };
        match posted {
            Ok(url) => out.comment_url = Some(url),
            Err(e) => out.comment_error = Some(e),
        }
        Ok(out)
    }

    /// `#12` (GitHub, Gitea) or `!12` (GitLab).
    pub fn pr_ref(&self, number: u64) -> String {
        match self.kind {
            ForgeKind::Gitlab => format!("!{number}"),
            _ => format!("#{number}"),
        }
    }

    fn noun(&self) -> &'static str {
        match self.kind {
            ForgeKind::Gitlab => "merge requests",
            _ => "pull requests",
        }
    }

    /// The path of one pull request (merge request) under the API root.
    fn pr_path(&self, number: u64) -> String {
        let repo = self.repo();
        match self.kind {
            ForgeKind::Gitlab => format!(
                "/projects/{}/merge_requests/{number}",
                crate::percent_encode(&repo.full())
            ),
            _ => format!(
                "/repos/{}/{}/pulls/{number}",
                crate::percent_encode(&repo.namespace),
                crate::percent_encode(&repo.name)
            ),
        }
    }

    /// [`ForgeClient::error_for`], with a 404 that names the pull request rather than the
    /// repository (the forges answer 404 for both).
    pub(crate) fn not_found_pr(&self, a: &Answer, number: u64, action: &str) -> ForgeError {
        if a.status != 404 {
            return self.error_for(a, action);
        }
        let detail = self.detail(a);
        let mut e = self.err(
            ForgeErrorKind::NotFound,
            format!(
                "pull request {} not found in {} at {} (HTTP 404{}), or the token in {} cannot see it",
                self.pr_ref(number),
                self.repo.full(),
                self.api_root,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                },
                self.env_name()
            ),
        );
        e.status = Some(404);
        e
    }

    pub(crate) fn err(&self, kind: ForgeErrorKind, message: impl fmt::Display) -> ForgeError {
        ForgeError::new(self.kind, kind, self.scrub(&message.to_string()))
    }

    fn scrub(&self, text: &str) -> String {
        self.token.scrub(text, None)
    }

    fn env_name(&self) -> &str {
        self.token_env.as_deref().unwrap_or("the token variable")
    }

    /// The authentication header each forge documents.
    fn auth_header(&self) -> ForgeResult<(HeaderName, HeaderValue)> {
        let (name, value) = match self.kind {
            ForgeKind::Github => (
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            ),
            ForgeKind::Gitlab => (
                HeaderName::from_static("private-token"),
                self.token.expose().to_string(),
            ),
            ForgeKind::Gitea => (
                reqwest::header::AUTHORIZATION,
                format!("token {}", self.token.expose()),
            ),
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            self.err(
                ForgeErrorKind::Config,
                format!(
                    "the token in {} has characters an HTTP header cannot carry",
                    self.env_name()
                ),
            )
        })?;
        v.set_sensitive(true);
        Ok((name, v))
    }

    /// Sends one request (`path` is under the API root and already encoded) and reads the
    /// answer, whatever its status. Only transport failures are errors here.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> ForgeResult<Answer> {
        let url = format!("{}{path}", self.api_root);
        let (auth_name, auth_value) = self.auth_header()?;
        let mut rb = self
            .http
            .request(method.clone(), &url)
            .header(auth_name, auth_value);
        rb = match self.kind {
            ForgeKind::Github => rb
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            _ => rb.header(reqwest::header::ACCEPT, "application/json"),
        };
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| self.transport_error(&method, path, &e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&method, path, &e))?;
        let bytes = &bytes[..bytes.len().min(MAX_BODY)];
        let json = serde_json::from_slice(bytes).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(bytes);
            Value::String(text.chars().take(500).collect())
        });
        Ok(Answer {
            status,
            headers,
            json,
        })
    }

    fn transport_error(
        &self,
        method: &reqwest::Method,
        path: &str,
        e: &reqwest::Error,
    ) -> ForgeError {
        let kind = if e.is_timeout() {
            ForgeErrorKind::Timeout
        } else {
            ForgeErrorKind::Connection
        };
        // reqwest's message carries the URL (no token in it) and the cause chain.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        self.err(
            kind,
            format!(
                "{method} {}{path}: {}",
                self.api_root,
                if kind == ForgeErrorKind::Timeout {
                    format!("no answer in time ({msg})")
                } else {
                    format!("connection failed ({msg})")
                }
            ),
        )
    }

    /// The forge's own words from an error body, on one line, short.
    fn detail(&self, a: &Answer) -> String {
        let text = match self.kind {
            ForgeKind::Github => github::error_text(&a.json),
            ForgeKind::Gitlab => gitlab::error_text(&a.json),
            ForgeKind::Gitea => gitea::error_text(&a.json),
        };
        let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = one_line.chars().take(400).collect();
        self.scrub(&short)
    }

    /// Turns a non-success answer into an error that says what to do. `action` completes
    /// "may not …" (for example "open pull requests").
    pub(crate) fn error_for(&self, a: &Answer, action: &str) -> ForgeError {
        let detail = self.detail(a);
        let with = |s: u16| {
            if detail.is_empty() {
                format!("HTTP {s}")
            } else {
                format!("HTTP {s}: {detail}")
            }
        };
        let s = a.status;
        let repo = self.repo.full();
        let env = self.env_name().to_string();
        let (kind, message) = match s {
            401 => (
                ForgeErrorKind::Auth,
                format!(
                    "authentication failed ({}): check that {env} holds a valid, unexpired token for {}",
                    with(s),
                    self.api_root
                ),
            ),
            _ if self.is_rate_limited(a) => {
                let wait = rate_limit_wait(self.kind, &a.headers, &detail);
                let mut m = format!("rate limited ({})", with(s));
                if let Some(w) = wait {
                    m.push_str(&format!("; try again in {}s", w.as_secs().max(1)));
                }
                let mut e = self.err(ForgeErrorKind::RateLimited, m);
                e.status = Some(s);
                e.retry_after = wait;
                return e;
            }
            403 => (
                ForgeErrorKind::Forbidden,
                format!(
                    "permission denied ({}): the token in {env} may not {action} in {repo}; give it write access to the repository's pull requests (and contents, to push)",
                    with(s)
                ),
            ),
            404 => (
                ForgeErrorKind::NotFound,
                format!(
                    "repository {repo} not found at {} ({}), or the token in {env} cannot see it; check the remote URL, forge.api_url and the token's access",
                    self.api_root,
                    with(s)
                ),
            ),
            300..=399 => (
                ForgeErrorKind::Config,
                format!(
                    "the API answered with a redirect (HTTP {s}) to '{}'; set forge.api_url to the API's own address",
                    self.scrub(header_str(&a.headers, "location").unwrap_or("?"))
                ),
            ),
            400..=499 => (
                ForgeErrorKind::Validation,
                if action.starts_with("open") || action.starts_with("update") {
                    format!(
                        "the forge refused to {action} in {repo} ({}); is the head branch pushed, and does it differ from the base?",
                        with(s)
                    )
                } else {
                    format!("the forge refused to {action} in {repo} ({})", with(s))
                },
            ),
            500..=599 => (
                ForgeErrorKind::Server,
                format!("server error ({}); try again later", with(s)),
            ),
            _ => (
                ForgeErrorKind::BadResponse,
                format!("unexpected answer ({})", with(s)),
            ),
        };
        let mut e = self.err(kind, message);
        e.status = Some(s);
        if kind == ForgeErrorKind::Server {
            e.retry_after = header_str(&a.headers, "retry-after")
                .and_then(errand_core::text::parse_retry_after);
        }
        e
    }

    fn is_rate_limited(&self, a: &Answer) -> bool {
        if a.status == 429 {
            return true;
        }
        if a.status != 403 || self.kind != ForgeKind::Github {
            return false;
        }
        // GitHub: primary limit (remaining 0), or a secondary limit (retry-after, or says so).
        header_str(&a.headers, "x-ratelimit-remaining") == Some("0")
            || a.headers.contains_key("retry-after")
            || github::error_text(&a.json)
                .to_ascii_lowercase()
                .contains("rate limit")
    }

    /// An answer that should have been a pull request but is not.
    pub(crate) fn bad_answer(&self, what: &str, a: &Answer) -> ForgeError {
        let mut e = self.err(
            ForgeErrorKind::BadResponse,
            format!(
                "the answer to {what} (HTTP {}) is not a pull request: {}",
                a.status,
                self.detail(a)
            ),
        );
        e.status = Some(a.status);
        e
    }
}

/// The API root: `api_url` without a trailing `/`; a bare `https://host` gets the forge's
/// API path (`/api/v4` on GitLab, `/api/v1` on Gitea; GitHub's own API has none).
pub(crate) fn api_root(kind: ForgeKind, api_url: &str) -> String {
    let root = api_url.trim_end_matches('/').to_string();
    if remote::url_path(&root).is_empty() {
        match kind {
            ForgeKind::Github => root,
            ForgeKind::Gitlab => format!("{root}/api/v4"),
            ForgeKind::Gitea => format!("{root}/api/v1"),
        }
    } else {
        root
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// How long to wait after a rate limit: `Retry-After`, else the reset time
/// (`x-ratelimit-reset` on GitHub, `RateLimit-Reset` on GitLab, both Unix seconds), else a
/// minute for GitHub's secondary limits, as its docs advise.
fn rate_limit_wait(kind: ForgeKind, h: &HeaderMap, detail: &str) -> Option<Duration> {
    if let Some(d) = header_str(h, "retry-after").and_then(errand_core::text::parse_retry_after) {
        return Some(d);
    }
    let reset = match kind {
        ForgeKind::Github => header_str(h, "x-ratelimit-reset"),
        _ => header_str(h, "ratelimit-reset").or_else(|| header_str(h, "x-ratelimit-reset")),
    };
    if let Some(at) = reset.and_then(|v| v.parse::<u64>().ok()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return Some(Duration::from_secs(at.saturating_sub(now).max(1)));
    }
    if kind == ForgeKind::Github && detail.to_ascii_lowercase().contains("secondary rate limit") {
        return Some(Duration::from_secs(60));
    }
    None
}

/// Encodes a query value, keeping `:` and `/` (allowed in a query) readable.
pub(crate) fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `title` with a draft marker such as `Draft: ` (for forges that mark drafts in the title),
/// unless it already has one.
pub(crate) fn with_prefix(title: &str, prefix: &str) -> String {
    if has_prefix(title, prefix) {
        title.to_string()
    } else {
        format!("{prefix}{title}")
    }
}

fn has_prefix(title: &str, prefix: &str) -> bool {
    title
        .get(..prefix.len())
        .is_some_and(|t| t.eq_ignore_ascii_case(prefix))
}

pub(crate) fn str_field(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_roots() {
        assert_eq!(
            api_root(ForgeKind::Github, "https://api.github.com/"),
            "https://api.github.com"
        );
        assert_eq!(
            api_root(ForgeKind::Github, "https://ghe.example/api/v3"),
            "https://ghe.example/api/v3"
        );
        assert_eq!(
            api_root(ForgeKind::Gitlab, "https://gl.example"),
            "https://gl.example/api/v4"
        );
        assert_eq!(
            api_root(ForgeKind::Gitea, "https://tea.example/"),
            "https://tea.example/api/v1"
        );
        assert_eq!(
            api_root(ForgeKind::Gitea, "https://tea.example/api/v1"),
            "https://tea.example/api/v1"
        );
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("acme:errand/x-1"), "acme:errand/x-1");
        assert_eq!(query_value("a b+c&d"), "a%20b%2Bc%26d");
    }

    #[test]
    fn draft_prefixes() {
        assert_eq!(with_prefix("Fix it", "Draft: "), "Draft: Fix it");
        assert_eq!(with_prefix("draft: Fix it", "Draft: "), "draft: Fix it");
        assert!(has_prefix("WIP: x", "WIP: "));
        assert!(!has_prefix("W", "WIP: "));
    }

    #[test]
    fn retryable_kinds() {
        assert!(ForgeErrorKind::RateLimited.retryable());
        assert!(ForgeErrorKind::Server.retryable());
        assert!(!ForgeErrorKind::Auth.retryable());
        assert!(!ForgeErrorKind::Validation.retryable());
        assert!(!ForgeErrorKind::NotFound.retryable());
    }
}
