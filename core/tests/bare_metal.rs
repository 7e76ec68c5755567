//! The bare-metal example's logic (`examples/bare_metal/demo.rs`) run on the host: the
//! engine in a `static`, enum tasks, a fake clock and a static event source.

#[allow(dead_code)]
#[path = "../examples/bare_metal/demo.rs"]
mod demo;

#[test]
fn the_bare_metal_demo_blinks_five_times_and_sees_the_button_once() {
    assert_eq!(demo::run(), (5, 1, 2000));
    assert_eq!(demo::ENGINE.pending(), 0);
}
