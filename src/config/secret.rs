//! What of a setting may be shown. `Secret` keeps a value out of `Debug`; an error line shows a
//! secret setting's value redacted (DATABASE_URL without its user and password), and a `.env`
//! line that does not parse only by its key.

use super::ConfigError;

/// Settings whose values are never printed, not even in an error line: the value is replaced
/// by `<redacted>` (DATABASE_URL keeps everything but its user and password).
const SECRET_KEYS: [&str; 4] = ["CALLBACK_SIGNING_SECRET", "DATABASE_URL", "API_KEYS", "ADMIN_API_KEY"];

/// A value that must not be printed: `Debug` shows `Secret(..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What of `value` may appear in an error line.
pub(super) fn shown(key: &str, value: &str) -> String {
    match key {
        "DATABASE_URL" => without_userinfo(value),
        _ if SECRET_KEYS.contains(&key) => "<redacted>".to_owned(),
        _ => value.to_owned(),
    }
}

/// `scheme://user:password@host/db` -> `scheme://<redacted>@host/db`. Anything before the last
/// `@` may be a credential, parseable URL or not.
fn without_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
            let separator = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{separator}<redacted>@{after}")
        }
        None => url.to_owned(),
    }
}

/// The `.env` error as one line. A line that does not parse is not echoed (it may hold a
/// secret); only its key is named, when it looks like one.
pub(super) fn dotenv_error(err: &dotenvy::Error) -> ConfigError {
    let expected = "KEY=value lines (quote values that contain spaces)";
    let value = match err {
        dotenvy::Error::LineParse(line, _) => {
            let key = line.split('=').next().unwrap_or("").trim();
            let looks_like_a_key = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if looks_like_a_key {
                format!("the line of {key} does not parse")
            } else {
                "a line does not parse".to_owned()
            }
        }
        other => other.to_string(),
    };
    ConfigError {
        key: ".env",
        value,
        expected: expected.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_shows_no_credentials_and_other_secrets_show_nothing() {
        assert_eq!(
            shown("DATABASE_URL", "postgres://app:pw@db:5432/x"),
            "postgres://<redacted>@db:5432/x"
        );
        assert_eq!(shown("DATABASE_URL", "app:pw@db/x"), "<redacted>@db/x");
        assert_eq!(shown("DATABASE_URL", "postgres://db/x"), "postgres://db/x");
        assert_eq!(shown("CALLBACK_SIGNING_SECRET", "whsec_abc"), "<redacted>");
        assert_eq!(shown("PORT", "eighty"), "eighty");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(..)");
    }

    #[test]
    fn a_dotenv_line_that_does_not_parse_is_named_by_its_key_only() {
        let err = dotenv_error(&dotenvy::Error::LineParse(
            "CALLBACK_SIGNING_SECRET=whsec_abc def".to_owned(),
            31,
        ));
        assert!(!err.to_string().contains("whsec_abc"), "{err}");
        assert!(err.to_string().contains("CALLBACK_SIGNING_SECRET"), "{err}");
        let err = dotenv_error(&dotenvy::Error::LineParse("whsec_abc def".to_owned(), 5));
        assert!(!err.to_string().contains("whsec_abc"), "{err}");
    }
}
