//! Log output for the command: `tracing` to stderr at the level of
//! `-l/--loglevel` (Celery's names), `RUST_LOG` refining it per module.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Celery's log level names (any case) to a `tracing` filter directive.
pub fn level(name: &str) -> Result<&'static str, String> {
    match name.to_ascii_uppercase().as_str() {
        "DEBUG" => Ok("debug"),
        "INFO" => Ok("info"),
        "WARNING" | "WARN" => Ok("warn"),
        "ERROR" | "CRITICAL" | "FATAL" => Ok("error"),
        other => Err(format!("unknown log level {other:?}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")),
    }
}

/// Installs the subscriber. `RUST_LOG`, when set, is added to the level.
pub fn init(level: &str) {
    let _ = init_to(level, None);
}

fn filter(level: &str) -> EnvFilter {
    let mut filter = EnvFilter::new(level);
    if let Ok(extra) = std::env::var("RUST_LOG") {
        for directive in extra.split(',').filter_map(|d| d.parse().ok()) {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the subscriber writing to `logfile` (appended to, as Celery's
/// `-f/--logfile`) or, without one, to stderr.
pub fn init_to(level: &str, logfile: Option<&std::path::Path>) -> Result<(), String> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)).with_target(false);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            let _ = builder.with_ansi(false).with_writer(std::sync::Mutex::new(file)).try_init();
        }
        None => {
            let _ = builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).try_init();
        }
    }
    Ok(())
}
