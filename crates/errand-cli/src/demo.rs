//! `errand demo`: the whole pipeline, offline, on a generated sample repository.
//!
//! It uses the server at `--server` when one answers there, else starts an embedded one on a
//! free loopback port. The model is the scripted provider (labelled so everywhere).

use crate::client::Client;
use crate::render::{self, LogMode};
use anyhow::{Context, Result, bail};
use errand_core::{CheckSpec, TaskRequest};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PAGINATE_PY: &str = r#""""Pagination helpers for the shop's listing pages."""


def paginate(items, page, per_page):
    """Return the items on 1-based page `page`, with `per_page` items per page."""
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page must be positive")
    start = (page - 1) * per_page
    end = start + per_page - 1
    return items[start:end]
"#;

const TEST_PY: &str = r#"import unittest

from paginate import paginate


class PaginateTest(unittest.TestCase):
    def test_first_page(self):
        self.assertEqual(paginate(list(range(10)), 1, 3), [0, 1, 2])

    def test_middle_page(self):
        self.assertEqual(paginate(list(range(10)), 2, 3), [3, 4, 5])

    def test_last_partial_page(self):
        self.assertEqual(paginate(list(range(10)), 4, 3), [9])

    def test_rejects_page_zero(self):
        with self.assertRaises(ValueError):
            paginate([1, 2], 0, 3)


if __name__ == "__main__":
    unittest.main()
"#;

const AGENTS_MD: &str = "# Notes for agents\n\nRun the tests with `python3 -m unittest -v`. Keep functions small and documented.\n";

const TEST_CMD: &str = "python3 -m unittest -v";

/// The scripted turns: explore, reproduce, fix, verify, finish.
fn script() -> serde_json::Value {
    serde_json::json!({"turns": [
        {"text": "I'll start by looking at the repository layout.",
         "tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]},
        {"text": "Let me read the pagination code and run the tests to reproduce the bug.",
         "tool_calls": [
            {"name": "read_file", "arguments": {"path": "paginate.py"}},
            {"name": "shell", "arguments": {"command": TEST_CMD}}]},
        {"text": "The slice end excludes one item too many: `end` should be `start + per_page`, since Python slices are end-exclusive.",
         "tool_calls": [{"name": "edit", "arguments": {"path": "paginate.py",
            "old": "    end = start + per_page - 1\n", "new": "    end = start + per_page\n"}}]},
        {"text": "Now the tests again.",
         "tool_calls": [{"name": "shell", "arguments": {"command": TEST_CMD}}]},
        {"tool_calls": [{"name": "finish", "arguments": {"summary":
            "Fixed the off-by-one in paginate(): the slice end was start + per_page - 1, which dropped the last item of every page. All 4 tests pass."}}]}
    ]})
}

async fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Errand Demo",
            "-c",
            "user.email=demo@errand.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .await
        .context("running git (is git installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the sample repository and the script; returns (repo, script path).
async fn make_sample(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let repo = root.join("shop");
    tokio::fs::create_dir_all(&repo).await?;
    tokio::fs::write(repo.join("paginate.py"), PAGINATE_PY).await?;
    tokio::fs::write(repo.join("test_paginate.py"), TEST_PY).await?;
    tokio::fs::write(repo.join("AGENTS.md"), AGENTS_MD).await?;
    tokio::fs::write(repo.join(".gitignore"), "__pycache__/\n").await?;
    git(&repo, &["init", "--quiet", "--initial-branch=main"]).await?;
    git(&repo, &["add", "."]).await?;
    git(&repo, &["commit", "--quiet", "-m", "Add pagination helper"]).await?;
    let script_path = root.join("fix.json");
    tokio::fs::write(&script_path, serde_json::to_string_pretty(&script())?).await?;
    Ok((repo, script_path))
}

pub async fn run(server: &str, data_dir: Option<PathBuf>) -> Result<ExitCode> {
    let mut client = Client::new(server)?;
    let mut embedded = None;
    let explicit_server =
        std::env::var_os("ERRAND_SERVER").is_some() || server != crate::DEFAULT_SERVER;
    if client.health().await.is_err() || data_dir.is_some() {
        if explicit_server && data_dir.is_none() {
            bail!(
                "no errand server answers at {server}; start it, or drop --server to let the demo start its own"
            );
        }
        let dir = data_dir.unwrap_or_else(errand_server::default_data_dir);
        let opts = errand_server::ServeOptions::new("127.0.0.1:0", dir.clone());
        let handle = match errand_server::start(opts).await {
            Ok(h) => h,
            Err(e) => {
                // The data dir is in use by another server: run in a throwaway one.
                let tmp =
                    std::env::temp_dir().join(format!("errand-demo-data-{}", std::process::id()));
                eprintln!("note: {e:#}; using {} for this demo", tmp.display());
                errand_server::start(errand_server::ServeOptions::new("127.0.0.1:0", tmp)).await?
            }
        };
        println!(
            "started an embedded errand server on http://{} (data: {})",
            handle.addr,
            dir.display()
        );
        client = Client::new(&format!("http://{}", handle.addr))?;
        embedded = Some(handle);
    } else {
        println!("using the errand server at {}", client.base());
    }

    let root = std::env::temp_dir().join(format!("errand-demo-{}", errand_core::new_id()));
    tokio::fs::create_dir_all(&root)
        .await
        .with_context(|| format!("creating {}", root.display()))?;
    let (repo, script) = make_sample(&root).await?;
    println!(
        "sample repository: {} (a pagination helper with an off-by-one bug)",
        repo.display()
    );
    println!(
        "model: scripted:{} — SCRIPTED playback of a fixed sequence of tool calls, no LLM involved\n",
        script.display()
    );

    let req = TaskRequest {
        prompt: "Fix the off-by-one in paginate(): the last item of each page is missing.".into(),
        repo: Some(repo.display().to_string()),
        base: None,
        env: None,
        model: Some(format!("scripted:{}", script.display())),
        trigger: Some("cli".into()),
        created_by: Some("demo".into()),
        checks: Some(vec![CheckSpec {
            name: "tests".into(),
            command: TEST_CMD.into(),
            junit: None,
        }]),
        ..Default::default()
    };
    let task = client.create(&req).await?;
    println!("created task {} — {}\n", task.short_id, task.title);
    client.follow(&task.id, None, 0, LogMode::Human).await?;
    let done = client.task(&task.id).await?;
    println!("\n──── errand show {} ────", done.short_id);
    print!("{}", render::show(&done));
    println!("\n──── errand diff {} ────", done.short_id);
    print!("{}", client.diff(&task.id, None, None).await?);
    let checks = done
        .result_attempt()
        .map(|a| a.checks.clone())
        .unwrap_or_default();
    println!();
    for c in &checks {
        println!(
            "check {}: {} — `{}` exited {} (run by the worker, not claimed by the agent)",
            c.name,
            if c.passed { "PASSED" } else { "FAILED" },
            c.command,
            c.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let ok = done.status == errand_core::Status::Done
        && !checks.is_empty()
        && checks.iter().all(|c| c.passed);
    println!(
        "\n{} The branch {} holds the fix; your sample repo at {} was not modified.",
        if ok { "Demo complete." } else { "Demo FAILED." },
        done.result_attempt()
            .map(|a| a.branch.as_str())
            .unwrap_or("?"),
        repo.display()
    );
    if let Some(h) = embedded {
        h.shutdown.cancel();
        let _ = h.wait().await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
