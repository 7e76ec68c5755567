//! Prints the sizes of the core's structures per capacity (the table in the crate docs and
//! the README): `cargo run -p reseau-core --example sizes`. Sizes are for the host
//! (x86_64); a 32-bit target (thumbv7em) has smaller words.

use reseau_core::sim::SimPlatform;
use reseau_core::{Engine, Inbox, Lifecycle, Scheduler, Slot, SmallTask, TaskStatus};

type Fn0 = fn(&(), TaskStatus);
type Inline<const N: usize> = Engine<SimPlatform<(), 4>, Fn0, [Slot<Fn0>; N]>;

fn main() {
    let slot_small = size_of::<Slot<SmallTask<()>>>();
    let slot_fn = size_of::<Slot<Fn0>>();
    println!("SmallTask: {} bytes", size_of::<SmallTask<()>>());
    println!("Slot<SmallTask>: {slot_small} bytes");
    println!("Slot<fn>: {slot_fn} bytes");
    println!("Lifecycle: {} bytes", size_of::<Lifecycle>());
    println!(
        "Engine (besides its slots, with a 4-event sim platform): {} bytes",
        size_of::<Engine<SimPlatform<(), 4>, Fn0, &'static [Slot<Fn0>]>>()
    );
    println!(
        "Engine with fn tasks inline (Engine::new_inline), 16 / 64 / 256 slots: {} / {} / {} bytes",
        size_of::<Inline<16>>(),
        size_of::<Inline<64>>(),
        size_of::<Inline<256>>()
    );
    println!(
        "Inbox<u32, N>, 16 / 64 / 256: {} / {} / {} bytes",
        size_of::<Inbox<u32, 16>>(),
        size_of::<Inbox<u32, 64>>(),
        size_of::<Inbox<u32, 256>>()
    );
    println!(
        "Scheduler<u32, N>, 16 / 64 / 256: {} / {} / {} bytes",
        size_of::<Scheduler<u32, 16>>(),
        size_of::<Scheduler<u32, 64>>(),
        size_of::<Scheduler<u32, 256>>()
    );
    for n in [64usize, 4096, 65_536, 1 << 20] {
        println!(
            "{n} slots: {} KiB (SmallTask), {} KiB (fn)",
            n * slot_small / 1024,
            n * slot_fn / 1024
        );
    }
}
