//! Pull requests against local servers that speak the GitHub, GitLab and Gitea endpoints and
//! payloads: the exact requests made, create → already exists → update, drafts, and every
//! error case.

use errand_fakes::Recorded;
use errand_fakes::forge::{FakeForge, Fault, ForgeVendor};
use errand_git::Secret;
use errand_git::forge::{
    CloseOutcome, ForgeClient, ForgeConfig, ForgeErrorKind, ForgeKind, PrAction, PrRequest,
};
use serde_json::json;
use std::time::Duration;

const TOKEN: &str = "ghp_ForgeT3stToken_0123456789abcdef";
const ENV: &str = "ERRAND_TEST_FORGE_TOKEN";
const BRANCH: &str = "errand/abc123-fix-cart";

fn kind(v: ForgeVendor) -> ForgeKind {
    match v {
        ForgeVendor::GitHub => ForgeKind::Github,
        ForgeVendor::GitLab => ForgeKind::Gitlab,
        ForgeVendor::Gitea => ForgeKind::Gitea,
    }
}

fn repo(v: ForgeVendor) -> &'static str {
    match v {
        ForgeVendor::GitHub => "acme/shop",
        ForgeVendor::GitLab => "acme/web/shop",
        ForgeVendor::Gitea => "tea/shop",
    }
}

fn config(fake: &FakeForge) -> ForgeConfig {
    ForgeConfig {
        kind: kind(fake.vendor),
        api_url: Some(fake.api_url.clone()),
        token_env: ENV.to_string(),
        username: None,
    }
}

fn client_with(fake: &FakeForge, token: &str) -> ForgeClient {
    ForgeClient::new(&config(fake), &fake.remote_url(), Secret::new(token))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn start(v: ForgeVendor) -> (FakeForge, ForgeClient) {
    let fake = FakeForge::start(v, repo(v), TOKEN);
    let client = client_with(&fake, TOKEN);
    (fake, client)
}

fn pr(body: &str, draft: bool) -> PrRequest {
    PrRequest {
        title: "Fix the empty cart".to_string(),
        body: body.to_string(),
        head: BRANCH.to_string(),
        base: "main".to_string(),
        draft,
    }
}

fn line(r: &Recorded) -> String {
    match &r.query {
        Some(q) => format!("{} {}?{q}", r.method, r.path),
        None => format!("{} {}", r.method, r.path),
    }
}

fn lines(fake: &FakeForge) -> Vec<String> {
    fake.requests().iter().map(line).collect()
}

/// Headers every request to `v` carries.
fn assert_headers(v: ForgeVendor, r: &Recorded) {
    let ua = r.header("user-agent").unwrap_or_default();
    assert!(ua.starts_with("errand/"), "user-agent {ua:?}");
    match v {
        ForgeVendor::GitHub => {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {TOKEN}").as_str())
            );
            assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
            assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        }
        ForgeVendor::GitLab => {
            assert_eq!(r.header("private-token"), Some(TOKEN));
            assert_eq!(r.header("authorization"), None);
            assert_eq!(r.header("accept"), Some("application/json"));
        }
        ForgeVendor::Gitea => {
            assert_eq!(
                r.header("authorization"),
                Some(format!("token {TOKEN}").as_str())
            );
            assert_eq!(r.header("accept"), Some("application/json"));
        }
    }
    if r.method != "GET" {
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // The token only ever travels in its header.
    assert!(!r.path.contains(TOKEN) && !r.query.clone().unwrap_or_default().contains(TOKEN));
    assert!(!r.raw.contains(TOKEN));
}

// ---------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------

#[tokio::test]
async fn github_creates_a_pull_request() {
    let (fake, client) = start(ForgeVendor::GitHub);
    assert_eq!(client.repo().full(), "acme/shop");
    let got = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    assert_eq!(got.number, 1);
    assert_eq!(got.action, PrAction::Created);
    assert_eq!(got.url, "https://github.example/acme/shop/pull/1");
    assert_eq!((got.head.as_str(), got.base.as_str()), (BRANCH, "main"));
    assert!(!got.draft);

    let reqs = fake.requests();
    assert_eq!(lines(&fake), ["POST /repos/acme/shop/pulls"]);
    assert_headers(ForgeVendor::GitHub, &reqs[0]);
    assert_eq!(
        reqs[0].body,
        json!({
            "title": "Fix the empty cart",
            "head": BRANCH,
            "base": "main",
            "body": "Body v1",
            "draft": false,
        })
    );
}

#[tokio::test]
async fn github_follow_up_updates_the_same_pull_request() {
    let (fake, client) = start(ForgeVendor::GitHub);
    let first = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    let mut again = pr("Body v2: also covers the empty-cart case", false);
    again.title = "Fix the empty cart (and more)".to_string();
    let second = client.create_or_update_pr(&again).await.unwrap();

    assert_eq!(second.number, first.number);
    assert_eq!(second.action, PrAction::Updated);
    assert_eq!(second.title, "Fix the empty cart (and more)");
    assert_eq!(
        lines(&fake),
        [
            "POST /repos/acme/shop/pulls",
            "POST /repos/acme/shop/pulls",
            "GET /repos/acme/shop/pulls?head=acme:errand/abc123-fix-cart&state=open",
            "PATCH /repos/acme/shop/pulls/1",
        ]
    );
    let reqs = fake.requests();
    for r in &reqs {
        assert_headers(ForgeVendor::GitHub, r);
    }
    assert_eq!(
        reqs[3].body,
        json!({
            "title": "Fix the empty cart (and more)",
            "body": "Body v2: also covers the empty-cart case",
        })
    );
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].body, "Body v2: also covers the empty-cart case");
}

#[tokio::test]
async fn github_draft() {
    let (fake, client) = start(ForgeVendor::GitHub);
    let got = client.create_or_update_pr(&pr("b", true)).await.unwrap();
    assert!(got.draft);
    assert_eq!(fake.requests()[0].body["draft"], json!(true));
    assert_eq!(
        fake.requests()[0].body["title"],
        json!("Fix the empty cart")
    );
    // An update leaves the draft state alone (GitHub's REST API cannot change it).
    let got = client.create_or_update_pr(&pr("b2", false)).await.unwrap();
    assert!(got.draft);
    assert_eq!(
        fake.requests()[3].body,
        json!({"title": "Fix the empty cart", "body": "b2"})
    );
}

#[tokio::test]
async fn github_finds_the_pull_request_into_the_same_base() {
    let (fake, client) = start(ForgeVendor::GitHub);
    fake.add_pull(BRANCH, "release", "old", false);
    fake.add_pull("errand/other", "main", "other", false);
    fake.add_pull(BRANCH, "main", "ours", false);
    fake.inject(
        Fault {
            method: None,
            status: 422,
            body: json!({
                "message": "Validation Failed",
                "errors": [{"resource": "PullRequest", "code": "custom",
                            "message": format!("A pull request already exists for acme:{BRANCH}.")}],
                "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                "status": "422",
            }),
            headers: vec![],
        }
        .on("POST"),
    );
    let got = client.create_or_update_pr(&pr("new", false)).await.unwrap();
    assert_eq!((got.number, got.action), (3, PrAction::Updated));
    assert_eq!(fake.pulls()[2].body, "new");
    assert_eq!(fake.pulls()[0].body, "");
}

#[tokio::test]
async fn github_rejected_token() {
    let fake = FakeForge::start(ForgeVendor::GitHub, "acme/shop", TOKEN);
    let wrong = "ghp_WrongTokenNeverShown_999";
    let client = client_with(&fake, wrong);
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::Auth);
    assert_eq!(e.status, Some(401));
    assert!(!e.retryable());
    let msg = e.to_string();
    assert!(msg.starts_with("github: authentication failed"), "{msg}");
    assert!(msg.contains("Bad credentials"), "{msg}");
    assert!(msg.contains(ENV), "{msg}");
    assert!(
        !msg.contains(wrong) && !format!("{e:?}").contains(wrong),
        "{msg}"
    );
    assert!(!format!("{client:?}").contains(wrong));
}

#[tokio::test]
async fn github_repository_not_found() {
    let fake = FakeForge::start(ForgeVendor::GitHub, "acme/shop", TOKEN);
    let client = ForgeClient::new(
        &config(&fake),
        "git@github.example:acme/private.git",
        Secret::new(TOKEN),
    )
    .unwrap();
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::NotFound, Some(404)));
    assert!(!e.retryable());
    let msg = e.to_string();
    assert!(
        msg.contains("acme/private") && msg.contains("not found"),
        "{msg}"
    );
    assert!(msg.contains(ENV), "{msg}");
    assert_eq!(lines(&fake), ["POST /repos/acme/private/pulls"]);
}

#[tokio::test]
async fn github_forbidden() {
    let (fake, client) = start(ForgeVendor::GitHub);
    fake.inject(Fault::new(
        ForgeVendor::GitHub,
        403,
        "Resource not accessible by personal access token",
    ));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Forbidden, Some(403)));
    assert!(!e.retryable());
    assert!(e.to_string().contains("Resource not accessible"), "{e}");
    assert!(e.to_string().contains(ENV), "{e}");
}

#[tokio::test]
async fn github_validation_error_keeps_the_forges_words() {
    let (fake, client) = start(ForgeVendor::GitHub);
    fake.inject(Fault {
        method: Some("POST".into()),
        status: 422,
        body: json!({
            "message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "code": "custom",
                        "message": format!("No commits between main and {BRANCH}")}],
            "status": "422",
        }),
        headers: vec![],
    });
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Validation, Some(422)));
    assert!(!e.retryable());
    assert!(e.to_string().contains("No commits between main and"), "{e}");
    // No "already exists": no lookup, no update.
    assert_eq!(lines(&fake).len(), 1);
}

#[tokio::test]
async fn github_primary_rate_limit_waits_for_the_reset() {
    let (fake, client) = start(ForgeVendor::GitHub);
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    fake.inject(
        Fault::new(
            ForgeVendor::GitHub,
            403,
            "API rate limit exceeded for user ID 1.",
        )
        .header("x-ratelimit-limit", "5000")
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-used", "5000")
        .header("x-ratelimit-reset", &reset.to_string()),
    );
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::RateLimited, Some(403)));
    assert!(e.retryable());
    let wait = e.retry_after().unwrap();
    assert!(
        wait >= Duration::from_secs(115) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
    assert!(e.to_string().contains("rate limited"), "{e}");
    // Then it works.
    client.create_or_update_pr(&pr("b", false)).await.unwrap();
}

#[tokio::test]
async fn github_secondary_rate_limits() {
    let (fake, client) = start(ForgeVendor::GitHub);
    fake.inject(
        Fault::new(
            ForgeVendor::GitHub,
            403,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        )
        .header("retry-after", "30"),
    );
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));

    // Without any header: a minute, as GitHub advises.
    fake.inject(Fault::new(
        ForgeVendor::GitHub,
        403,
        "You have exceeded a secondary rate limit.",
    ));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));

    fake.inject(
        Fault::new(ForgeVendor::GitHub, 429, "Too Many Requests").header("retry-after", "7"),
    );
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::RateLimited, Some(429)));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn github_server_errors_are_retryable() {
    let (fake, client) = start(ForgeVendor::GitHub);
    for status in [500, 502, 503] {
        fake.inject(Fault::new(ForgeVendor::GitHub, status, "Server Error"));
        let e = client
            .create_or_update_pr(&pr("b", false))
            .await
            .err()
            .unwrap();
        assert_eq!((e.kind, e.status), (ForgeErrorKind::Server, Some(status)));
        assert!(e.retryable(), "{e}");
    }
    // A 5xx in the lookup after "already exists" is just as retryable.
    client.create_or_update_pr(&pr("b", false)).await.unwrap();
    fake.inject(Fault::new(ForgeVendor::GitHub, 502, "Bad Gateway").on("GET"));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::Server);
    assert!(e.retryable());
}

#[tokio::test]
async fn an_echoed_token_is_scrubbed_from_errors() {
    let (fake, client) = start(ForgeVendor::GitHub);
    fake.inject(Fault::new(
        ForgeVendor::GitHub,
        422,
        &format!("token {TOKEN} is not allowed here"),
    ));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(!msg.contains(TOKEN), "{msg}");
    assert!(msg.contains("token *** is not allowed"), "{msg}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (fake, client) = start(ForgeVendor::GitLab);
    fake.inject(
        Fault::new(ForgeVendor::GitLab, 301, "Moved Permanently")
            .header("location", "https://elsewhere.example/api/v4/projects"),
    );
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Config, Some(301)));
    assert!(e.to_string().contains("elsewhere.example"), "{e}");
    assert!(e.to_string().contains("forge.api_url"), "{e}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn connection_failures_are_retryable() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = ForgeConfig {
        kind: ForgeKind::Github,
        api_url: Some(format!("http://127.0.0.1:{port}")),
        token_env: ENV.into(),
        username: None,
    };
    let client =
        ForgeClient::new(&cfg, "https://github.com/acme/shop.git", Secret::new(TOKEN)).unwrap();
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Connection, None));
    assert!(e.retryable());
    assert!(!e.to_string().contains(TOKEN));
}

// ---------------------------------------------------------------------------
// GitLab
// ---------------------------------------------------------------------------

#[tokio::test]
async fn gitlab_creates_a_merge_request() {
    let (fake, client) = start(ForgeVendor::GitLab);
    assert_eq!(client.repo().full(), "acme/web/shop");
    let got = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    assert_eq!((got.number, got.action), (1, PrAction::Created));
    assert_eq!(
        got.url,
        "https://gitlab.example/acme/web/shop/-/merge_requests/1"
    );
    assert!(!got.draft);
    let reqs = fake.requests();
    assert_eq!(
        lines(&fake),
        ["POST /projects/acme%2Fweb%2Fshop/merge_requests"]
    );
    assert_headers(ForgeVendor::GitLab, &reqs[0]);
    assert_eq!(
        reqs[0].body,
        json!({
            "source_branch": BRANCH,
            "target_branch": "main",
            "title": "Fix the empty cart",
            "description": "Body v1",
        })
    );
}

#[tokio::test]
async fn gitlab_follow_up_updates_the_same_merge_request() {
    let (fake, client) = start(ForgeVendor::GitLab);
    let first = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    let second = client
        .create_or_update_pr(&pr("Body v2", false))
        .await
        .unwrap();
    assert_eq!(second.number, first.number);
    assert_eq!(second.action, PrAction::Updated);
    assert_eq!(
        lines(&fake),
        [
            "POST /projects/acme%2Fweb%2Fshop/merge_requests",
            "POST /projects/acme%2Fweb%2Fshop/merge_requests",
            "GET /projects/acme%2Fweb%2Fshop/merge_requests?source_branch=errand/abc123-fix-cart&state=opened",
            "PUT /projects/acme%2Fweb%2Fshop/merge_requests/1",
        ]
    );
    let reqs = fake.requests();
    for r in &reqs {
        assert_headers(ForgeVendor::GitLab, r);
    }
    assert_eq!(
        reqs[3].body,
        json!({"title": "Fix the empty cart", "description": "Body v2"})
    );
    assert_eq!(fake.pulls().len(), 1);
    assert_eq!(fake.pulls()[0].body, "Body v2");
}

#[tokio::test]
async fn gitlab_draft_is_a_title_prefix_and_stays_on_update() {
    let (fake, client) = start(ForgeVendor::GitLab);
    let got = client.create_or_update_pr(&pr("b", true)).await.unwrap();
    assert!(got.draft);
    assert_eq!(
        fake.requests()[0].body["title"],
        json!("Draft: Fix the empty cart")
    );
    let got = client.create_or_update_pr(&pr("b2", false)).await.unwrap();
    assert!(got.draft, "an update must not mark a draft ready");
    assert_eq!(
        fake.requests()[3].body["title"],
        json!("Draft: Fix the empty cart")
    );
}

#[tokio::test]
async fn gitlab_errors() {
    let (fake, client) = start(ForgeVendor::GitLab);

    let wrong = client_with(&fake, "glpat-wrongwrongwrong");
    let e = wrong
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Auth, Some(401)));
    assert!(e.to_string().contains("401 Unauthorized"), "{e}");
    assert!(e.to_string().contains(ENV), "{e}");
    assert!(!e.to_string().contains("glpat-wrongwrongwrong"), "{e}");

    let other = ForgeClient::new(
        &config(&fake),
        "https://gitlab.example/acme/other.git",
        Secret::new(TOKEN),
    )
    .unwrap();
    let e = other
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::NotFound, Some(404)));
    assert!(e.to_string().contains("404 Project Not Found"), "{e}");

    fake.inject(Fault::new(ForgeVendor::GitLab, 429, "Retry later").header("retry-after", "17"));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::RateLimited, Some(429)));
    assert!(e.retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));

    fake.inject(Fault::new(ForgeVendor::GitLab, 403, "403 Forbidden"));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Forbidden, Some(403)));
    assert!(!e.retryable(), "a GitLab 403 is not a rate limit");

    fake.inject(Fault::new(
        ForgeVendor::GitLab,
        500,
        "500 Internal Server Error",
    ));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Server, Some(500)));
    assert!(e.retryable());

    fake.inject(Fault {
        method: Some("POST".into()),
        status: 400,
        body: json!({"message": {"target_branch": ["is invalid"]}}),
        headers: vec![],
    });
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Validation, Some(400)));
    assert!(e.to_string().contains("target_branch is invalid"), "{e}");
}

// ---------------------------------------------------------------------------
// Gitea
// ---------------------------------------------------------------------------

#[tokio::test]
async fn gitea_creates_a_pull_request() {
    let (fake, client) = start(ForgeVendor::Gitea);
    let got = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    assert_eq!((got.number, got.action), (1, PrAction::Created));
    assert_eq!(got.url, "https://gitea.example/tea/shop/pulls/1");
    let reqs = fake.requests();
    assert_eq!(lines(&fake), ["POST /repos/tea/shop/pulls"]);
    assert_headers(ForgeVendor::Gitea, &reqs[0]);
    assert_eq!(
        reqs[0].body,
        json!({
            "head": BRANCH,
            "base": "main",
            "title": "Fix the empty cart",
            "body": "Body v1",
        })
    );
}

#[tokio::test]
async fn gitea_follow_up_updates_the_same_pull_request_across_pages() {
    let (fake, client) = start(ForgeVendor::Gitea);
    for i in 0..55 {
        fake.add_pull(&format!("errand/other-{i}"), "main", "other", false);
    }
    let first = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    assert_eq!(first.number, 56);
    let second = client
        .create_or_update_pr(&pr("Body v2", false))
        .await
        .unwrap();
    assert_eq!((second.number, second.action), (56, PrAction::Updated));
    assert_eq!(
        lines(&fake),
        [
            "POST /repos/tea/shop/pulls",
            "POST /repos/tea/shop/pulls",
            "GET /repos/tea/shop/pulls?state=open&limit=50&page=1",
            "GET /repos/tea/shop/pulls?state=open&limit=50&page=2",
            "PATCH /repos/tea/shop/pulls/56",
        ]
    );
    let reqs = fake.requests();
    for r in &reqs {
        assert_headers(ForgeVendor::Gitea, r);
    }
    assert_eq!(
        reqs[4].body,
        json!({"title": "Fix the empty cart", "body": "Body v2"})
    );
    assert_eq!(fake.pulls()[55].body, "Body v2");
}

#[tokio::test]
async fn gitea_already_exists_as_422_is_handled_too() {
    let (fake, client) = start(ForgeVendor::Gitea);
    let n = fake.add_pull(BRANCH, "main", "WIP: old title", false);
    fake.inject(
        Fault::new(
            ForgeVendor::Gitea,
            422,
            "pull request already exists for these targets [id: 1, issue_id: 1, head_repo_id: 1, base_repo_id: 1]",
        )
        .on("POST"),
    );
    let got = client
        .create_or_update_pr(&pr("new body", false))
        .await
        .unwrap();
    assert_eq!((got.number, got.action), (n, PrAction::Updated));
    // It was a work-in-progress pull request, and stays one.
    assert!(got.draft);
    assert_eq!(
        fake.requests()[2].body["title"],
        json!("WIP: Fix the empty cart")
    );
}

#[tokio::test]
async fn gitea_draft_is_a_wip_prefix() {
    let (fake, client) = start(ForgeVendor::Gitea);
    let got = client.create_or_update_pr(&pr("b", true)).await.unwrap();
    assert!(got.draft);
    assert_eq!(
        fake.requests()[0].body["title"],
        json!("WIP: Fix the empty cart")
    );
}

#[tokio::test]
async fn gitea_errors() {
    let (fake, client) = start(ForgeVendor::Gitea);
    let wrong = client_with(&fake, "gitea-wrong-token-123");
    let e = wrong
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Auth, Some(401)));
    assert!(e.to_string().contains(ENV) && !e.to_string().contains("gitea-wrong-token-123"));

    let other = ForgeClient::new(
        &config(&fake),
        "git@gitea.example:tea/nope.git",
        Secret::new(TOKEN),
    )
    .unwrap();
    let e = other
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::NotFound, Some(404)));

    fake.inject(Fault::new(ForgeVendor::Gitea, 423, "repo is archived"));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Validation, Some(423)));
    assert!(!e.retryable());
    assert!(e.to_string().contains("repo is archived"), "{e}");

    fake.inject(Fault::new(ForgeVendor::Gitea, 503, "busy").header("retry-after", "3"));
    let e = client
        .create_or_update_pr(&pr("b", false))
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Server, Some(503)));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert!(e.retryable());
}

// ---------------------------------------------------------------------------
// Refused before any request
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refuses_heads_outside_errand_and_bad_settings_without_a_request() {
    let (fake, client) = start(ForgeVendor::GitHub);
    for head in ["main", "feature/x", "errand/x:main", "acme:errand/x"] {
        let mut r = pr("b", false);
        r.head = head.to_string();
        let e = client.create_or_update_pr(&r).await.err().unwrap();
        assert_eq!(e.kind, ForgeErrorKind::Config, "{head}: {e}");
    }
    let mut r = pr("b", false);
    r.base = BRANCH.to_string();
    assert_eq!(
        client.create_or_update_pr(&r).await.err().unwrap().kind,
        ForgeErrorKind::Config
    );
    assert!(fake.requests().is_empty());

    // Remote URLs that do not name a repository.
    for url in [
        "/srv/git/shop.git",
        "https://github.com/acme",
        "https://github.com/a/b/c",
    ] {
        let e = ForgeClient::new(&config(&fake), url, Secret::new(TOKEN))
            .err()
            .unwrap();
        assert_eq!(e.kind, ForgeErrorKind::Config, "{url}");
        assert!(e.to_string().contains("cannot tell the repository"), "{e}");
    }
    // Gitea needs an API URL.
    let cfg = ForgeConfig {
        kind: ForgeKind::Gitea,
        api_url: None,
        token_env: ENV.into(),
        username: None,
    };
    let e = ForgeClient::new(&cfg, "https://h/tea/shop.git", Secret::new(TOKEN))
        .err()
        .unwrap();
    assert!(e.to_string().contains("api_url is required"), "{e}");
    // A missing token names its variable.
    let cfg = ForgeConfig {
        kind: ForgeKind::Github,
        api_url: None,
        token_env: "ERRAND_TEST_SURELY_UNSET_TOKEN".into(),
        username: None,
    };
    let e = ForgeClient::from_env(&cfg, "https://github.com/acme/shop")
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::Config);
    assert!(
        e.to_string().contains("ERRAND_TEST_SURELY_UNSET_TOKEN"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Closing a superseded pull request
// ---------------------------------------------------------------------------

const COMMENT: &str = "Superseded by #2 (attempt 2 of task 1a2b3c4d, picked by alice).\n\nhttps://forge.example/pull/2";

/// Opens the pull request from BRANCH through the client, closes it with COMMENT and checks
/// the exact requests (after the create), their bodies and the fake's state.
async fn closes_and_comments(
    v: ForgeVendor,
    expect: [&str; 3],
    close_body: serde_json::Value,
    comment_url: &str,
) {
    let (fake, client) = start(v);
    let opened = client
        .create_or_update_pr(&pr("Body v1", false))
        .await
        .unwrap();
    let got = client
        .close_pr(opened.number, BRANCH, COMMENT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.outcome, CloseOutcome::Closed);
    assert_eq!(got.number, opened.number);
    assert_eq!(got.url, opened.url);
    assert_eq!(got.comment_url.as_deref(), Some(comment_url));
    assert!(got.comment_error.is_none());

    let reqs = fake.requests();
    assert_eq!(lines(&fake)[1..], expect);
    for r in &reqs {
        assert_headers(v, r);
    }
    assert_eq!(reqs[2].body, close_body);
    assert_eq!(reqs[3].body, json!({ "body": COMMENT }));
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 1);
    assert!(!pulls[0].open && !pulls[0].merged, "{pulls:?}");
    let comments = fake.comments();
    assert_eq!(comments.len(), 1);
    assert_eq!(
        (comments[0].number, comments[0].body.as_str()),
        (opened.number, COMMENT)
    );

    // Closing again finds it closed: one read, no second close or comment.
    let again = client
        .close_pr(opened.number, BRANCH, COMMENT)
        .await
        .unwrap();
    assert_eq!(again.outcome, CloseOutcome::AlreadyClosed);
    assert_eq!(again.comment_url, None);
    assert_eq!(fake.requests().len(), 5);
    assert_eq!(fake.requests()[4].method, "GET");
    assert_eq!(fake.comments().len(), 1);
}

#[tokio::test]
async fn github_closes_a_pull_request_with_a_comment() {
    closes_and_comments(
        ForgeVendor::GitHub,
        [
            "GET /repos/acme/shop/pulls/1",
            "PATCH /repos/acme/shop/pulls/1",
            "POST /repos/acme/shop/issues/1/comments",
        ],
        json!({"state": "closed"}),
        "https://github.example/acme/shop/pull/1#issuecomment-5001",
    )
    .await;
}

#[tokio::test]
async fn gitlab_closes_a_merge_request_with_a_note() {
    closes_and_comments(
        ForgeVendor::GitLab,
        [
            "GET /projects/acme%2Fweb%2Fshop/merge_requests/1",
            "PUT /projects/acme%2Fweb%2Fshop/merge_requests/1",
            "POST /projects/acme%2Fweb%2Fshop/merge_requests/1/notes",
        ],
        json!({"state_event": "close"}),
        "https://gitlab.example/acme/web/shop/-/merge_requests/1#note_5001",
    )
    .await;
}

#[tokio::test]
async fn gitea_closes_a_pull_request_with_a_comment() {
    closes_and_comments(
        ForgeVendor::Gitea,
        [
            "GET /repos/tea/shop/pulls/1",
            "PATCH /repos/tea/shop/pulls/1",
            "POST /repos/tea/shop/issues/1/comments",
        ],
        json!({"state": "closed"}),
        "https://gitea.example/tea/shop/pulls/1#issuecomment-5001",
    )
    .await;
}

#[tokio::test]
async fn a_merged_pull_request_is_left_as_it_is() {
    for v in [ForgeVendor::GitHub, ForgeVendor::GitLab, ForgeVendor::Gitea] {
        let (fake, client) = start(v);
        let n = fake.add_pull(BRANCH, "main", "Fix the empty cart", false);
        fake.merge_pull(n);
        let got = client.close_pr(n, BRANCH, COMMENT).await.unwrap();
        assert_eq!(got.outcome, CloseOutcome::Merged, "{v:?}");
        assert_eq!(fake.requests().len(), 1, "{v:?}: only the read");
        assert!(fake.comments().is_empty());
        assert!(fake.pulls()[0].merged);
    }
}

#[tokio::test]
async fn only_a_pull_request_from_the_expected_branch_is_closed() {
    for v in [ForgeVendor::GitHub, ForgeVendor::GitLab, ForgeVendor::Gitea] {
        let (fake, client) = start(v);
        let n = fake.add_pull("errand/other-branch", "main", "Someone else's", false);
        let e = client.close_pr(n, BRANCH, COMMENT).await.err().unwrap();
        assert_eq!(e.kind, ForgeErrorKind::Config, "{v:?}");
        assert!(e.to_string().contains("errand/other-branch"), "{e}");
        assert!(
            e.to_string().contains("only the pull requests it opened"),
            "{e}"
        );
        assert_eq!(fake.requests().len(), 1, "{v:?}: only the read");
        assert!(fake.pulls()[0].open);
        assert!(fake.comments().is_empty());
    }
    // A head outside errand/ or an empty comment: no request at all.
    let (fake, client) = start(ForgeVendor::GitHub);
    let n = fake.add_pull("main-feature", "main", "x", false);
    let e = client
        .close_pr(n, "main-feature", COMMENT)
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ForgeErrorKind::Config);
    let e = client.close_pr(n, BRANCH, "  ").await.err().unwrap();
    assert_eq!(e.kind, ForgeErrorKind::Config);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_refused_close_is_an_error_and_posts_no_comment() {
    for (v, method) in [
        (ForgeVendor::GitHub, "PATCH"),
        (ForgeVendor::GitLab, "PUT"),
        (ForgeVendor::Gitea, "PATCH"),
    ] {
        let (fake, client) = start(v);
        let n = fake.add_pull(BRANCH, "main", "Fix the empty cart", false);
        fake.inject(
            Fault::new(v, 403, "Resource not accessible by personal access token").on(method),
        );
        let e = client.close_pr(n, BRANCH, COMMENT).await.err().unwrap();
        assert_eq!(
            (e.kind, e.status),
            (ForgeErrorKind::Forbidden, Some(403)),
            "{v:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("may not close"), "{msg}");
        assert!(msg.contains("Resource not accessible"), "{msg}");
        assert!(msg.contains(ENV), "{msg}");
        assert!(!msg.contains(TOKEN));
        assert!(fake.pulls()[0].open, "{v:?}");
        assert!(fake.comments().is_empty());
        assert_eq!(fake.requests().len(), 2);
    }
}

#[tokio::test]
async fn a_failed_comment_does_not_undo_the_close() {
    let (fake, client) = start(ForgeVendor::GitHub);
    let n = fake.add_pull(BRANCH, "main", "Fix the empty cart", false);
    fake.inject(Fault::new(ForgeVendor::GitHub, 502, "Bad Gateway").on("POST"));
    let got = client.close_pr(n, BRANCH, COMMENT).await.unwrap();
    assert_eq!(got.outcome, CloseOutcome::Closed);
    assert_eq!(got.comment_url, None);
    let e = got.comment_error.expect("the comment's error");
    assert_eq!((e.kind, e.status), (ForgeErrorKind::Server, Some(502)));
    assert!(!fake.pulls()[0].open);
    assert_eq!(
        lines(&fake),
        [
            "GET /repos/acme/shop/pulls/1",
            "PATCH /repos/acme/shop/pulls/1",
            "POST /repos/acme/shop/issues/1/comments",
        ]
    );
}

#[tokio::test]
async fn closing_a_missing_pull_request_names_it() {
    for (v, name) in [
        (ForgeVendor::GitHub, "pull request #42"),
        (ForgeVendor::GitLab, "pull request !42"),
        (ForgeVendor::Gitea, "pull request #42"),
    ] {
        let (fake, client) = start(v);
        let e = client.close_pr(42, BRANCH, COMMENT).await.err().unwrap();
        assert_eq!(
            (e.kind, e.status),
            (ForgeErrorKind::NotFound, Some(404)),
            "{v:?}"
        );
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(fake.requests().len(), 1);
    }
}
