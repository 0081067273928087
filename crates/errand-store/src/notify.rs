//! In-process wake-ups: a worker waiting for work, a stream waiting for events.

use tokio::sync::{Notify, broadcast};

/// Wakes waiting workers when work is queued, and live streams when events are appended.
/// Waiters must also poll on a timer: a notification can come from another process.
#[derive(Debug)]
pub struct Notifier {
    queue: Notify,
    events: broadcast::Sender<String>,
    cancels: broadcast::Sender<String>,
}

impl Default for Notifier {
    fn default() -> Self {
        let (events, _) = broadcast::channel(1024);
        let (cancels, _) = broadcast::channel(256);
        Notifier {
            queue: Notify::new(),
            events,
            cancels,
        }
    }
}

impl Notifier {
    pub fn work_queued(&self) {
        self.queue.notify_waiters();
        self.queue.notify_one();
    }
    /// Resolves when work may be available.
    pub async fn wait_for_work(&self) {
        self.queue.notified().await
    }
    pub fn events_appended(&self, attempt_id: &str) {
        let _ = self.events.send(attempt_id.to_string());
    }
    /// Receives the ids of attempts that got new events (or a lag error: re-read everything).
    pub fn subscribe_events(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }
    pub fn attempt_cancelled(&self, attempt_id: &str) {
        let _ = self.cancels.send(attempt_id.to_string());
    }
    /// Receives the ids of attempts the user cancelled, so their workers stop at once.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<String> {
        self.cancels.subscribe()
    }
}
