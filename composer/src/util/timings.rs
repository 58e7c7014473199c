//! Where a build's time goes: wall time per step, for `pak build
//! --timings`, so a slow build names the step to blame.
//!
//! Steps nest (fetching a package converts and extracts it); each step is
//! credited only its own time, the time of steps inside it goes to them,
//! so the rows add up to the whole and nothing is counted twice. What no
//! step claims is shown as `other`. Times are per thread that entered the
//! step: a step timed on several threads at once can add up to more than
//! the wall time it spanned.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A step of `pak build`, in the order a cold build runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the Pakfile and lock, resolving when the lock must change.
    Resolve,
    /// Finding each package in the store or the download cache (and
    /// checking its hash), or downloading it.
    Fetch,
    /// Turning a `.deb` into a store entry (its data.tar decompressed,
    /// checked and hashed as it is written), or into a `.pak`.
    Convert,
    /// Unpacking a `.pak` into the store.
    Extract,
    /// Laying the packages' files out as one root tree.
    Assemble,
    /// The initramfs: pak as /init with the kernel's module closure.
    Initramfs,
    /// Writing the generation as squashfs.
    Squashfs,
    /// The ESP and the disk image around the generation.
    Disk,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Resolve,
        Step::Fetch,
        Step::Convert,
        Step::Extract,
        Step::Assemble,
        Step::Initramfs,
        Step::Squashfs,
        Step::Disk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Resolve => "resolve",
            Step::Fetch => "fetch",
            Step::Convert => "convert",
            Step::Extract => "extract",
            Step::Assemble => "assemble",
            Step::Initramfs => "initramfs",
            Step::Squashfs => "squashfs",
            Step::Disk => "disk",
        }
    }
}

static TOTALS: Mutex<[Duration; Step::ALL.len()]> = Mutex::new([Duration::ZERO; Step::ALL.len()]);

thread_local! {
    /// The steps this thread is inside, innermost last, each with when it
    /// last started being credited.
    static STACK: RefCell<Vec<(Step, Instant)>> = const { RefCell::new(Vec::new()) };
}

fn credit(step: Step, d: Duration) {
    let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    t[step as usize] += d;
}

/// Runs `f` as `step`.
pub fn time<T>(step: Step, f: impl FnOnce() -> T) -> T {
    let _guard = enter(step);
    f()
}

/// Times `step` until the guard drops.
pub fn enter(step: Step) -> Guard {
    let now = Instant::now();
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((outer, since)) = s.last_mut() {
            credit(*outer, now - *since);
            *since = now;
        }
        s.push((step, now));
    });
    Guard(())
}

#[must_use = "the step is timed until the guard drops"]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        let now = Instant::now();
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            if let Some((step, since)) = s.pop() {
                credit(step, now - since);
            }
            if let Some((_, since)) = s.last_mut() {
                *since = now;
            }
        });
    }
}

/// Each step's time so far, in [`Step::ALL`] order.
pub fn totals() -> [(Step, Duration); Step::ALL.len()] {
    let t = *TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    Step::ALL.map(|s| (s, t[s as usize]))
}

/// The table `--timings` prints: every step (zero when it had nothing to
/// do, so the rows are always the same), what no step claimed, the total.
pub fn render(steps: &[(Step, Duration)], total: Duration) -> String {
    let claimed: Duration = steps.iter().map(|(_, d)| *d).sum();
    let mut rows: Vec<(&str, Duration)> = steps.iter().map(|(s, d)| (s.name(), *d)).collect();
    rows.push(("other", total.saturating_sub(claimed)));
    let share = |d: Duration| {
        if total.is_zero() {
            0.0
        } else {
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        }
    };
    let mut out = format!("{:<10} {:>9} {:>6}\n", "step", "seconds", "share");
    for (name, d) in rows {
        out.push_str(&format!(
            "{name:<10} {:>9.3} {:>5.1}%\n",
            d.as_secs_f64(),
            share(d)
        ));
    }
    out.push_str(&format!("{:<10} {:>9.3}\n", "total", total.as_secs_f64()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_steps_are_credited_their_own_time_only() {
        // Other tests of this binary may time steps too: look at deltas.
        let before = totals();
        time(Step::Fetch, || {
            std::thread::sleep(Duration::from_millis(30));
            time(Step::Convert, || {
                std::thread::sleep(Duration::from_millis(60))
            });
        });
        let after = totals();
        let delta = |s: Step| after[s as usize].1 - before[s as usize].1;
        assert!(delta(Step::Convert) >= Duration::from_millis(60));
        assert!(delta(Step::Fetch) >= Duration::from_millis(30));
        assert!(
            delta(Step::Fetch) < Duration::from_millis(60),
            "fetch was credited convert's time: {:?}",
            delta(Step::Fetch)
        );
    }

    #[test]
    fn the_table_names_every_step_and_what_none_claimed() {
        let steps = Step::ALL.map(|s| (s, Duration::from_millis(100)));
        let table = render(&steps, Duration::from_secs(1));
        for s in Step::ALL {
            assert!(table.contains(&format!("\n{:<10}     0.100  10.0%\n", s.name())));
        }
        assert!(table.contains("\nother          0.200  20.0%\n"), "{table}");
        assert!(table.ends_with("total          1.000\n"), "{table}");
    }
}
