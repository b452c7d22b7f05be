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
