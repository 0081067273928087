//! Secret redaction: every occurrence of a secret's value becomes `[REDACTED:NAME]`.
//!
//! A [`Redactor`] holds the values of an attempt's secrets (or, on the server, of every
//! configured secret whose variable is set) and replaces them in text, bytes and JSON. Besides
//! the value itself it catches the encodings a value commonly leaks in:
//!
//! - **base64**, standard (`+/`) and URL-safe (`-_`) alphabets, padded or not: the value
//!   encoded on its own, and, for a value inside a longer base64 text (an HTTP Basic
//!   `user:token` header, a base64 config blob), the characters that the value alone
//!   determines, at each of the three byte alignments;
//! - **URL encoding**: every byte other than `A-Z a-z 0-9 - . _ ~` as `%XX` (upper- or
//!   lower-case hex), and form encoding (a space as `+`);
//! - **JSON string escaping** (`"` as `\"`, `\` as `\\`, control characters as `\n`, `\u0001`).
//!
//! Encoded forms shorter than 6 bytes are not used (they would match ordinary text). Not
//! caught: other encodings (hex, compression, encryption), URL encodings that leave some
//! reserved characters as they are, and a value printed with other characters in between.
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are **not used**: redacting a value that short
//! would blank out ordinary words everywhere, and a value that short is no secret. Their names
//! are listed by [`Redactor::ignored`]; the caller warns and must not hand such a value to a box.
//! Empty values are skipped silently (there is nothing to leak).
//!
//! Where matches overlap (one secret's value contains another's, or two values overlap), the
//! whole overlapping stretch is replaced, so that no part of either value survives: the longest
//! match at the leftmost position names the placeholder, and each secret whose match reaches
//! further adds its own (`[REDACTED:A][REDACTED:B]`).
//!
//! [`StreamRedactor`] does the same for output that arrives in chunks: it holds back the tail
//! of a chunk that could be the start of a value (at most the longest pattern's length minus
//! one byte, more only while a complete match overlaps that tail), so a value split across
//! chunks is still caught. What it emits, joined, equals [`Redactor::redact`] of the whole
//! output. Its input is `&str`, so it never splits a UTF-8 character.
//!
//! This module does no I/O.

use std::borrow::Cow;
use std::sync::Arc;

/// Values shorter than this many bytes are not redacted (and should not be used).
pub const MIN_SECRET_LEN: usize = 4;

/// Encoded forms shorter than this are not used as patterns.
const MIN_ENCODED_LEN: usize = 6;

/// A stream redactor holds a complete match longer than this rather than let the held text
/// grow without bound (only reachable with a value that overlaps itself, repeated).
const MAX_HOLD: usize = 64 * 1024;

/// The text a value is replaced with.
pub fn placeholder(name: &str) -> String {
    format!("[REDACTED:{name}]")
}

/// Replaces secret values (and their common encodings) with `[REDACTED:NAME]`. Cheap to clone;
/// the default redacts nothing and costs nothing.
#[derive(Clone, Default)]
pub struct Redactor {
    inner: Option<Arc<Inner>>,
    ignored: Arc<[String]>,
}

struct Inner {
    /// Placeholder of each secret, by secret index.
    placeholders: Vec<String>,
    names: Vec<String>,
    /// Every pattern (values and their encodings), with the index of its secret.
    patterns: Vec<(Vec<u8>, usize)>,
    /// Pattern indexes by first byte, longest first.
    by_first: Vec<Vec<usize>>,
    max_len: usize,
}

/// A stretch of text to replace: overlapping matches merged.
struct Region {
    start: usize,
    end: usize,
    secrets: Vec<usize>,
}

impl std::fmt::Debug for Redactor {
    /// Names only, never values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.names())
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl Redactor {
    /// A redactor for `(name, value)` pairs. Empty values are skipped; values shorter than
    /// [`MIN_SECRET_LEN`] bytes are skipped and listed by [`Redactor::ignored`].
    pub fn new<I, N, V>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<str>,
    {
        let mut names = Vec::new();
        let mut ignored = Vec::new();
        let mut patterns: Vec<(Vec<u8>, usize)> = Vec::new();
        for (name, value) in secrets {
            let (name, value) = (name.into(), value.as_ref());
            if value.is_empty() {
                continue;
            }
            if value.len() < MIN_SECRET_LEN {
                if !ignored.contains(&name) {
                    ignored.push(name);
                }
                continue;
            }
            let idx = names.len();
            names.push(name);
            for p in variants(value) {
                if !patterns.iter().any(|(q, _)| *q == p) {
                    patterns.push((p, idx));
                }
            }
        }
        let ignored: Arc<[String]> = ignored.into();
        if patterns.is_empty() {
            return Redactor {
                inner: None,
                ignored,
            };
        }
        let mut by_first = vec![Vec::new(); 256];
        for (i, (p, _)) in patterns.iter().enumerate() {
            by_first[p[0] as usize].push(i);
        }
        for list in &mut by_first {
            list.sort_by_key(|&i| std::cmp::Reverse(patterns[i].0.len()));
        }
        let max_len = patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(1);
        Redactor {
            inner: Some(Arc::new(Inner {
                placeholders: names.iter().map(|n| placeholder(n)).collect(),
                names,
                patterns,
                by_first,
                max_len,
            })),
            ignored,
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// The names of the secrets redacted.
    pub fn names(&self) -> Vec<&str> {
        self.inner
            .as_ref()
            .map(|i| i.names.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Names of the secrets whose values were too short to redact (and so must not be used).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The longest pattern, in bytes (0 when empty).
    pub fn max_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.max_len)
    }

    /// `text` with every value replaced; borrowed when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Patterns are valid UTF-8, so matches start and end on character boundaries.
            Cow::Owned(b) => Cow::Owned(
                String::from_utf8(b)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
            ),
        }
    }

    /// `text` redacted, as an owned string.
    pub fn redact_string(&self, text: String) -> String {
        match self.redact(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        }
    }

    /// Bytes with every value replaced (file contents); borrowed when nothing matched.
    pub fn redact_bytes<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(inner) = &self.inner else {
            return Cow::Borrowed(data);
        };
        let regions = inner.regions(data);
        if regions.is_empty() {
            return Cow::Borrowed(data);
        }
        let mut out = Vec::with_capacity(data.len() + 32);
        inner.apply(data, &regions, &mut out);
        out.extend_from_slice(&data[regions.last().map_or(0, |r| r.end)..]);
        Cow::Owned(out)
    }

    /// Names of the secrets found in `data`, each once, in order of first appearance.
    pub fn find(&self, data: &[u8]) -> Vec<&str> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let mut found: Vec<usize> = Vec::new();
        for r in inner.regions(data) {
            for s in r.secrets {
                if !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        found.into_iter().map(|s| inner.names[s].as_str()).collect()
    }

    /// Redacts every string in a JSON value, object keys included. Returns whether anything
    /// changed.
    pub fn redact_json(&self, value: &mut serde_json::Value) -> bool {
        if self.is_empty() {
            return false;
        }
        use serde_json::Value;
        match value {
            Value::String(s) => match self.redact(s) {
                Cow::Borrowed(_) => false,
                Cow::Owned(r) => {
                    *s = r;
                    true
                }
            },
            Value::Array(items) => {
                let mut changed = false;
                for v in items {
                    changed |= self.redact_json(v);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                for v in map.values_mut() {
                    changed |= self.redact_json(v);
                }
                if map.keys().any(|k| matches!(self.redact(k), Cow::Owned(_))) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.redact_string(k), v);
                    }
                    changed = true;
                }
                changed
            }
            _ => false,
        }
    }
}

impl Inner {
    /// The longest pattern matching at `at`, if any.
    fn longest_at(&self, data: &[u8], at: usize) -> Option<(usize, usize)> {
        let rest = &data[at..];
        self.by_first[rest[0] as usize].iter().find_map(|&i| {
            let (p, secret) = &self.patterns[i];
            rest.starts_with(p).then_some((at + p.len(), *secret))
        })
    }

    /// Overlapping matches merged into disjoint regions, in order.
    fn regions(&self, data: &[u8]) -> Vec<Region> {
        let mut out: Vec<Region> = Vec::new();
        for at in 0..data.len() {
            if self.by_first[data[at] as usize].is_empty() {
                continue;
            }
            let Some((end, secret)) = self.longest_at(data, at) else {
                continue;
            };
            match out.last_mut() {
                Some(r) if at < r.end => {
                    if end > r.end {
                        r.end = end;
                        if r.secrets.last() != Some(&secret) {
                            r.secrets.push(secret);
                        }
                    }
                }
                _ => out.push(Region {
                    start: at,
                    end,
                    secrets: vec![secret],
                }),
            }
        }
        out
    }

    /// Writes `data` up to the last region's end into `out`, regions replaced.
    fn apply(&self, data: &[u8], regions: &[Region], out: &mut Vec<u8>) {
        let mut pos = 0;
        for r in regions {
            out.extend_from_slice(&data[pos..r.start]);
            for &s in &r.secrets {
                out.extend_from_slice(self.placeholders[s].as_bytes());
            }
            pos = r.end;
        }
    }

    /// The first position from `from` at which the rest of `data` is a proper prefix of some
    /// pattern (a value that may continue in the next chunk), or `data.len()`.
    fn partial_start(&self, data: &[u8], from: usize) -> usize {
        (from..data.len())
            .find(|&s| {
                let rest = &data[s..];
                self.by_first[rest[0] as usize].iter().any(|&i| {
                    let p = &self.patterns[i].0;
                    p.len() > rest.len() && p.starts_with(rest)
                })
            })
            .unwrap_or(data.len())
    }
}

/// Every form of `value` that is redacted: the value, then its encodings.
fn variants(value: &str) -> Vec<Vec<u8>> {
    let v = value.as_bytes();
    let mut out = vec![v.to_vec()];
    let mut add = |p: Vec<u8>| {
        if p.len() >= MIN_ENCODED_LEN && !out.contains(&p) {
            out.push(p);
        }
    };
    if let Ok(json) = serde_json::to_string(value) {
        add(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    add(percent_encode(v, HEX_UPPER, false));
    add(percent_encode(v, HEX_LOWER, false));
    add(percent_encode(v, HEX_UPPER, true));
    add(percent_encode(v, HEX_LOWER, true));
    for alphabet in [B64_STD, B64_URL] {
        let padded = base64(v, alphabet, true);
        let bare = padded
            .iter()
            .copied()
            .take_while(|&c| c != b'=')
            .collect::<Vec<u8>>();
        add(padded);
        add(bare);
        for offset in 0..3 {
            add(base64_core(v, offset, alphabet));
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 3986 percent-encoding of every byte outside the unreserved set; with `form`, a space
/// becomes `+` (HTML form encoding).
fn percent_encode(v: &[u8], hex: &[u8; 16], form: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 3);
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else if form && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[(b >> 4) as usize], hex[(b & 15) as usize]]);
        }
    }
    out
}

/// Base64 of `v`, with `=` padding when `pad`.
fn base64(v: &[u8], alphabet: &[u8; 64], pad: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len().div_ceil(3) * 4);
    for chunk in v.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
    out
}

/// The base64 characters fully determined by `v` when it sits `offset` bytes (mod 3) into a
/// longer encoded text: whatever comes before and after, these characters appear.
fn base64_core(v: &[u8], offset: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut shifted = vec![0u8; offset];
    shifted.extend_from_slice(v);
    let enc = base64(&shifted, alphabet, false);
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + v.len()) / 6).min(enc.len());
    enc.get(first..end).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Redacts one output stream that arrives in chunks. See the module docs.
#[derive(Debug, Default)]
pub struct StreamRedactor {
    redactor: Redactor,
    pending: String,
}

impl StreamRedactor {
    pub fn new(redactor: Redactor) -> StreamRedactor {
        StreamRedactor {
            redactor,
            pending: String::new(),
        }
    }

    /// Takes the next chunk; returns what can be shown now (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        let Some(inner) = &self.redactor.inner else {
            return chunk.to_string();
        };
        self.pending.push_str(chunk);
        let data = self.pending.as_bytes();
        let floor = data.len().saturating_sub(inner.max_len - 1);
        let partial = inner.partial_start(data, floor);
        let regions = inner.regions(data);
        // A complete match overlapping the held tail may still grow into a longer stretch
        // (an overlapping value continuing in the next chunk): hold it too, within reason.
        let cut = match regions
            .iter()
            .find(|r| r.start < partial && partial < r.end)
        {
            Some(r) if data.len() - r.start <= MAX_HOLD => r.start,
            Some(r) => r.end,
            None => partial,
        };
        let done: Vec<Region> = regions.into_iter().take_while(|r| r.end <= cut).collect();
        let mut out = Vec::with_capacity(cut + 32);
        inner.apply(data, &done, &mut out);
        out.extend_from_slice(&data[done.last().map_or(0, |r| r.end)..cut]);
        // `cut` is a region start, a region end or the start of a pattern's prefix: all
        // character boundaries.
        let rest = self
            .pending
            .get(cut..)
            .map(str::to_string)
            .unwrap_or_default();
        self.pending = rest;
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// The end of the stream: everything still held, redacted.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.redactor.redact_string(rest)
    }

    /// Bytes held back, waiting for the next chunk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pairs: &[(&str, &str)]) -> Redactor {
        Redactor::new(pairs.iter().copied())
    }

    #[test]
    fn replaces_every_occurrence_and_borrows_when_clean() {
        let red = r(&[("TOKEN", "s3cr3t-value")]);
        assert_eq!(
            red.redact("a s3cr3t-value b s3cr3t-value"),
            "a [REDACTED:TOKEN] b [REDACTED:TOKEN]"
        );
        assert!(matches!(red.redact("nothing here"), Cow::Borrowed(_)));
        assert!(matches!(
            Redactor::default().redact("s3cr3t"),
            Cow::Borrowed(_)
        ));
        assert!(Redactor::default().is_empty());
        assert_eq!(red.names(), vec!["TOKEN"]);
    }

    #[test]
    fn short_and_empty_values_are_not_used() {
        let red = r(&[("EMPTY", ""), ("PIN", "123"), ("OK", "1234")]);
        assert_eq!(red.ignored(), ["PIN".to_string()]);
        assert_eq!(red.names(), vec!["OK"]);
        assert_eq!(red.redact("123 1234"), "123 [REDACTED:OK]");
        let none = r(&[("PIN", "12")]);
        assert!(none.is_empty());
        assert_eq!(none.ignored(), ["PIN".to_string()]);
    }

    #[test]
    fn debug_shows_names_never_values() {
        let red = r(&[("TOKEN", "s3cr3t-value")]);
        let shown = format!("{red:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn longest_match_wins() {
        let red = r(&[("SHORT", "abcd"), ("LONG", "abcdefgh")]);
        assert_eq!(
            red.redact("xabcdefghx abcdx"),
            "x[REDACTED:LONG]x [REDACTED:SHORT]x"
        );
        let red = r(&[("LONG", "abcdefgh"), ("INNER", "cdef")]);
        assert_eq!(red.redact("abcdefgh"), "[REDACTED:LONG]");
    }

    #[test]
    fn overlapping_values_leave_nothing_behind() {
        let red = r(&[("A", "abcdef"), ("B", "defghi")]);
        assert_eq!(red.redact("<abcdefghi>"), "<[REDACTED:A][REDACTED:B]>");
        // A value that overlaps itself.
        let red = r(&[("A", "aaaa")]);
        assert_eq!(red.redact("aaaaaa"), "[REDACTED:A]");
        assert_eq!(red.redact("aaaa aaaa"), "[REDACTED:A] [REDACTED:A]");
    }

    #[test]
    fn catches_base64() {
        let value = "hunter2-very-secret";
        let red = r(&[("PW", value)]);
        for alphabet in [B64_STD, B64_URL] {
            for pad in [true, false] {
                let enc = String::from_utf8(base64(value.as_bytes(), alphabet, pad)).unwrap();
                assert_eq!(red.redact(&format!("x {enc} y")), "x [REDACTED:PW] y");
            }
        }
        // Inside a longer encoded text, at every alignment: what is left decodes to no part
        // of the value longer than two bytes.
        for prefix in ["", "u", "us", "user:", "user:x"] {
            let whole = format!("{prefix}{value}\n");
            let enc = String::from_utf8(base64(whole.as_bytes(), B64_STD, true)).unwrap();
            let out = red.redact(&enc);
            assert!(out.contains("[REDACTED:PW]"), "{prefix:?}: {out}");
            let core = String::from_utf8(base64_core(value.as_bytes(), 0, B64_STD)).unwrap();
            assert!(!out.contains(&core[..8]), "{out}");
        }
        // The known vectors of RFC 4648.
        assert_eq!(base64(b"foob", B64_STD, true), b"Zm9vYg==");
        assert_eq!(base64(b"fooba", B64_STD, true), b"Zm9vYmE=");
        assert_eq!(base64(b"foobar", B64_STD, false), b"Zm9vYmFy");
    }

    #[test]
    fn catches_url_and_json_encodings() {
        let value = "p@ss w/rd+\"q\"";
        let red = r(&[("PW", value)]);
        for enc in [
            "p%40ss%20w%2Frd%2B%22q%22",
            "p%40ss%20w%2frd%2b%22q%22",
            "p%40ss+w%2Frd%2B%22q%22",
            r#"p@ss w/rd+\"q\""#,
        ] {
            assert_eq!(
                red.redact(&format!("?pw={enc}&x")),
                "?pw=[REDACTED:PW]&x",
                "{enc}"
            );
        }
    }

    #[test]
    fn redacts_json_strings_and_keys() {
        let red = r(&[("TOKEN", "tok-12345")]);
        let mut v = serde_json::json!({
            "command": "echo tok-12345",
            "nested": [{"tok-12345": 1}, "x", 5, null],
        });
        assert!(red.redact_json(&mut v));
        assert_eq!(
            v,
            serde_json::json!({
                "command": "echo [REDACTED:TOKEN]",
                "nested": [{"[REDACTED:TOKEN]": 1}, "x", 5, null],
            })
        );
        assert!(!red.redact_json(&mut v));
    }

    #[test]
    fn bytes_and_find() {
        let red = r(&[("A", "alpha-secret"), ("B", "beta-secret")]);
        let data = b"\x00\xffbeta-secret\x01alpha-secret beta-secret";
        assert_eq!(red.find(data), vec!["B", "A"]);
        assert_eq!(
            red.redact_bytes(data).as_ref(),
            b"\x00\xff[REDACTED:B]\x01[REDACTED:A] [REDACTED:B]"
        );
        assert!(red.find(b"nothing").is_empty());
    }

    /// Feeds `chunks` through a stream redactor, checking the hold limit on the way.
    fn stream(red: &Redactor, chunks: &[&str], bounded: bool) -> String {
        let mut s = StreamRedactor::new(red.clone());
        let mut out = String::new();
        for c in chunks {
            out.push_str(&s.push(c));
            if bounded {
                assert!(
                    s.pending() < red.max_len().max(1),
                    "held {} bytes",
                    s.pending()
                );
            }
        }
        out.push_str(&s.finish());
        assert_eq!(s.pending(), 0);
        out
    }

    #[test]
    fn stream_catches_a_value_split_anywhere() {
        let red = r(&[("TOKEN", "abcdef-secret")]);
        let text = "out: abcdef-secret! é and again abcdef-secret";
        let whole = red.redact(text).into_owned();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                if !(text.is_char_boundary(i) && text.is_char_boundary(j)) {
                    continue;
                }
                let got = stream(&red, &[&text[..i], &text[i..j], &text[j..]], true);
                assert_eq!(got, whole, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn stream_shows_clean_output_at_once() {
        let red = r(&[("TOKEN", "abcdef-secret")]);
        let mut s = StreamRedactor::new(red);
        assert_eq!(s.push("hello world\n"), "hello world\n");
        // Only a possible start of the value is held.
        assert_eq!(s.push("first: abc"), "first: ");
        assert_eq!(s.pending(), 3);
        assert_eq!(s.push("def-secret :second"), "[REDACTED:TOKEN] :second");
        assert_eq!(s.push("ab"), "");
        assert_eq!(s.finish(), "ab");
        let mut plain = StreamRedactor::new(Redactor::default());
        assert_eq!(plain.push("abc"), "abc");
        assert_eq!(plain.finish(), "");
    }

    /// Random secrets over a tiny alphabet (so that they overlap each other and themselves),
    /// random texts made of pieces of them, random chunkings: the stream's output equals the
    /// whole text's redaction and no value survives.
    #[test]
    fn stream_equals_whole_text_under_random_splits() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_cafe);
        let alphabet = ['a', 'b', 'c', 'é', '€', '\n'];
        let word = |rng: &mut fastrand::Rng, len: std::ops::Range<usize>| -> String {
            let n = rng.usize(len);
            (0..n)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        for round in 0..400 {
            let secrets: Vec<(String, String)> = (0..rng.usize(1..4))
                .map(|i| (format!("S{i}"), word(&mut rng, 4..9)))
                .collect();
            let red = Redactor::new(secrets.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let mut text = String::new();
            for _ in 0..rng.usize(0..12) {
                match rng.usize(0..3) {
                    0 => text.push_str(&secrets[rng.usize(..secrets.len())].1),
                    1 => {
                        let v = &secrets[rng.usize(..secrets.len())].1;
                        let cut: Vec<usize> =
                            (1..v.len()).filter(|&i| v.is_char_boundary(i)).collect();
                        if let Some(&c) = cut.get(rng.usize(..cut.len().max(1))) {
                            text.push_str(&v[..c]);
                        }
                    }
                    _ => text.push_str(&word(&mut rng, 1..6)),
                }
            }
            let whole = red.redact(&text).into_owned();
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for _ in 0..8 {
                let mut cuts: Vec<usize> = (0..rng.usize(0..6))
                    .map(|_| bounds[rng.usize(..bounds.len())])
                    .collect();
                cuts.push(0);
                cuts.push(text.len());
                cuts.sort_unstable();
                let chunks: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
                let got = stream(&red, &chunks, false);
                assert_eq!(got, whole, "round {round}: {secrets:?} {chunks:?}");
            }
            for (_, v) in &secrets {
                let stripped = whole.replace("[REDACTED:", "[");
                assert!(
                    !stripped.contains(v.as_str()),
                    "round {round}: {v:?} in {whole:?}"
                );
            }
        }
    }

    /// With values that cannot overlap, nothing more than a value's length minus one byte is
    /// ever held, whatever the chunking.
    #[test]
    fn stream_holds_less_than_a_value() {
        let mut rng = fastrand::Rng::with_seed(7);
        let red = r(&[("K", "Key-12345678"), ("L", "Lock-9999")]);
        for _ in 0..300 {
            let mut text = String::new();
            for _ in 0..rng.usize(0..10) {
                text.push_str(
                    ["Key-12345678", "Lock-9999", "Key-123", "Lo", " x ", "é"][rng.usize(0..6)],
                );
            }
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            let mut cuts: Vec<usize> = (0..rng.usize(0..8))
                .map(|_| bounds[rng.usize(..bounds.len())])
                .collect();
            cuts.extend([0, text.len()]);
            cuts.sort_unstable();
            let chunks: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            assert_eq!(stream(&red, &chunks, true), red.redact(&text));
        }
    }
}
