//! [`encode_pairs`]: preference pairs as `prompt + chosen` and `prompt + rejected` sequences, the way
//! TRL's DPO trainer builds them, many pairs in parallel.

use super::bad_rows::{bad, group, text_of, tokenizer_error};
use super::chunks::chunked;
use super::truncation::truncate_pair;
use super::{BadRow, Dropped, EncodeError, Field, Flat, OnBad, Reason, Tok};

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

/// Options of [`encode_pairs`] (truncation policy in `truncation.rs`).
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

/// Encode preference pairs: `prompt + chosen` and `prompt + rejected` per row, with the number of
/// prompt ids. See the `tokenize` module documentation for the rule and `truncation.rs` for the
/// truncation policy.
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
    let fitted = truncate_pair(
        &mut prompt,
        &mut responses,
        eos,
        opts.max_length,
        opts.max_prompt_length,
    );
    if let Err(detail) = fitted {
        return Ok(Err(bad(row, "prompt", Reason::PromptTooLong, detail)));
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
    use super::super::fixtures::{fields, not_a_string, rows, tok};
    use super::super::Problem;
    use super::*;

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
