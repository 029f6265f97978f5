//! The service's vocabulary, shared by storage and the HTTP API: which API a request came
//! through, where its work stands, and where its callback delivery stands. Storage decides how
//! to store them (`as_str` and `FromStr`); the API shows them, with their JSON schemas.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};
use utoipa::ToSchema;

/// Which API a request came through.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, EnumString, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    Sync,
    Async,
}

/// Where a request's work stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, EnumString, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Status {
    /// Stored and queued; no worker has started it.
    Pending,
    /// The engine is running it.
    Processing,
    /// Finished with a result.
    Done,
    /// Finished without a result (timeout, cancellation, engine failure).
    Failed,
}

/// Where a callback delivery stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, EnumString, IntoStaticStr, VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for the job to finish, or for `next_attempt_at`.
    Pending,
    /// An attempt is in flight.
    Delivering,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: retries used, 410, a redirect, another 4xx, or a refused address.
    Failed,
}

/// `as_str`, and `TryFrom<String>` for reading rows; strum derives the rest (`FromStr`, the
/// names, `VARIANTS`).
macro_rules! stored_as_text {
    ($($type:ident),+) => {$(
        impl $type {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl TryFrom<String> for $type {
            type Error = strum::ParseError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    )+};
}

stored_as_text!(Mode, Status, DeliveryStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_its_variant_and_matches_the_json_name() {
        for &mode in Mode::VARIANTS {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
            assert_eq!(serde_json::to_value(mode).expect("json"), mode.as_str());
        }
        for &status in Status::VARIANTS {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
            assert_eq!(serde_json::to_value(status).expect("json"), status.as_str());
        }
        for &status in DeliveryStatus::VARIANTS {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).expect("json"), status.as_str());
        }
        assert!("queued".parse::<Status>().is_err());
    }
}
