//! The `errand.toml` configuration model.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// One check command run by the worker after the agent finishes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: String,
    pub command: String,
    /// Where the check writes JUnit XML: a path or glob (`*`, `?`, `[…]`, `{a,b}`, `**`)
    /// relative to the repository root. The worker reads the matching files after the check
    /// (only files written during the check) and takes the test counts from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<String>,
}

impl CheckSpec {
    /// Checks what can be checked without a workspace: a name, a command, and a `junit` path
    /// that stays inside the repository (relative, without `..`).
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.command.trim().is_empty() {
            return Err("every check needs a non-empty name and command".into());
        }
        if let Some(j) = &self.junit {
            let bad = |why: &str| {
                Err(format!(
                    "check '{}': junit '{j}' {why}; give a path or glob relative to the repository root, for example \"target/nextest/ci/junit.xml\" or \"reports/**/*.xml\"",
                    self.name
                ))
            };
            if j.trim().is_empty() {
                return bad("is empty");
            }
            if j.starts_with('/') || j.starts_with('\\') {
                return bad("is absolute");
            }
            if j.split(['/', '\\']).any(|c| c == "..") {
                return bad("leaves the repository (..)");
            }
            if j.contains('\0') || j.len() > 1024 {
                return bad("is not a usable path");
            }
        }
        Ok(())
    }
}

/// Limits that stop an attempt cleanly (its work is committed and the reason shown).
/// Unset fields fall back to the environment's budget, then the server's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Input plus output tokens over the whole attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Wall time of the agent loop, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time_secs: Option<u64>,
}

impl Budget {
    /// Fields of `self`, else of `fallback`.
    pub fn or(self, fallback: &Budget) -> Budget {
        Budget {
            max_turns: self.max_turns.or(fallback.max_turns),
            max_tokens: self.max_tokens.or(fallback.max_tokens),
            max_cost_usd: self.max_cost_usd.or(fallback.max_cost_usd),
            max_time_secs: self.max_time_secs.or(fallback.max_time_secs),
        }
    }

    /// Names the first nonsensical field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_turns == Some(0) {
            return Err("budget max_turns must be at least 1".into());
        }
        if self.max_tokens == Some(0) {
            return Err("budget max_tokens must be at least 1".into());
        }
        if let Some(c) = self.max_cost_usd
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!(
                "budget max_cost_usd must be a positive number of dollars, not {c}"
            ));
        }
        if self.max_time_secs == Some(0) {
            return Err("budget max_time_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    OpenaiResponses,
    OpenaiChat,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenaiResponses => "openai-responses",
            ProviderKind::OpenaiChat => "openai-chat",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }
}

/// Prices (US dollars per million tokens) and limits of one model.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Uncached input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<f64>,
    /// Input read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Input written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Output, reasoning included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    /// Tokens the model accepts in one request; compaction starts at a fraction of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Output tokens asked for per turn (Anthropic requires a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

/// `[providers.NAME]`: a model API. The built-in names (`openai`, `anthropic`, `gemini`,
/// `ollama`) may be overridden field by field; any other name needs a `kind`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ProviderKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment variable that holds the API key (the key itself never goes in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Extra HTTP headers sent with every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Prices and limits per model; also the models `errand models` lists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelConfig>,
    /// Stream responses (SSE). Defaults to true; turn off for gateways that cannot stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Whole-request timeout in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Longest silence allowed inside a streamed response, in seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Retries of a retryable error (429, 5xx, overloaded, cut streams); default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// How to run tasks for one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// Local path or git URL.
    #[serde(default)]
    pub repo: Option<String>,
    /// Default base branch, tag or commit.
    #[serde(default)]
    pub base: Option<String>,
    /// Default model, `provider:model`.
    #[serde(default)]
    pub model: Option<String>,
    /// Commands the worker runs after the agent finishes.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Plain (non-secret) environment variables for commands.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A root filesystem folder (with `usr/`, `etc/`, …) the box uses instead of the host's
    /// system directories.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// Provider options for this environment's model (`reasoning_effort`, `temperature`, …).
    #[serde(default)]
    pub model_options: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub budget: Budget,
    /// Push the attempt's `errand/…` branch to [`EnvironmentConfig::remote`] when it is done.
    #[serde(default)]
    pub push: bool,
    /// Open (or update) a pull request for the pushed branch. Needs `push = true` and `forge`.
    #[serde(default)]
    pub pr: PrMode,
    /// The forge that hosts the remote: its API, for pull requests, and the token used for
    /// both the push and the API.
    #[serde(default)]
    pub forge: Option<ForgeConfig>,
    /// Where to push (a git URL). Defaults to the environment's `repo`.
    #[serde(default)]
    pub remote: Option<String>,
    /// The setup phase: a script in the repository (`./scripts/bootstrap.sh`) or a shell
    /// command, run in the box before the agent, with the setup network policy and the
    /// secrets present.
    #[serde(default)]
    pub setup: Option<String>,
    /// Runs instead of `setup` when a cached setup snapshot is reused (`npm ci`).
    #[serde(default)]
    pub maintenance: Option<String>,
    /// Files (relative to the repository root) whose contents key the setup snapshot, with
    /// the setup script. Default: the well-known lockfiles present at the root.
    #[serde(default)]
    pub lockfiles: Option<Vec<String>>,
    /// Network policy of the setup and agent phases.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Secrets, by the name the commands see.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Providers (names from `[providers]` or the built-ins) served to the box by the model
    /// gateway, which adds their keys outside the box.
    #[serde(default)]
    pub gateway: Vec<String>,
    /// A reviewer model (`provider:model`) that reads each attempt's work after its checks.
    #[serde(default)]
    pub review_model: Option<String>,
    /// How many times the reviewer's findings go back to the agent (default 1).
    #[serde(default)]
    pub max_review_rounds: Option<u32>,
}

/// Network access of a box: `off` (loopback only), `allowlist` (only through the egress
/// proxy, by the policy) or `open` (the host's network; explicit opt-in, logged).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Off,
    Allowlist,
    Open,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Off => "off",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Open => "open",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(NetworkMode::Off),
            "allowlist" => Ok(NetworkMode::Allowlist),
            "open" => Ok(NetworkMode::Open),
            other => Err(format!(
                "unknown network mode '{other}'; expected off, allowlist or open"
            )),
        }
    }
}

/// `[environments.NAME.network]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The setup phase's mode (default `off`).
    #[serde(default)]
    pub setup: NetworkMode,
    /// The agent phase's mode (default `off`); checks run with it too.
    #[serde(default)]
    pub agent: NetworkMode,
    /// Hosts reachable in `allowlist` mode: `example.org`, `*.example.org`,
    /// `example.org:8443`, presets such as `registry:python` or `git:github`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Hosts never reachable, whatever `allow` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Preset definitions that replace (or add to) what the worker discovers from its
    /// package tools' configuration: `"registry:python" = ["pypi.mirror.example.test"]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub presets: BTreeMap<String, Vec<String>>,
}

/// `[environments.NAME.secrets] NAME = { from_env = "VAR", expose_to_agent = false }`: the
/// value is read from the worker's environment when the attempt runs; it is never stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub from_env: String,
    /// Also present while the agent and the checks run (default: setup only).
    #[serde(default)]
    pub expose_to_agent: bool,
}

/// `pr = "off" | "draft" | "ready"`: whether a pushed branch gets a pull request, and of
/// which kind.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PrMode {
    #[default]
    Off,
    Draft,
    Ready,
}

impl PrMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PrMode::Off => "off",
            PrMode::Draft => "draft",
            PrMode::Ready => "ready",
        }
    }

    /// Whether a pull request is wanted at all.
    pub fn enabled(self) -> bool {
        self != PrMode::Off
    }
}

/// The kind of forge a remote lives on, which decides the REST API spoken.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
        }
    }

    /// The API root used when `api_url` is not set (`None` for Gitea, which has no public
    /// default instance).
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            ForgeKind::Github => Some("https://api.github.com"),
            ForgeKind::Gitlab => Some("https://gitlab.com/api/v4"),
            ForgeKind::Gitea => None,
        }
    }

    /// The HTTP user name sent with the token on a push when `username` is not set. Each
    /// forge checks only the token; these are the names their docs use for token pushes.
    pub fn default_username(self) -> &'static str {
        match self {
            ForgeKind::Github => "x-access-token",
            ForgeKind::Gitlab => "oauth2",
            ForgeKind::Gitea => "errand",
        }
    }
}

/// `[environments.NAME.forge]`: the forge hosting the remote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    pub kind: ForgeKind,
    /// The API root: `https://api.github.com` (GitHub Enterprise: `https://HOST/api/v3`),
    /// `https://gitlab.com/api/v4`, `https://HOST/api/v1` for Gitea. Required for Gitea.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The environment variable holding the token (the token itself never goes in the file).
    pub token_env: String,
    /// The user name sent with the token on a push (default: [`ForgeKind::default_username`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl ForgeConfig {
    /// `api_url`, else the kind's default; `None` only for a Gitea without `api_url` (which
    /// [`ForgeConfig::validate`] refuses).
    pub fn api_url(&self) -> Option<String> {
        self.api_url
            .clone()
            .or_else(|| self.kind.default_api_url().map(str::to_string))
    }

    /// The user name for pushes.
    pub fn username(&self) -> &str {
        self.username
            .as_deref()
            .unwrap_or(self.kind.default_username())
    }

    /// Names the first problem, with its fix.
    pub fn validate(&self) -> Result<(), String> {
        if !is_env_var_name(&self.token_env) {
            return Err(format!(
                "forge.token_env must name an environment variable (letters, digits and '_', not starting with a digit, for example GITHUB_TOKEN), not '{}'",
                self.token_env
            ));
        }
        match &self.api_url {
            Some(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!(
                        "forge.api_url '{u}' must start with http:// or https://"
                    ));
                }
                if url_has_password(u) {
                    return Err(
                        "forge.api_url must not contain credentials; put the token in the variable named by forge.token_env"
                            .into(),
                    );
                }
            }
            None if self.kind == ForgeKind::Gitea => {
                return Err(
                    "forge.api_url is required for kind = \"gitea\" (for example https://gitea.example.com/api/v1)"
                        .into(),
                );
            }
            None => {}
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.chars().any(|c| c.is_control() || c == ':'))
        {
            return Err(format!(
                "forge.username must be a non-empty user name without ':' or control characters, not '{}'",
                u.escape_debug()
            ));
        }
        Ok(())
    }
}

/// Whether `s` is a portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a URL carries a password (`scheme://user:secret@host/…`).
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

impl EnvironmentConfig {
    /// Checks the delivery settings (`push`, `pr`, `forge`, `remote`) together; names the
    /// first problem with its fix.
    pub fn validate_delivery(&self) -> Result<(), String> {
        if let Some(f) = &self.forge {
            f.validate()?;
        }
        if self.pr.enabled() {
            if !self.push {
                return Err(format!(
                    "pr = \"{}\" needs push = true (a pull request points at the pushed branch); add push = true or set pr = \"off\"",
                    self.pr.as_str()
                ));
            }
            if self.forge.is_none() {
                return Err(format!(
                    "pr = \"{}\" needs a forge: add forge = {{ kind = \"github\", token_env = \"GITHUB_TOKEN\" }} (kind github, gitlab or gitea)",
                    self.pr.as_str()
                ));
            }
        }
        if let Some(r) = &self.remote {
            if r.trim().is_empty() || r.trim() != r {
                return Err(format!(
                    "remote '{r}' must be a git URL without surrounding spaces"
                ));
            }
            if r.starts_with('-') {
                return Err(format!("remote '{r}' must not start with '-'"));
            }
            if url_has_password(r) {
                return Err(
                    "remote must not contain credentials; put the token in the variable named by forge.token_env"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// The most times a reviewer's findings may go back to the agent.
pub const MAX_REVIEW_ROUNDS: u32 = 5;

/// The whole `errand.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model used when neither the task nor its environment names one.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Reviewer model for tasks whose environment names none (off when unset).
    #[serde(default)]
    pub review_model: Option<String>,
    /// How people reach this server (links in pull requests); default: its listen address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Budget for every attempt unless its environment or task says otherwise.
    #[serde(default)]
    pub budget: Budget,
    /// Agent knobs.
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
}

/// `[agent]`: how the built-in agent manages its context.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Compact old turns when a request reaches this fraction of the context window.
    pub compact_at: f64,
    /// Model turns kept verbatim after a compaction.
    pub keep_recent_turns: u32,
    /// The stuck detector: the same call (tool and arguments) failing this many times with
    /// the workspace unchanged warns the agent, and once more stops the attempt. 0 disables.
    pub stuck_repeats: u32,
    /// The stuck detector: this many model turns in a row without progress (a workspace
    /// change, a plan step completed, or a successful call not made before) warn the agent,
    /// and one more stops the attempt. 0 disables.
    pub stuck_turns: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            compact_at: 0.8,
            keep_recent_turns: 4,
            stuck_repeats: 3,
            stuck_turns: 20,
        }
    }
}

impl Config {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            message,
        };
        if !(cfg.agent.compact_at > 0.0 && cfg.agent.compact_at <= 1.0) {
            return Err(invalid(format!(
                "agent.compact_at must be a fraction of the context window in (0, 1], not {}",
                cfg.agent.compact_at
            )));
        }
        cfg.budget.validate().map_err(invalid)?;
        for (name, p) in &cfg.providers {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(format!(
                    "provider name '{name}' may only use letters, digits, '-', '_' and '.'"
                )));
            }
            if let Some(u) = &p.base_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(invalid(format!(
                    "providers.{name}.base_url '{u}' must start with http:// or https://"
                )));
            }
            if let Some(k) = &p.api_key_env
                && (k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return Err(invalid(format!(
                    "providers.{name}.api_key_env must name an environment variable (for example MY_API_KEY), not '{k}'"
                )));
            }
        }
        for (name, env) in &cfg.environments {
            env.budget
                .validate()
                .map_err(|m| invalid(format!("environment '{name}': {m}")))?;
            for (secret, sc) in &env.secrets {
                if !is_env_var_name(secret) {
                    return Err(invalid(format!(
                        "environments.{name}.secrets: '{secret}' is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
                    )));
                }
                if !is_env_var_name(&sc.from_env) {
                    return Err(invalid(format!(
                        "environments.{name}.secrets.{secret}.from_env must name an environment variable of the worker (for example SHOP_NPM_TOKEN), not '{}'",
                        sc.from_env
                    )));
                }
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    message: format!(
                        "environment name '{name}' may only use letters, digits, '-', '_' and '.'"
                    ),
                });
            }
            if let Some(r) = &env.rootfs {
                let p = std::path::Path::new(r);
                if !p.is_absolute() {
                    return Err(ConfigError::Invalid {
                        path: path.to_string(),
                        message: format!(
                            "environment '{name}': rootfs '{r}' must be an absolute path"
                        ),
                    });
                }
            }
            if let Some(n) = env.max_review_rounds
                && n > MAX_REVIEW_ROUNDS
            {
                return Err(invalid(format!(
                    "environment '{name}': max_review_rounds is {n}; the limit is {MAX_REVIEW_ROUNDS}"
                )));
            }
            env.validate_delivery()
                .map_err(|m| invalid(format!("environment '{name}': {m}")))?;
            for c in &env.checks {
                if c.command.trim().is_empty() {
                    return Err(ConfigError::Invalid {
                        path: path.to_string(),
                        message: format!(
                            "environment '{name}': check '{}' has an empty command",
                            c.name
                        ),
                    });
                }
                c.validate()
                    .map_err(|m| invalid(format!("environment '{name}': {m}")))?;
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_environments() {
        let cfg = Config::parse(
            r#"
default_model = "scripted:/tmp/x.json"
[environments.shop]
repo = "/src/shop"
base = "main"
checks = [{ name = "tests", command = "cargo test" }]
[environments.shop.env]
RUST_LOG = "info"
"#,
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shop = &cfg.environments["shop"];
        assert_eq!(shop.checks[0].name, "tests");
        assert_eq!(shop.env["RUST_LOG"], "info");
    }

    #[test]
    fn check_junit_paths_stay_in_the_repository() {
        let cfg = Config::parse(
            r#"
[environments.shop]
checks = [{ name = "tests", command = "cargo nextest run --profile ci", junit = "target/nextest/ci/junit.xml" }]
"#,
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.environments["shop"].checks[0].junit.as_deref(),
            Some("target/nextest/ci/junit.xml")
        );
        for bad in ["/etc/junit.xml", "../junit.xml", "reports/../../x.xml", " "] {
            let text = format!(
                "[environments.shop]\nchecks = [{{ name = \"t\", command = \"pytest\", junit = \"{bad}\" }}]\n"
            );
            let err = Config::parse(&text, "errand.toml")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("junit"), "{bad}: {err}");
        }
        let ok = CheckSpec {
            name: "t".into(),
            command: "pytest".into(),
            junit: Some("reports/**/*.xml".into()),
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn rejects_unknown_keys_with_the_path() {
        let err = Config::parse("[environments.a]\nrepoo = 1\n", "/etc/errand.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("/etc/errand.toml") && err.contains("repoo"),
            "{err}"
        );
    }

    fn parse_err(text: &str) -> String {
        match Config::parse(text, "errand.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn delivery_defaults_are_off() {
        let cfg = Config::parse("[environments.a]\nrepo = \"/src/a\"\n", "errand.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        let a = &cfg.environments["a"];
        assert!(!a.push);
        assert_eq!(a.pr, PrMode::Off);
        assert!(!a.pr.enabled());
        assert_eq!(a.forge, None);
        assert_eq!(a.remote, None);
    }

    #[test]
    fn parses_delivery_settings() {
        let cfg = Config::parse(
            r#"
[environments.shop]
repo = "https://github.com/acme/shop.git"
push = true
pr = "draft"
remote = "https://github.com/acme/shop-fork.git"
forge = { kind = "github", token_env = "GITHUB_TOKEN" }

[environments.lab]
push = true
pr = "ready"
[environments.lab.forge]
kind = "gitlab"
token_env = "GL_TOKEN"
username = "bot"

[environments.tea]
push = true
pr = "ready"
forge = { kind = "gitea", api_url = "https://tea.example.com/api/v1", token_env = "TEA_TOKEN" }
"#,
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shop = &cfg.environments["shop"];
        assert!(shop.push);
        assert_eq!(shop.pr, PrMode::Draft);
        assert_eq!(
            shop.remote.as_deref(),
            Some("https://github.com/acme/shop-fork.git")
        );
        let f = shop.forge.as_ref().unwrap_or_else(|| panic!("forge"));
        assert_eq!(f.kind, ForgeKind::Github);
        assert_eq!(f.api_url().as_deref(), Some("https://api.github.com"));
        assert_eq!(f.username(), "x-access-token");
        let lab = cfg.environments["lab"]
            .forge
            .as_ref()
            .unwrap_or_else(|| panic!("forge"));
        assert_eq!(lab.api_url().as_deref(), Some("https://gitlab.com/api/v4"));
        assert_eq!(lab.username(), "bot");
        let tea = cfg.environments["tea"]
            .forge
            .as_ref()
            .unwrap_or_else(|| panic!("forge"));
        assert_eq!(
            tea.api_url().as_deref(),
            Some("https://tea.example.com/api/v1")
        );
        assert_eq!(cfg.environments["tea"].pr, PrMode::Ready);
    }

    #[test]
    fn pr_without_push_names_the_fix() {
        let err = parse_err(
            "[environments.a]\npr = \"draft\"\nforge = { kind = \"github\", token_env = \"T\" }\n",
        );
        assert!(err.contains("environment 'a'"), "{err}");
        assert!(err.contains("push = true"), "{err}");
    }

    #[test]
    fn pr_needs_a_forge() {
        let err = parse_err("[environments.a]\npush = true\npr = \"ready\"\n");
        assert!(err.contains("needs a forge"), "{err}");
        assert!(err.contains("token_env"), "{err}");
        // push alone (an ssh remote, a local bare repo) needs no forge.
        assert!(Config::parse("[environments.a]\npush = true\n", "errand.toml").is_ok());
    }

    #[test]
    fn token_env_must_be_a_variable_name() {
        for bad in ["", "ghp_abc def", "1TOKEN", "A=B", "MY-TOKEN", "$TOKEN"] {
            let err = parse_err(&format!(
                "[environments.a]\nforge = {{ kind = \"github\", token_env = \"{bad}\" }}\n"
            ));
            assert!(err.contains("token_env"), "{bad}: {err}");
        }
        for good in ["GITHUB_TOKEN", "_T", "t1"] {
            assert!(is_env_var_name(good), "{good}");
        }
    }

    #[test]
    fn forge_fields_are_checked() {
        let err = parse_err("[environments.a]\nforge = { kind = \"gitea\", token_env = \"T\" }\n");
        assert!(err.contains("api_url is required"), "{err}");
        let err = parse_err(
            "[environments.a]\nforge = { kind = \"gitlab\", token_env = \"T\", api_url = \"gitlab.example.com\" }\n",
        );
        assert!(err.contains("http://"), "{err}");
        let err =
            parse_err("[environments.a]\nforge = { kind = \"bitbucket\", token_env = \"T\" }\n");
        assert!(err.contains("bitbucket"), "{err}");
        let err = parse_err(
            "[environments.a]\nforge = { kind = \"github\", token_env = \"T\", token = \"x\" }\n",
        );
        assert!(err.contains("token"), "{err}");
        let err = parse_err("[environments.a]\npr = \"yes\"\n");
        assert!(err.contains("yes"), "{err}");
    }

    #[test]
    fn remote_must_not_carry_credentials() {
        let err = parse_err(
            "[environments.a]\npush = true\nremote = \"https://bot:hunter2@example.com/a/b.git\"\n",
        );
        assert!(err.contains("must not contain credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // A user name alone is fine (ssh and scp-like URLs have one).
        for ok in [
            "git@example.com:a/b.git",
            "ssh://git@example.com/a/b.git",
            "https://bot@example.com/a/b.git",
        ] {
            let text = format!("[environments.a]\npush = true\nremote = \"{ok}\"\n");
            assert!(Config::parse(&text, "errand.toml").is_ok(), "{ok}");
        }
        let err = parse_err("[environments.a]\nremote = \"--upload-pack=x\"\n");
        assert!(err.contains("'-'"), "{err}");
    }
}
