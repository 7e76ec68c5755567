//! Prints the sizes of the engine's structures (the numbers in the crate docs).

use reseau_core::sim::SimPlatform;
use reseau_core::{Engine, Slot, SmallTask, TaskStatus};

type Fn0 = fn(&(), TaskStatus);

fn main() {
    let slot_small = size_of::<Slot<SmallTask<()>>>();
    let slot_fn = size_of::<Slot<Fn0>>();
    println!("SmallTask: {} bytes", size_of::<SmallTask<()>>());
    println!("Slot<SmallTask>: {slot_small} bytes");
    println!("Slot<fn>: {slot_fn} bytes");
    println!(
        "Engine (besides its slots, with a 4-event sim platform): {} bytes",
        size_of::<Engine<SimPlatform<(), 4>, Fn0, &'static [Slot<Fn0>]>>()
    );
    for n in [64usize, 4096, 65_536, 1 << 20] {
        println!(
            "{n} slots: {} KiB (SmallTask), {} KiB (fn)",
            n * slot_small / 1024,
            n * slot_fn / 1024
        );
    }
}
