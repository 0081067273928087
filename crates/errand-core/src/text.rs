//! Small text helpers shared by the worker, the agent and the CLI.

/// A branch-safe slug from free text: lowercase ASCII words joined by `-`, at most `max` chars.
pub fn slugify(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    let trimmed = out.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed
    }
}

/// Caps `text` at about `max` bytes, keeping the head and the tail, with a marker in between
/// saying how much was left out. Returns the text and whether it was cut.
pub fn cap_head_tail(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let half = max / 2;
    let mut head_end = half;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - half;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let omitted = tail_start - head_end;
    (
        format!(
            "{}\n[… {} bytes omitted; the full output is in the event log …]\n{}",
            &text[..head_end],
            omitted,
            &text[tail_start..]
        ),
        true,
    )
}

/// First line of `text`, cut to `max` characters with an ellipsis.
pub fn title_of(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let mut s: String = line.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// An HTTP `Retry-After` value, delay-seconds (fractions accepted) or an HTTP date, as the
/// wait from now (zero for a date in the past).
pub fn parse_retry_after(value: &str) -> Option<std::time::Duration> {
    use std::time::{Duration, SystemTime};
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `512 B`, `3.4 KiB`, `34 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(human_bytes(34 << 20), "34 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn retry_after_seconds_or_date() {
        use std::time::Duration;
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let d = parse_retry_after(&later).unwrap_or_default();
        assert!(
            d > Duration::from_secs(3500) && d <= Duration::from_secs(3600),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn slugs() {
        assert_eq!(
            slugify("Fix the off-by-one in paginate()", 40),
            "fix-the-off-by-one-in-paginate"
        );
        assert_eq!(slugify("   ", 10), "task");
        assert_eq!(slugify("Ünïcode only ✓", 40), "n-code-only");
        assert!(slugify(&"word ".repeat(30), 24).len() <= 24);
        assert!(!slugify(&"ab ".repeat(30), 24).ends_with('-'));
    }

    #[test]
    fn cap() {
        let (s, cut) = cap_head_tail("hello", 10);
        assert_eq!(s, "hello");
        assert!(!cut);
        let long = "a".repeat(100) + &"b".repeat(100);
        let (s, cut) = cap_head_tail(&long, 40);
        assert!(cut);
        assert!(s.starts_with("aaaa") && s.ends_with("bbbb"));
        assert!(s.contains("160 bytes omitted"));
        let (s, _) = cap_head_tail(&"é".repeat(50), 11);
        assert!(s.contains("omitted"));
    }

    #[test]
    fn titles() {
        assert_eq!(title_of("  first\nsecond", 10), "first");
        assert_eq!(title_of("abcdefghijkl", 5), "abcd…");
    }
}
