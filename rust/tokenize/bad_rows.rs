//! Bad rows: why a row cannot be used ([`Reason`], a stable string), which row and field it was
//! ([`BadRow`]), what to do about it ([`OnBad`]), and the errors an encode call returns.

use std::fmt;

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

/// Bad rows grouped by reason, each list ascending; only reasons that occurred, in [`Reason`] order.
pub type Dropped = Vec<(Reason, Vec<usize>)>;

pub(super) fn bad(row: usize, field: &'static str, reason: Reason, detail: String) -> BadRow {
    BadRow {
        row,
        field,
        reason,
        detail,
    }
}

/// The text of a field, or the bad row it makes.
pub(super) fn text_of<'a>(
    field: &Field<'a>,
    row: usize,
    name: &'static str,
) -> Result<&'a str, BadRow> {
    match field {
        Ok(text) => Ok(text),
        Err(p) => Err(bad(row, name, p.reason, p.detail.clone())),
    }
}

pub(super) fn tokenizer_error(
    row: usize,
    field: &'static str,
    e: impl fmt::Display,
) -> EncodeError {
    EncodeError::Tokenizer {
        row,
        field,
        message: e.to_string(),
    }
}

/// Group bad rows by reason.
pub(super) fn group(bad_rows: &[BadRow]) -> Dropped {
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
