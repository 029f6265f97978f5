//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`,
//! with the secret given as `whsec_<base64>`. The demo receiver verifies with the same type.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// A decoded signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("SigningKey(..)")
    }
}

/// The secret is not `whsec_` followed by non-empty base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret is `whsec_` followed by base64")]
pub struct BadSecret;

impl SigningKey {
    pub fn parse(secret: &str) -> Result<Self, BadSecret> {
        let encoded = secret.trim().strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
        let bytes = BASE64.decode(encoded).map_err(|_| BadSecret)?;
        if bytes.is_empty() {
            return Err(BadSecret);
        }
        Ok(Self(bytes))
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            BASE64.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }

    /// True when any `v1,` entry of a (space-separated) `webhook-signature` header matches.
    /// The comparison runs in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .any(|sig| {
                BASE64
                    .decode(sig)
                    .is_ok_and(|expected| self.mac(id, timestamp, body).verify_slice(&expected).is_ok())
            })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signing_matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse(SECRET).expect("valid secret");
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn verification_accepts_the_vector_and_rejects_any_change() {
        let key = SigningKey::parse(SECRET).expect("valid secret");
        assert!(key.verify(ID, TIMESTAMP, BODY, SIGNATURE));
        assert!(
            key.verify(ID, TIMESTAMP, BODY, &format!("v1,bm90LWl0 {SIGNATURE}")),
            "any listed signature may match"
        );
        assert!(!key.verify(ID, TIMESTAMP + 1, BODY, SIGNATURE));
        assert!(!key.verify("msg_other", TIMESTAMP, BODY, SIGNATURE));
        assert!(!key.verify(ID, TIMESTAMP, br#"{"test": 2432232315}"#, SIGNATURE));
        assert!(!key.verify(ID, TIMESTAMP, BODY, "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
        assert!(!key.verify(ID, TIMESTAMP, BODY, "garbage"));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***not base64***",
        ] {
            assert_eq!(SigningKey::parse(bad).err(), Some(BadSecret), "{bad}");
        }
        assert_eq!(
            format!("{:?}", SigningKey::parse(SECRET).expect("valid")),
            "SigningKey(..)"
        );
    }
}
