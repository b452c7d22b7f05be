//! Every experiment file shipped in `experiments/` is valid.

#[test]
fn shipped_experiments_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = voxbridge_config::load_experiment(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.name.is_empty());
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the shipped experiments in {}", dir.display());
}

#[test]
fn shipped_sweeps_expand() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/sweeps");
    let path = dir.join("finetune-sessions-x-seed.toml");
    let runs = voxbridge_config::load_sweep(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.len(), 9);
    assert_eq!(runs[0].name, "finetune-sessions-sessions1-seed0");
    assert_eq!(runs[8].name, "finetune-sessions-sessions4-seed2");
    assert_eq!(runs[8].config.train.seed, 2);
}
