//! [`encode_texts`]: one id sequence per text, many texts in parallel.

use super::bad_rows::{bad, group, text_of, tokenizer_error};
use super::chunks::chunked;
use super::truncation::text_tokenizer;
use super::{BadRow, Dropped, EncodeError, Field, Flat, OnBad, Reason, Tok};

/// The result of [`encode_texts`]: row `i` of `seqs` is input row `kept[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTexts {
    pub seqs: Flat,
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

/// Encode `texts` (one id sequence per text). Truncation as `truncation.rs` states it; bad rows as
/// the `tokenize` module documentation says.
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
    let tok = text_tokenizer(tok, opts.max_length, special)?;
    let tok: &Tok = &tok;

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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fields, not_a_string, rows, tok, tokenizer_json};
    use super::super::CHUNK;
    use super::*;

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
}
