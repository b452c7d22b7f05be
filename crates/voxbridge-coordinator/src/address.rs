//! The address the coordinator's workers reach it at. Under SLURM the coordinator listens on a
//! free port (port 0) and publishes `host:port` in a file unique to its job, on the filesystem
//! the job's nodes share; the workers wait for that file, then connect. The file's format
//! ([`publish`], [`parse`]) is the protocol's, shared with the workers; which host goes in it
//! is decided here.

use std::net::SocketAddr;

pub use voxbridge_protocol::address_file::{parse, publish};

/// The address workers reach a coordinator bound to `bound` at: `host` when given
/// (`--advertise-host`), else the bound IP, else (bound to every interface) this machine's
/// `hostname`.
pub fn advertised(bound: SocketAddr, host: Option<&str>, hostname: Option<&str>) -> Result<String, String> {
    let host = match host {
        Some(h) if !h.trim().is_empty() => h.trim(),
        _ if !bound.ip().is_unspecified() => return Ok(bound.to_string()),
        _ => hostname.map(str::trim).filter(|h| !h.is_empty()).ok_or_else(|| {
            format!(
                "listening on {bound} (every interface) but this machine's host name is unknown: pass --advertise-host"
            )
        })?,
    };
    // An IPv6 literal needs brackets before the port.
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    })
}

/// This machine's host name, as `hostname` prints it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address() {
        let any: SocketAddr = "0.0.0.0:4242".parse().unwrap();
        assert_eq!(advertised(any, None, Some("node07\n")).unwrap(), "node07:4242");
        assert_eq!(advertised(any, Some("node07-ib"), Some("node07")).unwrap(), "node07-ib:4242");
        let local: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(advertised(local, None, Some("node07")).unwrap(), "127.0.0.1:4242");
        assert_eq!(advertised("[::]:9".parse().unwrap(), Some("fe80::1"), None).unwrap(), "[fe80::1]:9");
        assert!(advertised(any, None, None).unwrap_err().contains("--advertise-host"));
    }
}
