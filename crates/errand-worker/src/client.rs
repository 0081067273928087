//! How a worker reaches the queue.

use async_trait::async_trait;
use errand_core::{Delivery, EventKind, SetupInfo, Status, Task, Usage};
use errand_store::{
    AttemptOutcome, Checkpoint, ClaimRequest, ClaimedAttempt, LeaseState, PlanSubmission, Result,
    Store,
};
use std::sync::Arc;

/// The queue operations a worker needs. Implemented in-process over a [`Store`]
/// ([`LocalClient`]) and, for remote workers, over HTTP with a worker token.
#[async_trait]
pub trait WorkerClient: Send + Sync {
    async fn claim(&self, req: &ClaimRequest) -> Result<Option<ClaimedAttempt>>;
    /// Resolves when new work may be available (may also resolve spuriously).
    async fn wait_for_work(&self);
    async fn heartbeat(&self, attempt: &str, worker: &str, ttl_ms: i64) -> Result<LeaseState>;
    /// Resolves when the attempt may have been cancelled (the worker then heartbeats at once
    /// to find out). Clients without push notifications never resolve; heartbeats still tell.
    async fn cancel_hint(&self, _attempt: &str) {
        std::future::pending::<()>().await
    }
    async fn transition(
        &self,
        attempt: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> Result<()>;
    async fn append_events(
        &self,
        attempt: &str,
        worker: &str,
        events: Vec<EventKind>,
    ) -> Result<i64>;
    async fn update_usage(
        &self,
        attempt: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> Result<()>;
    async fn finish(&self, attempt: &str, worker: &str, outcome: AttemptOutcome) -> Result<Status>;
    /// Plan mode: the planning run's plan; the attempt waits for approval, lease released.
    async fn submit_plan(
        &self,
        attempt: &str,
        worker: &str,
        plan: PlanSubmission,
    ) -> Result<Status>;
    /// Best-of-N: the task, when its result is now this caller's to deliver (every attempt
    /// ended; exactly one caller gets it).
    async fn claim_result_delivery(&self, task: &str) -> Result<Option<Task>>;
    /// Records a delivery made after the attempt ended, with a notice in its log.
    async fn record_delivery(&self, attempt: &str, delivery: &Delivery) -> Result<()>;
    /// Records what the run's setup phase did (cache hit or miss, key, duration, size).
    async fn record_setup(&self, attempt: &str, worker: &str, setup: &SetupInfo) -> Result<()>;
    /// Saves the attempt's checkpoint (fenced by the lease; see [`Store::checkpoint`]).
    async fn checkpoint(&self, attempt: &str, worker: &str, checkpoint: Checkpoint) -> Result<()>;
}

/// The embedded workers' client: calls the store directly.
pub struct LocalClient {
    store: Arc<dyn Store>,
}

impl LocalClient {
    pub fn new(store: Arc<dyn Store>) -> Self {
        LocalClient { store }
    }
}

#[async_trait]
impl WorkerClient for LocalClient {
    async fn claim(&self, req: &ClaimRequest) -> Result<Option<ClaimedAttempt>> {
        self.store.claim_attempt(req).await
    }
    async fn wait_for_work(&self) {
        self.store.notifier().wait_for_work().await
    }
    async fn heartbeat(&self, attempt: &str, worker: &str, ttl_ms: i64) -> Result<LeaseState> {
        self.store.heartbeat(attempt, worker, ttl_ms).await
    }
    async fn cancel_hint(&self, attempt: &str) {
        let mut rx = self.store.notifier().subscribe_cancels();
        loop {
            match rx.recv().await {
                Ok(id) if id == attempt => return,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    }
    async fn transition(
        &self,
        attempt: &str,
        worker: &str,
        from: Status,
        to: Status,
        reason: Option<String>,
    ) -> Result<()> {
        self.store
            .transition(attempt, worker, from, to, reason)
            .await
    }
    async fn append_events(
        &self,
        attempt: &str,
        worker: &str,
        events: Vec<EventKind>,
    ) -> Result<i64> {
        self.store
            .append_events(attempt, Some(worker), events)
            .await
    }
    async fn update_usage(
        &self,
        attempt: &str,
        worker: &str,
        usage: Usage,
        turns: u64,
    ) -> Result<()> {
        self.store.update_usage(attempt, worker, usage, turns).await
    }
    async fn finish(&self, attempt: &str, worker: &str, outcome: AttemptOutcome) -> Result<Status> {
        self.store.finish_attempt(attempt, worker, outcome).await
    }
    async fn submit_plan(
        &self,
        attempt: &str,
        worker: &str,
        plan: PlanSubmission,
    ) -> Result<Status> {
        self.store.submit_plan(attempt, worker, plan).await
    }
    async fn claim_result_delivery(&self, task: &str) -> Result<Option<Task>> {
        self.store.claim_result_delivery(task).await
    }
    async fn record_delivery(&self, attempt: &str, delivery: &Delivery) -> Result<()> {
        self.store.set_delivery(attempt, delivery).await?;
        self.store
            .append_events(
                attempt,
                None,
                vec![EventKind::Notice {
                    message: delivery.summary(),
                }],
            )
            .await?;
        Ok(())
    }
    async fn record_setup(&self, attempt: &str, worker: &str, setup: &SetupInfo) -> Result<()> {
        self.store.set_setup(attempt, worker, setup).await
    }
    async fn checkpoint(&self, attempt: &str, worker: &str, checkpoint: Checkpoint) -> Result<()> {
        self.store.checkpoint(attempt, worker, &checkpoint).await
    }
}
