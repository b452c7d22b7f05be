//! Symbolic links that several processes may create at once (the workers of one machine share
//! a link folder): each is made under a temporary name and renamed into place, so a reader
//! sees either the old link or the new one, never none.

use std::path::Path;

/// Makes `link` point at `target` (replacing another link of that name).
pub fn link(target: &Path, link: &Path) -> std::io::Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)?;
    std::fs::rename(&temp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_made_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, l) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("lib.so"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        link(&a, &l).unwrap();
        assert_eq!(std::fs::read_to_string(&l).unwrap(), "a");
        link(&a, &l).unwrap();
        link(&b, &l).unwrap();
        assert_eq!(std::fs::read_to_string(&l).unwrap(), "b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no temporary left behind");
    }
}
