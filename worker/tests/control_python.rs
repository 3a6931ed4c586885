//! The pure remote-control layer side by side with Python: celeriac's glob
//! matcher against `fnmatch.fnmatch` (what kombu's `glob` matcher calls) on
//! thousands of generated patterns, and the `TypeError` texts of broken
//! requests against what CPython says when Celery's own command functions
//! are called the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::Write;
use std::process::{Command as Process, Stdio};

use celeriac_protocol::Value;
use celeriac_worker::control::glob::glob_match;
use celeriac_worker::control::Command;

/// Runs `script` with the project's Python, `input` on stdin; its stdout.
fn python(script: &str, input: &str) -> Option<String> {
    let python = celeriac_tests::python_peer()?;
    let mut child = Process::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from another thread: the child's answers fill its stdout pipe
    // while it still reads.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).unwrap())
}

/// A small deterministic generator (no test may depend on luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn text(&mut self, alphabet: &[char], max: usize) -> String {
        let len = self.next(max + 1);
        (0..len).map(|_| alphabet[self.next(alphabet.len())]).collect()
    }
}

#[test]
fn glob_matches_as_pythons_fnmatch() {
    let pattern_chars = ['a', 'b', '-', '*', '?', '[', ']', '!', '\\', '^', '@', 'é'];
    let name_chars = ['a', 'b', '-', '[', ']', '!', '\\', '^', '@', 'é', 'c'];
    let mut rng = Lcg(12345);
    let mut cases: Vec<(String, String)> = (0..10000)
        .map(|_| {
            let p = rng.text(&pattern_chars, 9);
            let n = rng.text(&name_chars, 7);
            (p, n)
        })
        .collect();
    // Names built to match some patterns, so both outcomes are well covered.
    for _ in 0..1000 {
        let n = rng.text(&name_chars, 8);
        let p: String = n.chars().map(|c| if rng.next(3) == 0 { '?' } else { c }).collect();
        let p = if rng.next(2) == 0 { format!("*{p}") } else { format!("{p}*") };
        cases.push((p, n));
    }
    let input: String = cases
        .iter()
        .map(|(p, n)| {
            let pair = Value::List(vec![Value::Str(p.clone()), Value::Str(n.clone())]);
            celeriac_protocol::json::to_string(&pair).unwrap() + "\n"
        })
        .collect();
    let script = "import fnmatch, json, sys\nfor line in sys.stdin:\n    p, n = json.loads(line)\n    print(1 if fnmatch.fnmatch(n, p) else 0)\n";
    let Some(out) = python(script, &input) else { return };
    let theirs: Vec<bool> = out.lines().map(|l| l == "1").collect();
    assert_eq!(theirs.len(), cases.len());
    let mut matched = 0;
    for ((p, n), expected) in cases.iter().zip(theirs) {
        assert_eq!(glob_match(p, n), expected, "fnmatch({n:?}, {p:?})");
        matched += usize::from(expected);
    }
    assert!(matched > 500, "too few matching cases to mean much: {matched}");
}

#[test]
fn binding_errors_are_the_texts_cpython_gives() {
    // (method, arguments as JSON) → celeriac's reply text; Python calls
    // Celery's function `Panel.data[method](None, **arguments)`.
    let cases = [
        ("rate_limit", r#"{}"#),
        ("rate_limit", r#"{"task_name": "x"}"#),
        ("revoke", r#"{}"#),
        ("terminate", r#"{}"#),
        ("hello", r#"{"revoked": []}"#),
        ("election", r#"{"id": 1}"#),
        ("query_task", r#"{}"#),
        ("add_consumer", r#"{}"#),
        ("cancel_consumer", r#"{"x": 1}"#),
        ("enable_events", r#"{"x": 1}"#),
        ("disable_events", r#"{"y": 1}"#),
        ("heartbeat", r#"{"z": 1}"#),
        ("active_queues", r#"{"q": 1}"#),
        ("report", r#"{"r": 1}"#),
        ("autoscale", r#"{"max": 1, "foo": 2}"#),
        ("ping", r#"{"state": 1}"#),
        ("stats", r#"{"x": 1, "state": 1}"#),
    ];
    let input: String = cases.iter().map(|(m, a)| format!("{m}\t{a}\n")).collect();
    let script = "import json, sys\nfrom celery.worker.control import Panel\nfor line in sys.stdin:\n    m, a = line.rstrip('\\n').split('\\t')\n    try:\n        Panel.data[m](None, **json.loads(a))\n        print('no error')\n    except TypeError as e:\n        print(repr(e))\n";
    let Some(out) = python(script, &input) else { return };
    for ((method, arguments), theirs) in cases.iter().zip(out.lines()) {
        let args = celeriac_protocol::json::from_slice(arguments.as_bytes()).unwrap();
        let ours = match Command::parse(&Value::Str((*method).into()), Some(&args)) {
            Err(e) => e.reply_text(),
            Ok(c) => format!("taken: {c:?}"),
        };
        assert_eq!(ours, theirs, "{method} {arguments}");
    }
}
