//! Every gradient in the reference folders is compared by some test: each gradient of each
//! reference file falls in a scope of `GRADIENT_CHECKS`, and the test named there asserts (with
//! `assert_every_gradient_compared`) that it compares every gradient of its scope.

mod common;

use common::{GRADIENT_CHECKS, reference_dir, reference_gradient_names};

#[test]
fn every_reference_gradient_has_a_test_that_compares_it() {
    let mut uncovered = Vec::new();
    let mut scopes_used = vec![0usize; GRADIENT_CHECKS.len()];
    let mut total = 0;
    for folder in ["mindeye2-tiny", "mindeye2-tiny-blurry", "mindeye1-tiny", "mindreader-tiny"] {
        let mut files: Vec<String> = std::fs::read_dir(reference_dir(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for file in files {
            for name in reference_gradient_names(folder, &file) {
                total += 1;
                let scope = GRADIENT_CHECKS
                    .iter()
                    .position(|&(d, f, prefix, _)| d == folder && f == file && name.starts_with(prefix));
                match scope {
                    Some(i) => scopes_used[i] += 1,
                    None => uncovered.push(format!("{folder}/{file}: {name:?}")),
                }
            }
        }
    }
    assert!(uncovered.is_empty(), "reference gradients no test compares:\n{}", uncovered.join("\n"));
    for (check, used) in GRADIENT_CHECKS.iter().zip(scopes_used) {
        assert!(used > 0, "GRADIENT_CHECKS entry {check:?} matches no reference gradient");
    }
    // MindEye2: 40 (float32 SoftCLIP) + 1 (.npy) + 40 (float64 SoftCLIP) + 70 (total objective);
    // MindEye1: 2 phases × 56 × (float32, float64) + low-level 106 × 2; Mind Reader 3 × 32 × 2.
    assert_eq!(total, 151 + 224 + 212 + 192, "the reference folders changed: review GRADIENT_CHECKS");
}
