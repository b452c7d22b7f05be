//! The coordinator's address file. Under SLURM the coordinator listens on a free port (port 0)
//! and publishes `host:port` in a file unique to its job, on the filesystem the job's nodes
//! share; the workers wait for that file, then connect. The coordinator writes it
//! ([`publish`]), the workers read it ([`parse`]).

use std::path::Path;

/// Writes `addr` to `path` whole (its directory created when missing): into a temporary file
/// next to it, then renamed over it, so a reader finds no file or the whole address.
pub fn publish(path: &Path, addr: &str) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The `host:port` an address file (at `path`, named in errors) holds.
pub fn parse(text: &str, path: &Path) -> Result<String, String> {
    let addr = text.trim();
    let bad = |why: &str| format!("{}: {why} (holds {addr:?}; the coordinator writes host:port)", path.display());
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(addr.to_string()),
        _ => Err(bad("not a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_files_are_written_whole_and_checked() {
        let dir = std::env::temp_dir().join(format!("voxbridge-address-test-{}", std::process::id()));
        let path = dir.join("slurm/coordinator-17.addr");
        publish(&path, "node07:4242").unwrap();
        publish(&path, "node07:4343").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&text, &path).unwrap(), "node07:4343");
        let names: Vec<_> = std::fs::read_dir(dir.join("slurm")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["coordinator-17.addr"], "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();

        let f = Path::new("/runs/r/slurm/coordinator-17.addr");
        assert_eq!(parse("[fe80::1]:9\n", f).unwrap(), "[fe80::1]:9");
        for (text, why) in
            [("", "no port"), ("node07", "no port"), (":80", "no host"), ("n:0", "not a port"), ("n:x", "not a port")]
        {
            let err = parse(text, f).unwrap_err();
            assert!(err.starts_with("/runs/r/slurm/coordinator-17.addr: ") && err.contains(why), "{text:?}: {err}");
        }
    }
}
