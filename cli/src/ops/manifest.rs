//! `celeriac tasks [--json]`: the manifest of the tasks a binary registers
//! (celeriac's own sets and, from a user's binary made with `main_with`, the
//! user's): name, task set, queue, Celery options, and parameters. What the
//! Python side (`celeriac_shim.attach`, `python -m celeriac_shim stubs`)
//! builds its routed proxies and typed stubs from.
//!
//! Parameters come from [`celeriac_worker::Task::arg`]/`kwarg` when the task
//! declares them; else from the Rust signature: the types of an `Args<(A,
//! B)>` tuple become positional parameters `arg0`, `arg1` with Python
//! annotations (`u64` → `int`, `String` → `str`, `Option<T>` →
//! `Optional[T]`, ...), `Kwargs<T>` accepts any keywords, `RawArgs` anything.

use celeriac_worker::{Registry, Task};
use clap::Args;
use serde_json::{json, Value};

use super::print_json;
use crate::error::CliError;

/// The manifest's format version (bumped when a field changes meaning).
pub const MANIFEST_VERSION: u32 = 1;

/// `celeriac tasks` flags.
#[derive(Args, Debug, Clone)]
pub struct TasksArgs {
    /// Task sets to list, comma separated (default: as `celeriac worker`:
    /// `builtin` and the binary's own sets).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub tasks: Vec<String>,
    /// Print the manifest as JSON (for `celeriac_shim`).
    #[arg(long)]
    pub json: bool,
}

/// The text between the `<` after `start` and its matching `>`.
fn generic_of<'a>(text: &'a str, start: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let mut depth = 1usize;
    for (i, c) in text[from..].char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[from..from + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at the commas outside brackets.
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = text[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

/// A Rust type as `type_name` spells it, as a Python annotation.
pub fn python_type(rust: &str) -> String {
    let rust = rust.trim().trim_start_matches('&').trim_start_matches("'static ").trim();
    let base = rust.split('<').next().unwrap_or(rust);
    let short = base.rsplit("::").next().unwrap_or(base);
    match short {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128" | "usize"
        | "BigInt" => "int".into(),
        "f32" | "f64" => "float".into(),
        "bool" => "bool".into(),
        "String" | "str" | "char" => "str".into(),
        "Option" => format!("Optional[{}]", generic_of(rust, "Option<").map_or("Any".into(), python_type)),
        "Vec" | "VecDeque" | "HashSet" | "BTreeSet" => match generic_of(rust, &format!("{short}<")) {
            Some(inner) => format!("List[{}]", python_type(inner)),
            None => "list".into(),
        },
        "HashMap" | "BTreeMap" | "IndexMap" | "Map" => "Dict[str, Any]".into(),
        "()" => "None".into(),
        _ if rust.starts_with('(') => "list".into(),
        _ => "Any".into(),
    }
}

/// The manifest entry of one task.
pub fn entry(task: &Task, set: &str) -> Value {
    let extractors = task.extractors();
    let declared = task.params();
    let raw = extractors.contains("::RawArgs");
    let has_kwargs = extractors.contains("::Kwargs<");
    let mut params: Vec<Value> = Vec::new();
    let mut var_positional = raw;
    if declared.is_empty() {
        if let Some(args) = generic_of(extractors, "::Args<") {
            let args = args.trim();
            if let Some(inner) = args.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
                for (i, ty) in split_top(inner).into_iter().enumerate() {
                    params.push(json!({"name": format!("arg{i}"), "annotation": python_type(ty), "kind": "positional", "required": true}));
                }
            } else {
                // A Vec or another sequence: any number of positionals.
                var_positional = true;
            }
        }
    } else {
        for p in declared {
            let kind = if p.keyword { "keyword" } else { "positional" };
            params.push(json!({"name": p.name, "annotation": p.annotation, "kind": kind, "required": !p.keyword}));
        }
    }
    let o = task.options();
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "name": task.name(),
        "set": set,
        "queue": o.queue,
        "options": {
            "max_retries": o.max_retries,
            "default_retry_delay": o.default_retry_delay.as_secs_f64(),
            "autoretry_for": o.autoretry_for,
            "acks_late": o.acks_late,
            "ignore_result": o.ignore_result,
            "time_limit": secs(o.time_limit),
            "soft_time_limit": secs(o.soft_time_limit),
            "rate_limit": o.rate_limit,
            "track_started": o.track_started,
            "serializer": o.serializer,
        },
        "params": params,
        // Whether the parameters above are all it takes.
        "var_positional": var_positional,
        "var_keyword": raw || (has_kwargs && declared.iter().all(|p| !p.keyword)),
        "rust": extractors,
    })
}

/// The manifest of `registries` (each with its set's name).
pub fn manifest(registries: &[(String, Registry)]) -> Value {
    let mut tasks: Vec<Value> = Vec::new();
    for (set, registry) in registries {
        let mut list: Vec<&Task> = registry.tasks().collect();
        list.sort_by(|a, b| a.name().cmp(b.name()));
        tasks.extend(list.into_iter().map(|t| entry(t, set)));
    }
    json!({"manifest_version": MANIFEST_VERSION, "celeriac": env!("CARGO_PKG_VERSION"), "tasks": tasks})
}

/// `celeriac tasks`.
pub fn run(args: TasksArgs, extra: &'static [celeriac_tasks::TaskSet]) -> Result<(), CliError> {
    let defaults: Vec<String> =
        std::iter::once("builtin").chain(extra.iter().map(|s| s.name())).map(str::to_owned).collect();
    let names = if args.tasks.is_empty() { defaults } else { args.tasks.clone() };
    let config = celeriac_tasks::TaskSetConfig::default();
    let mut registries = Vec::new();
    for name in &names {
        let registry = crate::worker::registry(std::slice::from_ref(name), extra, &config)?;
        registries.push((name.clone(), registry));
    }
    let manifest = manifest(&registries);
    if args.json {
        print_json(&manifest);
        return Ok(());
    }
    for task in manifest["tasks"].as_array().into_iter().flatten() {
        let params: Vec<String> = task["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}: {}", p["name"].as_str().unwrap_or("?"), p["annotation"].as_str().unwrap_or("Any")))
            .collect();
        let queue = task["queue"].as_str().map(|q| format!("  [queue {q}]")).unwrap_or_default();
        println!(
            "{}({}){queue}  ({})",
            task["name"].as_str().unwrap_or("?"),
            params.join(", "),
            task["set"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_worker::{Args, Kwargs, RawArgs, TaskError};

    async fn calibrate(Args((run, _name)): Args<(u64, Option<String>)>) -> Result<String, TaskError> {
        Ok(format!("{run}"))
    }

    #[derive(serde::Deserialize)]
    struct Opts {
        #[allow(dead_code)]
        detector: Option<String>,
    }

    async fn with_opts(Args((run,)): Args<(f64,)>, Kwargs(_o): Kwargs<Opts>) -> Result<f64, TaskError> {
        Ok(run)
    }

    async fn anything(RawArgs(a, _): RawArgs) -> Result<usize, TaskError> {
        Ok(a.len())
    }

    #[test]
    fn rust_types_become_python_annotations() {
        assert_eq!(python_type("u64"), "int");
        assert_eq!(python_type("alloc::string::String"), "str");
        assert_eq!(python_type("core::option::Option<alloc::string::String>"), "Optional[str]");
        assert_eq!(python_type("alloc::vec::Vec<f64>"), "List[float]");
        assert_eq!(python_type("std::collections::hash::map::HashMap<alloc::string::String, i64>"), "Dict[str, Any]");
        assert_eq!(python_type("celeriac_protocol::value::Value"), "Any");
        assert_eq!(python_type("&str"), "str");
    }

    #[test]
    fn parameters_come_from_the_signature_or_the_declaration() {
        let inferred = entry(&Task::new("science.calibrate", calibrate).queue("science"), "science");
        assert_eq!(inferred["queue"], "science");
        assert_eq!(
            inferred["params"][0],
            json!({"name": "arg0", "annotation": "int", "kind": "positional", "required": true})
        );
        assert_eq!(inferred["params"][1]["annotation"], "Optional[str]");
        assert_eq!(inferred["var_keyword"], false);
        let declared = entry(&Task::new("t.opts", with_opts).arg("run", "float").kwarg("detector", "str"), "x");
        assert_eq!(declared["params"][0]["name"], "run");
        assert_eq!(
            declared["params"][1],
            json!({"name": "detector", "annotation": "str", "kind": "keyword", "required": false})
        );
        assert_eq!(declared["var_keyword"], false, "its keywords are declared");
        let open = entry(&Task::new("t.opts", with_opts), "x");
        assert_eq!(open["var_keyword"], true);
        let any = entry(&Task::new("t.any", anything), "x");
        assert_eq!((any["var_positional"].clone(), any["var_keyword"].clone()), (json!(true), json!(true)));
    }
}
