//! Prints the size of the engine's structures.
fn main() {
    use reseau_core::{Slot, SmallTask, TaskStatus};
    println!(
        "Slot<SmallTask<()>>: {}",
        core::mem::size_of::<Slot<SmallTask<()>>>()
    );
    println!(
        "Slot<fn>: {}",
        core::mem::size_of::<Slot<fn(&(), TaskStatus)>>()
    );
    println!("SmallTask: {}", core::mem::size_of::<SmallTask<()>>());
}
