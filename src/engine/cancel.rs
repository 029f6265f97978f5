//! Cooperative cancellation: the engine polls a shared flag between small slices of work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cheap, cloneable flag. The async side sets it when a deadline passes or the server shuts
/// down; the engine checks it often enough to stop within a few milliseconds.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

/// The engine stopped early because its [`CancelToken`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("work was cancelled before it finished")]
pub struct Cancelled;

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that sets the flag when dropped: ties the engine's life to a caller's scope, so a
    /// caller that goes away (a dropped request future) stops the work it started.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }

    /// `Err(Cancelled)` once the flag is set, so loops can use `?`.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }
}

/// Sets its token when dropped; see [`CancelToken::cancel_on_drop`].
#[derive(Debug)]
#[must_use = "the token is cancelled as soon as the guard is dropped"]
pub struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_cancels_the_token() {
        let token = CancelToken::new();
        let guard = token.cancel_on_drop();
        assert!(!token.is_cancelled());
        drop(guard);
        assert_eq!(token.check(), Err(Cancelled));
    }
}
