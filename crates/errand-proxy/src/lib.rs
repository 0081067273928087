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
//!
//! - [`policy`]: [`Policy`] (allow and deny entries, presets, the DNS-rebinding guard).
//! - [`presets`]: [`Presets`], git hosting built in, package registries discovered from the
//!   worker machine's own package-tool configuration or given by `[network.presets]`.
//! - [`resolve`]: the [`Resolve`] trait, [`SystemResolver`] and the test-only [`MapResolver`].
//! - [`proxy`]: [`Proxy`], the HTTP/CONNECT forward proxy, and its [`NetRecord`]s.
//! - [`gateway`]: the model gateway.

pub mod gateway;
pub mod policy;
pub mod presets;
pub mod proxy;
pub mod resolve;

pub use policy::{Decision, Policy, PolicyError};
pub use presets::{Discovery, PresetError, Presets};
pub use proxy::{MAX_CLIENT_CONNECTIONS, NetRecord, Proxy, ProxyConfig, ProxyError, ProxyHandle};
pub use resolve::{
    MapResolver, MapSpecError, Resolve, SystemResolver, TEST_RESOLVE_ENV, resolver,
    resolver_from_env,
};
