//! guard's data layer in Rust: the pure core (no Python), plus the PyO3 binding in `py.rs`
//! behind the `python` feature. `cargo test` exercises the core without libpython; the
//! Python package loads the binding as `guard._rust`.

pub mod dedup;

#[cfg(feature = "python")]
mod py;
