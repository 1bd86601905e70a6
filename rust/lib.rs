//! guard's data layer in Rust: the pure core (no Python), plus the PyO3 binding in `py.rs`
//! behind the `python` feature. `cargo test` exercises the core without libpython; the
//! Python package loads the binding as `guard._rust`.
//!
//! - `tokenize`: a Hugging Face tokenizer.json, many texts or preference pairs at once (rayon);
//! - `dedup`: exact (prompt, response) dedup, first occurrence kept;
//! - `pack`: best-fit-decreasing into token budgets, and packed `position_ids` / `cu_seqlens`.

pub mod dedup;
pub mod pack;
pub mod tokenize;

#[cfg(feature = "python")]
mod py;
