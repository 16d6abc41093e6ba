//! `convoflow serve` settings: a TOML file, overridden by environment variables, overridden by
//! flags (clap reads both). Everything has a default, so `convoflow serve` alone runs the embedded
//! deployment on 127.0.0.1:8080 with the data in `./data`.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data = "./data"
//! # nats = "nats://127.0.0.1:4222"        # the scaled deployment's bus
//! # clickhouse = "http://127.0.0.1:8123"  # and store
//! tenants = "tenants.json"                # time zones, phone_number_ids, funnels (SPEC §6)
//! workers = 2
//! snapshot_interval = "60s"
//!
//! [limits]
//! body_bytes = 8388608
//! requests_per_second = 50
//! burst = 100
//! sql_timeout = "10s"
//! sql_max_rows = 100000
//! sql_max_result_bytes = 67108864   # a larger result fails the query
//! sql_memory_bytes = 268435456      # what the queries running at once may take together
//! sql_concurrent = 4                 # queries running at once
//! sql_per_key = 2                    # and for one API key
//! feed_chunks = 1024                # ~256 KiB chunks the feed holds for slow subscribers
//! header_timeout = "10s"             # a request's headers must arrive within this
//! body_timeout = "10s"               # longest pause inside a request body
//! request_timeout = "60s"            # longest time to answer a request
//! max_connections = 1024             # more wait to be accepted
//!
//! [[api_keys]]
//! key = "a long random string"
//! tenant = "acme"          # leave out for an admin key (every tenant)
//!
//! [whatsapp.acme]
//! app_secret = "…"         # Meta app secret: verifies X-Hub-Signature-256
//! verify_token = "…"       # answered in the GET handshake
//! ```

use convoflow_api::{ApiKey, Limits, ServerLimits, WhatsAppApp};
use convoflow_events::parse_duration_ms;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    nats: Option<String>,
    clickhouse: Option<String>,
    tenants: Option<PathBuf>,
    workers: Option<usize>,
    snapshot_interval: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    api_keys: Vec<FileKey>,
    #[serde(default)]
    whatsapp: HashMap<String, FileWhatsApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    body_bytes: Option<usize>,
    requests_per_second: Option<f64>,
    burst: Option<f64>,
    sql_timeout: Option<String>,
    sql_max_rows: Option<usize>,
    sql_max_result_bytes: Option<usize>,
    sql_memory_bytes: Option<usize>,
    sql_concurrent: Option<usize>,
    sql_per_key: Option<usize>,
    feed_chunks: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    request_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    key: String,
    tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWhatsApp {
    app_secret: String,
    verify_token: String,
}

/// What flags and environment variables gave (they win over the file).
#[derive(Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub nats: Option<String>,
    pub clickhouse: Option<String>,
    pub tenants: Option<PathBuf>,
    pub workers: Option<usize>,
    /// An admin key from `CONVOFLOW_ADMIN_KEY`.
    pub admin_key: Option<String>,
    pub demo: bool,
}

#[derive(Debug)]
pub struct ServeConfig {
    pub listen: String,
    pub data: PathBuf,
    pub nats: Option<String>,
    pub clickhouse: Option<String>,
    pub tenants: Option<PathBuf>,
    pub workers: usize,
    pub snapshot_interval: Duration,
    pub limits: Limits,
    pub server: ServerLimits,
    pub api_keys: Vec<ApiKey>,
    pub whatsapp: HashMap<String, WhatsAppApp>,
    pub demo: bool,
}

fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration_ms(text)
        .map(|ms| Duration::from_millis(ms as u64))
        .ok_or_else(|| ConfigError::Invalid(format!("{field}: bad duration `{text}` (expected e.g. 10s, 5m)")))
}

impl ServeConfig {
    pub fn load(overrides: Overrides) -> Result<Self, ConfigError> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // Paths in the file are relative to the file.
        let base = overrides.config.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let relative = |path: PathBuf| if path.is_absolute() { path } else { base.join(path) };
        let defaults = Limits::default();
        let limits = Limits {
            body_bytes: file.limits.body_bytes.unwrap_or(defaults.body_bytes),
            requests_per_second: file.limits.requests_per_second.unwrap_or(defaults.requests_per_second),
            burst: file.limits.burst.unwrap_or(defaults.burst),
            sql_timeout: file
                .limits
                .sql_timeout
                .as_deref()
                .map(|t| duration("limits.sql_timeout", t))
                .transpose()?
                .unwrap_or(defaults.sql_timeout),
            sql_max_rows: file.limits.sql_max_rows.unwrap_or(defaults.sql_max_rows),
            sql_max_result_bytes: file.limits.sql_max_result_bytes.unwrap_or(defaults.sql_max_result_bytes),
            sql_memory_bytes: file.limits.sql_memory_bytes.unwrap_or(defaults.sql_memory_bytes),
            sql_concurrent: file.limits.sql_concurrent.unwrap_or(defaults.sql_concurrent).max(1),
            sql_per_key: file.limits.sql_per_key.unwrap_or(defaults.sql_per_key).max(1),
            feed_chunks: file.limits.feed_chunks.unwrap_or(defaults.feed_chunks).max(1),
        };
        if limits.requests_per_second <= 0.0 || limits.burst < 1.0 {
            return Err(ConfigError::Invalid("limits: requests_per_second must be > 0 and burst ≥ 1".to_owned()));
        }
        let mut api_keys = Vec::new();
        for key in file.api_keys {
            if key.key.len() < 16 {
                let owner = key.tenant.as_deref().unwrap_or("admin");
                return Err(ConfigError::Invalid(format!(
                    "api_keys: the key of `{owner}` is shorter than 16 characters"
                )));
            }
            api_keys.push(ApiKey { key: key.key, tenant: key.tenant });
        }
        if let Some(key) = overrides.admin_key.filter(|k| !k.is_empty()) {
            api_keys.push(ApiKey { key, tenant: None });
        }
        let mut whatsapp = HashMap::new();
        for (tenant, app) in file.whatsapp {
            if app.app_secret.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "whatsapp.{tenant}.app_secret is empty: webhooks could not be verified"
                )));
            }
            whatsapp.insert(tenant, WhatsAppApp { app_secret: app.app_secret, verify_token: app.verify_token });
        }
        let workers = overrides
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let server_defaults = ServerLimits::default();
        let timeout = |field: &str, text: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            text.as_deref().map(|t| duration(field, t)).transpose().map(|d| d.unwrap_or(default))
        };
        let server = ServerLimits {
            header_timeout: timeout(
                "limits.header_timeout",
                &file.limits.header_timeout,
                server_defaults.header_timeout,
            )?,
            body_timeout: timeout("limits.body_timeout", &file.limits.body_timeout, server_defaults.body_timeout)?,
            request_timeout: timeout(
                "limits.request_timeout",
                &file.limits.request_timeout,
                server_defaults.request_timeout,
            )?,
            max_connections: file.limits.max_connections.unwrap_or(server_defaults.max_connections).max(1),
        };
        Ok(ServeConfig {
            server,
            listen: overrides.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            data: overrides.data.or(file.data.map(relative)).unwrap_or_else(|| PathBuf::from("./data")),
            nats: overrides.nats.or(file.nats),
            clickhouse: overrides.clickhouse.or(file.clickhouse),
            tenants: overrides.tenants.or(file.tenants.map(relative)),
            workers,
            snapshot_interval: file
                .snapshot_interval
                .as_deref()
                .map(|t| duration("snapshot_interval", t))
                .transpose()?
                .unwrap_or(Duration::from_secs(60)),
            limits,
            api_keys,
            whatsapp,
            demo: overrides.demo,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    toml::from_str(&text)
        .map_err(|error| ConfigError::Parse { path: path.display().to_string(), message: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("convoflow.toml");
        std::fs::write(
            &path,
            r#"listen = "0.0.0.0:9000"
data = "d"
[limits]
burst = 5
sql_timeout = "2s"
[[api_keys]]
key = "0123456789abcdef-acme"
tenant = "acme"
[whatsapp.acme]
app_secret = "s"
verify_token = "v"
"#,
        )
        .expect("write");
        let config = ServeConfig::load(Overrides {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:1".to_owned()),
            ..Overrides::default()
        })
        .expect("load");
        assert_eq!(config.listen, "127.0.0.1:1");
        assert_eq!(config.data, dir.path().join("d"));
        assert_eq!(config.limits.burst, 5.0);
        assert_eq!(config.limits.sql_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.body_bytes, Limits::default().body_bytes);
        assert_eq!(config.api_keys[0].tenant.as_deref(), Some("acme"));
        assert_eq!(config.whatsapp["acme"].verify_token, "v");
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = \"x\"\n").expect("write");
        let error = ServeConfig::load(Overrides { config: Some(path.clone()), ..Overrides::default() })
            .expect_err("unknown key");
        assert!(error.to_string().contains("listn"), "{error}");
        std::fs::write(&path, "[[api_keys]]\nkey = \"short\"\n").expect("write");
        let error = ServeConfig::load(Overrides { config: Some(path), ..Overrides::default() }).expect_err("short key");
        assert!(error.to_string().contains("shorter than 16"), "{error}");
    }
}
