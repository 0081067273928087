//! The model gateway end to end: `errand serve` with an environment whose `gateway` names
//! providers (pointed at loopback fakes), a task whose commands in the box talk to them
//! through the gateway, and the keys kept out of the box.

mod common;

use common::*;
use errand_fakes::{FakeServer, FakeUsage, Reply, Turn, Vendor};
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Every key starts with this; the probe in the box searches for it and checks what follows
/// against the key's SHA-256, so the key itself never has to enter the box.
const KEY_PREFIX: &str = "sk-gw-e2e-";
const KEY_TAIL: usize = 40;

fn random_key() -> String {
    let mut bytes = [0u8; KEY_TAIL];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = bytes
        .iter()
        .map(|b| char::from(alphabet[*b as usize % alphabet.len()]))
        .collect();
    format!("{KEY_PREFIX}{tail}")
}

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
            s,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write_toml(data: &Path, text: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("errand.toml"), text).unwrap();
}

fn shell_script(dir: &Path, command: &str) -> std::path::PathBuf {
    write_script(
        dir,
        "s.json",
        json!({"turns": [{"tool_calls": [
            {"name": "shell", "arguments": {"command": command, "timeout_ms": 120000}},
            {"name": "finish", "arguments": {"summary": "probed"}}]}]}),
    )
}

/// The probe's `leaks=` line: for each key (by its position), where it was found.
fn leaks(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .find_map(|l| l.split_once("leaks=").map(|(_, j)| j))
        .unwrap_or_else(|| panic!("the probe printed no leaks= line:\n{out}"));
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn add_probe(repo: &Path) {
    std::fs::write(repo.join("probe.py"), PROBE).unwrap();
    git(repo, &["add", "probe.py"]);
    git(repo, &["commit", "--quiet", "-m", "probe"]);
}

/// The task's JSON from the API (`ls --json`, newest first).
fn newest_task(server: &Server) -> serde_json::Value {
    let ls: serde_json::Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    ls["tasks"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_providers_are_resolved_at_creation_and_the_box_gets_placeholders() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    add_probe(&repo);
    let (openai_key, corp_key) = (random_key(), random_key());
    // A key-shaped value put in the box on purpose (in its environment and a file), to show
    // that the probe finds what is there.
    let canary = random_key();
    std::fs::write(repo.join("canary.txt"), format!("token: {canary}\n")).unwrap();
    git(&repo, &["add", "canary.txt"]);
    git(&repo, &["commit", "--quiet", "-m", "canary"]);
    let hashes = format!(
        "{},{},{}",
        sha256_hex(&openai_key),
        sha256_hex(&corp_key),
        sha256_hex(&canary)
    );
    let script = shell_script(
        tmp.path(),
        &format!(
            "echo \"openai_base=$OPENAI_BASE_URL\"; echo \"openai_key=$OPENAI_API_KEY\"; \
             echo \"anthropic_base=$ANTHROPIC_BASE_URL\"; echo \"anthropic_key=$ANTHROPIC_API_KEY\"; \
             echo \"gemini_base=${{GOOGLE_GEMINI_BASE_URL:-unset}}\"; echo \"root=$ERRAND_GATEWAY_URL\"; \
             python3 probe.py {KEY_PREFIX} {KEY_TAIL} {hashes}"
        ),
    );
    let data = tmp.path().join("data");
    write_toml(
        &data,
        &format!(
            "[providers.corp]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_env = \"ERRAND_TEST_CORP_KEY\"\n\
             [providers.corp.models.\"claude-x\"]\ninput = 1.0\noutput = 2.0\n\
             [environments.gw]\nrepo = \"{repo}\"\nmodel = \"scripted:{script}\"\ngateway = [\"openai\", \"corp\"]\n\
             [environments.gw.env]\nCANARY = \"{canary}\"\n\
             [environments.nope]\nrepo = \"{repo}\"\nmodel = \"scripted:{script}\"\ngateway = [\"mistral\"]\n",
            repo = repo.display(),
            script = script.display()
        ),
    );

    // Without the keys, the task is refused and the message names the variable. (A data
    // directory of its own: a stopped server's box pool may hold the lock a moment longer.)
    {
        let bare = tmp.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::copy(data.join("errand.toml"), bare.join("errand.toml")).unwrap();
        let server = Server::start(&bare, &[]);
        fails_with(
            server.cli(&["run", "probe", "--env", "gw"]),
            &[
                "environment 'gw'",
                "gateway provider 'openai' needs an API key: set OPENAI_API_KEY in the server's environment",
            ],
        );
        fails_with(
            server.cli(&["run", "probe", "--env", "nope"]),
            &["unknown gateway provider 'mistral'", "corp"],
        );
        let ls = ok(server.cli(&["ls", "--json"]));
        assert!(!ls.contains("probe"), "a refused task is not stored: {ls}");
    }

    let server = Server::start_with_env(
        &data,
        &[],
        &[
            ("OPENAI_API_KEY", &openai_key),
            ("ERRAND_TEST_CORP_KEY", &corp_key),
        ],
    );
    let out = ok(server.cli(&["run", "probe", "--env", "gw", "--follow"]));
    // The box sees base URLs and placeholders, for the kinds configured only.
    for line in [
        "openai_base=http://127.0.0.1:4319/openai/v1",
        "openai_key=errand-gateway",
        "anthropic_base=http://127.0.0.1:4319/corp",
        "anthropic_key=errand-gateway",
        "gemini_base=unset",
        "root=http://127.0.0.1:4319",
        "files_scanned_some=True",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // The keys are in the worker's environment, and nowhere in the box: not in its
    // environment, its files or /proc. The canary is found where it was put.
    let found = leaks(&out);
    assert_eq!(found["0"], json!([]), "{found}");
    assert_eq!(found["1"], json!([]), "{found}");
    assert_eq!(
        found["2"],
        json!(["/proc/*/environ", "/workspace/canary.txt", "env CANARY"]),
        "{found}"
    );
    assert!(
        out.contains("model gateway: openai (openai-responses), corp (anthropic)"),
        "{out}"
    );
    assert!(!out.contains(&openai_key) && !out.contains(&corp_key));

    // The snapshot holds what the worker needs, by variable name only.
    let task = newest_task(&server);
    assert_eq!(task["status"], "done", "{task}");
    let gw = &task["environment"]["gateway"];
    assert_eq!(gw[0]["name"], "openai");
    assert_eq!(gw[0]["kind"], "openai-responses");
    assert_eq!(gw[0]["api_key_env"], "OPENAI_API_KEY");
    assert_eq!(gw[1]["name"], "corp");
    assert_eq!(gw[1]["kind"], "anthropic");
    assert_eq!(gw[1]["base_url"], "http://127.0.0.1:9");
    assert_eq!(gw[1]["api_key_env"], "ERRAND_TEST_CORP_KEY");
    assert_eq!(gw[1]["models"]["claude-x"]["output"], 2.0);
    let text = task.to_string();
    assert!(
        !text.contains(&openai_key) && !text.contains(&corp_key),
        "{text}"
    );
}

/// A Python probe that runs in the box: it talks to both providers through the gateway with
/// the placeholders it was given, then looks for the keys everywhere it can read.
const PROBE: &str = r#"
import hashlib, json, os, sys, urllib.request

prefix, tail, hashes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
requests = sys.argv[4:] == ["requests"]

def post(url, headers, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers=dict(headers, **{"Content-Type": "application/json"}))
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()

def talk():
    status, ct, body = post(os.environ["OPENAI_BASE_URL"] + "/responses",
                            {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
                            {"model": "gpt-5-mini", "input": "hi"})
    print("openai_status=%d" % status)
    print("openai_text=" + json.loads(body)["output"][0]["content"][0]["text"])
    status, ct, body = post(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
                            {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"},
                            {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})
    print("anthropic_status=%d" % status)
    print("anthropic_sse=%s" % ct.startswith("text/event-stream"))
    print("anthropic_stop=%s" % ("event: message_stop" in body))

if requests:
    try:
        talk()
    except Exception as e:
        print("request_error=%r" % e)

hits, leaks, scanned = 0, {i: [] for i in range(len(hashes))}, 0

def scan(where, data):
    global hits
    start = 0
    while True:
        i = data.find(prefix.encode(), start)
        if i < 0:
            return
        hits += 1
        cand = data[i:i + len(prefix) + tail]
        h = hashlib.sha256(cand).hexdigest()
        if h in hashes:
            leaks[hashes.index(h)].append(where)
        start = i + 1

for k, v in os.environ.items():
    scan("env " + k, v.encode())
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for f in ("environ", "cmdline"):
            try:
                scan("/proc/%s/%s" % (pid, f), open("/proc/%s/%s" % (pid, f), "rb").read())
            except OSError:
                pass
skip = {"/proc", "/sys", "/dev", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin"}
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    for f in files:
        p = os.path.join(root, f)
        try:
            if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > (4 << 20):
                continue
            scan(p, open(p, "rb").read())
            scanned += 1
        except OSError:
            pass
        if scanned > 200000:
            break
print("files_scanned_some=%s" % (scanned > 10))
# Where each key was found: "env NAME", "/proc/PID/environ", or a file's path.
print("leaks=" + json.dumps({str(i): sorted(set(
    w if not w.startswith("/proc/") else "/proc/*/" + w.rsplit("/", 1)[1] for w in ws))
    for i, ws in leaks.items()}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_in_the_box_reaches_its_providers_without_ever_holding_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    add_probe(&repo);
    let u_openai = FakeUsage {
        input: 1500,
        cached: 1000,
        output: 200,
        ..Default::default()
    };
    let u_anth = FakeUsage {
        input: 3000,
        cached: 2000,
        cache_write: 500,
        output: 120,
        ..Default::default()
    };
    let openai = FakeServer::start(
        Vendor::OpenAiResponses,
        vec![Reply::Turn(Turn {
            text: Some("hello through the gateway".into()),
            usage: u_openai,
            ..Default::default()
        })],
    );
    let anthropic = FakeServer::start(
        Vendor::Anthropic,
        vec![Reply::Chunked {
            turn: Turn {
                text: Some("streamed through the gateway".into()),
                usage: u_anth,
                ..Default::default()
            },
            chunk: 16,
        }],
    );
    let (openai_key, anthropic_key) = (random_key(), random_key());
    let hashes = format!("{},{}", sha256_hex(&openai_key), sha256_hex(&anthropic_key));
    let script = shell_script(
        tmp.path(),
        &format!("python3 probe.py {KEY_PREFIX} {KEY_TAIL} {hashes} requests"),
    );
    let data = tmp.path().join("data");
    // Prices in US dollars per million tokens.
    write_toml(
        &data,
        &format!(
            "[providers.openai]\nbase_url = \"{openai}\"\n\
             [providers.openai.models.\"gpt-5-mini\"]\ninput = 2.0\ncached_input = 0.5\noutput = 8.0\n\
             [providers.anthropic]\nbase_url = \"{anthropic}\"\n\
             [providers.anthropic.models.\"claude-sonnet-4-5\"]\ninput = 3.0\ncached_input = 0.3\ncache_write = 3.75\noutput = 15.0\n\
             [environments.gw]\nrepo = \"{repo}\"\nmodel = \"scripted:{script}\"\ngateway = [\"openai\", \"anthropic\"]\n",
            openai = openai.base_url,
            anthropic = anthropic.base_url,
            repo = repo.display(),
            script = script.display()
        ),
    );
    let server = Server::start_with_env(
        &data,
        &[],
        &[
            ("OPENAI_API_KEY", &openai_key),
            ("ANTHROPIC_API_KEY", &anthropic_key),
        ],
    );
    let out = ok(server.cli(&["run", "use the models", "--env", "gw", "--follow"]));
    for line in [
        "openai_status=200",
        "openai_text=hello through the gateway",
        "anthropic_status=200",
        "anthropic_sse=True",
        "anthropic_stop=True",
        "files_scanned_some=True",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let found = leaks(&out);
    assert_eq!(found, json!({"0": [], "1": []}), "{out}");
    assert!(
        out.contains("gateway openai gpt-5-mini /v1/responses → 200"),
        "{out}"
    );
    assert!(
        out.contains("gateway anthropic claude-sonnet-4-5 /v1/messages → 200"),
        "{out}"
    );

    // The upstreams got the real keys; the placeholders never left the gateway.
    let r = &openai.model_requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {openai_key}").as_str())
    );
    let r = &anthropic.model_requests()[0];
    assert_eq!(r.header("x-api-key"), Some(anthropic_key.as_str()));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));

    // Each request is an event with its usage and cost, and the attempt's cost includes them.
    let task = newest_task(&server);
    assert_eq!(task["status"], "done", "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let events = events(&server, &id).await;
    let gw: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "gateway_request")
        .collect();
    assert_eq!(gw.len(), 2, "{gw:?}");
    let cost_openai = (500.0 * 2.0 + 1000.0 * 0.5 + 200.0 * 8.0) / 1e6;
    let cost_anth = (500.0 * 3.0 + 2000.0 * 0.3 + 500.0 * 3.75 + 120.0 * 15.0) / 1e6;
    assert_eq!(gw[0]["upstream"], "openai");
    assert_eq!(gw[0]["usage"]["input_tokens"], 1500);
    assert!((gw[0]["cost_usd"].as_f64().unwrap() - cost_openai).abs() < 1e-12);
    assert_eq!(gw[1]["upstream"], "anthropic");
    assert_eq!(gw[1]["usage"]["cache_write_tokens"], 500);
    assert!((gw[1]["cost_usd"].as_f64().unwrap() - cost_anth).abs() < 1e-12);
    let attempt_cost = task["attempts"][0]["usage"]["cost_usd"].as_f64().unwrap();
    assert!(
        (attempt_cost - (cost_openai + cost_anth)).abs() < 1e-9,
        "the scripted agent costs nothing, so the attempt's cost is the gateway's: {attempt_cost}"
    );
    let show = ok(server.cli(&["show", &id]));
    assert!(
        show.contains(&format!("${:.4}", cost_openai + cost_anth)),
        "{show}"
    );
    let logs = ok(server.cli(&["logs", &id]));
    for text in [&out, &show, &logs, &task.to_string()] {
        assert!(!text.contains(&openai_key) && !text.contains(&anthropic_key));
    }
    // The gateway's socket went away with the attempt.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let work = data.join("work");
    let leftover = std::fs::read_dir(&work)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("gateway.sock").exists())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leftover, 0);
}
