//! [`Flat`]: rows of token ids back to back, the layout every encode call returns (and numpy takes
//! without a copy).

/// Sequences back to back: row `i` is `ids[offsets[i]..offsets[i + 1]]`; `offsets` has `rows + 1`
/// entries and starts at 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flat {
    pub ids: Vec<i32>,
    pub offsets: Vec<i64>,
}

impl Flat {
    pub(super) fn with_rows(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Flat {
            ids: Vec::new(),
            offsets,
        }
    }

    pub(super) fn push_row(&mut self, parts: &[&[u32]]) {
        for part in parts {
            self.ids.extend(part.iter().map(|&id| id as i32));
        }
        self.offsets.push(self.ids.len() as i64);
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The ids of row `i`.
    pub fn row(&self, i: usize) -> &[i32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Append the rows of `other` after these.
    pub(super) fn append(&mut self, other: Flat) {
        let base = self.ids.len() as i64;
        self.ids.extend_from_slice(&other.ids);
        self.offsets
            .extend(other.offsets.iter().skip(1).map(|&o| o + base));
    }
}
