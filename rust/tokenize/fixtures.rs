//! Test fixtures shared by the tokenize tests: a word-level tokenizer.json written here, and helpers
//! to build inputs and read results.

use super::{Field, Flat, Problem, Reason, Tok};

/// A word-level tokenizer: "<s>" 0, "</s>" 1, "<unk>" 2, then "a".."j" are 3..12; whitespace
/// splits words; the post-processor wraps one sequence as `<s> $A </s>`.
pub(super) fn tokenizer_json(unk: &str) -> String {
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

pub(super) fn tok() -> Tok {
    Tok::from_json(&tokenizer_json("<unk>")).unwrap()
}

pub(super) fn fields<'a>(texts: &[&'a str]) -> Vec<Field<'a>> {
    texts.iter().map(|&t| Ok(t)).collect()
}

pub(super) fn not_a_string() -> Field<'static> {
    Err(Problem {
        reason: Reason::NotAString,
        detail: "got int".into(),
    })
}

pub(super) fn rows(flat: &Flat) -> Vec<Vec<i32>> {
    (0..flat.rows()).map(|i| flat.row(i).to_vec()).collect()
}
