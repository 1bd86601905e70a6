//! [`Tok`]: a loaded `tokenizer.json`, its vocabulary, and the ids of one text.

use std::path::Path;

/// A loaded `tokenizer.json`.
///
/// The file's own truncation and padding settings are switched off on load: guard truncates by the
/// policy of `truncation.rs`, and never pads ids (batching pads later, with a pad id of the caller's
/// choosing).
#[derive(Clone, Debug)]
pub struct Tok {
    pub(super) inner: tokenizers::Tokenizer,
    /// Special tokens the post-processor adds around one sequence (BOS, EOS, CLS, SEP, ...).
    pub(super) added_single: usize,
    /// `known[id]`: the id has a token (added tokens included). Ids past the end have none.
    known: Vec<bool>,
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
        let vocab = inner.get_vocab(true);
        let mut known = Vec::new();
        if let Some(&max_id) = vocab.values().max() {
            if max_id > i32::MAX as u32 {
                return Err(format!("token id {max_id} does not fit in int32"));
            }
            known = vec![false; max_id as usize + 1];
            for &id in vocab.values() {
                known[id as usize] = true;
            }
        }
        let added_single = inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        Ok(Tok {
            inner,
            added_single,
            known,
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

    /// Whether `id` has a token (what `id_to_token` answers, without building the string).
    pub fn is_token_id(&self, id: i64) -> bool {
        usize::try_from(id).is_ok_and(|i| self.known.get(i).copied().unwrap_or(false))
    }

    /// One past the largest id with a token: the vocabulary size, unless the file leaves holes.
    pub fn id_bound(&self) -> usize {
        self.known.len()
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
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::tok;
    use super::*;

    #[test]
    fn loads_and_encodes_like_the_file_says() {
        let tok = tok();
        assert_eq!(tok.vocab_size(true), 13);
        assert_eq!(tok.num_special_tokens(), 2);
        assert_eq!(tok.token_to_id("c"), Some(5));
        assert_eq!(tok.token_to_id("zz"), None);
        assert_eq!(tok.encode("a b  c", true).unwrap(), vec![0, 3, 4, 5, 1]);
        assert_eq!(tok.encode("a zz", false).unwrap(), vec![3, 2]);
        assert_eq!(tok.id_bound(), 13);
        for id in [-1, 13, 1 << 40] {
            assert!(!tok.is_token_id(id), "{id}");
        }
        assert!((0..13).all(|id| tok.is_token_id(id)));
        assert!(Tok::from_json("{").is_err());
        assert!(Tok::from_file("/nonexistent/tokenizer.json")
            .unwrap_err()
            .contains("/nonexistent/tokenizer.json"));
    }
}
