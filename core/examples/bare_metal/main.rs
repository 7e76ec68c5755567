//! reseau-core on bare metal: the engine in a `static`, tasks as an enum, a board with a
//! fake clock and one interrupt line (see `demo.rs`). No allocator, no `std`.
//!
//! ```sh
//! cargo build -p reseau-core --example bare_metal --target thumbv7em-none-eabihf --release
//! size target/thumbv7em-none-eabihf/release/examples/bare_metal   # .text
//! cargo run -p reseau-core --example bare_metal                    # the same logic on the host
//! ```
#![cfg_attr(target_os = "none", no_std, no_main)]

mod demo;

/// The firmware's entry: runs the script, then parks.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let (toggles, presses, _) = demo::run();
    // Keep the result observable (a debugger would read it).
    core::hint::black_box((toggles, presses));
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    let (toggles, presses, ticks) = demo::run();
    println!("toggles {toggles}, presses {presses}, final tick {ticks}");
    assert_eq!((toggles, presses, ticks), (5, 1, 2000));
}
