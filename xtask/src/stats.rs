//! Small summary statistics over durations.

use std::time::Duration;

/// Sorted samples in milliseconds.
#[derive(Debug, Clone)]
pub struct Summary {
    ms: Vec<f64>,
}

impl Summary {
    pub fn new(samples: &[Duration]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        Summary { ms }
    }

    pub fn from_ms(values: &[f64]) -> Summary {
        let mut ms = values.to_vec();
        ms.sort_by(|a, b| a.total_cmp(b));
        Summary { ms }
    }

    /// The samples in ms, ascending.
    pub fn values(&self) -> &[f64] {
        &self.ms
    }

    /// Nearest-rank percentile (`p` in 0..=100); NaN when empty.
    pub fn pct(&self, p: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.ms.len() as f64).ceil() as usize;
        self.ms[rank.clamp(1, self.ms.len()) - 1]
    }

    /// The middle value (mean of the two middle ones for an even count).
    pub fn median(&self) -> f64 {
        let n = self.ms.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            self.ms[n / 2]
        } else {
            (self.ms[n / 2 - 1] + self.ms[n / 2]) / 2.0
        }
    }

    pub fn min(&self) -> f64 {
        self.ms.first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// Milliseconds with a precision that suits the magnitude.
pub fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// An integer with thousands separators.
pub fn fmt_int(v: f64) -> String {
    let n = v.round() as i64;
    let digits: Vec<char> = n.unsigned_abs().to_string().chars().collect();
    let mut out = String::new();
    for (i, group) in digits.rchunks(3).rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.extend(group);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Summary::from_ms(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(s.pct(50.0), 50.0);
        assert_eq!(s.pct(90.0), 90.0);
        assert_eq!(s.pct(99.0), 99.0);
        assert_eq!(s.pct(100.0), 100.0);
        assert_eq!(s.median(), 50.5);
        assert_eq!(Summary::from_ms(&[3.0, 1.0, 2.0]).median(), 2.0);
    }

    #[test]
    fn ints_get_separators() {
        assert_eq!(fmt_int(1234567.0), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
        assert_eq!(fmt_int(1000.0), "1,000");
    }
}
