//! Typed reads of settings: `Lookup` turns a key -> value source into numbers within bounds,
//! durations, lists, flags and choices, each failure a one-line `ConfigError` naming the key.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    ApiKeys, ConfigError, CorsOrigins, DatabaseUrl, EngineCalibration, EnginePriority, LogFormat, LoopbackCallbacks,
    MIN_API_KEY_LEN, Secret,
};
use crate::signing::SigningKey;
use crate::trusted_proxies::TrustedProxies;

/// Settings that are no longer read, and what replaced them. Set to a value that would have
/// changed anything, they stop the start rather than be silently ignored.
pub(super) const RETIRED_KEYS: [(&str, &str); 1] = [(
    "TRUST_FORWARDED_FOR",
    "false or unset: it was replaced by TRUSTED_PROXIES, the proxies' addresses (such as 127.0.0.1)",
)];

/// The largest MAX_PAYLOAD_SIZE_KB: 64 MiB, far above any valid payload.
pub(super) const MAX_PAYLOAD_SIZE_KB: usize = 65_536;
/// The longest APP_NAME or REPLICA_NAME.
const MAX_NAME_CHARS: usize = 200;

/// Typed reads over a key -> value source, each producing a `ConfigError` that names the key.
pub(super) struct Lookup<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Lookup<'_> {
    pub(super) fn raw(&self, key: &str) -> Option<String> {
        (self.0)(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub(super) fn error(&self, key: &'static str, expected: &str) -> ConfigError {
        ConfigError::new(key, &self.raw(key).unwrap_or_default(), expected)
    }

    pub(super) fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    pub(super) fn optional(&self, key: &str) -> Option<String> {
        self.raw(key)
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        key: &'static str,
        default: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.string(key, default);
        value.parse().map_err(|_| ConfigError::new(key, &value, expected))
    }

    /// Text shown to people (a name): at most MAX_NAME_CHARS, no control characters.
    pub(super) fn text(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.string(key, default);
        if value.chars().count() > MAX_NAME_CHARS || value.chars().any(char::is_control) {
            return Err(self.error(
                key,
                &format!("at most {MAX_NAME_CHARS} characters, none of them control characters"),
            ));
        }
        Ok(value)
    }

    /// A whole number from 1 to `max`.
    pub(super) fn count(&self, key: &'static str, default: usize, max: usize) -> Result<usize, ConfigError> {
        let expected = format!("a whole number from 1 to {max}");
        let n: usize = self.parse(key, &default.to_string(), &expected)?;
        if !(1..=max).contains(&n) {
            return Err(self.error(key, &expected));
        }
        Ok(n)
    }

    /// Seconds from `min` to `max`; fractions allowed (`0.25`). The upper bounds keep every
    /// deadline, interval and timestamp computed from a setting far from overflowing.
    pub(super) fn seconds(
        &self,
        key: &'static str,
        default: &str,
        min: f64,
        max: f64,
    ) -> Result<Duration, ConfigError> {
        let expected = format!("a number of seconds from {min} to {max}");
        let secs: f64 = self.parse(key, default, &expected)?;
        if !(min..=max).contains(&secs) {
            return Err(self.error(key, &expected));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// Whole milliseconds within `range`.
    pub(super) fn millis(
        &self,
        key: &'static str,
        default: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        let expected = format!(
            "a whole number of milliseconds from {} to {}",
            range.start(),
            range.end()
        );
        let ms: u64 = self.parse(key, default, &expected)?;
        if !range.contains(&ms) {
            return Err(self.error(key, &expected));
        }
        Ok(Duration::from_millis(ms))
    }

    /// TRUSTED_PROXIES: a list of addresses or CIDRs; empty trusts no one.
    pub(super) fn trusted_proxies(&self, key: &'static str) -> Result<TrustedProxies, ConfigError> {
        TrustedProxies::parse(&address_list(&self.string(key, ""))).map_err(|bad| {
            self.error(
                key,
                &format!(
                    "a list of proxy addresses or CIDRs such as 127.0.0.1,10.0.0.0/8,[::1] ({})",
                    bad
                ),
            )
        })
    }

    /// LOOPBACK_CALLBACKS, with BLOCK_LOCALHOST=true (the original's switch) meaning `never`.
    pub(super) fn loopback_callbacks(
        &self,
        key: &'static str,
        block_key: &'static str,
    ) -> Result<LoopbackCallbacks, ConfigError> {
        let expected = "local (only clients on this host), any or never";
        let mode = match self.raw(key).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("local") => Some(LoopbackCallbacks::Local),
            Some("any") => Some(LoopbackCallbacks::Any),
            Some("never") => Some(LoopbackCallbacks::Never),
            Some(_) => return Err(self.error(key, expected)),
        };
        let blocked = self.flag(block_key, false)?;
        match (blocked, mode) {
            (true, Some(LoopbackCallbacks::Local | LoopbackCallbacks::Any)) => Err(self.error(
                block_key,
                "false, or LOOPBACK_CALLBACKS unset or never (BLOCK_LOCALHOST=true means LOOPBACK_CALLBACKS=never)",
            )),
            (true, _) => Ok(LoopbackCallbacks::Never),
            (false, mode) => Ok(mode.unwrap_or(LoopbackCallbacks::Local)),
        }
    }

    /// Refuses a retired key set to anything but false.
    pub(super) fn check_retired(&self) -> Result<(), ConfigError> {
        for (key, expected) in RETIRED_KEYS {
            let set = self.raw(key).map(|v| v.to_ascii_lowercase());
            if set.is_some_and(|v| !matches!(v.as_str(), "false" | "0" | "no" | "off")) {
                return Err(self.error(key, expected));
            }
        }
        Ok(())
    }

    /// A `postgres://`, `postgresql://` or `sqlite://` URL; any other scheme stops the start.
    pub(super) fn database_url(&self, key: &'static str) -> Result<Option<DatabaseUrl>, ConfigError> {
        let Some(raw) = self.optional(key) else {
            return Ok(None);
        };
        let expected = "a postgres://user@host:port/database URL, or sqlite://path";
        let scheme = raw.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        // The error line shows the URL without its user and password (`ConfigError::new`).
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => match url::Url::parse(&raw) {
                Ok(url) if url.host().is_some() || url.query().is_some_and(|q| q.contains("host=")) => {
                    Ok(Some(DatabaseUrl::Postgres(Secret::new(raw))))
                }
                _ => Err(self.error(key, expected)),
            },
            Some("sqlite") => {
                let path = raw["sqlite:".len()..].trim_start_matches("//");
                if path.is_empty() {
                    return Err(self.error(key, expected));
                }
                Ok(Some(DatabaseUrl::Sqlite(PathBuf::from(path))))
            }
            _ => Err(self.error(key, expected)),
        }
    }

    /// Hours, fractions allowed; 0 keeps everything.
    pub(super) fn retention(&self, key: &'static str, default: &str) -> Result<Option<Duration>, ConfigError> {
        let expected = "a number of hours from 0 (keep everything) to 87600";
        let hours: f64 = self.parse(key, default, expected)?;
        if !(0.0..=87_600.0).contains(&hours) {
            return Err(self.error(key, expected));
        }
        Ok((hours > 0.0).then(|| Duration::from_secs_f64(hours * 3600.0)))
    }

    /// A Standard Webhooks secret, decoded once here.
    pub(super) fn signing_key(&self, key: &'static str) -> Result<Option<SigningKey>, ConfigError> {
        self.optional(key)
            .map(|secret| SigningKey::parse(&secret).map_err(|_| self.error(key, "`whsec_` followed by base64")))
            .transpose()
    }

    pub(super) fn flag(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(_) => Err(self.error(key, "true or false")),
        }
    }

    pub(super) fn engine_priority(&self, key: &'static str, default: &str) -> Result<EnginePriority, ConfigError> {
        match self.string(key, default).to_ascii_lowercase().as_str() {
            "idle" => Ok(EnginePriority::Idle),
            "low" => Ok(EnginePriority::Low),
            "normal" => Ok(EnginePriority::Normal),
            _ => Err(self.error(key, "idle, low or normal")),
        }
    }

    pub(super) fn engine_calibration(
        &self,
        key: &'static str,
        default: &str,
    ) -> Result<EngineCalibration, ConfigError> {
        match self.string(key, default).to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineCalibration::Auto),
            "remeasure" => Ok(EngineCalibration::Remeasure),
            "fixed" => Ok(EngineCalibration::Fixed),
            _ => Err(self.error(
                key,
                "auto (measure this machine once and keep its factors), remeasure or fixed (the reference amounts)",
            )),
        }
    }

    pub(super) fn log_format(&self, key: &'static str, default: &str) -> Result<LogFormat, ConfigError> {
        match self.string(key, default).to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(self.error(key, "json or pretty")),
        }
    }

    /// Accepts `http,https` and the original's JSON form `["http","https"]`.
    pub(super) fn schemes(&self, key: &'static str, default: &str) -> Result<Vec<String>, ConfigError> {
        let expected = "a list such as http,https or [\"http\",\"https\"] of http and https";
        let schemes: Vec<String> = list(&self.string(key, default))
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if schemes.is_empty() || schemes.iter().any(|s| s != "http" && s != "https") {
            return Err(self.error(key, expected));
        }
        Ok(schemes)
    }

    /// API_KEYS (`tenant:key,tenant:key`) and ADMIN_API_KEY. The error line never shows a key:
    /// it names the entry that is wrong instead.
    pub(super) fn api_keys(&self, tenants_key: &'static str, admin_key: &'static str) -> Result<ApiKeys, ConfigError> {
        let hidden = |key: &'static str, expected: String| ConfigError {
            key,
            value: "(hidden)".to_owned(),
            expected,
        };
        let mut keys = ApiKeys::default();
        for (n, entry) in self.optional(tenants_key).unwrap_or_default().split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let expected = |why: &str| {
                format!(
                    "comma-separated tenant:key pairs, with tenant names of 1 to 64 letters, digits, '.', '_' or '-' and keys of at least {MIN_API_KEY_LEN} visible characters (entry {} {why})",
                    n + 1
                )
            };
            let Some((tenant, key)) = entry.split_once(':') else {
                return Err(hidden(tenants_key, expected("has no ':'")));
            };
            let (tenant, key) = (tenant.trim(), key.trim());
            if !is_tenant_name(tenant) {
                return Err(hidden(tenants_key, expected("has a tenant name that is not allowed")));
            }
            if !is_api_key(key) {
                return Err(hidden(
                    tenants_key,
                    expected("has a key that is too short or not visible ASCII"),
                ));
            }
            if keys.tenants.iter().any(|(_, other)| other.expose() == key) {
                return Err(hidden(tenants_key, expected("repeats a key already given")));
            }
            keys.tenants.push((tenant.to_owned(), Secret::new(key)));
        }
        if let Some(admin) = self.optional(admin_key) {
            if !is_api_key(&admin) {
                return Err(hidden(
                    admin_key,
                    format!("a key of at least {MIN_API_KEY_LEN} visible ASCII characters"),
                ));
            }
            if keys.tenants.iter().any(|(_, key)| key.expose() == admin) {
                return Err(hidden(admin_key, "a key that is not also a tenant's key".to_owned()));
            }
            keys.admin = Some(Secret::new(admin));
        }
        Ok(keys)
    }

    /// Empty, or `/` followed by path segments of URL-safe characters, without a trailing `/`.
    pub(super) fn base_path(&self, key: &'static str) -> Result<String, ConfigError> {
        let Some(path) = self.optional(key) else {
            return Ok(String::new());
        };
        let segment_ok = |s: &str| {
            !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        };
        match path.strip_prefix('/') {
            Some(rest) if rest.split('/').all(segment_ok) => Ok(path),
            _ => Err(self.error(
                key,
                "empty, or a path such as /ops: a leading /, no trailing /, segments of letters, digits, - . _ ~",
            )),
        }
    }

    pub(super) fn cors_origins(&self, key: &'static str, default: &str) -> CorsOrigins {
        let origins = list(&self.string(key, default));
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            CorsOrigins::Any
        } else {
            CorsOrigins::List(origins)
        }
    }
}

/// 1 to 64 letters, digits, `.`, `_` or `-`: safe in a log line, a rate-limit key and a URL.
pub(super) fn is_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// At least `MIN_API_KEY_LEN` visible ASCII characters: what fits in a `Bearer` header as is.
pub(super) fn is_api_key(key: &str) -> bool {
    key.len() >= MIN_API_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The host name, for the default REPLICA_NAME.
pub(super) fn default_replica_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "replica".to_owned())
}

/// `scheme://host[:port]` with nothing after it: what a browser sends as `Origin`.
pub(super) fn is_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.path() == "/"
            && !origin.ends_with('/')
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
    })
}

/// Like `list`, but the brackets of `[::1]` or `[2001:db8::/32]` are kept: only a quoted JSON
/// list (`["10.0.0.1","[::1]"]`) loses its outer brackets.
fn address_list(raw: &str) -> Vec<String> {
    let raw = raw.trim();
    let json_form = raw.starts_with('[') && raw.ends_with(']') && raw.contains(['"', '\'']);
    let inner = if json_form { &raw[1..raw.len() - 1] } else { raw };
    inner
        .split(',')
        .map(|item| item.trim().trim_matches(|c| c == '"' || c == '\'').trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Splits `a,b` or `["a","b"]` into trimmed, unquoted, non-empty items.
fn list(raw: &str) -> Vec<String> {
    let inner = raw.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(|item| item.trim().trim_matches(|c| c == '"' || c == '\'').trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn every_number_is_bounded_at_both_ends() {
        // (key, the lowest valid, the highest valid, just below, just above)
        let bounds: &[(&str, &str, &str, &str, &str)] = &[
            ("LEASE_SECONDS", "0.3", "3600", "0.29", "3601"),
            ("RESCUE_INTERVAL_SECONDS", "0.01", "3600", "0.009", "3601"),
            ("POLL_INTERVAL_SECONDS", "0.001", "1", "0.0009", "1.01"),
            ("NOTIFY_INTERVAL_MS", "50", "100", "49", "101"),
            ("WORK_TIMEOUT_SECONDS", "0.001", "3600", "0", "3601"),
            ("SHUTDOWN_GRACE_SECONDS", "0.001", "3600", "0", "1e9"),
            ("CALLBACK_TIMEOUT_SECONDS", "0.001", "600", "0", "601"),
            ("CALLBACK_MAX_RETRY_AFTER_SECONDS", "0.001", "86400", "0", "1e9"),
            ("RATE_LIMIT_WINDOW_SECONDS", "0.001", "86400", "0", "1e300"),
            ("IDEMPOTENCY_TTL_SECONDS", "1", "31536000", "0.5", "1e15"),
            ("CALLBACK_RETRY_UNIT_MS", "1", "3600000", "0", "18446744073709551615"),
            ("MAX_SYNC_CONCURRENCY", "1", "1024", "0", "1025"),
            ("NUM_WORKERS", "1", "1024", "0", "18446744073709551615"),
            ("CLAIM_AHEAD", "0", "1024", "-1", "1025"),
            ("MAX_QUEUE_SIZE", "1", "1000000000", "0", "1000000001"),
            ("MAX_CONCURRENT_DELIVERIES", "1", "10000", "0", "10001"),
            ("MAX_PAYLOAD_SIZE_KB", "1", "65536", "0", "18014398509481984"),
            ("MAX_CALLBACK_RETRIES", "0", "20", "-1", "21"),
            ("RETRY_BACKOFF_BASE", "1", "10", "0.99", "10.01"),
            ("RATE_LIMIT_REQUESTS", "1", "4294967295", "0", "4294967296"),
            ("DATABASE_MAX_CONNECTIONS", "4", "1000", "3", "1001"),
            ("JOB_MAX_ATTEMPTS", "1", "100", "0", "101"),
            ("SQLITE_WAL_LIMIT_MB", "1", "65536", "0", "65537"),
            ("RETENTION_HOURS", "0", "87600", "-1", "87601"),
            ("PORT", "0", "65535", "-1", "65536"),
        ];
        for (key, low, high, below, above) in bounds {
            with(&[(key, low)]).unwrap_or_else(|e| panic!("{key}={low}: {e}"));
            with(&[(key, high)]).unwrap_or_else(|e| panic!("{key}={high}: {e}"));
            for bad in [below, above, &"NaN", &"inf", &"ten"] {
                let err = with(&[(key, bad)]).expect_err(&format!("{key}={bad}"));
                assert_eq!(err.key, *key, "{err}");
                assert_eq!(err.to_string().lines().count(), 1, "{err}");
            }
        }
    }
    #[test]
    fn names_are_bounded_and_free_of_control_characters() {
        for key in ["APP_NAME", "REPLICA_NAME"] {
            assert!(with(&[(key, &"n".repeat(MAX_NAME_CHARS))]).is_ok());
            assert_eq!(with(&[(key, &"n".repeat(MAX_NAME_CHARS + 1))]).expect_err(key).key, key);
            assert_eq!(with(&[(key, "a\u{1b}[31mred")]).expect_err(key).key, key);
        }
    }
    #[test]
    fn trusted_proxies_take_addresses_and_cidrs_with_ports_and_brackets() {
        for raw in [
            "127.0.0.1/32, [::1]:8080, 10.0.0.1:443, [2001:db8::/32]",
            r#"["127.0.0.1/32", "[::1]:8080", "10.0.0.1:443", "[2001:db8::/32]"]"#,
        ] {
            let c = with(&[("TRUSTED_PROXIES", raw)]).expect(raw);
            for ip in ["127.0.0.1", "::1", "10.0.0.1", "2001:db8::5"] {
                assert!(c.trusted_proxies.contains(ip.parse().expect("ip")), "{ip} in {raw}");
            }
        }
        let c = with(&[("TRUSTED_PROXIES", "[::1]")]).expect("one bracketed address");
        assert!(c.trusted_proxies.contains("::1".parse().expect("ip")));
        assert!(!c.trusted_proxies.contains("127.0.0.2".parse().expect("ip")));
        let err = with(&[("TRUSTED_PROXIES", "127.0.0.1,proxy.internal")]).expect_err("a name");
        assert_eq!(err.key, "TRUSTED_PROXIES");
        assert!(err.to_string().contains("`proxy.internal`"), "{err}");
    }
    #[test]
    fn the_retired_trust_forwarded_for_stops_the_start_unless_false() {
        let err = with(&[("TRUST_FORWARDED_FOR", "true")]).expect_err("retired");
        assert_eq!(err.key, "TRUST_FORWARDED_FOR");
        assert!(err.to_string().contains("TRUSTED_PROXIES"), "{err}");
        assert!(with(&[("TRUST_FORWARDED_FOR", "false")]).is_ok());
    }
    #[test]
    fn loopback_callbacks_are_local_by_default_and_block_localhost_means_never() {
        let mode = |pairs: &[(&str, &str)]| with(pairs).map(|c| c.loopback_callbacks);
        assert_eq!(mode(&[]), Ok(LoopbackCallbacks::Local));
        assert_eq!(mode(&[("LOOPBACK_CALLBACKS", "ANY")]), Ok(LoopbackCallbacks::Any));
        assert_eq!(mode(&[("LOOPBACK_CALLBACKS", "never")]), Ok(LoopbackCallbacks::Never));
        assert_eq!(mode(&[("BLOCK_LOCALHOST", "true")]), Ok(LoopbackCallbacks::Never));
        assert_eq!(
            mode(&[("BLOCK_LOCALHOST", "true"), ("LOOPBACK_CALLBACKS", "never")]),
            Ok(LoopbackCallbacks::Never)
        );
        assert_eq!(
            mode(&[("BLOCK_LOCALHOST", "true"), ("LOOPBACK_CALLBACKS", "any")])
                .expect_err("conflict")
                .key,
            "BLOCK_LOCALHOST"
        );
        assert_eq!(
            mode(&[("LOOPBACK_CALLBACKS", "sometimes")]).expect_err("bad").key,
            "LOOPBACK_CALLBACKS"
        );
    }
}
