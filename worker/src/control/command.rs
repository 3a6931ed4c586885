//! Typed remote-control commands: the pure step that turns a request's
//! `method` and `arguments` into a [`Command`] whose every argument has been
//! checked (type, range, length), or into a [`CommandError`] that answers with
//! the error reply a Python worker gives for the same request.
//!
//! Python binds `arguments` to the command's function (`handler(state,
//! **arguments)`), so a missing or unexpected argument is a `TypeError` with
//! CPython's wording, and the reply is `{'error': repr(exc)}` (kombu's
//! `Node.dispatch`). Values Python would take and then choke on later (a rate
//! of `nan/s`, a time limit of `inf`, `pool_grow(n=10**12)`) are refused here
//! with a `ValueError`/`TypeError` reply instead, so nothing downstream ever
//! sees them. Nothing here allocates in proportion to a number it was sent.

use celeriac_protocol::result::python_repr;
use celeriac_protocol::{Map, Value};

/// Longest task id taken by `revoke`, `terminate` and mingle's `hello`
/// (Celery's are 36-character UUIDs).
pub const MAX_TASK_ID_LEN: usize = crate::state::MAX_TASK_ID_LEN;
/// Longest queue, exchange or routing key `add_consumer`/`cancel_consumer`
/// take (AMQP's limit for names).
pub const MAX_NAME_LEN: usize = 255;
/// The largest pool `pool_grow` and `autoscale` may make (unless the worker
/// was started larger).
pub const MAX_CONCURRENCY: usize = 10_000;
/// The longest time limit `time_limit` sets, in seconds (about 31 years).
pub const MAX_TIME_LIMIT: f64 = 1e9;
/// The most task ids one `revoke` or `hello` keeps: Celery's revoked set
/// holds this many (`REVOKES_MAX`), so more would only push out the first.
pub const MAX_REVOKE_IDS: usize = crate::state::REVOKES_MAX;

/// The commands celeriac answers, as Celery names their functions; also the
/// only values of the `method` label of `celeriac_control_errors_total`
/// (with `other` for unknown names and `invalid` for unreadable requests).
pub const METHODS: &[&str] = &[
    "ping",
    "clock",
    "hello",
    "stats",
    "active",
    "reserved",
    "scheduled",
    "registered",
    "active_queues",
    "revoked",
    "query_task",
    "conf",
    "report",
    "revoke",
    "revoke_by_stamped_headers",
    "terminate",
    "rate_limit",
    "time_limit",
    "add_consumer",
    "cancel_consumer",
    "pool_grow",
    "pool_shrink",
    "autoscale",
    "enable_events",
    "disable_events",
    "heartbeat",
    "election",
    "pool_restart",
    "shutdown",
];

/// Celery's aliases of command names.
const ALIASES: &[(&str, &str)] = &[
    ("dump_conf", "conf"),
    ("dump_tasks", "registered"),
    ("dump_active", "active"),
    ("dump_reserved", "reserved"),
    ("dump_schedule", "scheduled"),
    ("dump_revoked", "revoked"),
];

/// The canonical name of `method` (an alias resolved), if celeriac knows it.
pub fn canonical(method: &str) -> Option<&'static str> {
    METHODS
        .iter()
        .copied()
        .find(|m| *m == method)
        .or_else(|| ALIASES.iter().find(|(alias, _)| *alias == method).map(|(_, m)| *m))
}

/// A new rate for `rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// No limit (a falsy value, or a rate of zero).
    Off,
    /// At most this many tasks per second (finite, positive).
    PerSecond(f64),
}

/// The `task_name` of `rate_limit`/`time_limit`: Python looks it up in the
/// task registry, so a name that is no string is simply an unknown task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKey {
    /// A name to look up.
    Name(String),
    /// Not a string: no task has it.
    NotAName,
}

/// A request's command with checked arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `ping`.
    Ping,
    /// `clock`.
    Clock,
    /// Mingle's `hello` from a starting worker.
    Hello {
        /// Its node name (`None` when it is no string: never ours).
        from_node: Option<String>,
        /// The revoked ids it sent (at most [`MAX_REVOKE_IDS`], each at most [`MAX_TASK_ID_LEN`]).
        revoked: Vec<String>,
    },
    /// `stats`.
    Stats,
    /// `active` (`safe`: args and kwargs as reprs).
    Active {
        /// Args and kwargs as repr strings.
        safe: bool,
    },
    /// `reserved`.
    Reserved,
    /// `scheduled`.
    Scheduled,
    /// `registered`.
    Registered {
        /// The task attributes to show (deduplicated, in order).
        items: Vec<String>,
        /// Whether to list `celery.*` tasks too.
        builtins: bool,
    },
    /// `active_queues`.
    ActiveQueues,
    /// `revoked`.
    Revoked,
    /// `query_task`.
    QueryTask {
        /// The ids asked about.
        ids: Vec<String>,
    },
    /// `conf`.
    Conf,
    /// `report`.
    Report,
    /// `revoke`, and `terminate` (which is `revoke` with `terminate`).
    Revoke {
        /// The ids, deduplicated, in the order given.
        ids: Vec<String>,
        /// Whether to stop them if they are running.
        terminate: bool,
        /// The signal number to report (15 unless given).
        signal: i64,
        /// `terminate` rather than `revoke` (for logs and metrics).
        via_terminate: bool,
    },
    /// `revoke_by_stamped_headers`.
    RevokeByStampedHeaders {
        /// Stamp values to revoke, by header.
        headers: Vec<(String, Vec<Value>)>,
        /// Whether to stop running tasks with those stamps.
        terminate: bool,
        /// The signal number to report.
        signal: i64,
        /// Python's `repr` of the headers argument, for the reply.
        repr: String,
    },
    /// `rate_limit`.
    RateLimit {
        /// The task.
        task: TaskKey,
        /// The new rate.
        rate: Rate,
        /// Whether Python would call the given value true (the reply says
        /// "disabled" when it does not).
        truthy: bool,
        /// The value as sent, for the log.
        text: String,
    },
    /// `time_limit`: the task, then the limits or why they were refused
    /// (Python looks the task up first, so an unknown task wins).
    TimeLimit {
        /// The task.
        task: TaskKey,
        /// `(hard, soft)` in seconds (`None`: no limit), or the refusal.
        limits: Result<(Option<f64>, Option<f64>), CommandError>,
    },
    /// `add_consumer`.
    AddConsumer {
        /// The queue.
        queue: String,
        /// Its exchange (default: the queue's name).
        exchange: Option<String>,
        /// Its routing key (default: the queue's name).
        routing_key: Option<String>,
    },
    /// `cancel_consumer`.
    CancelConsumer {
        /// The queue.
        queue: String,
    },
    /// `pool_grow`: this many more slots.
    PoolGrow {
        /// How many.
        n: usize,
    },
    /// `pool_shrink`: this many fewer slots.
    PoolShrink {
        /// How many.
        n: usize,
    },
    /// `autoscale`.
    Autoscale {
        /// The new largest pool.
        max: Option<usize>,
        /// The new smallest pool.
        min: Option<usize>,
    },
    /// `enable_events`.
    EnableEvents,
    /// `disable_events`.
    DisableEvents,
    /// `heartbeat`.
    Heartbeat,
    /// `election` (celeriac takes part in none).
    Election,
    /// `pool_restart`.
    PoolRestart,
    /// `shutdown`, with the message to log.
    Shutdown {
        /// What to log (printable characters only, at most 200).
        msg: String,
    },
}

impl Command {
    /// The command's canonical name (bounded: one of [`METHODS`]).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Clock => "clock",
            Command::Hello { .. } => "hello",
            Command::Stats => "stats",
            Command::Active { .. } => "active",
            Command::Reserved => "reserved",
            Command::Scheduled => "scheduled",
            Command::Registered { .. } => "registered",
            Command::ActiveQueues => "active_queues",
            Command::Revoked => "revoked",
            Command::QueryTask { .. } => "query_task",
            Command::Conf => "conf",
            Command::Report => "report",
            Command::Revoke { via_terminate: true, .. } => "terminate",
            Command::Revoke { .. } => "revoke",
            Command::RevokeByStampedHeaders { .. } => "revoke_by_stamped_headers",
            Command::RateLimit { .. } => "rate_limit",
            Command::TimeLimit { .. } => "time_limit",
            Command::AddConsumer { .. } => "add_consumer",
            Command::CancelConsumer { .. } => "cancel_consumer",
            Command::PoolGrow { .. } => "pool_grow",
            Command::PoolShrink { .. } => "pool_shrink",
            Command::Autoscale { .. } => "autoscale",
            Command::EnableEvents => "enable_events",
            Command::DisableEvents => "disable_events",
            Command::Heartbeat => "heartbeat",
            Command::Election => "election",
            Command::PoolRestart => "pool_restart",
            Command::Shutdown { .. } => "shutdown",
        }
    }

    /// Parses `method` with `arguments` (both as the request carried them).
    pub fn parse(method: &Value, arguments: Option<&Value>) -> Result<Command, CommandError> {
        let name = match method {
            Value::Str(s) => s.as_str(),
            // `handlers[method]` with a key Python cannot hash.
            Value::List(_) | Value::Map(_) => return Err(CommandError::Unhashable { type_name: method.type_name() }),
            other => return Err(CommandError::UnknownMethod { repr: short_repr(other) }),
        };
        let Some(canonical) = canonical(name) else {
            return Err(CommandError::UnknownMethod { repr: short_repr(method) });
        };
        // `arguments = arguments or {}`, then `handler(state, **arguments)`.
        let empty = Map::new();
        let args = match arguments {
            None => &empty,
            Some(v) if !v.is_truthy() => &empty,
            Some(Value::Map(m)) => m,
            Some(other) => {
                return Err(CommandError::NotAMapping { method: canonical, type_name: other.type_name() });
            }
        };
        parse_command(canonical, args)
    }
}

/// What Python's signature binding would say of `args` for `method`.
struct Signature {
    required: &'static [&'static str],
    optional: &'static [&'static str],
    /// `**kwargs`: other names are taken (and ignored).
    extra: bool,
}

const fn sig(required: &'static [&'static str], optional: &'static [&'static str], extra: bool) -> Signature {
    Signature { required, optional, extra }
}

fn signature(method: &str) -> Signature {
    match method {
        "hello" => sig(&["from_node"], &["revoked"], true),
        "active" => sig(&[], &["safe"], true),
        "registered" => sig(&[], &["taskinfoitems", "builtins"], true),
        "query_task" => sig(&["ids"], &[], true),
        "conf" => sig(&[], &["with_defaults"], true),
        "report" | "enable_events" | "disable_events" | "heartbeat" | "active_queues" => sig(&[], &[], false),
        "revoke" => sig(&["task_id"], &["terminate", "signal"], true),
        "revoke_by_stamped_headers" => sig(&["headers"], &["terminate", "signal"], true),
        "terminate" => sig(&["signal", "task_id"], &[], true),
        "rate_limit" => sig(&["task_name", "rate_limit"], &[], true),
        "time_limit" => sig(&[], &["task_name", "hard", "soft"], true),
        "election" => sig(&["id", "topic"], &["action"], true),
        "pool_grow" | "pool_shrink" => sig(&[], &["n"], true),
        "pool_restart" => sig(&[], &["modules", "reload", "reloader"], true),
        "autoscale" => sig(&[], &["max", "min"], false),
        "shutdown" => sig(&[], &["msg"], true),
        "add_consumer" => sig(&["queue"], &["exchange", "exchange_type", "routing_key"], true),
        "cancel_consumer" => sig(&["queue"], &[], true),
        // ping, clock, stats, reserved, scheduled, revoked: `(state, **kwargs)`.
        _ => sig(&[], &[], true),
    }
}

/// CPython's checks, in its order: each keyword in turn (the positional
/// `state` given twice, or a name the function lacks), then the missing
/// required ones.
fn bind(method: &'static str, args: &Map) -> Result<(), CommandError> {
    let s = signature(method);
    for key in args.keys() {
        if key == "state" {
            return Err(CommandError::MultipleValues { method, name: "state" });
        }
        if !s.extra && !s.required.contains(&key.as_str()) && !s.optional.contains(&key.as_str()) {
            return Err(CommandError::Unexpected { method, name: truncate(key, 100) });
        }
    }
    let missing: Vec<&'static str> = s.required.iter().copied().filter(|r| !args.contains_key(*r)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Missing { method, names: missing })
    }
}

fn parse_command(method: &'static str, args: &Map) -> Result<Command, CommandError> {
    bind(method, args)?;
    let get = |k: &str| args.get(k);
    let truthy = |k: &str| args.get(k).is_some_and(Value::is_truthy);
    Ok(match method {
        "ping" => Command::Ping,
        "clock" => Command::Clock,
        "hello" => Command::Hello {
            from_node: get("from_node").and_then(Value::as_str).map(str::to_owned),
            revoked: hello_ids(get("revoked")),
        },
        "stats" => Command::Stats,
        "active" => Command::Active { safe: truthy("safe") },
        "reserved" => Command::Reserved,
        "scheduled" => Command::Scheduled,
        "registered" => {
            Command::Registered { items: task_info_items(get("taskinfoitems"))?, builtins: truthy("builtins") }
        }
        "active_queues" => Command::ActiveQueues,
        "revoked" => Command::Revoked,
        "query_task" => Command::QueryTask { ids: query_ids(get("ids"))? },
        "conf" => Command::Conf,
        "report" => Command::Report,
        "revoke" | "terminate" => {
            let via_terminate = method == "terminate";
            let terminate = via_terminate || truthy("terminate");
            let ids = revoke_ids(method, get("task_id"))?;
            // Python reads the signal only when it terminates.
            let signal = if terminate { signal_number(method, get("signal"))? } else { SIGTERM };
            Command::Revoke { ids, terminate, signal, via_terminate }
        }
        "revoke_by_stamped_headers" => {
            let terminate = truthy("terminate");
            let signal = if terminate { signal_number(method, get("signal"))? } else { SIGTERM };
            let given = get("headers").unwrap_or(&Value::Null);
            let headers = stamped_headers(given)?;
            let repr = match given {
                Value::Map(_) => truncate(&celeriac_protocol::result::python_repr(given), 200),
                // A list of "k=v" is turned into a dict first, as Celery does.
                _ => {
                    let mut m = Map::new();
                    for (k, v) in &headers {
                        m.insert(k.clone(), v.first().cloned().unwrap_or(Value::Null));
                    }
                    truncate(&celeriac_protocol::result::python_repr(&Value::Map(m)), 200)
                }
            };
            Command::RevokeByStampedHeaders { headers, terminate, signal, repr }
        }
        "rate_limit" => {
            let value = get("rate_limit").unwrap_or(&Value::Null);
            let rate = rate(value)?;
            Command::RateLimit {
                task: task_key(get("task_name"))?,
                rate,
                truthy: value.is_truthy(),
                text: truncate(&display(value), 100),
            }
        }
        "time_limit" => {
            let task = task_key(get("task_name"))?;
            let limits =
                seconds(method, "hard", get("hard")).and_then(|hard| Ok((hard, seconds(method, "soft", get("soft"))?)));
            Command::TimeLimit { task, limits }
        }
        "add_consumer" => Command::AddConsumer {
            queue: name(method, "queue", get("queue"), false)?.unwrap_or_default(),
            exchange: name(method, "exchange", get("exchange"), true)?,
            routing_key: name(method, "routing_key", get("routing_key"), true)?,
        },
        "cancel_consumer" => {
            Command::CancelConsumer { queue: name(method, "queue", get("queue"), false)?.unwrap_or_default() }
        }
        "pool_grow" => Command::PoolGrow { n: count(method, "n", get("n"), 1)? },
        "pool_shrink" => Command::PoolShrink { n: count(method, "n", get("n"), 1)? },
        "autoscale" => {
            let max = optional_count(method, "max", get("max"))?;
            let min = optional_count(method, "min", get("min"))?;
            if let (Some(max), Some(min)) = (max, min) {
                if min > max {
                    return Err(CommandError::OutOfRange {
                        method,
                        argument: "min",
                        value: min.to_string(),
                        allowed: format!("at most max ({max})"),
                    });
                }
            }
            if max == Some(0) {
                return Err(CommandError::OutOfRange {
                    method,
                    argument: "max",
                    value: "0".into(),
                    allowed: format!("an int from 1 to {MAX_CONCURRENCY}"),
                });
            }
            Command::Autoscale { max, min }
        }
        "enable_events" => Command::EnableEvents,
        "disable_events" => Command::DisableEvents,
        "heartbeat" => Command::Heartbeat,
        "election" => Command::Election,
        "pool_restart" => Command::PoolRestart,
        "shutdown" => Command::Shutdown {
            msg: match get("msg") {
                Some(Value::Str(s)) => printable(s, 200),
                _ => "Got shutdown from remote".to_owned(),
            },
        },
        _ => return Err(CommandError::UnknownMethod { repr: python_repr(&Value::Str(method.to_owned())) }),
    })
}

/// Why a command was refused, or failed: each answers with Celery's error
/// reply (`{'error': "<Python exception repr>"}`, see [`CommandError::reply`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// No such command (`KeyError`).
    #[error("no such remote-control command: {repr}; see `celery inspect --help` for the commands")]
    UnknownMethod {
        /// The Python repr of the name sent.
        repr: String,
    },
    /// A dict key that Python cannot hash (a list or dict as method, task name or id).
    #[error("unhashable type: '{type_name}' where a name or id was expected; send a string")]
    Unhashable {
        /// The Python type sent.
        type_name: &'static str,
    },
    /// `arguments` is not a dict.
    #[error("{method}: the arguments are a {type_name}, not a dict of keyword arguments; send a dict")]
    NotAMapping {
        /// The command.
        method: &'static str,
        /// The Python type sent.
        type_name: &'static str,
    },
    /// An argument the command does not take.
    #[error("{method}() takes no argument {name:?}; leave it out")]
    Unexpected {
        /// The command.
        method: &'static str,
        /// The argument.
        name: String,
    },
    /// The worker's own `state` argument sent as a keyword.
    #[error("{method}() got the reserved argument {name:?}; leave it out")]
    MultipleValues {
        /// The command.
        method: &'static str,
        /// The argument.
        name: &'static str,
    },
    /// Required arguments absent.
    #[error("{method}() is missing {names:?}; send them")]
    Missing {
        /// The command.
        method: &'static str,
        /// The missing arguments, in the function's order.
        names: Vec<&'static str>,
    },
    /// An argument of the wrong type.
    #[error("{method}(): {argument} must be {expected}, not {got}")]
    WrongType {
        /// The command.
        method: &'static str,
        /// The argument.
        argument: &'static str,
        /// What it must be.
        expected: &'static str,
        /// The Python type sent.
        got: &'static str,
    },
    /// A number outside what the command takes.
    #[error("{method}(): {argument}={value} is out of range; it must be {allowed}")]
    OutOfRange {
        /// The command.
        method: &'static str,
        /// The argument.
        argument: &'static str,
        /// The value sent (shortened).
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A string longer than the command takes.
    #[error("{method}(): {argument} is {len} characters long; at most {max} are taken")]
    TooLong {
        /// The command.
        method: &'static str,
        /// The argument.
        argument: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A revoked id that is no string (Python's `', '.join(ids)` fails so).
    #[error("task ids must be strings; item {index} is a {type_name}")]
    NotAString {
        /// Its position.
        index: usize,
        /// The Python type sent.
        type_name: &'static str,
    },
    /// Something Python cannot iterate where it iterates.
    #[error("{type_name} object is not iterable; send a list")]
    NotIterable {
        /// The Python type sent.
        type_name: &'static str,
    },
    /// `rate_limit` with an unknown unit (`KeyError`, as Python's).
    #[error("unknown rate limit unit {unit}; use /s, /m or /h")]
    RateUnit {
        /// The Python repr of the unit.
        unit: String,
    },
    /// `rate_limit` with a value that is no rate (`{'error': 'Invalid rate limit string: ...'}`).
    #[error("invalid rate limit: {message}; send e.g. '10/s', '100/m' or '1000/h'")]
    InvalidRate {
        /// Python's `ValueError` message.
        message: String,
    },
    /// A signal named in lower case or not a string (Celery refuses it so).
    #[error("signal name must be uppercase string; send e.g. 'SIGKILL' or 'KILL'")]
    SignalName,
    /// A signal name the system does not have.
    #[error("no signal {name}; send e.g. 'SIGTERM' or 'SIGKILL'")]
    NoSuchSignal {
        /// `SIG` + the name sent.
        name: String,
    },
    /// The task named is not registered here (`{'error': 'unknown task'}`).
    #[error("unknown task; the worker has no task of that name")]
    UnknownTask,
    /// Refused by the worker's current state (`ValueError`).
    #[error("{method}: {message}")]
    Refused {
        /// The command.
        method: &'static str,
        /// Why, and what to do.
        message: String,
    },
    /// The command ran out of time (`TimeoutError`).
    #[error("{method} did not finish within {seconds} s and was abandoned; retry it, or with fewer ids")]
    TimedOut {
        /// The command.
        method: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// The command panicked: a bug in celeriac (`RuntimeError`); the control loop goes on.
    #[error("{method} failed inside celeriac ({message}); please report this bug")]
    Panicked {
        /// The command.
        method: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl CommandError {
    /// The text of Celery's error reply: `repr()` of the exception a Python
    /// worker raises for the same request, or its own `nok` text.
    pub fn reply_text(&self) -> String {
        let exc = |class: &str, message: String| format!("{class}({})", python_repr(&Value::Str(message)));
        match self {
            CommandError::UnknownMethod { repr } => format!("KeyError({repr})"),
            CommandError::Unhashable { type_name } => exc("TypeError", format!("unhashable type: '{type_name}'")),
            CommandError::NotAMapping { method, type_name } => exc(
                "TypeError",
                format!("celery.worker.control.{method}() argument after ** must be a mapping, not {type_name}"),
            ),
            CommandError::Unexpected { method, name } => {
                exc("TypeError", format!("{method}() got an unexpected keyword argument {}", str_repr(name)))
            }
            CommandError::MultipleValues { method, name } => {
                exc("TypeError", format!("{method}() got multiple values for argument '{name}'"))
            }
            CommandError::Missing { method, names } => {
                let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
                let list = match quoted.as_slice() {
                    [one] => one.clone(),
                    [a, b] => format!("{a} and {b}"),
                    [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
                    [] => String::new(),
                };
                let plural = if names.len() == 1 { "argument" } else { "arguments" };
                exc("TypeError", format!("{method}() missing {} required positional {plural}: {list}", names.len()))
            }
            CommandError::WrongType { method, argument, expected, got } => {
                exc("TypeError", format!("{method}(): {argument} must be {expected}, not {got}"))
            }
            CommandError::OutOfRange { method, argument, value, allowed } => {
                exc("ValueError", format!("{method}(): {argument}={value} is out of range; it must be {allowed}"))
            }
            CommandError::TooLong { method, argument, len, max } => {
                exc("ValueError", format!("{method}(): {argument} is {len} characters long; at most {max} are taken"))
            }
            CommandError::NotAString { index, type_name } => {
                exc("TypeError", format!("sequence item {index}: expected str instance, {type_name} found"))
            }
            CommandError::NotIterable { type_name } => {
                exc("TypeError", format!("'{type_name}' object is not iterable"))
            }
            CommandError::RateUnit { unit } => format!("KeyError({unit})"),
            CommandError::InvalidRate { message } => {
                format!("Invalid rate limit string: {}", exc("ValueError", message.clone()))
            }
            CommandError::SignalName => exc("TypeError", "signal name must be uppercase string.".into()),
            CommandError::NoSuchSignal { name } => {
                exc("AttributeError", format!("module 'signal' has no attribute {}", str_repr(name)))
            }
            CommandError::UnknownTask => "unknown task".into(),
            CommandError::Refused { message, .. } => exc("ValueError", message.clone()),
            CommandError::TimedOut { .. } => exc("TimeoutError", self.to_string()),
            CommandError::Panicked { .. } => exc("RuntimeError", self.to_string()),
        }
    }

    /// Celery's error reply: `{'error': <reply_text>}`.
    pub fn reply(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), Value::Str(self.reply_text()));
        Value::Map(m)
    }
}

const SIGTERM: i64 = 15;

/// Python's repr of a string.
fn str_repr(s: &str) -> String {
    python_repr(&Value::Str(s.to_owned()))
}

/// A repr for an error message: whole up to a few hundred characters.
fn short_repr(v: &Value) -> String {
    match v {
        Value::Str(s) => str_repr(&truncate(s, 200)),
        Value::List(_) | Value::Map(_) | Value::Bytes(_) => format!("<{}>", v.type_name()),
        other => python_repr(other),
    }
}

/// `s` cut to `max` characters (with `...` when cut).
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// `s` without control characters, cut to `max` characters.
fn printable(s: &str, max: usize) -> String {
    truncate(&s.chars().filter(|c| !c.is_control()).collect::<String>(), max)
}

/// How a value reads in a log line (strings bare, as Python's `%s`).
fn display(v: &Value) -> String {
    match v {
        Value::Str(s) => printable(s, 100),
        Value::List(_) | Value::Map(_) => format!("<{}>", v.type_name()),
        other => python_repr(other),
    }
}

/// The `task_name` of `rate_limit`/`time_limit`.
fn task_key(v: Option<&Value>) -> Result<TaskKey, CommandError> {
    match v {
        Some(Value::Str(s)) => Ok(TaskKey::Name(s.clone())),
        Some(v @ (Value::List(_) | Value::Map(_))) => Err(CommandError::Unhashable { type_name: v.type_name() }),
        _ => Ok(TaskKey::NotAName),
    }
}

/// Ids of `revoke`/`terminate`: `set(maybe_list(task_id) or [])`, checked.
fn revoke_ids(method: &'static str, v: Option<&Value>) -> Result<Vec<String>, CommandError> {
    let items: &[Value] = match v {
        None | Some(Value::Null) => &[],
        Some(Value::List(items)) => items,
        Some(Value::Map(_)) => return Err(CommandError::Unhashable { type_name: "dict" }),
        Some(one) => std::slice::from_ref(one),
    };
    let mut seen = std::collections::HashSet::with_capacity(items.len().min(MAX_REVOKE_IDS));
    let mut ids = Vec::with_capacity(items.len().min(MAX_REVOKE_IDS));
    for (index, item) in items.iter().enumerate() {
        match item {
            Value::Str(id) => {
                let len = id.chars().count();
                if len > MAX_TASK_ID_LEN {
                    return Err(CommandError::TooLong { method, argument: "task_id", len, max: MAX_TASK_ID_LEN });
                }
                if seen.insert(id.as_str()) {
                    ids.push(id.clone());
                }
            }
            Value::List(_) | Value::Map(_) => return Err(CommandError::Unhashable { type_name: item.type_name() }),
            other => return Err(CommandError::NotAString { index, type_name: other.type_name() }),
        }
    }
    Ok(ids)
}

/// `hello`'s `revoked`: the ids (Celery 5.7 sends a list, older ones a dict
/// of id to stamp); others, and ids too long to be ids, are left out.
fn hello_ids(v: Option<&Value>) -> Vec<String> {
    let ok = |id: &&str| id.chars().count() <= MAX_TASK_ID_LEN;
    let ids: Vec<String> = match v {
        Some(Value::List(ids)) => ids.iter().filter_map(Value::as_str).filter(ok).map(str::to_owned).collect(),
        Some(Value::Map(ids)) => ids.keys().map(String::as_str).filter(ok).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    // Only the newest fit in the revoked set.
    let skip = ids.len().saturating_sub(MAX_REVOKE_IDS);
    ids.into_iter().skip(skip).collect()
}

/// `query_task`'s `ids`: `maybe_list(ids)`, each looked up in a dict.
fn query_ids(v: Option<&Value>) -> Result<Vec<String>, CommandError> {
    match v {
        Some(Value::Str(id)) => Ok(vec![id.clone()]),
        Some(Value::List(items)) => {
            let mut ids = Vec::new();
            for item in items {
                match item {
                    Value::Str(id) => ids.push(id.clone()),
                    Value::List(_) | Value::Map(_) => {
                        return Err(CommandError::Unhashable { type_name: item.type_name() });
                    }
                    // Hashable, so merely not found.
                    _ => {}
                }
            }
            Ok(ids)
        }
        Some(Value::Map(_)) => Err(CommandError::Unhashable { type_name: "dict" }),
        Some(Value::Null) | None => Err(CommandError::NotIterable { type_name: "NoneType" }),
        Some(_) => Ok(Vec::new()),
    }
}

/// `registered`'s `taskinfoitems`: Python iterates it (a string by its
/// characters) and keeps the strings not starting with `_`; a dict keeps
/// one entry per attribute, so duplicates collapse.
fn task_info_items(v: Option<&Value>) -> Result<Vec<String>, CommandError> {
    let items: Vec<String> = match v {
        None => return Ok(default_items()),
        Some(v) if !v.is_truthy() => return Ok(default_items()),
        Some(Value::List(l)) => l.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::Str(s)) => s.chars().map(String::from).collect(),
        Some(Value::Map(m)) => m.keys().cloned().collect(),
        Some(other) => return Err(CommandError::NotIterable { type_name: other.type_name() }),
    };
    let mut seen = std::collections::HashSet::new();
    Ok(items.into_iter().filter(|i| !i.starts_with('_')).filter(|i| seen.insert(i.clone())).collect())
}

fn default_items() -> Vec<String> {
    ["exchange", "routing_key", "rate_limit"].map(String::from).to_vec()
}

/// A queue/exchange/routing key name: a non-empty string of at most
/// [`MAX_NAME_LEN`] characters (`None` allowed when `optional`).
fn name(
    method: &'static str,
    argument: &'static str,
    v: Option<&Value>,
    optional: bool,
) -> Result<Option<String>, CommandError> {
    match v {
        None | Some(Value::Null) if optional => Ok(None),
        Some(Value::Str(s)) => {
            let len = s.chars().count();
            if len > MAX_NAME_LEN {
                return Err(CommandError::TooLong { method, argument, len, max: MAX_NAME_LEN });
            }
            if s.is_empty() {
                return Err(CommandError::OutOfRange {
                    method,
                    argument,
                    value: "''".into(),
                    allowed: "a non-empty name".into(),
                });
            }
            Ok(Some(s.clone()))
        }
        other => Err(CommandError::WrongType {
            method,
            argument,
            expected: "a str",
            got: other.map_or("NoneType", type_name),
        }),
    }
}

/// Python's type name, with `None` as `NoneType` (as in its messages).
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        other => other.type_name(),
    }
}

/// A pool size change: an int from 0 to [`MAX_CONCURRENCY`] (`default`
/// when absent). Python's `range(n)` takes bools as ints and refuses the rest
/// with "'str' object cannot be interpreted as an integer".
fn count(
    method: &'static str,
    argument: &'static str,
    v: Option<&Value>,
    default: usize,
) -> Result<usize, CommandError> {
    match v {
        None => Ok(default),
        Some(v) => optional_count(method, argument, Some(v))?.ok_or(CommandError::WrongType {
            method,
            argument,
            expected: "an int",
            got: "NoneType",
        }),
    }
}

fn optional_count(
    method: &'static str,
    argument: &'static str,
    v: Option<&Value>,
) -> Result<Option<usize>, CommandError> {
    let out_of_range = |value: String| CommandError::OutOfRange {
        method,
        argument,
        value,
        allowed: format!("an int from 0 to {MAX_CONCURRENCY}"),
    };
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Bool(b)) => i64::from(*b),
        Some(Value::Int(n)) => *n,
        Some(Value::BigInt(b)) => return Err(out_of_range(truncate(b.as_str(), 40))),
        Some(other) => {
            return Err(CommandError::WrongType { method, argument, expected: "an int", got: other.type_name() });
        }
    };
    match usize::try_from(n) {
        Ok(n) if n <= MAX_CONCURRENCY => Ok(Some(n)),
        _ => Err(out_of_range(n.to_string())),
    }
}

/// A time limit in seconds: `None` or `0` for none, else a finite number
/// from 0 to [`MAX_TIME_LIMIT`].
fn seconds(method: &'static str, argument: &'static str, v: Option<&Value>) -> Result<Option<f64>, CommandError> {
    let allowed = || format!("a number of seconds from 0 to {MAX_TIME_LIMIT:e} (0 or None: no limit)");
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Int(n)) => *n as f64,
        Some(Value::Float(f)) => *f,
        Some(Value::BigInt(b)) => {
            return Err(CommandError::OutOfRange {
                method,
                argument,
                value: truncate(b.as_str(), 40),
                allowed: allowed(),
            });
        }
        Some(other) => {
            return Err(CommandError::WrongType { method, argument, expected: "a number", got: other.type_name() });
        }
    };
    if !(s.is_finite() && (0.0..=MAX_TIME_LIMIT).contains(&s)) {
        return Err(CommandError::OutOfRange { method, argument, value: float_text(s), allowed: allowed() });
    }
    Ok((s > 0.0).then_some(s))
}

/// Python's `repr` of a float (`nan`, `inf`, `1e+300`).
fn float_text(f: f64) -> String {
    python_repr(&Value::Float(f))
}

/// Celery's `rate()` of a `rate_limit` value, then celeriac's range check
/// (finite, not negative).
pub fn rate(v: &Value) -> Result<Rate, CommandError> {
    if !v.is_truthy() {
        return Ok(Rate::Off);
    }
    let per_second = match v {
        Value::Str(text) => {
            let (ops, modifier) = text.split_once('/').unwrap_or((text, ""));
            let per = match modifier {
                "" | "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => return Err(CommandError::RateUnit { unit: str_repr(&truncate(other, 100)) }),
            };
            let Some(n) = python_float(ops) else {
                return Err(CommandError::InvalidRate {
                    message: format!("could not convert string to float: {}", str_repr(&truncate(ops, 100))),
                });
            };
            n / per
        }
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        Value::BigInt(b) => b.to_f64(),
        other => {
            return Err(CommandError::WrongType {
                method: "rate_limit",
                argument: "rate_limit",
                expected: "a str such as '10/s' or a number",
                got: other.type_name(),
            });
        }
    };
    if !(per_second.is_finite() && per_second >= 0.0) {
        return Err(CommandError::InvalidRate {
            message: format!("rate limit must be a finite number >= 0, not {}", display(v)),
        });
    }
    Ok(if per_second > 0.0 { Rate::PerSecond(per_second) } else { Rate::Off })
}

/// Python's `float(text)`: surrounding whitespace ignored, `_` between
/// digits allowed, `inf`/`nan`/`infinity` in any case.
pub fn python_float(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.contains('_') {
        let chars: Vec<char> = t.chars().collect();
        let ok = chars.iter().enumerate().all(|(i, c)| {
            *c != '_'
                || (i > 0
                    && chars.get(i - 1).is_some_and(char::is_ascii_digit)
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        });
        if !ok {
            return None;
        }
        return t.replace('_', "").parse().ok();
    }
    t.parse().ok()
}

/// The signal of `revoke(terminate=True, signal=...)`, as Celery's
/// `signals.signum`: an int as is (1 to 64 here), an upper-case name with or
/// without `SIG`.
fn signal_number(method: &'static str, v: Option<&Value>) -> Result<i64, CommandError> {
    let v = match v {
        Some(v) if v.is_truthy() => v,
        _ => return Ok(SIGTERM),
    };
    let name = match v {
        Value::Int(n) => {
            return if (1..=64).contains(n) {
                Ok(*n)
            } else {
                Err(CommandError::OutOfRange {
                    method,
                    argument: "signal",
                    value: n.to_string(),
                    allowed: "a signal number from 1 to 64".into(),
                })
            };
        }
        Value::Bool(_) => return Ok(1),
        Value::Str(s) => s,
        _ => return Err(CommandError::SignalName),
    };
    // Python's str.isupper(): some cased character, none lower case.
    let is_upper = name.chars().any(char::is_uppercase) && !name.chars().any(char::is_lowercase);
    if !is_upper {
        return Err(CommandError::SignalName);
    }
    let full = if name.starts_with("SIG") { name.clone() } else { format!("SIG{name}") };
    signal_by_name(&full).ok_or_else(|| CommandError::NoSuchSignal { name: truncate(&full, 100) })
}

/// Linux signal numbers by name (Python's `signal` module).
fn signal_by_name(name: &str) -> Option<i64> {
    Some(match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGILL" => 4,
        "SIGTRAP" => 5,
        "SIGABRT" | "SIGIOT" => 6,
        "SIGBUS" => 7,
        "SIGFPE" => 8,
        "SIGKILL" => 9,
        "SIGUSR1" => 10,
        "SIGSEGV" => 11,
        "SIGUSR2" => 12,
        "SIGPIPE" => 13,
        "SIGALRM" => 14,
        "SIGTERM" => 15,
        "SIGSTKFLT" => 16,
        "SIGCHLD" => 17,
        "SIGCONT" => 18,
        "SIGSTOP" => 19,
        "SIGTSTP" => 20,
        "SIGTTIN" => 21,
        "SIGTTOU" => 22,
        "SIGURG" => 23,
        "SIGXCPU" => 24,
        "SIGXFSZ" => 25,
        "SIGVTALRM" => 26,
        "SIGPROF" => 27,
        "SIGWINCH" => 28,
        "SIGIO" | "SIGPOLL" => 29,
        "SIGPWR" => 30,
        "SIGSYS" => 31,
        "SIGRTMIN" => 34,
        "SIGRTMAX" => 64,
        _ => return None,
    })
}

/// The `headers` of `revoke_by_stamped_headers`: a dict of header to a
/// value or a list of values, or a list of `"header=value"` strings; at most
/// [`MAX_REVOKE_IDS`] values in all.
fn stamped_headers(given: &Value) -> Result<Vec<(String, Vec<Value>)>, CommandError> {
    let bad = |what: String| CommandError::OutOfRange {
        method: "revoke_by_stamped_headers",
        argument: "headers",
        value: what,
        allowed: "a dict of stamp names to values, or a list of \"name=value\"".into(),
    };
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut total = 0usize;
    let mut push = |k: String, vs: Vec<Value>| -> Result<(), CommandError> {
        total = total.saturating_add(vs.len());
        if total > MAX_REVOKE_IDS || k.chars().count() > 255 {
            return Err(bad(format!("{total} values")));
        }
        match index.get(&k).and_then(|i| out.get_mut(*i)) {
            Some((_, v)) => v.extend(vs),
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, vs));
            }
        }
        Ok(())
    };
    match given {
        Value::Map(m) => {
            for (k, v) in m {
                push(k.clone(), crate::state::stamp_values(v))?;
            }
        }
        Value::List(items) => {
            for item in items {
                let Some(text) = item.as_str() else { return Err(bad(item.type_name().to_owned())) };
                let Some((k, v)) = text.split_once('=') else { return Err(bad(truncate(text, 100))) };
                push(k.to_owned(), vec![Value::Str(v.split('=').next().unwrap_or_default().to_owned())])?;
            }
        }
        other => return Err(bad(other.type_name().to_owned())),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, Value)]) -> Value {
        let mut m = Map::new();
        for (k, v) in pairs {
            m.insert((*k).to_owned(), v.clone());
        }
        Value::Map(m)
    }

    fn parse(method: &str, pairs: &[(&str, Value)]) -> Result<Command, CommandError> {
        Command::parse(&Value::Str(method.into()), Some(&args(pairs)))
    }

    fn error(method: &str, pairs: &[(&str, Value)]) -> String {
        match parse(method, pairs) {
            Err(e) => e.reply_text(),
            Ok(c) => panic!("{method} {pairs:?} was taken: {c:?}"),
        }
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    #[test]
    fn binding_errors_read_as_cpythons() {
        // The texts are the ones CPython 3.11 gives for Celery 5.7's functions.
        assert_eq!(
            error("rate_limit", &[]),
            r#"TypeError("rate_limit() missing 2 required positional arguments: 'task_name' and 'rate_limit'")"#
        );
        assert_eq!(
            error("terminate", &[("task_id", s("x"))]),
            r#"TypeError("terminate() missing 1 required positional argument: 'signal'")"#
        );
        assert_eq!(
            error("enable_events", &[("x", Value::Int(1))]),
            r#"TypeError("enable_events() got an unexpected keyword argument 'x'")"#
        );
        assert_eq!(
            error("ping", &[("state", Value::Int(1))]),
            r#"TypeError("ping() got multiple values for argument 'state'")"#
        );
        let e = Command::parse(&s("ping"), Some(&Value::List(vec![Value::Int(1)]))).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "TypeError('celery.worker.control.ping() argument after ** must be a mapping, not list')"
        );
        assert_eq!(Command::parse(&s("ping"), Some(&Value::List(vec![]))), Ok(Command::Ping), "falsy: no arguments");
        assert_eq!(Command::parse(&s("ping"), None), Ok(Command::Ping));
        assert_eq!(Command::parse(&s("dump_schedule"), None), Ok(Command::Scheduled), "an alias");
    }

    #[test]
    fn unknown_methods_are_key_errors_of_their_repr() {
        let e = |m: Value| Command::parse(&m, None).unwrap_err().reply_text();
        assert_eq!(e(s("no_such")), "KeyError('no_such')");
        assert_eq!(e(Value::Int(5)), "KeyError(5)");
        assert_eq!(e(Value::Null), "KeyError(None)");
        assert_eq!(e(Value::List(vec![])), r#"TypeError("unhashable type: 'list'")"#);
        let long = e(s(&"x".repeat(1 << 20)));
        assert!(long.len() < 300, "a huge name is shortened: {}", long.len());
    }

    #[test]
    fn revoke_takes_strings_of_bounded_length_deduplicated() {
        let Command::Revoke { ids, terminate, signal, .. } =
            parse("revoke", &[("task_id", Value::List(vec![s("a"), s("b"), s("a")]))]).unwrap()
        else {
            panic!()
        };
        assert_eq!((ids, terminate, signal), (vec!["a".to_owned(), "b".to_owned()], false, 15));
        let one = parse("revoke", &[("task_id", s("x"))]).unwrap();
        assert!(matches!(one, Command::Revoke { ref ids, .. } if ids == &["x"]));
        let none = parse("revoke", &[("task_id", Value::Null)]).unwrap();
        assert!(matches!(none, Command::Revoke { ref ids, .. } if ids.is_empty()));
        assert_eq!(
            error("revoke", &[("task_id", Value::Int(5))]),
            r#"TypeError('sequence item 0: expected str instance, int found')"#
        );
        assert_eq!(error("revoke", &[("task_id", Value::Map(Map::new()))]), r#"TypeError("unhashable type: 'dict'")"#);
        let long = error("revoke", &[("task_id", s(&"x".repeat(MAX_TASK_ID_LEN + 1)))]);
        assert!(long.starts_with("ValueError("), "{long}");
        // 100k ids: taken in linear time.
        let many: Vec<Value> = (0..100_000).map(|i| s(&format!("id-{i}"))).collect();
        let start = std::time::Instant::now();
        let Command::Revoke { ids, .. } = parse("revoke", &[("task_id", Value::List(many))]).unwrap() else { panic!() };
        assert_eq!(ids.len(), 100_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn signals_as_celerys_signum() {
        let sig = |v: Value| parse("revoke", &[("task_id", s("a")), ("terminate", Value::Bool(true)), ("signal", v)]);
        let num = |v: Value| match sig(v) {
            Ok(Command::Revoke { signal, .. }) => Ok(signal),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.reply_text()),
        };
        assert_eq!(num(s("SIGKILL")), Ok(9));
        assert_eq!(num(s("KILL")), Ok(9));
        assert_eq!(num(Value::Null), Ok(15));
        assert_eq!(num(Value::Int(9)), Ok(9));
        assert_eq!(num(s("kill")), Err("TypeError('signal name must be uppercase string.')".into()));
        assert_eq!(num(s("9")), Err("TypeError('signal name must be uppercase string.')".into()));
        assert_eq!(num(s("NOPE")), Err(r#"AttributeError("module 'signal' has no attribute 'SIGNOPE'")"#.into()));
        assert!(num(Value::Int(1 << 40)).unwrap_err().starts_with("ValueError("));
        assert!(num(Value::Int(-1)).unwrap_err().starts_with("ValueError("));
        assert_eq!(num(Value::Float(9.0)), Err("TypeError('signal name must be uppercase string.')".into()));
        // Without terminate the signal is not read, as in Python.
        let quiet = parse("revoke", &[("task_id", s("a")), ("signal", s("nonsense"))]);
        assert!(quiet.is_ok());
        let via = parse("terminate", &[("task_id", s("a")), ("signal", s("TERM"))]).unwrap();
        assert_eq!(via.name(), "terminate");
        assert!(matches!(via, Command::Revoke { terminate: true, signal: 15, .. }));
    }

    #[test]
    fn rate_limits_parse_as_celerys_rate_and_must_be_finite() {
        let r = |v: Value| rate(&v).map_err(|e| e.reply_text());
        assert_eq!(r(s("10/s")), Ok(Rate::PerSecond(10.0)));
        assert_eq!(r(s("60/m")), Ok(Rate::PerSecond(1.0)));
        assert_eq!(r(s("7200/h")), Ok(Rate::PerSecond(2.0)));
        assert_eq!(r(s("5")), Ok(Rate::PerSecond(5.0)));
        assert_eq!(r(s(" 1_0 /s")), Ok(Rate::PerSecond(10.0)), "float() strips spaces and takes underscores");
        assert_eq!(r(s("1/ s")), Err("KeyError(' s')".into()), "the unit is taken as is");
        assert_eq!(r(s("0/s")), Ok(Rate::Off));
        assert_eq!(r(s("")), Ok(Rate::Off));
        assert_eq!(r(Value::Int(0)), Ok(Rate::Off));
        assert_eq!(r(Value::Null), Ok(Rate::Off));
        assert_eq!(r(Value::Int(3)), Ok(Rate::PerSecond(3.0)));
        assert_eq!(r(s("1e300/s")), Ok(Rate::PerSecond(1e300)), "huge but finite: no limit in practice");
        assert_eq!(r(s("1e-300/s")), Ok(Rate::PerSecond(1e-300)), "tiny: the bucket caps its interval");
        assert_eq!(r(s("5/q")), Err("KeyError('q')".into()));
        assert_eq!(r(s("4/sec")), Err("KeyError('sec')".into()));
        assert_eq!(
            r(s("often")),
            Err(r#"Invalid rate limit string: ValueError("could not convert string to float: 'often'")"#.into())
        );
        for bad in ["-5/m", "nan/s", "inf/s", "-inf/h", "1e400/s"] {
            let e = r(s(bad)).unwrap_err();
            assert!(e.starts_with("Invalid rate limit string: ValueError("), "{bad}: {e}");
        }
        for bad in [Value::Float(f64::NAN), Value::Float(f64::INFINITY), Value::Int(-1), Value::Float(-0.5)] {
            assert!(r(bad.clone()).unwrap_err().starts_with("Invalid rate limit string: "), "{bad:?}");
        }
        assert!(r(Value::List(vec![Value::Int(1)])).unwrap_err().starts_with("TypeError("));
        assert!(r(Value::Bool(true)).unwrap_err().starts_with("TypeError("));
        // The rate is read before the task, as Python does.
        assert_eq!(
            error("rate_limit", &[("task_name", Value::List(vec![])), ("rate_limit", s("x/q"))]),
            "KeyError('q')"
        );
        assert_eq!(
            error("rate_limit", &[("task_name", Value::List(vec![])), ("rate_limit", s("1/s"))]),
            r#"TypeError("unhashable type: 'list'")"#
        );
        let ok = parse("rate_limit", &[("task_name", Value::Int(3)), ("rate_limit", s("1/s"))]).unwrap();
        assert!(matches!(ok, Command::RateLimit { task: TaskKey::NotAName, .. }));
    }

    #[test]
    fn time_limits_must_be_sane_seconds() {
        let limits = |hard: Value, soft: Value| match parse(
            "time_limit",
            &[("task_name", s("t")), ("hard", hard), ("soft", soft)],
        ) {
            Ok(Command::TimeLimit { limits, .. }) => limits.map_err(|e| e.reply_text()),
            other => panic!("{other:?}"),
        };
        assert_eq!(limits(Value::Int(10), Value::Float(2.5)), Ok((Some(10.0), Some(2.5))));
        assert_eq!(limits(Value::Null, Value::Int(0)), Ok((None, None)), "None and 0 are no limit");
        for bad in [Value::Float(f64::NAN), Value::Float(f64::INFINITY), Value::Int(-1), Value::Float(1e300)] {
            let e = limits(bad.clone(), Value::Null).unwrap_err();
            assert!(e.starts_with("ValueError('time_limit(): hard="), "{bad:?}: {e}");
        }
        assert!(limits(Value::Null, s("10"))
            .unwrap_err()
            .starts_with("TypeError('time_limit(): soft must be a number"));
        assert!(limits(Value::Bool(true), Value::Null).unwrap_err().starts_with("TypeError("));
        let huge = Value::BigInt(celeriac_protocol::BigInt::parse(&"9".repeat(400)).unwrap());
        assert!(limits(huge, Value::Null).unwrap_err().starts_with("ValueError("));
        // Missing task_name is Python's `tasks[None]`: an unknown task.
        let none = parse("time_limit", &[]).unwrap();
        assert!(matches!(none, Command::TimeLimit { task: TaskKey::NotAName, .. }));
    }

    #[test]
    fn pool_sizes_are_bounded_ints() {
        let grow = |v: Value| match parse("pool_grow", &[("n", v)]) {
            Ok(Command::PoolGrow { n }) => Ok(n),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.reply_text()),
        };
        assert_eq!(grow(Value::Int(3)), Ok(3));
        assert_eq!(grow(Value::Bool(true)), Ok(1));
        assert_eq!(parse("pool_shrink", &[]), Ok(Command::PoolShrink { n: 1 }), "n defaults to 1");
        for bad in [Value::Int(1_000_000_000_000), Value::Int(-1), Value::Int(i64::MIN)] {
            assert!(grow(bad.clone()).unwrap_err().starts_with("ValueError('pool_grow(): n="), "{bad:?}");
        }
        let huge = Value::BigInt(celeriac_protocol::BigInt::parse(&"9".repeat(100)).unwrap());
        assert!(grow(huge).unwrap_err().starts_with("ValueError("));
        for bad in [s("x"), Value::Float(1.5), Value::Null, Value::List(vec![])] {
            assert!(grow(bad.clone()).unwrap_err().starts_with("TypeError('pool_grow(): n must be an int"), "{bad:?}");
        }
        let auto = |pairs: &[(&str, Value)]| parse("autoscale", pairs).map_err(|e| e.reply_text());
        assert_eq!(
            auto(&[("max", Value::Int(8)), ("min", Value::Int(2))]),
            Ok(Command::Autoscale { max: Some(8), min: Some(2) })
        );
        assert!(auto(&[("max", Value::Int(2)), ("min", Value::Int(8))]).unwrap_err().starts_with("ValueError("));
        assert!(auto(&[("max", Value::Int(1_000_000_000_000))]).unwrap_err().starts_with("ValueError("));
        assert!(auto(&[("max", Value::Int(0))]).unwrap_err().starts_with("ValueError("));
        assert!(auto(&[("max", s("x"))]).unwrap_err().starts_with("TypeError("));
        assert_eq!(
            auto(&[("foo", Value::Int(1))]).unwrap_err(),
            r#"TypeError("autoscale() got an unexpected keyword argument 'foo'")"#
        );
    }

    #[test]
    fn queue_names_are_bounded_strings() {
        let add = |v: Value| parse("add_consumer", &[("queue", v)]).map_err(|e| e.reply_text());
        assert!(matches!(add(s("q")), Ok(Command::AddConsumer { ref queue, .. }) if queue == "q"));
        assert!(add(s(&"q".repeat(MAX_NAME_LEN + 1))).unwrap_err().starts_with("ValueError("));
        assert!(add(s("")).unwrap_err().starts_with("ValueError("));
        assert!(add(Value::Int(1)).unwrap_err().starts_with("TypeError("));
        assert!(add(Value::Null).unwrap_err().starts_with("TypeError("));
        let e = parse("add_consumer", &[("queue", s("q")), ("exchange", Value::Int(1))]).unwrap_err();
        assert!(e.reply_text().starts_with("TypeError('add_consumer(): exchange must be a str"), "{e}");
        assert_eq!(
            error("cancel_consumer", &[]),
            r#"TypeError("cancel_consumer() missing 1 required positional argument: 'queue'")"#
        );
    }

    #[test]
    fn registered_items_collapse_as_a_python_dict() {
        let items = |v: Value| match parse("registered", &[("taskinfoitems", v)]) {
            Ok(Command::Registered { items, .. }) => Ok(items),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.reply_text()),
        };
        let many = Value::List(vec![s("name"); 100_000]);
        assert_eq!(items(many), Ok(vec!["name".to_owned()]));
        assert_eq!(items(Value::List(vec![s("_private"), Value::Int(1)])), Ok(vec![]));
        assert_eq!(items(Value::Null), Ok(default_items()));
        assert_eq!(items(s("ab")), Ok(vec!["a".to_owned(), "b".to_owned()]), "a str is iterated");
        assert_eq!(items(Value::Int(3)), Err(r#"TypeError("'int' object is not iterable")"#.into()));
    }

    #[test]
    fn query_task_ids_as_python_looks_them_up() {
        let ids = |v: Value| match parse("query_task", &[("ids", v)]) {
            Ok(Command::QueryTask { ids }) => Ok(ids),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.reply_text()),
        };
        assert_eq!(ids(s("a")), Ok(vec!["a".to_owned()]));
        assert_eq!(ids(Value::List(vec![s("a"), Value::Int(3)])), Ok(vec!["a".to_owned()]));
        assert_eq!(ids(Value::List(vec![Value::List(vec![])])), Err(r#"TypeError("unhashable type: 'list'")"#.into()));
        assert_eq!(ids(Value::Null), Err(r#"TypeError("'NoneType' object is not iterable")"#.into()));
    }

    #[test]
    fn hello_keeps_bounded_ids() {
        let mut ids: Vec<Value> = (0..MAX_REVOKE_IDS + 10).map(|i| s(&format!("{i}"))).collect();
        ids.push(s(&"x".repeat(MAX_TASK_ID_LEN + 1)));
        ids.push(Value::Int(1));
        let Command::Hello { from_node, revoked } =
            parse("hello", &[("from_node", s("w@h")), ("revoked", Value::List(ids))]).unwrap()
        else {
            panic!()
        };
        assert_eq!(from_node.as_deref(), Some("w@h"));
        assert_eq!(revoked.len(), MAX_REVOKE_IDS);
        assert_eq!(revoked.first().map(String::as_str), Some("10"), "the newest are kept");
        assert_eq!(error("hello", &[]), r#"TypeError("hello() missing 1 required positional argument: 'from_node'")"#);
    }

    #[test]
    fn shutdown_logs_a_printable_message() {
        let Command::Shutdown { msg } =
            parse("shutdown", &[("msg", s(&format!("bye\n\u{1b}[31m{}", "x".repeat(500))))]).unwrap()
        else {
            panic!()
        };
        assert!(!msg.contains('\n') && !msg.contains('\u{1b}') && msg.chars().count() <= 203, "{msg}");
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(" 1.5 "), Some(1.5));
        assert_eq!(python_float("1_000"), Some(1000.0));
        assert_eq!(python_float("_1"), None);
        assert_eq!(python_float("1__0"), None);
        assert!(python_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(python_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(python_float("0x10"), None);
        assert_eq!(python_float(""), None);
    }

    #[test]
    fn every_method_has_a_canonical_name() {
        for m in METHODS {
            assert_eq!(canonical(m), Some(*m));
        }
        assert_eq!(canonical("dump_conf"), Some("conf"));
        assert_eq!(canonical("objgraph"), None);
    }
}
