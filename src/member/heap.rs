//! Handing the heap memory freed by a burst of work back to the kernel once
//! the member goes quiet.
//!
//! glibc's `malloc` keeps the memory a program frees in its arenas for the
//! next allocations; on its own it returns only a free block at the very top
//! of the main heap. So the memory a member used while starting (replaying its
//! log, opening the store) or while serving a burst of requests stays counted
//! in its RSS long after: about 0.9 of the 2.5 MiB of anonymous memory of a
//! member idle after start-up.
//!
//! [`release_when_quiet`] looks at the member's activity (its applied index
//! and the bytes its clients sent) once a second. The first second in which
//! nothing moved after some activity, it calls `malloc_trim(0)`, which gives
//! every whole free page of every arena back to the kernel. It runs once per
//! quiet spell and never under load, so it takes the allocator's locks only
//! when nobody needs them; jemalloc and mimalloc do the same on a timer of
//! their own. With another allocator or C library it does nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::Core;

/// How often the activity is looked at; also how long the member must be
/// quiet before its free memory is released.
const PERIOD: Duration = Duration::from_secs(1);

/// Releases the free heap memory each time the member goes quiet, until
/// `shutdown`.
pub(super) async fn release_when_quiet(core: Arc<Core>, shutdown: CancellationToken) {
    let activity = |core: &Core| {
        core.raft
            .status()
            .applied_index
            .wrapping_add(core.metrics.client_grpc_received.get())
    };
    let mut quiet = Quiet::new(activity(&core));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.cancelled() => return,
        }
        if quiet.observe(activity(&core)) {
            release_free_heap();
        }
    }
}

/// Tells, from successive readings of an activity counter, when a quiet
/// spell begins. Start-up counts as activity.
#[derive(Debug)]
struct Quiet {
    last: u64,
    busy: bool,
}

impl Quiet {
    fn new(activity: u64) -> Self {
        Quiet {
            last: activity,
            busy: true,
        }
    }

    /// Takes the next reading; true when it is the first without change
    /// since the last change.
    fn observe(&mut self, activity: u64) -> bool {
        if activity != self.last {
            self.last = activity;
            self.busy = true;
            false
        } else {
            std::mem::replace(&mut self.busy, false)
        }
    }
}

/// Returns the allocator's free pages to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the kernel (nothing to do here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_quiet_reading_after_start_up_releases() {
        let mut q = Quiet::new(5);
        assert!(q.observe(5));
        assert!(!q.observe(5), "once per quiet spell");
        assert!(!q.observe(5));
    }

    #[test]
    fn activity_postpones_the_release_until_it_stops() {
        let mut q = Quiet::new(5);
        assert!(!q.observe(6));
        assert!(!q.observe(9));
        assert!(q.observe(9));
        assert!(!q.observe(9));
        assert!(!q.observe(10), "a new burst");
        assert!(q.observe(10), "and its end");
    }

    #[test]
    fn releasing_the_free_heap_keeps_live_memory_intact() {
        let kept: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        drop((0..256).map(|_| vec![0u8; 8192]).collect::<Vec<_>>());
        release_free_heap();
        for (i, v) in kept.iter().enumerate() {
            assert!(v.iter().all(|&b| b == i as u8));
        }
    }
}
