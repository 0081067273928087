//! Fake forge APIs on loopback: the pull request endpoints of GitHub (REST, 2022-11-28),
//! GitLab (v4 merge requests) and Gitea (v1), with their paths, authentication headers,
//! JSON fields, status codes and error bodies.
//!
//! A [`FakeForge`] serves one repository and keeps its pull requests, so create → "already
//! exists" → find → update behaves as on the real forge. It records every request, checks the
//! token, and answers with injected [`Fault`]s (rate limits, 5xx, …) when a test asks.
//!
//! | vendor | API root | create | list | update | already open |
//! | --- | --- | --- | --- | --- | --- |
//! | GitHub | `/` | `POST /repos/{o}/{r}/pulls` → 201 | `GET …/pulls?head=o:b&state=open` | `PATCH …/pulls/{n}` → 200 | 422 `Validation Failed`, "A pull request already exists for o:b." |
//! | GitLab | `/api/v4` | `POST /projects/{id}/merge_requests` → 201 | `GET …?source_branch=b&state=opened` | `PUT …/merge_requests/{iid}` → 200 | 409 `["Another open merge request already exists for this source branch: !n"]` |
//! | Gitea | `/api/v1` | `POST /repos/{o}/{r}/pulls` → 201 | `GET …/pulls?state=open&limit&page` | `PATCH …/pulls/{n}` → 201 | 409 "pull request already exists for these targets …" |
//!
//! Closing and commenting: `GET …/pulls/{n}` (GitLab `…/merge_requests/{iid}`) → 200 with
//! `state` (and `merged`); the update above with `{"state":"closed"}` (GitLab
//! `{"state_event":"close"}`); comments with `POST /repos/{o}/{r}/issues/{n}/comments` (GitHub,
//! Gitea) or `POST /projects/{id}/merge_requests/{iid}/notes` (GitLab) → 201. Changing the state
//! of a merged pull request is refused as the vendor does (GitHub 422, Gitea 412; GitLab ignores
//! it).

use crate::Recorded;
use crate::server::{Running, percent_decode, query_pairs, serve};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Which forge a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeVendor {
    GitHub,
    GitLab,
    Gitea,
}

impl ForgeVendor {
    /// The `kind` of a `forge` table that talks to this fake.
    pub fn kind(self) -> &'static str {
        match self {
            ForgeVendor::GitHub => "github",
            ForgeVendor::GitLab => "gitlab",
            ForgeVendor::Gitea => "gitea",
        }
    }

    /// The API root's path on the server.
    fn prefix(self) -> &'static str {
        match self {
            ForgeVendor::GitHub => "",
            ForgeVendor::GitLab => "/api/v4",
            ForgeVendor::Gitea => "/api/v1",
        }
    }

    /// The web host pull request URLs point at.
    pub fn web_root(self) -> &'static str {
        match self {
            ForgeVendor::GitHub => "https://github.example",
            ForgeVendor::GitLab => "https://gitlab.example",
            ForgeVendor::Gitea => "https://gitea.example",
        }
    }

    /// The vendor's error body for `status` with `message`.
    pub fn error_body(self, status: u16, message: &str) -> Value {
        match self {
            ForgeVendor::GitHub => json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.to_string(),
            }),
            ForgeVendor::GitLab => json!({ "message": message }),
            ForgeVendor::Gitea => json!({
                "message": message,
                "url": "https://gitea.example/api/swagger",
            }),
        }
    }
}

/// A pull request (merge request) the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePull {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub head: String,
    pub base: String,
    pub draft: bool,
    pub open: bool,
    /// Merged (and so not open).
    pub merged: bool,
}

/// A comment (GitLab: a note) on a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeComment {
    pub id: u64,
    /// The pull request's number (GitLab: the merge request's iid).
    pub number: u64,
    pub body: String,
}

/// An answer given instead of the normal one, once, to the first request that matches.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Only requests with this method (`None`: any).
    pub method: Option<String>,
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Fault {
    /// `status` with the vendor's error body for `message`, to any request.
    pub fn new(vendor: ForgeVendor, status: u16, message: &str) -> Fault {
        Fault {
            method: None,
            status,
            body: vendor.error_body(status, message),
            headers: Vec::new(),
        }
    }

    /// Only for requests with `method` (`POST`, `GET`, …).
    pub fn on(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Fault {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

struct State {
    vendor: ForgeVendor,
    repo: String,
    token: String,
    pulls: Mutex<Vec<FakePull>>,
    comments: Mutex<Vec<FakeComment>>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<Recorded>>,
}

/// A fake forge API for one repository on 127.0.0.1. Dropping it stops the server.
pub struct FakeForge {
    /// What to put in the forge's `api_url`.
    pub api_url: String,
    pub vendor: ForgeVendor,
    state: Arc<State>,
    _running: Running,
}

impl FakeForge {
    /// Serves the repository `repo` (`owner/name`, or a GitLab `group/sub/project`), accepting
    /// only `token`.
    pub fn start(vendor: ForgeVendor, repo: &str, token: &str) -> FakeForge {
        let state = Arc::new(State {
            vendor,
            repo: repo.to_string(),
            token: token.to_string(),
            pulls: Mutex::new(Vec::new()),
            comments: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move { handle(&st, method, uri, headers, body) }
            },
        );
        let running = serve("forge fake", app);
        FakeForge {
            api_url: format!("http://{}{}", running.addr, vendor.prefix()),
            vendor,
            state,
            _running: running,
        }
    }

    /// A remote URL for the served repository (`https://HOST/REPO.git` on the vendor's host).
    pub fn remote_url(&self) -> String {
        format!("{}/{}.git", self.vendor.web_root(), self.state.repo)
    }

    /// Queues a fault; faults are used once, first match first.
    pub fn inject(&self, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fault);
    }

    /// Adds a pull request as if someone had opened it; returns its number. On GitLab and
    /// Gitea a draft title prefix makes it a draft too, as there.
    pub fn add_pull(&self, head: &str, base: &str, title: &str, draft: bool) -> u64 {
        let draft = draft || is_draft_title(self.vendor, title);
        let mut pulls = self.state.pulls.lock().unwrap_or_else(|e| e.into_inner());
        let number = pulls.len() as u64 + 1;
        pulls.push(FakePull {
            number,
            title: title.to_string(),
            body: String::new(),
            head: head.to_string(),
            base: base.to_string(),
            draft,
            open: true,
            merged: false,
        });
        number
    }

    /// Marks pull request `number` merged, as if someone had merged it.
    pub fn merge_pull(&self, number: u64) {
        let mut pulls = self.state.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pulls.iter_mut().find(|p| p.number == number) {
            p.open = false;
            p.merged = true;
        }
    }

    /// The comments (GitLab: notes) posted so far, in order.
    pub fn comments(&self) -> Vec<FakeComment> {
        self.state
            .comments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pull requests, by number.
    pub fn pulls(&self) -> Vec<FakePull> {
        self.state
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every request so far, in order; paths are relative to the API root.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn respond(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json; charset=utf-8");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request carries the token the way the vendor documents it.
fn authorized(st: &State, headers: &HeaderMap) -> bool {
    let auth = header(headers, "authorization").unwrap_or("");
    let bearer = auth.strip_prefix("Bearer ");
    let token = auth.strip_prefix("token ");
    let t = st.token.as_str();
    match st.vendor {
        ForgeVendor::GitHub => bearer == Some(t) || token == Some(t),
        ForgeVendor::GitLab => header(headers, "private-token") == Some(t) || bearer == Some(t),
        ForgeVendor::Gitea => token == Some(t) || bearer == Some(t),
    }
}

fn is_draft_title(vendor: ForgeVendor, title: &str) -> bool {
    let l = title.trim_start().to_ascii_lowercase();
    match vendor {
        ForgeVendor::GitHub => false,
        ForgeVendor::GitLab => {
            l.starts_with("draft:") || l.starts_with("[draft]") || l.starts_with("(draft)")
        }
        ForgeVendor::Gitea => l.starts_with("wip:") || l.starts_with("[wip]"),
    }
}

fn render(st: &State, p: &FakePull) -> Value {
    let web = st.vendor.web_root();
    let repo = &st.repo;
    let owner = repo.split('/').next().unwrap_or("");
    let sha = format!("{:040x}", p.number);
    match st.vendor {
        ForgeVendor::GitHub => json!({
            "id": 1000 + p.number,
            "number": p.number,
            "url": format!("https://api.github.example/repos/{repo}/pulls/{}", p.number),
            "html_url": format!("{web}/{repo}/pull/{}", p.number),
            "state": if p.open { "open" } else { "closed" },
            "title": p.title,
            "body": p.body,
            "draft": p.draft,
            "merged": p.merged,
            "merged_at": if p.merged { json!("2026-01-02T03:04:05Z") } else { Value::Null },
            "user": {"login": "errand-bot"},
            "head": {"ref": p.head, "label": format!("{owner}:{}", p.head), "sha": sha},
            "base": {"ref": p.base, "label": format!("{owner}:{}", p.base)},
        }),
        ForgeVendor::GitLab => json!({
            "id": 1000 + p.number,
            "iid": p.number,
            "project_id": 7,
            "title": p.title,
            "description": p.body,
            "state": if p.merged { "merged" } else if p.open { "opened" } else { "closed" },
            "draft": p.draft,
            "work_in_progress": p.draft,
            "source_branch": p.head,
            "target_branch": p.base,
            "sha": sha,
            "web_url": format!("{web}/{repo}/-/merge_requests/{}", p.number),
        }),
        ForgeVendor::Gitea => json!({
            "id": 1000 + p.number,
            "number": p.number,
            "title": p.title,
            "body": p.body,
            "state": if p.open { "open" } else { "closed" },
            "draft": p.draft,
            "merged": p.merged,
            "html_url": format!("{web}/{repo}/pulls/{}", p.number),
            "head": {"ref": p.head, "label": p.head, "sha": sha},
            "base": {"ref": p.base, "label": p.base},
        }),
    }
}

/// Which endpoint a path is, for the served repository.
enum Route {
    Pulls,
    Pull(u64),
    /// GitHub and Gitea `issues/{n}/comments`, GitLab `merge_requests/{iid}/notes`.
    Comments(u64),
    OtherRepo,
    Unknown,
}

fn route(st: &State, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (repo, rest): (String, &[&str]) = match (st.vendor, segs.as_slice()) {
        (ForgeVendor::GitLab, ["projects", id, rest @ ..]) => (percent_decode(id), rest),
        (ForgeVendor::GitHub | ForgeVendor::Gitea, ["repos", o, r, rest @ ..]) => {
            (format!("{}/{}", percent_decode(o), percent_decode(r)), rest)
        }
        _ => return Route::Unknown,
    };
    let collection = match st.vendor {
        ForgeVendor::GitLab => "merge_requests",
        _ => "pulls",
    };
    let (comments_parent, comments) = match st.vendor {
        ForgeVendor::GitLab => ("merge_requests", "notes"),
        _ => ("issues", "comments"),
    };
    let r = match rest {
        [c] if *c == collection => Route::Pulls,
        [c, n] if *c == collection => match n.parse() {
            Ok(n) => Route::Pull(n),
            Err(_) => return Route::Unknown,
        },
        [p, n, c] if *p == comments_parent && *c == comments => match n.parse() {
            Ok(n) => Route::Comments(n),
            Err(_) => return Route::Unknown,
        },
        _ => return Route::Unknown,
    };
    if repo != st.repo {
        return Route::OtherRepo;
    }
    r
}

fn handle(st: &State, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let vendor = st.vendor;
    let full = uri.path().to_string();
    let path = full
        .strip_prefix(vendor.prefix())
        .unwrap_or(&full)
        .to_string();
    let query = uri.query().map(str::to_string);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: json.clone(),
            body_bytes: body.len(),
            raw: String::from_utf8_lossy(&body).into_owned(),
        });

    let fault = {
        let mut faults = st.faults.lock().unwrap_or_else(|e| e.into_inner());
        let i = faults
            .iter()
            .position(|f| f.method.as_deref().is_none_or(|m| m == method.as_str()));
        i.map(|i| faults.remove(i))
    };
    if let Some(f) = fault {
        return respond(f.status, &f.headers, &f.body);
    }
    if !authorized(st, &headers) {
        let msg = match vendor {
            ForgeVendor::GitHub => "Bad credentials",
            ForgeVendor::GitLab => "401 Unauthorized",
            ForgeVendor::Gitea => "token is required",
        };
        return respond(401, &[], &vendor.error_body(401, msg));
    }
    let not_found = || {
        let msg = match vendor {
            ForgeVendor::GitHub => "Not Found",
            ForgeVendor::GitLab => "404 Project Not Found",
            ForgeVendor::Gitea => "The target couldn't be found.",
        };
        respond(404, &[], &vendor.error_body(404, msg))
    };
    match (route(st, &path), method.as_str()) {
        (Route::Pulls, "POST") => create(st, &json),
        (Route::Pulls, "GET") => list(st, query.as_deref()),
        (Route::Pull(n), "GET") => {
            let pulls = st.pulls.lock().unwrap_or_else(|e| e.into_inner());
            match pulls.iter().find(|p| p.number == n) {
                Some(p) => respond(200, &[], &render(st, p)),
                None => not_found(),
            }
        }
        (Route::Pull(n), m)
            if (vendor == ForgeVendor::GitLab && m == "PUT")
                || (vendor != ForgeVendor::GitLab && m == "PATCH") =>
        {
            update(st, n, &json)
        }
        (Route::Comments(n), "POST") => comment(st, n, &json),
        (Route::OtherRepo | Route::Unknown, _) => not_found(),
        _ => respond(405, &[], &vendor.error_body(405, "Method Not Allowed")),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn create(st: &State, req: &Value) -> Response {
    let vendor = st.vendor;
    let (head_f, base_f, body_f) = match vendor {
        ForgeVendor::GitLab => ("source_branch", "target_branch", "description"),
        _ => ("head", "base", "body"),
    };
    for f in ["title", head_f, base_f] {
        if field(req, f).is_none_or(str::is_empty) {
            return match vendor {
                ForgeVendor::GitHub => respond(
                    422,
                    &[],
                    &json!({
                        "message": "Validation Failed",
                        "errors": [{"resource": "PullRequest", "field": f, "code": "missing_field"}],
                        "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                        "status": "422",
                    }),
                ),
                ForgeVendor::GitLab => {
                    respond(400, &[], &json!({"error": format!("{f} is missing")}))
                }
                ForgeVendor::Gitea => respond(
                    422,
                    &[],
                    &vendor.error_body(422, &format!("[{f}]: Required")),
                ),
            };
        }
    }
    let title = field(req, "title").unwrap_or_default().to_string();
    let head = field(req, head_f).unwrap_or_default().to_string();
    let base = field(req, base_f).unwrap_or_default().to_string();
    // GitHub names a head in another fork `owner:branch`; same-repository heads are bare.
    let head = match (vendor, head.split_once(':')) {
        (ForgeVendor::GitHub, Some((_, b))) => b.to_string(),
        _ => head,
    };
    if head == base {
        let msg = format!("No commits between {base} and {head}");
        return match vendor {
            ForgeVendor::GitHub => respond(
                422,
                &[],
                &json!({
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "code": "custom", "message": msg}],
                    "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                    "status": "422",
                }),
            ),
            ForgeVendor::GitLab => respond(
                422,
                &[],
                &json!({"message": ["You can't use same project/branch for source and target"]}),
            ),
            ForgeVendor::Gitea => respond(422, &[], &vendor.error_body(422, &msg)),
        };
    }
    let mut pulls = st.pulls.lock().unwrap_or_else(|e| e.into_inner());
    let existing = pulls
        .iter()
        .find(|p| p.open && p.head == head && (vendor == ForgeVendor::GitLab || p.base == base));
    if let Some(p) = existing {
        let owner = st.repo.split('/').next().unwrap_or("");
        return match vendor {
            ForgeVendor::GitHub => respond(
                422,
                &[],
                &json!({
                    "message": "Validation Failed",
                    "errors": [{
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": format!("A pull request already exists for {owner}:{head}."),
                    }],
                    "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                    "status": "422",
                }),
            ),
            ForgeVendor::GitLab => respond(
                409,
                &[],
                &json!({"message": [format!(
                    "Another open merge request already exists for this source branch: !{}",
                    p.number
                )]}),
            ),
            ForgeVendor::Gitea => respond(
                409,
                &[],
                &vendor.error_body(
                    409,
                    &format!(
                        "pull request already exists for these targets [id: {}, issue_id: {}, head_repo_id: 1, base_repo_id: 1, head_branch: {head}, base_branch: {base}]",
                        1000 + p.number,
                        p.number
                    ),
                ),
            ),
        };
    }
    let draft = match vendor {
        ForgeVendor::GitHub => req.get("draft").and_then(Value::as_bool).unwrap_or(false),
        _ => is_draft_title(vendor, &title),
    };
    let pull = FakePull {
        number: pulls.len() as u64 + 1,
        title,
        body: field(req, body_f).unwrap_or_default().to_string(),
        head,
        base,
        draft,
        open: true,
        merged: false,
    };
    pulls.push(pull.clone());
    respond(201, &[], &render(st, &pull))
}

fn update(st: &State, n: u64, req: &Value) -> Response {
    let vendor = st.vendor;
    let body_f = match vendor {
        ForgeVendor::GitLab => "description",
        _ => "body",
    };
    let mut pulls = st.pulls.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = pulls.iter_mut().find(|p| p.number == n) else {
        let msg = match vendor {
            ForgeVendor::GitHub => "Not Found",
            ForgeVendor::GitLab => "404 Not found",
            ForgeVendor::Gitea => "The target couldn't be found.",
        };
        return respond(404, &[], &vendor.error_body(404, msg));
    };
    let state_change = field(req, "state").is_some() || field(req, "state_event").is_some();
    if p.merged && state_change {
        match vendor {
            ForgeVendor::GitHub => {
                return respond(
                    422,
                    &[],
                    &json!({
                        "message": "Validation Failed",
                        "errors": [{"resource": "PullRequest", "code": "custom", "message": "state cannot be changed. The pull request has been merged."}],
                        "documentation_url": "https://docs.github.com/rest/pulls/pulls#update-a-pull-request",
                        "status": "422",
                    }),
                );
            }
            ForgeVendor::Gitea => {
                return respond(
                    412,
                    &[],
                    &vendor.error_body(
                        412,
                        "cannot change state of this pull request, it was already merged",
                    ),
                );
            }
            // GitLab ignores a state event the merge request cannot take.
            ForgeVendor::GitLab => {}
        }
    }
    if let Some(t) = field(req, "title") {
        p.title = t.to_string();
        if vendor != ForgeVendor::GitHub {
            p.draft = is_draft_title(vendor, t);
        }
    }
    if let Some(b) = field(req, body_f) {
        p.body = b.to_string();
    }
    if !p.merged {
        if let Some(s) = field(req, "state") {
            p.open = s == "open";
        }
        if let Some(e) = field(req, "state_event") {
            p.open = e != "close";
        }
    }
    let p = p.clone();
    // Gitea answers an edit with 201 Created.
    let status = if vendor == ForgeVendor::Gitea {
        201
    } else {
        200
    };
    respond(status, &[], &render(st, &p))
}

fn comment(st: &State, n: u64, req: &Value) -> Response {
    let vendor = st.vendor;
    let exists = st
        .pulls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|p| p.number == n);
    if !exists {
        let msg = match vendor {
            ForgeVendor::GitHub => "Not Found",
            ForgeVendor::GitLab => "404 Not found",
            ForgeVendor::Gitea => "The target couldn't be found.",
        };
        return respond(404, &[], &vendor.error_body(404, msg));
    }
    let Some(body) = field(req, "body").filter(|b| !b.is_empty()) else {
        return match vendor {
            ForgeVendor::GitHub => respond(
                422,
                &[],
                &json!({
                    "message": "Validation Failed",
                    "errors": [{"resource": "IssueComment", "field": "body", "code": "missing_field"}],
                    "documentation_url": "https://docs.github.com/rest/issues/comments#create-an-issue-comment",
                    "status": "422",
                }),
            ),
            ForgeVendor::GitLab => respond(400, &[], &json!({"error": "body is missing"})),
            ForgeVendor::Gitea => respond(422, &[], &vendor.error_body(422, "[Body]: Required")),
        };
    };
    let mut comments = st.comments.lock().unwrap_or_else(|e| e.into_inner());
    let id = 5000 + comments.len() as u64 + 1;
    comments.push(FakeComment {
        id,
        number: n,
        body: body.to_string(),
    });
    let web = vendor.web_root();
    let repo = &st.repo;
    let answer = match vendor {
        ForgeVendor::GitHub => json!({
            "id": id,
            "url": format!("https://api.github.example/repos/{repo}/issues/comments/{id}"),
            "html_url": format!("{web}/{repo}/pull/{n}#issuecomment-{id}"),
            "issue_url": format!("https://api.github.example/repos/{repo}/issues/{n}"),
            "body": body,
            "user": {"login": "errand-bot"},
            "created_at": "2026-01-02T03:04:05Z",
        }),
        ForgeVendor::GitLab => json!({
            "id": id,
            "type": Value::Null,
            "body": body,
            "author": {"username": "errand-bot"},
            "created_at": "2026-01-02T03:04:05.000Z",
            "system": false,
            "noteable_id": 1000 + n,
            "noteable_type": "MergeRequest",
            "noteable_iid": n,
            "project_id": 7,
        }),
        ForgeVendor::Gitea => json!({
            "id": id,
            "html_url": format!("{web}/{repo}/pulls/{n}#issuecomment-{id}"),
            "pull_request_url": format!("{web}/{repo}/pulls/{n}"),
            "issue_url": "",
            "body": body,
            "user": {"login": "errand-bot"},
            "created_at": "2026-01-02T03:04:05Z",
        }),
    };
    respond(201, &[], &answer)
}

fn list(st: &State, query: Option<&str>) -> Response {
    let vendor = st.vendor;
    let q = query_pairs(query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let pulls = st.pulls.lock().unwrap_or_else(|e| e.into_inner());
    let owner = st.repo.split('/').next().unwrap_or("");
    let mut out: Vec<&FakePull> = pulls
        .iter()
        .filter(|p| match get("state").unwrap_or("open") {
            "all" => true,
            "open" | "opened" => p.open,
            _ => !p.open,
        })
        .filter(|p| match vendor {
            ForgeVendor::GitHub => {
                get("head").is_none_or(|h| {
                    h.split_once(':')
                        .is_some_and(|(o, b)| o == owner && b == p.head)
                }) && get("base").is_none_or(|b| b == p.base)
            }
            ForgeVendor::GitLab => {
                get("source_branch").is_none_or(|b| b == p.head)
                    && get("target_branch").is_none_or(|b| b == p.base)
            }
            ForgeVendor::Gitea => true,
        })
        .collect();
    if vendor == ForgeVendor::Gitea {
        let limit: usize = get("limit").and_then(|l| l.parse().ok()).unwrap_or(30);
        let page: usize = get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
        out = out
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
    }
    let items: Vec<Value> = out.iter().map(|p| render(st, p)).collect();
    respond(200, &[], &Value::Array(items))
}
