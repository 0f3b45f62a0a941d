//! Test fixture, not an example: a WebAssembly component of the `wasi:cli/command` world.
//! It is a valid component that exports no `deliver`, so `outboxd plugin check` and the
//! host's loader must refuse it as a plugin of another world.

fn main() {
    println!("I am a command, not an outboxd plugin");
}
