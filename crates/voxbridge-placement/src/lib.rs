//! Which rows of the global batch each rank of a data-parallel run trains ([`Placement`]), and
//! where a rank's rows sit in the batch ([`Layout`]). Pure arithmetic: the training step uses it
//! to place rows and ridges, job planning to refuse a rank count that cannot train a config.

use std::ops::Range;

/// Rows of each subject's share of a global batch of `batch_size` rows over `subjects`
/// subjects (at least one row each; MindEye2 splits the batch evenly, spec §2.3).
pub fn per_subject(batch_size: usize, subjects: usize) -> usize {
    (batch_size / subjects.max(1)).max(1)
}

/// A rank's part of one subject's share of the global batch: rows `rows` of share `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Position of the share in the global batch (the subject's ridge index).
    pub subject: usize,
    pub rows: Range<usize>,
}

/// Where a rank's rows sit in the global batch: the global batch is the concatenation of the
/// subjects' shares in subject order; a rank holds a contiguous run of rows of it, as pieces —
/// whole shares, or part of one share when a subject is split over several ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Rows of every share of the global batch.
    pub shares: Vec<usize>,
    /// This rank's pieces, in global row order.
    pub pieces: Vec<Piece>,
}

impl Layout {
    /// The whole batch on one process.
    pub fn whole(shares: Vec<usize>) -> Self {
        let pieces = shares.iter().enumerate().map(|(subject, &n)| Piece { subject, rows: 0..n }).collect();
        Layout { shares, pieces }
    }

    /// Global row of this rank's first row.
    pub fn row_start(&self) -> usize {
        self.pieces.first().map_or(0, |p| self.shares[..p.subject].iter().sum::<usize>() + p.rows.start)
    }

    /// Rows this rank holds.
    pub fn local_rows(&self) -> usize {
        self.pieces.iter().map(|p| p.rows.len()).sum()
    }
}

/// Why a batch cannot be placed on the ranks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot place {subjects} subject(s) on {world} rank(s)")]
    Empty { subjects: usize, world: usize },
    #[error(
        "subject {subject}'s share of {per_subject} rows per batch cannot be split over {owners} ranks \
         ({world} ranks for {subjects} subjects): raise train.batch_size or use fewer workers"
    )]
    ShareTooSmall { subject: usize, per_subject: usize, owners: usize, world: usize, subjects: usize },
}

/// Which rows of the global batch (`per_subject` rows of each subject, in subject order) each
/// rank trains. With no more ranks than subjects, every rank takes a contiguous run of whole
/// subjects (the first `subjects % world` one more); with more ranks than subjects, every
/// subject's share is split over a contiguous group of owner ranks (the first
/// `world % subjects` subjects get one more owner), each owner taking a contiguous part of the
/// share. A rank's rows are always contiguous in the global batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    per_subject: usize,
    subjects: usize,
    ranks: Vec<Vec<Piece>>,
}

impl Placement {
    pub fn new(subjects: usize, world: usize, per_subject: usize) -> Result<Self, PlacementError> {
        if world == 0 || subjects == 0 {
            return Err(PlacementError::Empty { subjects, world });
        }
        // `n` items in `parts` contiguous runs, the first `n % parts` one longer.
        let run = |n: usize, parts: usize, i: usize| {
            let (base, extra) = (n / parts, n % parts);
            let start = i * base + i.min(extra);
            start..start + base + usize::from(i < extra)
        };
        let ranks = if world <= subjects {
            (0..world)
                .map(|r| run(subjects, world, r).map(|subject| Piece { subject, rows: 0..per_subject }).collect())
                .collect()
        } else {
            let mut ranks = Vec::with_capacity(world);
            let (base, extra) = (world / subjects, world % subjects);
            for subject in 0..subjects {
                let owners = base + usize::from(subject < extra);
                if per_subject < owners {
                    return Err(PlacementError::ShareTooSmall { subject, per_subject, owners, world, subjects });
                }
                ranks.extend((0..owners).map(|i| vec![Piece { subject, rows: run(per_subject, owners, i) }]));
            }
            ranks
        };
        Ok(Placement { per_subject, subjects, ranks })
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Rows of every share of the global batch.
    pub fn shares(&self) -> Vec<usize> {
        vec![self.per_subject; self.subjects]
    }

    pub fn pieces(&self, rank: usize) -> &[Piece] {
        &self.ranks[rank]
    }

    /// The subjects whose ridges `rank` holds, ascending.
    pub fn subjects_of(&self, rank: usize) -> Vec<usize> {
        self.ranks[rank].iter().map(|p| p.subject).collect()
    }

    /// The ranks holding `subject`'s ridge, ascending (never empty).
    pub fn owners(&self, subject: usize) -> Vec<usize> {
        (0..self.world()).filter(|&r| self.ranks[r].iter().any(|p| p.subject == subject)).collect()
    }

    pub fn rows_of(&self, rank: usize) -> usize {
        self.ranks[rank].iter().map(|p| p.rows.len()).sum()
    }

    /// The subject `rank` shares with other owners, if any (at most one by construction).
    pub fn split_subject(&self, rank: usize) -> Option<usize> {
        self.subjects_of(rank).into_iter().find(|&s| self.owners(s).len() > 1)
    }

    pub fn layout(&self, rank: usize) -> Layout {
        Layout { shares: self.shares(), pieces: self.ranks[rank].clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(p: &Placement) -> Vec<Vec<(usize, Range<usize>)>> {
        (0..p.world()).map(|r| p.pieces(r).iter().map(|x| (x.subject, x.rows.clone())).collect()).collect()
    }

    #[test]
    fn the_batch_splits_evenly_over_subjects_with_at_least_one_row_each() {
        assert_eq!(per_subject(42, 7), 6);
        assert_eq!(per_subject(44, 7), 6);
        assert_eq!(per_subject(3, 7), 1);
        assert_eq!(per_subject(24, 0), 24);
    }

    #[test]
    fn no_more_ranks_than_subjects_gives_contiguous_whole_subjects() {
        let p = Placement::new(7, 3, 6).unwrap();
        assert_eq!(p.subjects_of(0), [0, 1, 2]);
        assert_eq!(p.subjects_of(1), [3, 4]);
        assert_eq!(p.subjects_of(2), [5, 6]);
        assert!(pieces(&p).iter().flatten().all(|(_, rows)| *rows == (0..6)));
        assert_eq!(Placement::new(3, 1, 4).unwrap().subjects_of(0), [0, 1, 2]);
        assert!((0..7).all(|s| p.owners(s).len() == 1 && p.split_subject(p.owners(s)[0]).is_none()));
    }

    #[test]
    fn more_ranks_than_subjects_split_shares_over_owner_groups() {
        // 8 GPUs for 7 subjects: subject 0 on ranks 0–1 (3 rows each), the others alone.
        let p = Placement::new(7, 8, 6).unwrap();
        assert_eq!(pieces(&p)[0], [(0, 0..3)]);
        assert_eq!(pieces(&p)[1], [(0, 3..6)]);
        assert_eq!(pieces(&p)[7], [(6, 0..6)]);
        assert_eq!(p.owners(0), [0, 1]);
        assert_eq!((p.split_subject(0), p.split_subject(1), p.split_subject(2)), (Some(0), Some(0), None));
        // Fine-tuning one subject on 3 workers: rows 8, 8, 8 of 24.
        let p = Placement::new(1, 3, 24).unwrap();
        assert_eq!(pieces(&p), [vec![(0, 0..8)], vec![(0, 8..16)], vec![(0, 16..24)]]);
        assert_eq!(p.layout(1).row_start(), 8);
        // Rows stay contiguous and cover the global batch exactly once.
        for (subjects, world, per) in [(2, 5, 4), (3, 7, 5), (7, 16, 6)] {
            let p = Placement::new(subjects, world, per).unwrap();
            let mut next = 0;
            for r in 0..world {
                let layout = p.layout(r);
                assert_eq!(layout.row_start(), next, "{subjects}/{world}/{per} rank {r}");
                next += layout.local_rows();
                assert!(layout.local_rows() > 0);
            }
            assert_eq!(next, subjects * per);
        }
    }

    #[test]
    fn a_share_smaller_than_its_owner_group_is_refused_naming_the_batch_size() {
        let err = Placement::new(1, 4, 3).unwrap_err().to_string();
        assert!(err.contains("3 rows per batch cannot be split over 4 ranks"), "{err}");
        assert!(err.contains("train.batch_size"), "{err}");
        assert_eq!(Placement::new(0, 2, 3).unwrap_err(), PlacementError::Empty { subjects: 0, world: 2 });
    }

    #[test]
    fn the_whole_batch_on_one_process_starts_at_row_zero() {
        let layout = Layout::whole(vec![3, 3]);
        assert_eq!((layout.row_start(), layout.local_rows()), (0, 6));
    }
}
