//! Tokens, kept out of `Debug` output, and removed from any text that could echo them.

use std::fmt;

/// A secret value (a forge token). `Debug` and `Display` print `***`; the value is only
/// reachable through [`Secret::expose`], at the one place that hands it to git or to an HTTP
/// header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Never put it in a URL, an argument, a log line or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every form of the secret that a server or a tool could echo back (as is,
    /// percent-encoded, or inside a base64 `user:secret` pair with `user`) replaced by `***`.
    pub fn scrub(&self, text: &str, user: Option<&str>) -> String {
        if self.0.is_empty() {
            return text.to_string();
        }
        let mut forms = vec![self.0.clone(), percent_encode(&self.0)];
        if let Some(u) = user {
            forms.push(base64(format!("{u}:{}", self.0).as_bytes()));
        }
        // Longest first, so that a form containing another is replaced whole.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let mut out = text.to_string();
        for f in forms {
            if !f.is_empty() {
                out = out.replace(&f, "***");
            }
        }
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user name and token for pushing over HTTPS (and for a forge's API).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub token: Secret,
    /// The environment variable the token came from, named in authentication errors.
    pub token_env: Option<String>,
}

impl Credentials {
    pub fn new(username: impl Into<String>, token: Secret) -> Credentials {
        Credentials {
            username: username.into(),
            token,
            token_env: None,
        }
    }

    /// Reads the token from the environment variable `token_env` of this process. Errors name
    /// the variable, never a value.
    pub fn from_env(username: &str, token_env: &str) -> Result<Credentials, MissingToken> {
        match std::env::var(token_env) {
            Ok(v) if !v.trim().is_empty() => Ok(Credentials {
                username: username.to_string(),
                token: Secret::new(v.trim()),
                token_env: Some(token_env.to_string()),
            }),
            _ => Err(MissingToken(token_env.to_string())),
        }
    }

    /// `text` without the token in any form (see [`Secret::scrub`]).
    pub fn scrub(&self, text: &str) -> String {
        self.token.scrub(text, Some(&self.username))
    }

    /// Where the token came from, for messages: `the token in GITHUB_TOKEN`.
    pub fn describe_source(&self) -> String {
        match &self.token_env {
            Some(e) => format!("the token in {e}"),
            None => "the token".to_string(),
        }
    }
}

/// The token's environment variable is not set (or empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "environment variable {0} is not set or is empty; set it to the forge token (the variable is named by forge.token_env)"
)]
pub struct MissingToken(pub String);

/// Percent-encodes everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`):
/// one path segment or query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("ghp_supersecret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        let c = Credentials::new("bot", s);
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn scrubs_every_form() {
        let s = Secret::new("to/ken+1");
        let b = base64(b"bot:to/ken+1");
        let text = format!("a to/ken+1 b to%2Fken%2B1 c Basic {b} d");
        let out = s.scrub(&text, Some("bot"));
        assert_eq!(out, "a *** b *** c Basic *** d");
        assert_eq!(Secret::new("").scrub("abc", None), "abc");
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("group/sub proj"), "group%2Fsub%20proj");
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("acme:errand/x"), "acme%3Aerrand%2Fx");
    }

    #[test]
    fn missing_token_names_the_variable() {
        let e = Credentials::from_env("bot", "ERRAND_TEST_SURELY_UNSET_VAR").err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("ERRAND_TEST_SURELY_UNSET_VAR"), "{msg}");
    }
}
