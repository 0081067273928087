//! Turns `provider:model` into a provider: the built-in providers, `[providers.NAME]` from
//! `errand.toml`, where each key comes from, and the default model.

use crate::{ModelError, Provider, ProviderKind, Result, pricing, scripted};
use errand_core::{Config, ModelConfig, ProviderConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything a worker needs to talk to one model, resolved when the task is created and
/// stored with it. It names the key's variable, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolvedProvider {
    /// The provider's name (`anthropic`, `openai`, or a `[providers.NAME]`).
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub model: String,
    /// Prices and limits: the user's entry over the built-in table.
    #[serde(default)]
    pub model_config: ModelConfig,
    pub stream: bool,
    pub timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_retries: u32,
}

impl ResolvedProvider {
    /// `provider:model`.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.name, self.model)
    }

    /// The API key from the environment, when this provider uses one.
    pub fn key(&self) -> Result<Option<String>> {
        let Some(var) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
            _ => Err(ModelError::MissingKey {
                model: self.full_name(),
                var: var.clone(),
            }),
        }
    }

    pub(crate) fn http(&self) -> Result<crate::http::Http> {
        crate::http::Http::new(
            &self.name,
            std::time::Duration::from_secs(self.timeout_secs.max(1)),
            std::time::Duration::from_secs(self.idle_timeout_secs.max(1)),
            self.api_key_env.clone(),
        )
    }

    /// `base_url` joined with `path`, with exactly one slash between.
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    /// Extra headers from the configuration.
    pub(crate) fn extra_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Providers that exist without any configuration.
pub const BUILTIN: &[&str] = &["anthropic", "gemini", "ollama", "openai"];

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The built-in definition of `name`, if it is one.
fn builtin(name: &str) -> Option<ProviderConfig> {
    let p = |kind, base_url: String, key: Option<&str>| ProviderConfig {
        kind: Some(kind),
        base_url: Some(base_url),
        api_key_env: key.map(str::to_string),
        ..Default::default()
    };
    Some(match name {
        "openai" => p(
            ProviderKind::OpenaiResponses,
            env_nonempty("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            Some("OPENAI_API_KEY"),
        ),
        "anthropic" => p(
            ProviderKind::Anthropic,
            env_nonempty("ANTHROPIC_BASE_URL")
                .unwrap_or_else(|| "https://api.anthropic.com".into()),
            Some("ANTHROPIC_API_KEY"),
        ),
        "gemini" => p(
            ProviderKind::Gemini,
            "https://generativelanguage.googleapis.com/v1beta".into(),
            // GEMINI_API_KEY, or the older GOOGLE_API_KEY when only that one is set.
            Some(
                if env_nonempty("GEMINI_API_KEY").is_none()
                    && env_nonempty("GOOGLE_API_KEY").is_some()
                {
                    "GOOGLE_API_KEY"
                } else {
                    "GEMINI_API_KEY"
                },
            ),
        ),
        "ollama" => {
            let host = env_nonempty("OLLAMA_HOST").unwrap_or_else(|| "127.0.0.1:11434".into());
            let host = if host.starts_with("http://") || host.starts_with("https://") {
                host
            } else {
                format!("http://{host}")
            };
            p(
                ProviderKind::OpenaiChat,
                format!("{}/v1", host.trim_end_matches('/')),
                None,
            )
        }
        _ => return None,
    })
}

/// The model a built-in provider suggests, for `errand models` and the default model.
pub fn suggested_model(name: &str) -> Option<&'static str> {
    match name {
        "openai" => Some("gpt-5"),
        "anthropic" => Some("claude-sonnet-4-5"),
        "gemini" => Some("gemini-2.5-pro"),
        _ => None,
    }
}

/// Splits `provider:model`.
pub fn split_model_name(name: &str) -> Result<(&str, &str)> {
    match name.split_once(':') {
        Some((p, m)) if !p.is_empty() && !m.trim().is_empty() => Ok((p, m)),
        _ => Err(ModelError::BadName(name.to_string())),
    }
}

/// The provider definition of `name`: the configured entry over the built-in one.
pub fn provider_config(name: &str, config: &Config) -> Option<(ProviderConfig, &'static str)> {
    let base = builtin(name);
    let user = config.providers.get(name);
    match (base, user) {
        (None, None) => None,
        (Some(b), None) => Some((b, "built-in")),
        (None, Some(u)) => Some((u.clone(), "errand.toml")),
        (Some(b), Some(u)) => Some((
            ProviderConfig {
                kind: u.kind.or(b.kind),
                base_url: u.base_url.clone().or(b.base_url),
                api_key_env: u.api_key_env.clone().or(b.api_key_env),
                headers: u.headers.clone(),
                models: u.models.clone(),
                stream: u.stream,
                timeout_secs: u.timeout_secs,
                idle_timeout_secs: u.idle_timeout_secs,
                max_retries: u.max_retries,
            },
            "built-in, overridden in errand.toml",
        )),
    }
}

fn known_providers(config: &Config) -> String {
    let mut names: Vec<&str> = BUILTIN.to_vec();
    names.extend(config.providers.keys().map(String::as_str));
    names.push("scripted");
    names.sort();
    names.dedup();
    names.join(", ")
}

/// Whether the built-in price table applies to `provider`: only the vendors' own endpoints.
fn builtin_prices(provider: &str, pc: &ProviderConfig) -> bool {
    let vendor_endpoint = builtin(provider).is_some_and(|b| b.base_url == pc.base_url);
    vendor_endpoint || BUILTIN.contains(&provider) && provider != "ollama"
}

/// Resolves a provider named in an environment's `gateway = [...]` for the model gateway:
/// kind, base URL, headers, prices and the name of its key variable, which must be set.
pub fn resolve_gateway(name: &str, config: &Config) -> Result<errand_core::GatewayUpstream> {
    if name == "scripted" {
        return Err(ModelError::Config(
            "gateway provider 'scripted' is a playback file, not an HTTP API; the gateway serves providers such as openai, anthropic, gemini or a [providers.NAME] entry".into(),
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(ModelError::Config(format!(
            "gateway provider '{name}' is not a usable route name; provider names may only use letters, digits, '_', '-' and '.'"
        )));
    }
    let Some((pc, _)) = provider_config(name, config) else {
        return Err(ModelError::Config(format!(
            "unknown gateway provider '{name}'; known providers: {} (define others under [providers.{name}] in errand.toml)",
            known_providers(config).replace(", scripted", "")
        )));
    };
    let kind = pc.kind.ok_or_else(|| {
        ModelError::Config(format!(
            "[providers.{name}] needs kind = \"openai-responses\", \"openai-chat\", \"anthropic\" or \"gemini\""
        ))
    })?;
    let base_url = pc.base_url.clone().ok_or_else(|| {
        ModelError::Config(format!(
            "[providers.{name}] needs base_url (for example \"http://127.0.0.1:8000/v1\")"
        ))
    })?;
    if let Some(var) = &pc.api_key_env
        && env_nonempty(var).is_none()
    {
        return Err(ModelError::Config(format!(
            "gateway provider '{name}' needs an API key: set {var} in the server's environment"
        )));
    }
    Ok(errand_core::GatewayUpstream {
        name: name.to_string(),
        kind,
        base_url,
        builtin_prices: builtin_prices(name, &pc),
        api_key_env: pc.api_key_env,
        headers: pc.headers,
        models: pc.models,
    })
}

/// Resolves `provider:model` against the configuration (not for `scripted`).
pub fn resolve(name: &str, config: &Config) -> Result<ResolvedProvider> {
    let (provider, model) = split_model_name(name)?;
    let Some((pc, _)) = provider_config(provider, config) else {
        return Err(ModelError::UnknownProvider {
            provider: provider.to_string(),
            model: name.to_string(),
            known: known_providers(config),
        });
    };
    let kind = pc.kind.ok_or_else(|| {
        ModelError::Config(format!(
            "[providers.{provider}] needs kind = \"openai-responses\", \"openai-chat\", \"anthropic\" or \"gemini\""
        ))
    })?;
    let base_url = pc.base_url.clone().ok_or_else(|| {
        ModelError::Config(format!(
            "[providers.{provider}] needs base_url (for example \"http://127.0.0.1:8000/v1\")"
        ))
    })?;
    let user = pc.models.get(model).copied().unwrap_or_default();
    let base = if builtin_prices(provider, &pc) {
        pricing::builtin(kind, model).unwrap_or_default()
    } else {
        ModelConfig::default()
    };
    Ok(ResolvedProvider {
        name: provider.to_string(),
        kind,
        base_url,
        api_key_env: pc.api_key_env.clone(),
        headers: pc.headers.clone(),
        model: model.to_string(),
        model_config: pricing::merge(&user, &base),
        stream: pc.stream.unwrap_or(true),
        timeout_secs: pc.timeout_secs.unwrap_or(600),
        idle_timeout_secs: pc.idle_timeout_secs.unwrap_or(120),
        max_retries: pc.max_retries.unwrap_or(5),
    })
}

/// The model to use when neither the task nor its environment names one: `default_model`,
/// else the first provider whose key is set.
pub fn default_model(config: &Config) -> Result<String> {
    if let Some(m) = &config.default_model {
        return Ok(m.clone());
    }
    for (var, model) in [
        ("ANTHROPIC_API_KEY", "anthropic:claude-sonnet-4-5"),
        ("OPENAI_API_KEY", "openai:gpt-5"),
        ("GEMINI_API_KEY", "gemini:gemini-2.5-pro"),
        ("GOOGLE_API_KEY", "gemini:gemini-2.5-pro"),
    ] {
        if env_nonempty(var).is_some() {
            return Ok(model.to_string());
        }
    }
    Err(ModelError::Config(
        "no model given and none configured: pass --model provider:model (for example --model anthropic:claude-sonnet-4-5, or --model ollama:qwen2.5-coder for a local Ollama), set default_model in errand.toml, or set ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY in the server's environment".into(),
    ))
}

/// Validates a model name when a task is created and returns the payload that travels with
/// the task: the scripted turns, or the resolved provider (never the key). A real provider
/// whose key variable is unset is refused here, with the variable's name.
pub fn prepare(name: &str, config: &Config) -> Result<serde_json::Value> {
    let (provider, rest) = split_model_name(name)?;
    if provider == "scripted" {
        let script = scripted::Script::load(std::path::Path::new(rest))?;
        return serde_json::to_value(&script).map_err(|e| ModelError::Script {
            path: rest.to_string(),
            message: e.to_string(),
        });
    }
    let resolved = resolve(name, config)?;
    resolved.key()?;
    serde_json::to_value(serde_json::json!({ "provider": resolved }))
        .map_err(|e| ModelError::Config(format!("{name}: {e}")))
}

/// Builds the provider for a claimed attempt from its name and creation-time payload.
pub fn build(name: &str, payload: Option<&serde_json::Value>) -> Result<Box<dyn Provider>> {
    let (provider, rest) = split_model_name(name)?;
    if provider == "scripted" {
        let script = match payload {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ModelError::Script {
                path: rest.to_string(),
                message: e.to_string(),
            })?,
            None => scripted::Script::load(std::path::Path::new(rest))?,
        };
        return Ok(Box::new(scripted::ScriptedProvider::new(name, script)));
    }
    let resolved: ResolvedProvider = match payload.and_then(|p| p.get("provider")) {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| ModelError::Config(format!("{name}: stored provider settings: {e}")))?,
        None => resolve(name, &Config::default())?,
    };
    build_resolved(resolved)
}

/// Builds an adapter for a resolved provider (reads its key from the environment).
pub fn build_resolved(p: ResolvedProvider) -> Result<Box<dyn Provider>> {
    Ok(match p.kind {
        ProviderKind::OpenaiResponses => {
            Box::new(crate::openai_responses::OpenAiResponses::new(p)?)
        }
        ProviderKind::OpenaiChat => Box::new(crate::openai_chat::OpenAiChat::new(p)?),
        ProviderKind::Anthropic => Box::new(crate::anthropic::Anthropic::new(p)?),
        ProviderKind::Gemini => Box::new(crate::gemini::Gemini::new(p)?),
    })
}

/// Where a provider's key comes from, for `errand models` (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderInfo {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `built-in`, `errand.toml`, or both.
    pub source: String,
    /// The variable that holds the key; `None` when the provider needs none.
    pub api_key_env: Option<String>,
    pub key_set: bool,
    pub models: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub model: String,
    #[serde(flatten)]
    pub config: ModelConfig,
}

/// Every provider the configuration knows, with its models: the ones configured, else the
/// suggested one.
pub fn list(config: &Config) -> Vec<ProviderInfo> {
    let mut names: Vec<String> = BUILTIN.iter().map(|s| s.to_string()).collect();
    names.extend(config.providers.keys().cloned());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (pc, source) = provider_config(&name, config)?;
            let mut models: Vec<String> = pc.models.keys().cloned().collect();
            if models.is_empty()
                && let Some(m) = suggested_model(&name)
            {
                models.push(m.to_string());
            }
            let models = models
                .into_iter()
                .filter_map(|m| {
                    let r = resolve(&format!("{name}:{m}"), config).ok()?;
                    Some(ModelInfo {
                        model: m,
                        config: r.model_config,
                    })
                })
                .collect();
            Some(ProviderInfo {
                key_set: pc
                    .api_key_env
                    .as_deref()
                    .is_some_and(|v| env_nonempty(v).is_some()),
                api_key_env: pc.api_key_env.clone(),
                kind: pc.kind?,
                base_url: pc.base_url.clone().unwrap_or_default(),
                source: source.to_string(),
                name,
                models,
            })
        })
        .collect()
}

/// One cheap request per model of `only` (or of every provider that has a key or needs none):
/// is the endpoint reachable, is the key valid, does the model exist?
pub async fn check(config: &Config, only: Option<&str>) -> Result<Vec<crate::CheckReport>> {
    let infos = list(config);
    if let Some(p) = only
        && !infos.iter().any(|i| i.name == p)
    {
        return Err(ModelError::UnknownProvider {
            provider: p.to_string(),
            model: format!("{p}:…"),
            known: known_providers(config),
        });
    }
    let mut out = Vec::new();
    for info in infos {
        if only.is_some_and(|p| p != info.name) {
            continue;
        }
        // Without a filter, skip providers that cannot work here (no key set), and the local
        // server unless it is configured or asked for.
        if only.is_none()
            && (info.api_key_env.is_some() && !info.key_set
                || info.name == "ollama" && !config.providers.contains_key("ollama"))
        {
            continue;
        }
        let models: Vec<String> = if info.models.is_empty() {
            vec![String::new()]
        } else {
            info.models.iter().map(|m| m.model.clone()).collect()
        };
        for model in models {
            let started = std::time::Instant::now();
            let result = async {
                let r = resolve(
                    &format!(
                        "{}:{}",
                        info.name,
                        if model.is_empty() { "-" } else { &model }
                    ),
                    config,
                )?;
                let p = build_resolved(r)?;
                p.probe(if model.is_empty() { None } else { Some(&model) })
                    .await
            }
            .await;
            out.push(crate::CheckReport {
                provider: info.name.clone(),
                model: model.clone(),
                ok: result.is_ok(),
                detail: match result {
                    Ok(d) => d,
                    Err(e) => e.to_string(),
                },
                latency_ms: started.elapsed().as_millis() as u64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_provider_lists_the_known_ones() {
        let e = resolve("mistral:large", &Config::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("anthropic, gemini, ollama, openai, scripted"),
            "{e}"
        );
        assert!(e.contains("[providers.mistral]"), "{e}");
    }

    #[test]
    fn configured_provider_overrides_builtin_and_prices() {
        let cfg = Config::parse(
            r#"
[providers.anthropic]
base_url = "http://127.0.0.1:9/"
[providers.anthropic.models."claude-sonnet-4-5"]
output = 20.0
[providers.vllm]
kind = "openai-chat"
base_url = "http://127.0.0.1:8000/v1"
"#,
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = resolve("anthropic:claude-sonnet-4-5", &cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.kind, ProviderKind::Anthropic);
        assert_eq!(r.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
        assert_eq!(r.model_config.output, Some(20.0));
        assert_eq!(r.model_config.input, Some(3.0));
        assert_eq!(r.url("/v1/messages"), "http://127.0.0.1:9/v1/messages");
        let v = resolve("vllm:qwen", &cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.api_key_env, None);
        assert_eq!(v.model_config.input, None);
    }

    #[test]
    fn gateway_providers_resolve_without_their_key() {
        let cfg = Config::parse(
            "[providers.corp]\nkind = \"openai-chat\"\nbase_url = \"http://127.0.0.1:9/v1\"\nheaders = { \"x-team\" = \"a\" }\n[providers.corp.models.\"m-1\"]\ninput = 1.0\noutput = 2.0\n[providers.keyed]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_env = \"ERRAND_TEST_SURELY_UNSET_KEY\"\n",
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let g = resolve_gateway("corp", &cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.kind, ProviderKind::OpenaiChat);
        assert_eq!(g.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(g.api_key_env, None);
        assert_eq!(g.headers.get("x-team").map(String::as_str), Some("a"));
        assert_eq!(g.models.get("m-1").and_then(|m| m.output), Some(2.0));
        assert!(!g.builtin_prices);
        let err = |n: &str| {
            resolve_gateway(n, &cfg)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err("keyed"),
            "gateway provider 'keyed' needs an API key: set ERRAND_TEST_SURELY_UNSET_KEY in the server's environment"
        );
        assert!(err("mistral").contains("unknown gateway provider 'mistral'"));
        assert!(err("mistral").contains("corp"), "{}", err("mistral"));
        assert!(err("scripted").contains("not an HTTP API"));
        assert!(err("a/b").contains("route name"));
    }

    #[test]
    fn missing_key_names_the_variable() {
        let cfg = Config::parse(
            "[providers.corp]\nkind = \"openai-chat\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"ERRAND_TEST_SURELY_UNSET_KEY\"\n",
            "errand.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = prepare("corp:m", &cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "model corp:m needs an API key: set ERRAND_TEST_SURELY_UNSET_KEY in the server's environment"
        );
    }
}
