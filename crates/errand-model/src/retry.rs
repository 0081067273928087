//! When to retry a failed model request, and how long to wait first.

use crate::ModelError;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// The first backoff; it doubles each retry, with jitter.
    pub base: Duration,
    /// No backoff is longer than this.
    pub cap: Duration,
    /// A `Retry-After` longer than this is not waited for: the error is returned instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based) after `err`, or `None` when the error is
    /// not retryable or the retries are used up.
    pub fn delay(&self, retry: u32, err: &ModelError) -> Option<Duration> {
        if !err.retryable() || retry == 0 || retry > self.max_retries {
            return None;
        }
        if let Some(after) = err.retry_after() {
            return (after <= self.max_retry_after).then_some(after);
        }
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry - 1).unwrap_or(u32::MAX))
            .min(self.cap);
        // "Equal jitter": half fixed, half random, so retries from many attempts spread out.
        let half = exp / 2;
        Some(half + half.mul_f64(fastrand::f64()))
    }

    /// The `model_retry` event for retry number `retry` of `model` after `err`, waiting
    /// `delay` first.
    pub fn retry_event(
        &self,
        model: &str,
        retry: u32,
        delay: Duration,
        err: &ModelError,
    ) -> errand_core::EventKind {
        errand_core::EventKind::ModelRetry {
            model: model.to_string(),
            retry,
            max_retries: self.max_retries,
            delay_ms: delay.as_millis() as u64,
            kind: err
                .kind()
                .and_then(|k| serde_json::to_value(k).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            error: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn backs_off_with_jitter_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let e = ModelError::api("x", ErrorKind::Server, "boom");
        for retry in 1..=5 {
            let d = p.delay(retry, &e).unwrap_or_default();
            let full = Duration::from_secs(1 << (retry - 1)).min(p.cap);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
        assert_eq!(p.delay(6, &e), None);
        let auth = ModelError::api("x", ErrorKind::Auth, "no");
        assert_eq!(p.delay(1, &auth), None);
        let limited = ModelError::Api {
            provider: "x".into(),
            kind: ErrorKind::RateLimited,
            status: Some(429),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(3)),
            hint: None,
        };
        assert_eq!(p.delay(1, &limited), Some(Duration::from_secs(3)));
        let too_long = ModelError::Api {
            provider: "x".into(),
            kind: ErrorKind::RateLimited,
            status: Some(429),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(3600)),
            hint: None,
        };
        assert_eq!(p.delay(1, &too_long), None);
    }
}
