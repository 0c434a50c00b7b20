//! Sample `i` of a run with seed `s` → what it is about → the prompt the teacher gets. Everything here is a pure
//! function of `(s, i)` and the diversity lists, so the same seed sends the same prompts, and a resumed run
//! regenerates exactly the samples that were lost.

use super::teacher::TeacherRequest;
use super::topics::{Diversity, Topic};
use super::Kind;
use crate::finetune::rng::SplitMix64;

/// Random words per prompt.
const WORDS_PER_PROMPT: usize = 3;
/// The packages phi-1's exercises stay within (its model card: 99.8 % of its fine-tuning scripts use only these).
const PACKAGES: &str = "typing, math, random, collections, datetime, itertools";

/// What sample `index` is about.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub index: u64,
    /// The teacher's sampling seed for this sample.
    pub sample_seed: u32,
    pub topic: Topic,
    pub audience: String,
    pub constraint: String,
    pub words: Vec<String>,
}

/// How the teacher samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationSettings {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
}

/// Sample `index` of the run with `seed`: its own random stream, independent of every other sample's.
pub fn sample_spec(diversity: &Diversity, seed: u64, index: u64) -> SampleSpec {
    let mut rng = SplitMix64::derived(seed, index);
    let topic = pick(&diversity.topics, &mut rng).cloned().unwrap_or(Topic { path: vec!["Python".to_owned()] });
    let audience = pick(&diversity.audiences, &mut rng).cloned().unwrap_or_default();
    let constraint = pick(&diversity.constraints, &mut rng).cloned().unwrap_or_default();
    let mut words: Vec<String> = Vec::new();
    let wanted = WORDS_PER_PROMPT.min(diversity.words.len());
    // Distinct words; the bound only matters for a list with repeated words.
    for _ in 0..wanted * 32 {
        if words.len() == wanted {
            break;
        }
        if let Some(word) = pick(&diversity.words, &mut rng).filter(|w| !words.contains(w)) {
            words.push(word.clone());
        }
    }
    let sample_seed = (rng.next_u64() >> 32) as u32;
    SampleSpec { index, sample_seed, topic, audience, constraint, words }
}

fn pick<'a, T>(items: &'a [T], rng: &mut SplitMix64) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[rng.below(items.len())])
}

/// The request for one sample. Chat teachers get `prompt`; completion teachers continue `prompt` +
/// `response_prefix` (for exercises, an opened code fence, so that a base model writes code right away).
pub fn teacher_request(kind: Kind, spec: &SampleSpec, settings: &GenerationSettings) -> TeacherRequest {
    // The instructions come first and are the same for every sample, so that the engine (and a server with
    // prefix caching) decodes them once per sequence; what varies comes last.
    let (instructions, response_prefix, stop) = match kind {
        Kind::Textbook => (
            format!(
                "Write a section of a Python textbook. Teach the way the best textbooks do: clear explanations that \
                 build reasoning step by step, interleaved with short, correct Python examples. Use only the \
                 standard library ({PACKAGES}). Start with a title line and write in plain Markdown. Write for the \
                 audience, on the topic and under the constraint below, and weave the words below into the \
                 examples or the explanations."
            ),
            "\n".to_owned(),
            Vec::new(),
        ),
        Kind::Exercises => (
            format!(
                "Write one Python exercise: a single function, with a signature with type hints and a docstring \
                 that states the task precisely and gives at least two doctest examples (>>> lines with their \
                 expected output), then the function's solution. After the function, add three assert statements \
                 that test it. Use only the standard library ({PACKAGES}). No classes, no input(), no printing. \
                 Reply with one Python code block and nothing else. Write for the audience, on the topic and under \
                 the constraint below, and let the words below inspire the function's name or its story."
            ),
            "\n```python\n".to_owned(),
            vec!["```".to_owned()],
        ),
    };
    let prompt = format!(
        "{instructions}\n\nAudience: {}\nTopic: {}\nConstraint: {}\nWords: {}\n",
        spec.audience,
        spec.topic.display(),
        spec.constraint,
        spec.words.join(", "),
    );
    TeacherRequest {
        prompt,
        response_prefix,
        stop,
        max_tokens: settings.max_tokens,
        temperature: settings.temperature,
        top_p: settings.top_p,
        seed: spec.sample_seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_depends_only_on_the_seed_and_its_index() {
        let diversity = Diversity::builtin();
        let settings = GenerationSettings { temperature: 0.8, top_p: 0.95, max_tokens: 64 };
        let prompts = |seed: u64| -> Vec<TeacherRequest> {
            (0..50).map(|i| teacher_request(Kind::Exercises, &sample_spec(&diversity, seed, i), &settings)).collect()
        };
        assert_eq!(prompts(7), prompts(7));
        assert_ne!(prompts(7), prompts(8));
        // Sample 30 alone is the same as sample 30 among the others (what resuming relies on).
        assert_eq!(sample_spec(&diversity, 7, 30), sample_spec(&diversity, 7, 30));
        let spec = sample_spec(&diversity, 7, 30);
        assert_eq!(spec.words.len(), 3);
        assert!(spec.words.iter().all(|w| spec.words.iter().filter(|x| *x == w).count() == 1));
        let request = &prompts(7)[30];
        assert!(request.prompt.contains(spec.topic.leaf()) && request.prompt.contains(&spec.audience));
        assert!(request.prompt.contains(&spec.words.join(", ")));
        assert_eq!(request.seed, spec.sample_seed);
        // 50 samples cover many topics.
        let mut topics: Vec<String> = (0..50).map(|i| sample_spec(&diversity, 7, i).topic.display()).collect();
        topics.sort();
        topics.dedup();
        assert!(topics.len() > 40, "{}", topics.len());
    }
}
