//! The `apply_patch` tool: applies edits written in the `*** Begin Patch`
//! format used by Codex-style coding agents.
//!
//! ```text
//! *** Begin Patch
//! *** Add File: path/to/new.txt
//! +line one
//! *** Update File: src/lib.py
//! *** Move to: src/renamed.py
//! @@ def paginate(items):
//!  context line
//! -removed line
//! +added line
//! *** End of File
//! *** Delete File: old.txt
//! *** End Patch
//! ```
//!
//! Application is all-or-nothing: every operation is parsed, checked and
//! computed in memory first, and the workspace is only written once all of
//! them succeeded. Should a write fail midway, the changes already made are
//! rolled back.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

const BEGIN_PATCH: &str = "*** Begin Patch";
const END_PATCH: &str = "*** End Patch";
const OP_ADD: &str = "Add File";
const OP_DELETE: &str = "Delete File";
const OP_UPDATE: &str = "Update File";

/// What a successfully applied patch did, with workspace-relative paths
/// (normalized, `/`-separated).
///
/// A moved file is listed in `moved`, and also in `modified` (under its new
/// path) when its update had hunks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatchSummary {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub deleted: Vec<String>,
    pub moved: Vec<(String, String)>,
}

/// One file operation of a parsed patch. Paths are as written in the patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Create a new file with the given contents.
    Add { path: String, contents: String },
    /// Remove an existing file.
    Delete { path: String },
    /// Edit an existing file, then optionally rename it.
    Update {
        path: String,
        move_to: Option<String>,
        hunks: Vec<Hunk>,
    },
}

impl FileOp {
    /// The path the operation applies to (the source path for a move).
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            FileOp::Add { path, .. } | FileOp::Delete { path } | FileOp::Update { path, .. } => {
                path
            }
        }
    }
}

/// One `@@` section of an `Update File` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// Text after `@@`: a line that must be found before the hunk's lines.
    pub context: Option<String>,
    pub lines: Vec<HunkLine>,
    /// Set by `*** End of File`: the hunk must match at the end of the file.
    pub end_of_file: bool,
}

impl Hunk {
    /// The lines the hunk expects to find in the file (context and removed).
    fn old_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|line| match line {
                HunkLine::Context(text) | HunkLine::Remove(text) => Some(text.as_str()),
                HunkLine::Add(_) => None,
            })
            .collect()
    }
}

/// One line of a hunk, without its leading marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    /// ` text`: must be present, is kept.
    Context(String),
    /// `-text`: must be present, is removed.
    Remove(String),
    /// `+text`: is inserted.
    Add(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("patch is empty: it contains no file operations")]
    Empty,
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("path '{path}' escapes the workspace")]
    PathEscapes { path: String },
    #[error("invalid path '{path}': {reason}")]
    InvalidPath { path: String, reason: String },
    /// A file operation cannot be carried out, e.g. "Add File x: file already exists".
    #[error("{op} {path}: {message}")]
    Operation {
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("Update File {path}: hunk {hunk} did not match: {message}")]
    HunkMismatch {
        path: String,
        hunk: usize,
        message: String,
    },
    #[error("I/O error on '{}': {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Writing the results failed after some files had already been changed.
    #[error("failed to write '{}': {source}; {}", .path.display(), rollback_note(*.rolled_back))]
    Commit {
        path: PathBuf,
        source: io::Error,
        /// Whether every change made before the failure was undone.
        rolled_back: bool,
    },
}

fn rollback_note(rolled_back: bool) -> &'static str {
    if rolled_back {
        "no changes were made"
    } else {
        "rolling back failed, the workspace may be partially modified"
    }
}

fn parse_error(line: usize, message: impl Into<String>) -> PatchError {
    PatchError::Parse {
        line,
        message: message.into(),
    }
}

fn op_error(op: &'static str, path: &str, message: impl Into<String>) -> PatchError {
    PatchError::Operation {
        op,
        path: path.to_owned(),
        message: message.into(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PatchError + '_ {
    move |source| PatchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Applies `patch` to the files under `root`.
///
/// Either every operation is applied or, on error, the workspace is left as
/// it was.
///
/// # Errors
///
/// Fails if the patch does not parse, a path is invalid or leaves the
/// workspace, an operation does not fit the files (missing file, file already
/// exists, hunk not found, ...), or on I/O errors.
pub fn apply_patch(root: &Path, patch: &str) -> Result<PatchSummary, PatchError> {
    let ops = parse_patch(patch)?;
    let root = fs::canonicalize(root).map_err(io_error(root))?;
    let mut workspace = Workspace {
        root,
        files: BTreeMap::new(),
    };
    let mut summary = PatchSummary::default();
    for op in &ops {
        workspace.apply(op, &mut summary)?;
    }
    workspace.commit()?;
    Ok(summary)
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A line of the patch text with its 1-based line number.
#[derive(Debug, Clone, Copy)]
struct PatchLine<'a> {
    no: usize,
    text: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive<'a> {
    BeginPatch,
    EndPatch,
    EndOfFile,
    AddFile(&'a str),
    DeleteFile(&'a str),
    UpdateFile(&'a str),
    MoveTo(&'a str),
    Unknown,
}

/// Recognizes a `***` directive line (which is never a hunk or content line,
/// since those start with ' ', '+' or '-').
fn directive(text: &str) -> Option<Directive<'_>> {
    let rest = text.trim_end().strip_prefix("***")?.trim_start();
    let directive = match rest {
        "Begin Patch" => Directive::BeginPatch,
        "End Patch" => Directive::EndPatch,
        "End of File" => Directive::EndOfFile,
        _ => {
            if let Some(path) = rest.strip_prefix("Add File:") {
                Directive::AddFile(path.trim())
            } else if let Some(path) = rest.strip_prefix("Delete File:") {
                Directive::DeleteFile(path.trim())
            } else if let Some(path) = rest.strip_prefix("Update File:") {
                Directive::UpdateFile(path.trim())
            } else if let Some(path) = rest.strip_prefix("Move to:") {
                Directive::MoveTo(path.trim())
            } else {
                Directive::Unknown
            }
        }
    };
    Some(directive)
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// Removes what models commonly wrap a patch in: surrounding blank lines,
/// Markdown code fences and a shell heredoc (`apply_patch <<'EOF' ... EOF`).
fn strip_wrappers<'a, 'b>(mut lines: &'b [PatchLine<'a>]) -> &'b [PatchLine<'a>] {
    loop {
        while lines.first().is_some_and(|line| is_blank(line.text)) {
            lines = &lines[1..];
        }
        while lines.last().is_some_and(|line| is_blank(line.text)) {
            lines = &lines[..lines.len() - 1];
        }
        let Some((first, rest)) = lines.split_first() else {
            return lines;
        };
        let first = first.text.trim();
        let closing = if first.starts_with("```") {
            // The closing fence is as long as the opening one.
            let fence_len = first.len() - first.trim_start_matches('`').len();
            Some("`".repeat(fence_len))
        } else if first == "apply_patch" {
            None
        } else if let Some(terminator) = heredoc_terminator(first) {
            Some(terminator)
        } else {
            return lines;
        };
        lines = rest;
        if let (Some(closing), Some((last, rest))) = (closing, lines.split_last())
            && last.text.trim() == closing
        {
            lines = rest;
        }
    }
}

/// The terminator of a heredoc opening line such as `apply_patch <<'EOF'`.
fn heredoc_terminator(line: &str) -> Option<String> {
    if line.starts_with("***") {
        return None;
    }
    let (_, after) = line.split_once("<<")?;
    let after = after.strip_prefix('-').unwrap_or(after).trim_start();
    let word = after.split_whitespace().next()?;
    let word = word.trim_matches(|c| c == '\'' || c == '"');
    (!word.is_empty()).then(|| word.to_owned())
}

/// Parses a patch into its file operations without touching the disk.
///
/// # Errors
///
/// [`PatchError::Empty`] if there is no file operation, otherwise
/// [`PatchError::Parse`] naming the offending line.
pub fn parse_patch(patch: &str) -> Result<Vec<FileOp>, PatchError> {
    let all: Vec<PatchLine<'_>> = patch
        .lines()
        .enumerate()
        .map(|(index, text)| PatchLine {
            no: index + 1,
            text,
        })
        .collect();
    let lines = strip_wrappers(&all);
    let Some((first, body)) = lines.split_first() else {
        return Err(PatchError::Empty);
    };
    if first.text.trim() != BEGIN_PATCH {
        return Err(parse_error(
            first.no,
            format!("expected '{BEGIN_PATCH}', found '{}'", first.text.trim()),
        ));
    }
    let mut parser = Parser {
        lines: body,
        pos: 0,
    };
    let ops = parser.parse_operations(first.no)?;
    if let Some(extra) = parser.lines[parser.pos..]
        .iter()
        .find(|l| !is_blank(l.text))
    {
        return Err(parse_error(
            extra.no,
            format!("unexpected content after '{END_PATCH}': '{}'", extra.text),
        ));
    }
    if ops.is_empty() {
        return Err(PatchError::Empty);
    }
    Ok(ops)
}

struct Parser<'a, 'b> {
    lines: &'b [PatchLine<'a>],
    pos: usize,
}

impl<'a> Parser<'a, '_> {
    fn peek(&self) -> Option<PatchLine<'a>> {
        self.lines.get(self.pos).copied()
    }

    /// Parses file operations up to and including `*** End Patch`.
    fn parse_operations(&mut self, begin_line: usize) -> Result<Vec<FileOp>, PatchError> {
        let mut ops = Vec::new();
        loop {
            let Some(line) = self.peek() else {
                let last = self.lines.last().map_or(begin_line, |line| line.no);
                return Err(parse_error(
                    last,
                    format!("missing '{END_PATCH}' at the end of the patch"),
                ));
            };
            let text = line.text.trim();
            if text.is_empty() {
                self.pos += 1;
                continue;
            }
            if text == END_PATCH {
                self.pos += 1;
                return Ok(ops);
            }
            let op = match directive(line.text) {
                Some(Directive::AddFile(path)) => self.parse_add(line, path)?,
                Some(Directive::DeleteFile(path)) => {
                    self.pos += 1;
                    FileOp::Delete {
                        path: checked_path(line, OP_DELETE, path)?,
                    }
                }
                Some(Directive::UpdateFile(path)) => self.parse_update(line, path)?,
                Some(Directive::MoveTo(_)) => {
                    return Err(parse_error(
                        line.no,
                        "'*** Move to:' must come directly after '*** Update File:'",
                    ));
                }
                Some(Directive::EndOfFile) => {
                    return Err(parse_error(
                        line.no,
                        "'*** End of File' is only allowed after the lines of an Update File hunk",
                    ));
                }
                Some(Directive::BeginPatch) => {
                    return Err(parse_error(
                        line.no,
                        format!("unexpected second '{BEGIN_PATCH}'"),
                    ));
                }
                Some(Directive::Unknown) => {
                    return Err(parse_error(
                        line.no,
                        format!(
                            "unknown directive '{text}' (expected '*** Add File:', \
                             '*** Update File:', '*** Delete File:' or '{END_PATCH}')"
                        ),
                    ));
                }
                Some(Directive::EndPatch) | None => {
                    return Err(parse_error(
                        line.no,
                        format!(
                            "expected '*** Add File:', '*** Update File:', '*** Delete File:' \
                             or '{END_PATCH}', found '{}'",
                            line.text
                        ),
                    ));
                }
            };
            ops.push(op);
        }
    }

    fn parse_add(&mut self, header: PatchLine<'a>, path: &str) -> Result<FileOp, PatchError> {
        let path = checked_path(header, OP_ADD, path)?;
        self.pos += 1;
        let mut lines: Vec<&str> = Vec::new();
        let mut trailing_blank = 0;
        while let Some(line) = self.peek() {
            if directive(line.text).is_some() {
                break;
            }
            if let Some(content) = line.text.strip_prefix('+') {
                lines.push(content);
                trailing_blank = 0;
            } else if is_blank(line.text) {
                // A model that forgot the '+' on an empty line.
                lines.push("");
                trailing_blank += 1;
            } else {
                return Err(parse_error(
                    line.no,
                    format!(
                        "{OP_ADD} {path}: expected a line starting with '+', found '{}'",
                        line.text
                    ),
                ));
            }
            self.pos += 1;
        }
        // Blank lines separating this operation from the next are not content.
        lines.truncate(lines.len() - trailing_blank);
        let contents = if lines.is_empty() {
            String::new()
        } else {
            let mut contents = lines.join("\n");
            contents.push('\n');
            contents
        };
        Ok(FileOp::Add { path, contents })
    }

    fn parse_update(&mut self, header: PatchLine<'a>, path: &str) -> Result<FileOp, PatchError> {
        let path = checked_path(header, OP_UPDATE, path)?;
        self.pos += 1;
        let mut move_to = None;
        if let Some(line) = self.peek()
            && let Some(Directive::MoveTo(dest)) = directive(line.text)
        {
            move_to = Some(checked_path(line, "Move to", dest)?);
            self.pos += 1;
        }

        let mut hunks = Vec::new();
        let mut current: Option<HunkBuilder> = None;
        while let Some(line) = self.peek() {
            let text = line.text;
            match directive(text) {
                None => {}
                Some(Directive::EndOfFile) => {
                    let Some(mut hunk) = current.take() else {
                        return Err(parse_error(
                            line.no,
                            format!(
                                "{OP_UPDATE} {path}: '*** End of File' must follow the lines of a hunk"
                            ),
                        ));
                    };
                    hunk.end_of_file = true;
                    hunks.push(hunk.finish(&path)?);
                    self.pos += 1;
                    continue;
                }
                Some(Directive::MoveTo(_)) => {
                    return Err(parse_error(
                        line.no,
                        format!(
                            "{OP_UPDATE} {path}: '*** Move to:' must come directly after \
                             '*** Update File:'"
                        ),
                    ));
                }
                Some(Directive::BeginPatch) => {
                    return Err(parse_error(
                        line.no,
                        format!("unexpected second '{BEGIN_PATCH}'"),
                    ));
                }
                Some(Directive::Unknown) => {
                    return Err(parse_error(
                        line.no,
                        format!("{OP_UPDATE} {path}: unknown directive '{}'", text.trim()),
                    ));
                }
                Some(
                    Directive::EndPatch
                    | Directive::AddFile(_)
                    | Directive::DeleteFile(_)
                    | Directive::UpdateFile(_),
                ) => break,
            }

            if let Some(rest) = text.strip_prefix("@@") {
                if let Some(hunk) = current.take() {
                    hunks.push(hunk.finish(&path)?);
                }
                current = Some(HunkBuilder::new(line.no, hunk_header_context(rest)));
                self.pos += 1;
                continue;
            }

            let hunk_line = if let Some(rest) = text.strip_prefix(' ') {
                Some(HunkLine::Context(rest.to_owned()))
            } else if let Some(rest) = text.strip_prefix('+') {
                Some(HunkLine::Add(rest.to_owned()))
            } else if let Some(rest) = text.strip_prefix('-') {
                Some(HunkLine::Remove(rest.to_owned()))
            } else if is_blank(text) {
                // An empty context line whose leading space was lost.
                None
            } else {
                return Err(parse_error(
                    line.no,
                    format!(
                        "{OP_UPDATE} {path}: unexpected line in hunk (hunk lines must start \
                         with ' ', '+' or '-'): '{text}'"
                    ),
                ));
            };

            match (&mut current, hunk_line) {
                (Some(hunk), hunk_line) => hunk.push(hunk_line),
                // Blank lines between hunks.
                (None, None) => {}
                // Tolerate a first hunk without an `@@` header.
                (None, Some(hunk_line)) if hunks.is_empty() => {
                    let mut hunk = HunkBuilder::new(line.no, None);
                    hunk.push(Some(hunk_line));
                    current = Some(hunk);
                }
                (None, Some(_)) => {
                    return Err(parse_error(
                        line.no,
                        format!(
                            "{OP_UPDATE} {path}: expected '@@' to start a new hunk, found '{text}'"
                        ),
                    ));
                }
            }
            self.pos += 1;
        }
        if let Some(hunk) = current.take() {
            hunks.push(hunk.finish(&path)?);
        }
        if hunks.is_empty() && move_to.is_none() {
            return Err(parse_error(
                header.no,
                format!("{OP_UPDATE} {path}: no hunks (expected '@@' followed by hunk lines)"),
            ));
        }
        Ok(FileOp::Update {
            path,
            move_to,
            hunks,
        })
    }
}

fn checked_path(line: PatchLine<'_>, op: &str, path: &str) -> Result<String, PatchError> {
    if path.is_empty() {
        return Err(parse_error(line.no, format!("{op}: missing file path")));
    }
    Ok(path.to_owned())
}

/// The context text of a hunk header (what follows `@@`). A unified-diff
/// range such as `-12,7 +12,8 @@` is ignored.
fn hunk_header_context(rest: &str) -> Option<String> {
    let rest = rest.trim();
    let rest = strip_unified_range(rest).unwrap_or(rest).trim();
    (!rest.is_empty()).then(|| rest.to_owned())
}

fn strip_unified_range(text: &str) -> Option<&str> {
    fn is_range(range: &str) -> bool {
        let is_number = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        match range.split_once(',') {
            Some((start, count)) => is_number(start) && is_number(count),
            None => is_number(range),
        }
    }
    let text = text.strip_prefix('-')?;
    let (old, text) = text.split_once(' ')?;
    let text = text.trim_start().strip_prefix('+')?;
    let (new, text) = text.split_once(' ').unwrap_or((text, ""));
    if !is_range(old) || !is_range(new) {
        return None;
    }
    let text = text.trim_start();
    Some(text.strip_prefix("@@").unwrap_or(text))
}

struct HunkBuilder {
    line_no: usize,
    context: Option<String>,
    lines: Vec<HunkLine>,
    /// How many of the last lines were blank patch lines (not " ").
    trailing_blank: usize,
    end_of_file: bool,
}

impl HunkBuilder {
    fn new(line_no: usize, context: Option<String>) -> Self {
        HunkBuilder {
            line_no,
            context,
            lines: Vec::new(),
            trailing_blank: 0,
            end_of_file: false,
        }
    }

    /// `None` is a blank patch line, taken as an empty context line.
    fn push(&mut self, line: Option<HunkLine>) {
        match line {
            Some(line) => {
                self.lines.push(line);
                self.trailing_blank = 0;
            }
            None => {
                self.lines.push(HunkLine::Context(String::new()));
                self.trailing_blank += 1;
            }
        }
    }

    fn finish(mut self, path: &str) -> Result<Hunk, PatchError> {
        // Blank lines before the next hunk or operation are separators, not
        // context; before `*** End of File` they are meant as context.
        if !self.end_of_file {
            self.lines.truncate(self.lines.len() - self.trailing_blank);
        }
        if self.lines.is_empty() {
            return Err(parse_error(
                self.line_no,
                format!("{OP_UPDATE} {path}: hunk has no lines"),
            ));
        }
        Ok(Hunk {
            context: self.context,
            lines: self.lines,
            end_of_file: self.end_of_file,
        })
    }
}

// ---------------------------------------------------------------------------
// Applying hunks to text
// ---------------------------------------------------------------------------

/// A replacement of `remove` lines at `start` (in the original lines) by `insert`.
struct Edit {
    start: usize,
    remove: usize,
    insert: Vec<String>,
}

/// Applies `hunks` to `text`, keeping its line endings.
fn apply_hunks(text: &str, hunks: &[Hunk], path: &str) -> Result<String, PatchError> {
    let crlf = uses_crlf(text);
    let had_trailing_newline = text.ends_with('\n');
    let lines: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        let body = text.strip_suffix('\n').unwrap_or(text);
        body.split('\n')
            .map(|line| {
                if crlf {
                    line.strip_suffix('\r').unwrap_or(line)
                } else {
                    line
                }
            })
            .collect()
    };

    let mut edits: Vec<Edit> = Vec::new();
    let mut cursor = 0;
    for (index, hunk) in hunks.iter().enumerate() {
        let mismatch = |message: String| PatchError::HunkMismatch {
            path: path.to_owned(),
            hunk: index + 1,
            message,
        };
        let old = hunk.old_lines();
        let mut search_from = cursor;
        let mut anchor = None;
        if let Some(context) = &hunk.context {
            let found = find_context_line(&lines, cursor, context).ok_or_else(|| {
                mismatch(format!(
                    "could not find the context line '@@ {context}'{}",
                    after_line(cursor)
                ))
            })?;
            // The hunk's own lines may repeat the context line, so they may
            // start on it.
            search_from = found;
            anchor = Some(found + 1);
        }
        let position = if old.is_empty() {
            if hunk.end_of_file {
                lines.len()
            } else {
                anchor.unwrap_or(lines.len())
            }
        } else if hunk.end_of_file {
            lines
                .len()
                .checked_sub(old.len())
                .filter(|&start| start >= search_from && matches_at(&lines, start, &old))
                .ok_or_else(|| {
                    mismatch(format!(
                        "could not find these lines at the end of the file:\n{}",
                        old.join("\n")
                    ))
                })?
        } else {
            find_lines(&lines, search_from, &old).ok_or_else(|| {
                mismatch(format!(
                    "could not find these lines{}:\n{}",
                    after_line(search_from),
                    old.join("\n")
                ))
            })?
        };

        let mut at = position;
        let mut pending: Option<Edit> = None;
        for line in &hunk.lines {
            match line {
                HunkLine::Context(_) => {
                    edits.extend(pending.take());
                    at += 1;
                }
                HunkLine::Remove(_) => {
                    pending.get_or_insert_with(|| new_edit(at)).remove += 1;
                    at += 1;
                }
                HunkLine::Add(text) => {
                    pending
                        .get_or_insert_with(|| new_edit(at))
                        .insert
                        .push(text.clone());
                }
            }
        }
        edits.extend(pending);
        cursor = at;
    }

    let mut new_lines: Vec<&str> = Vec::with_capacity(lines.len());
    let mut next = 0;
    let mut touches_end = false;
    for edit in &edits {
        new_lines.extend_from_slice(&lines[next..edit.start]);
        new_lines.extend(edit.insert.iter().map(String::as_str));
        next = edit.start + edit.remove;
        touches_end |= next == lines.len();
    }
    new_lines.extend_from_slice(&lines[next..]);

    let eol = if crlf { "\r\n" } else { "\n" };
    let mut out = new_lines.join(eol);
    if !new_lines.is_empty() && (had_trailing_newline || touches_end) {
        out.push_str(eol);
    }
    Ok(out)
}

fn new_edit(start: usize) -> Edit {
    Edit {
        start,
        remove: 0,
        insert: Vec::new(),
    }
}

fn after_line(index: usize) -> String {
    if index == 0 {
        String::new()
    } else {
        format!(" after line {index}")
    }
}

/// Whether most line breaks in `text` are CRLF.
fn uses_crlf(text: &str) -> bool {
    let newlines = text.matches('\n').count();
    let crlf = text.matches("\r\n").count();
    crlf > 0 && crlf * 2 >= newlines
}

type Normalize = fn(&str) -> &str;

/// Exact comparison first, then ignoring trailing, then surrounding whitespace.
const NORMALIZATIONS: [Normalize; 3] = [|s| s, str::trim_end, str::trim];

fn matches_at(lines: &[&str], start: usize, pattern: &[&str]) -> bool {
    NORMALIZATIONS
        .iter()
        .any(|normalize| matches_with(lines, start, pattern, *normalize))
}

fn matches_with(lines: &[&str], start: usize, pattern: &[&str], normalize: Normalize) -> bool {
    lines
        .get(start..start + pattern.len())
        .is_some_and(|window| {
            window
                .iter()
                .zip(pattern)
                .all(|(line, expected)| normalize(line) == normalize(expected))
        })
}

fn find_lines(lines: &[&str], from: usize, pattern: &[&str]) -> Option<usize> {
    let last_start = lines.len().checked_sub(pattern.len())?;
    NORMALIZATIONS.iter().find_map(|normalize| {
        (from..=last_start).find(|&start| matches_with(lines, start, pattern, *normalize))
    })
}

/// Finds the `@@` context line: a line equal to it once trimmed, or else one
/// containing it.
fn find_context_line(lines: &[&str], from: usize, context: &str) -> Option<usize> {
    let context = context.trim();
    let candidates = lines.iter().enumerate().skip(from);
    candidates
        .clone()
        .find(|(_, line)| line.trim() == context)
        .or_else(|| candidates.clone().find(|(_, line)| line.contains(context)))
        .map(|(index, _)| index)
}

// ---------------------------------------------------------------------------
// The in-memory workspace
// ---------------------------------------------------------------------------

/// What was on disk before the patch.
enum Original {
    Missing,
    Dir,
    File {
        bytes: Vec<u8>,
        permissions: fs::Permissions,
    },
}

struct Tracked {
    original: Original,
    /// The contents after the operations so far; `None` if absent.
    current: Option<Vec<u8>>,
    /// Permissions to give the file if it is created (kept across moves).
    new_permissions: Option<fs::Permissions>,
}

impl Tracked {
    fn permissions(&self) -> Option<fs::Permissions> {
        match &self.original {
            Original::File { permissions, .. } => Some(permissions.clone()),
            Original::Missing | Original::Dir => self.new_permissions.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    File,
    Dir,
}

struct Workspace {
    /// Canonicalized workspace root.
    root: PathBuf,
    /// Files read or changed so far, by normalized relative path.
    files: BTreeMap<PathBuf, Tracked>,
}

impl Workspace {
    /// Validates a patch path; returns it relative to the root, and its
    /// display form.
    fn resolve(&self, raw: &str) -> Result<(PathBuf, String), PatchError> {
        let mut relative = PathBuf::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => relative.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(PatchError::PathEscapes {
                        path: raw.to_owned(),
                    });
                }
            }
        }
        if relative.as_os_str().is_empty() {
            return Err(PatchError::InvalidPath {
                path: raw.to_owned(),
                reason: "it names the workspace root, not a file".to_owned(),
            });
        }
        if relative.components().any(|c| c.as_os_str() == ".git") {
            return Err(PatchError::InvalidPath {
                path: raw.to_owned(),
                reason: "it is inside .git, which the agent may not change".to_owned(),
            });
        }
        // Resolve symlinks through the deepest part of the path that exists.
        let absolute = self.root.join(&relative);
        for ancestor in absolute.ancestors() {
            if ancestor == self.root {
                break;
            }
            if fs::symlink_metadata(ancestor).is_ok() {
                let resolved =
                    fs::canonicalize(ancestor).map_err(|err| PatchError::InvalidPath {
                        path: raw.to_owned(),
                        reason: format!("cannot resolve '{}': {err}", ancestor.display()),
                    })?;
                if !resolved.starts_with(&self.root) {
                    return Err(PatchError::PathEscapes {
                        path: raw.to_owned(),
                    });
                }
                break;
            }
        }
        let display = relative
            .components()
            .map(|component| component.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        Ok((relative, display))
    }

    /// What is at `relative` after the operations so far.
    fn kind(&self, relative: &Path) -> Result<Kind, PatchError> {
        if let Some(tracked) = self.files.get(relative) {
            return Ok(match (&tracked.current, &tracked.original) {
                (Some(_), _) => Kind::File,
                (None, Original::Dir) => Kind::Dir,
                (None, _) => Kind::Missing,
            });
        }
        let absolute = self.root.join(relative);
        match fs::metadata(&absolute) {
            Ok(meta) if meta.is_dir() => Ok(Kind::Dir),
            Ok(_) => Ok(Kind::File),
            Err(err) if is_missing(&err) => Ok(Kind::Missing),
            Err(err) => Err(io_error(&absolute)(err)),
        }
    }

    /// The tracked state of `relative`, reading it from disk the first time.
    fn tracked(&mut self, relative: &Path) -> Result<&mut Tracked, PatchError> {
        let entry = match self.files.entry(relative.to_owned()) {
            Entry::Occupied(entry) => return Ok(entry.into_mut()),
            Entry::Vacant(entry) => entry,
        };
        let absolute = self.root.join(relative);
        let original = match fs::metadata(&absolute) {
            Ok(meta) if meta.is_dir() => Original::Dir,
            Ok(meta) => Original::File {
                bytes: fs::read(&absolute).map_err(io_error(&absolute))?,
                permissions: meta.permissions(),
            },
            Err(err) if is_missing(&err) => Original::Missing,
            Err(err) => return Err(io_error(&absolute)(err)),
        };
        let current = match &original {
            Original::File { bytes, .. } => Some(bytes.clone()),
            Original::Missing | Original::Dir => None,
        };
        Ok(entry.insert(Tracked {
            original,
            current,
            new_permissions: None,
        }))
    }

    /// Checks that a file can be created at `relative`.
    fn check_creatable(
        &self,
        relative: &Path,
        op: &'static str,
        path: &str,
        what: &str,
    ) -> Result<(), PatchError> {
        match self.kind(relative)? {
            Kind::Missing => {}
            Kind::File => return Err(op_error(op, path, format!("{what} already exists"))),
            Kind::Dir => {
                return Err(op_error(
                    op,
                    path,
                    format!("{what} already exists as a directory"),
                ));
            }
        }
        let created_below = self
            .files
            .iter()
            .any(|(other, tracked)| other.starts_with(relative) && tracked.current.is_some());
        if created_below {
            return Err(op_error(
                op,
                path,
                format!("{what} is a directory created by this patch"),
            ));
        }
        for ancestor in relative.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            if self.kind(ancestor)? == Kind::File {
                return Err(op_error(
                    op,
                    path,
                    format!("parent '{}' is a file", ancestor.display()),
                ));
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &FileOp, summary: &mut PatchSummary) -> Result<(), PatchError> {
        match op {
            FileOp::Add { path, contents } => {
                let (relative, display) = self.resolve(path)?;
                self.check_creatable(&relative, OP_ADD, &display, "file")?;
                self.tracked(&relative)?.current = Some(contents.clone().into_bytes());
                summary.added.push(display);
            }
            FileOp::Delete { path } => {
                let (relative, display) = self.resolve(path)?;
                match self.kind(&relative)? {
                    Kind::File => self.tracked(&relative)?.current = None,
                    Kind::Missing => return Err(op_error(OP_DELETE, &display, "no such file")),
                    Kind::Dir => {
                        return Err(op_error(OP_DELETE, &display, "is a directory, not a file"));
                    }
                }
                summary.deleted.push(display);
            }
            FileOp::Update {
                path,
                move_to,
                hunks,
            } => self.apply_update(path, move_to.as_deref(), hunks, summary)?,
        }
        Ok(())
    }

    fn apply_update(
        &mut self,
        path: &str,
        move_to: Option<&str>,
        hunks: &[Hunk],
        summary: &mut PatchSummary,
    ) -> Result<(), PatchError> {
        let (relative, display) = self.resolve(path)?;
        match self.kind(&relative)? {
            Kind::File => {}
            Kind::Missing => return Err(op_error(OP_UPDATE, &display, "no such file")),
            Kind::Dir => {
                return Err(op_error(OP_UPDATE, &display, "is a directory, not a file"));
            }
        }
        let source = self.tracked(&relative)?;
        let bytes = source.current.clone().unwrap_or_default();
        let permissions = source.permissions();
        let new_bytes = if hunks.is_empty() {
            bytes
        } else {
            let text = String::from_utf8(bytes)
                .map_err(|_| op_error(OP_UPDATE, &display, "file is not valid UTF-8 text"))?;
            apply_hunks(&text, hunks, &display)?.into_bytes()
        };

        let destination = match move_to {
            Some(dest) => {
                let (dest_relative, dest_display) = self.resolve(dest)?;
                (dest_relative != relative).then_some((dest_relative, dest_display))
            }
            None => None,
        };
        match destination {
            None => {
                self.tracked(&relative)?.current = Some(new_bytes);
                summary.modified.push(display);
            }
            Some((dest_relative, dest_display)) => {
                self.check_creatable(
                    &dest_relative,
                    OP_UPDATE,
                    &display,
                    &format!("move destination '{dest_display}'"),
                )?;
                self.tracked(&relative)?.current = None;
                let dest = self.tracked(&dest_relative)?;
                dest.current = Some(new_bytes);
                dest.new_permissions = permissions;
                if !hunks.is_empty() {
                    summary.modified.push(dest_display.clone());
                }
                summary.moved.push((display, dest_display));
            }
        }
        Ok(())
    }

    /// Writes the computed state to disk, undoing everything on failure.
    fn commit(self) -> Result<(), PatchError> {
        let mut journal = Vec::new();
        match commit_changes(&self.root, self.files, &mut journal) {
            Ok(()) => Ok(()),
            Err((path, source)) => Err(PatchError::Commit {
                path,
                source,
                rolled_back: roll_back(journal),
            }),
        }
    }
}

fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// How to undo one step of a commit.
enum Undo {
    Restore {
        path: PathBuf,
        bytes: Vec<u8>,
        permissions: fs::Permissions,
    },
    RemoveFile(PathBuf),
    RemoveDir(PathBuf),
}

struct PendingWrite {
    path: PathBuf,
    contents: Vec<u8>,
    original: Option<(Vec<u8>, fs::Permissions)>,
    permissions: Option<fs::Permissions>,
}

fn commit_changes(
    root: &Path,
    files: BTreeMap<PathBuf, Tracked>,
    journal: &mut Vec<Undo>,
) -> Result<(), (PathBuf, io::Error)> {
    let mut deletes = Vec::new();
    let mut writes = Vec::new();
    for (relative, tracked) in files {
        let path = root.join(relative);
        match (tracked.original, tracked.current) {
            (Original::File { bytes, permissions }, None) => {
                deletes.push((path, bytes, permissions));
            }
            (Original::File { bytes, permissions }, Some(contents)) => {
                if contents != bytes {
                    writes.push(PendingWrite {
                        path,
                        contents,
                        original: Some((bytes, permissions)),
                        permissions: None,
                    });
                }
            }
            (Original::Missing | Original::Dir, Some(contents)) => writes.push(PendingWrite {
                path,
                contents,
                original: None,
                permissions: tracked.new_permissions,
            }),
            (Original::Missing | Original::Dir, None) => {}
        }
    }

    // Deletions first, so that a deleted file's path can become a directory.
    for (path, bytes, permissions) in deletes {
        fs::remove_file(&path).map_err(|err| (path.clone(), err))?;
        journal.push(Undo::Restore {
            path,
            bytes,
            permissions,
        });
    }
    for write in writes {
        let path = write.path;
        match write.original {
            Some((bytes, permissions)) => journal.push(Undo::Restore {
                path: path.clone(),
                bytes,
                permissions,
            }),
            None => {
                if let Some(parent) = path.parent() {
                    create_dirs(parent, journal)?;
                }
                journal.push(Undo::RemoveFile(path.clone()));
            }
        }
        fs::write(&path, &write.contents).map_err(|err| (path.clone(), err))?;
        if let Some(permissions) = write.permissions {
            fs::set_permissions(&path, permissions).map_err(|err| (path.clone(), err))?;
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents, recording each one created.
fn create_dirs(dir: &Path, journal: &mut Vec<Undo>) -> Result<(), (PathBuf, io::Error)> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| fs::symlink_metadata(ancestor).is_err())
        .collect();
    for dir in missing.into_iter().rev() {
        fs::create_dir(dir).map_err(|err| (dir.to_owned(), err))?;
        journal.push(Undo::RemoveDir(dir.to_owned()));
    }
    Ok(())
}

/// Undoes the journal in reverse order; returns whether every step succeeded.
fn roll_back(journal: Vec<Undo>) -> bool {
    let mut complete = true;
    for undo in journal.into_iter().rev() {
        let result = match undo {
            Undo::Restore {
                path,
                bytes,
                permissions,
            } => fs::write(&path, bytes).and_then(|()| fs::set_permissions(&path, permissions)),
            Undo::RemoveFile(path) => match fs::remove_file(&path) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                result => result,
            },
            Undo::RemoveDir(path) => fs::remove_dir(&path),
        };
        complete &= result.is_ok();
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write(root: &Path, path: &str, contents: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn read(root: &Path, path: &str) -> String {
        fs::read_to_string(root.join(path)).unwrap()
    }

    fn exists(root: &Path, path: &str) -> bool {
        root.join(path).exists()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A listing of every file under `root` with its contents.
    fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
            entries.sort_by_key(|e| e.path());
            for entry in entries {
                let path = entry.path();
                if path.is_dir() {
                    out.push((path.clone(), Vec::new()));
                    walk(&path, out);
                } else {
                    out.push((path.clone(), fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, &mut out);
        out
    }

    // ----- parsing -----

    #[test]
    fn parses_all_operation_kinds() {
        let patch = "*** Begin Patch
*** Add File: a.txt
+one
+two
*** Update File: src/lib.py
*** Move to: src/renamed.py
@@ def paginate(items):
 ctx
-old
+new
@@
 more
-x
+y
*** End of File
*** Delete File: old.txt
*** End Patch";
        let ops = parse_patch(patch).unwrap();
        assert_eq!(
            ops,
            vec![
                FileOp::Add {
                    path: "a.txt".into(),
                    contents: "one\ntwo\n".into()
                },
                FileOp::Update {
                    path: "src/lib.py".into(),
                    move_to: Some("src/renamed.py".into()),
                    hunks: vec![
                        Hunk {
                            context: Some("def paginate(items):".into()),
                            lines: vec![
                                HunkLine::Context("ctx".into()),
                                HunkLine::Remove("old".into()),
                                HunkLine::Add("new".into()),
                            ],
                            end_of_file: false,
                        },
                        Hunk {
                            context: None,
                            lines: vec![
                                HunkLine::Context("more".into()),
                                HunkLine::Remove("x".into()),
                                HunkLine::Add("y".into()),
                            ],
                            end_of_file: true,
                        },
                    ],
                },
                FileOp::Delete {
                    path: "old.txt".into()
                },
            ]
        );
        assert_eq!(ops[1].path(), "src/lib.py");
    }

    #[test]
    fn empty_patch_is_an_error() {
        assert!(matches!(parse_patch(""), Err(PatchError::Empty)));
        assert!(matches!(parse_patch("  \n\n \n"), Err(PatchError::Empty)));
        assert!(matches!(
            parse_patch("*** Begin Patch\n*** End Patch\n"),
            Err(PatchError::Empty)
        ));
    }

    #[test]
    fn missing_begin_patch_names_the_line() {
        let err = parse_patch("\n\nhello\n*** End Patch").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: expected '*** Begin Patch', found 'hello'"
        );
    }

    #[test]
    fn missing_end_patch_is_an_error() {
        let err = parse_patch("*** Begin Patch\n*** Delete File: a\n").unwrap_err();
        assert!(err.to_string().contains("missing '*** End Patch'"), "{err}");
        assert!(matches!(err, PatchError::Parse { line: 2, .. }));
    }

    #[test]
    fn content_after_end_patch_is_an_error() {
        let err =
            parse_patch("*** Begin Patch\n*** Delete File: a\n*** End Patch\nmore\n").unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 4, .. }), "{err}");
    }

    #[test]
    fn unknown_directive_is_an_error() {
        let err = parse_patch("*** Begin Patch\n*** Rename File: a\n*** End Patch").unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 2, .. }));
        assert!(err.to_string().contains("unknown directive"), "{err}");

        let err = parse_patch(
            "*** Begin Patch\n*** Update File: a\n@@\n-x\n+y\n*** Frobnicate\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 6, .. }));
        assert!(err.to_string().contains("unknown directive"), "{err}");
    }

    #[test]
    fn bad_hunk_line_is_an_error() {
        let err =
            parse_patch("*** Begin Patch\n*** Update File: a.py\n@@\n foo\nbar\n*** End Patch")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 5: Update File a.py: unexpected line in hunk (hunk lines must start with \
             ' ', '+' or '-'): 'bar'"
        );
    }

    #[test]
    fn add_file_lines_must_start_with_plus() {
        let err =
            parse_patch("*** Begin Patch\n*** Add File: a\n+ok\noops\n*** End Patch").unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 4, .. }), "{err}");
    }

    #[test]
    fn update_without_hunks_is_an_error() {
        let err = parse_patch("*** Begin Patch\n*** Update File: a\n*** End Patch").unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 2, .. }), "{err}");
        let err = parse_patch("*** Begin Patch\n*** Update File: a\n@@\n@@\n-x\n*** End Patch")
            .unwrap_err();
        assert!(err.to_string().contains("hunk has no lines"), "{err}");
    }

    #[test]
    fn move_to_must_follow_update_header() {
        let err = parse_patch(
            "*** Begin Patch\n*** Update File: a\n@@\n-x\n*** Move to: b\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 5, .. }), "{err}");
    }

    #[test]
    fn missing_path_is_an_error() {
        let err = parse_patch("*** Begin Patch\n*** Delete File:\n*** End Patch").unwrap_err();
        assert!(matches!(err, PatchError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn blank_line_in_hunk_is_empty_context_but_trailing_blanks_are_separators() {
        let ops = parse_patch(
            "*** Begin Patch\n*** Update File: a\n@@\n x\n\n-y\n+z\n\n\n*** Delete File: b\n*** End Patch",
        )
        .unwrap();
        let FileOp::Update { hunks, .. } = &ops[0] else {
            panic!("expected an update: {ops:?}");
        };
        assert_eq!(
            hunks[0].lines,
            vec![
                HunkLine::Context("x".into()),
                HunkLine::Context(String::new()),
                HunkLine::Remove("y".into()),
                HunkLine::Add("z".into()),
            ]
        );
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn first_hunk_may_omit_header() {
        let ops =
            parse_patch("*** Begin Patch\n*** Update File: a\n-x\n+y\n*** End Patch").unwrap();
        let FileOp::Update { hunks, .. } = &ops[0] else {
            panic!("expected an update: {ops:?}");
        };
        assert_eq!(hunks.len(), 1);
        assert_eq!(hunks[0].context, None);
    }

    #[test]
    fn unified_diff_ranges_in_hunk_headers_are_ignored() {
        assert_eq!(hunk_header_context(" -1,3 +1,4 @@"), None);
        assert_eq!(
            hunk_header_context(" -12 +12,2 @@ fn main() {"),
            Some("fn main() {".into())
        );
        assert_eq!(hunk_header_context(" def f():"), Some("def f():".into()));
        assert_eq!(
            hunk_header_context(" -webkit-box"),
            Some("-webkit-box".into())
        );
        assert_eq!(hunk_header_context(""), None);
    }

    #[test]
    fn heredoc_and_fences_are_tolerated() {
        let expected = vec![FileOp::Delete { path: "a".into() }];
        for patch in [
            "apply_patch <<'EOF'\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF\n",
            "apply_patch <<\"PATCH\"\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nPATCH",
            "apply_patch << EOF\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF",
            "```\n*** Begin Patch\n*** Delete File: a\n*** End Patch\n```",
            "````diff\n*** Begin Patch\n*** Delete File: a\n*** End Patch\n````",
            "apply_patch\n*** Begin Patch\n*** Delete File: a\n*** End Patch",
            "```bash\napply_patch <<'EOF'\n*** Begin Patch\n*** Delete File: a\n*** End Patch\nEOF\n```\n",
            "\n\n   *** Begin Patch  \n*** Delete File: a\n  *** End Patch\t\n\n",
            "*** Begin Patch\r\n*** Delete File: a\r\n*** End Patch\r\n",
        ] {
            assert_eq!(parse_patch(patch).unwrap(), expected, "{patch:?}");
        }
    }

    // ----- applying -----

    #[test]
    fn add_file_creates_parent_directories() {
        let dir = workspace();
        let root = dir.path();
        let summary = apply_patch(
            root,
            "*** Begin Patch\n*** Add File: a/b/c.txt\n+line one\n+line two\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "a/b/c.txt"), "line one\nline two\n");
        assert_eq!(
            summary,
            PatchSummary {
                added: strings(&["a/b/c.txt"]),
                ..PatchSummary::default()
            }
        );
    }

    #[test]
    fn add_empty_file() {
        let dir = workspace();
        apply_patch(
            dir.path(),
            "*** Begin Patch\n*** Add File: empty\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(dir.path(), "empty"), "");
    }

    #[test]
    fn add_existing_file_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        write(root, "x", "keep\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Add File: new\n+n\n*** Add File: x\n+y\n*** End Patch",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Add File x: file already exists");
        assert_eq!(read(root, "x"), "keep\n");
        assert!(!exists(root, "new"));
    }

    #[test]
    fn add_under_a_file_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        write(root, "x", "keep\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Add File: x/y\n+y\n*** End Patch",
        )
        .unwrap_err();
        assert!(err.to_string().contains("parent 'x' is a file"), "{err}");
    }

    #[test]
    fn delete_file() {
        let dir = workspace();
        let root = dir.path();
        write(root, "old.txt", "bye\n");
        let summary = apply_patch(
            root,
            "*** Begin Patch\n*** Delete File: old.txt\n*** End Patch",
        )
        .unwrap();
        assert!(!exists(root, "old.txt"));
        assert_eq!(summary.deleted, strings(&["old.txt"]));
    }

    #[test]
    fn delete_missing_file_or_directory_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        let err =
            apply_patch(root, "*** Begin Patch\n*** Delete File: y\n*** End Patch").unwrap_err();
        assert_eq!(err.to_string(), "Delete File y: no such file");

        fs::create_dir(root.join("d")).unwrap();
        let err =
            apply_patch(root, "*** Begin Patch\n*** Delete File: d\n*** End Patch").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(root.join("d").is_dir());
    }

    #[test]
    fn update_file() {
        let dir = workspace();
        let root = dir.path();
        write(root, "src/a.py", "def f():\n    return 1\n\nprint(f())\n");
        let summary = apply_patch(
            root,
            "*** Begin Patch
*** Update File: src/a.py
@@
 def f():
-    return 1
+    return 2
*** End Patch",
        )
        .unwrap();
        assert_eq!(
            read(root, "src/a.py"),
            "def f():\n    return 2\n\nprint(f())\n"
        );
        assert_eq!(summary.modified, strings(&["src/a.py"]));
    }

    #[test]
    fn update_missing_file_is_an_error() {
        let dir = workspace();
        let err = apply_patch(
            dir.path(),
            "*** Begin Patch\n*** Update File: nope\n@@\n-x\n*** End Patch",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Update File nope: no such file");
    }

    #[test]
    fn multiple_hunks() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb\nc\nd\ne\nf\ng\n");
        apply_patch(
            root,
            "*** Begin Patch
*** Update File: f
@@
 a
-b
+B
 c
@@
 e
-f
+F1
+F2
 g
*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "a\nB\nc\nd\ne\nF1\nF2\ng\n");
    }

    #[test]
    fn hunks_are_matched_in_order() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "x = 1\nsep\nx = 1\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-x = 1\n+x = 2\n@@\n-x = 1\n+x = 3\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "x = 2\nsep\nx = 3\n");
    }

    #[test]
    fn context_header_anchors_the_hunk() {
        let dir = workspace();
        let root = dir.path();
        let original = "def first():\n    return None\n\ndef paginate(items):\n    return None\n";
        write(root, "lib.py", original);
        apply_patch(
            root,
            "*** Begin Patch
*** Update File: lib.py
@@ def paginate(items):
-    return None
+    return items[:10]
*** End Patch",
        )
        .unwrap();
        assert_eq!(
            read(root, "lib.py"),
            "def first():\n    return None\n\ndef paginate(items):\n    return items[:10]\n"
        );
    }

    #[test]
    fn context_header_may_be_partial_or_repeated_as_first_line() {
        let dir = workspace();
        let root = dir.path();
        write(root, "lib.rs", "fn a() {\n    1\n}\nfn b() {\n    1\n}\n");
        // Partial match ("fn b") and the header repeated as a context line.
        apply_patch(
            root,
            "*** Begin Patch
*** Update File: lib.rs
@@ fn b
 fn b() {
-    1
+    2
*** End Patch",
        )
        .unwrap();
        assert_eq!(
            read(root, "lib.rs"),
            "fn a() {\n    1\n}\nfn b() {\n    2\n}\n"
        );
    }

    #[test]
    fn missing_context_header_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@ def nothing\n-a\n*** End Patch",
        )
        .unwrap_err();
        assert!(
            matches!(err, PatchError::HunkMismatch { hunk: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("'@@ def nothing'"), "{err}");
    }

    #[test]
    fn pure_addition_inserts_after_context_or_at_end() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "[a]\nx=1\n[b]\ny=2\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@ [a]\n+new=0\n@@\n+tail\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "[a]\nnew=0\nx=1\n[b]\ny=2\ntail\n");
    }

    #[test]
    fn end_of_file_anchor() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "}\nmiddle\n}\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-}\n+} // end\n*** End of File\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "}\nmiddle\n} // end\n");
    }

    #[test]
    fn end_of_file_anchor_must_match_at_end() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb\nc\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-b\n+B\n*** End of File\n*** End Patch",
        )
        .unwrap_err();
        assert!(err.to_string().contains("at the end of the file"), "{err}");
        assert_eq!(read(root, "f"), "a\nb\nc\n");
    }

    #[test]
    fn end_of_file_pure_addition_appends() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n+b\n*** End of File\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "a\nb\n");
    }

    #[test]
    fn whitespace_fuzzy_matching() {
        let dir = workspace();
        let root = dir.path();
        // Trailing whitespace in the file, and different indentation.
        write(root, "f", "fn main() {   \n\tlet x = 1;\n}\n");
        apply_patch(
            root,
            "*** Begin Patch
*** Update File: f
@@
 fn main() {
-    let x = 1;
+\tlet x = 2;
 }
*** End Patch",
        )
        .unwrap();
        // Context lines keep the file's own text.
        assert_eq!(read(root, "f"), "fn main() {   \n\tlet x = 2;\n}\n");
    }

    #[test]
    fn exact_match_is_preferred_over_fuzzy() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "  x\nx\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-x\n+y\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "  x\ny\n");
    }

    #[test]
    fn empty_context_line_without_space() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\n\nb\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n a\n\n-b\n+c\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "a\n\nc\n");
    }

    #[test]
    fn non_matching_hunk_changes_nothing() {
        let dir = workspace();
        let root = dir.path();
        write(root, "src/a.py", "one\ntwo\n");
        write(root, "b.txt", "b\n");
        write(root, "gone.txt", "still here\n");
        let before = snapshot(root);
        let err = apply_patch(
            root,
            "*** Begin Patch
*** Add File: new/file.txt
+hello
*** Delete File: gone.txt
*** Update File: b.txt
@@
-b
+B
*** Update File: src/a.py
@@
-one
+ONE
@@
-three
+THREE
*** End Patch",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Update File src/a.py: hunk 2 did not match: could not find these lines after line 1:\nthree"
        );
        assert_eq!(snapshot(root), before);
        assert!(!exists(root, "new"));
    }

    #[test]
    fn move_with_changes() {
        let dir = workspace();
        let root = dir.path();
        write(root, "src/lib.py", "a\nb\n");
        let summary = apply_patch(
            root,
            "*** Begin Patch
*** Update File: src/lib.py
*** Move to: pkg/renamed.py
@@
 a
-b
+c
*** End Patch",
        )
        .unwrap();
        assert!(!exists(root, "src/lib.py"));
        assert_eq!(read(root, "pkg/renamed.py"), "a\nc\n");
        assert_eq!(
            summary,
            PatchSummary {
                modified: strings(&["pkg/renamed.py"]),
                moved: vec![("src/lib.py".into(), "pkg/renamed.py".into())],
                ..PatchSummary::default()
            }
        );
    }

    #[test]
    fn pure_rename_keeps_bytes() {
        let dir = workspace();
        let root = dir.path();
        let bytes = [0u8, 159, 146, 150, b'\n', 255];
        fs::write(root.join("bin"), bytes).unwrap();
        let summary = apply_patch(
            root,
            "*** Begin Patch\n*** Update File: bin\n*** Move to: ./moved/bin2\n*** End Patch",
        )
        .unwrap();
        assert_eq!(fs::read(root.join("moved/bin2")).unwrap(), bytes);
        assert!(!exists(root, "bin"));
        assert_eq!(summary.moved, vec![("bin".into(), "moved/bin2".into())]);
        assert!(summary.modified.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn move_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = workspace();
        let root = dir.path();
        write(root, "run.sh", "echo hi\n");
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: run.sh\n*** Move to: bin/run.sh\n@@\n-echo hi\n+echo bye\n*** End Patch",
        )
        .unwrap();
        let mode = fs::metadata(root.join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn move_onto_existing_file_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        write(root, "a", "a\n");
        write(root, "b", "b\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Update File: a\n*** Move to: b\n*** End Patch",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Update File a: move destination 'b' already exists"
        );
        assert_eq!(read(root, "a"), "a\n");
        assert_eq!(read(root, "b"), "b\n");
    }

    #[test]
    fn update_of_non_utf8_file_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        fs::write(root.join("bin"), [0xffu8, 0xfe]).unwrap();
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Update File: bin\n@@\n-x\n*** End Patch",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn operations_apply_in_sequence() {
        let dir = workspace();
        let root = dir.path();
        write(root, "old", "x\n");
        let summary = apply_patch(
            root,
            "*** Begin Patch
*** Add File: a.txt
+one
*** Update File: a.txt
@@
-one
+two
*** Delete File: old
*** Add File: old/inner.txt
+inner
*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "a.txt"), "two\n");
        assert_eq!(read(root, "old/inner.txt"), "inner\n");
        assert_eq!(summary.added, strings(&["a.txt", "old/inner.txt"]));
        assert_eq!(summary.modified, strings(&["a.txt"]));
        assert_eq!(summary.deleted, strings(&["old"]));
    }

    #[test]
    fn double_delete_is_an_error() {
        let dir = workspace();
        let root = dir.path();
        write(root, "a", "a\n");
        let err = apply_patch(
            root,
            "*** Begin Patch\n*** Delete File: a\n*** Delete File: a\n*** End Patch",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Delete File a: no such file");
        assert!(exists(root, "a"));
    }

    #[test]
    fn crlf_is_preserved() {
        let dir = workspace();
        let root = dir.path();
        write(root, "win.txt", "one\r\ntwo\r\nthree\r\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: win.txt\n@@\n one\n-two\n+2\n+2.5\n three\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "win.txt"), "one\r\n2\r\n2.5\r\nthree\r\n");
    }

    #[test]
    fn crlf_patch_text_on_lf_file() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb\n");
        apply_patch(
            root,
            "*** Begin Patch\r\n*** Update File: f\r\n@@\r\n a\r\n-b\r\n+c\r\n*** End Patch\r\n",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "a\nc\n");
    }

    #[test]
    fn missing_trailing_newline_is_preserved_when_last_line_untouched() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb\nc");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-a\n+A\n b\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "A\nb\nc");

        // Inserting just before the last line does not touch it either.
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n b\n+b2\n c\n*** End of File\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "A\nb\nb2\nc");
    }

    #[test]
    fn touching_the_last_line_adds_a_trailing_newline() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n a\n-b\n+c\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "a\nc\n");

        write(root, "g", "a");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: g\n@@\n+z\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "g"), "a\nz\n");
    }

    #[test]
    fn removing_every_line_leaves_an_empty_file() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\nb\n");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n-a\n-b\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "");
    }

    #[test]
    fn updating_an_empty_file() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "");
        apply_patch(
            root,
            "*** Begin Patch\n*** Update File: f\n@@\n+first\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "first\n");
    }

    #[test]
    fn heredoc_wrapped_patch_applies() {
        let dir = workspace();
        let root = dir.path();
        write(root, "f", "a\n");
        apply_patch(
            root,
            "\n  apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: f\n@@\n-a\n+b\n*** End Patch\nEOF\n\n",
        )
        .unwrap();
        assert_eq!(read(root, "f"), "b\n");
    }

    #[test]
    fn parent_dir_paths_are_rejected() {
        let dir = workspace();
        let root = dir.path().join("ws");
        fs::create_dir(&root).unwrap();
        for path in ["../x", "a/../../x", "a/../b"] {
            let err = apply_patch(
                &root,
                &format!("*** Begin Patch\n*** Add File: {path}\n+x\n*** End Patch"),
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("path '{path}' escapes the workspace")
            );
        }
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn absolute_paths_are_rejected() {
        let dir = workspace();
        let target = dir.path().join("abs.txt");
        let patch = format!(
            "*** Begin Patch\n*** Add File: {}\n+x\n*** End Patch",
            target.display()
        );
        let err = apply_patch(dir.path(), &patch).unwrap_err();
        assert!(matches!(err, PatchError::PathEscapes { .. }), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn root_itself_is_not_a_file() {
        let dir = workspace();
        let err = apply_patch(
            dir.path(),
            "*** Begin Patch\n*** Delete File: ./\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::InvalidPath { .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_workspace_are_rejected() {
        use std::os::unix::fs::symlink;
        let dir = workspace();
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s\n").unwrap();
        symlink(&outside, root.join("link")).unwrap();
        symlink(outside.join("secret"), root.join("secret_link")).unwrap();

        let err = apply_patch(
            &root,
            "*** Begin Patch\n*** Add File: link/new/x.txt\n+x\n*** End Patch",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "path 'link/new/x.txt' escapes the workspace"
        );
        assert!(!outside.join("new").exists());

        let err = apply_patch(
            &root,
            "*** Begin Patch\n*** Update File: secret_link\n@@\n-s\n+t\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::PathEscapes { .. }), "{err}");
        let err = apply_patch(
            &root,
            "*** Begin Patch\n*** Delete File: link/secret\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::PathEscapes { .. }), "{err}");
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "s\n");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_inside_the_workspace_are_allowed() {
        use std::os::unix::fs::symlink;
        let dir = workspace();
        let root = dir.path();
        fs::create_dir(root.join("real")).unwrap();
        symlink(root.join("real"), root.join("alias")).unwrap();
        apply_patch(
            root,
            "*** Begin Patch\n*** Add File: alias/f\n+x\n*** End Patch",
        )
        .unwrap();
        assert_eq!(read(root, "real/f"), "x\n");
    }

    #[cfg(unix)]
    #[test]
    fn dangling_symlinks_are_rejected() {
        use std::os::unix::fs::symlink;
        let dir = workspace();
        let root = dir.path().join("ws");
        fs::create_dir(&root).unwrap();
        symlink(dir.path().join("nowhere"), root.join("dangling")).unwrap();
        let err = apply_patch(
            &root,
            "*** Begin Patch\n*** Add File: dangling\n+x\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::InvalidPath { .. }), "{err}");
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn missing_root_is_an_io_error() {
        let dir = workspace();
        let err = apply_patch(
            &dir.path().join("nope"),
            "*** Begin Patch\n*** Add File: a\n+x\n*** End Patch",
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn rollback_restores_files() {
        let dir = workspace();
        let root = dir.path();
        write(root, "a", "original\n");
        write(root, "b", "deleted\n");
        let mut journal = Vec::new();
        let mut files = BTreeMap::new();
        let permissions = fs::metadata(root.join("a")).unwrap().permissions();
        files.insert(
            PathBuf::from("a"),
            Tracked {
                original: Original::File {
                    bytes: b"original\n".to_vec(),
                    permissions: permissions.clone(),
                },
                current: Some(b"changed\n".to_vec()),
                new_permissions: None,
            },
        );
        files.insert(
            PathBuf::from("b"),
            Tracked {
                original: Original::File {
                    bytes: b"deleted\n".to_vec(),
                    permissions,
                },
                current: None,
                new_permissions: None,
            },
        );
        files.insert(
            PathBuf::from("c/d/e"),
            Tracked {
                original: Original::Missing,
                current: Some(b"new\n".to_vec()),
                new_permissions: None,
            },
        );
        commit_changes(root, files, &mut journal).unwrap();
        assert_eq!(read(root, "a"), "changed\n");
        assert!(!exists(root, "b"));
        assert_eq!(read(root, "c/d/e"), "new\n");

        assert!(roll_back(journal));
        assert_eq!(read(root, "a"), "original\n");
        assert_eq!(read(root, "b"), "deleted\n");
        assert!(!exists(root, "c"));
    }

    #[test]
    fn error_messages() {
        let err = PatchError::Commit {
            path: PathBuf::from("x"),
            source: io::Error::other("disk full"),
            rolled_back: true,
        };
        assert_eq!(
            err.to_string(),
            "failed to write 'x': disk full; no changes were made"
        );
    }
}
