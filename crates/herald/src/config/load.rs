//! Reading the configuration from its sources: defaults, then a file, then
//! `HERALD_*` environment variables, then CLI flags. Keys Herald does not know
//! are reported as warnings naming the key; values that do not fit stop the
//! start with an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

use super::Config;

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "HERALD_";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Values given as CLI flags; they win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub address: Option<String>,
    pub data_dir: Option<String>,
    /// `serve --dev`: insecure development mode.
    pub dev: bool,
}

/// A loaded configuration and the warnings met while loading it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Loads and validates the configuration.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let mut tree = match file {
        Some(path) => read_file(path)?,
        None => Value::Object(Map::new()),
    };
    if !tree.is_object() {
        return Err(ConfigError::invalid(
            "<root>",
            "the configuration must be an object",
        ));
    }
    apply_env(&mut tree, env, &mut warnings)?;
    let mut config = deserialize(tree, &mut warnings)?;
    apply_overrides(&mut config, overrides);
    super::validate::validate(&config, &mut warnings)?;
    Ok(Loaded { config, warnings })
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("json")
        .to_ascii_lowercase();
    let parse_err = |format, message: String| ConfigError::Parse {
        path: path.to_owned(),
        format,
        message,
    };
    match ext.as_str() {
        "toml" => toml::from_str::<Value>(&text).map_err(|e| parse_err("TOML", e.to_string())),
        "yaml" | "yml" => {
            serde_yaml::from_str::<Value>(&text).map_err(|e| parse_err("YAML", e.to_string()))
        }
        _ => serde_json::from_str::<Value>(&text).map_err(|e| parse_err("JSON", e.to_string())),
    }
}

/// A deserializer's message with Rust's type names said in words
/// (`expected u16` → `expected a whole number from 0 to 65535`).
fn in_words(message: &str) -> String {
    const TYPES: [(&str, &str); 10] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number, 0 or more"),
        ("usize", "a whole number, 0 or more"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("isize", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    let Some((head, wanted)) = message.rsplit_once("expected ") else {
        return message.to_string();
    };
    match TYPES.iter().find(|(name, _)| *name == wanted.trim()) {
        Some((_, words)) => format!("{head}expected {words}"),
        None => message.to_string(),
    }
}

fn deserialize(tree: Value, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let config: Config = serde_path_to_error::deserialize(tree.clone()).map_err(|e| {
        let key = e.path().to_string();
        let message = in_words(&e.inner().to_string());
        refine_namespace_error(&tree, &key).unwrap_or_else(|| ConfigError::invalid(key, message))
    })?;
    // Every field serialises, so a key of the input that the re-serialised
    // config lacks is one Herald does not know.
    let known = serde_json::to_value(&config).unwrap_or(Value::Null);
    let mut unknown = Vec::new();
    unknown_keys("", &tree, &known, &mut unknown);
    for (key, near) in unknown {
        let hint = near.map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
        warnings.push(format!(
            "unknown or unsupported config key `{key}` is ignored{hint}"
        ));
    }
    Ok(config)
}

/// The known key most like `key`, when one is close enough to be a typo
/// of it (at most a third of its letters differ; two swapped letters
/// count as one).
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let most = (key.chars().count() / 3).max(1);
    known
        .map(|k| (strsim::osa_distance(key, k), k))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, k)| k)
}

/// Keys of `input` that `known` lacks, each with the known key it is most
/// probably a typo of.
fn unknown_keys(
    prefix: &str,
    input: &Value,
    known: &Value,
    out: &mut Vec<(String, Option<String>)>,
) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, value) in i {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_keys(&path, value, kv, out),
                    None => {
                        let near = closest(key, k.keys()).map(|n| match prefix {
                            "" => n.clone(),
                            p => format!("{p}.{n}"),
                        });
                        out.push((path, near));
                    }
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                unknown_keys(&format!("{prefix}[{n}]"), iv, kv, out);
            }
        }
        _ => {}
    }
}

/// Flattened namespace options lose the inner key in errors; deserialising
/// the one namespace's options on their own finds it.
fn refine_namespace_error(tree: &Value, key: &str) -> Option<ConfigError> {
    let index: usize = key
        .strip_prefix("channel.namespaces[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let mut item = tree.get("channel")?.get("namespaces")?.get(index)?.clone();
    item.as_object_mut()?.remove("name");
    let err = serde_path_to_error::deserialize::<_, super::ChannelOptions>(item).err()?;
    Some(ConfigError::invalid(
        format!("{key}.{}", err.path()),
        in_words(&err.inner().to_string()),
    ))
}

/// Every configurable leaf path of the defaults, e.g. `client.token.hmac_secret_key`,
/// with its default value (which tells how to parse the variable's text).
fn leaf_paths() -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, child, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let mut out = Vec::new();
    walk("", &defaults, &mut out);
    out
}

fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

fn apply_env(
    tree: &mut Value,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let leaves = leaf_paths();
    let mut used = std::collections::BTreeSet::new();
    for (path, default) in &leaves {
        let name = env_name(path);
        let Some(text) = env.get(&name) else { continue };
        used.insert(name.clone());
        let value = env_value(text, default)
            .map_err(|m| ConfigError::invalid(path.as_str(), format!("{m} (from {name})")))?;
        set_path(tree, path, value);
    }
    for name in env
        .keys()
        .filter(|k| k.starts_with(ENV_PREFIX) && !used.contains(*k))
    {
        // The CLI's own variable and those of the test suites are not options.
        if !(name == "HERALD_CONFIG" || name == "HERALD_BIN" || name.starts_with("HERALD_TEST_")) {
            warnings.push(format!("unknown environment variable `{name}` is ignored"));
        }
    }
    Ok(())
}

/// Interprets an environment variable's text by the type of the default.
fn env_value(text: &str, default: &Value) -> Result<Value, String> {
    match default {
        Value::Bool(_) => match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "f" | "no" | "off" | "" => Ok(Value::Bool(false)),
            other => Err(format!("expected a boolean, got {other:?}")),
        },
        Value::Number(_) => text
            .trim()
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| format!("expected a number, got {text:?}")),
        Value::Array(_) => {
            let t = text.trim();
            if t.starts_with('[') {
                serde_json::from_str(t).map_err(|e| format!("expected a JSON array: {e}"))
            } else {
                Ok(Value::Array(
                    t.split_whitespace()
                        .map(|s| Value::String(s.to_string()))
                        .collect(),
                ))
            }
        }
        _ => Ok(Value::String(text.to_string())),
    }
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node.get(*part).is_some_and(Value::is_object) {
            node[*part] = Value::Object(Map::new());
        }
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value;
}

fn apply_overrides(config: &mut Config, o: &Overrides) {
    if let Some(port) = o.port {
        config.http_server.port = port;
    }
    if let Some(address) = &o.address {
        config.http_server.address = address.clone();
    }
    if let Some(dir) = &o.data_dir {
        config.data_dir = dir.clone();
    }
    if o.dev {
        config.dev = true;
        // An open server stays on this machine unless asked otherwise.
        if o.address.is_none() && config.http_server.address.is_empty() {
            config.http_server.address = "127.0.0.1".into();
        }
        config.client.insecure = true;
        config.http_api.insecure = true;
        // The admin UI, without a login, on this machine only.
        config.admin.enabled = true;
        config.admin.insecure = true;
        config.prometheus.enabled = true;
        // The demo page falls back to HTTP-streaming without WebSocket.
        config.http_stream.enabled = true;
        if config.client.allowed_origins.is_empty() {
            config.client.allowed_origins = vec!["*".into()];
        }
        if !config.channel.namespaces.iter().any(|n| n.name == "chat") {
            config.channel.namespaces.push(dev_chat_namespace());
        }
    }
    if config.data_dir.is_empty() {
        config.data_dir = "herald-data".into();
    }
}

/// The namespace of the demo page's `chat:lobby` in `--dev` (unless the
/// config has its own `chat`): presence with join/leave for the online
/// counter, and a day of history, at most [`DEV_CHAT_HISTORY_SIZE`]
/// messages, so a reload shows the conversation again and a reconnect
/// recovers what it missed.
fn dev_chat_namespace() -> super::Namespace {
    let mut chat = super::Namespace {
        name: "chat".into(),
        ..Default::default()
    };
    let o = &mut chat.options;
    o.presence = true;
    o.join_leave = true;
    o.history_size = DEV_CHAT_HISTORY_SIZE;
    o.history_ttl = super::Dur::secs(24 * 3600);
    o.force_recovery = true;
    chat
}

/// Messages the `--dev` chat keeps; older ones drop out of its history.
const DEV_CHAT_HISTORY_SIZE: usize = 100;

#[cfg(test)]
mod tests;
