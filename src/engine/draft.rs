//! Prompt-lookup drafting: guessing the next tokens from the tokens a generation already has, so that the model can
//! check several of them in one batched decode.
//!
//! Code repeats itself: identifiers, argument lists, a line like the one above. The latest few tokens (an n-gram)
//! usually occurred before, in the prompt or in the output so far, and what followed them then is a good guess for
//! what follows now. The worker decodes the last token together with such a draft, takes the model's own greedy
//! choice at every position, and keeps the draft up to the first position where the two differ, plus the model's
//! token there. The output is therefore token for token what plain greedy decoding gives; only the number of
//! decodes changes. This module is the guessing half: pure, no llama.cpp.
//!
//! Drafting only pays when drafts are accepted: a rejected draft makes the step's decode larger for nothing. The
//! [`Drafter`] adapts the draft length to the acceptance it sees, and pauses drafting for a growing number of steps
//! after drafts that were rejected outright, so text with no repetition costs almost nothing.

use serde::{Deserialize, Serialize};

use super::TokenId;

/// How a generation guesses tokens ahead for the model to verify. Only greedy generations without a repeat penalty
/// draft; sampled ones decode token by token whatever this says (see [`SamplingParams`](super::SamplingParams)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Drafting {
    /// One token per decode.
    #[default]
    Off,
    /// Prompt lookup: continue the latest n-gram the way it continued before.
    Lookup(LookupOptions),
}

/// Prompt-lookup drafting's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupOptions {
    /// The longest n-gram looked up: the last `ngram` tokens first, then shorter suffixes down to `min_ngram`.
    pub ngram: u32,
    /// The shortest n-gram looked up. A single token recurs everywhere, text without repetition included, and what
    /// followed it before is a poor guess; two tokens in a row recur mostly where the text repeats.
    pub min_ngram: u32,
    /// Tokens drafted per step at most (the draft length adapts below this).
    pub max_draft: u32,
    /// More tokens to draft from, after the generation's own prompt and output: text the output is likely to
    /// repeat without it being in the prompt (say, the code after an editor's cursor). Never decoded.
    pub reference: Vec<TokenId>,
}

impl Default for LookupOptions {
    fn default() -> Self {
        Self { ngram: 3, min_ngram: 2, max_draft: 8, reference: Vec::new() }
    }
}

/// The most an n-gram or a draft may be: longer n-grams find nothing more, and a draft must fit one batch.
pub(crate) const MAX_NGRAM: u32 = 16;
pub(crate) const MAX_DRAFT: u32 = 64;

impl LookupOptions {
    /// Checks the sizes against their bounds and the reference tokens against a vocabulary of `n_vocab`.
    pub fn validate(&self, n_vocab: i32) -> Result<(), String> {
        if !(1..=MAX_NGRAM).contains(&self.ngram) {
            return Err(format!("the n-gram size must be between 1 and {MAX_NGRAM}, got {}", self.ngram));
        }
        if !(1..=self.ngram).contains(&self.min_ngram) {
            return Err(format!(
                "the shortest n-gram must be between 1 and the longest ({}), got {}",
                self.ngram, self.min_ngram
            ));
        }
        if !(1..=MAX_DRAFT).contains(&self.max_draft) {
            return Err(format!("the draft length must be between 1 and {MAX_DRAFT}, got {}", self.max_draft));
        }
        match self.reference.iter().find(|&&t| t < 0 || t >= n_vocab) {
            Some(token) => Err(format!("reference token {token} is outside the vocabulary (0..{n_vocab})")),
            None => Ok(()),
        }
    }
}

/// The longest pause, in steps, after drafts that were rejected outright.
const MAX_PAUSE: u32 = 32;

/// One generation's drafting state: what to draft from, and how long a draft its acceptance so far deserves.
#[derive(Debug)]
pub(crate) struct Drafter {
    ngram: usize,
    min_ngram: usize,
    max_draft: usize,
    reference: Vec<TokenId>,
    /// The length of the next draft: half the maximum at first, doubles after a draft accepted whole, falls to one
    /// more than was accepted after a draft rejected part-way.
    length: usize,
    /// Steps left without drafting.
    pause: u32,
    /// Drafts rejected outright in a row; each one doubles the pause after it.
    misses: u32,
}

impl Drafter {
    pub(crate) fn new(options: LookupOptions) -> Self {
        let max_draft = options.max_draft.clamp(1, MAX_DRAFT) as usize;
        let ngram = options.ngram.clamp(1, MAX_NGRAM);
        Self {
            ngram: ngram as usize,
            min_ngram: options.min_ngram.clamp(1, ngram) as usize,
            max_draft,
            reference: options.reference,
            length: max_draft.div_ceil(2),
            pause: 0,
            misses: 0,
        }
    }

    /// The draft for the tokens after `tokens` (a generation's prompt and output), at most `limit` tokens long;
    /// empty when nothing matches or drafting pauses.
    pub(crate) fn draft(&mut self, tokens: &[TokenId], limit: usize) -> Vec<TokenId> {
        if self.pause > 0 {
            self.pause -= 1;
            return Vec::new();
        }
        let length = self.length.min(limit);
        if length == 0 {
            return Vec::new();
        }
        for n in (self.min_ngram..=self.ngram).rev() {
            let draft = lookup(tokens, n, length);
            if !draft.is_empty() {
                return draft;
            }
            let draft = lookup_in(&self.reference, tokens, n, length);
            if !draft.is_empty() {
                return draft;
            }
        }
        Vec::new()
    }

    /// Learns from a verified draft: `accepted` of its `drafted` tokens matched the model's.
    pub(crate) fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        if accepted == 0 {
            self.length = 1;
            self.misses += 1;
            // 1, 3, 7, 15, 31, 32, 32, … steps without drafting.
            self.pause = ((1u32 << self.misses.min(6)) - 1).min(MAX_PAUSE);
            return;
        }
        self.misses = 0;
        self.length = if accepted >= drafted { (drafted * 2).min(self.max_draft) } else { accepted + 1 };
    }
}

/// Prompt lookup in a generation's own tokens: finds the latest earlier occurrence of the last `n` tokens and
/// returns (at most `max_len` of) the tokens that followed it. When that continuation runs into the end of
/// `tokens` (the n-gram repeats with a period shorter than the draft), it is extended periodically: a loop is
/// predicted to go on looping.
pub(crate) fn lookup(tokens: &[TokenId], n: usize, max_len: usize) -> Vec<TokenId> {
    let len = tokens.len();
    if n == 0 || max_len == 0 || len <= n {
        return Vec::new();
    }
    let suffix = &tokens[len - n..];
    // Occurrences that end before the last token, latest first: the recent past predicts best.
    let Some(start) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) else {
        return Vec::new();
    };
    let continuation = start + n;
    let mut draft = Vec::with_capacity(max_len);
    for i in continuation..continuation + max_len {
        let token = if i < len { tokens[i] } else { draft[i - len] };
        draft.push(token);
    }
    draft
}

/// Prompt lookup in other tokens: the continuation of the latest occurrence in `reference` of the last `n` of
/// `tokens`, at most `max_len` tokens.
fn lookup_in(reference: &[TokenId], tokens: &[TokenId], n: usize, max_len: usize) -> Vec<TokenId> {
    if n == 0 || max_len == 0 || tokens.len() < n || reference.len() <= n {
        return Vec::new();
    }
    let suffix = &tokens[tokens.len() - n..];
    let Some(start) = (0..reference.len() - n).rev().find(|&i| &reference[i..i + n] == suffix) else {
        return Vec::new();
    };
    let continuation = &reference[start + n..];
    continuation[..continuation.len().min(max_len)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drafter(ngram: u32, max_draft: u32) -> Drafter {
        Drafter::new(LookupOptions { ngram, min_ngram: 1, max_draft, reference: Vec::new() })
    }

    #[test]
    fn lookup_continues_the_latest_earlier_occurrence() {
        // "1 2" occurs at 0 (then 3) and at 4 (then 9); the latest one wins.
        let tokens = [1, 2, 3, 4, 1, 2, 9, 8, 7, 1, 2];
        assert_eq!(lookup(&tokens, 2, 3), [9, 8, 7]);
        assert_eq!(lookup(&tokens, 2, 1), [9]);
        // A longer n-gram narrows it down: "7 1 2" occurred nowhere before.
        assert_eq!(lookup(&tokens, 3, 3), Vec::<TokenId>::new());
    }

    #[test]
    fn lookup_finds_nothing_without_an_earlier_occurrence() {
        assert!(lookup(&[1, 2, 3, 4], 1, 4).is_empty());
        assert!(lookup(&[5], 1, 4).is_empty());
        assert!(lookup(&[], 1, 4).is_empty());
        assert!(lookup(&[1, 1], 2, 4).is_empty(), "the suffix itself is no earlier occurrence");
        assert!(lookup(&[1, 2, 1], 1, 0).is_empty());
    }

    #[test]
    fn a_loop_is_predicted_to_go_on() {
        // Period 3: the continuation of the latest "b c" is "a b c" and runs into the end; it goes on periodically.
        let tokens = [7, 1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(lookup(&tokens, 2, 7), [3, 1, 2, 3, 1, 2, 3]);
        // A token repeated: period 1.
        assert_eq!(lookup(&[4, 5, 5], 1, 4), [5, 5, 5, 5]);
    }

    #[test]
    fn the_longest_ngram_that_matches_wins() {
        let mut drafter = drafter(3, 8);
        // "2 3" was followed by 4 once and by 6 (latest); "1 2 3" only by 4.
        let tokens = [1, 2, 3, 4, 0, 2, 3, 6, 5, 1, 2, 3];
        assert_eq!(drafter.draft(&tokens, 8), [4, 0, 2, 3]);
        let mut drafter = self::drafter(2, 8);
        assert_eq!(drafter.draft(&tokens, 8), [6, 5, 1, 2]);
    }

    #[test]
    fn single_tokens_are_not_looked_up_by_default() {
        let mut drafter = Drafter::new(LookupOptions::default());
        assert!(drafter.draft(&[1, 2, 3, 1], 8).is_empty(), "only \"1\" occurred before");
        assert_eq!(drafter.draft(&[1, 2, 3, 1, 2], 8), [3, 1, 2, 3]);
    }

    #[test]
    fn the_reference_is_searched_after_the_own_tokens_of_the_same_length() {
        let options = LookupOptions { ngram: 2, min_ngram: 1, max_draft: 6, reference: vec![8, 1, 2, 5, 6] };
        // No 2-gram of its own: the reference's "1 2" continues 5 6 (cut at its end).
        assert_eq!(Drafter::new(options.clone()).draft(&[9, 1, 2], 3), [5, 6]);
        // A 2-gram of its own comes first.
        assert_eq!(Drafter::new(options.clone()).draft(&[1, 2, 7, 1, 2], 3), [7, 1, 2]);
        // A longer match in the reference beats a shorter one of its own.
        assert_eq!(Drafter::new(options).draft(&[2, 4, 1, 2], 3), [5, 6]);
    }

    #[test]
    fn drafts_respect_the_limit() {
        let mut drafter = drafter(1, 8);
        assert_eq!(drafter.draft(&[1, 2, 3, 4, 1], 2), [2, 3]);
        assert!(drafter.draft(&[1, 2, 3, 4, 1], 0).is_empty());
    }

    #[test]
    fn the_draft_length_follows_acceptance() {
        let tokens: Vec<TokenId> = (0..20).chain(0..1).collect();
        let mut drafter = drafter(1, 8);
        assert_eq!(drafter.draft(&tokens, 100).len(), 4, "the first draft is half as long as allowed");
        drafter.record(4, 1);
        assert_eq!(drafter.draft(&tokens, 100).len(), 2, "one more than was accepted");
        drafter.record(2, 2);
        assert_eq!(drafter.draft(&tokens, 100).len(), 4, "doubles after a full acceptance");
        drafter.record(4, 4);
        assert_eq!(drafter.draft(&tokens, 100).len(), 8, "up to the maximum");
        drafter.record(8, 8);
        assert_eq!(drafter.draft(&tokens, 100).len(), 8);
    }

    #[test]
    fn outright_rejections_pause_drafting_for_longer_and_longer() {
        let tokens = [1, 2, 1];
        let mut drafter = drafter(1, 4);
        let mut pauses = Vec::new();
        let mut draft = drafter.draft(&tokens, 100);
        for _ in 0..6 {
            assert!(!draft.is_empty());
            drafter.record(draft.len(), 0);
            let mut paused = 0;
            loop {
                draft = drafter.draft(&tokens, 100);
                if !draft.is_empty() {
                    break;
                }
                paused += 1;
            }
            pauses.push(paused);
        }
        assert_eq!(pauses, [1, 3, 7, 15, 31, MAX_PAUSE]);
        assert_eq!(draft.len(), 1, "a draft after a rejection is one token long");

        // One accepted token ends the streak: the next rejection pauses for one step again.
        drafter.record(1, 1);
        assert_eq!(drafter.draft(&tokens, 100).len(), 2);
        drafter.record(2, 0);
        assert!(drafter.draft(&tokens, 100).is_empty());
        assert!(!drafter.draft(&tokens, 100).is_empty());
    }

    #[test]
    fn options_are_validated() {
        let valid = LookupOptions::default();
        assert!(valid.validate(100).is_ok());
        for bad in [
            LookupOptions { ngram: 0, ..valid.clone() },
            LookupOptions { ngram: MAX_NGRAM + 1, ..valid.clone() },
            LookupOptions { min_ngram: 0, ..valid.clone() },
            LookupOptions { ngram: 2, min_ngram: 3, ..valid.clone() },
            LookupOptions { max_draft: 0, ..valid.clone() },
            LookupOptions { max_draft: MAX_DRAFT + 1, ..valid.clone() },
            LookupOptions { reference: vec![3, 100], ..valid.clone() },
            LookupOptions { reference: vec![-1], ..valid.clone() },
        ] {
            assert!(bad.validate(100).is_err(), "{bad:?}");
        }
    }
}
