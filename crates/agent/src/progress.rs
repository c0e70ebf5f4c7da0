//! How far the request the agent is carrying out has come, for the session to report to the
//! server each second while it runs (`AgentMessage::Progress`; total 0 when the work cannot
//! say). The agent carries out one request at a time, so one place in the process is enough:
//! work that can say how far it is sets it, the session reads it.

use std::sync::atomic::{AtomicU64, Ordering};

static DONE: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// The work has come to `done` of `total`.
pub fn set(done: u64, total: u64) {
    DONE.store(done, Ordering::Relaxed);
    TOTAL.store(total, Ordering::Relaxed);
}

/// How far the work has come: done, of total.
pub fn get() -> (u64, u64) {
    (DONE.load(Ordering::Relaxed), TOTAL.load(Ordering::Relaxed))
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
}
