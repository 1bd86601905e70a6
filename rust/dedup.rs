//! Exact dedup of (prompt, response) pairs: the first occurrence of each pair is kept, in input order.
//!
//! Rows are hashed with xxh3-128 over `prompt \0 response` in parallel (rayon, coarse chunks); equal
//! hashes are then confirmed byte for byte on the (prompt, response) fields, so a hash collision can
//! never merge two different pairs. The result is exact, not probabilistic.

use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;
use xxhash_rust::xxh3::Xxh3;

/// Rows hashed per rayon task: large enough that scheduling costs nothing next to hashing.
const HASH_CHUNK: usize = 4096;

/// Why a dedup call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupError {
    /// `prompts` and `responses` hold different numbers of rows.
    LengthMismatch { prompts: usize, responses: usize },
}

impl fmt::Display for DedupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DedupError::LengthMismatch { prompts, responses } => write!(
                f,
                "prompts and responses must have the same length, got {prompts} prompts and {responses} responses"
            ),
        }
    }
}

impl std::error::Error for DedupError {}

/// xxh3-128 of `prompt \0 response`: the key dedup groups rows by.
pub fn pair_hash(prompt: &[u8], response: &[u8]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(prompt);
    hasher.update(&[0]);
    hasher.update(response);
    hasher.digest128()
}

/// Indices (ascending) of the rows whose (prompt, response) pair has not been seen in an earlier row.
pub fn dedup_pairs<P, R>(prompts: &[P], responses: &[R]) -> Result<Vec<usize>, DedupError>
where
    P: AsRef<[u8]> + Sync,
    R: AsRef<[u8]> + Sync,
{
    dedup_pairs_with(prompts, responses, pair_hash)
}

/// `dedup_pairs` with the hash function as a parameter, so tests can force collisions.
pub fn dedup_pairs_with<P, R, H>(
    prompts: &[P],
    responses: &[R],
    hash: H,
) -> Result<Vec<usize>, DedupError>
where
    P: AsRef<[u8]> + Sync,
    R: AsRef<[u8]> + Sync,
    H: Fn(&[u8], &[u8]) -> u128 + Sync,
{
    if prompts.len() != responses.len() {
        return Err(DedupError::LengthMismatch {
            prompts: prompts.len(),
            responses: responses.len(),
        });
    }
    let hashes: Vec<u128> = prompts
        .par_iter()
        .zip(responses.par_iter())
        .with_min_len(HASH_CHUNK)
        .map(|(p, r)| hash(p.as_ref(), r.as_ref()))
        .collect();

    let same_pair = |a: usize, b: usize| {
        prompts[a].as_ref() == prompts[b].as_ref() && responses[a].as_ref() == responses[b].as_ref()
    };
    // hash -> first row kept with that hash; rows that share a hash but differ in bytes go to `collided`.
    let mut first: HashMap<u128, usize> = HashMap::with_capacity(hashes.len());
    let mut collided: HashMap<u128, Vec<usize>> = HashMap::new();
    let mut keep = Vec::with_capacity(hashes.len());
    for (row, &h) in hashes.iter().enumerate() {
        match first.get(&h) {
            None => {
                first.insert(h, row);
                keep.push(row);
            }
            Some(&seen) if same_pair(seen, row) => {}
            Some(_) => {
                let others = collided.entry(h).or_default();
                if !others.iter().any(|&seen| same_pair(seen, row)) {
                    others.push(row);
                    keep.push(row);
                }
            }
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// First-occurrence dedup by the obvious method, to check the fast one against.
    fn reference(prompts: &[String], responses: &[String]) -> Vec<usize> {
        let mut seen = std::collections::HashSet::new();
        (0..prompts.len())
            .filter(|&i| seen.insert((prompts[i].clone(), responses[i].clone())))
            .collect()
    }

    #[test]
    fn keeps_first_occurrence_in_order() {
        let prompts = ["a", "b", "a", "a", "c", "b"];
        let responses = ["x", "x", "x", "y", "x", "x"];
        assert_eq!(dedup_pairs(&prompts, &responses).unwrap(), vec![0, 1, 3, 4]);
    }

    #[test]
    fn separator_keeps_fields_apart() {
        // The concatenations "ab" + "" and "a" + "b" must not be taken for one pair.
        let prompts = ["ab", "a", ""];
        let responses = ["", "b", "ab"];
        assert_eq!(dedup_pairs(&prompts, &responses).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn collisions_are_resolved_by_bytes() {
        // A hash that maps everything to one value: only byte comparison can tell rows apart.
        let prompts = ["p", "q", "p", "q", "r", "p\0x"];
        let responses = ["x", "x", "x", "x", "x", ""];
        let keep = dedup_pairs_with(&prompts, &responses, |_, _| 7).unwrap();
        assert_eq!(keep, vec![0, 1, 4, 5]);
    }

    #[test]
    fn empty_input() {
        let none: [&str; 0] = [];
        assert_eq!(dedup_pairs(&none, &none).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let err = dedup_pairs(&["a", "b"], &["x"]).unwrap_err();
        assert_eq!(
            err,
            DedupError::LengthMismatch {
                prompts: 2,
                responses: 1
            }
        );
        assert!(err.to_string().contains("2 prompts and 1 responses"));
    }

    #[test]
    fn many_rows_cross_chunk_boundaries() {
        let n = 3 * HASH_CHUNK + 17;
        let prompts: Vec<String> = (0..n).map(|i| format!("prompt {}", i % 1000)).collect();
        let responses: Vec<String> = (0..n).map(|i| format!("response {}", i % 777)).collect();
        assert_eq!(
            dedup_pairs(&prompts, &responses).unwrap(),
            reference(&prompts, &responses)
        );
    }

    proptest! {
        #[test]
        fn matches_reference(rows in prop::collection::vec(("[ab\0]{0,3}", "[xy\0]{0,2}"), 0..200)) {
            let (prompts, responses): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
            let keep = dedup_pairs(&prompts, &responses).unwrap();
            prop_assert_eq!(&keep, &reference(&prompts, &responses));
            // Under a degenerate hash the answer is the same: exactness never rests on the hash.
            let weak = dedup_pairs_with(&prompts, &responses, |p, r| (p.len() + r.len()) as u128 % 3).unwrap();
            prop_assert_eq!(keep, weak);
        }
    }
}
