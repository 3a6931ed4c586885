//! Layering: defaults, then the TOML file, then the environment.
//!
//! Environment variables: `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND` (as
//! Python Celery reads them), and `CELERIAC_<SETTING>` for any top-level
//! setting (`CELERIAC_WORKER_CONCURRENCY=8`). Other `CELERIAC_*` variables
//! belong to tools and tests and are left alone.
//!
//! Every numeric value is range-checked before it is typed
//! ([`crate::NUMERIC_SETTINGS`]), and URLs in error messages are masked.

use std::path::Path;

use config::{Config, File, FileFormat};

use celeriac_redisconn::mask_password;

use crate::{ConfigError, Settings};

/// Settings and where they came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// Environment variables that were applied, for the startup banner.
    pub from_env: Vec<String>,
}

/// Loads `file` (if any) and the process environment, and validates.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let text = match file {
        Some(path) => Some((
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?,
            format!(" in {}", path.display()),
        )),
        None => None,
    };
    build(text.as_ref().map(|(t, o)| (t.as_str(), o.as_str())), std::env::vars())
}

/// Loads settings from TOML text and the given environment (for tests and
/// embedding); `origin` is how errors name the text.
pub fn load_from_str(
    toml: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    build(Some((toml, origin)), env)
}

fn build(file: Option<(&str, &str)>, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
    let origin = file.map(|(_, o)| o.to_string()).unwrap_or_default();
    let invalid = |origin: &str, e: config::ConfigError| ConfigError::Invalid {
        origin: origin.to_string(),
        message: mask_password(&e.to_string()),
    };

    let mut base = Config::builder();
    if let Some((text, _)) = file {
        base = base.add_source(File::from_str(text, FileFormat::Toml));
    }
    // The file alone first, so an unknown key is blamed on the file.
    let built = base.clone().build().map_err(|e| invalid(&origin, e))?;
    let in_file = |_: &str| if origin.is_empty() { String::new() } else { format!(" ({})", origin.trim()) };
    check_raw(&built, &in_file)?;
    let settings: Settings = built.try_deserialize().map_err(|e| invalid(&origin, e))?;

    // Then the environment, one known setting at a time. Values are typed the
    // way a shell user means them: numbers, booleans, and comma lists where
    // the setting is a list.
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let mut builder = base;
    let mut from_env = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (name, value) in env {
        let Some(key) = env_key(&name).filter(|key| defaults.get(key).is_some()) else { continue };
        let is_list = defaults.get(&key).is_some_and(serde_json::Value::is_array);
        builder = builder.set_override(key.as_str(), env_value(&value, is_list)).map_err(|e| invalid(&origin, e))?;
        from_env.push(name);
    }
    if from_env.is_empty() {
        settings.validate()?;
        return Ok(Loaded { settings, from_env });
    }
    let env_origin = format!("{origin} with the environment ({})", from_env.join(", "));
    let built = builder.build().map_err(|e| invalid(&env_origin, e))?;
    let env_var = |top: &str| {
        let var = from_env.iter().find(|name| env_key(name).as_deref() == Some(top));
        var.map(|name| format!(" (from {name})")).unwrap_or_else(|| in_file(top))
    };
    check_raw(&built, &env_var)?;
    let settings: Settings = built.try_deserialize().map_err(|e| invalid(&env_origin, e))?;
    settings.validate()?;
    Ok(Loaded { settings, from_env })
}

/// The setting an environment variable names, if it names one.
fn env_key(name: &str) -> Option<String> {
    match name {
        "CELERY_BROKER_URL" => Some("broker_url".into()),
        "CELERY_RESULT_BACKEND" => Some("result_backend".into()),
        _ => name.strip_prefix("CELERIAC_").map(str::to_ascii_lowercase),
    }
}

/// The raw values of `built` checked against their ranges; `source` says
/// where a top-level setting came from.
fn check_raw(built: &Config, source: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match built.clone().try_deserialize::<config::Map<String, config::Value>>() {
        Ok(root) => crate::limits::check_raw(&root, source),
        // Not even a table: the typed load says what is wrong.
        Err(_) => Ok(()),
    }
}

/// An environment value typed as a shell user means it.
fn env_value(text: &str, is_list: bool) -> config::Value {
    if is_list {
        let items: Vec<String> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        return config::Value::from(items);
    }
    let t = text.trim();
    if let Ok(b) = t.parse::<bool>() {
        return config::Value::from(b);
    }
    if let Ok(i) = t.parse::<i64>() {
        return config::Value::from(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return config::Value::from(f);
        }
    }
    config::Value::from(text.to_string())
}
