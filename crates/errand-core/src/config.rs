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
}

/// How to run tasks for one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
}

/// The whole `errand.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model used when neither the task nor its environment names one.
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
}

impl Config {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        for (name, env) in &cfg.environments {
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
}
