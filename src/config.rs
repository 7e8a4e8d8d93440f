//! Typed settings, parsed once from flags and environment variables and validated.
//!
//! The variable names are the contract of `PRODUCT.md` §2 (the first group is the old
//! Python service's own). `.env`, `Mongo.env` and `Email.env` are read by the binary
//! before parsing (see [`load_env_files`]); real environment variables win.
//! Nothing here ever prints a secret: secrets are [`SecretString`] and `--help` hides
//! their environment values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// Minimum signing secret length in production (bytes).
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 64;
/// Minimum signing secret length in every environment (bytes), for `JWT_SECRET_KEY` and
/// every `JWT_PREVIOUS_SECRET_KEYS` entry (the generated development secret has 128).
pub const MIN_SECRET_BYTES: usize = 32;
/// A production secret must measure at least this many bits: its length times the
/// Shannon entropy of its byte frequencies. The estimate undercounts short random
/// strings: 64 random hex digits (256 random bits) measure about 240.
pub const MIN_SECRET_ENTROPY_BITS: f64 = 192.0;
/// A production secret must not repeat itself: at least this share of its 8-byte
/// windows must be distinct (random strings: all of them).
pub const MIN_DISTINCT_WINDOW_SHARE: f64 = 0.9;

/// The entropy estimate of [`MIN_SECRET_ENTROPY_BITS`]: length × Shannon entropy of the
/// byte frequencies, in bits.
pub fn estimated_entropy_bits(secret: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &b in secret {
        counts[b as usize] += 1;
    }
    let n = secret.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_byte * n
}

/// The share of distinct 8-byte windows of [`MIN_DISTINCT_WINDOW_SHARE`].
fn distinct_window_share(secret: &[u8]) -> f64 {
    const WINDOW: usize = 8;
    if secret.len() < WINDOW {
        return 0.0;
    }
    let windows: Vec<&[u8]> = secret.windows(WINDOW).collect();
    let distinct: std::collections::HashSet<&[u8]> = windows.iter().copied().collect();
    distinct.len() as f64 / windows.len() as f64
}

/// Why `secret` may not sign tokens, if it may not. Every environment: at least
/// [`MIN_SECRET_BYTES`]. Production also judges quality: at least
/// [`MIN_PRODUCTION_SECRET_BYTES`], an entropy estimate of at least
/// [`MIN_SECRET_ENTROPY_BITS`], and no repeated pattern ([`MIN_DISTINCT_WINDOW_SHARE`]).
/// `openssl rand -hex 64` or `openssl rand -base64 48` pass; 64 × "k" or a short phrase
/// repeated do not.
pub fn secret_weakness(secret: &[u8], production: bool) -> Option<String> {
    let min = if production {
        MIN_PRODUCTION_SECRET_BYTES
    } else {
        MIN_SECRET_BYTES
    };
    if secret.len() < min {
        return Some(format!(
            "is {} bytes; at least {min} are required",
            secret.len()
        ));
    }
    if !production {
        return None;
    }
    let bits = estimated_entropy_bits(secret);
    if bits < MIN_SECRET_ENTROPY_BITS {
        return Some(format!(
            "looks too predictable (about {bits:.0} bits of entropy; at least {MIN_SECRET_ENTROPY_BITS:.0} are required)"
        ));
    }
    if distinct_window_share(secret) < MIN_DISTINCT_WINDOW_SHARE {
        return Some("repeats a pattern; use random bytes".into());
    }
    None
}

/// How to make a good secret, for error messages.
const SECRET_ADVICE: &str = "generate one with `openssl rand -hex 64`";
/// The bcrypt cost production requires (SECURITY.md 13).
pub const PRODUCTION_BCRYPT_COST: u32 = 12;

/// `MONGO_TRANSACTIONS`: whether flows of several writes may use transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MongoTransactions {
    /// Where the server has them.
    Auto,
    /// Never: ordered writes.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP upgraded with STARTTLS (required).
    Starttls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
    /// No encryption at all (local relays and tests only).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    Smtp,
    Sendgrid,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Every setting, with the environment variable that sets it.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// `development` or `production`.
    #[arg(long, env = "ENVIRONMENT", value_enum, default_value = "development")]
    pub environment: Environment,

    /// Listen address [default: 127.0.0.1; production: 0.0.0.0].
    #[arg(long, env = "HOST")]
    pub host: Option<String>,

    /// Listen port (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// `sqlite:PATH` or a `mongodb://` / `mongodb+srv://` URL; wins over MONGO_URI
    /// [default: sqlite:introgy.db].
    #[arg(long, env = "DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// MongoDB connection string (selects the MongoDB store).
    #[arg(long, env = "MONGO_URI", value_parser = secret, hide_env_values = true)]
    pub mongo_uri: Option<SecretString>,

    /// MongoDB database name when the URL has none.
    #[arg(long, env = "MONGO_DB", default_value = "introgy")]
    pub mongo_db: String,

    /// `auto`: reset-password, delete-account and register's code+mail run as one
    /// transaction where the MongoDB server has them (replica set, Atlas, mongos);
    /// `off`: always as ordered writes (the standalone fallback).
    #[arg(long, env = "MONGO_TRANSACTIONS", value_enum, default_value_t = MongoTransactions::Auto)]
    pub mongo_transactions: MongoTransactions,

    /// HS512 signing secret, at least 64 bytes in production [development: generated
    /// once and kept next to the SQLite file].
    #[arg(long, env = "JWT_SECRET_KEY", value_parser = secret, hide_env_values = true)]
    pub jwt_secret_key: Option<SecretString>,

    /// Comma-separated earlier signing secrets, still accepted for verification during a
    /// rotation.
    #[arg(long, env = "JWT_PREVIOUS_SECRET_KEYS", value_parser = secret, value_delimiter = ',', hide_env_values = true)]
    pub jwt_previous_secret_keys: Vec<SecretString>,

    /// SMTP server host name.
    #[arg(long, env = "SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// SMTP server port.
    #[arg(long, env = "SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,

    /// SMTP user name (no authentication when empty).
    #[arg(long, env = "SMTP_USER")]
    pub smtp_user: Option<String>,

    /// SMTP password.
    #[arg(long, env = "SMTP_PASSWORD", value_parser = secret, hide_env_values = true)]
    pub smtp_password: Option<SecretString>,

    /// PEM file of a CA to trust for the SMTP server's certificate (in addition to the
    /// public roots; for private relays).
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// `starttls`, `tls` or `none` [default: tls on port 465, else starttls].
    #[arg(long, env = "SMTP_TLS", value_enum)]
    pub smtp_tls: Option<SmtpTls>,

    /// SendGrid API key (selects the SendGrid transport).
    #[arg(long, env = "SENDGRID_API_KEY", value_parser = secret, hide_env_values = true)]
    pub sendgrid_api_key: Option<SecretString>,

    /// SendGrid endpoint (for proxies and tests).
    #[arg(
        long,
        env = "SENDGRID_API_URL",
        default_value = "https://api.sendgrid.com/v3/mail/send"
    )]
    pub sendgrid_api_url: String,

    /// Force the mail transport: `smtp`, `sendgrid` or `log` [default: inferred:
    /// SendGrid key, else SMTP host, else log (development only)].
    #[arg(long, env = "EMAIL_TRANSPORT", value_enum)]
    pub email_transport: Option<TransportKind>,

    /// How long one mail delivery attempt (SMTP or SendGrid) may take, in seconds.
    #[arg(long, env = "MAIL_TIMEOUT_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub mail_timeout_seconds: u64,

    /// Sender address.
    #[arg(long, env = "FROM_EMAIL", default_value = "support@introgy.ai")]
    pub from_email: String,

    /// Sender display name.
    #[arg(long, env = "EMAIL_FROM_NAME", default_value = "Introgy")]
    pub email_from_name: String,

    /// User-facing site used in email links.
    #[arg(long, env = "FRONTEND_URL", default_value = "https://introgy.ai")]
    pub frontend_url: String,

    /// Comma-separated allowed CORS origins [default: FRONTEND_URL, plus
    /// localhost:3000/5173/8000 in development].
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Access token lifetime in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub access_token_ttl_seconds: u64,

    /// Refresh token / session absolute lifetime in seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECONDS", default_value_t = 2_592_000, value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub refresh_token_ttl_seconds: u64,

    /// One-time code lifetime in seconds (at most 600, ASVS's maximum).
    #[arg(long, env = "OTP_TTL_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub otp_ttl_seconds: u64,

    /// Comma-separated CIDRs whose X-Forwarded-For is believed (behind nginx on the
    /// same host: 127.0.0.1/32,::1/128).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,

    /// Requests per minute one client IP may make to the unauthenticated auth routes
    /// (register, codes, login, reset, refresh).
    #[arg(long, env = "AUTH_RATE_LIMIT_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_rate_limit_per_minute: u32,

    /// bcrypt cost; production refuses anything below 12.
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How many bcrypt hashes may run at once [default: the number of CPUs].
    #[arg(long, env = "HASH_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub hash_concurrency: Option<u32>,

    /// Folder for local state (the development signing secret) [default: the SQLite
    /// file's folder; the working directory with MongoDB].
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Upper bound on one request's handling time, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout_seconds: u64,

    /// How long a store operation may wait for the database, in seconds.
    #[arg(long, env = "STORE_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub store_timeout_seconds: u64,

    /// Seconds a connection has to deliver a complete request head, counted from when
    /// it opens or finishes its previous response: it bounds slow headers and idle
    /// keep-alive connections alike.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_seconds: u64,

    /// Most connections served at once; further clients wait in the listen backlog.
    /// Lowered at start to stay below the open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Serve Prometheus metrics at /metrics on this address of its own, e.g.
    /// 127.0.0.1:9187 [default: no metrics listener].
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Bearer token for /metrics; with it, /metrics is also served on the main port
    /// (at least 32 characters) [default: /metrics only on METRICS_ADDR].
    #[arg(long, env = "METRICS_TOKEN", value_parser = secret, hide_env_values = true)]
    pub metrics_token: Option<SecretString>,
}

/// Where data lives.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    Sqlite { path: PathBuf },
    Mongo { url: SecretString, db: String },
}

impl DatabaseConfig {
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { path } => format!("sqlite:{}", path.display()),
            Self::Mongo { db, .. } => format!("mongodb (database {db})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub tls: SmtpTls,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum TransportConfig {
    /// Development only: mails go to the log, codes included.
    Log,
    Smtp(SmtpConfig),
    SendGrid {
        api_key: SecretString,
        api_url: String,
    },
}

impl TransportConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Smtp(_) => "smtp",
            Self::SendGrid { .. } => "sendgrid",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: TransportConfig,
    /// Bound on one delivery attempt.
    pub timeout: Duration,
    pub from_email: String,
    pub from_name: String,
    pub frontend_url: String,
}

/// The validated settings the application runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    pub database: DatabaseConfig,
    /// The signing secret; `None` in development means "generate and keep one".
    pub jwt_secret: Option<SecretString>,
    pub jwt_previous_secrets: Vec<SecretString>,
    pub mail: MailConfig,
    pub cors_origins: Vec<String>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub otp_ttl: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub auth_rate_limit_per_minute: u32,
    pub bcrypt_cost: u32,
    pub hash_concurrency: usize,
    pub log_format: LogFormat,
    pub request_timeout: Duration,
    pub store_timeout: Duration,
    /// Whether MongoDB flows of several writes may run as transactions.
    pub mongo_transactions: bool,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// Where the metrics listener binds (`None`: no listener).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Bearer token for `/metrics` (`None`: not served on the main port).
    pub metrics_token: Option<SecretString>,
    data_dir: Option<PathBuf>,
}

/// Shortest accepted `METRICS_TOKEN`.
pub const MIN_METRICS_TOKEN_BYTES: usize = 32;

/// A setting that cannot be used, with the message an operator needs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn non_empty_secret(value: Option<SecretString>) -> Option<SecretString> {
    value.filter(|v| !v.expose_secret().trim().is_empty())
}

impl Config {
    /// Validates raw arguments into settings, refusing what production must not run with.
    pub fn from_args(args: ConfigArgs) -> Result<Self, ConfigError> {
        let production = args.environment == Environment::Production;
        let database = parse_database(
            non_empty_secret(args.database_url),
            non_empty_secret(args.mongo_uri),
            &args.mongo_db,
        )?;

        let jwt_secret = non_empty_secret(args.jwt_secret_key);
        match &jwt_secret {
            None if production => {
                return Err(ConfigError(format!(
                    "JWT_SECRET_KEY is required in production (at least {MIN_PRODUCTION_SECRET_BYTES} random bytes; {SECRET_ADVICE})"
                )))
            }
            None => {}
            Some(secret) => {
                if let Some(why) = secret_weakness(secret.expose_secret().as_bytes(), production) {
                    return Err(ConfigError(format!(
                        "JWT_SECRET_KEY {why} ({} environment; {SECRET_ADVICE})",
                        args.environment.as_str()
                    )));
                }
            }
        }
        // Checked in every environment: the list is comma-separated, so a secret that
        // contains a comma would silently turn into weak fragments.
        let jwt_previous_secrets: Vec<SecretString> = args
            .jwt_previous_secret_keys
            .into_iter()
            .filter(|s| !s.expose_secret().trim().is_empty())
            .collect();
        for (n, previous) in jwt_previous_secrets.iter().enumerate() {
            if let Some(why) = secret_weakness(previous.expose_secret().as_bytes(), production) {
                return Err(ConfigError(format!(
                    "JWT_PREVIOUS_SECRET_KEYS entry {} {why} (the list is comma-separated, so a secret cannot contain a comma; {SECRET_ADVICE})",
                    n + 1
                )));
            }
        }

        if production && args.bcrypt_cost < PRODUCTION_BCRYPT_COST {
            return Err(ConfigError(format!(
                "BCRYPT_COST={} is below {PRODUCTION_BCRYPT_COST}, which production refuses",
                args.bcrypt_cost
            )));
        }

        let transport = parse_transport(
            args.email_transport,
            non_empty_secret(args.sendgrid_api_key),
            args.sendgrid_api_url,
            non_empty(args.smtp_host),
            args.smtp_port,
            non_empty(args.smtp_user),
            non_empty_secret(args.smtp_password),
            args.smtp_tls,
            args.smtp_ca_file,
        )?;
        if production && matches!(transport, TransportConfig::Log) {
            return Err(ConfigError(
                "production needs a real mail transport: set SENDGRID_API_KEY or SMTP_HOST (EMAIL_TRANSPORT=log is for development only)".into(),
            ));
        }

        let frontend_url = args.frontend_url.trim().trim_end_matches('/').to_owned();
        if !(frontend_url.starts_with("https://") || frontend_url.starts_with("http://")) {
            return Err(ConfigError(format!(
                "FRONTEND_URL must start with http:// or https:// (got {frontend_url:?})"
            )));
        }
        if !args.from_email.contains('@') {
            return Err(ConfigError(format!(
                "FROM_EMAIL must be an email address (got {:?})",
                args.from_email
            )));
        }

        let mut cors_origins: Vec<String> = args
            .cors_origins
            .into_iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if cors_origins.is_empty() {
            cors_origins.push(frontend_url.clone());
            if !production {
                for port in [3000, 5173, 8000] {
                    cors_origins.push(format!("http://localhost:{port}"));
                    cors_origins.push(format!("http://127.0.0.1:{port}"));
                }
            }
        }
        if let Some(bad) = cors_origins
            .iter()
            .find(|o| axum::http::HeaderValue::from_str(o).is_err() || !o.contains("://"))
        {
            return Err(ConfigError(format!(
                "CORS_ORIGINS entry {bad:?} is not an origin like https://example.com"
            )));
        }

        let metrics_token = non_empty_secret(args.metrics_token);
        if metrics_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().len() < MIN_METRICS_TOKEN_BYTES)
        {
            return Err(ConfigError(format!(
                "METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_BYTES} characters (e.g. `openssl rand -hex 32`)"
            )));
        }

        let host = non_empty(args.host)
            .unwrap_or_else(|| if production { "0.0.0.0" } else { "127.0.0.1" }.to_owned());
        let hash_concurrency = args
            .hash_concurrency
            .map(|n| n as usize)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            });

        Ok(Self {
            environment: args.environment,
            host,
            port: args.port,
            database,
            jwt_secret,
            jwt_previous_secrets,
            mail: MailConfig {
                transport,
                timeout: Duration::from_secs(args.mail_timeout_seconds),
                from_email: args.from_email.trim().to_owned(),
                from_name: args.email_from_name.trim().to_owned(),
                frontend_url,
            },
            cors_origins,
            access_token_ttl: Duration::from_secs(args.access_token_ttl_seconds),
            refresh_token_ttl: Duration::from_secs(args.refresh_token_ttl_seconds),
            otp_ttl: Duration::from_secs(args.otp_ttl_seconds),
            trusted_proxies: args.trusted_proxies,
            auth_rate_limit_per_minute: args.auth_rate_limit_per_minute,
            bcrypt_cost: args.bcrypt_cost,
            hash_concurrency,
            log_format: args.log_format,
            request_timeout: Duration::from_secs(args.request_timeout_seconds),
            store_timeout: Duration::from_secs(args.store_timeout_seconds),
            mongo_transactions: args.mongo_transactions == MongoTransactions::Auto,
            header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds),
            max_connections: args.max_connections as usize,
            metrics_addr: args.metrics_addr,
            metrics_token,
            data_dir: args.data_dir,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// The folder that holds local state (the SQLite file, the development secret).
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        match &self.database {
            DatabaseConfig::Sqlite { path } => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            DatabaseConfig::Mongo { .. } => PathBuf::from("."),
        }
    }
}

/// Only the store settings of `args` (`introgy init` and `introgy backup` need nothing
/// else, so they work before mail is configured).
pub fn database_of(args: &ConfigArgs) -> Result<DatabaseConfig, ConfigError> {
    parse_database(
        non_empty_secret(args.database_url.clone()),
        non_empty_secret(args.mongo_uri.clone()),
        &args.mongo_db,
    )
}

fn parse_database(
    database_url: Option<SecretString>,
    mongo_uri: Option<SecretString>,
    mongo_db: &str,
) -> Result<DatabaseConfig, ConfigError> {
    match database_url.or(mongo_uri) {
        Some(url) => parse_database_url(&url, mongo_db),
        None => Ok(DatabaseConfig::Sqlite {
            path: PathBuf::from("introgy.db"),
        }),
    }
}

/// Parses one store URL: `sqlite:PATH`, `mongodb://...` or `mongodb+srv://...`.
pub fn parse_database_url(
    url: &SecretString,
    mongo_db: &str,
) -> Result<DatabaseConfig, ConfigError> {
    let raw = url.expose_secret().trim();
    if let Some(path) = raw.strip_prefix("sqlite:") {
        // Accept both `sqlite:PATH` and the URL spellings `sqlite://PATH` / `sqlite:///abs`.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(ConfigError("DATABASE_URL sqlite: needs a file path".into()));
        }
        return Ok(DatabaseConfig::Sqlite {
            path: PathBuf::from(path),
        });
    }
    if raw.starts_with("mongodb://") || raw.starts_with("mongodb+srv://") {
        let db = mongo_db.trim();
        if db.is_empty() {
            return Err(ConfigError("MONGO_DB must not be empty".into()));
        }
        return Ok(DatabaseConfig::Mongo {
            url: SecretString::from(raw),
            db: db.to_owned(),
        });
    }
    Err(ConfigError(
        "DATABASE_URL must be sqlite:PATH, mongodb://... or mongodb+srv://...".into(),
    ))
}

#[expect(clippy::too_many_arguments, reason = "one argument per raw setting")]
fn parse_transport(
    forced: Option<TransportKind>,
    sendgrid_key: Option<SecretString>,
    sendgrid_url: String,
    smtp_host: Option<String>,
    smtp_port: u16,
    smtp_user: Option<String>,
    smtp_password: Option<SecretString>,
    smtp_tls: Option<SmtpTls>,
    smtp_ca_file: Option<PathBuf>,
) -> Result<TransportConfig, ConfigError> {
    let kind = forced.unwrap_or(if sendgrid_key.is_some() {
        TransportKind::Sendgrid
    } else if smtp_host.is_some() {
        TransportKind::Smtp
    } else {
        TransportKind::Log
    });
    match kind {
        TransportKind::Log => Ok(TransportConfig::Log),
        TransportKind::Sendgrid => {
            let api_key = sendgrid_key.ok_or_else(|| {
                ConfigError("EMAIL_TRANSPORT=sendgrid needs SENDGRID_API_KEY".into())
            })?;
            Ok(TransportConfig::SendGrid {
                api_key,
                api_url: sendgrid_url,
            })
        }
        TransportKind::Smtp => {
            let host = smtp_host
                .ok_or_else(|| ConfigError("EMAIL_TRANSPORT=smtp needs SMTP_HOST".into()))?;
            if smtp_user.is_some() != smtp_password.is_some() {
                return Err(ConfigError(
                    "SMTP_USER and SMTP_PASSWORD must be set together".into(),
                ));
            }
            let tls = smtp_tls.unwrap_or(if smtp_port == 465 {
                SmtpTls::Tls
            } else {
                SmtpTls::Starttls
            });
            Ok(TransportConfig::Smtp(SmtpConfig {
                host,
                port: smtp_port,
                user: smtp_user,
                password: smtp_password,
                tls,
                ca_file: smtp_ca_file,
            }))
        }
    }
}

/// Reads one settings file (`--env-file`): `KEY=VALUE` lines, `#` comments, values
/// optionally quoted (single quotes keep `$` and spaces literally, as systemd's
/// `EnvironmentFile=` does). Variables already in the environment are left alone.
pub fn load_env_file(path: &Path) -> Result<(), ConfigError> {
    dotenvy::from_path(path)
        .map_err(|e| ConfigError(format!("cannot read --env-file {}: {e}", path.display())))
}

/// Reads `.env`, `Mongo.env` and `Email.env` from the working directory, if present.
/// Variables already in the environment are left alone (real environment wins).
pub fn load_env_files() -> Result<Vec<&'static str>, ConfigError> {
    let mut loaded = Vec::new();
    for name in [".env", "Mongo.env", "Email.env"] {
        if !Path::new(name).exists() {
            continue;
        }
        dotenvy::from_filename(name)
            .map_err(|e| ConfigError(format!("cannot read {name}: {e}")))?;
        loaded.push(name);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["introgy"];
        argv.extend_from_slice(extra);
        Config::from_args(Wrapper::try_parse_from(argv).expect("args parse").args)
    }

    /// `openssl rand -hex 64`.
    const LONG_SECRET: &str = "6a1f0c9e4b27d8a35f90e1c46b7d2a8f03e5c9b1d74a6f28e0b3c5d9a1f47e62\
                               b8d0f3a6c91e47d25a8c0f6e3b9d14a7c2e5f08b6d3a9c1e47f2b5d8a0c3e6f91";

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 8000);
        assert!(
            matches!(config.database, DatabaseConfig::Sqlite { ref path } if path == Path::new("introgy.db"))
        );
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.refresh_token_ttl, Duration::from_secs(2_592_000));
        assert_eq!(config.otp_ttl, Duration::from_secs(600));
        assert_eq!(config.mail.from_email, "support@introgy.ai");
        assert_eq!(config.mail.from_name, "Introgy");
        assert_eq!(config.mail.transport.name(), "log");
        assert!(config
            .cors_origins
            .contains(&"https://introgy.ai".to_owned()));
        assert!(config
            .cors_origins
            .contains(&"http://localhost:5173".to_owned()));
    }

    #[test]
    fn production_refuses_to_start_without_a_secret() {
        let err = parse(&["--environment", "production", "--smtp-host", "mail"]).unwrap_err();
        assert!(err.0.contains("JWT_SECRET_KEY"), "{err}");
    }

    #[test]
    fn production_refuses_a_short_secret() {
        let err = parse(&[
            "--environment",
            "production",
            "--smtp-host",
            "mail",
            "--jwt-secret-key",
            "short",
        ])
        .unwrap_err();
        assert!(err.0.contains("at least 64"), "{err}");
    }

    fn production_with_secret(secret: &str) -> Result<Config, ConfigError> {
        parse(&[
            "--environment",
            "production",
            "--smtp-host",
            "mail",
            "--jwt-secret-key",
            secret,
        ])
    }

    #[test]
    fn production_judges_the_secret_by_quality_not_only_length() {
        let refused = [
            ("k".repeat(64), "64 times the same byte"),
            ("0123456789abcdef".repeat(4), "a repeated pattern"),
            ("correct horse ".repeat(5), "a repeated phrase"),
            ("ab".repeat(40), "two symbols"),
            (
                format!("{}{}", &LONG_SECRET[..16], "k".repeat(48)),
                "a random start, then padding",
            ),
        ];
        for (secret, why) in refused {
            assert!(secret.len() >= 64, "{why}: test secret too short");
            let err = production_with_secret(&secret).expect_err(why);
            assert!(err.0.contains("JWT_SECRET_KEY"), "{why}: {err}");
            assert!(
                !err.0.contains(&secret),
                "the message must not echo the secret"
            );
        }
        let accepted = [
            (LONG_SECRET.to_owned(), "openssl rand -hex 64"),
            (LONG_SECRET[..64].to_owned(), "openssl rand -hex 32"),
            (
                "q3Vb7Kz9XwPn2Rt5Yc8Lm4Hd6Jf1Gs0Ae3Ui7Ok9Pl2Zx5Cv8Bn4Mq6Wr1Ty0Es3D".to_owned(),
                "openssl rand -base64 48",
            ),
        ];
        for (secret, why) in accepted {
            production_with_secret(&secret).unwrap_or_else(|e| panic!("{why}: {e}"));
        }
    }

    #[test]
    fn previous_secrets_are_checked_in_every_environment() {
        // A secret with a comma falls apart into fragments.
        let with_comma = format!("{},{}", &LONG_SECRET[..100], &LONG_SECRET[100..]);
        let err = parse(&["--jwt-previous-secret-keys", "short-one"]).unwrap_err();
        assert!(err.0.contains("JWT_PREVIOUS_SECRET_KEYS entry 1"), "{err}");
        let err = parse(&["--jwt-previous-secret-keys", &with_comma]).unwrap_err();
        assert!(err.0.contains("comma"), "{err}");
        let err = parse(&[
            "--environment",
            "production",
            "--smtp-host",
            "mail",
            "--jwt-secret-key",
            LONG_SECRET,
            "--jwt-previous-secret-keys",
            &format!("{LONG_SECRET},{}", "k".repeat(64)),
        ])
        .unwrap_err();
        assert!(err.0.contains("entry 2"), "{err}");
        let config = parse(&["--jwt-previous-secret-keys", &LONG_SECRET[..40]]).unwrap();
        assert_eq!(config.jwt_previous_secrets.len(), 1);
    }

    #[test]
    fn development_refuses_a_short_secret_too() {
        let err = parse(&["--jwt-secret-key", "dev"]).unwrap_err();
        assert!(err.0.contains("at least 32"), "{err}");
        assert!(
            parse(&["--jwt-secret-key", &"k".repeat(32)]).is_ok(),
            "no quality rule in development"
        );
    }

    #[test]
    fn production_refuses_the_log_transport() {
        let err = parse(&[
            "--environment",
            "production",
            "--jwt-secret-key",
            LONG_SECRET,
        ])
        .unwrap_err();
        assert!(err.0.contains("mail transport"), "{err}");
        let err = parse(&[
            "--environment",
            "production",
            "--jwt-secret-key",
            LONG_SECRET,
            "--smtp-host",
            "mail",
            "--email-transport",
            "log",
        ])
        .unwrap_err();
        assert!(err.0.contains("mail transport"), "{err}");
    }

    #[test]
    fn production_refuses_a_low_bcrypt_cost() {
        let err = parse(&[
            "--environment",
            "production",
            "--jwt-secret-key",
            LONG_SECRET,
            "--smtp-host",
            "mail",
            "--bcrypt-cost",
            "4",
        ])
        .unwrap_err();
        assert!(err.0.contains("BCRYPT_COST"), "{err}");
    }

    #[test]
    fn production_listens_on_all_interfaces_and_keeps_cors_to_the_frontend() {
        let config = parse(&[
            "--environment",
            "production",
            "--jwt-secret-key",
            LONG_SECRET,
            "--smtp-host",
            "mail",
        ])
        .unwrap();
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.cors_origins, vec!["https://introgy.ai".to_owned()]);
    }

    #[test]
    fn smtp_tls_follows_the_port() {
        let config = parse(&["--smtp-host", "mail", "--smtp-port", "465"]).unwrap();
        assert!(matches!(
            config.mail.transport,
            TransportConfig::Smtp(SmtpConfig {
                tls: SmtpTls::Tls,
                ..
            })
        ));
        let config = parse(&["--smtp-host", "mail"]).unwrap();
        assert!(matches!(
            config.mail.transport,
            TransportConfig::Smtp(SmtpConfig {
                tls: SmtpTls::Starttls,
                port: 587,
                ..
            })
        ));
    }

    #[test]
    fn database_url_wins_over_mongo_uri() {
        let config = parse(&[
            "--database-url",
            "sqlite:/var/lib/introgy/introgy.db",
            "--mongo-uri",
            "mongodb://localhost",
        ])
        .unwrap();
        assert!(
            matches!(config.database, DatabaseConfig::Sqlite { ref path } if path == Path::new("/var/lib/introgy/introgy.db"))
        );
        assert_eq!(config.data_dir(), PathBuf::from("/var/lib/introgy"));
        let config = parse(&["--mongo-uri", "mongodb://localhost:27017"]).unwrap();
        assert!(matches!(config.database, DatabaseConfig::Mongo { ref db, .. } if db == "introgy"));
    }

    #[test]
    fn unknown_database_schemes_are_refused() {
        assert!(parse(&["--database-url", "postgres://x"]).is_err());
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = parse(&[
            "--jwt-secret-key",
            LONG_SECRET,
            "--smtp-host",
            "m",
            "--smtp-user",
            "u",
            "--smtp-password",
            "hunter2-password",
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains(LONG_SECRET));
        assert!(!printed.contains("hunter2-password"));
    }
}
