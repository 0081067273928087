//! Name resolution for the proxy. The proxy resolves every name itself, checks the addresses
//! (the DNS-rebinding guard) and connects only to an address it checked.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test-only environment variable from which the worker builds a [`MapResolver`] instead of
/// the system resolver: `ERRAND_TEST_RESOLVE="git.test=127.0.0.1,meta.test=169.254.169.254"`.
/// It exists so that end-to-end tests can give loopback servers host names; it must never be
/// set in production (names it does not list fail to resolve).
pub const TEST_RESOLVE_ENV: &str = "ERRAND_TEST_RESOLVE";

/// Resolves a host name to addresses.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// The addresses of `host` (a name, lowercase, without a trailing dot). An unknown name is
    /// an error of kind `NotFound`.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo` through tokio), with a timeout and a small cache: a
/// name's addresses are kept for `cache_ttl` (failures are not kept), so that a client making
/// many requests does not pay a lookup for each. The proxy connects only to the addresses it
/// checked, so a cached answer cannot be rebound.
#[derive(Debug)]
pub struct SystemResolver {
    pub timeout: Duration,
    pub cache_ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

/// Names kept at most; the cache is emptied when it is full.
const CACHE_MAX: usize = 4096;

impl SystemResolver {
    pub fn new(timeout: Duration, cache_ttl: Duration) -> SystemResolver {
        SystemResolver {
            timeout,
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for SystemResolver {
    /// A 5 s timeout and a 30 s cache.
    fn default() -> Self {
        SystemResolver::new(Duration::from_secs(5), Duration::from_secs(30))
    }
}

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        let key = normalize(host);
        if let Some((at, addrs)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(addrs.clone());
        }
        let lookup = tokio::net::lookup_host((key.as_str(), port));
        let addrs = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "resolving {host} timed out after {} ms",
                        self.timeout.as_millis()
                    ),
                )
            })??;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        if !self.cache_ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), out.clone()));
        }
        Ok(out)
    }
}

/// A fixed map of names to addresses; other names fail as if they did not exist. For tests
/// (see [`TEST_RESOLVE_ENV`]) and benches.
#[derive(Debug, Clone, Default)]
pub struct MapResolver {
    map: BTreeMap<String, Vec<IpAddr>>,
}

/// A malformed [`MapResolver`] specification.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad resolver map entry '{entry}': {problem}; expected NAME=ADDRESS[,NAME=ADDRESS…] \
     (e.g. git.test=127.0.0.1,meta.test=169.254.169.254; repeat a name for several addresses)"
)]
pub struct MapSpecError {
    pub entry: String,
    pub problem: String,
}

impl MapResolver {
    pub fn new() -> MapResolver {
        MapResolver::default()
    }

    /// Adds an address for `host` (a name may have several).
    pub fn insert(&mut self, host: &str, addr: IpAddr) -> &mut Self {
        let list = self.map.entry(normalize(host)).or_default();
        if !list.contains(&addr) {
            list.push(addr);
        }
        self
    }

    /// Parses `name=address[,name=address…]`; whitespace around entries is ignored and a name
    /// repeated gets every address given.
    pub fn from_spec(spec: &str) -> Result<MapResolver, MapSpecError> {
        let mut r = MapResolver::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |problem: &str| MapSpecError {
                entry: entry.to_string(),
                problem: problem.to_string(),
            };
            let (name, addr) = entry.split_once('=').ok_or_else(|| bad("missing '='"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad("the name is empty"));
            }
            let addr = addr.trim();
            let addr = addr
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(addr);
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| bad(&format!("'{addr}' is not an IP address")))?;
            r.insert(name, ip);
        }
        Ok(r)
    }
}

/// The resolver for a proxy: a [`MapResolver`] from `test_spec` (the value of
/// [`TEST_RESOLVE_ENV`], test-only) when given, else the [`SystemResolver`]. The worker calls
/// it as `resolver(std::env::var(TEST_RESOLVE_ENV).ok().as_deref())`.
pub fn resolver(test_spec: Option<&str>) -> Result<Arc<dyn Resolve>, MapSpecError> {
    match test_spec {
        Some(spec) => {
            tracing::warn!(
                "{TEST_RESOLVE_ENV} is set: the egress proxy resolves names from it alone (test only)"
            );
            Ok(Arc::new(MapResolver::from_spec(spec)?))
        }
        None => Ok(Arc::new(SystemResolver::default())),
    }
}

/// [`resolver`] with the test-only map read from [`TEST_RESOLVE_ENV`] in this process's
/// environment (an empty value counts as unset); the error names the variable.
pub fn resolver_from_env() -> Result<Arc<dyn Resolve>, String> {
    let spec = std::env::var(TEST_RESOLVE_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty());
    resolver(spec.as_deref())
        .map_err(|e| format!("{TEST_RESOLVE_ENV} is not a valid resolver map: {e}"))
}

fn normalize(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    h.strip_suffix('.').unwrap_or(&h).to_string()
}

#[async_trait]
impl Resolve for MapResolver {
    async fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        self.map.get(&normalize(host)).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not a known name (test resolver map)"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn map_resolves_listed_names_only() {
        let r = MapResolver::from_spec(
            " git.test=127.0.0.1, meta.test=169.254.169.254,Git.Test.=::1,v6.test=[fd00::1]",
        )
        .unwrap();
        assert_eq!(
            r.resolve("git.test", 80).await.unwrap(),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            r.resolve("META.test.", 443).await.unwrap(),
            vec!["169.254.169.254".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            r.resolve("v6.test", 443).await.unwrap(),
            vec!["fd00::1".parse::<IpAddr>().unwrap()]
        );
        let e = r.resolve("other.test", 80).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        for bad in ["git.test", "=1.2.3.4", "x.test=nope"] {
            let e = MapResolver::from_spec(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn the_test_spec_replaces_the_system_resolver() {
        let r = resolver(Some("only.test=127.0.0.2")).unwrap();
        assert_eq!(
            r.resolve("only.test", 80).await.unwrap(),
            vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(r.resolve("localhost", 80).await.is_err());
        assert!(resolver(Some("bad")).is_err());
        let sys = resolver(None).unwrap();
        assert!(sys.resolve("localhost", 80).await.is_ok());
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost() {
        let addrs = SystemResolver::default()
            .resolve("localhost", 80)
            .await
            .unwrap();
        assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
    }
}
