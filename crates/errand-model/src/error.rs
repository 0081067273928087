//! Model errors: what went wrong, whether a retry can help, and how long the provider asked
//! us to wait.

use std::time::Duration;

/// What kind of failure a provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 401: the key is missing, wrong or revoked.
    Auth,
    /// 403: the key may not use this model or endpoint.
    PermissionDenied,
    /// 404: no such model (or endpoint).
    ModelNotFound,
    /// 400/413: the request is longer than the model's context window.
    ContextLength,
    /// 429: too many requests or tokens per minute.
    RateLimited,
    /// 429 for an exhausted quota or billing problem: waiting does not help.
    QuotaExceeded,
    /// 529, or 503 that says so: the provider is overloaded.
    Overloaded,
    /// Other 5xx.
    Server,
    /// Other 4xx: the request itself is wrong.
    BadRequest,
    /// No response, or the response stalled, within the timeout.
    Timeout,
    /// Could not connect, or the connection broke before a response.
    Connection,
    /// The response stream stopped before its end.
    StreamCut,
    /// The response does not follow the provider's format.
    BadResponse,
}

impl ErrorKind {
    /// Whether trying the same request again later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Server
                | ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::StreamCut
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Auth => "authentication failed",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ModelNotFound => "model not found",
            ErrorKind::ContextLength => "the request is longer than the model's context window",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::QuotaExceeded => "quota exceeded",
            ErrorKind::Overloaded => "the provider is overloaded",
            ErrorKind::Server => "server error",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Connection => "connection failed",
            ErrorKind::StreamCut => "the response stream was cut off",
            ErrorKind::BadResponse => "unexpected response",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model '{0}' is not of the form provider:model (for example anthropic:claude-sonnet-4-5)"
    )]
    BadName(String),
    #[error(
        "unknown model provider '{provider}' in '{model}'; known providers: {known}. Add [providers.{provider}] with a kind to errand.toml to define it"
    )]
    UnknownProvider {
        provider: String,
        model: String,
        known: String,
    },
    #[error("scripted model file {path}: {message}")]
    Script { path: String, message: String },
    #[error("model {model} needs an API key: set {var} in the server's environment")]
    MissingKey { model: String, var: String },
    #[error("{0}")]
    Config(String),
    #[error("{provider}: {}{}: {message}{}", kind.describe(), status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(), hint.as_deref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Api {
        provider: String,
        kind: ErrorKind,
        status: Option<u16>,
        message: String,
        /// How long the provider asked us to wait (`Retry-After`, `retry-after-ms`, or the
        /// `RetryInfo` of a Google error).
        retry_after: Option<Duration>,
        hint: Option<String>,
    },
}

impl ModelError {
    pub fn api(provider: &str, kind: ErrorKind, message: impl Into<String>) -> ModelError {
        ModelError::Api {
            provider: provider.to_string(),
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            hint: None,
        }
    }

    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ModelError::Api { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind().is_some_and(ErrorKind::retryable)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
