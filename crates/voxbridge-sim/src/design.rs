//! The experimental design: which image each trial shows, in what order.
//!
//! As in NSD, a subject sees the shared test images 3 times each and its own images up to 3
//! times, with presentations interleaved over all its sessions: every (image, repeat) slot is
//! placed uniformly at random in the subject's trial sequence, so a repeat can follow within
//! minutes or many sessions later (NSD's own design spread repeats the same way). Repeat numbers
//! follow the order of presentation. Sessions are split into runs of (nearly) equal length, and
//! trial numbers restart at 1 in each run, like NSD's TRIAL column.

use rand::seq::SliceRandom;

use crate::rng::stream;
use crate::spec::SimSpec;

/// One presentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    pub session: u16,
    pub run: u16,
    /// 1-based within the run.
    pub trial: u16,
    /// 0-based index within the session.
    pub index_in_session: usize,
    /// 0-based over all the subject's trials.
    pub global_trial: u32,
    pub image_id: u32,
    pub is_test: bool,
    pub repeat: u8,
}

/// Which image ids exist and who sees them.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Shared test images, seen by every subject 3 times.
    pub test_ids: Vec<u32>,
    /// Per subject (in spec order): images only that subject sees.
    pub unique_ids: Vec<Vec<u32>>,
    pub total_images: usize,
}

impl Catalogue {
    /// Image ids are a seeded permutation of `0..total`, so test images are not the lowest ids.
    pub fn new(spec: &SimSpec, seed: u64) -> Self {
        let counts: Vec<usize> = spec
            .subjects
            .iter()
            .map(|s| (s.sessions as usize * spec.trials_per_session - 3 * spec.test_images).div_ceil(3))
            .collect();
        let total = spec.test_images + counts.iter().sum::<usize>();
        let mut ids: Vec<u32> = (0..total as u32).collect();
        ids.shuffle(&mut stream(seed, "image-ids", 0));
        let test_ids = ids[..spec.test_images].to_vec();
        let mut offset = spec.test_images;
        let unique_ids = counts
            .iter()
            .map(|&n| {
                let block = ids[offset..offset + n].to_vec();
                offset += n;
                block
            })
            .collect();
        Catalogue { test_ids, unique_ids, total_images: total }
    }
}

/// All trials of the subject at `index` in `spec.subjects`, in chronological order.
pub fn subject_design(spec: &SimSpec, index: usize, catalogue: &Catalogue, seed: u64) -> Vec<Trial> {
    let subject = spec.subjects[index];
    let total = subject.sessions as usize * spec.trials_per_session;
    let unique_slots = total - 3 * spec.test_images;
    // (image, is_test) per presentation slot.
    let mut slots: Vec<(u32, bool)> = Vec::with_capacity(total);
    for &id in &catalogue.test_ids {
        slots.extend([(id, true); 3]);
    }
    for &id in &catalogue.unique_ids[index] {
        slots.extend([(id, false); 3]);
    }
    slots.truncate(3 * spec.test_images + unique_slots);
    slots.shuffle(&mut stream(seed, "design", subject.subject as u64));

    let mut seen: std::collections::HashMap<u32, u8> = std::collections::HashMap::new();
    let tps = spec.trials_per_session;
    let runs = spec.runs_per_session;
    let run_start = |r: usize| r * tps / runs;
    slots
        .into_iter()
        .enumerate()
        .map(|(position, (image_id, is_test))| {
            let repeat = seen.entry(image_id).or_insert(0);
            let this_repeat = *repeat;
            *repeat += 1;
            let index_in_session = position % tps;
            // The run is the last one that starts at or before this trial.
            let run = (0..runs).rev().find(|&r| run_start(r) <= index_in_session).unwrap_or(0);
            Trial {
                session: (position / tps + 1) as u16,
                run: run as u16 + 1,
                trial: (index_in_session - run_start(run) + 1) as u16,
                index_in_session,
                global_trial: position as u32,
                image_id,
                is_test,
                repeat: this_repeat,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_test_image_three_times_others_at_most_three() {
        let spec = SimSpec::tiny();
        let cat = Catalogue::new(&spec, 1);
        for i in 0..spec.subjects.len() {
            let trials = subject_design(&spec, i, &cat, 1);
            assert_eq!(trials.len(), spec.subjects[i].sessions as usize * spec.trials_per_session);
            let mut counts: HashMap<u32, Vec<u8>> = HashMap::new();
            for t in &trials {
                counts.entry(t.image_id).or_default().push(t.repeat);
            }
            for id in &cat.test_ids {
                assert_eq!(counts[id], vec![0, 1, 2], "test image {id}");
            }
            for (id, reps) in &counts {
                assert!(reps.len() <= 3);
                assert_eq!(*reps, (0..reps.len() as u8).collect::<Vec<_>>(), "image {id}");
            }
        }
    }

    #[test]
    fn runs_and_trials_number_like_nsd() {
        let spec = SimSpec::small();
        let cat = Catalogue::new(&spec, 0);
        let trials = subject_design(&spec, 0, &cat, 0);
        let first: Vec<&Trial> = trials.iter().filter(|t| t.session == 1).collect();
        assert_eq!(first.len(), 750);
        let runs: std::collections::BTreeSet<u16> = first.iter().map(|t| t.run).collect();
        assert_eq!(runs.len(), 12);
        for r in 1..=12u16 {
            let n = first.iter().filter(|t| t.run == r).count();
            assert!(n == 62 || n == 63, "run {r} has {n} trials");
            let numbers: Vec<u16> = first.iter().filter(|t| t.run == r).map(|t| t.trial).collect();
            assert_eq!(numbers, (1..=n as u16).collect::<Vec<_>>());
        }
        assert!(trials.windows(2).all(|w| w[1].global_trial == w[0].global_trial + 1));
    }

    #[test]
    fn images_are_disjoint_between_subjects() {
        let spec = SimSpec::tiny();
        let cat = Catalogue::new(&spec, 0);
        let mut all: Vec<u32> = cat.test_ids.clone();
        cat.unique_ids.iter().for_each(|u| all.extend(u));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, cat.total_images);
    }
}
