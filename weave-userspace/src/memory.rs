//! Gives the allocator's free memory back to the kernel.
//!
//! A burst of gossip (a router joining a full mesh of a hundred receives the records of
//! every peer from each new neighbour) decodes megabytes at once. glibc's allocator keeps
//! what is freed in its arenas, so an idle router would go on holding the memory of its
//! busiest moment. Trimming now and then returns every whole free page.

use std::time::Duration;

use tokio::sync::watch;

/// How often free memory is handed back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Returns the allocator's whole free pages to the kernel (glibc only; elsewhere nothing).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it walks the allocator's own free lists under
    // the arena locks it takes itself, so any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_INTERVAL`] until `stop` turns true.
pub async fn trim_periodically(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => trim(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
