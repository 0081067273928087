//! Real model adapters end to end: the `errand` binary, a server with a `[providers]` entry
//! pointing at a loopback fake that speaks the vendor's wire format, a real repo with a real
//! bug, the box, and worker-run checks.

mod common;

use common::*;
use errand_fakes::{FakeServer, FakeUsage, Reply, Turn, Vendor};
use serde_json::json;
use std::path::Path;

const KEY: &str = "sk-e2e-secret-4242";

/// A Python package whose `add` subtracts; its test fails until that is fixed.
fn buggy_repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("calc");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("calc.py"), "def add(a, b):\n    return a - b\n").unwrap();
    std::fs::write(
        repo.join("test_calc.py"),
        "import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\nif __name__ == '__main__':\n    unittest.main()\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("AGENTS.md"),
        "Run the tests with python3 -m unittest.\n",
    )
    .unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "calc"]);
    repo
}

fn usage(input: u64, cached: u64, output: u64) -> FakeUsage {
    FakeUsage {
        input,
        cached,
        output,
        ..Default::default()
    }
}

/// The fixed sequence of turns that fixes the bug: look, fix and test in parallel, finish.
fn fixing_turns() -> Vec<Reply> {
    vec![
        Reply::Turn(Turn {
            text: Some("Let me look at calc.py.".into()),
            reasoning: Some("The test expects 5 from add(2, 3).".into()),
            tool_calls: vec![("read_file".into(), json!({"path": "calc.py"}))],
            usage: usage(2000, 0, 50),
        }),
        Reply::Turn(Turn {
            text: None,
            reasoning: Some("add subtracts; fix the operator.".into()),
            tool_calls: vec![
                (
                    "edit".into(),
                    json!({"path": "calc.py", "old": "return a - b", "new": "return a + b"}),
                ),
                (
                    "shell".into(),
                    json!({"command": "python3 -m unittest -q 2>&1"}),
                ),
            ],
            usage: usage(2400, 2000, 80),
        }),
        Reply::Turn(Turn {
            text: Some("Fixed.".into()),
            reasoning: None,
            tool_calls: vec![(
                "finish".into(),
                json!({"summary": "add() subtracted; it adds now. The unit test passes."}),
            )],
            usage: usage(2800, 2400, 40),
        }),
    ]
}

fn write_config(data: &Path, vendor: Vendor, base_url: &str) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            r#"
[providers.fake]
kind = "{}"
base_url = "{base_url}"
api_key_env = "FAKE_MODEL_KEY"
headers = {{ "x-team" = "e2e" }}
[providers.fake.models."m-1"]
input = 2.0
cached_input = 0.5
output = 10.0
context_window = 100000
"#,
            vendor.kind()
        ),
    )
    .unwrap();
}

fn fixes_a_real_bug_through(vendor: Vendor) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = buggy_repo(tmp.path());
    let fake = FakeServer::start(vendor, fixing_turns());
    let data = tmp.path().join("data");
    write_config(&data, vendor, &fake.base_url);
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("FAKE_MODEL_KEY", KEY)]);

    let out = server.cli(&[
        "run",
        "Make add() add",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        "fake:m-1",
        "--model-option",
        "temperature=0",
        "--check",
        "tests=python3 -m unittest -q",
        "--follow",
    ]);
    let text = ok(out);
    assert!(text.contains("check tests: PASSED"), "{text}");
    assert!(text.contains("Status    done"), "{text}");
    assert!(text.contains("Cost      $0.0"), "{text}");
    assert!(!text.contains("SCRIPTED"), "{text}");

    // The diff is the fix.
    let ls = ok(server.cli(&["ls", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let id = v["tasks"][0]["id"].as_str().unwrap().to_string();
    let diff = ok(server.cli(&["diff", &id]));
    assert!(diff.contains("-    return a - b"), "{diff}");
    assert!(diff.contains("+    return a + b"), "{diff}");

    // Cost: the three turns at $2 / $0.50 cached / $10 per million.
    let show = ok(server.cli(&["show", &id, "--json"]));
    let t: serde_json::Value = serde_json::from_str(&show).unwrap();
    let u = &t["attempts"][0]["usage"];
    assert_eq!(u["input_tokens"], 7200);
    assert_eq!(u["cached_input_tokens"], 4400);
    assert_eq!(u["output_tokens"], 170);
    let want = (2800.0 * 2.0 + 4400.0 * 0.5 + 170.0 * 10.0) / 1e6;
    let got = u["cost_usd"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");

    // The worker sent three turns with the key and the configured header; the tool results
    // went back, including the parallel ones and the nested test output.
    let reqs = fake.model_requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    let key_seen = reqs.iter().all(|r| {
        r.header("x-api-key") == Some(KEY)
            || r.header("authorization") == Some(&format!("Bearer {KEY}"))
            || r.header("x-goog-api-key") == Some(KEY)
    });
    assert!(key_seen, "{:?}", reqs[0].headers);
    assert!(reqs.iter().all(|r| r.header("x-team") == Some("e2e")));
    let last = reqs[2].body.to_string();
    assert!(
        last.contains("Replaced 1 occurrence") || last.contains("calc.py"),
        "{last}"
    );
    assert!(
        last.contains("Ran 1 test"),
        "the test output went back: {last}"
    );
    assert!(
        reqs[0]
            .body
            .to_string()
            .contains("Run the tests with python3 -m unittest.")
    );

    // Prefix stability: each request repeats the previous one's conversation exactly and
    // appends to it; instructions and tools do not change. (Anthropic's cache breakpoint moves
    // to the newest block, so `cache_control` markers are left out of the comparison.)
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("cache_control");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let conv = |b: &serde_json::Value| {
        let key = ["input", "messages", "contents"]
            .into_iter()
            .find(|k| b.get(*k).is_some())
            .unwrap();
        let mut v = b[key].clone();
        strip(&mut v);
        v.as_array().cloned().unwrap()
    };
    for w in reqs.windows(2) {
        let (a, b) = (conv(&w[0].body), conv(&w[1].body));
        assert!(b.len() > a.len());
        assert_eq!(
            a[..],
            b[..a.len()],
            "request {:?} is not an extension",
            vendor
        );
        for k in ["system", "instructions", "systemInstruction", "tools"] {
            let (mut x, mut y) = (w[0].body[k].clone(), w[1].body[k].clone());
            strip(&mut x);
            strip(&mut y);
            assert_eq!(x, y, "{k} changed between turns");
        }
    }

    // The key is nowhere in the log, and the log says which model ran.
    let logs = ok(server.cli(&["logs", &id, "--json"]));
    assert!(!logs.contains(KEY));
    assert!(logs.contains("\"model\":\"fake:m-1\""), "{logs}");
    let models = ok(server.cli(&["models", "--json"]));
    assert!(!models.contains(KEY));
    assert!(models.contains("FAKE_MODEL_KEY"));
}

#[test]
fn anthropic_adapter_fixes_a_real_bug_end_to_end() {
    fixes_a_real_bug_through(Vendor::Anthropic);
}

#[test]
fn models_lists_providers_and_check_probes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeServer::start(Vendor::Anthropic, vec![]);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("errand.toml"),
        format!(
            "[providers.anthropic]\nbase_url = \"{}\"\n[providers.anthropic.models.\"claude-sonnet-4-5\"]\n[providers.anthropic.models.\"nope-model\"]\n",
            fake.base_url
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&data, &["--workers", "0"], &[("ANTHROPIC_API_KEY", KEY)]);
    let out = ok(server.cli(&["models"]));
    assert!(out.contains("anthropic"), "{out}");
    assert!(out.contains("key from $ANTHROPIC_API_KEY"), "{out}");
    assert!(out.contains("key: $OPENAI_API_KEY is not set"), "{out}");
    assert!(
        out.contains(
            "anthropic:claude-sonnet-4-5  $3 in, cached $0.3, $15 out per 1M tokens, 200k context"
        ),
        "{out}"
    );
    assert!(
        out.contains("default model: anthropic:claude-sonnet-4-5"),
        "{out}"
    );
    assert!(!out.contains(KEY));

    // One model exists, one does not: exit 1, and each line says which.
    let o = server.cli(&["models", "check", "anthropic"]);
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.contains("✓ anthropic:claude-sonnet-4-5"), "{text}");
    assert!(text.contains("✗ anthropic:nope-model"), "{text}");
    assert!(text.contains("model not found"), "{text}");
    // Probes cost no tokens: no model requests reached the fake.
    assert_eq!(fake.model_requests().len(), 0);
    fails_with(
        server.cli(&["models", "check", "mistral"]),
        &["unknown model provider 'mistral'"],
    );
}

#[test]
fn no_model_and_no_key_says_what_to_set() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = buggy_repo(tmp.path());
    let server = Server::start_with_env(&tmp.path().join("data"), &["--workers", "0"], &[]);
    fails_with(
        server.cli(&["run", "x", "--repo", repo.to_str().unwrap()]),
        &[
            "no model given",
            "ANTHROPIC_API_KEY",
            "default_model",
            "--model",
        ],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            repo.to_str().unwrap(),
            "--model",
            "anthropic:claude-sonnet-4-5",
        ]),
        &["needs an API key: set ANTHROPIC_API_KEY"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            repo.to_str().unwrap(),
            "--model",
            "mistral:large",
        ]),
        &["unknown model provider 'mistral'", "[providers.mistral]"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            repo.to_str().unwrap(),
            "--model",
            "anthropic:x",
            "--model-option",
            "nokey",
        ]),
        &["--model-option", "KEY=VALUE"],
    );
    fails_with(
        server.cli(&[
            "run",
            "x",
            "--repo",
            repo.to_str().unwrap(),
            "--model",
            "anthropic:x",
            "--max-cost",
            "0",
        ]),
        &["--max-cost must be a positive number"],
    );
    // With a key in the server's environment, that provider becomes the default.
    let server2 = Server::start_with_env(
        &tmp.path().join("data2"),
        &["--workers", "0"],
        &[("OPENAI_API_KEY", KEY)],
    );
    let out = ok(server2.cli(&["run", "x", "--repo", repo.to_str().unwrap(), "--json"]));
    assert!(out.contains("\"model\": \"openai:gpt-5\""), "{out}");
}

#[test]
fn a_budget_stops_a_real_provider_run_with_its_work_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = buggy_repo(tmp.path());
    // Turn 1 edits; it costs 2000 × $2 + 50 × $10 per million = $0.0045, over the budget.
    let mut turns = fixing_turns();
    turns[0] = Reply::Turn(Turn {
        tool_calls: vec![(
            "edit".into(),
            json!({"path": "calc.py", "old": "return a - b", "new": "return a + b"}),
        )],
        usage: usage(2000, 0, 50),
        ..Default::default()
    });
    let fake = FakeServer::start(Vendor::Anthropic, turns);
    let data = tmp.path().join("data");
    write_config(&data, Vendor::Anthropic, &fake.base_url);
    let server = Server::start_with_env(&data, &["--workers", "1"], &[("FAKE_MODEL_KEY", KEY)]);
    let out = server.cli(&[
        "run",
        "Make add() add",
        "--repo",
        repo.to_str().unwrap(),
        "--model",
        "fake:m-1",
        "--max-cost",
        "0.004",
        "--follow",
    ]);
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("stopped: the cost budget of $0.00 ran out ($0.0045 spent)"),
        "{text}"
    );
    assert!(text.contains("Budget    $0.00"), "{text}");
    assert_eq!(fake.model_requests().len(), 1);
    let ls: serde_json::Value = serde_json::from_str(&ok(server.cli(&["ls", "--json"]))).unwrap();
    let id = ls["tasks"][0]["id"].as_str().unwrap().to_string();
    let diff = ok(server.cli(&["diff", &id]));
    assert!(
        diff.contains("+    return a + b"),
        "the work is kept: {diff}"
    );
}

#[test]
fn openai_responses_adapter_fixes_a_real_bug_end_to_end() {
    fixes_a_real_bug_through(Vendor::OpenAiResponses);
}

#[test]
fn openai_chat_adapter_fixes_a_real_bug_end_to_end() {
    fixes_a_real_bug_through(Vendor::OpenAiChat);
}

#[test]
fn gemini_adapter_fixes_a_real_bug_end_to_end() {
    fixes_a_real_bug_through(Vendor::Gemini);
}
