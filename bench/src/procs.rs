//! Memory and CPU of a worker's whole process tree (a prefork master and its
//! pool children count together), read from /proc.

use std::collections::HashMap;

/// The process `root` and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Memory of a process tree, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeMemory {
    /// Sum of `VmRSS` over the tree (shared pages counted in each process).
    pub rss_kb: u64,
    /// Sum of `VmHWM` (peak RSS) over the tree.
    pub hwm_kb: u64,
    /// Processes in the tree.
    pub processes: usize,
}

/// Memory of `root`'s tree now.
pub fn memory(root: u32) -> TreeMemory {
    let pids = tree(root);
    TreeMemory {
        rss_kb: pids.iter().map(|p| status_kb(*p, "VmRSS")).sum(),
        hwm_kb: pids.iter().map(|p| status_kb(*p, "VmHWM")).sum(),
        processes: pids.len(),
    }
}

/// CPU seconds used by `root`'s tree so far (user + system, with reaped children).
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks = clock_ticks();
    let mut total = 0u64;
    for (i, pid) in tree(root).into_iter().enumerate() {
        let Some(f) = stat_fields(pid) else { continue };
        // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        let field = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += field(11) + field(12);
        if i == 0 {
            total += field(13) + field(14);
        }
    }
    total as f64 / ticks
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds the whole machine has been busy (all cores: user, nice,
/// system, irq, softirq, steal from /proc/stat).
pub fn machine_busy_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) as f64 / clock_ticks()
}

/// CPU seconds this process alone has used (not its children: the worker
/// and redis-server are children of the harness).
pub fn own_cpu_seconds() -> f64 {
    let Some(f) = stat_fields(std::process::id()) else { return 0.0 };
    let field = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / clock_ticks()
}
