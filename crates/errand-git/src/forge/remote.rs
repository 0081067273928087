//! Which repository a remote URL names, in the terms of a forge's API.

use errand_core::ForgeKind;

/// The host and repository path of a remote URL: `https://host[:port]/a/b(.git)`,
/// `ssh://[user@]host[:port]/a/b(.git)`, or scp-like `[user@]host:a/b(.git)`. The path has no
/// leading or trailing `/` and no `.git` suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRepo {
    pub host: String,
    pub path: String,
}

/// Parses a remote URL; `None` for local paths and anything without a repository path.
pub fn parse_remote_url(url: &str) -> Option<RemoteRepo> {
    let url = url.trim();
    let (authority, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        (authority, path)
    } else {
        // scp-like: host:path, with no slash before the colon.
        let (host, path) = url.split_once(':')?;
        if host.is_empty() || host.contains('/') {
            return None;
        }
        (host, path)
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // [v6]:port
        host_port
            .split_once(']')
            .map(|(h, _)| format!("{h}]"))
            .unwrap_or_else(|| host_port.to_string())
    } else {
        host_port.split(':').next().unwrap_or("").to_string()
    };
    let path = path.trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    if host.is_empty() || path.is_empty() || path.split('/').any(str::is_empty) {
        return None;
    }
    Some(RemoteRepo {
        host: host.to_ascii_lowercase(),
        path: path.to_string(),
    })
}

/// A repository as a forge's API names it: `namespace/name` (on GitLab the namespace may hold
/// subgroups: `group/sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    pub namespace: String,
    pub name: String,
}

impl RepoId {
    /// `namespace/name`.
    pub fn full(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The path part of an API root URL (`/gitlab/api/v4` for `https://host/gitlab/api/v4`).
pub(crate) fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].trim_end_matches('/'),
        None => "",
    }
}

/// The repository a remote URL names on a forge whose API root is `api_root`.
///
/// GitHub: exactly `OWNER/REPO`. GitLab: the whole project path (`group/sub/project`), less
/// the instance's relative URL root when the API lives under one (`/gitlab/api/v4`). Gitea:
/// the last two components (Gitea may be served under a sub-path).
pub fn repo_id(kind: ForgeKind, api_root: &str, remote_url: &str) -> Option<RepoId> {
    let remote = parse_remote_url(remote_url)?;
    let mut parts: Vec<&str> = remote.path.split('/').collect();
    match kind {
        ForgeKind::Github => {
            if parts.len() != 2 {
                return None;
            }
        }
        ForgeKind::Gitlab => {
            let api_path = url_path(api_root);
            if let Some(prefix) = api_path.strip_suffix("/api/v4") {
                let prefix: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
                if !prefix.is_empty()
                    && parts.len() > prefix.len() + 1
                    && parts.starts_with(&prefix)
                {
                    parts.drain(..prefix.len());
                }
            }
            if parts.len() < 2 {
                return None;
            }
        }
        ForgeKind::Gitea => {
            if parts.len() < 2 {
                return None;
            }
            let n = parts.len();
            parts.drain(..n - 2);
        }
    }
    let name = parts.pop()?.to_string();
    Some(RepoId {
        namespace: parts.join("/"),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(host: &str, path: &str) -> Option<RemoteRepo> {
        Some(RemoteRepo {
            host: host.into(),
            path: path.into(),
        })
    }

    #[test]
    fn parses_remote_urls() {
        assert_eq!(
            parse_remote_url("https://github.com/acme/shop.git"),
            rr("github.com", "acme/shop")
        );
        assert_eq!(
            parse_remote_url("https://bot@GitHub.com/acme/shop/"),
            rr("github.com", "acme/shop")
        );
        assert_eq!(
            parse_remote_url("git@github.com:acme/shop.git"),
            rr("github.com", "acme/shop")
        );
        assert_eq!(
            parse_remote_url("ssh://git@gitlab.example.com:2222/group/sub/proj.git"),
            rr("gitlab.example.com", "group/sub/proj")
        );
        assert_eq!(
            parse_remote_url("http://127.0.0.1:3000/tea/repo"),
            rr("127.0.0.1", "tea/repo")
        );
        assert_eq!(parse_remote_url("/srv/git/repo.git"), None);
        assert_eq!(parse_remote_url("https://github.com/"), None);
        assert_eq!(parse_remote_url("https://github.com/a//x"), None);
    }

    #[test]
    fn repo_ids_per_forge() {
        let gh = |u| repo_id(ForgeKind::Github, "https://api.github.com", u).map(|r| r.full());
        assert_eq!(
            gh("git@github.com:acme/shop.git").as_deref(),
            Some("acme/shop")
        );
        assert_eq!(gh("https://github.com/acme/shop/extra"), None);
        assert_eq!(gh("https://github.com/acme"), None);

        let gl = |api, u| repo_id(ForgeKind::Gitlab, api, u);
        let id = gl(
            "https://gitlab.com/api/v4",
            "git@gitlab.com:group/sub/proj.git",
        );
        assert_eq!(
            id,
            Some(RepoId {
                namespace: "group/sub".into(),
                name: "proj".into()
            })
        );
        assert_eq!(
            gl(
                "https://host.example/gitlab/api/v4",
                "https://host.example/gitlab/group/proj.git"
            )
            .map(|r| r.full())
            .as_deref(),
            Some("group/proj")
        );
        assert_eq!(
            gl("https://gitlab.com/api/v4", "https://gitlab.com/proj"),
            None
        );

        let te = |u| repo_id(ForgeKind::Gitea, "https://h/api/v1", u).map(|r| r.full());
        assert_eq!(
            te("https://h/git/tea/repo.git").as_deref(),
            Some("tea/repo")
        );
        assert_eq!(te("git@h:tea/repo.git").as_deref(), Some("tea/repo"));
    }
}
