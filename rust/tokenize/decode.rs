//! Ids back to text: [`Tok::decode`] for one sequence, [`decode_batch`] for many (rayon over chunks
//! of [`CHUNK`](super::CHUNK) rows, results in row order).
//!
//! The text is the crate's `Tokenizer::decode`, the code behind the Python package's
//! `Tokenizer.decode(ids, skip_special_tokens)` and `decode_batch`, so the strings are the same. One
//! difference, on purpose: the crate skips an id that has no token without a word, which hides a
//! vocabulary mismatch or a stray pad value such as -100; here such an id is an error naming its row
//! (in a batch), its position and the vocabulary size. Ids arrive as `i64`, what numpy and torch
//! hold, so a negative one is reported rather than wrapped.

use std::fmt;

use super::chunks::chunked;
use super::Tok;

/// Why ids could not be decoded. `row` is the sequence's index in a batch (`None` for one sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// `ids[position]` has no token: negative, past the vocabulary, or a hole in it.
    UnknownId {
        row: Option<usize>,
        position: usize,
        id: i64,
        vocab_size: usize,
        id_bound: usize,
    },
    /// The tokenizer's decoder failed.
    Decoder { row: Option<usize>, message: String },
}

fn write_row(f: &mut fmt::Formatter<'_>, row: &Option<usize>) -> fmt::Result {
    match row {
        Some(row) => write!(f, "row {row}, "),
        None => Ok(()),
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownId {
                row,
                position,
                id,
                vocab_size,
                id_bound,
            } => {
                write_row(f, row)?;
                write!(f, "position {position}: id {id} ")?;
                let inside = usize::try_from(*id).is_ok_and(|i| i < *id_bound);
                if inside {
                    write!(f, "has no token in the vocabulary of size {vocab_size}")?;
                } else {
                    write!(f, "is out of range for the vocabulary of size {vocab_size}")?;
                }
                if *id_bound != *vocab_size {
                    write!(f, " (ids up to {})", id_bound.saturating_sub(1))?;
                }
                Ok(())
            }
            DecodeError::Decoder { row, message } => {
                write_row(f, row)?;
                write!(f, "the tokenizer failed to decode: {message}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl Tok {
    /// The text of `ids`, as the Python package's `decode(ids, skip_special_tokens)`; with
    /// `skip_special_tokens`, the special tokens (BOS, EOS, padding, ...) are left out.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, DecodeError> {
        self.decode_row(None, ids, skip_special_tokens)
    }

    fn decode_row(
        &self,
        row: Option<usize>,
        ids: &[i64],
        skip_special_tokens: bool,
    ) -> Result<String, DecodeError> {
        let mut known = Vec::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            if !self.is_token_id(id) {
                return Err(DecodeError::UnknownId {
                    row,
                    position,
                    id,
                    vocab_size: self.vocab_size(true),
                    id_bound: self.id_bound(),
                });
            }
            known.push(id as u32);
        }
        self.inner
            .decode(&known, skip_special_tokens)
            .map_err(|e| DecodeError::Decoder {
                row,
                message: e.to_string(),
            })
    }
}

/// The text of every sequence of `rows`, in order, as the Python package's `decode_batch`. An error
/// is the one of the lowest row that fails.
pub fn decode_batch(
    tok: &Tok,
    rows: &[&[i64]],
    skip_special_tokens: bool,
) -> Result<Vec<String>, DecodeError> {
    let chunks = chunked(rows.len(), |range| {
        range
            .map(|row| tok.decode_row(Some(row), rows[row], skip_special_tokens))
            .collect::<Result<Vec<String>, DecodeError>>()
    })?;
    Ok(chunks.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::tok;
    use super::super::CHUNK;
    use super::*;

    #[test]
    fn decodes_with_and_without_special_tokens() {
        let tok = tok();
        // The fixture has no decoder: the crate joins tokens with spaces.
        assert_eq!(tok.decode(&[0, 3, 4, 1], true).unwrap(), "a b");
        assert_eq!(tok.decode(&[0, 3, 4, 1], false).unwrap(), "<s> a b </s>");
        assert_eq!(tok.decode(&[2, 12], true).unwrap(), "j");
        assert_eq!(tok.decode(&[], true).unwrap(), "");
        assert_eq!(tok.decode(&[0, 1], true).unwrap(), "");
        let ids: Vec<i64> = tok
            .encode("c a b", true)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(tok.decode(&ids, true).unwrap(), "c a b");
    }

    #[test]
    fn unknown_ids_name_the_position_and_the_vocabulary() {
        let tok = tok();
        let err = tok.decode(&[3, 4, 13], true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "position 2: id 13 is out of range for the vocabulary of size 13"
        );
        let err = tok.decode(&[-100, 3], false).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownId {
                row: None,
                position: 0,
                id: -100,
                vocab_size: 13,
                id_bound: 13
            }
        );
        assert!(tok.decode(&[i64::MAX], true).is_err());
    }

    #[test]
    fn a_hole_in_the_vocabulary_is_named() {
        // "j" moved from id 12 to id 20 leaves ids 12..19 without a token.
        let json =
            super::super::fixtures::tokenizer_json("<unk>").replace(r#""j": 12"#, r#""j": 20"#);
        let tok = Tok::from_json(&json).unwrap();
        assert_eq!(tok.decode(&[3, 20], true).unwrap(), "a j");
        let err = tok.decode(&[3, 15], true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "position 1: id 15 has no token in the vocabulary of size 13 (ids up to 20)"
        );
    }

    #[test]
    fn batches_keep_row_order_across_chunks() {
        let tok = tok();
        let owned: Vec<Vec<i64>> = (0..2 * CHUNK + 7)
            .map(|i| {
                (0..(i % 5) as i64)
                    .map(|k| 3 + (i as i64 + k) % 10)
                    .collect()
            })
            .collect();
        let rows: Vec<&[i64]> = owned.iter().map(|r| r.as_slice()).collect();
        let texts = decode_batch(&tok, &rows, true).unwrap();
        assert_eq!(texts.len(), rows.len());
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(texts[i], tok.decode(row, true).unwrap(), "row {i}");
        }
        assert!(decode_batch(&tok, &[], true).unwrap().is_empty());
    }

    #[test]
    fn the_first_bad_row_of_a_batch_wins() {
        let tok = tok();
        let good = [3i64, 4];
        let bad_late = [3i64, 99];
        let bad_early = [5i64, 6, -1];
        let mut rows: Vec<&[i64]> = vec![&good; 3 * CHUNK];
        rows[2 * CHUNK + 1] = &bad_late;
        rows[CHUNK + 3] = &bad_early;
        let err = decode_batch(&tok, &rows, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "row {}, position 2: id -1 is out of range for the vocabulary of size 13",
                CHUNK + 3
            )
        );
    }
}
