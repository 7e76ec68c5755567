//! A task bounced between two loops, each on its own thread: round trips per second, with
//! and without `EventLoopOptions::spin_before_park` (README "Performance").
//!
//! `cargo run --release -p reseau-linux --example pingpong -- [round trips] [spin µs]`

use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use reseau_linux::{EventLoop, EventLoopOptions, LoopHandle};

/// Schedules the next hop on `to`, which schedules the one after back on `from`, until
/// `left` hops are done; then reports on `done`.
fn hop(from: LoopHandle, to: LoopHandle, left: u64, done: Sender<()>) {
    if left == 0 {
        done.send(()).unwrap();
        return;
    }
    let back = from.clone();
    to.schedule_now(move |h, _| hop(h.clone(), back, left - 1, done))
        .map_err(|e| e.kind)
        .expect("schedule the next hop");
}

fn main() -> Result<(), reseau_linux::Error> {
    let mut args = std::env::args().skip(1);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let spin_us: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let options = || EventLoopOptions {
        spin_before_park: (spin_us > 0).then(|| Duration::from_micros(spin_us)),
        ..Default::default()
    };
    let (mut a, mut b) = (EventLoop::new(options())?, EventLoop::new(options())?);
    a.run()?;
    b.run()?;
    let (tx, rx) = channel();
    let start = Instant::now();
    hop(a.handle(), b.handle(), rounds * 2, tx);
    rx.recv().expect("the last hop reports");
    let took = start.elapsed();
    let (sa, sb) = (a.stats(), b.stats());
    println!(
        "{rounds} round trips in {took:?}: {:.0} round trips/s (spin {spin_us} µs; wakeups written {}, spun {})",
        rounds as f64 / took.as_secs_f64(),
        sa.wakeups_written + sb.wakeups_written,
        sa.wakeups_spun + sb.wakeups_spun,
    );
    a.destroy()?;
    b.destroy()?;
    Ok(())
}
