//! Loading and validating the worker configuration.
//!
//! `siphon-worker --config worker.yaml` reads a [`WorkerConfig`], resolves the
//! secrets named by `*Env` fields from the environment, and validates every
//! field before anything connects. Each problem is reported with its field path
//! (`kafka.bootstrapServers: required`), all problems at once.

use std::time::Duration;

use siphon_crds::capture::{CaptureMode, SslMode};
use siphon_crds::duration;
use siphon_crds::polling::Lateness;
pub use siphon_crds::worker_config::WorkerConfig;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `kafka.bootstrapServers` or `tables[1].name`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid worker YAML: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

/// Secrets resolved from the environment; never logged.
#[derive(Clone, Default)]
pub struct Secrets {
    pub pg_user: String,
    pub pg_password: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("pg_user", &self.pg_user)
            .field(
                "pg_password",
                &self.pg_password.as_ref().map(|_| "<redacted>"),
            )
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Settings derived from the configuration, in the units the runtime uses.
#[derive(Debug, Clone)]
pub struct Derived {
    pub heartbeat_interval: Duration,
    pub poll_interval: Duration,
    /// `polling.lateness`, read.
    pub lateness: Lateness,
}

/// A configuration that passed validation, with its secrets.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: WorkerConfig,
    pub secrets: Secrets,
    pub derived: Derived,
}

/// Read, parse and validate a configuration file.
pub fn load(path: &std::path::Path) -> Result<Validated, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    let config: WorkerConfig =
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })?;
    validate(config, &|name| std::env::var(name).ok())
}

/// Validate a parsed configuration; `env` looks up environment variables.
pub fn validate(
    mut config: WorkerConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Validated, ConfigError> {
    let mut errors = Vec::new();
    let tls_error = resolve_tls_dir(&mut config.kafka);
    let mut err = |path: &str, message: &str| {
        errors.push(FieldError {
            path: path.to_string(),
            message: message.to_string(),
        })
    };

    if config.name.trim().is_empty() {
        err(
            "name",
            "required: a name for this capture (used in the offsets key and transactional id)",
        );
    }

    let pg = &config.postgres;
    if pg.host.trim().is_empty() {
        err("postgres.host", "required");
    }
    if pg.port == 0 {
        err("postgres.port", "must be between 1 and 65535");
    }
    if pg.database.trim().is_empty() {
        err("postgres.database", "required");
    }
    let pg_user = resolve(
        &pg.user,
        &pg.user_env,
        env,
        "postgres.user",
        "postgres.userEnv",
        &mut err,
    );
    let pg_password = resolve(
        &pg.password,
        &pg.password_env,
        env,
        "postgres.password",
        "postgres.passwordEnv",
        &mut err,
    );
    if pg_user.is_none() && pg.user.is_none() && pg.user_env.is_none() {
        err(
            "postgres.user",
            "required (or postgres.userEnv naming an environment variable)",
        );
    }
    if matches!(pg.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && pg.ssl_root_cert.is_none()
    {
        err(
            "postgres.sslRootCert",
            "required when sslMode is verify-ca or verify-full: the CA certificate file",
        );
    }

    if config.tables.is_empty() {
        err(
            "tables",
            "required: list at least one schema-qualified table",
        );
    }
    for (i, table) in config.tables.iter().enumerate() {
        match table.name.split_once('.') {
            Some((schema, name))
                if !schema.is_empty() && !name.is_empty() && !name.contains('.') => {}
            _ => err(
                &format!("tables[{i}].name"),
                &format!(
                    "{:?} is not schema-qualified: write schema.table, e.g. public.orders",
                    table.name
                ),
            ),
        }
    }

    let mut heartbeat_interval = Duration::from_secs(10);
    let mut poll_interval = Duration::from_secs(5);
    let mut lateness = Lateness::None;
    match config.mode {
        CaptureMode::Logical => {
            if config.logical.slot_name.is_empty() {
                err("logical.slotName", "required in Logical mode");
            } else if !valid_slot_name(&config.logical.slot_name) {
                err(
                    "logical.slotName",
                    "use only lowercase letters, digits and underscores, at most 63 bytes",
                );
            }
            if config.logical.publication_name.is_empty() {
                err("logical.publicationName", "required in Logical mode");
            }
            match duration::parse_at_least(
                &config.logical.heartbeat_interval,
                duration::MIN_HEARTBEAT,
            ) {
                Ok(d) => heartbeat_interval = d,
                Err(e) => err("logical.heartbeatInterval", &e),
            }
            if config.snapshot.chunk_size == 0 {
                err("snapshot.chunkSize", "must be at least 1");
            }
        }
        CaptureMode::Polling => match &config.polling {
            None => err(
                "polling",
                "required when mode is Polling (set polling.cursorColumn)",
            ),
            Some(p) => {
                if p.cursor_column.trim().is_empty() {
                    err("polling.cursorColumn", "required");
                }
                match duration::parse_at_least(&p.interval, duration::MIN_POLL_INTERVAL) {
                    Ok(d) => poll_interval = d,
                    Err(e) => err("polling.interval", &e),
                }
                match Lateness::parse(p.lateness.as_deref()) {
                    Ok(l) => lateness = l,
                    Err(e) => err("polling.lateness", &e),
                }
                if p.batch_size == 0 {
                    err("polling.batchSize", "must be at least 1");
                }
                if p.notify {
                    match &config.notify {
                        None => err(
                            "notify",
                            "required with polling.notify: the channel and deletesTable the triggers use (the operator fills it in)",
                        ),
                        Some(n) => {
                            if n.channel.trim().is_empty() {
                                err("notify.channel", "required");
                            }
                            if n.deletes_table.split_once('.').is_none() {
                                err("notify.deletesTable", "write schema.table");
                            }
                        }
                    }
                }
                for (i, table) in config.tables.iter().enumerate() {
                    if table.query.is_some() && table.key_columns.is_empty() {
                        err(
                            &format!("tables[{i}].keyColumns"),
                            "required with a query: the columns of its rows that identify a row",
                        );
                    }
                    if table.name.ends_with(".*") {
                        err(
                            &format!("tables[{i}].name"),
                            "polling needs explicit table names; `schema.*` is only for mode Logical",
                        );
                    }
                }
            }
        },
    }

    let kafka = &config.kafka;
    if kafka.bootstrap_servers.trim().is_empty() {
        err(
            "kafka.bootstrapServers",
            "required: host:port of at least one broker",
        );
    }
    if kafka.topic_prefix.trim().is_empty() {
        err(
            "kafka.topicPrefix",
            "required: topics are named <topicPrefix>.<schema>.<table>",
        );
    } else if !kafka
        .topic_prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        err(
            "kafka.topicPrefix",
            "use only letters, digits, '.', '_' and '-' (Kafka topic rules)",
        );
    }
    if !matches!(
        kafka.compression.as_str(),
        "none" | "gzip" | "snappy" | "lz4" | "zstd"
    ) {
        err("kafka.compression", "one of none, gzip, snappy, lz4, zstd");
    }
    for key in kafka.options.keys() {
        if let Some(why) = siphon_crds::kafka_options::reserved_reason(key) {
            err(&format!("kafka.options.{key}"), why);
        }
    }
    if let Some(e) = &tls_error {
        err("kafka.tlsDir", e);
    }
    let sasl_username = kafka.sasl_username_env.as_ref().and_then(|n| env(n));
    let sasl_password = kafka.sasl_password_env.as_ref().and_then(|n| env(n));
    if kafka.security_protocol.starts_with("sasl") {
        if kafka.sasl_mechanism.is_none() {
            err(
                "kafka.saslMechanism",
                "required with a SASL security protocol",
            );
        }
        if sasl_username.is_none() {
            err(
                "kafka.saslUsernameEnv",
                "must name a set environment variable holding the SASL user",
            );
        }
        if sasl_password.is_none() {
            err(
                "kafka.saslPasswordEnv",
                "must name a set environment variable holding the SASL password",
            );
        }
    }

    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    Ok(Validated {
        secrets: Secrets {
            pg_user: pg_user.unwrap_or_default(),
            pg_password,
            sasl_username,
            sasl_password,
        },
        derived: Derived {
            heartbeat_interval,
            poll_interval,
            lateness,
        },
        config,
    })
}

fn resolve(
    inline: &Option<String>,
    env_name: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    inline_path: &str,
    env_path: &str,
    err: &mut dyn FnMut(&str, &str),
) -> Option<String> {
    match (inline, env_name) {
        (Some(_), Some(_)) => {
            err(
                inline_path,
                &format!("set either {inline_path} or {env_path}, not both"),
            );
            None
        }
        (Some(v), None) => Some(v.clone()),
        (None, Some(name)) => match env(name) {
            Some(v) => Some(v),
            None => {
                err(env_path, &format!("environment variable {name} is not set"));
                None
            }
        },
        (None, None) => None,
    }
}

/// Slot names: lowercase letters, digits, underscores; at most 63 bytes.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Fill the TLS file locations from `kafka.tlsDir` (the mounted auth
/// Secret): `ca.crt`, `tls.crt` and `tls.key` where present. A certificate
/// without its key (or a key without its certificate) is an error.
fn resolve_tls_dir(kafka: &mut siphon_crds::worker_config::KafkaConfig) -> Option<String> {
    let dir = std::path::PathBuf::from(kafka.tls_dir.as_ref()?);
    let found = |name: &str| {
        let path = dir.join(name);
        path.is_file().then(|| path.display().to_string())
    };
    if kafka.ssl_ca_location.is_none() {
        kafka.ssl_ca_location = found("ca.crt");
    }
    match (found("tls.crt"), found("tls.key")) {
        (Some(cert), Some(key)) => {
            kafka.ssl_certificate_location = Some(cert);
            kafka.ssl_key_location = Some(key);
            None
        }
        (None, None) => None,
        (Some(_), None) => Some(format!(
            "{} holds tls.crt but no tls.key: add the client key to the Kafka auth Secret, or remove tls.crt",
            dir.display()
        )),
        (None, Some(_)) => Some(format!(
            "{} holds tls.key but no tls.crt: add the client certificate to the Kafka auth Secret, or remove tls.key",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_tls_folder_gives_the_files_it_holds_and_a_lone_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("siphon-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut kafka = siphon_crds::worker_config::KafkaConfig {
            tls_dir: Some(dir.display().to_string()),
            ..Default::default()
        };
        // Empty: the system's CAs, no client certificate.
        assert_eq!(resolve_tls_dir(&mut kafka), None);
        assert_eq!(kafka.ssl_ca_location, None);
        std::fs::write(dir.join("ca.crt"), "ca").unwrap();
        std::fs::write(dir.join("tls.crt"), "cert").unwrap();
        let lone = resolve_tls_dir(&mut kafka).unwrap();
        assert!(lone.contains("no tls.key"), "{lone}");
        std::fs::write(dir.join("tls.key"), "key").unwrap();
        assert_eq!(resolve_tls_dir(&mut kafka), None);
        assert!(
            kafka
                .ssl_ca_location
                .as_deref()
                .is_some_and(|p| p.ends_with("ca.crt"))
        );
        assert!(
            kafka
                .ssl_certificate_location
                .as_deref()
                .is_some_and(|p| p.ends_with("tls.crt"))
        );
        assert!(
            kafka
                .ssl_key_location
                .as_deref()
                .is_some_and(|p| p.ends_with("tls.key"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn minimal() -> WorkerConfig {
        serde_yaml::from_str(
            r#"
name: shop
postgres: { host: 127.0.0.1, port: 5432, database: shop, user: siphon, passwordEnv: PGPW }
tables: [{ name: public.orders }]
logical: { slotName: siphon_shop, publicationName: siphon_shop }
kafka: { bootstrapServers: "127.0.0.1:9092", topicPrefix: shop }
"#,
        )
        .unwrap()
    }

    fn env_with_pw(name: &str) -> Option<String> {
        (name == "PGPW").then(|| "secret".to_string())
    }

    fn paths(err: ConfigError) -> Vec<String> {
        match err {
            ConfigError::Invalid(errors) => errors.into_iter().map(|e| e.path).collect(),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_minimal_config_is_valid_and_resolves_secrets() {
        let v = validate(minimal(), &env_with_pw).unwrap();
        assert_eq!(v.secrets.pg_user, "siphon");
        assert_eq!(v.secrets.pg_password.as_deref(), Some("secret"));
        assert_eq!(v.derived.heartbeat_interval, Duration::from_secs(10));
        assert!(
            !format!("{:?}", v.secrets).contains("secret"),
            "secrets must not reach Debug"
        );
    }

    #[test]
    fn missing_fields_are_reported_with_their_paths() {
        let mut c = minimal();
        c.kafka.bootstrap_servers.clear();
        c.postgres.host.clear();
        c.tables[0].name = "orders".into();
        let paths = paths(validate(c, &env_with_pw).unwrap_err());
        assert_eq!(
            paths,
            vec!["postgres.host", "tables[0].name", "kafka.bootstrapServers"]
        );
    }

    #[test]
    fn an_unset_environment_variable_names_itself() {
        let err = validate(minimal(), &|_| None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("postgres.passwordEnv: environment variable PGPW is not set"),
            "{text}"
        );
    }

    #[test]
    fn reserved_kafka_options_are_refused() {
        let mut c = minimal();
        c.kafka
            .options
            .insert("enable.idempotence".into(), "false".into());
        c.kafka.options.insert("linger.ms".into(), "10".into());
        assert_eq!(
            paths(validate(c, &env_with_pw).unwrap_err()),
            vec!["kafka.options.enable.idempotence"]
        );
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(valid_slot_name("siphon_shop_1"));
        assert!(!valid_slot_name("Siphon"));
        assert!(!valid_slot_name(&"a".repeat(64)));
        let mut c = minimal();
        c.logical.slot_name = "bad-name".into();
        assert_eq!(
            paths(validate(c, &env_with_pw).unwrap_err()),
            vec!["logical.slotName"]
        );
    }

    #[test]
    fn polling_needs_its_block() {
        let mut c = minimal();
        c.mode = CaptureMode::Polling;
        assert_eq!(
            paths(validate(c, &env_with_pw).unwrap_err()),
            vec!["polling"]
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_the_parser() {
        let err = serde_yaml::from_str::<WorkerConfig>("name: x\nkafak: {}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `kafak`"), "{err}");
    }
}
