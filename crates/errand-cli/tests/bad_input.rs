//! Every bad input gets a clear one-line error (CLI) or a 4xx JSON error (API), and leaves
//! nothing half-created.

mod common;

use common::*;
use serde_json::json;

fn task_count(server: &Server) -> usize {
    let out = ok(server.cli(&["ls", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["tasks"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_bad_inputs_get_one_line_errors_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let repo_s = repo.display().to_string();
    let good = write_script(tmp.path(), "good.json", json!({"turns": [{"text": "hi"}]}));
    let good_m = format!("scripted:{}", good.display());
    let malformed = tmp.path().join("bad.json");
    std::fs::write(&malformed, "{\"turns\": [ {\"tool_calls\": 5} ]").unwrap();
    let empty_turns = write_script(tmp.path(), "empty.json", json!({"turns": []}));
    let not_repo = tmp.path().join("plain");
    std::fs::create_dir_all(&not_repo).unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);

    fails_with(
        server.cli(&["run", "   ", "--repo", &repo_s, "--model", &good_m]),
        &["prompt is empty"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &not_repo.display().to_string(),
            "--model",
            &good_m,
        ]),
        &["is not a git repository", "--repo"],
    );
    fails_with(
        server.cli(&["run", "x", "--repo", "/no/such/dir", "--model", &good_m]),
        &["does not exist", "--repo"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &repo_s,
            "--base",
            "nope-branch",
            "--model",
            &good_m,
        ]),
        &["unknown base ref 'nope-branch'", "--base"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &repo_s,
            "--base=--upload-pack=evil",
            "--model",
            &good_m,
        ]),
        &["not a valid base ref"],
    );
    fails_with(
        server.cli(&["run", "x", "--repo", &repo_s, "--model", "openai-ish:gpt"]),
        &["unknown model provider 'openai-ish'"],
    );
    fails_with(
        server.cli(&["run", "x", "--repo", &repo_s, "--model", "gpt-5"]),
        &["provider:model"],
    );
    fails_with(
        server.cli(&["run", "x", "--repo", &repo_s]),
        &["no model given", "--model"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &repo_s,
            "--model",
            "scripted:/no/such/file.json",
        ]),
        &["/no/such/file.json", "cannot read it"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &repo_s,
            "--model",
            &format!("scripted:{}", malformed.display()),
        ]),
        &["bad.json", "not a valid script"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            &repo_s,
            "--model",
            &format!("scripted:{}", empty_turns.display()),
        ]),
        &["no turns"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            "file:///no/such/repo.git",
            "--model",
            &good_m,
        ]),
        &["cannot reach repository"],
    );
    fails_with(
        server.cli(&[
            "run", "x", "--repo", &repo_s, "--model", &good_m, "--check", "",
        ]),
        &["--check needs a command"],
    );
    assert_eq!(
        task_count(&server),
        0,
        "rejected requests must not create tasks"
    );
    assert!(!tmp.path().join("data/mirrors").join("x").exists());

    for cmd in ["show", "logs", "diff", "cancel"] {
        fails_with(
            server.cli(&[cmd, "zzzzzzzz"]),
            &["no task with id 'zzzzzzzz'", "errand ls"],
        );
    }
    fails_with(server.cli(&["show", "../../etc"]), &["no task with id"]);
    fails_with(
        server.cli(&["ls", "--status", "bogus"]),
        &["unknown status 'bogus'"],
    );

    // A good run still works after all that.
    ok(server.cli(&["run", "x", "--repo", &repo_s, "--model", &good_m]));
    assert_eq!(task_count(&server), 1);
}

#[test]
fn cli_without_a_server_says_how_to_start_one() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    for args in [
        &["ls"][..],
        &["run", "x", "--repo", "/tmp", "--model", "scripted:/x"],
        &["show", "abcd"],
    ] {
        fails_with(
            cli_with(&url, args, None),
            &["no errand server is running at", "errand serve"],
        );
    }
    fails_with(
        cli_with("ftp://x", &["ls"], None),
        &["--server 'ftp://x' must be an http"],
    );
}

#[test]
fn two_servers_cannot_share_a_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Server::start(tmp.path(), &[]);
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("ERRAND_LOG", "off")
        .output()
        .unwrap();
    fails_with(
        out,
        &["another errand server is already using the data directory"],
    );
}

#[test]
fn malformed_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("errand.toml"),
        "[environments.a]\nrepoo = \"x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("ERRAND_LOG", "off")
        .output()
        .unwrap();
    fails_with(out, &["errand.toml", "repoo"]);
}

#[test]
fn malformed_network_entries_are_named_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("errand.toml"),
        "[environments.a.network]\nagent = \"allowlist\"\nallow = [\"example.org\", \"exa mple.org\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("ERRAND_LOG", "off")
        .output()
        .unwrap();
    fails_with(
        out,
        &["environments.a.network", "exa mple.org", "accepted forms"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_are_4xx_json() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let server = Server::start(&tmp.path().join("data"), &["--workers", "0"]);
    let c = http();
    let check = |status: u16, body: serde_json::Value, needle: &str| {
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(needle),
            "{status}: {body}"
        );
        assert!(body["error"]["code"].is_string(), "{body}");
    };
    let post = |body: String, ct: &'static str| {
        let c = c.clone();
        let url = server.api("/tasks");
        async move {
            let r = c
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s, b) = post("{not json".into(), "application/json").await;
    assert_eq!(s, 400);
    check(s, b, "invalid request body");
    let (s, b) = post(
        json!({"prompt": "x", "repo": repo.display().to_string(), "modle": "x"}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(s, 400);
    check(s, b, "unknown field `modle`");
    let (s, b) = post(json!({"prompt": "x"}).to_string(), "text/plain").await;
    assert_eq!(s, 415);
    check(s, b, "Content-Type: application/json");
    let (s, b) = post(
        json!({"prompt": "x", "repo": "relative/path", "model": "scripted:/x"}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(s, 400);
    check(s, b, "is relative");
    let (s, b) = post(
        json!({"prompt": "x", "repo": repo.display().to_string(), "model": "scripted:rel.json"})
            .to_string(),
        "application/json",
    )
    .await;
    assert_eq!(s, 400);
    check(s, b, "is relative");
    let (s, b) = post(json!({"prompt": "x", "repo": repo.display().to_string(), "model": "scripted:/x", "trigger": "fax"}).to_string(), "application/json").await;
    assert_eq!(s, 400);
    check(s, b, "cannot read it");
    let huge = "x".repeat(2 * 1024 * 1024);
    let (s, _) = {
        // A fresh client: the server closes a connection whose body it refused to read.
        let r = http()
            .post(server.api("/tasks"))
            .header("content-type", "application/json")
            .body(json!({"prompt": huge}).to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(s, 413);

    for (url, status, needle) in [
        ("/tasks/zzzzzzzz", 404, "no task with id"),
        ("/tasks/zzzzzzzz/events", 404, "no task with id"),
        ("/tasks/zzzzzzzz/diff", 404, "no task with id"),
        ("/tasks?status=nope", 400, "unknown status"),
        ("/tasks?limit=0", 400, "limit must be between"),
        ("/tasks?cursor=garbage", 400, "malformed cursor"),
        ("/nope", 404, "no such endpoint"),
    ] {
        let r = c.get(server.api(url)).send().await.unwrap();
        let st = r.status().as_u16();
        assert_eq!(st, status, "{url}");
        check(st, r.json().await.unwrap(), needle);
    }
    let r = c
        .post(server.api("/tasks/zzzzzzzz/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // A valid task with no worker: diff is a 409 with a hint, bad Last-Event-ID a 400.
    let script = write_script(tmp.path(), "s.json", json!({"turns": [{"text": "hi"}]}));
    let r = c
        .post(server.api("/tasks"))
        .json(&json!({"prompt": "x", "repo": repo.display().to_string(), "model": format!("scripted:{}", script.display()), "trigger": "fax"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    check(400, r.json().await.unwrap(), "unknown trigger 'fax'");
    let r = c
        .post(server.api("/tasks"))
        .json(&json!({"prompt": "x", "repo": repo.display().to_string(), "model": format!("scripted:{}", script.display())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .get(server.api(&format!("/tasks/{id}/diff")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    check(409, r.json().await.unwrap(), "no diff yet");
    let r = c
        .get(server.api(&format!("/tasks/{id}/events/stream")))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = c
        .get(server.api(&format!("/tasks/{id}/events?attempt=7")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // The server is still healthy.
    let h = get_json(&server.api("/health")).await;
    assert_eq!(h["status"], "ok");
}
