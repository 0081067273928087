//! Gitea's REST API (v1): pull requests.

use super::{
    ForgeClient, ForgeErrorKind, ForgeResult, PrAction, PrRequest, PrState, PullRequest,
    github::pick, str_field, with_prefix,
};
use crate::percent_encode;
use reqwest::Method;
use serde_json::{Value, json};

/// Gitea marks work in progress with a title prefix (its default `WORK_IN_PROGRESS_PREFIXES`
/// are `WIP:` and `[WIP]`).
const DRAFT: &str = "WIP: ";
/// Page size of the open pull request list, and how many pages are read at most.
const PAGE: usize = 50;
const MAX_PAGES: usize = 20;

fn pulls_path(c: &ForgeClient) -> String {
    format!(
        "/repos/{}/{}/pulls",
        percent_encode(&c.repo().namespace),
        percent_encode(&c.repo().name)
    )
}

pub(super) async fn create_or_update(c: &ForgeClient, req: &PrRequest) -> ForgeResult<PullRequest> {
    let title = if req.draft {
        with_prefix(&req.title, DRAFT)
    } else {
        req.title.clone()
    };
    let body = json!({
        "head": req.head,
        "base": req.base,
        "title": title,
        "body": req.body,
    });
    let a = c.call(Method::POST, &pulls_path(c), Some(&body)).await?;
    if a.status == 201 {
        return parse(&a.json, PrAction::Created).ok_or_else(|| c.bad_answer("the create", &a));
    }
    let exists = a.status == 409
        || (a.status == 422
            && error_text(&a.json)
                .to_ascii_lowercase()
                .contains("already exists"));
    if exists {
        let Some(existing) = find_open(c, &req.head, &req.base).await? else {
            return Err(c.err(
                ForgeErrorKind::Validation,
                format!(
                    "Gitea says a pull request from {} already exists, but none is open for it",
                    req.head
                ),
            ));
        };
        return update(c, &existing, req).await;
    }
    Err(c.error_for(&a, "open pull requests"))
}

async fn update(
    c: &ForgeClient,
    existing: &PullRequest,
    req: &PrRequest,
) -> ForgeResult<PullRequest> {
    let title = if existing.draft {
        with_prefix(&req.title, DRAFT)
    } else {
        req.title.clone()
    };
    let body = json!({ "title": title, "body": req.body });
    let path = format!("{}/{}", pulls_path(c), existing.number);
    let a = c.call(Method::PATCH, &path, Some(&body)).await?;
    // Gitea answers an edit with 201.
    if a.status == 200 || a.status == 201 {
        return parse(&a.json, PrAction::Updated).ok_or_else(|| c.bad_answer("the update", &a));
    }
    Err(c.error_for(&a, "update pull requests"))
}

pub(super) async fn find_open(
    c: &ForgeClient,
    head: &str,
    base: &str,
) -> ForgeResult<Option<PullRequest>> {
    let mut found = Vec::new();
    for page in 1..=MAX_PAGES {
        let path = format!("{}?state=open&limit={PAGE}&page={page}", pulls_path(c));
        let a = c.call(Method::GET, &path, None).await?;
        if a.status != 200 {
            return Err(c.error_for(&a, "list pull requests"));
        }
        let Some(list) = a.json.as_array() else {
            return Err(c.bad_answer("the list", &a));
        };
        found.extend(
            list.iter()
                .filter_map(|v| parse(v, PrAction::Updated))
                .filter(|p| p.head == head),
        );
        if found.iter().any(|p| p.base == base) || list.len() < PAGE {
            break;
        }
    }
    Ok(pick(found, base))
}

fn is_draft_title(t: &str) -> bool {
    let l = t.trim_start().to_ascii_lowercase();
    l.starts_with("wip:") || l.starts_with("[wip]")
}

fn parse(v: &Value, action: PrAction) -> Option<PullRequest> {
    let title = str_field(v, &["title"]).unwrap_or_default();
    let draft = v
        .get("draft")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| is_draft_title(&title));
    Some(PullRequest {
        number: v.get("number")?.as_u64()?,
        url: str_field(v, &["html_url"])?,
        head: str_field(v, &["head", "ref"])?,
        base: str_field(v, &["base", "ref"])?,
        title,
        draft,
        action,
    })
}

/// A pull request with its state: `state` is `open` or `closed`; a merged one is closed with
/// `merged: true`.
pub(super) fn parse_with_state(v: &Value) -> Option<(PullRequest, PrState)> {
    let pr = parse(v, PrAction::Updated)?;
    let merged = v.get("merged").and_then(Value::as_bool).unwrap_or(false);
    let state = match (str_field(v, &["state"])?.as_str(), merged) {
        (_, true) => PrState::Merged,
        ("open", false) => PrState::Open,
        ("closed", false) => PrState::Closed,
        _ => return None,
    };
    Some((pr, state))
}

/// Gitea's `message`, and `errors` when it lists some.
pub(super) fn error_text(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = v.get("message").and_then(Value::as_str) {
        parts.push(m.to_string());
    } else if let Some(s) = v.as_str() {
        parts.push(s.to_string());
    }
    if let Some(errs) = v.get("errors").and_then(Value::as_array) {
        parts.extend(errs.iter().filter_map(Value::as_str).map(str::to_string));
    }
    parts.join("; ")
}
