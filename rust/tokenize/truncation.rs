//! The truncation policy: how a text or a preference pair is cut to fit `max_length`.
//!
//! Texts (`encode_texts`) with `max_length` are truncated the way the Python package truncates with
//! `enable_truncation(max_length)`: the text's own tokens are cut from the end so that they and the
//! special tokens fit, and the special tokens are kept. A `max_length` that leaves no room beside the
//! special tokens is refused.
//!
//! Pairs (`encode_pairs`), in this order:
//!
//! 1. with `max_prompt_length`, a longer prompt keeps its LAST `max_prompt_length` tokens (the end of
//!    a conversation matters most; a leading BOS may be cut with the rest);
//! 2. with `max_length`, a sequence longer than `max_length` loses tokens from the end of its
//!    response (the EOS appended from `eos_token_id` goes first);
//! 3. if not even one response token fits after the prompt, the row is bad: "prompt longer than the
//!    budget".

use std::borrow::Cow;

use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use super::{EncodeError, Tok};

impl Tok {
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

/// The tokenizer that encodes texts under `max_length`: `tok` itself without a limit, else a copy
/// that truncates. `special` is the number of special tokens each text gets; a `max_length` that
/// leaves no room beside them is an error.
pub(super) fn text_tokenizer(
    tok: &Tok,
    max_length: Option<usize>,
    special: usize,
) -> Result<Cow<'_, Tok>, EncodeError> {
    match max_length {
        Some(max_length) if max_length <= special => Err(EncodeError::Invalid(format!(
            "max_length {max_length} leaves no room for text: the tokenizer adds {special} special tokens"
        ))),
        Some(max_length) => Ok(Cow::Owned(
            tok.truncating(max_length).map_err(EncodeError::Invalid)?,
        )),
        None => Ok(Cow::Borrowed(tok)),
    }
}

/// Cut one pair by the policy above: `prompt` to its last `max_prompt_length` ids, then each
/// response, with `eos` appended, to what `max_length` leaves after the prompt. An error is the
/// detail of a row that is bad for "prompt longer than the budget" (no response token fits).
pub(super) fn truncate_pair(
    prompt: &mut Vec<u32>,
    responses: &mut [Vec<u32>; 2],
    eos: &[u32],
    max_length: Option<usize>,
    max_prompt_length: Option<usize>,
) -> Result<(), String> {
    if let Some(m) = max_prompt_length {
        if prompt.len() > m {
            prompt.drain(..prompt.len() - m);
        }
    }
    let budget = match max_length {
        Some(m) if prompt.len() >= m => {
            return Err(format!("{} prompt tokens, max_length {m}", prompt.len()))
        }
        Some(m) => m - prompt.len(),
        None => usize::MAX,
    };
    for ids in responses.iter_mut() {
        ids.extend_from_slice(eos);
        ids.truncate(budget);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fields, rows, tok};
    use super::super::{encode_pairs, encode_texts, PairOptions, TextOptions};

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
}
