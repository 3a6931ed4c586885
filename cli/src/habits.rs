//! Celery's command-line habits, so wrapper scripts written for `celery
//! worker`/`celery beat` work unchanged: `%h`/`%n`/`%d`/`%p`/`%i`/`%I`
//! expansion of node names, log files, pid files and state files (Celery's
//! `host_format`/`node_format`), and a pid file that refuses to start a
//! second process on the same file. (The option rules, a repeated option
//! taking its last value, `--opt=value`, `-c4`, `-Q a,b`, are clap's
//! settings in `lib.rs`.)

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// The default short name of a node without `@` (Celery's `NODENAME_DEFAULT`).
const NODENAME_DEFAULT: &str = "celery";

/// Expands `%x` keys as Celery's `simple_format` does: `%` followed by a
/// letter, digit, `_` or `%` is looked up (`%%` is `%`); an unknown key is
/// an error; anything else is kept.
fn simple_format(text: &str, key: impl Fn(char) -> Option<String>) -> Result<String, CliError> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('%') => {
                chars.next();
                out.push('%');
            }
            Some(k) if k.is_alphanumeric() || k == '_' => {
                chars.next();
                let value = key(k).ok_or_else(|| {
                    CliError::Setting(format!("Unknown format %{k} in string {text:?}; write %% for a literal %"))
                })?;
                out.push_str(&value);
            }
            _ => out.push('%'),
        }
    }
    Ok(out)
}

/// Celery's `host_format`: `%h` the host, `%n` its first label, `%d` the
/// domain, `%i` the process index (`0`), `%I` the same with a dash (empty
/// in the main process). For `-n/--hostname`.
pub fn host_format(text: &str, host: &str) -> Result<String, CliError> {
    let (first, domain) = host.split_once('.').unwrap_or((host, ""));
    format_with(text, host, first, domain, None)
}

/// Celery's `node_format` for node `node` (`name@host`): `%n` is the name
/// before `@`, `%h` the host after it, `%d` its domain, `%p` the whole node
/// name, `%i`/`%I` the process index. For log, pid and state files.
pub fn node_format(text: &str, node: &str) -> Result<String, CliError> {
    let (name, host) = match node.split_once('@') {
        Some((name, host)) => (name, host),
        None => (NODENAME_DEFAULT, node),
    };
    let domain = host.split_once('.').map_or("", |(_, d)| d);
    format_with(text, host, name, domain, Some(node))
}

fn format_with(text: &str, host: &str, name: &str, domain: &str, node: Option<&str>) -> Result<String, CliError> {
    simple_format(text, |k| match k {
        'h' => Some(host.to_owned()),
        'n' => Some(name.to_owned()),
        'd' => Some(domain.to_owned()),
        'i' => Some("0".to_owned()),
        'I' => Some(String::new()),
        'p' => node.map(str::to_owned),
        _ => None,
    })
}

/// A pid file holding this process's id, removed when dropped. Starting
/// fails when the file names a process that is still running (Celery's
/// `create_pidlock`); a stale file is replaced.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes the pid file at `path`.
    pub fn create(path: &Path) -> Result<PidFile, CliError> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let pid: Option<u32> = text.trim().parse().ok();
            if let Some(pid) = pid.filter(|p| *p != std::process::id()) {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(CliError::Setting(format!(
                        "pidfile {} names process {pid}, which is still running; stop it or use another --pidfile",
                        path.display()
                    )));
                }
            }
            tracing::warn!("Stale pidfile exists - Removing it. ({})", path.display());
        }
        let mut file = std::fs::File::create(path)
            .map_err(|e| CliError::Setting(format!("cannot write the pidfile {}: {e}", path.display())))?;
        writeln!(file, "{}", std::process::id())
            .map_err(|e| CliError::Setting(format!("cannot write the pidfile {}: {e}", path.display())))?;
        Ok(PidFile { path: path.to_owned() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected values were printed by the pinned Celery's
    /// `celery.utils.nodenames` (see the shim's tests for the live comparison).
    #[test]
    fn formats_expand_as_celerys() {
        assert_eq!(
            node_format("/var/run/%n-%h-%d-%p-%i-%I.pid", "celeriac@node1.dc.example").unwrap(),
            "/var/run/celeriac-node1.dc.example-dc.example-celeriac@node1.dc.example-0-.pid"
        );
        assert_eq!(
            host_format("w1@%h|%n|%d|a%%b|%i|%I", "node1.dc.example").unwrap(),
            "w1@node1.dc.example|node1|dc.example|a%b|0|"
        );
        assert_eq!(node_format("%n.log", "justhost").unwrap(), "celery.log");
        assert_eq!(host_format("a%-b a% a%.b", "h.d").unwrap(), "a%-b a% a%.b");
        assert!(host_format("a%xb", "h").unwrap_err().to_string().contains("Unknown format %x"));
        assert!(host_format("%p", "h").is_err(), "%p is a node_format key only");
    }

    #[test]
    fn a_pidfile_of_a_running_process_stops_a_second_start() {
        let dir = std::env::temp_dir().join(format!("celeriac-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.pid");
        // pid 1 is always running.
        std::fs::write(&path, "1\n").unwrap();
        assert!(PidFile::create(&path).unwrap_err().to_string().contains("still running"));
        std::fs::write(&path, "999999999\n").unwrap();
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(pid);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
