//! Best-of-N: how the attempts of one task are ranked once they end.
//!
//! Ended attempts are ordered by, in turn:
//! 1. status: done, then failed, then cancelled;
//! 2. checks: all passed first, then more checks passed, then more tests passed;
//! 3. the reviewer's verdict: approve, then no verdict, then changes needed;
//! 4. the diff: smaller first (insertions + deletions); an attempt that changed nothing comes
//!    after every attempt that changed something;
//! 5. cost: cheaper first;
//! 6. the attempt number, so that the order is total and stable.
//!
//! Attempts that have not ended are not ranked.

use crate::{Attempt, Status, Verdict};
use std::cmp::Ordering;

/// Checks passed and run, and tests passed, of an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckTally {
    pub passed: usize,
    pub total: usize,
    pub tests_passed: u64,
    pub tests_failed: u64,
    pub tests_skipped: u64,
    /// Whether any check reported test counts.
    pub has_tests: bool,
}

impl CheckTally {
    pub fn of(a: &Attempt) -> CheckTally {
        let mut t = CheckTally {
            total: a.checks.len(),
            ..Default::default()
        };
        for c in &a.checks {
            if c.passed {
                t.passed += 1;
            }
            if let Some(n) = &c.tests {
                t.has_tests = true;
                t.tests_passed += n.passed;
                t.tests_failed += n.failed;
                t.tests_skipped += n.skipped;
            }
        }
        t
    }

    pub fn all_passed(&self) -> bool {
        self.passed == self.total
    }
}

/// The reviewer's verdict of an attempt, if it has one.
pub fn verdict(a: &Attempt) -> Option<Verdict> {
    a.review.as_ref().and_then(|r| r.verdict)
}

/// Insertions plus deletions; `None` when the attempt changed nothing (or has no diff).
pub fn diff_size(a: &Attempt) -> Option<u64> {
    a.diff_stats
        .as_ref()
        .filter(|d| d.files_changed > 0)
        .map(|d| d.insertions + d.deletions)
}

fn status_class(s: Status) -> u8 {
    match s {
        Status::Done => 0,
        Status::Failed => 1,
        _ => 2,
    }
}

fn verdict_class(v: Option<Verdict>) -> u8 {
    match v {
        Some(Verdict::Approve) => 0,
        None => 1,
        Some(Verdict::ChangesNeeded) => 2,
    }
}

/// Compares two ended attempts: `Less` when `a` ranks before `b`.
pub fn compare(a: &Attempt, b: &Attempt) -> Ordering {
    let (ta, tb) = (CheckTally::of(a), CheckTally::of(b));
    status_class(a.status)
        .cmp(&status_class(b.status))
        .then_with(|| tb.all_passed().cmp(&ta.all_passed()))
        .then_with(|| tb.passed.cmp(&ta.passed))
        .then_with(|| tb.tests_passed.cmp(&ta.tests_passed))
        .then_with(|| verdict_class(verdict(a)).cmp(&verdict_class(verdict(b))))
        .then_with(|| match (diff_size(a), diff_size(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.usage.cost_usd.total_cmp(&b.usage.cost_usd))
        .then_with(|| a.number.cmp(&b.number))
}

/// Indexes of the ended attempts, best first.
pub fn rank_order(attempts: &[Attempt]) -> Vec<usize> {
    let mut ended: Vec<usize> = (0..attempts.len())
        .filter(|&i| attempts[i].status.is_terminal())
        .collect();
    ended.sort_by(|&i, &j| compare(&attempts[i], &attempts[j]));
    ended
}

/// The best ended attempt, if any has ended.
pub fn best(attempts: &[Attempt]) -> Option<&Attempt> {
    rank_order(attempts).first().map(|&i| &attempts[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttemptReview, CheckResult, DiffStats, Pick, Task, TestCounts, Usage};

    fn attempt(number: i64, status: Status) -> Attempt {
        Attempt {
            id: format!("a{number}"),
            task_id: "t".into(),
            number,
            status,
            branch: format!("errand/x-{number}"),
            model: "m".into(),
            runs: 1,
            resumed_from: "start".into(),
            restart_reason: None,
            worker: None,
            active_worker: None,
            started_at_ms: None,
            finished_at_ms: None,
            head_commit: None,
            diff_stats: None,
            usage: Usage::default(),
            turns: 0,
            checks: vec![],
            summary: None,
            error: None,
            last_seq: 0,
            delivery: None,
            review: None,
            rank: None,
            setup: None,
        }
    }

    fn check(passed: bool, tests: Option<(u64, u64)>) -> CheckResult {
        CheckResult {
            name: "t".into(),
            command: "t".into(),
            exit_code: Some(if passed { 0 } else { 1 }),
            duration_ms: 1,
            passed,
            tests: tests.map(|(p, f)| TestCounts {
                passed: p,
                failed: f,
                skipped: 0,
                source: "cargo".into(),
            }),
        }
    }

    fn diff(ins: u64, del: u64) -> Option<DiffStats> {
        Some(DiffStats {
            files_changed: u64::from(ins + del > 0),
            insertions: ins,
            deletions: del,
            files: vec![],
        })
    }

    fn reviewed(mut a: Attempt, v: Option<Verdict>) -> Attempt {
        a.review = Some(AttemptReview {
            model: "r".into(),
            verdict: v,
            ..Default::default()
        });
        a
    }

    fn order(attempts: &[Attempt]) -> Vec<i64> {
        rank_order(attempts)
            .into_iter()
            .map(|i| attempts[i].number)
            .collect()
    }

    #[test]
    fn checks_then_verdict_then_diff_then_cost() {
        let mut a1 = attempt(1, Status::Failed);
        a1.checks = vec![check(true, None), check(false, Some((3, 1)))];
        a1.diff_stats = diff(1, 0);
        let mut a2 = attempt(2, Status::Done);
        a2.checks = vec![check(true, None), check(true, Some((4, 0)))];
        a2.diff_stats = diff(30, 5);
        let mut a3 = attempt(3, Status::Done);
        a3.checks = a2.checks.clone();
        a3.diff_stats = diff(3, 1);
        // Approve beats a smaller diff without a verdict.
        let a2 = reviewed(a2, Some(Verdict::Approve));
        assert_eq!(order(&[a1.clone(), a2.clone(), a3.clone()]), vec![2, 3, 1]);
        // Without a verdict the smaller diff wins; changes needed ranks below no verdict.
        let a2n = reviewed(a2.clone(), Some(Verdict::ChangesNeeded));
        assert_eq!(order(&[a1.clone(), a2n, a3.clone()]), vec![3, 2, 1]);
        let a2none = reviewed(a2.clone(), None);
        assert_eq!(order(&[a1.clone(), a2none, a3.clone()]), vec![3, 2, 1]);
        // Same diff size: the cheaper one.
        let mut a4 = a3.clone();
        a4.number = 4;
        a4.id = "a4".into();
        a4.usage.cost_usd = 0.01;
        let mut a3c = a3.clone();
        a3c.usage.cost_usd = 0.02;
        assert_eq!(order(&[a3c, a4]), vec![4, 3]);
    }

    #[test]
    fn more_passed_checks_rank_higher_among_failures_and_empty_diffs_rank_low() {
        let mut a1 = attempt(1, Status::Failed);
        a1.checks = vec![check(false, None), check(false, None)];
        let mut a2 = attempt(2, Status::Failed);
        a2.checks = vec![check(true, None), check(false, None)];
        let mut a3 = attempt(3, Status::Done);
        a3.diff_stats = diff(0, 0);
        let mut a4 = attempt(4, Status::Done);
        a4.diff_stats = diff(50, 50);
        let a5 = attempt(5, Status::Running);
        let a6 = attempt(6, Status::Cancelled);
        assert_eq!(order(&[a1, a2, a3, a4, a5, a6]), vec![4, 3, 2, 1, 6]);
    }

    #[test]
    fn the_result_is_the_pick_else_the_best_else_the_first() {
        let mut a1 = attempt(1, Status::Running);
        let mut a2 = attempt(2, Status::Done);
        a2.diff_stats = diff(2, 0);
        let mut t = Task {
            id: "t".into(),
            short_id: "t".into(),
            title: String::new(),
            prompt: String::new(),
            repo: String::new(),
            base_ref: String::new(),
            base_commit: String::new(),
            environment: Default::default(),
            model: String::new(),
            mode: "run".into(),
            trigger: "api".into(),
            created_by: String::new(),
            status: Status::Running,
            error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            attempts: vec![a1.clone(), a2.clone()],
            review_model: None,
            max_review_rounds: 0,
            picked: None,
            selected_attempt: None,
            plan: None,
            plan_revisions: Vec::new(),
            approvals: Vec::new(),
        };
        t.rank_attempts();
        assert_eq!(t.selected_attempt, Some(2));
        assert_eq!(t.attempts[0].rank, None);
        assert_eq!(t.attempts[1].rank, Some(1));
        a1.status = Status::Done;
        a1.diff_stats = diff(1, 0);
        t.attempts = vec![a1, a2];
        t.rank_attempts();
        assert_eq!(t.selected_attempt, Some(1));
        assert_eq!(t.attempts[1].rank, Some(2));
        t.picked = Some(Pick {
            attempt: 2,
            attempt_id: "a2".into(),
            by: "bob".into(),
            at_ms: 1,
        });
        t.rank_attempts();
        assert_eq!(t.selected_attempt, Some(2));
        assert_eq!(t.result_attempt().map(|a| a.number), Some(2));
        t.attempts
            .iter_mut()
            .for_each(|a| a.status = Status::Queued);
        t.picked = None;
        assert_eq!(t.result_attempt().map(|a| a.number), Some(1));
    }
}
