//! Prices and context windows of well-known models, and the cost of a turn.
//!
//! The built-in table holds list prices in US dollars per million tokens as the vendors
//! published them in 2025. Prices change: override any of them (or add models) under
//! `[providers.NAME.models."MODEL"]` in `errand.toml`. A model with no known price costs 0 and
//! the attempt says so once.

use errand_core::{ModelConfig, ProviderKind, Usage};

struct Known {
    prefix: &'static str,
    input: f64,
    cached_input: f64,
    cache_write: Option<f64>,
    output: f64,
    context_window: u64,
}

const fn k(
    prefix: &'static str,
    input: f64,
    cached_input: f64,
    cache_write: Option<f64>,
    output: f64,
    context_window: u64,
) -> Known {
    Known {
        prefix,
        input,
        cached_input,
        cache_write,
        output,
        context_window,
    }
}

// Longest prefixes first within a family: the first match wins.
const OPENAI: &[Known] = &[
    k("gpt-5-nano", 0.05, 0.005, None, 0.40, 400_000),
    k("gpt-5-mini", 0.25, 0.025, None, 2.00, 400_000),
    k("gpt-5", 1.25, 0.125, None, 10.00, 400_000),
    k("gpt-4.1-nano", 0.10, 0.025, None, 0.40, 1_047_576),
    k("gpt-4.1-mini", 0.40, 0.10, None, 1.60, 1_047_576),
    k("gpt-4.1", 2.00, 0.50, None, 8.00, 1_047_576),
    k("gpt-4o-mini", 0.15, 0.075, None, 0.60, 128_000),
    k("gpt-4o", 2.50, 1.25, None, 10.00, 128_000),
    k("o4-mini", 1.10, 0.275, None, 4.40, 200_000),
    k("o3", 2.00, 0.50, None, 8.00, 200_000),
];

const ANTHROPIC: &[Known] = &[
    k("claude-opus-4", 15.00, 1.50, Some(18.75), 75.00, 200_000),
    k("claude-sonnet-4", 3.00, 0.30, Some(3.75), 15.00, 200_000),
    k("claude-haiku-4", 1.00, 0.10, Some(1.25), 5.00, 200_000),
    k("claude-3-7-sonnet", 3.00, 0.30, Some(3.75), 15.00, 200_000),
    k("claude-3-5-haiku", 0.80, 0.08, Some(1.00), 4.00, 200_000),
];

const GEMINI: &[Known] = &[
    k("gemini-2.5-flash-lite", 0.10, 0.025, None, 0.40, 1_048_576),
    k("gemini-2.5-flash", 0.30, 0.075, None, 2.50, 1_048_576),
    k("gemini-2.5-pro", 1.25, 0.31, None, 10.00, 1_048_576),
];

/// The built-in entry for `model`, if one of the families knows it. Local servers (and any
/// provider whose base URL is not the vendor's) get nothing: their models are free or priced
/// by the user.
pub fn builtin(kind: ProviderKind, model: &str) -> Option<ModelConfig> {
    let table = match kind {
        ProviderKind::OpenaiResponses | ProviderKind::OpenaiChat => OPENAI,
        ProviderKind::Anthropic => ANTHROPIC,
        ProviderKind::Gemini => GEMINI,
    };
    let model = model.rsplit('/').next().unwrap_or(model);
    table
        .iter()
        .find(|e| model.starts_with(e.prefix))
        .map(|e| ModelConfig {
            input: Some(e.input),
            cached_input: Some(e.cached_input),
            cache_write: e.cache_write,
            output: Some(e.output),
            context_window: Some(e.context_window),
            max_output_tokens: None,
        })
}

/// The prices a provider applies to whichever model a request names: the provider's own
/// `[providers.NAME.models."MODEL"]` entries over the built-in table (when it applies). The
/// model gateway uses it, where the model is known only from each request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    pub models: std::collections::BTreeMap<String, ModelConfig>,
    /// Whether the built-in table applies (the vendors' own providers).
    pub builtin: bool,
}

impl Prices {
    /// The prices of `model`. A configured name matches exactly, or as the start of a dated
    /// name (`gpt-4.1-mini` prices `gpt-4.1-mini-2025-04-14`); `models/` prefixes are ignored.
    pub fn for_model(&self, kind: ProviderKind, model: &str) -> ModelConfig {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let user = self.models.get(model).copied().or_else(|| {
            self.models
                .iter()
                .filter(|(k, _)| {
                    model
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('@'))
                })
                .max_by_key(|(k, _)| k.len())
                .map(|(_, v)| *v)
        });
        let base = if self.builtin {
            builtin(kind, model).unwrap_or_default()
        } else {
            ModelConfig::default()
        };
        merge(&user.unwrap_or_default(), &base)
    }
}

/// Fields of `over`, else of `base`.
pub fn merge(over: &ModelConfig, base: &ModelConfig) -> ModelConfig {
    ModelConfig {
        input: over.input.or(base.input),
        cached_input: over.cached_input.or(base.cached_input),
        cache_write: over.cache_write.or(base.cache_write),
        output: over.output.or(base.output),
        context_window: over.context_window.or(base.context_window),
        max_output_tokens: over.max_output_tokens.or(base.max_output_tokens),
    }
}

/// Whether `m` has enough of a price to count cost.
pub fn priced(m: &ModelConfig) -> bool {
    m.input.is_some() && m.output.is_some()
}

/// The cost of `usage` in US dollars. Cached reads default to the input price and cache
/// writes to 1.25× the input price when the table has no separate figure.
pub fn cost(usage: &Usage, m: &ModelConfig) -> f64 {
    let (Some(input), Some(output)) = (m.input, m.output) else {
        return 0.0;
    };
    let cached = m.cached_input.unwrap_or(input);
    let write = m.cache_write.unwrap_or(input * 1.25);
    let plain = usage
        .input_tokens
        .saturating_sub(usage.cached_input_tokens)
        .saturating_sub(usage.cache_write_tokens);
    (plain as f64 * input
        + usage.cached_input_tokens as f64 * cached
        + usage.cache_write_tokens as f64 * write
        + usage.output_tokens as f64 * output)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_and_prefixed_names_find_their_family() {
        let m = builtin(ProviderKind::Anthropic, "claude-sonnet-4-5-20250929");
        assert_eq!(m.and_then(|m| m.input), Some(3.0));
        let m = builtin(ProviderKind::OpenaiChat, "openai/gpt-5-mini");
        assert_eq!(m.and_then(|m| m.output), Some(2.0));
        assert!(builtin(ProviderKind::Gemini, "gemma-3").is_none());
    }

    #[test]
    fn cost_counts_cached_and_written_input_apart() {
        let m = builtin(ProviderKind::Anthropic, "claude-sonnet-4-5").unwrap_or_default();
        let u = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 600_000,
            cache_write_tokens: 100_000,
            output_tokens: 100_000,
            ..Default::default()
        };
        // 300k plain × $3 + 600k cached × $0.30 + 100k written × $3.75 + 100k out × $15.
        let want = 0.9 + 0.18 + 0.375 + 1.5;
        assert!((cost(&u, &m) - want).abs() < 1e-9, "{}", cost(&u, &m));
        assert_eq!(cost(&u, &ModelConfig::default()), 0.0);
    }

    #[test]
    fn prices_by_request_model_prefer_the_configured_entry() {
        let mut p = Prices {
            builtin: true,
            ..Default::default()
        };
        p.models.insert(
            "gpt-4.1-mini".into(),
            ModelConfig {
                output: Some(9.0),
                ..Default::default()
            },
        );
        let m = p.for_model(ProviderKind::OpenaiChat, "gpt-4.1-mini-2025-04-14");
        assert_eq!((m.input, m.output), (Some(0.40), Some(9.0)));
        let m = p.for_model(ProviderKind::Gemini, "models/gemini-2.5-pro");
        assert_eq!(m.input, Some(1.25));
        // A configured name is not a prefix of an unrelated longer name.
        assert_eq!(
            p.for_model(ProviderKind::OpenaiChat, "gpt-4.1-mini2")
                .output,
            Some(1.60)
        );
        p.builtin = false;
        assert!(!priced(&p.for_model(ProviderKind::OpenaiChat, "gpt-5")));
    }
}
