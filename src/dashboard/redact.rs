//! What the dashboard never shows: the query string and credentials of a callback URL, where
//! receivers often put a token. Applied to the URL itself and to every URL inside an error text.

/// `https://user:pw@host/path?token=x#f` -> `https://host/path?…`.
pub(crate) fn redact_url(raw: &str) -> String {
    let Ok(url) = url::Url::parse(raw) else {
        // Not a URL we can take apart: keep only what comes before any query or userinfo.
        let before_query = raw.split(['?', '#']).next().unwrap_or_default();
        let tail = if before_query.len() < raw.len() { "?…" } else { "" };
        return match before_query.rsplit_once('@') {
            Some((_, host_and_path)) => format!("…@{host_and_path}{tail}"),
            None => format!("{before_query}{tail}"),
        };
    };
    let host = url.host_str().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let query = if url.query().is_some() { "?…" } else { "" };
    format!("{}://{host}{port}{}{query}", url.scheme(), url.path())
}

/// Every `http://` or `https://` URL inside `text` redacted (an error message that quotes the
/// URL it failed on).
pub(crate) fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    [lower.find("http://"), lower.find("https://")]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_and_credentials_are_hidden() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com:8443/in?token=s3cret#x"),
            "https://hooks.example.com:8443/in?…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9000/callback"),
            "http://127.0.0.1:9000/callback"
        );
    }

    #[test]
    fn urls_inside_an_error_text_are_redacted_too() {
        let text = "error sending request for url (http://h.example/cb?sig=abc): connection refused";
        assert_eq!(
            redact_urls_in(text),
            "error sending request for url (http://h.example/cb?…): connection refused"
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
    }

    #[test]
    fn something_that_is_not_a_url_still_loses_its_query() {
        assert_eq!(redact_url("not a url?token=1"), "not a url?…");
    }
}
