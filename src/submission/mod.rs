//! Accepting work: the part where the two APIs differ. The handlers in `routes/` only parse the
//! request and call one of these.

mod asynchronous;
mod sync;

pub use asynchronous::{AsyncAccepted, AsyncRequest, IdempotencyKey, accept_async};
pub use sync::{SyncRequest, SyncResponse, run_sync};

use uuid::Uuid;

use crate::engine::{self, Complexity};

/// A new, unique, roughly time-ordered request id.
pub fn new_request_id() -> String {
    Uuid::now_v7().to_string()
}

/// Seconds a client should wait before retrying work of `complexity`: about how long one such
/// run takes, never less than one.
pub fn retry_after_secs(complexity: u8) -> u64 {
    let nominal_ms = Complexity::new(complexity).map_or(1000.0, engine::nominal_ms);
    (nominal_ms / 1000.0).ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_nominal_duration() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(7), 2);
        assert_eq!(retry_after_secs(10), 5);
        assert_eq!(retry_after_secs(42), 1);
    }

    #[test]
    fn request_ids_are_unique_and_sortable_by_time() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(a < b, "{a} then {b}");
    }
}
