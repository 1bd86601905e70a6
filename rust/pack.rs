//! Packing items into token budgets, and the positions of a packed row.
//!
//! [`pack`] is best-fit-decreasing: items are taken from the largest to the smallest (equal sizes in
//! index order), and each goes into the open batch whose room left is the smallest that still holds
//! it (among equals, the batch opened first), or into a new batch. Open batches live in an ordered
//! set keyed by (room left, batch number), so each item costs one O(log b) search: O(n log n) in all.
//! The output is deterministic: indices inside a batch ascending, batches ordered by their first index.
//!
//! A preference pair is one item whose cost is `chosen_len + rejected_len`, so both of its sequences
//! land in the same batch ([`pair_costs`]).
//!
//! [`packed_positions`] gives, for the sequences of one packed row, the `position_ids` that restart
//! at 0 for each sequence and the cumulative `cu_seqlens` that varlen attention kernels take.

use std::collections::BTreeSet;
use std::fmt;

/// Why packing was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// `max_tokens` is 0.
    ZeroBudget,
    /// An item costs more than the whole budget.
    TooLong {
        index: usize,
        cost: u64,
        max_tokens: u64,
    },
    /// A packed row holds more tokens than `cu_seqlens` (int32) can count.
    TooManyTokens { total: u64 },
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::ZeroBudget => write!(f, "max_tokens must be at least 1"),
            PackError::TooLong {
                index,
                cost,
                max_tokens,
            } => write!(
                f,
                "item {index} has {cost} tokens, more than max_tokens {max_tokens}"
            ),
            PackError::TooManyTokens { total } => write!(
                f,
                "a packed row of {total} tokens does not fit int32 cu_seqlens"
            ),
        }
    }
}

impl std::error::Error for PackError {}

/// The cost of each pair: its chosen and rejected lengths together.
pub fn pair_costs(chosen: &[u64], rejected: &[u64]) -> Vec<u64> {
    chosen.iter().zip(rejected).map(|(c, r)| c + r).collect()
}

/// Best-fit-decreasing packing of items of the given costs into batches of at most `max_tokens`.
///
/// Returns batches of item indices: every index exactly once, ascending within a batch, batches
/// ordered by their first index. An item that costs more than `max_tokens` is an error naming it
/// (the lowest such index). Items of cost 0 are packed like any other.
pub fn pack(costs: &[u64], max_tokens: u64) -> Result<Vec<Vec<usize>>, PackError> {
    if max_tokens == 0 {
        return Err(PackError::ZeroBudget);
    }
    if let Some((index, &cost)) = costs.iter().enumerate().find(|(_, &c)| c > max_tokens) {
        return Err(PackError::TooLong {
            index,
            cost,
            max_tokens,
        });
    }
    let mut order: Vec<usize> = (0..costs.len()).collect();
    // Largest first; equal costs by index, so the result never depends on the sort's stability.
    order.sort_unstable_by(|&a, &b| costs[b].cmp(&costs[a]).then(a.cmp(&b)));

    let mut batches: Vec<Vec<usize>> = Vec::new();
    // (room left, batch number) of every batch: the first entry at or above (cost, 0) is the best fit.
    let mut room: BTreeSet<(u64, usize)> = BTreeSet::new();
    for item in order {
        let cost = costs[item];
        match room.range((cost, 0)..).next().copied() {
            Some((left, batch)) => {
                room.remove(&(left, batch));
                room.insert((left - cost, batch));
                batches[batch].push(item);
            }
            None => {
                room.insert((max_tokens - cost, batches.len()));
                batches.push(vec![item]);
            }
        }
    }
    for batch in &mut batches {
        batch.sort_unstable();
    }
    batches.sort_unstable_by_key(|batch| batch[0]);
    Ok(batches)
}

/// `position_ids` (0, 1, ..., len - 1 for each sequence, concatenated) and `cu_seqlens` (`k + 1`
/// cumulative offsets starting at 0) for the `k` sequences of one packed row.
pub fn packed_positions(lengths: &[u64]) -> Result<(Vec<i64>, Vec<i32>), PackError> {
    let total: u64 = lengths.iter().sum();
    if total > i32::MAX as u64 {
        return Err(PackError::TooManyTokens { total });
    }
    let mut positions = Vec::with_capacity(total as usize);
    let mut cu_seqlens = Vec::with_capacity(lengths.len() + 1);
    cu_seqlens.push(0i32);
    for &len in lengths {
        positions.extend(0..len as i64);
        cu_seqlens.push(positions.len() as i32);
    }
    Ok((positions, cu_seqlens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_invariants(costs: &[u64], max_tokens: u64, batches: &[Vec<usize>]) {
        let mut seen = vec![0usize; costs.len()];
        for batch in batches {
            assert!(!batch.is_empty());
            assert!(
                batch.windows(2).all(|w| w[0] < w[1]),
                "not ascending: {batch:?}"
            );
            let total: u64 = batch.iter().map(|&i| costs[i]).sum();
            assert!(
                total <= max_tokens,
                "batch {batch:?} holds {total} > {max_tokens}"
            );
            for &i in batch {
                seen[i] += 1;
            }
        }
        assert!(
            seen.iter().all(|&s| s == 1),
            "an index is missing or repeated"
        );
        assert!(
            batches.windows(2).all(|w| w[0][0] < w[1][0]),
            "batches out of order"
        );
    }

    fn lower_bound(costs: &[u64], max_tokens: u64) -> usize {
        costs.iter().sum::<u64>().div_ceil(max_tokens) as usize
    }

    /// Log-normal lengths clamped to [lo, hi], from a small deterministic generator (Box–Muller).
    fn lognormal_lengths(n: usize, seed: u64, mu: f64, sigma: f64, lo: u64, hi: u64) -> Vec<u64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                ((mu + sigma * z).exp().round() as u64).clamp(lo, hi)
            })
            .collect()
    }

    #[test]
    fn best_fit_picks_the_tightest_batch() {
        // Decreasing: 6 opens batch A (room 4), 5 opens B (room 5), 4 goes to A (tightest that fits,
        // room 0), 3 goes to B (room 2), 2 goes to B (room 0), 1 opens C.
        let costs = [1, 2, 3, 4, 5, 6];
        let batches = pack(&costs, 10).unwrap();
        assert_eq!(batches, vec![vec![0], vec![1, 2, 4], vec![3, 5]]);
    }

    #[test]
    fn ties_are_broken_by_index() {
        let costs = [5, 5, 5, 5];
        assert_eq!(pack(&costs, 10).unwrap(), vec![vec![0, 1], vec![2, 3]]);
        // Two equally tight batches: the one opened first wins.
        let costs = [6, 6, 4];
        assert_eq!(pack(&costs, 10).unwrap(), vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn exact_fit_and_zero_costs() {
        assert_eq!(pack(&[10, 0, 10], 10).unwrap(), vec![vec![0, 1], vec![2]]);
        assert_eq!(pack(&[], 10).unwrap(), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn over_budget_names_the_item() {
        let err = pack(&[3, 11, 12], 10).unwrap_err();
        assert_eq!(
            err,
            PackError::TooLong {
                index: 1,
                cost: 11,
                max_tokens: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "item 1 has 11 tokens, more than max_tokens 10"
        );
        assert_eq!(pack(&[1], 0).unwrap_err(), PackError::ZeroBudget);
    }

    #[test]
    fn pairs_cost_both_sequences() {
        let costs = pair_costs(&[3, 4, 5], &[2, 6, 5]);
        assert_eq!(costs, vec![5, 10, 10]);
        let batches = pack(&costs, 10).unwrap();
        check_invariants(&costs, 10, &batches);
        assert_eq!(batches.len(), 3);
    }

    #[test]
    fn realistic_lengths_reach_the_lower_bound() {
        // Preference pairs: chosen and rejected each log-normal around 400 tokens, 50..2000.
        let chosen = lognormal_lengths(5000, 1, 6.0, 0.8, 50, 2000);
        let rejected = lognormal_lengths(5000, 2, 6.0, 0.8, 50, 2000);
        let costs = pair_costs(&chosen, &rejected);
        let batches = pack(&costs, 16384).unwrap();
        check_invariants(&costs, 16384, &batches);
        let bound = lower_bound(&costs, 16384);
        assert!(
            batches.len() as f64 <= bound as f64 / 0.98,
            "{} batches, lower bound {bound}",
            batches.len()
        );
    }

    #[test]
    fn positions_restart_per_sequence() {
        let (positions, cu) = packed_positions(&[3, 1, 0, 2]).unwrap();
        assert_eq!(positions, vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(cu, vec![0, 3, 4, 4, 6]);
        assert_eq!(packed_positions(&[]).unwrap(), (vec![], vec![0]));
        assert_eq!(
            packed_positions(&[1 << 31]).unwrap_err(),
            PackError::TooManyTokens { total: 1 << 31 }
        );
    }

    proptest! {
        #[test]
        fn invariants_hold(costs in prop::collection::vec(0u64..=100, 0..400), max_tokens in 100u64..300) {
            let batches = pack(&costs, max_tokens).unwrap();
            check_invariants(&costs, max_tokens, &batches);
            // Best fit only opens a batch for an item no open batch can hold, so at most one batch is
            // at most half full (the later one's first item would have fitted in the earlier one).
            let half_full = batches
                .iter()
                .filter(|b| 2 * b.iter().map(|&i| costs[i]).sum::<u64>() <= max_tokens)
                .count();
            prop_assert!(half_full <= 1, "{} batches at most half full", half_full);
            prop_assert_eq!(pack(&costs, max_tokens).unwrap(), batches);
        }

        #[test]
        fn pairs_stay_together(
            lengths in prop::collection::vec((1u64..=60, 1u64..=60), 0..300),
            max_tokens in 120u64..500,
        ) {
            let (chosen, rejected): (Vec<u64>, Vec<u64>) = lengths.into_iter().unzip();
            let costs = pair_costs(&chosen, &rejected);
            let batches = pack(&costs, max_tokens).unwrap();
            // Both sequences of every pair are in its batch: the budget holds counting both.
            for batch in &batches {
                let tokens: u64 = batch.iter().map(|&i| chosen[i] + rejected[i]).sum();
                prop_assert!(tokens <= max_tokens);
            }
            check_invariants(&costs, max_tokens, &batches);
        }

        #[test]
        fn lognormal_within_two_percent_of_bound(seed in 0u64..1000, n in 2000usize..6000) {
            let costs = lognormal_lengths(n, seed, 6.2, 0.9, 50, 2000);
            let batches = pack(&costs, 16384).unwrap();
            check_invariants(&costs, 16384, &batches);
            let bound = lower_bound(&costs, 16384);
            prop_assert!(batches.len() as f64 <= bound as f64 / 0.98, "{} batches, bound {}", batches.len(), bound);
        }

        #[test]
        fn positions_match_cumulative_sums(lengths in prop::collection::vec(0u64..50, 0..40)) {
            let (positions, cu) = packed_positions(&lengths).unwrap();
            prop_assert_eq!(cu.len(), lengths.len() + 1);
            for (k, &len) in lengths.iter().enumerate() {
                let (a, b) = (cu[k] as usize, cu[k + 1] as usize);
                prop_assert_eq!(b - a, len as usize);
                prop_assert!(positions[a..b].iter().enumerate().all(|(j, &p)| p == j as i64));
            }
            prop_assert_eq!(positions.len(), *cu.last().unwrap() as usize);
        }
    }
}
