//! What the numbers were taken on: cores, CPU, memory, kernel, the versions
//! of every peer, and the machine's load before and after the run.

use std::process::Command;

use crate::Plan;

/// The machine and the versions under test.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// celeriac's version and commit.
    pub celeriac: String,
    /// rustc's version.
    pub rustc: String,
    /// Python Celery and kombu versions.
    pub python_celery: String,
    /// Python's version.
    pub python: String,
    /// The `celery` crate (rusty-celery) version, from Cargo.lock.
    pub rusty_celery: String,
    /// redis-server's version.
    pub redis: String,
    /// 1/5/15-minute load average when the run started.
    pub load_before: [f64; 3],
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1/5/15-minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// The version of `crate_name` locked in the workspace's Cargo.lock.
fn locked_version(crate_name: &str) -> String {
    let lock = std::fs::read_to_string(celeriac_tests::repo_root().join("Cargo.lock")).unwrap_or_default();
    let want = format!("name = \"{crate_name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == want {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = ")) {
                return v.trim_matches('"').to_owned();
            }
        }
    }
    "unknown".into()
}

impl Machine {
    /// Looks at this machine and the peers of `plan`.
    pub fn probe(plan: &Plan) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        let root = celeriac_tests::repo_root();
        let rev = output("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let (python_celery, python) = match &plan.python {
            Some(py) => {
                let py = py.to_string_lossy();
                let versions = output(
                    &py,
                    &[
                        "-c",
                        "import celery, kombu; print('celery %s, kombu %s' % (celery.__version__, kombu.__version__))",
                    ],
                );
                (versions, output(&py, &["-c", "import platform; print(platform.python_version())"]))
            }
            None => ("not installed".into(), "not installed".into()),
        };
        let redis_version = output("redis-server", &["--version"])
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
            cpu,
            memory_mib,
            kernel: output("uname", &["-r"]),
            celeriac: format!("{} ({rev})", env!("CARGO_PKG_VERSION")),
            rustc: output("rustc", &["--version"]),
            python_celery,
            python,
            rusty_celery: locked_version("celery"),
            redis: redis_version,
            load_before: load_average(),
        }
    }
}
