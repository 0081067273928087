//! Check commands named in a repository's root `AGENTS.md`, used when neither the task nor
//! its environment gives any checks. Pure: the worker reads the file.
//!
//! Conservative by design: a command is taken only when all of these hold.
//!
//! 1. **Where it is.** In a fenced code block (no language, or `sh`, `bash`, `shell`, `zsh`,
//!    `console`; in a `console` block only the `$ ` lines) or in inline code, under an ATX
//!    heading (`#`…`######`) that mentions testing, checking or verifying (`## Testing`,
//!    `### Checks`, `## Verify your change`; its sub-headings included); or in inline code on
//!    any other line that says `test`, `tests`, `testing`, `check`, `checks` or `verify`
//!    (`Run the tests with `cargo test`.`).
//! 2. **What it runs.** Its program is a known build or test tool (`cargo`, `go`, `npm`,
//!    `pytest`, `make`, …) or a script in the repository (`./…`, `scripts/…`, `bin/…`), and
//!    the command itself says test, check, lint, clippy, verify, spec, tox or nox
//!    (`cargo test`, `make check`, `npm run lint`; not `cargo build` or `cargo fmt`).
//! 3. **It can run unattended.** No placeholder (`<crate>`, `...`; Go's `./...` is fine), no
//!    `install`, no `sudo`, no `watch` mode.
//!
//! A `cd DIR` line in a code block applies to the block's later commands (`cd web && npm
//! test`). At most [`MAX_CHECKS`] commands are taken, in order, without duplicates; each
//! becomes a check named after its command.

use errand_core::CheckSpec;
use regex::Regex;
use std::sync::LazyLock;

/// Most checks taken from one `AGENTS.md`.
pub const MAX_CHECKS: usize = 8;

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in pattern {pattern}: {e}"))
}

static HEADING: LazyLock<Regex> = LazyLock::new(|| re(r"^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$"));
static CHECK_HEADING: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)\b(test|check|verif)"));
static CHECK_LINE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)\b(tests?|testing|checks?|verify)\b"));
static FENCE: LazyLock<Regex> = LazyLock::new(|| re(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)"));
static INLINE: LazyLock<Regex> = LazyLock::new(|| re(r"`([^`]+)`"));
static CHECKISH: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(test|check|lint|clippy|verify|\bspec\b|\btox\b|\bnox\b)"));
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(<[A-Za-z_][\w -]*>|(?:^|[^/.])\.\.\.|…|(?i)\binstall\b|\bsudo\b|watch)")
});
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$"));

/// Programs whose commands may be checks.
const PROGRAMS: &[&str] = &[
    "ant",
    "bazel",
    "bazelisk",
    "buck2",
    "bun",
    "bundle",
    "cabal",
    "cargo",
    "cmake",
    "composer",
    "ctest",
    "deno",
    "dotnet",
    "dune",
    "eslint",
    "flake8",
    "go",
    "gradle",
    "gradlew",
    "hatch",
    "jest",
    "julia",
    "just",
    "lein",
    "make",
    "mise",
    "mix",
    "mocha",
    "mvn",
    "mvnw",
    "mypy",
    "nextest",
    "nix",
    "node",
    "nox",
    "npm",
    "npx",
    "php",
    "phpunit",
    "pipenv",
    "pnpm",
    "poetry",
    "pre-commit",
    "pytest",
    "python",
    "python3",
    "rake",
    "rebar3",
    "rspec",
    "ruby",
    "ruff",
    "sbt",
    "stack",
    "swift",
    "task",
    "tox",
    "uv",
    "vitest",
    "yarn",
    "zig",
];

/// Whether `cmd` (one line, prompt removed) looks like a test or check command that can run
/// unattended.
pub fn is_check_command(cmd: &str) -> bool {
    if cmd.len() < 2 || cmd.len() > 300 || cmd.contains('\n') || cmd.starts_with('-') {
        return false;
    }
    if PLACEHOLDER.is_match(cmd) || !CHECKISH.is_match(cmd) {
        return false;
    }
    let Some(program) = cmd.split_whitespace().find(|w| !ASSIGNMENT.is_match(w)) else {
        return false;
    };
    let script = ["./", "scripts/", "script/", "bin/", "tools/", "ci/"]
        .iter()
        .any(|p| program.starts_with(p));
    let name = program.rsplit('/').next().unwrap_or(program);
    script || PROGRAMS.contains(&name)
}

struct Found {
    commands: Vec<String>,
}

impl Found {
    /// Takes `cmd` if it is a check command, run in `dir` when given.
    fn offer(&mut self, cmd: &str, dir: Option<&str>) {
        let cmd = cmd.trim();
        let cmd = cmd.strip_prefix("$ ").unwrap_or(cmd).trim();
        if !is_check_command(cmd) {
            return;
        }
        let full = match dir {
            Some(d) => format!("cd {d} && {cmd}"),
            None => cmd.to_string(),
        };
        if self.commands.len() < MAX_CHECKS && !self.commands.contains(&full) {
            self.commands.push(full);
        }
    }
}

/// The checks an `AGENTS.md` names (see the module documentation), in order.
pub fn checks_from_agents_md(text: &str) -> Vec<CheckSpec> {
    let mut found = Found {
        commands: Vec::new(),
    };
    // The level of the heading whose section is about checks, while inside it.
    let mut section: Option<usize> = None;
    // An open fence: its marker, whether its commands count, whether it is a console
    // transcript, the `cd` in effect and a line being continued with `\`.
    let mut fence: Option<(String, bool, bool)> = None;
    let mut cd: Option<String> = None;
    let mut pending = String::new();
    for raw in text.lines() {
        if let Some((marker, wanted, console)) = &fence {
            let t = raw.trim();
            if t.starts_with(marker.as_str())
                && t.trim_start_matches(marker.chars().next().unwrap_or('`'))
                    .is_empty()
            {
                fence = None;
                cd = None;
                pending.clear();
                continue;
            }
            if !*wanted {
                continue;
            }
            let mut line = t.to_string();
            if *console {
                match line.strip_prefix("$ ") {
                    Some(rest) if pending.is_empty() => line = rest.to_string(),
                    _ if !pending.is_empty() => {}
                    _ => continue,
                }
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont.trim_end());
                pending.push(' ');
                continue;
            }
            let full = std::mem::take(&mut pending) + &line;
            let full = full.trim();
            if full.is_empty() || full.starts_with('#') {
                continue;
            }
            let full = full.strip_prefix("$ ").unwrap_or(full);
            if let Some(dir) = full.strip_prefix("cd ") {
                let dir = dir.trim();
                if !dir.is_empty() && !dir.contains(['&', ';', '|']) {
                    cd = Some(match &cd {
                        Some(prev) if !dir.starts_with('/') => format!("{prev}/{dir}"),
                        _ => dir.to_string(),
                    });
                }
                continue;
            }
            found.offer(full, cd.as_deref());
            continue;
        }
        if let Some(c) = FENCE.captures(raw) {
            let marker = c.get(1).map_or("```", |m| m.as_str()).to_string();
            let lang = c.get(2).map_or("", |m| m.as_str()).to_ascii_lowercase();
            let shell = matches!(
                lang.as_str(),
                "" | "sh" | "bash" | "shell" | "zsh" | "console" | "shell-session" | "sh-session"
            );
            let console = matches!(lang.as_str(), "console" | "shell-session" | "sh-session");
            fence = Some((marker, section.is_some() && shell, console));
            continue;
        }
        if let Some(h) = HEADING.captures(raw) {
            let level = h.get(1).map_or(1, |m| m.as_str().len());
            let title = h.get(2).map_or("", |m| m.as_str());
            if section.is_some_and(|l| level <= l) {
                section = None;
            }
            if section.is_none() && CHECK_HEADING.is_match(title) {
                section = Some(level);
            }
            continue;
        }
        if section.is_some() || CHECK_LINE.is_match(raw) {
            for c in INLINE.captures_iter(raw) {
                if let Some(m) = c.get(1) {
                    found.offer(m.as_str(), None);
                }
            }
        }
    }
    found
        .commands
        .into_iter()
        .map(|command| CheckSpec {
            name: errand_core::text::title_of(&command, 60),
            command,
            junit: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(text: &str) -> Vec<String> {
        checks_from_agents_md(text)
            .into_iter()
            .map(|c| {
                assert_eq!(c.name, errand_core::text::title_of(&c.command, 60));
                c.command
            })
            .collect()
    }

    #[test]
    fn fenced_blocks_under_a_testing_heading() {
        let md = "\
# Project

Build with:

```sh
cargo build --release
cargo test
```

## Testing

Before you push:

```bash
# the unit tests
cargo test --workspace
cargo clippy --all-targets -- -D warnings
cargo fmt --all
cargo nextest run \\
  --workspace
```

### Frontend

```console
$ cd web
$ npm test
ok 12 tests
```

## Deploying

```sh
make test-deploy
```
";
        assert_eq!(
            commands(md),
            vec![
                "cargo test --workspace",
                "cargo clippy --all-targets -- -D warnings",
                "cargo nextest run --workspace",
                "cd web && npm test",
            ]
        );
    }

    #[test]
    fn inline_code_on_lines_about_tests() {
        let md = "\
# Notes

- Run the tests with `cargo test` and lint with `cargo clippy`.
- Format with `cargo fmt` before committing.
- The fixtures live in `tests/fixtures`; see `tests/README.md`.
- Check your change with `make check`, then `make check` again.
- Use `cargo run` to start it.

## Checks

`pytest -q` and `ruff check .`, and `go vet ./...` is nice (but not test-ish).
";
        assert_eq!(
            commands(md),
            vec![
                "cargo test",
                "cargo clippy",
                "make check",
                "pytest -q",
                "ruff check ."
            ]
        );
    }

    #[test]
    fn unattended_commands_only() {
        for bad in [
            "pip install pytest",
            "sudo make test",
            "npm run test:watch",
            "jest --watch",
            "cargo test -p <crate>",
            "cargo test ...",
            "tests/run.sh",
            "cargo build",
            "echo test",
            "--check",
            "",
        ] {
            assert!(!is_check_command(bad), "{bad}");
        }
        for good in [
            "cargo test",
            "RUST_LOG=debug cargo test",
            "./scripts/check.sh",
            "python3 -m pytest",
            "go test ./...",
            "go test -v ./pkg/...",
            "npm run lint",
            "./gradlew check",
            "mvn verify",
            "tox -e py311",
        ] {
            assert!(is_check_command(good), "{good}");
        }
    }

    #[test]
    fn nothing_named_gives_nothing_and_the_list_is_capped() {
        assert!(commands("# Hello\n\nJust a project.\n\n```sh\ncargo test\n```\n").is_empty());
        assert!(commands("").is_empty());
        let many: String = (0..20)
            .map(|i| format!("- Test {i} with `cargo test --test t{i}`\n"))
            .collect();
        assert_eq!(commands(&many).len(), MAX_CHECKS);
        // A fence that never closes doesn't make the rest of the file code.
        let open = "## Testing\n\n```sh\ncargo test\n";
        assert_eq!(commands(open), vec!["cargo test"]);
        // Other languages' blocks are not commands.
        assert!(commands("## Tests\n\n```python\npytest.main()\n```\n").is_empty());
    }
}
