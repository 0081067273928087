//! The server's own line of defence: whatever the store holds (here written straight into it,
//! as a worker without redaction would), the API never returns a configured secret's value.
//! Real SQLite, real git, real HTTP on loopback.

use errand_core::{Config, EnvironmentSnapshot, EventKind, NewAttempt, NewTask, OutputStream};
use errand_git::MirrorCache;
use errand_server::{AppState, router, secrets_redactor};
use errand_store::{AttemptOutcome, ClaimRequest, SqliteStore, Store};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const VALUE: &str = "srv-s3cret-value-77";
const PH: &str = "[REDACTED:API_TOKEN]";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const CONFIG: &str = r#"
[environments.shop]
[environments.shop.secrets]
API_TOKEN = { from_env = "SRV_API_TOKEN" }
UNSET = { from_env = "SRV_NOT_SET" }
"#;

#[test]
fn the_redactor_holds_the_secrets_whose_variables_are_set() {
    let config = Config::parse(CONFIG, "errand.toml").unwrap();
    let r = secrets_redactor(&config, |v| {
        (v == "SRV_API_TOKEN").then(|| VALUE.to_string())
    });
    assert_eq!(r.names(), vec!["API_TOKEN"]);
    // Nothing configured, nothing to do.
    assert!(secrets_redactor(&Config::default(), |_| Some(VALUE.into())).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn api_output_never_carries_a_secret_value() {
    let tmp = tempfile::tempdir().unwrap();
    // A repository whose head commit adds the value, and its mirror.
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "base"]);
    let base = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("a.txt"), format!("one\ntoken={VALUE}\n")).unwrap();
    git(&repo, &["commit", "--quiet", "-am", "head"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let repo_s = repo.display().to_string();
    let mirrors = Arc::new(MirrorCache::new(tmp.path().join("mirrors")));
    let mirror = mirrors.mirror_path(&repo_s);
    std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    git(
        tmp.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            &repo_s,
            mirror.to_str().unwrap(),
        ],
    );

    // A task whose store rows hold the value everywhere text can go.
    let config = Config::parse(CONFIG, "errand.toml").unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&tmp.path().join("e.db")).unwrap());
    let id = errand_core::new_id();
    let task = store
        .create_task(NewTask {
            id: id.clone(),
            prompt: format!("use {VALUE} to deploy"),
            title: format!("use {VALUE}"),
            repo: repo_s.clone(),
            base_ref: "main".into(),
            base_commit: base.clone(),
            environment: EnvironmentSnapshot {
                name: Some("shop".into()),
                secrets: config.environments["shop"].secrets.clone(),
                ..Default::default()
            },
            model: "scripted:/x.json".into(),
            model_payload: None,
            mode: "run".into(),
            trigger: "api".into(),
            created_by: "test".into(),
            attempts: vec![NewAttempt {
                id: errand_core::new_id(),
                number: 1,
                branch: errand_git::branch_name(errand_core::short_id(&id), "use", 1),
                model: "scripted:/x.json".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let claimed = store
        .claim_attempt(&ClaimRequest {
            worker: "w".into(),
            sandbox: "none".into(),
            isolated: false,
            lease_ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .unwrap();
    let aid = claimed.attempt.id.clone();
    store
        .append_events(
            &aid,
            Some("w"),
            vec![
                EventKind::Output {
                    call_id: Some("c1".into()),
                    stream: OutputStream::Stdout,
                    data: format!("token: {VALUE}\n"),
                },
                EventKind::Error {
                    message: format!("failed with {VALUE}"),
                },
            ],
        )
        .await
        .unwrap();
    store
        .finish_attempt(
            &aid,
            "w",
            AttemptOutcome {
                status: Some(errand_core::Status::Failed),
                head_commit: Some(head),
                diff: Some(format!("+token={VALUE}\n")),
                summary: Some(format!("set {VALUE}")),
                error: Some(format!("error: {VALUE}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let redactor = secrets_redactor(&config, |v| {
        (v == "SRV_API_TOKEN").then(|| VALUE.to_string())
    });
    let state = Arc::new(AppState {
        store,
        public_url: None,
        config: Arc::new(config),
        config_path: None,
        mirrors,
        sandbox_name: "none".into(),
        workers: 0,
        shutdown: tokio_util::sync::CancellationToken::new(),
        redactor,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = state.shutdown.clone();
    let served = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });

    errand_model::install_tls();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base_url = format!("http://{addr}/api/v1");
    let short = &task.id;
    for (path, sse) in [
        (format!("/tasks/{short}"), false),
        ("/tasks".to_string(), false),
        (format!("/tasks/{short}/events"), false),
        (format!("/tasks/{short}/events"), true),
        (format!("/tasks/{short}/events/stream"), true),
        (format!("/tasks/{short}/diff"), false),
        (format!("/tasks/{short}/diff?format=json"), false),
        (format!("/tasks/{short}/patch"), false),
    ] {
        let mut req = http.get(format!("{base_url}{path}"));
        if sse {
            req = req.header("accept", "text/event-stream");
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let body = resp.text().await.unwrap();
        assert!(!body.contains(VALUE), "{path} (sse: {sse}) leaks:\n{body}");
        assert!(
            body.contains(PH),
            "{path} (sse: {sse}) lacks the placeholder:\n{body}"
        );
    }
    // Every field that held it.
    let t: serde_json::Value = http
        .get(format!("{base_url}/tasks/{short}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["prompt"], format!("use {PH} to deploy"));
    assert_eq!(t["attempts"][0]["error"], format!("error: {PH}"));
    assert_eq!(t["attempts"][0]["summary"], format!("set {PH}"));
    let patch = http
        .get(format!("{base_url}/tasks/{short}/patch"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(patch.contains(&format!("+token={PH}")), "{patch}");
    // The SSE streams above ended on their own (the attempt is over); stop the server.
    served.abort();
}
