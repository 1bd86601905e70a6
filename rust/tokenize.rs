//! Tokenization with a Hugging Face `tokenizer.json`, many texts at once.
//!
//! Ids are those of the `tokenizers` crate, the same code the Python `tokenizers` package wraps, so
//! `encode(text, add_special_tokens)` here equals `Tokenizer.from_file(path).encode(text,
//! add_special_tokens).ids` there. Work is spread with rayon over chunks of [`CHUNK`] rows; each
//! text is encoded by the crate's sequential `encode_fast` (the crate's own batch parallelism is never
//! called). Results are flat: the ids of all rows back to back (`i32`, what numpy and torch index
//! with) and `offsets` with `n + 1` entries, row `i` being `ids[offsets[i]..offsets[i + 1]]`.
//!
//! Preference pairs are tokenized the way TRL's DPO trainer does it: the prompt once, with the
//! special tokens of the post-processor (BOS and the like) when `add_special_tokens`; each response
//! without special tokens; a sequence is `prompt ids + response ids (+ eos_token_id when given)`.
//! Truncation, in this order:
//!
//! 1. with `max_prompt_length`, a longer prompt keeps its LAST `max_prompt_length` tokens (the end of
//!    a conversation matters most; a leading BOS may be cut with the rest);
//! 2. with `max_length`, a sequence longer than `max_length` loses tokens from the end of its
//!    response (the EOS appended from `eos_token_id` goes first);
//! 3. if not even one response token fits after the prompt, the row is bad: "prompt longer than the
//!    budget".
//!
//! Texts (`encode_texts`) with `max_length` are truncated the way the Python package truncates with
//! `enable_truncation(max_length)`: the text's own tokens are cut from the end so that they and the
//! special tokens fit, and the special tokens are kept.
//!
//! A bad row is never dropped silently. Its [`Reason`] is one of a few stable strings; with
//! [`OnBad::Raise`] the first bad row is an error naming its index, field and reason, with
//! [`OnBad::Skip`] bad rows are left out and reported by reason next to the kept row indices.

use rayon::prelude::*;
use std::fmt;
use std::path::Path;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

/// Rows encoded per rayon task: coarse, so scheduling is noise next to tokenization.
pub const CHUNK: usize = 1024;

/// Why a row cannot be used. [`Reason::as_str`] gives the stable string reported to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The field holds something other than a string (found by the binding).
    NotAString,
    /// The string cannot be encoded as UTF-8, e.g. a lone surrogate (found by the binding).
    InvalidUtf8,
    /// A text to encode is empty or has no tokens of its own (only special tokens).
    EmptyText,
    /// A chosen or rejected response is empty or has no tokens.
    EmptyResponse,
    /// After `max_prompt_length`, the prompt leaves no room for a response token in `max_length`.
    PromptTooLong,
}

impl Reason {
    /// The stable string naming this reason (keys of the `dropped` report).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAString => "not a string",
            Reason::InvalidUtf8 => "invalid UTF-8",
            Reason::EmptyText => "empty text",
            Reason::EmptyResponse => "empty response",
            Reason::PromptTooLong => "prompt longer than the budget",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an input field is not usable text, as the caller (the binding) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    /// Free-form detail for the error message, e.g. "got int".
    pub detail: String,
}

/// One input field: its text, or the problem that keeps it from being text.
pub type Field<'a> = Result<&'a str, Problem>;

/// A bad row: which row, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub row: usize,
    pub field: &'static str,
    pub reason: Reason,
    pub detail: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}: {}: {}", self.row, self.field, self.reason)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// What to do with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBad {
    /// Fail on the first bad row (lowest index).
    Raise,
    /// Leave bad rows out and report them.
    Skip,
}

/// Why an encode call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A bad row under [`OnBad::Raise`]: the first one.
    Row(BadRow),
    /// The tokenizer itself failed on a row (a broken tokenizer, e.g. WordPiece without its unknown
    /// token). Raised under either policy: it is not a property of the data.
    Tokenizer {
        row: usize,
        field: &'static str,
        message: String,
    },
    /// The arguments cannot work (lengths differ, a limit too small, an unknown token id).
    Invalid(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Row(bad) => bad.fmt(f),
            EncodeError::Tokenizer {
                row,
                field,
                message,
            } => write!(f, "row {row}: {field}: the tokenizer failed: {message}"),
            EncodeError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A loaded `tokenizer.json`.
///
/// The file's own truncation and padding settings are switched off on load: guard truncates by the
/// policy stated in this module, and never pads ids (batching pads later, with a pad id of the
/// caller's choosing).
#[derive(Clone, Debug)]
pub struct Tok {
    inner: tokenizers::Tokenizer,
    /// Special tokens the post-processor adds around one sequence (BOS, EOS, CLS, SEP, ...).
    added_single: usize,
}

impl Tok {
    /// Load a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| format!("cannot load tokenizer {}: {e}", path.display()))?;
        Self::new(inner)
    }

    /// Load a tokenizer from the JSON text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| format!("cannot parse tokenizer JSON: {e}"))?;
        Self::new(inner)
    }

    fn new(mut inner: tokenizers::Tokenizer) -> Result<Self, String> {
        inner
            .with_truncation(None)
            .map_err(|e| format!("cannot switch truncation off: {e}"))?;
        inner.with_padding(None);
        // Ids travel as i32 (numpy / torch indices): refuse a vocabulary that does not fit.
        if let Some(&max_id) = inner.get_vocab(true).values().max() {
            if max_id > i32::MAX as u32 {
                return Err(format!("token id {max_id} does not fit in int32"));
            }
        }
        let added_single = inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        Ok(Tok {
            inner,
            added_single,
        })
    }

    /// Vocabulary size, with or without the added tokens (like `Tokenizer.get_vocab_size`).
    pub fn vocab_size(&self, with_added_tokens: bool) -> usize {
        self.inner.get_vocab_size(with_added_tokens)
    }

    /// The id of a token string, if it is in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, if there is one.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// How many special tokens the post-processor adds to one sequence.
    pub fn num_special_tokens(&self) -> usize {
        self.added_single
    }

    /// The ids of one text, as the Python package's `encode(text, add_special_tokens).ids`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// This tokenizer with the crate's own truncation set to `max_length` (it then stops tokenizing
    /// once the limit is reached).
    fn truncating(&self, max_length: usize) -> Result<Self, String> {
        let mut copy = self.clone();
        copy.inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| e.to_string())?;
        Ok(copy)
    }
}

/// Sequences back to back: row `i` is `ids[offsets[i]..offsets[i + 1]]`; `offsets` has `rows + 1`
/// entries and starts at 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flat {
    pub ids: Vec<i32>,
    pub offsets: Vec<i64>,
}

impl Flat {
    fn with_rows(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Flat {
            ids: Vec::new(),
            offsets,
        }
    }

    fn push_row(&mut self, parts: &[&[u32]]) {
        for part in parts {
            self.ids.extend(part.iter().map(|&id| id as i32));
        }
        self.offsets.push(self.ids.len() as i64);
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The ids of row `i`.
    pub fn row(&self, i: usize) -> &[i32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Append the rows of `other` after these.
    fn append(&mut self, other: Flat) {
        let base = self.ids.len() as i64;
        self.ids.extend_from_slice(&other.ids);
        self.offsets
            .extend(other.offsets.iter().skip(1).map(|&o| o + base));
    }
}

/// Bad rows grouped by reason, each list ascending; only reasons that occurred, in [`Reason`] order.
pub type Dropped = Vec<(Reason, Vec<usize>)>;

/// The result of [`encode_texts`]: row `i` of `seqs` is input row `kept[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTexts {
    pub seqs: Flat,
    pub kept: Vec<usize>,
    pub dropped: Dropped,
}

/// The result of [`encode_pairs`]: row `i` of `chosen` and of `rejected` is input row `kept[i]`; the
/// first `*_prompt_lengths[i]` ids of each sequence are the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPairs {
    pub chosen: Flat,
    pub rejected: Flat,
    pub chosen_prompt_lengths: Vec<i64>,
    pub rejected_prompt_lengths: Vec<i64>,
    pub kept: Vec<usize>,
    pub dropped: Dropped,
}

/// Options of [`encode_texts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextOptions {
    /// At most this many ids per text, special tokens included (truncated like the Python package).
    pub max_length: Option<usize>,
    pub add_special_tokens: bool,
    pub on_bad: OnBad,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            max_length: None,
            add_special_tokens: true,
            on_bad: OnBad::Raise,
        }
    }
}

/// Options of [`encode_pairs`] (truncation policy in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOptions {
    /// At most this many ids per sequence (prompt + response + EOS).
    pub max_length: Option<usize>,
    /// At most this many prompt ids: a longer prompt keeps its last ones.
    pub max_prompt_length: Option<usize>,
    /// Encode the prompt with the post-processor's special tokens.
    pub add_special_tokens: bool,
    /// Appended to every response before truncation.
    pub eos_token_id: Option<u32>,
    pub on_bad: OnBad,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            max_length: Some(1024),
            max_prompt_length: None,
            add_special_tokens: true,
            eos_token_id: None,
            on_bad: OnBad::Raise,
        }
    }
}

fn bad(row: usize, field: &'static str, reason: Reason, detail: String) -> BadRow {
    BadRow {
        row,
        field,
        reason,
        detail,
    }
}

/// The text of a field, or the bad row it makes.
fn text_of<'a>(field: &Field<'a>, row: usize, name: &'static str) -> Result<&'a str, BadRow> {
    match field {
        Ok(text) => Ok(text),
        Err(p) => Err(bad(row, name, p.reason, p.detail.clone())),
    }
}

fn tokenizer_error(row: usize, field: &'static str, e: impl fmt::Display) -> EncodeError {
    EncodeError::Tokenizer {
        row,
        field,
        message: e.to_string(),
    }
}

/// Group bad rows by reason.
fn group(bad_rows: &[BadRow]) -> Dropped {
    let mut dropped: Dropped = Vec::new();
    for b in bad_rows {
        match dropped.iter_mut().find(|(r, _)| *r == b.reason) {
            Some((_, rows)) => rows.push(b.row),
            None => dropped.push((b.reason, vec![b.row])),
        }
    }
    dropped.sort_by_key(|(r, _)| *r);
    dropped
}

/// Run `work` over chunks of `n` rows in parallel; chunk results come back in row order, and an
/// error is the one of the earliest chunk that failed (chunks stop at their first failure, so it is
/// the failure with the lowest row).
fn chunked<T: Send>(
    n: usize,
    work: impl Fn(std::ops::Range<usize>) -> Result<T, EncodeError> + Sync,
) -> Result<Vec<T>, EncodeError> {
    let starts: Vec<usize> = (0..n).step_by(CHUNK).collect();
    let results: Vec<Result<T, EncodeError>> = starts
        .into_par_iter()
        .map(|start| work(start..(start + CHUNK).min(n)))
        .collect();
    results.into_iter().collect()
}

/// Encode `texts` (one id sequence per text). See the module documentation for truncation and bad rows.
pub fn encode_texts(
    tok: &Tok,
    texts: &[Field<'_>],
    opts: &TextOptions,
) -> Result<EncodedTexts, EncodeError> {
    let special = if opts.add_special_tokens {
        tok.added_single
    } else {
        0
    };
    let truncating;
    let tok = match opts.max_length {
        Some(max_length) if max_length <= special => {
            return Err(EncodeError::Invalid(format!(
                "max_length {max_length} leaves no room for text: the tokenizer adds {special} special tokens"
            )))
        }
        Some(max_length) => {
            truncating = tok.truncating(max_length).map_err(EncodeError::Invalid)?;
            &truncating
        }
        None => tok,
    };

    struct Chunk {
        seqs: Flat,
        kept: Vec<usize>,
        bad: Vec<BadRow>,
    }
    let chunks = chunked(texts.len(), |rows| {
        let mut out = Chunk {
            seqs: Flat::with_rows(rows.len()),
            kept: Vec::with_capacity(rows.len()),
            bad: Vec::new(),
        };
        for row in rows {
            match encode_text_row(tok, opts.add_special_tokens, special, row, &texts[row])? {
                Ok(encoding) => {
                    out.seqs.push_row(&[encoding.get_ids()]);
                    out.kept.push(row);
                }
                Err(b) if opts.on_bad == OnBad::Raise => return Err(EncodeError::Row(b)),
                Err(b) => out.bad.push(b),
            }
        }
        Ok(out)
    })?;

    let mut seqs = Flat::with_rows(0);
    let mut kept = Vec::with_capacity(texts.len());
    let mut bad_rows = Vec::new();
    for c in chunks {
        seqs.append(c.seqs);
        kept.extend(c.kept);
        bad_rows.extend(c.bad);
    }
    Ok(EncodedTexts {
        seqs,
        kept,
        dropped: group(&bad_rows),
    })
}

/// Encode one text. Outer error: the tokenizer failed. Inner error: the row is bad.
fn encode_text_row(
    tok: &Tok,
    add_special_tokens: bool,
    special: usize,
    row: usize,
    field: &Field<'_>,
) -> Result<Result<tokenizers::Encoding, BadRow>, EncodeError> {
    let text = match text_of(field, row, "text") {
        Ok("") => return Ok(Err(bad(row, "text", Reason::EmptyText, String::new()))),
        Ok(text) => text,
        Err(b) => return Ok(Err(b)),
    };
    let encoding = tok
        .inner
        .encode_fast(text, add_special_tokens)
        .map_err(|e| tokenizer_error(row, "text", e))?;
    if encoding.len() <= special {
        let detail = "no tokens besides special tokens".to_string();
        return Ok(Err(bad(row, "text", Reason::EmptyText, detail)));
    }
    Ok(Ok(encoding))
}

/// Encode preference pairs: `prompt + chosen` and `prompt + rejected` per row, with the number of
/// prompt ids. See the module documentation for the exact rule and the truncation policy.
pub fn encode_pairs(
    tok: &Tok,
    prompts: &[Field<'_>],
    chosen: &[Field<'_>],
    rejected: &[Field<'_>],
    opts: &PairOptions,
) -> Result<EncodedPairs, EncodeError> {
    let n = prompts.len();
    if chosen.len() != n || rejected.len() != n {
        return Err(EncodeError::Invalid(format!(
            "prompts, chosen and rejected must have the same length, got {n}, {} and {}",
            chosen.len(),
            rejected.len()
        )));
    }
    for (name, limit) in [
        ("max_length", opts.max_length),
        ("max_prompt_length", opts.max_prompt_length),
    ] {
        if limit == Some(0) {
            return Err(EncodeError::Invalid(format!("{name} must be at least 1")));
        }
    }
    if let Some(eos) = opts.eos_token_id {
        if tok.id_to_token(eos).is_none() {
            return Err(EncodeError::Invalid(format!(
                "eos_token_id {eos} is not in the vocabulary"
            )));
        }
    }
    let eos: Vec<u32> = opts.eos_token_id.into_iter().collect();

    struct Chunk {
        chosen: Flat,
        rejected: Flat,
        prompt_lengths: Vec<i64>,
        kept: Vec<usize>,
        bad: Vec<BadRow>,
    }
    let chunks = chunked(n, |rows| {
        let mut out = Chunk {
            chosen: Flat::with_rows(rows.len()),
            rejected: Flat::with_rows(rows.len()),
            prompt_lengths: Vec::with_capacity(rows.len()),
            kept: Vec::with_capacity(rows.len()),
            bad: Vec::new(),
        };
        for row in rows {
            match encode_pair_row(
                tok,
                opts,
                &eos,
                row,
                [&prompts[row], &chosen[row], &rejected[row]],
            )? {
                Ok(ids) => {
                    out.chosen.push_row(&[&ids.prompt, &ids.chosen]);
                    out.rejected.push_row(&[&ids.prompt, &ids.rejected]);
                    out.prompt_lengths.push(ids.prompt.len() as i64);
                    out.kept.push(row);
                }
                Err(b) if opts.on_bad == OnBad::Raise => return Err(EncodeError::Row(b)),
                Err(b) => out.bad.push(b),
            }
        }
        Ok(out)
    })?;

    let mut result = EncodedPairs {
        chosen: Flat::with_rows(0),
        rejected: Flat::with_rows(0),
        chosen_prompt_lengths: Vec::with_capacity(n),
        rejected_prompt_lengths: Vec::new(),
        kept: Vec::with_capacity(n),
        dropped: Vec::new(),
    };
    let mut bad_rows = Vec::new();
    for c in chunks {
        result.chosen.append(c.chosen);
        result.rejected.append(c.rejected);
        result.chosen_prompt_lengths.extend(c.prompt_lengths);
        result.kept.extend(c.kept);
        bad_rows.extend(c.bad);
    }
    // Both sequences of a row share the prompt; the two arrays are kept apart for callers whose
    // chat templates make them differ.
    result.rejected_prompt_lengths = result.chosen_prompt_lengths.clone();
    result.dropped = group(&bad_rows);
    Ok(result)
}

/// The ids of one usable pair: the prompt (already cut to `max_prompt_length`) and the two
/// responses (EOS appended, cut to the budget).
struct PairIds {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
}

/// Encode one pair. Outer error: the tokenizer failed. Inner error: the row is bad.
fn encode_pair_row(
    tok: &Tok,
    opts: &PairOptions,
    eos: &[u32],
    row: usize,
    fields: [&Field<'_>; 3],
) -> Result<Result<PairIds, BadRow>, EncodeError> {
    const NAMES: [&str; 3] = ["prompt", "chosen", "rejected"];
    let mut texts = [""; 3];
    for (i, field) in fields.iter().enumerate() {
        match text_of(field, row, NAMES[i]) {
            Ok(text) => texts[i] = text,
            Err(b) => return Ok(Err(b)),
        }
    }
    for i in 1..3 {
        if texts[i].is_empty() {
            return Ok(Err(bad(
                row,
                NAMES[i],
                Reason::EmptyResponse,
                String::new(),
            )));
        }
    }
    let encode = |i: usize, specials: bool| -> Result<Vec<u32>, EncodeError> {
        tok.inner
            .encode_fast(texts[i], specials)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| tokenizer_error(row, NAMES[i], e))
    };
    let mut prompt = encode(0, opts.add_special_tokens)?;
    let mut responses = [encode(1, false)?, encode(2, false)?];
    for (i, ids) in responses.iter().enumerate() {
        if ids.is_empty() {
            return Ok(Err(bad(
                row,
                NAMES[i + 1],
                Reason::EmptyResponse,
                "no tokens".into(),
            )));
        }
    }
    if let Some(m) = opts.max_prompt_length {
        if prompt.len() > m {
            prompt.drain(..prompt.len() - m);
        }
    }
    let budget = match opts.max_length {
        Some(m) if prompt.len() >= m => {
            return Ok(Err(bad(
                row,
                "prompt",
                Reason::PromptTooLong,
                format!("{} prompt tokens, max_length {m}", prompt.len()),
            )))
        }
        Some(m) => m - prompt.len(),
        None => usize::MAX,
    };
    for ids in responses.iter_mut() {
        ids.extend_from_slice(eos);
        ids.truncate(budget);
    }
    let [chosen, rejected] = responses;
    Ok(Ok(PairIds {
        prompt,
        chosen,
        rejected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer: "<s>" 0, "</s>" 1, "<unk>" 2, then "a".."j" are 3..12; whitespace
    /// splits words; the post-processor wraps one sequence as `<s> $A </s>`.
    fn tokenizer_json(unk: &str) -> String {
        let words: Vec<String> = "abcdefghij"
            .chars()
            .enumerate()
            .map(|(i, c)| format!("\"{c}\": {}", i + 3))
            .collect();
        let special = |id: u32, content: &str| {
            format!(
                r#"{{"id": {id}, "content": "{content}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
            )
        };
        format!(
            r#"{{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{}, {}, {}],
  "normalizer": null,
  "pre_tokenizer": {{"type": "Whitespace"}},
  "post_processor": {{
    "type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "<s>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "</s>", "type_id": 0}}}}],
    "pair": [{{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}],
    "special_tokens": {{
      "<s>": {{"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
      "</s>": {{"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
    }}
  }},
  "decoder": null,
  "model": {{"type": "WordLevel", "vocab": {{"<s>": 0, "</s>": 1, "<unk>": 2, {}}}, "unk_token": "{unk}"}}
}}"#,
            special(0, "<s>"),
            special(1, "</s>"),
            special(2, "<unk>"),
            words.join(", ")
        )
    }

    fn tok() -> Tok {
        Tok::from_json(&tokenizer_json("<unk>")).unwrap()
    }

    fn fields<'a>(texts: &[&'a str]) -> Vec<Field<'a>> {
        texts.iter().map(|&t| Ok(t)).collect()
    }

    fn not_a_string() -> Field<'static> {
        Err(Problem {
            reason: Reason::NotAString,
            detail: "got int".into(),
        })
    }

    fn rows(flat: &Flat) -> Vec<Vec<i32>> {
        (0..flat.rows()).map(|i| flat.row(i).to_vec()).collect()
    }

    #[test]
    fn loads_and_encodes_like_the_file_says() {
        let tok = tok();
        assert_eq!(tok.vocab_size(true), 13);
        assert_eq!(tok.num_special_tokens(), 2);
        assert_eq!(tok.token_to_id("c"), Some(5));
        assert_eq!(tok.token_to_id("zz"), None);
        assert_eq!(tok.encode("a b  c", true).unwrap(), vec![0, 3, 4, 5, 1]);
        assert_eq!(tok.encode("a zz", false).unwrap(), vec![3, 2]);
        assert!(Tok::from_json("{").is_err());
        assert!(Tok::from_file("/nonexistent/tokenizer.json")
            .unwrap_err()
            .contains("/nonexistent/tokenizer.json"));
    }

    #[test]
    fn texts_are_flat_and_in_order_across_chunks() {
        let tok = tok();
        let words = ["a", "b c", "d e f", "g h i j", "j"];
        let texts: Vec<&str> = (0..3 * CHUNK + 5).map(|i| words[i % 5]).collect();
        let out = encode_texts(&tok, &fields(&texts), &TextOptions::default()).unwrap();
        assert_eq!(out.kept, (0..texts.len()).collect::<Vec<_>>());
        assert!(out.dropped.is_empty());
        assert_eq!(out.seqs.rows(), texts.len());
        for (i, text) in texts.iter().enumerate() {
            let expected: Vec<i32> = tok
                .encode(text, true)
                .unwrap()
                .into_iter()
                .map(|id| id as i32)
                .collect();
            assert_eq!(out.seqs.row(i), &expected[..], "row {i}");
        }
        assert_eq!(
            *out.seqs.offsets.last().unwrap() as usize,
            out.seqs.ids.len()
        );
    }

    #[test]
    fn text_truncation_keeps_special_tokens() {
        let tok = tok();
        let opts = TextOptions {
            max_length: Some(4),
            ..TextOptions::default()
        };
        let out = encode_texts(&tok, &fields(&["a b c d e", "a"]), &opts).unwrap();
        assert_eq!(rows(&out.seqs), vec![vec![0, 3, 4, 1], vec![0, 3, 1]]);
        let plain = TextOptions {
            max_length: Some(2),
            add_special_tokens: false,
            ..TextOptions::default()
        };
        let out = encode_texts(&tok, &fields(&["a b c d e"]), &plain).unwrap();
        assert_eq!(rows(&out.seqs), vec![vec![3, 4]]);
        let too_small = TextOptions {
            max_length: Some(2),
            ..TextOptions::default()
        };
        let err = encode_texts(&tok, &fields(&["a"]), &too_small).unwrap_err();
        assert!(err.to_string().contains("adds 2 special tokens"), "{err}");
    }

    #[test]
    fn bad_texts_raise_the_first_or_are_reported() {
        let tok = tok();
        let mut texts = fields(&["a", "", "b", "   ", "c"]);
        texts[2] = not_a_string();
        let err = encode_texts(&tok, &texts, &TextOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "row 1: text: empty text");
        let skip = TextOptions {
            on_bad: OnBad::Skip,
            ..TextOptions::default()
        };
        let out = encode_texts(&tok, &texts, &skip).unwrap();
        assert_eq!(out.kept, vec![0, 4]);
        assert_eq!(
            out.dropped,
            vec![
                (Reason::NotAString, vec![2]),
                (Reason::EmptyText, vec![1, 3])
            ]
        );
        assert_eq!(rows(&out.seqs), vec![vec![0, 3, 1], vec![0, 5, 1]]);
    }

    #[test]
    fn first_bad_row_wins_across_chunks() {
        let tok = tok();
        let mut texts = fields(&vec!["a b"; 3 * CHUNK]);
        texts[2 * CHUNK + 1] = not_a_string();
        texts[CHUNK + 3] = Ok("");
        let err = encode_texts(&tok, &texts, &TextOptions::default()).unwrap_err();
        assert_eq!(
            err,
            EncodeError::Row(BadRow {
                row: CHUNK + 3,
                field: "text",
                reason: Reason::EmptyText,
                detail: String::new()
            })
        );
    }

    #[test]
    fn tokenizer_failures_are_raised_even_when_skipping() {
        // WordLevel whose unknown token is not in the vocabulary fails on an unknown word.
        let tok = Tok::from_json(&tokenizer_json("<missing>")).unwrap();
        let skip = TextOptions {
            on_bad: OnBad::Skip,
            ..TextOptions::default()
        };
        let err = encode_texts(&tok, &fields(&["a", "zz"]), &skip).unwrap_err();
        assert!(
            matches!(
                err,
                EncodeError::Tokenizer {
                    row: 1,
                    field: "text",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("row 1: text: the tokenizer failed"));
    }

    #[test]
    fn pairs_are_prompt_then_response() {
        let tok = tok();
        let opts = PairOptions::default();
        let out = encode_pairs(
            &tok,
            &fields(&["a b", ""]),
            &fields(&["c", "d e"]),
            &fields(&["f g", "h"]),
            &opts,
        )
        .unwrap();
        assert_eq!(
            rows(&out.chosen),
            vec![vec![0, 3, 4, 1, 5], vec![0, 1, 6, 7]]
        );
        assert_eq!(
            rows(&out.rejected),
            vec![vec![0, 3, 4, 1, 8, 9], vec![0, 1, 10]]
        );
        assert_eq!(out.chosen_prompt_lengths, vec![4, 2]);
        assert_eq!(out.rejected_prompt_lengths, vec![4, 2]);
        assert_eq!(out.kept, vec![0, 1]);

        let with_eos = PairOptions {
            eos_token_id: Some(1),
            add_special_tokens: false,
            ..opts
        };
        let out = encode_pairs(
            &tok,
            &fields(&["a"]),
            &fields(&["b"]),
            &fields(&["c d"]),
            &with_eos,
        )
        .unwrap();
        assert_eq!(rows(&out.chosen), vec![vec![3, 4, 1]]);
        assert_eq!(rows(&out.rejected), vec![vec![3, 5, 6, 1]]);
        assert_eq!(out.chosen_prompt_lengths, vec![1]);
        let unknown_eos = PairOptions {
            eos_token_id: Some(99),
            ..opts
        };
        let err = encode_pairs(&tok, &[], &[], &[], &unknown_eos).unwrap_err();
        assert!(err.to_string().contains("eos_token_id 99"));
    }

    #[test]
    fn pair_truncation_policy() {
        let tok = tok();
        let one = |prompt: &'static str, response: &'static str, opts: &PairOptions| {
            encode_pairs(
                &tok,
                &fields(&[prompt]),
                &fields(&[response]),
                &fields(&[response]),
                opts,
            )
        };
        // max_prompt_length keeps the end of the prompt (here the BOS and "a" go).
        let opts = PairOptions {
            max_length: Some(100),
            max_prompt_length: Some(3),
            ..PairOptions::default()
        };
        let out = one("a b c", "d", &opts).unwrap();
        assert_eq!(rows(&out.chosen), vec![vec![4, 5, 1, 6]]);
        assert_eq!(out.chosen_prompt_lengths, vec![3]);
        // The response is cut from its end; the EOS goes first.
        let opts = PairOptions {
            max_length: Some(5),
            eos_token_id: Some(1),
            ..PairOptions::default()
        };
        let out = one("a", "b c d", &opts).unwrap();
        assert_eq!(rows(&out.chosen), vec![vec![0, 3, 1, 4, 5]]);
        // One response token must fit.
        let opts = PairOptions {
            max_length: Some(4),
            ..PairOptions::default()
        };
        assert_eq!(
            rows(&one("a", "c d", &opts).unwrap().chosen),
            vec![vec![0, 3, 1, 5]]
        );
        let err = one("a b c", "d", &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 0: prompt: prompt longer than the budget (5 prompt tokens, max_length 4)"
        );
        // Without max_length nothing is cut.
        let opts = PairOptions {
            max_length: None,
            ..PairOptions::default()
        };
        assert_eq!(
            one("a", "b c d e f g h i j", &opts)
                .unwrap()
                .chosen
                .ids
                .len(),
            12
        );
    }

    #[test]
    fn bad_pairs_by_reason() {
        let tok = tok();
        let prompts = vec![Ok("a"), not_a_string(), Ok("a b c d e"), Ok("a"), Ok("b")];
        let chosen = fields(&["b", "b", "b", "", "c"]);
        let mut rejected = fields(&["c", "c", "c", "d", "  "]);
        rejected[0] = Err(Problem {
            reason: Reason::InvalidUtf8,
            detail: "surrogates not allowed".into(),
        });
        let opts = PairOptions {
            max_length: Some(6),
            ..PairOptions::default()
        };
        let err = encode_pairs(&tok, &prompts, &chosen, &rejected, &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 0: rejected: invalid UTF-8 (surrogates not allowed)"
        );
        let skip = PairOptions {
            on_bad: OnBad::Skip,
            ..opts
        };
        let out = encode_pairs(&tok, &prompts, &chosen, &rejected, &skip).unwrap();
        assert!(out.kept.is_empty());
        assert_eq!(
            out.dropped,
            vec![
                (Reason::NotAString, vec![1]),
                (Reason::InvalidUtf8, vec![0]),
                (Reason::EmptyResponse, vec![3, 4]),
                (Reason::PromptTooLong, vec![2]),
            ]
        );
        assert_eq!(out.chosen.rows(), 0);
        assert_eq!(out.chosen.offsets, vec![0]);
        let err = encode_pairs(&tok, &prompts[..1], &chosen, &rejected, &skip).unwrap_err();
        assert!(matches!(err, EncodeError::Invalid(_)));
    }
}
