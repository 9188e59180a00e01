//! What both binaries share on their command line: the Redis flags, the local control socket,
//! the log format and logging set-up, and optional TOML configuration files.
//!
//! Every flag of a binary can also be set in a TOML file given with `--config PATH` (or the
//! binary's `*_CONFIG` environment variable): a top-level key per flag, spelled like the flag
//! (`port_base = 40000` or `"port-base" = 40000`); `true` turns a switch on and `false` turns it
//! off (also when an environment variable turned it on); an array repeats a repeatable flag. The file's settings are inserted before the command-line arguments, so the
//! command line wins; both win over environment variables and defaults. Unknown keys are rejected
//! by the argument parser, so a typo fails at start with a clear message.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::RedisSettings;

/// The Redis flags both binaries share (cluster mode).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: cluster mode (node registry, room placement, relays between any signaling and
    /// any node). Without it (and without sentinels), single-node mode with no Redis. With
    /// sentinels, only its credentials and database number are used.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel (keys use it as a hash tag: `{sfu}:…`).
    #[arg(long, env = "SFU_REDIS_PREFIX", default_value = "sfu")]
    pub redis_prefix: String,
    /// A Sentinel (`host:port`) to ask for the Redis master (repeatable): failovers are followed.
    #[arg(
        long = "redis-sentinel",
        env = "SFU_REDIS_SENTINELS",
        value_delimiter = ','
    )]
    pub redis_sentinels: Vec<String>,
    /// The master's name at the sentinels.
    #[arg(long, env = "SFU_REDIS_MASTER_NAME", default_value = "mymaster")]
    pub redis_master_name: String,
}

impl RedisArgs {
    /// The Redis settings, or `None` for single-node mode.
    pub fn settings(&self) -> Option<RedisSettings> {
        if self.redis_url.is_none() && self.redis_sentinels.is_empty() {
            return None;
        }
        let url = self
            .redis_url
            .clone()
            .unwrap_or_else(|| "redis://127.0.0.1/".into());
        let mut s = RedisSettings::new(url);
        s.prefix = self.redis_prefix.clone();
        s.sentinels = self.redis_sentinels.clone();
        s.master_name = self.redis_master_name.clone();
        Some(s)
    }

    /// Where the registry is, for logs (no credentials).
    pub fn describe(&self) -> String {
        if self.redis_sentinels.is_empty() {
            let url = self.redis_url.as_deref().unwrap_or("");
            // Drop `user:password@`.
            match url.split_once('@') {
                Some((scheme, host)) => {
                    format!("{}//{host}", scheme.split("//").next().unwrap_or("redis:"))
                }
                None => url.to_string(),
            }
        } else {
            format!(
                "sentinels {} (master {:?})",
                self.redis_sentinels.join(","),
                self.redis_master_name
            )
        }
    }
}

/// Where the local control socket is, and who may be at its other end (both binaries).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlSocketArgs {
    /// Path of the control socket between signaling and dataplane (default:
    /// `$XDG_RUNTIME_DIR/sfu/dataplane.sock`, `/run/sfu/dataplane.sock` for root, else
    /// `/tmp/sfu-<uid>/dataplane.sock`; a missing directory is created with mode 0700).
    #[arg(long, env = "SFU_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
    /// A user id (besides our own and root) allowed at the other end of the control socket
    /// (repeatable; the socket mode must let it in too).
    #[arg(
        long = "control-peer-uid",
        env = "SFU_CONTROL_PEER_UIDS",
        value_delimiter = ','
    )]
    pub control_peer_uids: Vec<u32>,
}

impl ControlSocketArgs {
    /// The socket path, or the default one.
    pub fn path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(control::local::default_socket_path)
    }
}

/// Logging flags (both binaries).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "SFU_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
}

impl LogArgs {
    /// Install the global tracing subscriber: `RUST_LOG` if set, else `default_filter`; to
    /// stderr, human-readable (colour on a terminal) or one JSON object per line.
    pub fn init_logging(&self, default_filter: &str) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if self.log_format == "json" {
            builder.json().init();
        } else {
            builder.init();
        }
    }
}

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid TOML in {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key {key:?} must be a string, number, boolean or array of those")]
    Unsupported { path: String, key: String },
}

/// The process arguments with the config file's settings spliced in after the program name.
/// `env_var` names the environment variable that may hold the config path.
pub fn args_with_config(env_var: &str) -> Result<Vec<OsString>, ConfigError> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let path = config_path(&args).or_else(|| std::env::var(env_var).ok());
    match path {
        None => Ok(args),
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let from_file = toml_to_args(&text, &p)?;
            let mut out = Vec::with_capacity(args.len() + from_file.len());
            out.extend(args.first().cloned());
            out.extend(from_file.into_iter().map(OsString::from));
            out.extend(args.into_iter().skip(1));
            Ok(out)
        }
    }
}

fn config_path(args: &[OsString]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(|v| v.to_string_lossy().into_owned());
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
    }
    None
}

/// Turn a TOML document into `--flag value` arguments.
pub fn toml_to_args(text: &str, path: &str) -> Result<Vec<String>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Option<String> {
            match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                _ => None,
            }
        };
        match &value {
            toml::Value::Boolean(true) => out.push(flag),
            // Switches take an optional value (`--no-batching=false`), so a file can turn off
            // what an environment variable turned on.
            toml::Value::Boolean(false) => out.push(format!("{flag}=false")),
            toml::Value::Array(items) => {
                for item in items {
                    let v = scalar(item).ok_or_else(|| ConfigError::Unsupported {
                        path: path.into(),
                        key: key.clone(),
                    })?;
                    out.push(flag.clone());
                    out.push(v);
                }
            }
            v => {
                let v = scalar(v).ok_or_else(|| ConfigError::Unsupported {
                    path: path.into(),
                    key: key.clone(),
                })?;
                out.push(flag);
                out.push(v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_becomes_flags() {
        let args = toml_to_args(
            "port_base = 41000\npublic-ip = \"10.0.0.1\"\nno_batching = true\nno_pin = false\nice_server = [\"stun:a\", \"stun:b\"]\nrate = 2.5\n",
            "x.toml",
        )
        .expect("valid");
        assert_eq!(
            args,
            [
                "--ice-server",
                "stun:a",
                "--ice-server",
                "stun:b",
                "--no-batching",
                "--no-pin=false",
                "--port-base",
                "41000",
                "--public-ip",
                "10.0.0.1",
                "--rate",
                "2.5"
            ]
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(
            toml_to_args("port_base = ", "x.toml"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            toml_to_args("[table]\na = 1", "x.toml"),
            Err(ConfigError::Unsupported { .. })
        ));
        assert!(matches!(
            toml_to_args("a = [[1]]", "x.toml"),
            Err(ConfigError::Unsupported { .. })
        ));
    }

    #[test]
    fn finds_the_config_flag() {
        let args: Vec<OsString> = ["bin", "--x", "1", "--config", "a.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args).as_deref(), Some("a.toml"));
        let args: Vec<OsString> = ["bin", "--config=b.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&args).as_deref(), Some("b.toml"));
    }
}
