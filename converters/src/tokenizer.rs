//! The vocabulary embedded in the GGUF, built the way llama.cpp's converter builds it for a GPT-2-style BPE
//! tokenizer (`_set_vocab_gpt2` and gguf-py's `SpecialVocab`), so that llama.cpp tokenizes exactly like
//! transformers.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{ConvertError, Result};

const TOKENIZER_FILE: &str = "tokenizer.json";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// The files of a tokenizer directory that are read.
pub(crate) const SOURCE_FILES: [&str; 3] = [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE];

/// Where a tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// A directory with `tokenizer.json` (and optionally `tokenizer_config.json`, `special_tokens_map.json`).
    Dir(PathBuf),
    /// A tokenizer.json given in memory (the binary bundles phi-1's).
    Bundled { tokenizer_json: &'static [u8], tokenizer_config_json: &'static [u8] },
}

/// Which tokenizer a conversion embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerOrigin {
    /// The checkpoint's own `tokenizer.json`, from this directory.
    Checkpoint(PathBuf),
    /// The tokenizer passed explicitly (`ConvertOptions::tokenizer`); a bundled one shows as `<bundled>`.
    Explicit(PathBuf),
    /// The fallback, because the checkpoint has none; the text says which.
    Fallback(String),
}

/// gguf-py's token types (`gguf.TokenType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum TokenType {
    Normal = 1,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
}

/// The special token kinds gguf-py looks for, in its order, with the GGUF key of each id.
const SPECIAL_TOKENS: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    // "seperator" is gguf's spelling of the key.
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// The tokenizer files, read but not yet interpreted.
pub(crate) struct TokenizerFiles {
    /// Named in errors: the tokenizer.json path, or a description of the bundled one.
    label: PathBuf,
    tokenizer_json: Cow<'static, [u8]>,
    tokenizer_config: Option<Value>,
    special_tokens_map: Option<Value>,
}

/// The vocabulary metadata for the GGUF.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pub(crate) tokens: Vec<String>,
    pub(crate) token_types: Vec<i32>,
    pub(crate) merges: Vec<String>,
    /// (GGUF key, id) in gguf-py's order.
    pub(crate) special_ids: Vec<(&'static str, u32)>,
    pub(crate) add_bos: bool,
    /// `add_{kind}_token` flags other than bos, in gguf-py's order. eos is always present (false by default, as
    /// in the reference GGUF); the others only when tokenizer_config.json sets them.
    pub(crate) add_flags: Vec<(String, bool)>,
    pub(crate) chat_template: Option<String>,
}

/// Picks the tokenizer for a checkpoint: an explicit one, else the checkpoint's, else the fallback.
pub(crate) fn resolve(
    checkpoint_dir: &Path,
    explicit: Option<&TokenizerSource>,
    fallback: Option<&TokenizerSource>,
) -> Result<(TokenizerFiles, TokenizerOrigin)> {
    if let Some(source) = explicit {
        let origin = match source {
            TokenizerSource::Dir(dir) => TokenizerOrigin::Explicit(dir.clone()),
            TokenizerSource::Bundled { .. } => TokenizerOrigin::Explicit(PathBuf::from("<bundled>")),
        };
        return Ok((read_source(source)?, origin));
    }
    if checkpoint_dir.join(TOKENIZER_FILE).is_file() {
        let files = read_source(&TokenizerSource::Dir(checkpoint_dir.to_path_buf()))?;
        return Ok((files, TokenizerOrigin::Checkpoint(checkpoint_dir.to_path_buf())));
    }
    match fallback {
        Some(source) => {
            let description = match source {
                TokenizerSource::Dir(dir) => format!("the tokenizer in {}", dir.display()),
                TokenizerSource::Bundled { .. } => "the bundled phi-1 tokenizer".to_owned(),
            };
            Ok((read_source(source)?, TokenizerOrigin::Fallback(description)))
        }
        None => Err(ConvertError::NoTokenizer { dir: checkpoint_dir.to_path_buf() }),
    }
}

fn read_source(source: &TokenizerSource) -> Result<TokenizerFiles> {
    match source {
        TokenizerSource::Dir(dir) => {
            let path = dir.join(TOKENIZER_FILE);
            let tokenizer_json =
                std::fs::read(&path).map_err(|e| ConvertError::io(&path, "cannot read tokenizer", e))?;
            Ok(TokenizerFiles {
                label: path,
                tokenizer_json: Cow::Owned(tokenizer_json),
                tokenizer_config: read_optional_json(&dir.join(TOKENIZER_CONFIG_FILE))?,
                special_tokens_map: read_optional_json(&dir.join(SPECIAL_TOKENS_MAP_FILE))?,
            })
        }
        TokenizerSource::Bundled { tokenizer_json, tokenizer_config_json } => {
            let label = PathBuf::from("<bundled tokenizer_config.json>");
            let tokenizer_config = serde_json::from_slice(tokenizer_config_json)
                .map_err(|source| ConvertError::Json { path: label, source })?;
            Ok(TokenizerFiles {
                label: PathBuf::from("<bundled tokenizer.json>"),
                tokenizer_json: Cow::Borrowed(tokenizer_json),
                tokenizer_config: Some(tokenizer_config),
                special_tokens_map: None,
            })
        }
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ConvertError::Json { path: path.to_path_buf(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConvertError::io(path, "cannot read file", e)),
    }
}

impl TokenizerFiles {
    /// Builds the GGUF vocabulary: `vocab_size` tokens (ids the tokenizer does not use become `[PAD{id}]`),
    /// their types, the merges, and the special token ids (looked up in the tokenizer files, then in the
    /// model's `config.json`).
    pub(crate) fn vocab(&self, vocab_size: usize, model_config: &Value) -> Result<Vocab> {
        let tokenizer = Tokenizer::from_bytes(&self.tokenizer_json)
            .map_err(|e| ConvertError::tokenizer(&self.label, format!("cannot load tokenizer: {e}")))?;
        let json: Value = serde_json::from_slice(&self.tokenizer_json)
            .map_err(|source| ConvertError::Json { path: self.label.clone(), source })?;
        let (tokens, token_types) = self.tokens(&tokenizer, vocab_size)?;
        let merges = self.merges(&json)?;
        let special_ids = self.special_ids(&tokenizer, vocab_size, model_config);
        let config_flag = |kind: &str| {
            self.tokenizer_config.as_ref().and_then(|c| c.get(format!("add_{kind}_token"))).and_then(Value::as_bool)
        };
        let add_flags = SPECIAL_TOKENS
            .iter()
            .filter(|(kind, _)| *kind != "bos")
            .filter_map(|(kind, _)| match (config_flag(kind), *kind) {
                (Some(flag), _) => Some((format!("tokenizer.ggml.add_{kind}_token"), flag)),
                (None, "eos") => Some(("tokenizer.ggml.add_eos_token".to_owned(), false)),
                (None, _) => None,
            })
            .collect();
        let chat_template = match self.tokenizer_config.as_ref().and_then(|c| c.get("chat_template")) {
            Some(Value::String(template)) => Some(template.clone()),
            Some(Value::Null) | None => None,
            Some(_) => {
                tracing::warn!("tokenizer_config.json has a list of named chat templates; not embedded");
                None
            }
        };
        Ok(Vocab {
            tokens,
            token_types,
            merges,
            special_ids,
            add_bos: config_flag("bos").unwrap_or(false),
            add_flags,
            chat_template,
        })
    }

    /// The token strings and types by id, as gguf-py's `get_vocab_base`.
    fn tokens(&self, tokenizer: &Tokenizer, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>)> {
        let vocab = tokenizer.get_vocab(true);
        if let Some(max_id) = vocab.values().copied().max() {
            if max_id as usize >= vocab_size {
                return Err(ConvertError::tokenizer(
                    &self.label,
                    format!("the tokenizer has token id {max_id} but the model's vocab_size is {vocab_size}"),
                ));
            }
        }
        let mut by_id: Vec<Option<&str>> = vec![None; vocab_size];
        // Deterministic choice when two strings share an id: the lexicographically smallest.
        let mut entries: Vec<(&String, &u32)> = vocab.iter().collect();
        entries.sort();
        for (token, &id) in entries.into_iter().rev() {
            by_id[id as usize] = Some(token);
        }
        let added = tokenizer.get_added_tokens_decoder();
        let mut tokens = Vec::with_capacity(vocab_size);
        let mut types = Vec::with_capacity(vocab_size);
        for (id, token) in by_id.into_iter().enumerate() {
            let Some(token) = token else {
                tokens.push(format!("[PAD{id}]"));
                types.push(TokenType::Unused as i32);
                continue;
            };
            match added.get(&(id as u32)).filter(|a| a.content == token) {
                None => {
                    tokens.push(token.to_owned());
                    types.push(TokenType::Normal as i32);
                }
                Some(added_token) => {
                    let mut text = token.to_owned();
                    if !added_token.normalized {
                        // gguf-py stores what the tokenizer makes of such a token: decode(encode(token)).
                        text = round_trip(tokenizer, token).unwrap_or(text);
                    }
                    if added_token.special || looks_special(&text) {
                        types.push(TokenType::Control as i32);
                    } else {
                        // Pre-normalize user-defined spaces (sentencepiece's ▁), as gguf-py does.
                        text = text.replace('\u{2581}', " ");
                        types.push(TokenType::UserDefined as i32);
                    }
                    tokens.push(text);
                }
            }
        }
        Ok((tokens, types))
    }

    /// The BPE merges as `"a b"` strings. Newer tokenizer.json files store pairs; gguf-py then writes a space
    /// inside a part as U+0120 so that the pair stays unambiguous.
    fn merges(&self, json: &Value) -> Result<Vec<String>> {
        let Some(merges) = json.get("model").and_then(|m| m.get("merges")) else {
            return Err(ConvertError::tokenizer(&self.label, "no model.merges: not a BPE tokenizer"));
        };
        let merges =
            merges.as_array().ok_or_else(|| ConvertError::tokenizer(&self.label, "model.merges is not a list"))?;
        merges
            .iter()
            .enumerate()
            .map(|(i, merge)| match merge {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(a), Some(b)) => Ok(format!("{} {}", encode_spaces(a), encode_spaces(b))),
                    _ => {
                        Err(ConvertError::tokenizer(&self.label, format!("model.merges[{i}] is not a pair of strings")))
                    }
                },
                _ => Err(ConvertError::tokenizer(
                    &self.label,
                    format!("model.merges[{i}] is neither \"a b\" nor [\"a\", \"b\"]"),
                )),
            })
            .collect()
    }

    /// Special token ids as gguf-py's `SpecialVocab`: each kind's token string from tokenizer_config.json
    /// (or special_tokens_map.json) resolved to its id; kinds still unknown then come from config.json's
    /// `{kind}_token_id`. Ids outside the vocabulary are skipped.
    fn special_ids(&self, tokenizer: &Tokenizer, vocab_size: usize, model_config: &Value) -> Vec<(&'static str, u32)> {
        let mut ids: Vec<(&'static str, u32)> = Vec::new();
        let set = |ids: &mut Vec<(&'static str, u32)>, key: &'static str, id: u32| {
            if (id as usize) < vocab_size && !ids.iter().any(|(k, _)| *k == key) {
                ids.push((key, id));
            } else if id as usize >= vocab_size {
                tracing::warn!(key, id, vocab_size, "special token id out of range; skipped");
            }
        };
        for (kind, key) in SPECIAL_TOKENS {
            let field = format!("{kind}_token");
            let text = [&self.tokenizer_config, &self.special_tokens_map]
                .into_iter()
                .flatten()
                .find_map(|file| token_text(file.get(&field)?));
            if let Some(id) = text.and_then(|text| tokenizer.token_to_id(text)) {
                set(&mut ids, key, id);
            }
        }
        for (kind, key) in SPECIAL_TOKENS {
            let id = model_config.get(format!("{kind}_token_id")).and_then(Value::as_u64);
            if let Some(id) = id.and_then(|id| u32::try_from(id).ok()) {
                set(&mut ids, key, id);
            }
        }
        ids
    }
}

/// A special token entry is a string or an `AddedToken` object with `content`.
fn token_text(entry: &Value) -> Option<&str> {
    match entry {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// decode(encode(token)) without special-token handling, as transformers does for gguf-py.
fn round_trip(tokenizer: &Tokenizer, token: &str) -> Option<String> {
    let encoding = tokenizer.encode(token, false).ok()?;
    let text = tokenizer.decode(encoding.get_ids(), false).ok()?;
    if text != token {
        tracing::debug!(token, decoded = text, "added token changes through encode/decode");
    }
    Some(text)
}

/// gguf-py's `does_token_look_special`: added tokens some models forget to mark special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

fn encode_spaces(part: &str) -> String {
    part.replace(' ', "\u{0120}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn special_looking_tokens() {
        assert!(looks_special("<|endoftext|>"));
        assert!(looks_special("<unused12>"));
        assert!(!looks_special("    "));
        assert!(!looks_special("<|partial"));
    }

    #[test]
    fn merge_pairs_encode_inner_spaces() {
        assert_eq!(encode_spaces("a b"), "a\u{0120}b");
        assert_eq!(encode_spaces("Ġt"), "Ġt");
    }
}
