//! Rows in parallel: rayon over coarse chunks of [`CHUNK`] rows, results back in row order.

use rayon::prelude::*;

/// Rows encoded per rayon task: coarse, so scheduling is noise next to tokenization.
pub const CHUNK: usize = 1024;

/// Run `work` over chunks of `n` rows in parallel; chunk results come back in row order, and an
/// error is the one of the earliest chunk that failed (chunks stop at their first failure, so it is
/// the failure with the lowest row).
pub(super) fn chunked<T: Send, E: Send>(
    n: usize,
    work: impl Fn(std::ops::Range<usize>) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let starts: Vec<usize> = (0..n).step_by(CHUNK).collect();
    let results: Vec<Result<T, E>> = starts
        .into_par_iter()
        .map(|start| work(start..(start + CHUNK).min(n)))
        .collect();
    results.into_iter().collect()
}
