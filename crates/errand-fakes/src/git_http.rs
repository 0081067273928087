//! A git smart-HTTP server on loopback: the real `git http-backend`, run as a CGI program for
//! each request, behind HTTP basic authentication. Pushes and fetches through it are real git
//! transfers into the bare repositories under a project root.
//!
//! Each request is recorded: method, URI as received, the user it authenticated as, the
//! status, and the command lines of the git processes running on the machine at that moment
//! (the pushing client among them), so that a test can prove a secret was in none of them.

use crate::server::{Running, base64_decode, serve};
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One request the server got.
#[derive(Debug, Clone)]
pub struct GitHttpRequest {
    pub method: String,
    /// The request target exactly as received (path and query).
    pub uri: String,
    /// The `Authorization` header's scheme (`Basic`), if one was sent.
    pub auth_scheme: Option<String>,
    /// The user name the request authenticated as (right password only).
    pub user: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Command lines (arguments joined by spaces) of the git processes alive when the request
    /// came in.
    pub git_processes: Vec<String>,
}

struct State {
    root: PathBuf,
    auth: Option<(String, String)>,
    requests: Mutex<Vec<GitHttpRequest>>,
    stderr: Mutex<String>,
}

/// `git http-backend` over HTTP on 127.0.0.1. Dropping it stops the server.
pub struct GitHttpServer {
    /// `http://127.0.0.1:PORT`; a repository `x.git` under the root is at `{base_url}/x.git`.
    pub base_url: String,
    state: Arc<State>,
    _running: Running,
}

impl GitHttpServer {
    /// Serves the bare repositories under `project_root`. With `auth` (user, password), every
    /// request must carry those credentials (HTTP basic), else it gets a 401 with a
    /// `WWW-Authenticate` challenge; without, anyone may fetch and push.
    pub fn start(project_root: &Path, auth: Option<(&str, &str)>) -> GitHttpServer {
        let state = Arc::new(State {
            root: project_root.to_path_buf(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            requests: Mutex::new(Vec::new()),
            stderr: Mutex::new(String::new()),
        });
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
                let st = st.clone();
                async move { handle(st, method, uri, headers, body).await }
            },
        );
        let running = serve("git http fake", app);
        GitHttpServer {
            base_url: format!("http://{}", running.addr),
            state,
            _running: running,
        }
    }

    /// The URL of the repository `name` (for example `shop.git`) under the root.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<GitHttpRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What `git http-backend` wrote on its standard error so far.
    pub fn backend_stderr(&self) -> String {
        self.state
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The command lines of running processes whose program name starts with `git`.
fn git_processes() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let prog = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        if prog.starts_with("git") {
            out.push(args.join(" "));
        }
    }
    out
}

/// The user and password of a `Basic` authorization header.
fn basic_credentials(headers: &HeaderMap) -> (Option<String>, Option<(String, String)>) {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (None, None);
    };
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return (Some(scheme.to_string()), None);
    }
    let pair = base64_decode(rest)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    (Some(scheme.to_string()), pair)
}

fn plain(status: u16, text: &str) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "text/plain")
        .body(Body::from(text.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn handle(
    st: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let procs = git_processes();
    let (auth_scheme, pair) = basic_credentials(&headers);
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let record = |status: u16, user: Option<String>| {
        st.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(GitHttpRequest {
                method: method.to_string(),
                uri: target.clone(),
                auth_scheme: auth_scheme.clone(),
                user,
                status,
                git_processes: procs.clone(),
            });
    };
    let user = match (&st.auth, &pair) {
        (None, _) => "anonymous".to_string(),
        (Some((u, p)), Some((gu, gp))) if u == gu && p == gp => gu.clone(),
        (Some(_), _) => {
            record(401, None);
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"errand fake git\"")
                .header("content-type", "text/plain")
                .body(Body::from("authentication required\n"))
                .unwrap_or_else(|_| Response::new(Body::empty()));
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &st.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", &user)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(n) = header("content-length") {
        cmd.env("CONTENT_LENGTH", n);
    }
    if let Some(p) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(enc) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            record(500, Some(user));
            return plain(500, &format!("cannot run git http-backend: {e}\n"));
        }
    };
    // Request body → CGI stdin, streamed.
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let mut data = body.into_data_stream();
            while let Some(chunk) = data.next().await {
                let Ok(chunk) = chunk else { break };
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    if let Some(mut stderr) = child.stderr.take() {
        let st = st.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut buf).await;
            if !buf.is_empty() {
                st.stderr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf));
            }
        });
    }
    let Some(stdout) = child.stdout.take() else {
        record(500, Some(user));
        return plain(500, "git http-backend has no stdout\n");
    };
    // The child lives until it exits on its own.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    // CGI headers, then the body as it comes.
    let mut reader = BufReader::new(stdout);
    let mut status = 200u16;
    let mut builder = Response::builder();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    record(status, Some(user));
    let stream = tokio_util::io::ReaderStream::new(reader);
    builder
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
