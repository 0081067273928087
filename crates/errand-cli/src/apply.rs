//! `errand apply`: an attempt's change onto a local checkout.
//!
//! The patch comes from the server (`GET /tasks/{id}/patch`: binary-safe, full blob ids). It is
//! applied whole when it applies cleanly; otherwise with `git apply --3way`, which merges each
//! file against the base blob and leaves conflict markers where both sides changed the same
//! lines. Both are all-or-nothing in git: either every file is written (cleanly or with
//! conflicts) or nothing is, and the report says which happened.

use crate::client::Client;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    task: String,
    base_commit: String,
    head_commit: String,
    /// `clean` (applied to the working tree), `3way` (merged; staged where clean),
    /// `already_applied`, or `nothing` (the attempt changed nothing).
    method: String,
    applied: Vec<String>,
    conflicted: Vec<String>,
    skipped: Vec<String>,
}

fn git(dir: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .output()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Paths the patch touches (new names for renames), from `git apply --numstat -z`.
fn touched(dir: &Path, patch: &Path) -> Result<Vec<String>> {
    let p = patch.to_string_lossy();
    let o = git(dir, &["apply", "--numstat", "-z", &p]).context("running git apply")?;
    if !o.status.success() {
        bail!("the patch is not readable by git: {}", text(&o).trim());
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    Ok(errand_git::parse_numstat_z(&out)
        .files
        .into_iter()
        .map(|f| match f.path.split_once(" => ") {
            Some((_, new)) => new.to_string(),
            None => f.path,
        })
        .collect())
}

pub async fn run(
    client: &Client,
    task: &str,
    attempt: Option<i64>,
    dir: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let top = git(&dir, &["rev-parse", "--show-toplevel"]).context("running git")?;
    if !top.status.success() {
        bail!(
            "{} is not a git checkout; run errand apply inside the repository (or pass --dir)",
            dir.display()
        );
    }
    let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim());
    let (patch, base, head) = client.patch(task, attempt).await?;
    let mut report = Report {
        task: task.to_string(),
        base_commit: base.clone(),
        head_commit: head,
        ..Default::default()
    };
    if patch.trim().is_empty() {
        report.method = "nothing".into();
        return finish(
            &report,
            json,
            "the attempt changed nothing; there is nothing to apply",
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("errand-apply-")
        .suffix(".patch")
        .tempfile()
        .context("creating a temporary file")?;
    std::fs::write(tmp.path(), &patch).context("writing the patch")?;
    let pf = tmp.path().to_string_lossy().into_owned();
    let paths = touched(&top, tmp.path())?;

    // Already there?
    if git(&top, &["apply", "--check", "--reverse", &pf])?
        .status
        .success()
    {
        report.method = "already_applied".into();
        report.skipped = paths;
        return finish(
            &report,
            json,
            "the change is already in this checkout; nothing to do",
        );
    }
    // Cleanly, as a whole?
    if git(&top, &["apply", "--check", &pf])?.status.success() {
        let o = git(&top, &["apply", &pf])?;
        if !o.status.success() {
            bail!("git apply failed and changed nothing: {}", text(&o).trim());
        }
        report.method = "clean".into();
        report.applied = paths;
        return finish(
            &report,
            json,
            "applied cleanly to the working tree (not staged)",
        );
    }
    // Three-way. git writes every file or none; the unmerged paths afterwards are the
    // conflicts.
    let o = git(&top, &["apply", "--3way", &pf])?;
    let out = text(&o);
    let unmerged = git(&top, &["diff", "--name-only", "--diff-filter=U", "-z"])?;
    report.conflicted = String::from_utf8_lossy(&unmerged.stdout)
        .split('\0')
        .filter(|p| !p.is_empty() && paths.iter().any(|q| q == p))
        .map(str::to_string)
        .collect();
    if o.status.success() || !report.conflicted.is_empty() {
        report.applied = paths
            .iter()
            .filter(|p| !report.conflicted.contains(p))
            .cloned()
            .collect();
    }
    if report.applied.is_empty() && report.conflicted.is_empty() {
        let why = out.trim().replace('\n', "; ");
        let hint = if out.contains("does not match index") {
            " — commit or stash your changes to those files first"
        } else if out.contains("lacks the necessary blob") {
            " — this repository does not have the attempt's base commit; fetch it first"
        } else {
            ""
        };
        bail!(
            "the change does not apply, even with a 3-way merge; nothing was changed: {why}{hint} (base {})",
            crate::render::short_sha(&base)
        );
    }
    report.method = "3way".into();
    if report.conflicted.is_empty() {
        return finish(
            &report,
            json,
            "merged with a 3-way merge (staged); review with git diff --cached",
        );
    }
    finish(
        &report,
        json,
        "merged with conflicts: resolve the conflict markers in the files listed, then git add them",
    )
}

fn finish(report: &Report, json: bool, summary: &str) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for p in &report.applied {
            println!("applied     {p}");
        }
        for p in &report.conflicted {
            println!("CONFLICTED  {p}");
        }
        for p in &report.skipped {
            println!("skipped     {p}");
        }
        println!("{summary}");
    }
    Ok(if report.conflicted.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
