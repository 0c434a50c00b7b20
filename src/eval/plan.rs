//! A run of `eval` planned from its settings: which task/sample pairs to run (everything still missing from a
//! results file being resumed, or the completions given to score), how each sample is sampled, and the tally of the
//! results as they come in. The CLI handles the arguments and the display; the engine and the [`super::Executor`]
//! do the work.

use std::collections::HashSet;

use crate::engine::{GenerateRequest, Prompt, SamplingParams, SequenceId};

use super::{Benchmark, Completion, ResultWriter, SampleResult, Task};

/// One sample to run: the task (an index into the evaluated tasks), the sample number, and its completion when it
/// is already known (scoring) rather than to be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub task: usize,
    pub sample: u32,
    pub completion: Option<String>,
}

/// Every sample still to generate: `samples` per task, less the task/sample pairs in `done` (a resumed run's).
pub fn generation_work(tasks: &[Task], samples: u32, done: &HashSet<(String, u32)>) -> Vec<WorkItem> {
    (0..tasks.len())
        .flat_map(|task| (0..samples).map(move |sample| (task, sample)))
        .filter(|(task, sample)| !done.contains(&(tasks[*task].task_id.clone(), *sample)))
        .map(|(task, sample)| WorkItem { task, sample, completion: None })
        .collect()
}

/// The completions to score that belong to the evaluated tasks, and how many did not.
pub fn scoring_work(tasks: &[Task], completions: Vec<Completion>) -> (Vec<WorkItem>, usize) {
    let mut work = Vec::new();
    let mut skipped = 0usize;
    for completion in completions {
        match tasks.iter().position(|t| t.task_id == completion.task_id) {
            Some(task) => {
                work.push(WorkItem { task, sample: completion.sample, completion: Some(completion.completion) })
            }
            None => skipped += 1,
        }
    }
    (work, skipped)
}

/// Keeps the results of tasks in the evaluated set (e.g. under a smaller --limit), one per task/sample pair.
pub fn in_scope(results: Vec<SampleResult>, tasks: &[Task]) -> Vec<SampleResult> {
    let ids: HashSet<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    let mut seen = HashSet::new();
    results
        .into_iter()
        .filter(|r| ids.contains(r.task_id.as_str()) && seen.insert((r.task_id.clone(), r.sample)))
        .collect()
}

/// Programs run in parallel by default: half the CPUs (the other half generates), at least one.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1)
}

/// How the samples of a run are generated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPlan {
    pub benchmark: Benchmark,
    pub temperature: f32,
    pub top_p: f32,
    /// The seed of the first sample; sample `i` of task `t` uses `seed + 1000 t + i`.
    pub seed: u32,
    pub max_tokens: u32,
}

impl GenerationPlan {
    /// Without a temperature: greedy for one sample per task, 0.8 for several (the Codex paper's pass@k setting).
    pub fn new(
        benchmark: Benchmark,
        samples: u32,
        temperature: Option<f32>,
        top_p: f32,
        seed: u32,
        max_tokens: u32,
    ) -> Self {
        let temperature = temperature.unwrap_or(if samples > 1 { 0.8 } else { 0.0 });
        GenerationPlan { benchmark, temperature, top_p, seed, max_tokens }
    }

    /// The request for one sample, on sequence 0. Nucleus sampling applies only above temperature 0.
    pub fn request(&self, tasks: &[Task], item: &WorkItem) -> GenerateRequest {
        let mut request = GenerateRequest::new(SequenceId(0), Prompt::Text(tasks[item.task].prompt.clone()));
        request.max_tokens = self.max_tokens;
        request.stop_strings = self.benchmark.stop_strings();
        request.sampling = SamplingParams {
            temperature: self.temperature,
            top_p: if self.temperature > 0.0 { self.top_p } else { 1.0 },
            seed: self.seed.wrapping_add((item.task as u32).wrapping_mul(1000)).wrapping_add(item.sample),
            ..SamplingParams::default()
        };
        request
    }
}

/// The results of a run as they come in: those resumed from the results file, then this invocation's, each written
/// to the results file (when there is one) as it is recorded.
#[derive(Debug, Default)]
pub struct Tally {
    pub results: Vec<SampleResult>,
    pub passed: usize,
    /// Results of this invocation.
    pub finished: usize,
}

impl Tally {
    pub fn resumed(results: Vec<SampleResult>) -> Self {
        let passed = results.iter().filter(|r| r.passed).count();
        Tally { results, passed, finished: 0 }
    }

    pub fn record(&mut self, result: SampleResult, writer: Option<&mut ResultWriter>) -> super::Result<()> {
        if let Some(writer) = writer {
            writer.write(&result)?;
        }
        self.passed += usize::from(result.passed);
        self.finished += 1;
        self.results.push(result);
        Ok(())
    }

    /// `passed 3/10 (30.0%)`.
    pub fn summary(&self) -> String {
        let total = self.results.len();
        let rate = if total > 0 { 100.0 * self.passed as f64 / total as f64 } else { 0.0 };
        format!("passed {}/{total} ({rate:.1}%)", self.passed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The first `n` HumanEval tasks (built into the binary).
    fn tasks(n: usize) -> Vec<Task> {
        let mut tasks =
            crate::eval::load_tasks(Benchmark::HumanEval, &crate::eval::BenchmarkData::from_dir(None)).unwrap();
        tasks.truncate(n);
        tasks
    }

    #[test]
    fn a_resumed_run_generates_only_the_missing_samples() {
        let tasks = tasks(2);
        let done: HashSet<(String, u32)> = [("HumanEval/0".to_owned(), 1)].into();
        let work: Vec<(usize, u32)> = generation_work(&tasks, 2, &done).iter().map(|w| (w.task, w.sample)).collect();
        assert_eq!(work, [(0, 0), (1, 0), (1, 1)]);
    }

    #[test]
    fn completions_of_other_tasks_are_skipped_and_counted() {
        let tasks = tasks(2);
        let completion = |id: &str| Completion { task_id: id.to_owned(), sample: 0, completion: "pass".to_owned() };
        let given = vec![completion("HumanEval/1"), completion("HumanEval/9"), completion("HumanEval/0")];
        let (work, skipped) = scoring_work(&tasks, given);
        assert_eq!(work.iter().map(|w| w.task).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(work[0].completion.as_deref(), Some("pass"));
        assert_eq!(skipped, 1);
    }

    #[test]
    fn results_out_of_scope_or_repeated_are_dropped() {
        let results = vec![
            SampleResult::scored("HumanEval/0", 0, true),
            SampleResult::scored("HumanEval/9", 0, true),
            SampleResult::scored("HumanEval/0", 0, false),
        ];
        let kept = in_scope(results, &tasks(1));
        assert_eq!(kept.len(), 1);
        assert!(kept[0].passed);
    }

    #[test]
    fn samples_are_seeded_per_task_and_greedy_by_default_for_one() {
        let tasks = tasks(3);
        let greedy = GenerationPlan::new(Benchmark::HumanEval, 1, None, 0.95, 7, 64);
        let request = greedy.request(&tasks, &WorkItem { task: 2, sample: 0, completion: None });
        assert_eq!((request.sampling.temperature, request.sampling.top_p, request.sampling.seed), (0.0, 1.0, 2007));
        assert_eq!(request.stop_strings, Benchmark::HumanEval.stop_strings());
        assert!(matches!(&request.prompt, Prompt::Text(text) if *text == tasks[2].prompt));
        let sampled = GenerationPlan::new(Benchmark::Mbpp, 5, None, 0.95, 7, 64);
        let request = sampled.request(&tasks, &WorkItem { task: 1, sample: 3, completion: None });
        assert_eq!((request.sampling.temperature, request.sampling.top_p, request.sampling.seed), (0.8, 0.95, 1010));
    }

    #[test]
    fn the_tally_counts_resumed_and_new_results() {
        let mut tally = Tally::resumed(vec![SampleResult::scored("a", 0, true)]);
        tally.record(SampleResult::scored("a", 1, false), None).unwrap();
        assert_eq!((tally.passed, tally.finished, tally.results.len()), (1, 1, 2));
        assert_eq!(tally.summary(), "passed 1/2 (50.0%)");
    }
}
