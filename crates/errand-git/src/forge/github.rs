//! GitHub's REST API (`X-GitHub-Api-Version: 2022-11-28`): pull requests.

use super::{
    ForgeClient, ForgeErrorKind, ForgeResult, PrAction, PrRequest, PrState, PullRequest,
    query_value, str_field,
};
use crate::percent_encode;
use reqwest::Method;
use serde_json::{Value, json};

fn pulls_path(c: &ForgeClient) -> String {
    format!(
        "/repos/{}/{}/pulls",
        percent_encode(&c.repo().namespace),
        percent_encode(&c.repo().name)
    )
}

pub(super) async fn create_or_update(c: &ForgeClient, req: &PrRequest) -> ForgeResult<PullRequest> {
    let body = json!({
        "title": req.title,
        "head": req.head,
        "base": req.base,
        "body": req.body,
        "draft": req.draft,
    });
    let a = c.call(Method::POST, &pulls_path(c), Some(&body)).await?;
    if a.status == 201 {
        return parse(&a.json, PrAction::Created).ok_or_else(|| c.bad_answer("the create", &a));
    }
    if a.status == 422 && already_exists(&a.json) {
        let Some(existing) = find_open(c, &req.head, &req.base).await? else {
            return Err(c.err(
                ForgeErrorKind::Validation,
                format!(
                    "GitHub says a pull request from {} already exists, but none is open for it",
                    req.head
                ),
            ));
        };
        return update(c, existing.number, req).await;
    }
    Err(c.error_for(&a, "open pull requests"))
}

async fn update(c: &ForgeClient, number: u64, req: &PrRequest) -> ForgeResult<PullRequest> {
    let body = json!({ "title": req.title, "body": req.body });
    let path = format!("{}/{number}", pulls_path(c));
    let a = c.call(Method::PATCH, &path, Some(&body)).await?;
    if a.status == 200 {
        return parse(&a.json, PrAction::Updated).ok_or_else(|| c.bad_answer("the update", &a));
    }
    Err(c.error_for(&a, "update pull requests"))
}

pub(super) async fn find_open(
    c: &ForgeClient,
    head: &str,
    base: &str,
) -> ForgeResult<Option<PullRequest>> {
    let path = format!(
        "{}?head={}&state=open",
        pulls_path(c),
        query_value(&format!("{}:{head}", c.repo().namespace))
    );
    let a = c.call(Method::GET, &path, None).await?;
    if a.status != 200 {
        return Err(c.error_for(&a, "list pull requests"));
    }
    let Some(list) = a.json.as_array() else {
        return Err(c.bad_answer("the list", &a));
    };
    let prs: Vec<PullRequest> = list
        .iter()
        .filter_map(|v| parse(v, PrAction::Updated))
        .filter(|p| p.head == head)
        .collect();
    Ok(pick(prs, base))
}

/// The one into `base`, else the first.
pub(super) fn pick(prs: Vec<PullRequest>, base: &str) -> Option<PullRequest> {
    let i = prs.iter().position(|p| p.base == base).unwrap_or(0);
    prs.into_iter().nth(i)
}

fn already_exists(v: &Value) -> bool {
    error_text(v)
        .to_ascii_lowercase()
        .contains("already exists")
}

fn parse(v: &Value, action: PrAction) -> Option<PullRequest> {
    Some(PullRequest {
        number: v.get("number")?.as_u64()?,
        url: str_field(v, &["html_url"])?,
        title: str_field(v, &["title"]).unwrap_or_default(),
        head: str_field(v, &["head", "ref"])?,
        base: str_field(v, &["base", "ref"])?,
        draft: v.get("draft").and_then(Value::as_bool).unwrap_or(false),
        action,
    })
}

/// A pull request with its state: `state` is `open` or `closed`; a merged one is closed with
/// `merged: true` (or a `merged_at`).
pub(super) fn parse_with_state(v: &Value) -> Option<(PullRequest, PrState)> {
    let pr = parse(v, PrAction::Updated)?;
    let merged = v.get("merged").and_then(Value::as_bool).unwrap_or(false)
        || v.get("merged_at").is_some_and(|m| !m.is_null());
    let state = match (str_field(v, &["state"])?.as_str(), merged) {
        (_, true) => PrState::Merged,
        ("open", false) => PrState::Open,
        ("closed", false) => PrState::Closed,
        _ => return None,
    };
    Some((pr, state))
}

/// Comments on pull request `number` (an issue comment: pull requests are issues) and returns
/// the comment's page.
pub(super) async fn comment(c: &ForgeClient, number: u64, body: &str) -> ForgeResult<String> {
    let path = format!(
        "/repos/{}/{}/issues/{number}/comments",
        percent_encode(&c.repo().namespace),
        percent_encode(&c.repo().name)
    );
    let a = c
        .call(Method::POST, &path, Some(&json!({ "body": body })))
        .await?;
    if a.status != 201 {
        return Err(c.not_found_pr(&a, number, "comment on pull requests"));
    }
    str_field(&a.json, &["html_url"]).ok_or_else(|| c.bad_answer("the comment", &a))
}

/// `message` and every `errors[].message` (or `field` + `code`).
pub(super) fn error_text(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = v.get("message").and_then(Value::as_str) {
        parts.push(m.to_string());
    } else if let Some(s) = v.as_str() {
        parts.push(s.to_string());
    }
    if let Some(errs) = v.get("errors").and_then(Value::as_array) {
        for e in errs {
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                parts.push(m.to_string());
            } else if let Some(s) = e.as_str() {
                parts.push(s.to_string());
            } else {
                let field = e.get("field").and_then(Value::as_str).unwrap_or("?");
                let code = e.get("code").and_then(Value::as_str).unwrap_or("invalid");
                parts.push(format!("{field}: {code}"));
            }
        }
    }
    parts.join("; ")
}
