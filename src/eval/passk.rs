//! pass@k: the unbiased estimator of Chen et al. (2021), and the report built from it.

use std::collections::BTreeMap;

use super::{SampleResult, Verdict};

/// The probability that at least one of `k` samples drawn without replacement from `n`, of which `c` are correct,
/// is correct: 1 − C(n−c, k) / C(n, k). Computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which neither overflows nor
/// loses precision for n in the hundreds. `None` when k is 0 or larger than n, or c larger than n.
pub fn pass_at_k(n: u32, c: u32, k: u32) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let k = f64::from(k);
    let none_correct: f64 = (n - c + 1..=n).map(|i| 1.0 - k / f64::from(i)).product();
    Some(1.0 - none_correct)
}

/// The k reported for tasks with at least `n` samples each: 1, 2, 5, 10, 20, 50, … up to n, and n itself.
pub fn report_ks(n: u32) -> Vec<u32> {
    let mut ks = Vec::new();
    let mut decade = 1u32;
    'outer: loop {
        for step in [1, 2, 5] {
            let Some(k) = decade.checked_mul(step) else { break 'outer };
            if k > n {
                break 'outer;
            }
            ks.push(k);
        }
        let Some(next) = decade.checked_mul(10) else { break };
        decade = next;
    }
    if n > 0 && ks.last() != Some(&n) {
        ks.push(n);
    }
    ks
}

/// A summary of sample results: counts and pass@k averaged over tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Tasks with at least one result.
    pub tasks: usize,
    pub samples: usize,
    pub passed: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub memory_exceeded: usize,
    /// Samples the sandbox could not run at all (not the program's fault).
    pub errors: usize,
    /// Tasks with at least one passing sample.
    pub tasks_solved: usize,
    /// The fewest samples any task has: pass@k is reported for k up to this.
    pub min_samples: u32,
    /// (k, pass@k) for k in [`report_ks`]`(min_samples)`.
    pub pass_at: Vec<(u32, f64)>,
}

impl Report {
    pub fn new(results: &[SampleResult]) -> Self {
        // task → (n, c)
        let mut per_task: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        let mut report = Self {
            tasks: 0,
            samples: results.len(),
            passed: 0,
            failed: 0,
            timed_out: 0,
            memory_exceeded: 0,
            errors: 0,
            tasks_solved: 0,
            min_samples: 0,
            pass_at: Vec::new(),
        };
        for result in results {
            let entry = per_task.entry(&result.task_id).or_default();
            entry.0 += 1;
            entry.1 += u32::from(result.passed);
            match result.verdict {
                Verdict::Passed => report.passed += 1,
                Verdict::Failed | Verdict::Killed => report.failed += 1,
                Verdict::TimedOut => report.timed_out += 1,
                Verdict::MemoryExceeded => report.memory_exceeded += 1,
                Verdict::Error => report.errors += 1,
            }
        }
        report.tasks = per_task.len();
        report.tasks_solved = per_task.values().filter(|(_, c)| *c > 0).count();
        report.min_samples = per_task.values().map(|(n, _)| *n).min().unwrap_or(0);
        for k in report_ks(report.min_samples) {
            let sum: f64 = per_task.values().filter_map(|&(n, c)| pass_at_k(n, c, k)).sum();
            report.pass_at.push((k, sum / report.tasks as f64));
        }
        report
    }

    pub fn pass_at_1(&self) -> Option<f64> {
        self.pass_at.first().filter(|(k, _)| *k == 1).map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_series() {
        assert_eq!(report_ks(1), [1]);
        assert_eq!(report_ks(3), [1, 2, 3]);
        assert_eq!(report_ks(10), [1, 2, 5, 10]);
        assert_eq!(report_ks(200), [1, 2, 5, 10, 20, 50, 100, 200]);
        assert!(report_ks(0).is_empty());
    }

    #[test]
    fn report_averages_over_tasks() {
        let result = SampleResult::scored;
        let results = [result("a", 0, true), result("a", 1, false), result("b", 0, false), result("b", 1, false)];
        let report = Report::new(&results);
        assert_eq!((report.tasks, report.samples, report.passed, report.failed), (2, 4, 1, 3));
        assert_eq!(report.tasks_solved, 1);
        assert_eq!(report.min_samples, 2);
        // a: pass@1 = 0.5, pass@2 = 1; b: 0.
        assert_eq!(report.pass_at, [(1, 0.25), (2, 0.5)]);
        assert_eq!(report.pass_at_1(), Some(0.25));
    }
}
