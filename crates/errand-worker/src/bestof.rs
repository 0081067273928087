//! Best-of-N delivery: no attempt of a task with several attempts pushes on its own. When the
//! last one ends, the worker that ended it (the only one the store hands the task to) pushes
//! the task's result, the top-ranked attempt (or the one a user picked meanwhile), and opens
//! or updates its pull request. `errand pick` of another attempt later delivers that one
//! (errand-server).

use crate::{Worker, deliver};

impl Worker {
    /// After an attempt of a best-of-N task ended: delivers the task's result if this was the
    /// last attempt to end and the environment pushes.
    pub(crate) async fn deliver_result_if_last(&self, task: &errand_core::Task) {
        if task.attempts.len() < 2 || !task.environment.push {
            return;
        }
        let task = match self.client.claim_result_delivery(&task.id).await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "claiming the result's delivery failed");
                return;
            }
        };
        let Some(attempt) = task.result_attempt() else {
            return;
        };
        if attempt.head_commit.is_none() {
            return;
        }
        tracing::info!(task = %task.id, attempt = attempt.number, "delivering the best-of-N result");
        let mirror = self.mirrors.mirror_path(&task.repo);
        let log_url = self
            .config
            .public_url
            .as_deref()
            .map(|u| deliver::log_url(u, &task.id));
        let d = deliver::deliver(deliver::DeliverInput::for_attempt(
            &mirror,
            &task,
            attempt,
            log_url,
            task.environment.pr,
        ))
        .await;
        if let Err(e) = self.client.record_delivery(&attempt.id, &d).await {
            tracing::warn!(task = %task.id, error = %e, "recording the delivery failed");
        }
    }
}
