//! Logging of every voxbridge binary (voxbridge, voxbridge-coordinator, voxbridge-worker), in a
//! crate of its own so the worker gets it without linking the coordinator.

/// Logs to stderr, filter from `VOXBRIDGE_LOG` or else `default` (tracing's env-filter syntax;
/// an invalid one falls back to `info`).
pub fn init_logging(default: &str) {
    let filter = std::env::var("VOXBRIDGE_LOG").unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
