//! REST handlers under `/api/v1`.

use crate::AppState;
use crate::error::ApiError;
use crate::plan::{approve, reject, revise};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use errand_core::text::{slugify, title_of};
use errand_core::{
    EnvironmentSnapshot, NewAttempt, NewReview, NewTask, Status, Task, TaskRequest, new_id,
    short_id,
};
use errand_store::TaskQuery;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

type AppResult<T> = Result<T, ApiError>;
type Shared = State<Arc<AppState>>;

/// A JSON response with every secret value the server knows redacted (the worker already
/// redacted what it recorded; this is the second line). No extra work without secrets.
pub(crate) fn json_out<T: serde::Serialize>(s: &AppState, body: T) -> Response {
    if s.redactor.is_empty() {
        return Json(body).into_response();
    }
    match serde_json::to_value(&body) {
        Ok(mut v) => {
            s.redactor.redact_json(&mut v);
            Json(v).into_response()
        }
        Err(e) => ApiError::internal(format!("encoding the response: {e}")).into_response(),
    }
}

/// JSON body extractor whose rejections are JSON API errors naming the problem.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let mut e =
                    ApiError::bad_request(format!("invalid request body: {}", rej.body_text()));
                if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    e.status = StatusCode::PAYLOAD_TOO_LARGE;
                }
                if rej.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                    e.message = "send the body as JSON with Content-Type: application/json".into();
                }
                Err(e)
            }
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/tasks", post(create_task).get(list_tasks))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/api/v1/tasks/{id}/followup", post(followup))
        .route("/api/v1/tasks/{id}/approve", post(approve))
        .route("/api/v1/tasks/{id}/revise", post(revise))
        .route("/api/v1/tasks/{id}/reject", post(reject))
        .route("/api/v1/tasks/{id}/pr", post(open_pr))
        .route("/api/v1/tasks/{id}/pick", post(pick))
        .route("/api/v1/tasks/{id}/events", get(events))
        .route("/api/v1/tasks/{id}/events/stream", get(crate::sse::stream))
        .route("/api/v1/tasks/{id}/diff", get(diff))
        .route("/api/v1/tasks/{id}/patch", get(patch))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/models/check", post(check_models))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/openapi.json") })
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

async fn health(State(s): Shared) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "workers": s.workers,
        "sandbox": s.sandbox_name,
    }))
}

/// Configured providers and models, and where each key comes from (never the key).
async fn list_models(State(s): Shared) -> Json<serde_json::Value> {
    let default = errand_model::registry::default_model(&s.config).ok();
    Json(json!({
        "default_model": default,
        "providers": errand_model::registry::list(&s.config),
    }))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    #[serde(default)]
    provider: Option<String>,
}

/// One cheap request per model: reachable, key valid, model exists.
async fn check_models(
    State(s): Shared,
    body: Option<Json<CheckRequest>>,
) -> AppResult<Json<serde_json::Value>> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let reports = errand_model::registry::check(&s.config, req.provider.as_deref())
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({ "results": reports })))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

const TRIGGERS: &[&str] = &[
    "cli",
    "api",
    "web",
    "cron",
    "github",
    "slack",
    "linear",
    "pagerduty",
    "webhook",
];
const MAX_PROMPT: usize = 256 * 1024;

async fn create_task(
    State(s): Shared,
    ApiJson(req): ApiJson<TaskRequest>,
) -> AppResult<(StatusCode, Response)> {
    let new = validate(&s, req).await?;
    let task = s.store.create_task(new).await?;
    Ok((StatusCode::CREATED, json_out(&s, task)))
}

/// Turns a request into a fully resolved task, or says exactly what is wrong. Nothing is
/// stored here (a mirror fetch for a URL repo is a cache, not task state).
async fn validate(s: &AppState, req: TaskRequest) -> AppResult<NewTask> {
    let prompt = req.prompt.trim().to_string();
    if prompt.is_empty() {
        return Err(ApiError::bad_request(
            "the prompt is empty; describe the task, for example: errand run \"Fix the failing test in orders\"",
        ));
    }
    if prompt.len() > MAX_PROMPT {
        return Err(ApiError::bad_request(format!(
            "the prompt is {} bytes; the limit is {MAX_PROMPT}",
            prompt.len()
        )));
    }
    let mode = crate::plan::validate_mode(s, req.mode.as_deref())?;
    let env = match &req.env {
        Some(name) => {
            let env = s.config.environments.get(name).ok_or_else(|| {
                let known: Vec<&str> = s.config.environments.keys().map(String::as_str).collect();
                ApiError::bad_request(format!(
                    "unknown environment '{name}'; {}",
                    if known.is_empty() {
                        match &s.config_path {
                            Some(p) => format!("{} defines none", p.display()),
                            None => "no errand.toml is loaded; define [environments.NAME] in <data-dir>/errand.toml".to_string(),
                        }
                    } else {
                        format!("defined: {}", known.join(", "))
                    }
                ))
            })?;
            Some((name.clone(), env.clone()))
        }
        None => None,
    };
    let repo = req
        .repo
        .clone()
        .or_else(|| env.as_ref().and_then(|(_, e)| e.repo.clone()))
        .ok_or_else(|| ApiError::bad_request("no repository given; pass --repo PATH_OR_URL, or --env NAME for an environment with a repo"))?;
    let base = req
        .base
        .clone()
        .or_else(|| env.as_ref().and_then(|(_, e)| e.base.clone()));
    if let Some(b) = &base
        && (b.trim().is_empty() || b.starts_with('-') || b.contains(char::is_whitespace))
    {
        return Err(ApiError::bad_request(format!(
            "'{b}' is not a valid base ref; pass --base with a branch, tag or commit"
        )));
    }
    let (repo, resolved) = if errand_git::is_url(&repo) {
        let mirror = s
            .mirrors
            .sync(&repo)
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let r = s
            .mirrors
            .resolve(&mirror, &repo, base.as_deref())
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        (repo, r)
    } else {
        let path = PathBuf::from(&repo);
        if !path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "repo path '{repo}' is relative; the API needs an absolute path on the server (the CLI resolves it for you)"
            )));
        }
        let canon = path.canonicalize().map_err(|_| {
            ApiError::bad_request(format!(
                "'{repo}' does not exist; pass --repo with the path of a git checkout or a git URL"
            ))
        })?;
        let r = errand_git::resolve_local(&canon, base.as_deref())
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        (canon.display().to_string(), r)
    };
    if req.model.is_some() && !req.models.is_empty() {
        return Err(ApiError::bad_request(
            "pass either model or models, not both (models lists several models cycled across the attempts)",
        ));
    }
    let models: Vec<String> = if req.models.is_empty() {
        vec![match req
            .model
            .clone()
            .or_else(|| env.as_ref().and_then(|(_, e)| e.model.clone()))
        {
            Some(m) => m,
            None => errand_model::registry::default_model(&s.config)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        }]
    } else {
        req.models.clone()
    };
    let models = models
        .iter()
        .map(|m| normalize_model(m))
        .collect::<AppResult<Vec<_>>>()?;
    let model = models[0].clone();
    let attempt_count = match req.attempts {
        Some(n) if !(1..=MAX_ATTEMPTS).contains(&n) => {
            return Err(ApiError::bad_request(format!(
                "attempts is {n}; it must be between 1 and {MAX_ATTEMPTS}"
            )));
        }
        Some(n) if (n as usize) < models.len() => {
            return Err(ApiError::bad_request(format!(
                "{} models for {n} attempt{}: every model needs an attempt; pass --attempts {} or fewer models",
                models.len(),
                if n == 1 { "" } else { "s" },
                models.len()
            )));
        }
        Some(n) => n as usize,
        None if models.len() > MAX_ATTEMPTS as usize => {
            return Err(ApiError::bad_request(format!(
                "{} models: at most {MAX_ATTEMPTS} attempts run at once",
                models.len()
            )));
        }
        None => models.len(),
    };
    // Each distinct model is resolved once (keys checked, scripted turns read).
    let mut payloads: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for m in &models {
        if !payloads.contains_key(m) {
            payloads.insert(m.clone(), prepare_model(s, m).await?);
        }
    }
    let payload = payloads.get(&model).cloned().unwrap_or_default();
    let review = resolve_review(s, &req, env.as_ref().map(|(_, e)| e)).await?;
    let mut model_options = env
        .as_ref()
        .map(|(_, e)| e.model_options.clone())
        .unwrap_or_default();
    for (k, v) in &req.model_options {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(ApiError::bad_request(format!(
                "model option key '{k}' may only use letters, digits, '_', '-' and '.'"
            )));
        }
        model_options.insert(k.clone(), v.clone());
    }
    req.budget.validate().map_err(ApiError::bad_request)?;
    let budget = req.budget.or(&env
        .as_ref()
        .map(|(_, e)| e.budget)
        .unwrap_or_default()
        .or(&s.config.budget));
    let trigger = req.trigger.clone().unwrap_or_else(|| "api".into());
    if !TRIGGERS.contains(&trigger.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unknown trigger '{trigger}'; expected one of: {}",
            TRIGGERS.join(", ")
        )));
    }
    if let Some((name, e)) = &env
        && let Some(r) = &e.rootfs
        && !std::path::Path::new(r).join("usr").is_dir()
    {
        return Err(ApiError::bad_request(format!(
            "environment '{name}': rootfs '{r}' has no usr/ directory; point it at a root filesystem folder (for example one made by debootstrap)"
        )));
    }
    // Providers served to the box by the model gateway: resolved now, like the model, so a
    // missing key is refused here with the variable's name.
    let mut gateway = Vec::new();
    if let Some((name, e)) = &env {
        for g in &e.gateway {
            if gateway
                .iter()
                .any(|u: &errand_core::GatewayUpstream| &u.name == g)
            {
                return Err(ApiError::bad_request(format!(
                    "environment '{name}': gateway lists '{g}' twice"
                )));
            }
            gateway.push(
                errand_model::registry::resolve_gateway(g, &s.config)
                    .map_err(|e| ApiError::bad_request(format!("environment '{name}': {e}")))?,
            );
        }
    }
    let checks = match req.checks.clone() {
        Some(c) => c,
        None => env
            .as_ref()
            .map(|(_, e)| e.checks.clone())
            .unwrap_or_default(),
    };
    for c in &checks {
        c.validate().map_err(ApiError::bad_request)?;
    }
    let id = new_id();
    let title = title_of(&prompt, 80);
    let slug = slugify(&title, 40);
    let mut attempts = Vec::with_capacity(attempt_count);
    for i in 0..attempt_count {
        let number = i as i64 + 1;
        let branch = errand_git::branch_name(short_id(&id), &slug, number);
        errand_git::check_agent_branch(&branch).map_err(|e| ApiError::internal(e.to_string()))?;
        let m = models[i % models.len()].clone();
        attempts.push(NewAttempt {
            id: new_id(),
            number,
            branch,
            model_payload: (m != model).then(|| payloads.get(&m).cloned()).flatten(),
            model: m,
        });
    }
    Ok(NewTask {
        attempts,
        review,
        id,
        prompt,
        title,
        repo,
        base_ref: resolved.name,
        base_commit: resolved.commit,
        environment: EnvironmentSnapshot {
            name: env.as_ref().map(|(n, _)| n.clone()),
            checks,
            rootfs: env.as_ref().and_then(|(_, e)| e.rootfs.clone()),
            push: env.as_ref().is_some_and(|(_, e)| e.push),
            pr: env.as_ref().map(|(_, e)| e.pr).unwrap_or_default(),
            forge: env.as_ref().and_then(|(_, e)| e.forge.clone()),
            remote: env.as_ref().and_then(|(_, e)| e.remote.clone()),
            setup: env.as_ref().and_then(|(_, e)| e.setup.clone()),
            maintenance: env.as_ref().and_then(|(_, e)| e.maintenance.clone()),
            lockfiles: env.as_ref().and_then(|(_, e)| e.lockfiles.clone()),
            network: env
                .as_ref()
                .map(|(_, e)| e.network.clone())
                .unwrap_or_default(),
            secrets: env
                .as_ref()
                .map(|(_, e)| e.secrets.clone())
                .unwrap_or_default(),
            env: env.map(|(_, e)| e.env).unwrap_or_default(),
            gateway,
            model_options,
            budget,
            agent: s.config.agent,
        },
        model,
        model_payload: Some(payload),
        mode,
        trigger,
        created_by: req
            .created_by
            .clone()
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| "api".into()),
    })
}

/// The most attempts one task runs (best-of-N).
const MAX_ATTEMPTS: u32 = 8;

/// Resolves a model for storage with the task (its key variable checked, scripted turns read).
async fn prepare_model(s: &AppState, model: &str) -> AppResult<serde_json::Value> {
    let (m, cfg) = (model.to_string(), s.config.clone());
    tokio::task::spawn_blocking(move || errand_model::prepare(&m, &cfg))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The task's reviewer: the request's, else the environment's, else the server's
/// `review_model`; resolved now like the task's model. Findings go back to the agent
/// `max_review_rounds` times (default 1).
async fn resolve_review(
    s: &AppState,
    req: &TaskRequest,
    env: Option<&errand_core::EnvironmentConfig>,
) -> AppResult<Option<NewReview>> {
    let model = req
        .review_model
        .clone()
        .or_else(|| env.and_then(|e| e.review_model.clone()))
        .or_else(|| s.config.review_model.clone());
    let Some(model) = model else {
        if req.max_review_rounds.is_some() {
            return Err(ApiError::bad_request(
                "max_review_rounds needs a reviewer; pass --review MODEL (review_model), or set review_model in the environment or errand.toml",
            ));
        }
        return Ok(None);
    };
    if model.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the review model is empty; pass provider:model, for example --review anthropic:claude-opus-4-1",
        ));
    }
    let model = normalize_model(&model)
        .map_err(|e| ApiError::bad_request(format!("review model: {}", e.message)))?;
    let max_rounds = req
        .max_review_rounds
        .or_else(|| env.and_then(|e| e.max_review_rounds))
        .unwrap_or(1);
    if max_rounds > errand_core::config::MAX_REVIEW_ROUNDS {
        return Err(ApiError::bad_request(format!(
            "max_review_rounds is {max_rounds}; the limit is {}",
            errand_core::config::MAX_REVIEW_ROUNDS
        )));
    }
    let payload = prepare_model(s, &model)
        .await
        .map_err(|e| ApiError::bad_request(format!("review model: {}", e.message)))?;
    Ok(Some(NewReview {
        model,
        payload: Some(payload),
        max_rounds,
    }))
}

/// `scripted:` paths must be absolute on the server.
fn normalize_model(model: &str) -> AppResult<String> {
    let (provider, rest) =
        errand_model::split_model_name(model).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if provider == "scripted" && !std::path::Path::new(rest).is_absolute() {
        return Err(ApiError::bad_request(format!(
            "scripted model path '{rest}' is relative; the API needs an absolute path on the server (the CLI resolves it for you)"
        )));
    }
    Ok(model.to_string())
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_tasks(
    State(s): Shared,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match p.status.as_deref() {
        None | Some("") => None,
        Some(st) => Some(
            st.parse::<Status>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
    };
    let limit = p.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let page = s
        .store
        .list_tasks(&TaskQuery {
            status,
            limit,
            cursor: p.cursor,
        })
        .await?;
    Ok(json_out(
        &s,
        json!({"tasks": page.tasks, "next_cursor": page.next_cursor}),
    ))
}

async fn get_task(State(s): Shared, Path(id): Path<String>) -> AppResult<Response> {
    Ok(json_out(&s, s.store.get_task(&id).await?))
}

async fn cancel_task(State(s): Shared, Path(id): Path<String>) -> AppResult<Response> {
    let task = s.store.get_task(&id).await?;
    if matches!(task.status, Status::Done | Status::Failed) {
        return Err(ApiError::conflict(format!(
            "task {} already ended ({}); nothing to cancel",
            task.short_id, task.status
        )));
    }
    Ok(json_out(
        &s,
        s.store
            .cancel_task(&task.id, "cancelled by the user")
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct EventParams {
    pub attempt: Option<i64>,
    pub after: Option<i64>,
    pub limit: Option<usize>,
}

/// Picks an attempt of a task by number (1-based; default: the result attempt).
pub fn pick_attempt(task: &Task, number: Option<i64>) -> AppResult<errand_core::Attempt> {
    match number {
        None => task
            .result_attempt()
            .cloned()
            .ok_or_else(|| ApiError::not_found("the task has no attempts")),
        Some(n) => task
            .attempts
            .iter()
            .find(|a| a.number == n)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "task {} has no attempt {n} (it has {})",
                    task.short_id,
                    task.attempts.len()
                ))
            }),
    }
}

async fn events(
    state: Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        return Ok(crate::sse::stream(state, Path(id), headers, Ok(Query(p)))
            .await?
            .into_response());
    }
    let s = state.0;
    let task = s.store.get_task(&id).await?;
    let attempt = pick_attempt(&task, p.attempt)?;
    let after = p.after.unwrap_or(0);
    let limit = p.limit.unwrap_or(1000).clamp(1, 10_000);
    let events = s.store.list_events(&attempt.id, after, limit).await?;
    let next_after = events.last().map(|e| e.seq).unwrap_or(after);
    Ok(json_out(
        &s,
        json!({
            "task": task.id,
            "attempt": attempt.number,
            "attempt_id": attempt.id,
            "status": attempt.status,
            "events": events,
            "next_after": next_after,
            "more": next_after < attempt.last_seq,
        }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PrRequestBody {
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    attempt: Option<i64>,
}

/// Pushes an ended attempt's branch and opens (or updates) its pull request, with the
/// environment's forge settings.
async fn open_pr(
    State(s): Shared,
    Path(id): Path<String>,
    body: Option<Json<PrRequestBody>>,
) -> AppResult<Response> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let task = s.store.get_task(&id).await?;
    let attempt = pick_attempt(&task, req.attempt)?;
    if task.environment.forge.is_none() {
        return Err(ApiError::bad_request(format!(
            "task {} has no forge to open a pull request on; run it with an environment that sets [environments.NAME.forge] (kind = \"github\" | \"gitlab\" | \"gitea\", token_env, api_url)",
            task.short_id
        )));
    }
    if !attempt.status.is_terminal() || attempt.head_commit.is_none() {
        return Err(ApiError::conflict(format!(
            "attempt {} of task {} has no finished commit yet (status: {}); wait for it to end",
            attempt.number, task.short_id, attempt.status
        )));
    }
    let pr = if req.draft {
        errand_core::PrMode::Draft
    } else {
        errand_core::PrMode::Ready
    };
    let d = deliver_attempt(&s, &task, &attempt, pr).await?;
    Ok(json_out(
        &s,
        json!({ "task": task.id, "attempt": attempt.number, "delivery": d }),
    ))
}

/// Pushes an ended attempt's branch and opens or updates its pull request, and records what
/// happened on the attempt (with a notice in its log).
async fn deliver_attempt(
    s: &AppState,
    task: &Task,
    attempt: &errand_core::Attempt,
    pr: errand_core::PrMode,
) -> AppResult<errand_core::Delivery> {
    let mirror = s.mirrors.mirror_path(&task.repo);
    let log_url = s
        .public_url
        .as_deref()
        .map(|u| errand_worker::deliver::log_url(u, &task.id));
    let mut d = errand_worker::deliver::deliver(errand_worker::deliver::DeliverInput::for_attempt(
        &mirror, task, attempt, log_url, pr,
    ))
    .await;
    // A push's error quotes git; keep secret values out of what is stored.
    if !s.redactor.is_empty() {
        d.error = d.error.map(|e| s.redactor.redact_string(e));
        d.remote = s.redactor.redact_string(d.remote);
    }
    s.store.set_delivery(&attempt.id, &d).await?;
    s.store
        .append_events(
            &attempt.id,
            None,
            vec![errand_core::EventKind::Notice {
                message: d.summary(),
            }],
        )
        .await?;
    Ok(d)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PickRequest {
    /// The attempt's number, or its id (or a unique prefix of it).
    attempt: serde_json::Value,
    #[serde(default)]
    by: Option<String>,
}

/// Makes an ended attempt the task's result (`errand pick`). When the environment pushes and
/// every attempt has ended, the picked attempt is delivered now: its branch pushed and its
/// pull request opened or updated. Then the earlier result's pull request (the one Errand
/// opened for it) is closed with a comment that points at the new one; its branch stays. The
/// answer's `superseded_pr` names it and `superseded_closed` / `superseded_close_error` say
/// what happened; a failure to close does not fail the pick. The outcome is also kept in the
/// earlier attempt's `delivery.superseded`, with a notice in its log, and a later pick tries
/// again to close the pull requests an earlier one left open (`superseded_all` lists them).
async fn pick(
    State(s): Shared,
    Path(id): Path<String>,
    body: Result<Json<PickRequest>, axum::extract::rejection::JsonRejection>,
) -> AppResult<Response> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; expected {{\"attempt\": NUMBER_OR_ID}}",
            e.body_text()
        ))
    })?;
    let task = s.store.get_task(&id).await?;
    let attempt = find_attempt(&task, &req.attempt)?;
    let before = task.result_attempt().cloned();
    let by = req
        .by
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "api".into());
    let task = s.store.pick_attempt(&task.id, &attempt.id, &by).await?;
    let mut delivery = None;
    let mut superseded = None;
    let mut superseded_attempt = None;
    let mut closings: Vec<(i64, Option<String>, errand_core::Superseded)> = Vec::new();
    if task.environment.push && task.attempts.iter().all(|a| a.status.is_terminal()) {
        let picked = task
            .attempts
            .iter()
            .find(|a| a.id == attempt.id)
            .cloned()
            .ok_or_else(|| ApiError::internal("the picked attempt vanished"))?;
        let changed = before.as_ref().is_none_or(|b| b.id != picked.id)
            || picked.delivery.as_ref().is_none_or(|d| d.error.is_some());
        if changed {
            let pr = task.environment.pr;
            delivery = Some(deliver_attempt(&s, &task, &picked, pr).await?);
        }
        let earlier = before.filter(|b| b.id != picked.id);
        if changed && let Some(old) = &earlier {
            superseded = old.delivery.as_ref().and_then(|d| d.pr_url.clone());
            superseded_attempt = Some(old.number);
        }
        // The pull requests this pick replaces: the earlier result's (when this pick delivered
        // another attempt), and any that an earlier pick could not close (tried again).
        if let Some(new) = delivery.as_ref().or(picked.delivery.as_ref()) {
            let olds = task.attempts.iter().filter(|a| {
                a.id != picked.id
                    && ((changed && earlier.as_ref().is_some_and(|e| e.id == a.id))
                        || a.delivery
                            .as_ref()
                            .and_then(|d| d.superseded.as_ref())
                            .is_some_and(|sup| !sup.closed && sup.outcome == "left_open"))
            });
            for old in olds {
                if let Some(sup) = close_superseded(&s, &task, old, &picked, new, &by).await {
                    let url = old.delivery.as_ref().and_then(|d| d.pr_url.clone());
                    closings.push((old.number, url, sup));
                }
            }
        }
    }
    let task = s.store.get_task(&task.id).await?;
    // The earlier result's outcome first. A pick that delivered nothing new but closed a pull
    // request an earlier pick could not reports that one.
    closings.sort_by_key(|(n, _, _)| Some(*n) != superseded_attempt);
    if superseded_attempt.is_none()
        && let Some((n, url, _)) = closings.first()
    {
        superseded_attempt = Some(*n);
        superseded = url.clone();
    }
    let first = closings
        .iter()
        .find(|(n, _, _)| Some(*n) == superseded_attempt)
        .map(|(_, _, c)| c);
    let all: Vec<serde_json::Value> = closings
        .iter()
        .map(|(n, url, c)| {
            json!({
                "attempt": n,
                "pr_url": url,
                "closed": c.closed,
                "outcome": c.outcome,
                "comment_url": c.comment_url,
                "error": c.error,
            })
        })
        .collect();
    Ok(json_out(
        &s,
        json!({
            "task": task,
            "delivery": delivery,
            "superseded_pr": superseded,
            "superseded_attempt": superseded_attempt,
            "superseded_closed": first.map(|c| c.closed),
            "superseded_outcome": first.map(|c| c.outcome.clone()),
            "superseded_comment_url": first.and_then(|c| c.comment_url.clone()),
            "superseded_close_error": first.and_then(|c| c.error.clone()),
            "superseded_all": all,
        }),
    ))
}

/// Closes the pull request of `old`, the result `picked` replaced, and records the outcome in
/// `old`'s delivery (`superseded`) with a notice in its log. `None` when `old` has no pull
/// request of its own to close.
async fn close_superseded(
    s: &AppState,
    task: &Task,
    old: &errand_core::Attempt,
    picked: &errand_core::Attempt,
    new: &errand_core::Delivery,
    by: &str,
) -> Option<errand_core::Superseded> {
    let mut sup = errand_worker::deliver::close_superseded(task, old, picked, new, by).await?;
    if !s.redactor.is_empty() {
        sup.error = sup.error.map(|e| s.redactor.redact_string(e));
    }
    let mut d = old.delivery.clone()?;
    let url = d.pr_url.clone().unwrap_or_default();
    let message = match (sup.outcome.as_str(), &sup.error) {
        ("closed", None) => format!(
            "closed the pull request {url}: superseded by attempt {} (picked by {by})",
            picked.number
        ),
        ("closed", Some(e)) => format!(
            "closed the pull request {url}: superseded by attempt {} (picked by {by}); {e}",
            picked.number
        ),
        ("already_closed", _) => format!(
            "superseded by attempt {} (picked by {by}); the pull request {url} was closed already",
            picked.number
        ),
        ("merged", _) => format!(
            "superseded by attempt {} (picked by {by}); the pull request {url} was merged already and is left as it is",
            picked.number
        ),
        (_, e) => format!(
            "superseded by attempt {} (picked by {by}); the pull request {url} stays open: {}",
            picked.number,
            e.as_deref().unwrap_or("not closed")
        ),
    };
    d.superseded = Some(sup.clone());
    // The pick and the new delivery are stored already: a failure to record this is logged
    // and the answer still says what happened on the forge.
    if let Err(e) = s.store.set_delivery(&old.id, &d).await {
        tracing::warn!(attempt = %old.id, error = %e, "recording the superseded pull request failed");
    }
    if let Err(e) = s
        .store
        .append_events(
            &old.id,
            None,
            vec![errand_core::EventKind::Notice { message }],
        )
        .await
    {
        tracing::warn!(attempt = %old.id, error = %e, "logging the superseded pull request failed");
    }
    Some(sup)
}

/// An attempt of `task` by number (`2`, `"2"`) or by id or unique id prefix.
fn find_attempt(task: &Task, v: &serde_json::Value) -> AppResult<errand_core::Attempt> {
    let key = match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "attempt must be an attempt number (1, 2, …) or an attempt id",
            ));
        }
    };
    if let Ok(n) = key.parse::<i64>() {
        return pick_attempt(task, Some(n));
    }
    let found: Vec<&errand_core::Attempt> = task
        .attempts
        .iter()
        .filter(|a| !key.is_empty() && a.id.starts_with(&key))
        .collect();
    match found.as_slice() {
        [a] => Ok((*a).clone()),
        [] => Err(ApiError::not_found(format!(
            "task {} has no attempt '{key}'; its attempts are numbered 1 to {}",
            task.short_id,
            task.attempts.len()
        ))),
        _ => Err(ApiError::bad_request(format!(
            "'{key}' matches several attempts of task {}; give more of the id, or the number",
            task.short_id
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowupRequest {
    prompt: String,
    #[serde(default)]
    created_by: Option<String>,
}

/// Continues a finished task: its attempt runs again on its branch head with the prompt added
/// to its conversation.
async fn followup(
    State(s): Shared,
    Path(id): Path<String>,
    body: Result<Json<FollowupRequest>, axum::extract::rejection::JsonRejection>,
) -> AppResult<(StatusCode, Response)> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(format!("{}; expected {{\"prompt\": \"…\"}}", e.body_text()))
    })?;
    if req.prompt.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the follow-up prompt is empty; say what else the agent should do",
        ));
    }
    if req.prompt.len() > 256 * 1024 {
        return Err(ApiError::bad_request(
            "the follow-up prompt is over 256 KiB",
        ));
    }
    let by = req
        .created_by
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "api".into());
    let task = s.store.followup(&id, req.prompt.trim(), &by).await?;
    Ok((StatusCode::ACCEPTED, json_out(&s, task)))
}

#[derive(Deserialize)]
struct DiffParams {
    attempt: Option<i64>,
    format: Option<String>,
    /// Only this file's section.
    file: Option<String>,
}

async fn diff(
    State(s): Shared,
    Path(id): Path<String>,
    params: Result<Query<DiffParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let task = s.store.get_task(&id).await?;
    let attempt = pick_attempt(&task, p.attempt)?;
    let diff = s.store.get_diff(&attempt.id).await?;
    let Some(mut diff) = diff else {
        return Err(ApiError::conflict(format!(
            "attempt {} of task {} has no diff yet (status: {}); wait for it to finish",
            attempt.number, task.short_id, attempt.status
        )));
    };
    if let Some(f) = p.file.as_deref() {
        diff = errand_git::filter_diff(&diff, f);
        if diff.is_empty() {
            let known: Vec<&str> = attempt
                .diff_stats
                .as_ref()
                .map(|st| st.files.iter().map(|x| x.path.as_str()).collect())
                .unwrap_or_default();
            return Err(ApiError::not_found(format!(
                "the diff of attempt {} does not touch '{f}'; it changes: {}",
                attempt.number,
                if known.is_empty() {
                    "nothing".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    if p.format.as_deref() == Some("json") {
        return Ok(json_out(
            &s,
            json!({
                "task": task.id,
                "attempt": attempt.number,
                "branch": attempt.branch,
                "base_commit": task.base_commit,
                "head_commit": attempt.head_commit,
                "stats": attempt.diff_stats,
                "diff": diff,
            }),
        ));
    }
    let diff = s.redactor.redact_string(diff);
    Ok(([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], diff).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchParams {
    attempt: Option<i64>,
}

/// The whole change of an attempt as a binary-safe patch with full blob ids, made from the
/// mirror, for `errand apply` (`git apply --3way`).
async fn patch(
    State(s): Shared,
    Path(id): Path<String>,
    params: Result<Query<PatchParams>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Response> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let task = s.store.get_task(&id).await?;
    let attempt = pick_attempt(&task, p.attempt)?;
    let Some(head) = attempt.head_commit.clone() else {
        return Err(ApiError::conflict(format!(
            "attempt {} of task {} has no commit yet (status: {}); wait for it to finish",
            attempt.number, task.short_id, attempt.status
        )));
    };
    let mirror = s.mirrors.mirror_path(&task.repo);
    let text = errand_git::full_patch(&mirror, &task.base_commit, &head)
        .await
        .map_err(|e| ApiError::internal(format!("making the patch: {e}")))?;
    let text = s.redactor.redact_string(text);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/x-diff; charset=utf-8".to_string(),
            ),
            (
                header::HeaderName::from_static("x-errand-base-commit"),
                task.base_commit.clone(),
            ),
            (
                header::HeaderName::from_static("x-errand-head-commit"),
                head,
            ),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).unwrap_or_default();
        assert_eq!(doc["openapi"], "3.1.0");
        let src = include_str!("api.rs");
        let mut routes = 0;
        for line in src.lines() {
            let Some(rest) = line.trim().strip_prefix(".route(\"") else {
                continue;
            };
            let path = rest.split('"').next().unwrap_or_default();
            routes += 1;
            assert!(
                doc["paths"].get(path).is_some(),
                "route {path} is missing from openapi.json"
            );
        }
        assert!(routes >= 8, "found {routes} routes");
        assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(routes));
    }
}
