//! Live event streams over SSE, resumable with `Last-Event-ID` (the attempt's event seq).

use crate::AppState;
use crate::api::{EventParams, pick_attempt};
use crate::error::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use errand_core::{Event, Redactor};
use futures::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

struct Cursor {
    state: Arc<AppState>,
    attempt_id: String,
    after: i64,
    buf: VecDeque<Event>,
    rx: tokio::sync::broadcast::Receiver<String>,
    ended: bool,
}

/// One event as SSE, with secret values redacted (no extra work without secrets).
fn to_sse(e: &Event, redactor: &Redactor) -> SseEvent {
    let data = if redactor.is_empty() {
        serde_json::to_string(e)
    } else {
        serde_json::to_value(e).and_then(|mut v| {
            redactor.redact_json(&mut v);
            serde_json::to_string(&v)
        })
    }
    .unwrap_or_else(|_| "{}".into());
    SseEvent::default().id(e.seq.to_string()).data(data)
}

pub async fn stream(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let task = s.store.get_task(&id).await?;
    let attempt = pick_attempt(&task, p.attempt)?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match last_event_id {
        Some(v) => v.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID '{v}' is not an event seq number"))
        })?,
        None => p.after.unwrap_or(0),
    };
    let rx = s.store.notifier().subscribe_events();
    let cursor = Cursor {
        state: s.clone(),
        attempt_id: attempt.id,
        after,
        buf: VecDeque::new(),
        rx,
        ended: false,
    };
    let stream = futures::stream::unfold(cursor, next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn next(mut c: Cursor) -> Option<(Result<SseEvent, Infallible>, Cursor)> {
    loop {
        if let Some(e) = c.buf.pop_front() {
            let ev = to_sse(&e, &c.state.redactor);
            return Some((Ok(ev), c));
        }
        if c.ended || c.state.shutdown.is_cancelled() {
            return None;
        }
        match c.state.store.list_events(&c.attempt_id, c.after, 500).await {
            Ok(events) if !events.is_empty() => {
                c.after = events.last().map(|e| e.seq).unwrap_or(c.after);
                c.buf.extend(events);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading events for a stream failed");
                c.ended = true;
                let ev = SseEvent::default().event("error").data(e.to_string());
                return Some((Ok(ev), c));
            }
        }
        // Nothing new. Finished for good once the attempt ended and its worker let go; a plan
        // waiting for approval ends the stream too (nothing happens until someone decides).
        if let Ok(a) = c.state.store.get_attempt(&c.attempt_id).await
            && (a.status.is_terminal() || a.status == errand_core::Status::AwaitingApproval)
            && a.active_worker.is_none()
            && a.last_seq <= c.after
        {
            c.ended = true;
            let data = serde_json::json!({"status": a.status, "last_seq": a.last_seq}).to_string();
            return Some((Ok(SseEvent::default().event("end").data(data)), c));
        }
        let wait = async {
            loop {
                match c.rx.recv().await {
                    Ok(id) if id == c.attempt_id => break,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = c.state.shutdown.cancelled() => {}
        }
    }
}
