//! Tokenization with a Hugging Face `tokenizer.json`, many texts at once, and decoding back to text.
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
//!
//! A bad row is never dropped silently. Its [`Reason`] is one of a few stable strings; with
//! [`OnBad::Raise`] the first bad row is an error naming its index, field and reason, with
//! [`OnBad::Skip`] bad rows are left out and reported by reason next to the kept row indices.
//!
//! One concern per file:
//! - `tokenizer.rs`: [`Tok`], loading a `tokenizer.json` and encoding one text;
//! - `bad_rows.rs`: why a row is bad ([`Reason`], [`BadRow`], [`OnBad`]) and the errors of a call;
//! - `flat.rs`: [`Flat`], rows of ids back to back;
//! - `chunks.rs`: [`CHUNK`] and the parallel, in-order walk over chunks of rows;
//! - `truncation.rs`: the truncation policy for texts and for pairs (stated there);
//! - `texts.rs`: [`encode_texts`]; `pairs.rs`: [`encode_pairs`];
//! - `decode.rs`: ids back to text, [`Tok::decode`] and [`decode_batch`];
//! - `fixtures.rs` (tests only): a small word-level tokenizer.json the tests share.

mod bad_rows;
mod chunks;
mod decode;
mod flat;
mod pairs;
mod texts;
mod tokenizer;
mod truncation;

#[cfg(test)]
mod fixtures;

pub use bad_rows::{BadRow, Dropped, EncodeError, Field, OnBad, Problem, Reason};
pub use chunks::CHUNK;
pub use decode::{decode_batch, DecodeError};
pub use flat::Flat;
pub use pairs::{encode_pairs, EncodedPairs, PairOptions};
pub use texts::{encode_texts, EncodedTexts, TextOptions};
pub use tokenizer::Tok;
