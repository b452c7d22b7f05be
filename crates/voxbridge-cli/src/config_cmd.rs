//! `voxbridge config check`.

use std::path::Path;

pub fn check(file: &Path) -> anyhow::Result<()> {
    let config = voxbridge_config::load_experiment(file)?;
    println!("# resolved configuration of {} (hash {})", file.display(), config.config_hash());
    print!("{}", config.to_toml());
    Ok(())
}
