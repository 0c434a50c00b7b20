//! Duplicate detection within the generated set and against existing dataset files.
//!
//! - **Exact**: the text with whitespace runs collapsed, hashed.
//! - **Near**: MinHash (Broder 1997) over shingles of 5 code tokens (identifiers, numbers and single punctuation
//!   characters), 128 permutations `(a·x + b) mod (2^61 − 1)` seeded from a fixed constant, and locality-sensitive
//!   hashing with 32 bands of 4 rows (as datasketch's `MinHashLSH` does, with its band sizes picked for recall): a
//!   pair with Jaccard similarity 0.8 shares a band with probability > 0.9999, one with 0.5 with 0.87. Candidates
//!   that share a band are then compared on their whole signatures, and a sample is a near duplicate when the
//!   estimated similarity is at least the threshold. Signatures are kept as 32-bit values: 512 bytes per sample.

use std::collections::{HashMap, HashSet};

use crate::finetune::rng::{Fnv64, SplitMix64};

pub const NUM_PERM: usize = 128;
const BANDS: usize = 32;
const ROWS: usize = NUM_PERM / BANDS;
/// Tokens per shingle.
const SHINGLE: usize = 5;
const MERSENNE_61: u64 = (1 << 61) - 1;
/// Seeds the permutations: fixed, so signatures mean the same in every run.
const PERMUTATION_SEED: u64 = 0x5eed_d0c5_0000_0001;

/// What deduplication says about a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DedupVerdict {
    /// Neither; `closest` is the highest estimated similarity to a candidate (0 without candidates).
    Unique {
        closest: f64,
    },
    Exact,
    Near {
        similarity: f64,
    },
}

/// A sample's hashes: computed once, checked, then inserted if the sample is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    exact: u64,
    signature: Vec<u32>,
}

/// The kept samples' fingerprints.
#[derive(Debug, Clone)]
pub struct DedupIndex {
    threshold: f64,
    a: Vec<u64>,
    b: Vec<u64>,
    exact: HashSet<u64>,
    bands: Vec<HashMap<u64, Vec<u32>>>,
    signatures: Vec<Vec<u32>>,
}

impl DedupIndex {
    /// An empty index; `threshold` is the estimated Jaccard similarity at which a sample is a near duplicate.
    pub fn new(threshold: f64) -> Self {
        let mut rng = SplitMix64::new(PERMUTATION_SEED);
        let mut coefficient = |low: u64| low + rng.next_u64() % (MERSENNE_61 - low);
        let a = (0..NUM_PERM).map(|_| coefficient(1)).collect();
        let b = (0..NUM_PERM).map(|_| coefficient(0)).collect();
        Self { threshold, a, b, exact: HashSet::new(), bands: vec![HashMap::new(); BANDS], signatures: Vec::new() }
    }

    /// Samples inserted.
    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    pub fn fingerprint(&self, text: &str) -> Fingerprint {
        let mut exact = Fnv64::new();
        for word in text.split_whitespace() {
            exact.write(word.as_bytes());
            exact.write(b" ");
        }
        let tokens = code_tokens(text);
        let shingles: Vec<u64> = if tokens.len() < SHINGLE {
            vec![hash_tokens(&tokens)]
        } else {
            tokens.windows(SHINGLE).map(hash_tokens).collect()
        };
        let signature = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(&a, &b)| {
                let min = shingles
                    .iter()
                    .map(|&x| {
                        ((u128::from(a) * u128::from(x % MERSENNE_61) + u128::from(b)) % u128::from(MERSENNE_61)) as u64
                    })
                    .min()
                    .unwrap_or(u64::MAX);
                min as u32
            })
            .collect();
        Fingerprint { exact: exact.finish(), signature }
    }

    pub fn check(&self, fingerprint: &Fingerprint) -> DedupVerdict {
        if self.exact.contains(&fingerprint.exact) {
            return DedupVerdict::Exact;
        }
        let mut seen = HashSet::new();
        let mut closest = 0.0f64;
        for (band, buckets) in self.bands.iter().enumerate() {
            let Some(candidates) = buckets.get(&band_key(&fingerprint.signature, band)) else { continue };
            for &candidate in candidates {
                if seen.insert(candidate) {
                    let similarity = similarity(&fingerprint.signature, &self.signatures[candidate as usize]);
                    closest = closest.max(similarity);
                }
            }
        }
        if closest >= self.threshold {
            DedupVerdict::Near { similarity: closest }
        } else {
            DedupVerdict::Unique { closest }
        }
    }

    pub fn insert(&mut self, fingerprint: Fingerprint) {
        let id = self.signatures.len() as u32;
        self.exact.insert(fingerprint.exact);
        for (band, buckets) in self.bands.iter_mut().enumerate() {
            buckets.entry(band_key(&fingerprint.signature, band)).or_default().push(id);
        }
        self.signatures.push(fingerprint.signature);
    }
}

/// The estimated Jaccard similarity of two signatures: the share of equal minimums.
fn similarity(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / NUM_PERM as f64
}

fn band_key(signature: &[u32], band: usize) -> u64 {
    let mut hash = Fnv64::new();
    for value in &signature[band * ROWS..(band + 1) * ROWS] {
        hash.write(&value.to_le_bytes());
    }
    hash.finish()
}

/// Identifiers and numbers, and every other non-space character on its own.
fn code_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        let in_word = c.is_alphanumeric() || c == '_';
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(start)) => {
                tokens.push(&text[start..i]);
                word_start = None;
            }
            _ => {}
        }
        if !in_word && !c.is_whitespace() {
            tokens.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(start) = word_start {
        tokens.push(&text[start..]);
    }
    tokens
}

fn hash_tokens(tokens: &[&str]) -> u64 {
    let mut hash = Fnv64::new();
    for token in tokens {
        hash.write(token.as_bytes());
        hash.write(&[0x1f]);
    }
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTION: &str = "def running_max(values: list[int]) -> list[int]:\n    \"\"\"The largest value seen so far, at \
                            each position.\n\n    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n    \"\"\"\n    \
                            result = []\n    best = None\n    for value in values:\n        best = value if best is None \
                            else max(best, value)\n        result.append(best)\n    return result\n";

    #[test]
    fn tokens_split_code() {
        assert_eq!(code_tokens("x_1 = f(a,b)"), ["x_1", "=", "f", "(", "a", ",", "b", ")"]);
    }

    #[test]
    fn exact_near_and_unique() {
        let mut index = DedupIndex::new(0.8);
        let first = index.fingerprint(FUNCTION);
        assert_eq!(index.check(&first), DedupVerdict::Unique { closest: 0.0 });
        index.insert(first);
        // The same text with other whitespace is an exact duplicate.
        let respaced = FUNCTION.replace("    ", "  ").replace('\n', "\n\n");
        assert_eq!(index.check(&index.fingerprint(&respaced)), DedupVerdict::Exact);
        // One comment more is a near duplicate.
        let commented = FUNCTION.replace("    return result\n", "    # done\n    return result\n");
        match index.check(&index.fingerprint(&commented)) {
            DedupVerdict::Near { similarity } => assert!(similarity >= 0.8, "{similarity}"),
            other => panic!("{other:?}"),
        }
        // Another function is unique.
        let other = "def gcd(a: int, b: int) -> int:\n    \"\"\"Greatest common divisor.\n\n    >>> gcd(12, 18)\n    \
                     6\n    \"\"\"\n    while b:\n        a, b = b, a % b\n    return a\n";
        match index.check(&index.fingerprint(other)) {
            DedupVerdict::Unique { closest } => assert!(closest < 0.5, "{closest}"),
            verdict => panic!("{verdict:?}"),
        }
    }

    #[test]
    fn estimated_similarity_tracks_jaccard() {
        // Two sets of 100 shingles sharing 60: Jaccard 60/140 ≈ 0.43.
        let index = DedupIndex::new(0.8);
        let text = |range: std::ops::Range<u32>| range.map(|i| format!("w{i} ")).collect::<String>();
        let (a, b) = (index.fingerprint(&text(0..104)), index.fingerprint(&text(40..144)));
        let estimate = similarity(&a.signature, &b.signature);
        assert!((estimate - 60.0 / 140.0).abs() < 0.12, "{estimate}");
    }
}
