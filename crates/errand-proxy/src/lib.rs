//! The egress proxy and the model gateway of an attempt.
//!
//! The proxy is an HTTP forward proxy (plain requests and `CONNECT` tunnels) that a box reaches
//! through a Unix socket bridged onto its loopback. It checks every request against the
//! attempt's policy, resolves names itself (refusing names that resolve to loopback, private,
//! link-local or metadata addresses unless allowed), never decrypts TLS, and reports every
//! decision. The gateway serves OpenAI-, Anthropic- and Gemini-compatible endpoints to the box
//! and adds the real key outside it.
//!
//! This crate must not know about tasks or the database, and must not run boxes.

pub mod gateway;
