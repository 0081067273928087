//! The model gateway against loopback fakes of the four vendor wire formats: requests from a
//! hyper client over the gateway's Unix socket, and from real `curl` and Python's `urllib`
//! over TCP. Each test checks what the upstream received (the real key, no placeholder), what
//! the client got (the answer, streamed as it came, never the key) and what was metered.

use bytes::Bytes;
use errand_core::{ModelConfig, ProviderKind};
use errand_fakes::{ErrorKind, FakeServer, FakeUsage, Recorded, Reply, Turn, Vendor};
use errand_model::pricing::Prices;
use errand_proxy::gateway::{
    ApiKey, Gateway, GatewayConfig, GatewayHandle, GatewayRecord, GatewayTimeouts, Upstream,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The real key: the upstream must get it, nothing the client sees may contain it.
const KEY: &str = "sk-real-upstream-key-7f3a9c";
/// What a program in the box sends instead of a key.
const PLACEHOLDER: &str = "errand-gateway";
const LIMIT: Duration = Duration::from_secs(30);

/// Prices per million tokens of the test models (the fakes are not vendor endpoints, so the
/// built-in table does not apply).
const INPUT: f64 = 2.0;
const CACHED: f64 = 0.5;
const WRITE: f64 = 2.5;
const OUTPUT: f64 = 8.0;

fn prices(models: &[&str]) -> Prices {
    Prices {
        models: models
            .iter()
            .map(|m| {
                (
                    m.to_string(),
                    ModelConfig {
                        input: Some(INPUT),
                        cached_input: Some(CACHED),
                        cache_write: Some(WRITE),
                        output: Some(OUTPUT),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        builtin: false,
    }
}

fn expected_cost(u: FakeUsage) -> f64 {
    let plain = u.input - u.cached - u.cache_write;
    (plain as f64 * INPUT
        + u.cached as f64 * CACHED
        + u.cache_write as f64 * WRITE
        + u.output as f64 * OUTPUT)
        / 1e6
}

fn upstream(name: &str, kind: ProviderKind, fake: &FakeServer, models: &[&str]) -> Upstream {
    Upstream {
        name: name.into(),
        kind,
        base_url: fake.base_url.clone(),
        api_key: Some(ApiKey::new(KEY)),
        headers: BTreeMap::from([("x-errand-test".to_string(), name.to_string())]),
        prices: prices(models),
    }
}

#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<GatewayRecord>>>);

impl Records {
    fn sink(&self) -> Arc<dyn Fn(GatewayRecord) + Send + Sync> {
        let r = self.0.clone();
        Arc::new(move |rec| r.lock().unwrap().push(rec))
    }

    fn all(&self) -> Vec<GatewayRecord> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `n` records arrived; returns them.
    async fn wait(&self, n: usize) -> Vec<GatewayRecord> {
        let start = Instant::now();
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                start.elapsed() < LIMIT,
                "waited for {n} records, have {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(upstreams: Vec<Upstream>, records: &Records) -> GatewayConfig {
    GatewayConfig {
        upstreams,
        on_usage: records.sink(),
        timeouts: GatewayTimeouts {
            connect: Duration::from_secs(5),
            ..Default::default()
        },
    }
}

/// One POST through the gateway's Unix socket; the response's head and body.
async fn unix_post(
    sock: &Path,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> hyper::Response<hyper::body::Incoming> {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path)
        .header("host", "127.0.0.1:4319")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("response head in time")
        .unwrap()
}

async fn read_all(resp: hyper::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The upstream got the real key in its kind's header, and nothing of the placeholder.
fn assert_real_key(r: &Recorded, header: &str, value: &str) {
    assert_eq!(r.header(header), Some(value), "{:?}", r.headers);
    for (k, v) in &r.headers {
        assert!(!v.contains(PLACEHOLDER), "placeholder in {k}: {v}");
    }
    assert!(
        !r.query.as_deref().unwrap_or_default().contains(PLACEHOLDER),
        "{:?}",
        r.query
    );
    for other in ["authorization", "x-api-key", "x-goog-api-key"] {
        if other != header {
            assert_eq!(
                r.header(other),
                None,
                "{other} must not be sent: {:?}",
                r.headers
            );
        }
    }
}

fn usage(input: u64, cached: u64, cache_write: u64, output: u64, reasoning: u64) -> FakeUsage {
    FakeUsage {
        input,
        cached,
        cache_write,
        output,
        reasoning,
    }
}

fn turn(text: &str, u: FakeUsage) -> Turn {
    Turn {
        text: Some(text.into()),
        usage: u,
        ..Default::default()
    }
}

fn check_record(r: &GatewayRecord, upstream: &str, model: &str, path: &str, u: FakeUsage) {
    assert_eq!(r.upstream, upstream, "{r:?}");
    assert_eq!(r.model.as_deref(), Some(model), "{r:?}");
    assert_eq!(r.path, path, "{r:?}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.usage.input_tokens, u.input, "{r:?}");
    assert_eq!(r.usage.cached_input_tokens, u.cached, "{r:?}");
    assert_eq!(r.usage.cache_write_tokens, u.cache_write, "{r:?}");
    assert_eq!(r.usage.output_tokens, u.output, "{r:?}");
    let want = expected_cost(u);
    assert!(want > 0.0);
    assert!((r.cost_usd - want).abs() < 1e-12, "{r:?}, want {want}");
    assert_eq!(r.usage.cost_usd, r.cost_usd);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_streams_and_is_metered_over_the_unix_socket() {
    let u_resp = usage(1200, 1000, 0, 300, 120);
    let u_chat = usage(800, 512, 0, 40, 0);
    let u_anth = usage(5000, 4000, 600, 250, 0);
    let u_gem = usage(900, 100, 0, 77, 30);
    let responses = FakeServer::start(
        Vendor::OpenAiResponses,
        vec![
            Reply::Turn(turn("Hello from responses", u_resp)),
            Reply::Turn(turn("Whole responses body", u_resp)),
        ],
    );
    let chat = FakeServer::start(
        Vendor::OpenAiChat,
        vec![
            Reply::Turn(turn("Hello from chat", u_chat)),
            Reply::Turn(turn("Whole chat body", u_chat)),
        ],
    );
    let anthropic = FakeServer::start(
        Vendor::Anthropic,
        vec![
            Reply::Turn(turn("Hello from claude", u_anth)),
            Reply::Turn(turn("Whole message body", u_anth)),
        ],
    );
    let gemini = FakeServer::start(
        Vendor::Gemini,
        vec![
            Reply::Turn(turn("Hello from gemini", u_gem)),
            Reply::Turn(turn("Whole gemini body", u_gem)),
        ],
    );
    let records = Records::default();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gateway.sock");
    let gw = Gateway::serve_unix(
        &sock,
        config(
            vec![
                upstream(
                    "openai",
                    ProviderKind::OpenaiResponses,
                    &responses,
                    &["gpt-5-mini"],
                ),
                upstream("chat", ProviderKind::OpenaiChat, &chat, &["gpt-4.1-mini"]),
                upstream(
                    "anthropic",
                    ProviderKind::Anthropic,
                    &anthropic,
                    &["claude-sonnet-4-5"],
                ),
                upstream("gemini", ProviderKind::Gemini, &gemini, &["gemini-2.5-pro"]),
            ],
            &records,
        ),
    )
    .await
    .unwrap();
    assert_eq!(gw.socket_path(), Some(sock.as_path()));
    // Only the worker's user may connect.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let bearer = format!("Bearer {PLACEHOLDER}");

    // OpenAI Responses, streamed then whole.
    for stream in [true, false] {
        let resp = unix_post(
            &sock,
            "/openai/v1/responses",
            &[("authorization", &bearer)],
            &json!({"model": "gpt-5-mini", "input": "hi", "stream": stream}),
        )
        .await;
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let (status, body) = read_all(resp).await;
        assert_eq!(status, 200, "{body}");
        if stream {
            assert!(ct.starts_with("text/event-stream"), "{ct}");
            assert!(body.contains("event: response.completed"), "{body}");
            assert!(body.contains("Hello from"), "{body}");
        } else {
            assert!(ct.starts_with("application/json"), "{ct}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["output"][0]["content"][0]["text"], "Whole responses body");
        }
    }
    // Chat Completions: the usage comes in the last chunk when the client asks for it.
    for stream in [true, false] {
        let mut body = json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let resp = unix_post(
            &sock,
            "/chat/v1/chat/completions",
            // A client that sends its placeholder both ways gets both removed.
            &[("authorization", &bearer), ("x-api-key", PLACEHOLDER)],
            &body,
        )
        .await;
        let (status, text) = read_all(resp).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(if stream {
                "data: [DONE]"
            } else {
                "Whole chat body"
            }),
            "{text}"
        );
    }
    // Anthropic Messages.
    for stream in [true, false] {
        let resp = unix_post(
            &sock,
            "/anthropic/v1/messages",
            &[
                ("x-api-key", PLACEHOLDER),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "prompt-caching-2024-07-31"),
            ],
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], "stream": stream}),
        )
        .await;
        let (status, text) = read_all(resp).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(if stream {
                "event: message_stop"
            } else {
                "Whole message body"
            }),
            "{text}"
        );
    }
    // Gemini, with the key both in the query (as some clients send it) and in the header.
    for (path, stream) in [
        (
            format!(
                "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={PLACEHOLDER}"
            ),
            true,
        ),
        (
            format!("/gemini/v1beta/models/gemini-2.5-pro:generateContent?key={PLACEHOLDER}"),
            false,
        ),
    ] {
        let resp = unix_post(
            &sock,
            &path,
            &[("x-goog-api-key", PLACEHOLDER)],
            &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        )
        .await;
        let (status, text) = read_all(resp).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(if stream {
                "\"finishReason\":\"STOP\""
            } else {
                "Whole gemini body"
            }),
            "{text}"
        );
    }

    let recs = records.wait(8).await;
    assert_eq!(recs.len(), 8, "{recs:?}");
    let by = |up: &str| recs.iter().filter(|r| r.upstream == up).collect::<Vec<_>>();
    for r in by("openai") {
        check_record(r, "openai", "gpt-5-mini", "/v1/responses", u_resp);
        assert_eq!(r.usage.reasoning_tokens, 120);
    }
    for r in by("chat") {
        check_record(r, "chat", "gpt-4.1-mini", "/v1/chat/completions", u_chat);
    }
    for r in by("anthropic") {
        check_record(r, "anthropic", "claude-sonnet-4-5", "/v1/messages", u_anth);
    }
    let gem = by("gemini");
    check_record(
        gem[0],
        "gemini",
        "gemini-2.5-pro",
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        u_gem,
    );
    check_record(
        gem[1],
        "gemini",
        "gemini-2.5-pro",
        "/v1beta/models/gemini-2.5-pro:generateContent",
        u_gem,
    );
    assert_eq!(gem[0].usage.reasoning_tokens, 30);

    // What the upstreams received: the real key, the configured header, the client's body
    // and other headers as sent, the path under the base URL.
    let bearer_real = format!("Bearer {KEY}");
    for r in responses.model_requests() {
        assert_real_key(&r, "authorization", &bearer_real);
        assert_eq!(r.path, "/responses");
        assert_eq!(r.header("x-errand-test"), Some("openai"));
        assert_eq!(r.body["model"], "gpt-5-mini");
    }
    for r in chat.model_requests() {
        assert_real_key(&r, "authorization", &bearer_real);
        assert_eq!(r.path, "/chat/completions");
    }
    for r in anthropic.model_requests() {
        assert_real_key(&r, "x-api-key", KEY);
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(
            r.header("anthropic-beta"),
            Some("prompt-caching-2024-07-31")
        );
        assert_eq!(r.path, "/v1/messages");
    }
    let greqs = gemini.model_requests();
    assert_eq!(greqs.len(), 2);
    for r in &greqs {
        assert_real_key(r, "x-goog-api-key", KEY);
        assert_eq!(r.header("accept-encoding"), Some("identity"));
    }
    assert_eq!(greqs[0].query.as_deref(), Some("alt=sse"));
    assert_eq!(greqs[1].query, None);

    gw.shutdown().await;
    assert!(
        !sock.exists(),
        "the socket is removed when the gateway stops"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_sent_events_pass_through_before_the_upstream_finishes() {
    let u = usage(100, 0, 0, 20, 0);
    let stall = Duration::from_secs(4);
    let fake = FakeServer::start(
        Vendor::Anthropic,
        vec![
            Reply::Stall {
                turn: turn("slow answer", u),
                wait: stall,
            },
            Reply::Stall {
                turn: turn("never read", u),
                wait: stall,
            },
        ],
    );
    let records = Records::default();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gw.sock");
    let gw = Gateway::serve_unix(
        &sock,
        config(
            vec![upstream(
                "anthropic",
                ProviderKind::Anthropic,
                &fake,
                &["claude-sonnet-4-5"],
            )],
            &records,
        ),
    )
    .await
    .unwrap();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let resp = unix_post(&sock, "/anthropic/v1/messages", &[], &body).await;
    assert_eq!(resp.status(), 200);
    let mut incoming = resp.into_body();
    // The first event (message_start) arrives while the upstream is still silent: nothing
    // after it has been sent, and the request has not ended (no record yet).
    let first = tokio::time::timeout(LIMIT, incoming.frame())
        .await
        .expect("first frame in time")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with("event: message_start"), "{first}");
    assert!(!first.contains("message_stop"), "{first}");
    assert!(
        records.all().is_empty(),
        "the response must not have ended yet"
    );
    // The rest follows once the upstream goes on, and the request is metered.
    let mut rest = String::new();
    while let Some(f) = tokio::time::timeout(LIMIT, incoming.frame())
        .await
        .expect("frames in time")
    {
        if let Ok(d) = f.unwrap().into_data() {
            rest.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(
        rest.contains("\"slow \"") && rest.contains("\"answer\""),
        "{rest}"
    );
    assert!(rest.contains("event: message_stop"), "{rest}");
    let recs = records.wait(1).await;
    check_record(
        &recs[0],
        "anthropic",
        "claude-sonnet-4-5",
        "/v1/messages",
        u,
    );

    // A client that goes away mid-stream still leaves a record of what it used so far.
    let resp = unix_post(&sock, "/anthropic/v1/messages", &[], &body).await;
    let mut incoming = resp.into_body();
    let _ = tokio::time::timeout(LIMIT, incoming.frame()).await.unwrap();
    drop(incoming);
    let recs = records.wait(2).await;
    let cut = &recs[1];
    assert_eq!(cut.status, 200);
    assert_eq!(
        cut.usage.input_tokens, 100,
        "message_start was metered: {cut:?}"
    );
    assert!(
        cut.error
            .as_deref()
            .unwrap_or_default()
            .contains("not read to its end"),
        "{cut:?}"
    );
    gw.shutdown().await;
}

/// A gateway on TCP for the `curl` and Python clients.
async fn tcp_gateway(upstreams: Vec<Upstream>, records: &Records) -> (GatewayHandle, String) {
    let gw = Gateway::serve_tcp("127.0.0.1:0".parse().unwrap(), config(upstreams, records))
        .await
        .unwrap();
    let url = format!("http://{}", gw.local_addr().unwrap());
    (gw, url)
}

async fn run(cmd: &mut tokio::process::Command, stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("client finished in time")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl` POSTing stdin as JSON; prints the response head then its body.
fn curl(url: &str, headers: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.args([
        "-sS",
        "-N",
        "-i",
        "--max-time",
        "30",
        "-H",
        "content-type: application/json",
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.args(["--data-binary", "@-", url]);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_python_clients_work_over_tcp() {
    let u_chat = usage(640, 0, 0, 32, 0);
    let u_anth = usage(3000, 2000, 0, 90, 0);
    let u_gem = usage(420, 0, 0, 12, 0);
    let chat = FakeServer::start(
        Vendor::OpenAiChat,
        vec![
            Reply::Turn(turn("curl says hi", u_chat)),
            Reply::Chunked {
                turn: turn("python streams in small pieces", u_chat),
                chunk: 7,
            },
        ],
    );
    let anthropic = FakeServer::start(
        Vendor::Anthropic,
        vec![Reply::Turn(turn("claude over curl", u_anth))],
    );
    let gemini = FakeServer::start(
        Vendor::Gemini,
        vec![Reply::Turn(turn("gemini over python", u_gem))],
    );
    let records = Records::default();
    let (gw, url) = tcp_gateway(
        vec![
            upstream("local", ProviderKind::OpenaiChat, &chat, &["gpt-4.1-mini"]),
            upstream(
                "claude",
                ProviderKind::Anthropic,
                &anthropic,
                &["claude-haiku-4-5"],
            ),
            upstream("gem", ProviderKind::Gemini, &gemini, &["gemini-2.5-flash"]),
        ],
        &records,
    )
    .await;

    // curl, Chat Completions, not streamed.
    let (code, out, err) = run(
        &mut curl(
            &format!("{url}/local/v1/chat/completions"),
            &[&format!("authorization: Bearer {PLACEHOLDER}")],
        ),
        &json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("curl says hi"), "{out}");
    assert!(!out.contains(KEY));

    // curl, Anthropic, streamed (-N: no buffering on curl's side either).
    let (code, out, err) = run(
        &mut curl(
            &format!("{url}/claude/v1/messages"),
            &[&format!("x-api-key: {PLACEHOLDER}"), "anthropic-version: 2023-06-01"],
        ),
        &json!({"model": "claude-haiku-4-5", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("content-type: text/event-stream"), "{out}");
    assert!(out.contains("event: message_stop"), "{out}");

    // Python urllib, Chat Completions streamed in 7-byte pieces, read line by line.
    let script = r#"
import json, sys, urllib.request
base, body = sys.argv[1], sys.stdin.read().encode()
req = urllib.request.Request(base + "/local/v1/chat/completions", data=body, method="POST",
    headers={"Content-Type": "application/json", "Authorization": "Bearer errand-gateway"})
text, usage = "", None
with urllib.request.urlopen(req, timeout=30) as r:
    assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for c in chunk.get("choices") or []:
            text += c["delta"].get("content") or ""
        usage = chunk.get("usage") or usage
print(json.dumps({"text": text, "usage": usage}))
"#;
    let (code, out, err) = run(
        tokio::process::Command::new("python3").args(["-c", script, &url]),
        &json!({"model": "gpt-4.1-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["text"], "python streams in small pieces");
    assert_eq!(v["usage"]["prompt_tokens"], 640);

    // Python urllib, Gemini with its key in the query string.
    let script = r#"
import json, sys, urllib.request
base = sys.argv[1]
req = urllib.request.Request(base + "/gem/v1beta/models/gemini-2.5-flash:generateContent?key=errand-gateway",
    data=sys.stdin.read().encode(), method="POST", headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=30) as r:
    v = json.load(r)
print(v["candidates"][0]["content"]["parts"][0]["text"])
"#;
    let (code, out, err) = run(
        tokio::process::Command::new("python3").args(["-c", script, &url]),
        &json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "gemini over python");

    let recs = records.wait(4).await;
    check_record(
        &recs[0],
        "local",
        "gpt-4.1-mini",
        "/v1/chat/completions",
        u_chat,
    );
    check_record(
        &recs[1],
        "claude",
        "claude-haiku-4-5",
        "/v1/messages",
        u_anth,
    );
    check_record(
        &recs[2],
        "local",
        "gpt-4.1-mini",
        "/v1/chat/completions",
        u_chat,
    );
    check_record(
        &recs[3],
        "gem",
        "gemini-2.5-flash",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        u_gem,
    );
    let bearer_real = format!("Bearer {KEY}");
    for r in chat.model_requests() {
        assert_real_key(&r, "authorization", &bearer_real);
    }
    for r in anthropic.model_requests() {
        assert_real_key(&r, "x-api-key", KEY);
    }
    for r in gemini.model_requests() {
        assert_real_key(&r, "x-goog-api-key", KEY);
        assert_eq!(r.query, None);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_never_show_the_key() {
    // An upstream that echoes the key it was sent, in an error body.
    let openai = FakeServer::start(
        Vendor::OpenAiResponses,
        vec![Reply::error(
            401,
            ErrorKind::Authentication,
            &format!(
                "Incorrect API key provided: {KEY}. You can find your API key in your account."
            ),
        )],
    );
    let records = Records::default();
    // An upstream whose port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let dead = Upstream {
        name: "down".into(),
        kind: ProviderKind::Anthropic,
        base_url: format!("http://127.0.0.1:{dead_port}"),
        api_key: Some(ApiKey::new(KEY)),
        headers: BTreeMap::new(),
        prices: Prices::default(),
    };
    let (gw, url) = tcp_gateway(
        vec![
            upstream("openai", ProviderKind::OpenaiResponses, &openai, &["gpt-5"]),
            dead,
        ],
        &records,
    )
    .await;

    // The upstream's error passes through with its status, the key masked.
    let (code, out, err) = run(
        &mut curl(&format!("{url}/openai/v1/responses"), &[]),
        &json!({"model": "gpt-5", "input": "hi"}).to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(!out.contains(KEY), "{out}");
    assert!(
        out.contains(&format!(
            "Incorrect API key provided: {}.",
            "*".repeat(KEY.len())
        )),
        "{out}"
    );
    assert!(out.contains("invalid_api_key"), "{out}");

    // An unreachable upstream is a 502 that names it.
    let (code, out, err) = run(
        &mut curl(&format!("{url}/down/v1/messages"), &[]),
        &json!({"model": "claude-sonnet-4-5"}).to_string(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    let body: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("upstream 'down'") && msg.contains("could not be reached"),
        "{msg}"
    );
    assert!(!out.contains(KEY), "{out}");

    // An unknown route is a 404 that lists the configured ones.
    let (code, out, err) = run(
        &mut curl(&format!("{url}/mistral/v1/chat/completions"), &[]),
        "{}",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let body: Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("'/mistral/v1/chat/completions'"), "{msg}");
    assert!(msg.contains("/openai/") && msg.contains("/down/"), "{msg}");

    // Paths that climb out of the route are refused before anything is sent.
    let mut climb = curl(&format!("{url}/openai/v1/../../admin"), &[]);
    climb.arg("--path-as-is");
    let (_, out, _) = run(&mut climb, "{}").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let recs = records.wait(3).await;
    assert_eq!(
        recs.len(),
        3,
        "the unknown route has no upstream to record: {recs:?}"
    );
    assert_eq!((recs[0].upstream.as_str(), recs[0].status), ("openai", 401));
    assert_eq!(recs[0].usage.total(), 0);
    assert_eq!((recs[1].upstream.as_str(), recs[1].status), ("down", 502));
    assert!(
        recs[1]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("could not be reached")
    );
    assert_eq!(recs[2].status, 400);
    for r in &recs {
        assert!(!format!("{r:?}").contains(KEY), "{r:?}");
    }
    assert_eq!(openai.model_requests().len(), 1);
    gw.shutdown().await;
}
