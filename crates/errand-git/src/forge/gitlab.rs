//! GitLab's REST API (v4): merge requests.

use super::{
    ForgeClient, ForgeErrorKind, ForgeResult, PrAction, PrRequest, PrState, PullRequest,
    github::pick, query_value, str_field, with_prefix,
};
use crate::percent_encode;
use reqwest::Method;
use serde_json::{Value, json};

/// GitLab marks a draft with a title prefix (`Draft:`, also `[Draft]` and `(Draft)`).
const DRAFT: &str = "Draft: ";

fn mrs_path(c: &ForgeClient) -> String {
    // The project is named by its URL-encoded full path: group%2Fsub%2Fproject.
    format!(
        "/projects/{}/merge_requests",
        percent_encode(&c.repo().full())
    )
}

pub(super) async fn create_or_update(c: &ForgeClient, req: &PrRequest) -> ForgeResult<PullRequest> {
    let title = if req.draft {
        with_prefix(&req.title, DRAFT)
    } else {
        req.title.clone()
    };
    let body = json!({
        "source_branch": req.head,
        "target_branch": req.base,
        "title": title,
        "description": req.body,
    });
    let a = c.call(Method::POST, &mrs_path(c), Some(&body)).await?;
    if a.status == 201 {
        return parse(&a.json, PrAction::Created).ok_or_else(|| c.bad_answer("the create", &a));
    }
    if a.status == 409 {
        let Some(existing) = find_open(c, &req.head, &req.base).await? else {
            return Err(c.err(
                ForgeErrorKind::Validation,
                format!(
                    "GitLab says a merge request from {} already exists, but none is open for it",
                    req.head
                ),
            ));
        };
        return update(c, &existing, req).await;
    }
    Err(c.error_for(&a, "open merge requests"))
}

async fn update(
    c: &ForgeClient,
    existing: &PullRequest,
    req: &PrRequest,
) -> ForgeResult<PullRequest> {
    // Keep the merge request a draft if it is one (the prefix is what makes it so).
    let title = if existing.draft {
        with_prefix(&req.title, DRAFT)
    } else {
        req.title.clone()
    };
    let body = json!({ "title": title, "description": req.body });
    let path = format!("{}/{}", mrs_path(c), existing.number);
    let a = c.call(Method::PUT, &path, Some(&body)).await?;
    if a.status == 200 {
        return parse(&a.json, PrAction::Updated).ok_or_else(|| c.bad_answer("the update", &a));
    }
    Err(c.error_for(&a, "update merge requests"))
}

pub(super) async fn find_open(
    c: &ForgeClient,
    head: &str,
    base: &str,
) -> ForgeResult<Option<PullRequest>> {
    let path = format!(
        "{}?source_branch={}&state=opened",
        mrs_path(c),
        query_value(head)
    );
    let a = c.call(Method::GET, &path, None).await?;
    if a.status != 200 {
        return Err(c.error_for(&a, "list merge requests"));
    }
    let Some(list) = a.json.as_array() else {
        return Err(c.bad_answer("the list", &a));
    };
    let mrs: Vec<PullRequest> = list
        .iter()
        .filter_map(|v| parse(v, PrAction::Updated))
        .filter(|p| p.head == head)
        .collect();
    Ok(pick(mrs, base))
}

fn is_draft_title(t: &str) -> bool {
    let l = t.trim_start().to_ascii_lowercase();
    l.starts_with("draft:") || l.starts_with("[draft]") || l.starts_with("(draft)")
}

fn parse(v: &Value, action: PrAction) -> Option<PullRequest> {
    let title = str_field(v, &["title"]).unwrap_or_default();
    let draft = v
        .get("draft")
        .or_else(|| v.get("work_in_progress"))
        .and_then(Value::as_bool)
        .unwrap_or_else(|| is_draft_title(&title));
    Some(PullRequest {
        number: v.get("iid")?.as_u64()?,
        url: str_field(v, &["web_url"])?,
        head: str_field(v, &["source_branch"])?,
        base: str_field(v, &["target_branch"])?,
        title,
        draft,
        action,
    })
}

/// A merge request with its state: `opened`, `closed`, `merged`, or `locked` (being merged;
/// still open).
pub(super) fn parse_with_state(v: &Value) -> Option<(PullRequest, PrState)> {
    let mr = parse(v, PrAction::Updated)?;
    let state = match str_field(v, &["state"])?.as_str() {
        "opened" | "locked" => PrState::Open,
        "closed" => PrState::Closed,
        "merged" => PrState::Merged,
        _ => return None,
    };
    Some((mr, state))
}

/// Adds a note to merge request `iid` and returns its address on the merge request's page
/// (`web_url#note_ID`; a note has no page of its own).
pub(super) async fn comment(
    c: &ForgeClient,
    iid: u64,
    mr_url: &str,
    body: &str,
) -> ForgeResult<String> {
    let path = format!("{}/{iid}/notes", mrs_path(c));
    let a = c
        .call(Method::POST, &path, Some(&json!({ "body": body })))
        .await?;
    if a.status != 201 {
        return Err(c.not_found_pr(&a, iid, "comment on merge requests"));
    }
    match a.json.get("id").and_then(Value::as_u64) {
        Some(id) => Ok(format!("{mr_url}#note_{id}")),
        None => Err(c.bad_answer("the note", &a)),
    }
}

/// GitLab's `message` is a string, a list, or an object of lists by field; OAuth errors use
/// `error` and `error_description`.
pub(super) fn error_text(v: &Value) -> String {
    fn flat(v: &Value, out: &mut Vec<String>, key: Option<&str>) {
        match v {
            Value::String(s) => out.push(match key {
                Some(k) => format!("{k} {s}"),
                None => s.clone(),
            }),
            Value::Array(a) => a.iter().for_each(|x| flat(x, out, key)),
            Value::Object(o) => o.iter().for_each(|(k, x)| flat(x, out, Some(k))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(m) = v.get("message") {
        flat(m, &mut out, None);
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        out.push(e.to_string());
    }
    if let Some(e) = v.get("error_description").and_then(Value::as_str) {
        out.push(e.to_string());
    }
    if out.is_empty()
        && let Some(s) = v.as_str()
    {
        out.push(s.to_string());
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        assert_eq!(
            error_text(
                &json!({"message": ["Another open merge request already exists for this source branch: !3"]})
            ),
            "Another open merge request already exists for this source branch: !3"
        );
        assert_eq!(
            error_text(
                &json!({"message": {"title": ["is too long"], "target_branch": ["is invalid"]}})
            ),
            "title is too long; target_branch is invalid"
        );
        assert_eq!(
            error_text(&json!({"message": "401 Unauthorized"})),
            "401 Unauthorized"
        );
        assert_eq!(
            error_text(
                &json!({"error": "invalid_token", "error_description": "Token was revoked"})
            ),
            "invalid_token; Token was revoked"
        );
    }

    #[test]
    fn draft_titles() {
        assert!(is_draft_title("Draft: x"));
        assert!(is_draft_title("[Draft] x"));
        assert!(!is_draft_title("Drafting x"));
    }
}
