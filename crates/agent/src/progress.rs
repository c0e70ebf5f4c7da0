//! How far the request the agent is carrying out has come, for the session to report to the
//! server each second while it runs (`AgentMessage::Progress`; total 0 when the work cannot
//! say). The agent carries out one request at a time, so one place in the process is enough:
//! work that can say how far it is sets it, the session reads it. The same place carries the
//! server's wish to cancel that request, which the work looks at where it can stop safely.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static DONE: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);
/// The part of the total the copy under way covers: from BASE, SPAN long.
static BASE: AtomicU64 = AtomicU64::new(0);
static SPAN: AtomicU64 = AtomicU64::new(0);
static CANCEL: AtomicBool = AtomicBool::new(false);

/// A new request starts: nothing done of nothing known, no cancellation asked.
pub fn reset() {
    set(0, 0);
    BASE.store(0, Ordering::Relaxed);
    SPAN.store(0, Ordering::Relaxed);
    CANCEL.store(false, Ordering::Relaxed);
}

/// The work has come to `done` of `total`.
pub fn set(done: u64, total: u64) {
    DONE.store(done, Ordering::Relaxed);
    TOTAL.store(total, Ordering::Relaxed);
}

/// How far the work has come: done, of total.
pub fn get() -> (u64, u64) {
    (DONE.load(Ordering::Relaxed), TOTAL.load(Ordering::Relaxed))
}

/// The copies that follow are `total` bytes in all (the disks of a VM-wide operation).
pub fn begin_bytes(total: u64) {
    set(0, total);
}

/// The next copy covers `span` bytes after the first `base` of the total.
pub fn copy_of(base: u64, span: u64) {
    BASE.store(base, Ordering::Relaxed);
    SPAN.store(span, Ordering::Relaxed);
    DONE.store(base, Ordering::Relaxed);
}

/// The copy under way is `basis_points` of 10,000 done: in bytes of the whole when the whole
/// is known, else in basis points of this copy.
pub fn copied(basis_points: u64) {
    let (base, span) = (BASE.load(Ordering::Relaxed), SPAN.load(Ordering::Relaxed));
    if TOTAL.load(Ordering::Relaxed) > 0 && span > 0 {
        let part = (u128::from(span) * u128::from(basis_points.min(10_000)) / 10_000) as u64;
        DONE.store(base.saturating_add(part), Ordering::Relaxed);
    } else {
        set(basis_points, 10_000);
    }
}

/// The server asked to cancel the request under way.
pub fn cancel() {
    CANCEL.store(true, Ordering::Relaxed);
}

/// Whether the request under way is to stop where that is safe.
pub fn cancelled() -> bool {
    CANCEL.load(Ordering::Relaxed)
}

/// Forgets a cancellation (its undoing runs to its end).
pub fn clear_cancel() {
    CANCEL.store(false, Ordering::Relaxed);
}

/// The progress `qemu-img convert -p` prints, `    (12.50/100%)`, in basis points.
pub fn parse_qemu_img(text: &str) -> Option<u64> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let percent: f64 = inner.parse().ok()?;
    (0.0..=100.0)
        .contains(&percent)
        .then(|| (percent * 100.0).round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_img_progress_is_read() {
        assert_eq!(super::parse_qemu_img("    (12.50/100%)"), Some(1250));
        assert_eq!(super::parse_qemu_img("(100.00/100%)"), Some(10_000));
        assert_eq!(super::parse_qemu_img("(0.00/100%)"), Some(0));
        assert_eq!(super::parse_qemu_img("(nan/100%)"), None);
        assert_eq!(super::parse_qemu_img("(120/100%)"), None);
        assert_eq!(super::parse_qemu_img("garbage"), None);
    }

    #[test]
    fn copies_count_in_bytes_of_the_whole() {
        super::reset();
        super::begin_bytes(3000);
        super::copy_of(1000, 2000);
        super::copied(5000);
        assert_eq!(super::get(), (2000, 3000));
        super::copied(20_000);
        assert_eq!(super::get(), (3000, 3000));
        super::reset();
        super::copied(1250);
        assert_eq!(super::get(), (1250, 10_000));
        assert!(!super::cancelled());
        super::cancel();
        assert!(super::cancelled());
        super::reset();
        assert!(!super::cancelled());
    }
}
