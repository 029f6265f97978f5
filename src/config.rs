//! Every setting, its default and its environment name, parsed and validated once at start.
//! `Config::from_env` reads the process environment after an optional `.env` (the environment
//! wins); `Config::from_lookup` takes any key -> value source, which is what the tests use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod read;
mod secret;

use crate::signing::SigningKey;
pub use crate::trusted_proxies::TrustedProxies;
use read::{Lookup, MAX_PAYLOAD_SIZE_KB, default_replica_name, is_origin};
pub use secret::Secret;
use secret::{dotenv_error, shown};

/// A setting that could not be used; its `Display` is the one line printed before exiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub key: &'static str,
    /// The value as given, or redacted for a secret.
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    /// An error about `value` of `key`, with the value redacted if the key holds a secret.
    fn new(key: &'static str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            key,
            value: shown(key, value),
            expected: expected.into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the OS schedules engine threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePriority {
    /// SCHED_IDLE: engine threads get a CPU only when nothing else wants it, so request
    /// handling (acknowledgements above all) never waits behind the engine.
    Idle,
    /// Nice 19: the engine still yields, but a waking request handler may wait a scheduler tick.
    Low,
    /// Same as every other thread (the original's behaviour, for comparison).
    Normal,
}

/// ENGINE_CALIBRATION: which work amounts the engine plans with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCalibration {
    /// `auto`: the factors stored for this machine; measured (in at most 2 s) at a start that
    /// finds the file missing, unreadable, or written on another CPU.
    Auto,
    /// `remeasure`: measure at every start, whatever the file holds, and rewrite it.
    Remeasure,
    /// `fixed`: the reference amounts, so the same payload gives the same result on every
    /// machine (and takes the reference machine's time only there).
    Fixed,
}

impl EngineCalibration {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Remeasure => "remeasure",
            Self::Fixed => "fixed",
        }
    }
}

/// The calibration file next to a PostgreSQL replica: in its working directory.
const POSTGRES_CALIBRATION_FILE: &str = "calibration.json";

/// What CLAIM_AHEAD takes.
const CLAIM_AHEAD_EXPECTED: &str = "a whole number from 0 to 1024";
/// The largest CLAIM_AHEAD, also the bound on its default.
const MAX_CLAIM_AHEAD: usize = 1024;
/// CLAIM_AHEAD's default, per worker (see `Config::claim_ahead`).
const CLAIM_AHEAD_PER_WORKER: usize = 8;

/// DATABASE_URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(Secret),
    Sqlite(PathBuf),
}

/// Where the data lives, as `db::connect` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite {
        path: PathBuf,
        wal_limit_bytes: u64,
    },
    Postgres {
        /// The URL may carry a password.
        url: Secret,
        max_connections: u32,
        notify_interval: Duration,
    },
}

/// Who may have the server call its own loopback (127.0.0.0/8, ::1, 0.0.0.0, `localhost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackCallbacks {
    /// `local`: only clients on this host (the demo: curl and `callback-server` on one machine).
    Local,
    /// `any`: every client, for a server only trusted clients can reach.
    Any,
    /// `never`: no one, not even a client on this host (what BLOCK_LOCALHOST=true means).
    Never,
}

/// The shortest API key accepted: 16 characters, so that guessing one is hopeless.
pub const MIN_API_KEY_LEN: usize = 16;

/// The API keys: each tenant's (a tenant may have several, to rotate them) and the admin's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// (tenant name, key) pairs from API_KEYS, in the order given.
    pub tenants: Vec<(String, Secret)>,
    /// ADMIN_API_KEY: sees every tenant's requests.
    pub admin: Option<Secret>,
}

impl ApiKeys {
    /// No key is set: the API is open, as before keys existed.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.admin.is_none()
    }
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin (not allowed together with credentials).
    Any,
    /// An explicit list of origins such as `http://localhost:3000`.
    List(Vec<String>),
}

/// The whole configuration. Durations are `Duration`s; the environment gives seconds (fractions
/// allowed, so tests can use milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Shown in `/`, the OpenAPI title and log lines.
    pub app_name: String,
    pub host: IpAddr,
    /// 0 picks a free port (the tests do this).
    pub port: u16,
    /// The SQLite file; its directory is created on first start. Unused with `database_url`.
    pub database_path: PathBuf,
    /// DATABASE_URL: a `postgres://` URL to share one PostgreSQL database between replicas, or a
    /// `sqlite://` path; unset, DATABASE_PATH is the SQLite file.
    pub database_url: Option<DatabaseUrl>,
    /// The bound on the SQLite WAL file, in MiB: checkpoints keep it below this under load.
    pub sqlite_wal_limit_mb: u64,
    /// PostgreSQL connections this replica may open, over all its pools.
    pub database_max_connections: u32,
    /// How long a claim on a job or delivery lasts without a heartbeat; a third of it is the
    /// heartbeat interval.
    pub lease: Duration,
    /// How often every replica looks for expired leases.
    pub rescue_interval: Duration,
    /// The longest an idle claimer waits before looking at the queue again (at most 1 s).
    pub poll_interval: Duration,
    /// How often a PostgreSQL replica may tell the others of new work (50 to 100 ms).
    pub notify_interval: Duration,
    /// Claims of one job (or delivery) whose replicas kept dying before the rescuer fails it.
    pub job_max_attempts: u32,
    /// Finished requests are deleted after this; `None` (RETENTION_HOURS=0) keeps everything.
    pub retention: Option<Duration>,
    /// The start of this replica's owner id (the host name by default); the process id and a
    /// random suffix follow, so a restarted replica is a new owner.
    pub replica_name: String,
    /// Sync requests computed at once; one more gets 503.
    pub max_sync_concurrency: usize,
    /// After this the engine is cancelled: 504 for sync, `failed` for async.
    pub work_timeout: Duration,
    /// Worker tasks that drain the async queue.
    pub num_workers: usize,
    /// CLAIM_AHEAD: jobs a SQLite server claims beyond its free workers while jobs are tiny,
    /// waiting in the hand-over channel, so that a worker that finishes takes its next job at once
    /// rather than waiting for the write that stores its outcome. `None`: eight per worker on
    /// SQLite; a PostgreSQL replica claims only for free workers (`claim_ahead()`).
    pub claim_ahead: Option<usize>,
    /// Async jobs that may wait in the queue; one more gets 429.
    pub max_queue_size: usize,
    /// Bound on one callback attempt, connect to last byte.
    pub callback_timeout: Duration,
    /// At shutdown, how long a worker's job in hand may run on before it is cancelled and left
    /// for the next start.
    pub shutdown_grace: Duration,
    /// Retries after the first attempt of an unbroken delivery.
    pub max_callback_retries: u32,
    /// Retry n waits `retry_backoff_base^n x callback_retry_unit`, with jitter.
    pub retry_backoff_base: f64,
    /// The unit of the backoff: one second in production, milliseconds in tests.
    pub callback_retry_unit: Duration,
    /// The longest `Retry-After` from a receiver that is honoured.
    pub callback_max_retry_after: Duration,
    /// Callback attempts in flight at once, across all jobs.
    pub max_concurrent_deliveries: usize,
    /// CALLBACK_SIGNING_SECRET (`whsec_...`), decoded: when set, callbacks carry a Standard
    /// Webhooks signature.
    pub callback_signing_key: Option<SigningKey>,
    /// Burst per client IP.
    pub rate_limit_requests: u32,
    /// The burst refills evenly over this window.
    pub rate_limit_window: Duration,
    /// TRUSTED_PROXIES: peers whose `X-Forwarded-For` tells the client IP. Empty: the peer is
    /// the client.
    pub trusted_proxies: TrustedProxies,
    /// Larger request bodies get 413.
    pub max_payload_size_kb: usize,
    /// Lower-case schemes a callback URL may use.
    pub allowed_callback_schemes: Vec<String>,
    /// Refuse callbacks to every address that is not globally routable (metadata services are
    /// refused whatever this says).
    pub block_private_ips: bool,
    /// LOOPBACK_CALLBACKS (BLOCK_LOCALHOST=true is `never`): who may use loopback callbacks.
    pub loopback_callbacks: LoopbackCallbacks,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// How engine threads are scheduled against the threads that answer HTTP.
    pub engine_priority: EnginePriority,
    /// ENGINE_CALIBRATION: measured amounts (`auto`, `remeasure`) or the reference ones (`fixed`).
    pub engine_calibration: EngineCalibration,
    /// CALIBRATION_PATH: where this machine's factors are stored. `None`: next to the SQLite
    /// file, or in the working directory on PostgreSQL (see `calibration_file`).
    pub calibration_path: Option<PathBuf>,
    /// An `EnvFilter` directive such as `info` or `sync_async=debug,tower_http=info`.
    pub log_level: String,
    pub log_format: LogFormat,
    pub cors_origins: CorsOrigins,
    pub cors_allow_credentials: bool,
    /// BASE_PATH: the path prefix (`/ops`) a reverse proxy forwards unchanged; every route, the
    /// dashboard included, is served under it. Empty: served at the root.
    pub base_path: String,
    /// API_KEYS and ADMIN_API_KEY: who may call the API. With none, the API is open to anyone.
    pub api_keys: ApiKeys,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the defaults are valid")
    }
}

impl Config {
    /// Loads `.env` if there is one (never overriding the environment), then parses. A `.env`
    /// that exists but does not parse is an error, not something to skip silently.
    pub fn from_env() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(dotenv_error(&e)),
        }
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Parses from a map, for tests and tools.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|key| map.get(key).cloned())
    }

    /// Parses every key from `lookup`, falling back to its default. Unknown keys are never asked
    /// for, so they are ignored.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Lookup(&lookup);
        let config = Self {
            app_name: env.text("APP_NAME", "Sync vs Async API Demo")?,
            host: env.parse("HOST", "0.0.0.0", "an IP address such as 0.0.0.0 or 127.0.0.1")?,
            port: env.parse("PORT", "8000", "a port number from 0 to 65535")?,
            database_path: PathBuf::from(env.string("DATABASE_PATH", "./data/requests.db")),
            database_url: env.database_url("DATABASE_URL")?,
            database_max_connections: env.parse(
                "DATABASE_MAX_CONNECTIONS",
                "10",
                "a whole number of connections from 4 to 1000",
            )?,
            lease: env.seconds("LEASE_SECONDS", "30", 0.3, 3600.0)?,
            rescue_interval: env.seconds("RESCUE_INTERVAL_SECONDS", "5", 0.01, 3600.0)?,
            poll_interval: env.seconds("POLL_INTERVAL_SECONDS", "1", 0.001, 1.0)?,
            notify_interval: env.millis("NOTIFY_INTERVAL_MS", "75", 50..=100)?,
            job_max_attempts: env.parse("JOB_MAX_ATTEMPTS", "5", "a whole number from 1 to 100")?,
            retention: env.retention("RETENTION_HOURS", "168")?,
            replica_name: env.text("REPLICA_NAME", &default_replica_name())?,
            sqlite_wal_limit_mb: env.parse("SQLITE_WAL_LIMIT_MB", "64", "a whole number of MiB from 1 to 65536")?,
            max_sync_concurrency: env.count("MAX_SYNC_CONCURRENCY", 10, 1024)?,
            work_timeout: env.seconds("WORK_TIMEOUT_SECONDS", "30", 0.001, 3600.0)?,
            num_workers: env.count("NUM_WORKERS", 5, 1024)?,
            claim_ahead: env
                .optional("CLAIM_AHEAD")
                .map(|_| env.parse("CLAIM_AHEAD", "0", CLAIM_AHEAD_EXPECTED))
                .transpose()?,
            max_queue_size: env.count("MAX_QUEUE_SIZE", 100, 1_000_000_000)?,
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECONDS", "10", 0.001, 3600.0)?,
            callback_timeout: env.seconds("CALLBACK_TIMEOUT_SECONDS", "10", 0.001, 600.0)?,
            max_callback_retries: env.parse("MAX_CALLBACK_RETRIES", "3", "a whole number from 0 to 20")?,
            retry_backoff_base: env.parse("RETRY_BACKOFF_BASE", "2", "a number from 1 to 10")?,
            callback_retry_unit: env.millis("CALLBACK_RETRY_UNIT_MS", "1000", 1..=3_600_000)?,
            callback_max_retry_after: env.seconds("CALLBACK_MAX_RETRY_AFTER_SECONDS", "300", 0.001, 86_400.0)?,
            max_concurrent_deliveries: env.count("MAX_CONCURRENT_DELIVERIES", 20, 10_000)?,
            callback_signing_key: env.signing_key("CALLBACK_SIGNING_SECRET")?,
            rate_limit_requests: env.parse("RATE_LIMIT_REQUESTS", "100", "a whole number of at least 1")?,
            rate_limit_window: env.seconds("RATE_LIMIT_WINDOW_SECONDS", "60", 0.001, 86_400.0)?,
            trusted_proxies: env.trusted_proxies("TRUSTED_PROXIES")?,
            max_payload_size_kb: env.count("MAX_PAYLOAD_SIZE_KB", 100, MAX_PAYLOAD_SIZE_KB)?,
            allowed_callback_schemes: env.schemes("ALLOWED_CALLBACK_SCHEMES", "http,https")?,
            block_private_ips: env.flag("BLOCK_PRIVATE_IPS", true)?,
            loopback_callbacks: env.loopback_callbacks("LOOPBACK_CALLBACKS", "BLOCK_LOCALHOST")?,
            idempotency_ttl: env.seconds("IDEMPOTENCY_TTL_SECONDS", "86400", 1.0, 31_536_000.0)?,
            engine_priority: env.engine_priority("ENGINE_PRIORITY", "idle")?,
            engine_calibration: env.engine_calibration("ENGINE_CALIBRATION", "auto")?,
            calibration_path: env.optional("CALIBRATION_PATH").map(PathBuf::from),
            log_level: env.string("LOG_LEVEL", "info"),
            log_format: env.log_format("LOG_FORMAT", "pretty")?,
            cors_origins: env.cors_origins("CORS_ORIGINS", "*"),
            cors_allow_credentials: env.flag("CORS_ALLOW_CREDENTIALS", false)?,
            base_path: env.base_path("BASE_PATH")?,
            api_keys: env.api_keys("API_KEYS", "ADMIN_API_KEY")?,
        };
        env.check_retired()?;
        config.check_ranges(&env)?;
        Ok(config)
    }

    /// Bounds that need more than one value or a range check after parsing.
    fn check_ranges(&self, env: &Lookup<'_>) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &str); 13] = [
            (
                "CALIBRATION_PATH",
                self.calibration_path
                    .as_ref()
                    .is_none_or(|p| !p.as_os_str().as_encoded_bytes().contains(&0)),
                "a file path",
            ),
            (
                "DATABASE_MAX_CONNECTIONS",
                (4..=1000).contains(&self.database_max_connections),
                "a whole number of connections from 4 to 1000",
            ),
            (
                "DATABASE_PATH",
                !self.database_path.as_os_str().as_encoded_bytes().contains(&0),
                "a file path",
            ),
            (
                "CLAIM_AHEAD",
                self.claim_ahead.is_none_or(|n| n <= MAX_CLAIM_AHEAD),
                CLAIM_AHEAD_EXPECTED,
            ),
            (
                "CLAIM_AHEAD",
                !matches!(self.database_url, Some(DatabaseUrl::Postgres(_))) || self.claim_ahead.is_none_or(|n| n == 0),
                "0 or unset with PostgreSQL: a replica claims only for its free workers, so that no job waits \
                 in one replica while another's worker is idle",
            ),
            (
                "JOB_MAX_ATTEMPTS",
                (1..=100).contains(&self.job_max_attempts),
                "a whole number from 1 to 100",
            ),
            (
                "SQLITE_WAL_LIMIT_MB",
                (1..=65_536).contains(&self.sqlite_wal_limit_mb),
                "a whole number of MiB from 1 to 65536",
            ),
            (
                "CORS_ORIGINS",
                match &self.cors_origins {
                    CorsOrigins::Any => true,
                    CorsOrigins::List(origins) => origins.iter().all(|o| is_origin(o)),
                },
                "* or a list of origins such as http://localhost:3000 (scheme, host and port only)",
            ),
            (
                "MAX_CALLBACK_RETRIES",
                self.max_callback_retries <= 20,
                "a whole number from 0 to 20",
            ),
            (
                "RETRY_BACKOFF_BASE",
                (1.0..=10.0).contains(&self.retry_backoff_base),
                "a number from 1 to 10",
            ),
            (
                "RATE_LIMIT_REQUESTS",
                self.rate_limit_requests >= 1,
                "a whole number of at least 1",
            ),
            (
                "LOG_LEVEL",
                tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok(),
                "a level (error, warn, info, debug, trace) or an EnvFilter directive",
            ),
            (
                "CORS_ALLOW_CREDENTIALS",
                !(self.cors_allow_credentials && self.cors_origins == CorsOrigins::Any),
                "false while CORS_ORIGINS is `*` (browsers refuse credentials with a wildcard origin)",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, expected)) => Err(env.error(key, expected)),
            None => Ok(()),
        }
    }

    /// Jobs this replica claims beyond its free workers: CLAIM_AHEAD, by default eight per worker
    /// on SQLite (one server: a job claimed ahead keeps no other replica's worker idle); always 0
    /// on PostgreSQL, where a replica claims only for free workers. Eight per worker: one write
    /// then stores and claims about forty tiny jobs rather than five (with 5 workers, tiny jobs
    /// end to end on the benchmark VM: x1.2 over one per worker, and the drain keeps up with the
    /// acknowledgements), and a job claimed ahead waits behind at most about eight runs of under
    /// 5 ms whatever the worker count.
    pub fn claim_ahead(&self) -> usize {
        match self.database() {
            DatabaseTarget::Postgres { .. } => 0,
            DatabaseTarget::Sqlite { .. } => self
                .claim_ahead
                .unwrap_or(CLAIM_AHEAD_PER_WORKER * self.num_workers)
                .min(MAX_CLAIM_AHEAD),
        }
    }

    /// Where the data lives: DATABASE_URL if set, DATABASE_PATH otherwise.
    pub fn database(&self) -> DatabaseTarget {
        match &self.database_url {
            Some(DatabaseUrl::Postgres(url)) => DatabaseTarget::Postgres {
                url: url.clone(),
                max_connections: self.database_max_connections,
                notify_interval: self.notify_interval,
            },
            Some(DatabaseUrl::Sqlite(path)) => DatabaseTarget::Sqlite {
                path: path.clone(),
                wal_limit_bytes: self.sqlite_wal_limit_bytes(),
            },
            None => DatabaseTarget::Sqlite {
                path: self.database_path.clone(),
                wal_limit_bytes: self.sqlite_wal_limit_bytes(),
            },
        }
    }

    /// Where this machine's calibration is stored: CALIBRATION_PATH if set; otherwise beside
    /// the SQLite file (`<file>.calibration.json`, like its `.lock`), or `calibration.json` in
    /// the working directory on PostgreSQL, where there is no file to sit beside.
    pub fn calibration_file(&self) -> PathBuf {
        if let Some(path) = &self.calibration_path {
            return path.clone();
        }
        match self.database() {
            DatabaseTarget::Sqlite { path, .. } => {
                let mut file = path.into_os_string();
                file.push(".calibration.json");
                PathBuf::from(file)
            }
            DatabaseTarget::Postgres { .. } => PathBuf::from(POSTGRES_CALIBRATION_FILE),
        }
    }

    /// The WAL bound in bytes.
    pub fn sqlite_wal_limit_bytes(&self) -> u64 {
        self.sqlite_wal_limit_mb * 1024 * 1024
    }

    /// The largest accepted request body, in bytes. MAX_PAYLOAD_SIZE_KB is bounded at start, so
    /// this cannot overflow; it saturates all the same, for a `Config` built by hand.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_size_kb.saturating_mul(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_map(&map)
    }
    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.port, 8000);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.max_sync_concurrency, 10);
        assert_eq!(c.work_timeout, Duration::from_secs(30));
        assert_eq!((c.num_workers, c.max_queue_size), (5, 100));
        assert_eq!((c.max_callback_retries, c.retry_backoff_base), (3, 2.0));
        assert_eq!(
            (c.rate_limit_requests, c.rate_limit_window),
            (100, Duration::from_secs(60))
        );
        assert_eq!(c.allowed_callback_schemes, vec!["http", "https"]);
        assert!(c.block_private_ips && c.trusted_proxies.is_empty());
        assert_eq!(c.loopback_callbacks, LoopbackCallbacks::Local);
        assert_eq!(c.max_payload_bytes(), 100 * 1024);
    }
    #[test]
    fn sqlite_claims_ahead_by_the_worker_count_and_postgres_never() {
        assert_eq!(with(&[("NUM_WORKERS", "7")]).expect("sqlite").claim_ahead(), 56);
        assert_eq!(with(&[("NUM_WORKERS", "1000")]).expect("many").claim_ahead(), 1024);
        assert_eq!(with(&[("CLAIM_AHEAD", "0")]).expect("off").claim_ahead(), 0);
        assert_eq!(with(&[("CLAIM_AHEAD", "12")]).expect("twelve").claim_ahead(), 12);
        let postgres = [("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")];
        assert_eq!(with(&postgres).expect("postgres").claim_ahead(), 0);
        let zero = [postgres[0], ("CLAIM_AHEAD", "0")];
        assert_eq!(with(&zero).expect("postgres, 0").claim_ahead(), 0);
        let err = with(&[postgres[0], ("CLAIM_AHEAD", "5")]).expect_err("postgres claims only for free workers");
        assert!(err.to_string().contains("CLAIM_AHEAD"), "{err}");
        let err = with(&[("CLAIM_AHEAD", "1025")]).expect_err("too many");
        assert!(err.to_string().contains("0 to 1024"), "{err}");
    }
    #[test]
    fn both_scheme_list_forms_are_accepted() {
        for raw in [
            "http,https",
            "[\"http\",\"https\"]",
            " [ 'http' , 'https' ] ",
            "HTTP, https",
        ] {
            let c = with(&[("ALLOWED_CALLBACK_SCHEMES", raw)]).expect(raw);
            assert_eq!(c.allowed_callback_schemes, vec!["http", "https"], "{raw}");
        }
        let https_only = with(&[("ALLOWED_CALLBACK_SCHEMES", "[\"https\"]")]).expect("https only");
        assert_eq!(https_only.allowed_callback_schemes, vec!["https"]);
    }
    #[test]
    fn a_bad_value_names_the_key_and_the_expected_form() {
        let err = with(&[("PORT", "eighty")]).expect_err("not a port");
        assert_eq!(
            err.to_string(),
            "invalid PORT=\"eighty\": expected a port number from 0 to 65535"
        );
        let err = with(&[("ALLOWED_CALLBACK_SCHEMES", "ftp")]).expect_err("ftp");
        assert_eq!(err.key, "ALLOWED_CALLBACK_SCHEMES");
        let cases = [
            ("MAX_SYNC_CONCURRENCY", "0"),
            ("WORK_TIMEOUT_SECONDS", "-1"),
            ("WORK_TIMEOUT_SECONDS", "soon"),
            ("BLOCK_PRIVATE_IPS", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("RETRY_BACKOFF_BASE", "0.5"),
            ("MAX_CALLBACK_RETRIES", "99"),
            ("CALLBACK_RETRY_UNIT_MS", "0"),
            ("CALLBACK_SIGNING_SECRET", "not-a-secret"),
            ("CALLBACK_MAX_RETRY_AFTER_SECONDS", "1e9"),
            ("CORS_ORIGINS", "http://localhost:3000/app"),
            ("CORS_ORIGINS", "localhost:3000"),
            ("SHUTDOWN_GRACE_SECONDS", "0"),
            ("LOG_LEVEL", "sync_async=loud"),
            ("ENGINE_PRIORITY", "realtime"),
            ("ENGINE_CALIBRATION", "measure"),
            ("ENGINE_CALIBRATION", "on"),
            ("BASE_PATH", "ops"),
            ("BASE_PATH", "/ops/"),
            ("BASE_PATH", "/"),
            ("BASE_PATH", "/a//b"),
            ("BASE_PATH", "/a b"),
            ("BASE_PATH", "/.."),
        ];
        for (key, value) in cases {
            let err = with(&[(key, value)]).expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().starts_with(&format!("invalid {key}=")), "{err}");
        }
    }
    #[test]
    fn a_base_path_is_kept_as_written_and_empty_means_the_root() {
        assert_eq!(with(&[("BASE_PATH", "/ops")]).expect("valid").base_path, "/ops");
        assert_eq!(with(&[("BASE_PATH", "/a/b-c")]).expect("valid").base_path, "/a/b-c");
        assert_eq!(Config::default().base_path, "");
    }

    #[test]
    fn engine_calibration_is_auto_by_default_and_its_file_sits_beside_the_database() {
        let c = Config::default();
        assert_eq!(c.engine_calibration, EngineCalibration::Auto);
        assert_eq!(
            c.calibration_file(),
            PathBuf::from("./data/requests.db.calibration.json")
        );
        for (raw, mode) in [
            ("fixed", EngineCalibration::Fixed),
            ("AUTO", EngineCalibration::Auto),
            ("remeasure", EngineCalibration::Remeasure),
        ] {
            let c = with(&[("ENGINE_CALIBRATION", raw)]).expect(raw);
            assert_eq!(c.engine_calibration, mode);
        }
        let pg = with(&[("DATABASE_URL", "postgres://app@db.internal:5432/sync")]).expect("valid");
        assert_eq!(pg.calibration_file(), PathBuf::from("calibration.json"));
        let set = with(&[
            ("DATABASE_URL", "postgres://app@db.internal:5432/sync"),
            ("CALIBRATION_PATH", "/var/lib/sync-async/calibration.json"),
        ])
        .expect("valid");
        assert_eq!(
            set.calibration_file(),
            PathBuf::from("/var/lib/sync-async/calibration.json")
        );
    }

    #[test]
    fn fractional_seconds_allow_millisecond_timeouts() {
        let c = with(&[("WORK_TIMEOUT_SECONDS", "0.25")]).expect("valid");
        assert_eq!(c.work_timeout, Duration::from_millis(250));
    }
    #[test]
    fn credentials_with_a_wildcard_origin_are_refused() {
        let err = with(&[("CORS_ALLOW_CREDENTIALS", "true")]).expect_err("wildcard");
        assert_eq!(err.key, "CORS_ALLOW_CREDENTIALS");
        let ok = with(&[
            ("CORS_ALLOW_CREDENTIALS", "true"),
            ("CORS_ORIGINS", "http://localhost:3000"),
        ]);
        assert_eq!(
            ok.expect("explicit origin").cors_origins,
            CorsOrigins::List(vec!["http://localhost:3000".into()])
        );
    }
    #[test]
    fn unknown_keys_and_empty_values_fall_back_to_defaults() {
        let c = with(&[("SOMETHING_ELSE", "x"), ("PORT", "")]).expect("valid");
        assert_eq!(c, Config::default());
    }

    const KEY_A: &str = "alpha-key-0123456789";
    const KEY_B: &str = "bravo-key-0123456789";
    const ADMIN: &str = "admin-key-0123456789";

    #[test]
    fn api_keys_give_each_tenant_its_keys_and_the_admin_its_own() {
        let c = with(&[
            ("API_KEYS", &format!("tenant-a:{KEY_A}, tenant.b : {KEY_B}")),
            ("ADMIN_API_KEY", ADMIN),
        ])
        .expect("valid");
        assert_eq!(
            c.api_keys.tenants,
            vec![
                ("tenant-a".to_owned(), Secret::new(KEY_A)),
                ("tenant.b".to_owned(), Secret::new(KEY_B))
            ]
        );
        assert_eq!(c.api_keys.admin, Some(Secret::new(ADMIN)));
        assert!(
            Config::default().api_keys.is_empty(),
            "no keys by default: the API is open"
        );
    }

    #[test]
    fn a_short_or_malformed_key_stops_the_start_without_showing_any_key() {
        let cases = [
            ("API_KEYS", "tenant-a:short-key".to_owned()),
            ("API_KEYS", format!("tenant-a:{KEY_A},no-colon-{KEY_B}")),
            ("API_KEYS", format!(":{KEY_A}")),
            ("API_KEYS", format!("bad tenant:{KEY_A}")),
            ("API_KEYS", format!("a:{KEY_A},b:{KEY_A}")),
            ("API_KEYS", "a:sixteen chars with spaces".to_owned()),
            ("ADMIN_API_KEY", "admin-short".to_owned()),
        ];
        for (key, value) in cases {
            let err = with(&[(key, value.as_str())]).expect_err(&value);
            let line = err.to_string();
            assert_eq!(err.key, key, "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
            for secret in [KEY_A, KEY_B, "short-key", "admin-short", "sixteen chars"] {
                assert!(!line.contains(secret), "the key leaked: {line}");
            }
        }
        let same = with(&[("API_KEYS", &format!("a:{KEY_A}")), ("ADMIN_API_KEY", KEY_A)]);
        assert_eq!(same.expect_err("admin is a tenant key").key, "ADMIN_API_KEY");
    }

    #[test]
    fn debug_output_never_shows_an_api_key() {
        let c = with(&[("API_KEYS", &format!("tenant-a:{KEY_A}")), ("ADMIN_API_KEY", ADMIN)]).expect("valid");
        let debug = format!("{c:?}");
        assert!(debug.contains("tenant-a"), "{debug}");
        assert!(!debug.contains(KEY_A) && !debug.contains(ADMIN), "{debug}");
    }

    fn env_example() -> HashMap<String, String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
        dotenvy::from_path_iter(path)
            .expect(".env.example exists")
            .map(|kv| kv.expect("parses"))
            .collect()
    }
    #[test]
    fn the_env_example_file_parses_to_the_defaults() {
        assert_eq!(Config::from_map(&env_example()).expect("valid"), Config::default());
    }
    #[test]
    fn the_env_example_lists_every_key_the_config_reads() {
        let asked = std::cell::RefCell::new(Vec::new());
        Config::from_lookup(|key| {
            asked.borrow_mut().push(key.to_owned());
            None
        })
        .expect("defaults are valid");
        let example = env_example();
        let asked = asked.into_inner();
        assert!(asked.len() >= 28, "only {} keys read", asked.len());
        let retired: Vec<&str> = read::RETIRED_KEYS.iter().map(|(key, _)| *key).collect();
        for key in asked.into_iter().filter(|key| !retired.contains(&key.as_str())) {
            assert!(example.contains_key(&key), "{key} is missing from .env.example");
        }
    }
    #[test]
    fn the_largest_settings_leave_every_derived_figure_in_range() {
        let c = with(&[
            ("MAX_PAYLOAD_SIZE_KB", "65536"),
            ("IDEMPOTENCY_TTL_SECONDS", "31536000"),
            ("SQLITE_WAL_LIMIT_MB", "65536"),
        ])
        .expect("valid");
        assert_eq!(c.max_payload_bytes(), 64 * 1024 * 1024);
        assert!(
            chrono::Utc::now()
                .checked_sub_signed(chrono::Duration::from_std(c.idempotency_ttl).expect("fits"))
                .is_some()
        );
        assert_eq!(c.sqlite_wal_limit_bytes(), 64 << 30);
    }
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    #[test]
    fn debug_output_shows_no_secret() {
        let c = with(&[
            ("CALLBACK_SIGNING_SECRET", SECRET),
            ("DATABASE_URL", "postgres://app:hunter2-pw@db.internal:5432/sync"),
        ])
        .expect("valid");
        let debug = format!("{c:?} {:?}", c.database());
        assert!(c.callback_signing_key.is_some());
        for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2-pw", "whsec_"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
    #[test]
    fn error_lines_show_no_secret() {
        let err = with(&[("CALLBACK_SIGNING_SECRET", "whsec_***my-real-secret***")]).expect_err("malformed");
        let line = err.to_string();
        assert!(!line.contains("my-real-secret"), "{line}");
        assert!(!format!("{err:?}").contains("my-real-secret"));
        assert!(
            line.starts_with("invalid CALLBACK_SIGNING_SECRET=\"<redacted>\""),
            "{line}"
        );

        let err = with(&[("DATABASE_URL", "mysql://app:hunter2-pw@db.internal/sync")]).expect_err("scheme");
        let line = err.to_string();
        assert!(!line.contains("hunter2-pw") && !line.contains("app:"), "{line}");
        assert!(line.contains("mysql://<redacted>@db.internal/sync"), "{line}");
    }
}
