//! Decontamination, as phi-1 checked its CodeExercises (§5): a sample that shares a 13-gram of words with any
//! HumanEval or MBPP problem statement or reference solution is dropped. Words are runs of letters, digits and
//! underscores, lowercased, so formatting and punctuation do not hide an overlap.

use std::collections::HashMap;
use std::path::Path;

use super::Result;
use crate::eval::{problem_texts, Benchmark};
use crate::finetune::rng::Fnv64;

/// The n-gram length phi-1 used.
pub const NGRAM: usize = 13;

/// The n-grams of the benchmarks' texts, each with the first problem it came from.
#[derive(Debug, Clone, Default)]
pub struct Decontaminator {
    grams: HashMap<u64, u32>,
    sources: Vec<String>,
    n: usize,
}

impl Decontaminator {
    /// HumanEval (164 prompts with canonical solutions) and MBPP (974 descriptions with code) from `data_dir`.
    pub fn from_benchmarks(data_dir: &Path) -> Result<Self> {
        let mut texts = problem_texts(Benchmark::HumanEval, data_dir)?;
        texts.extend(problem_texts(Benchmark::Mbpp, data_dir)?);
        Ok(Self::from_texts(texts, NGRAM))
    }

    /// An index of the `n`-grams of `(id, text)` pairs.
    pub fn from_texts(texts: impl IntoIterator<Item = (String, String)>, n: usize) -> Self {
        let mut index = Self { n: n.max(1), ..Self::default() };
        for (id, text) in texts {
            let source = index.sources.len() as u32;
            index.sources.push(id);
            for gram in ngram_hashes(&words(&text), index.n) {
                index.grams.entry(gram).or_insert(source);
            }
        }
        index
    }

    /// Distinct n-grams indexed.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// The id of a problem that `text` shares an n-gram with (`HumanEval/12`, `Mbpp/230`), if any.
    pub fn find(&self, text: &str) -> Option<&str> {
        ngram_hashes(&words(text), self.n)
            .find_map(|gram| self.grams.get(&gram))
            .and_then(|&source| self.sources.get(source as usize))
            .map(String::as_str)
    }
}

/// The benchmark part of a problem id: `HumanEval` for `HumanEval/12`.
pub fn benchmark_of(problem: &str) -> &str {
    problem.split('/').next().unwrap_or(problem)
}

/// Lowercased runs of letters, digits and underscores.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn ngram_hashes(words: &[String], n: usize) -> impl Iterator<Item = u64> + '_ {
    words.windows(n).map(|gram| {
        let mut hash = Fnv64::new();
        for word in gram {
            hash.write(word.as_bytes());
            hash.write(&[0x1f]);
        }
        hash.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_thirteen_gram_is_found_and_twelve_words_are_not() {
        let index = Decontaminator::from_texts(
            [("B/1".to_owned(), "one two three four five six seven eight nine ten eleven twelve thirteen".to_owned())],
            NGRAM,
        );
        assert_eq!(
            index.find("zero ONE two, three(four) five six seven eight nine ten eleven twelve thirteen!"),
            Some("B/1")
        );
        assert_eq!(index.find("one two three four five six seven eight nine ten eleven twelve"), None);
        assert_eq!(index.find("one two three four five six seven eight nine ten eleven twelve fourteen"), None);
        assert_eq!(benchmark_of("HumanEval/3"), "HumanEval");
    }

    #[test]
    fn the_bundled_benchmarks_are_indexed() {
        let index = Decontaminator::from_benchmarks(&crate::eval::default_data_dir()).unwrap();
        assert!(index.len() > 30_000, "{}", index.len());
        // HumanEval/0's docstring, reformatted.
        let sample = "def f(xs, t):\n    # Check if in given list of numbers, are any two numbers closer to each \
                      other than given threshold.\n    return False\n";
        assert_eq!(index.find(sample), Some("HumanEval/0"));
        assert_eq!(index.find("def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n"), None);
    }
}
