//! The migrations are embedded at compile time: a new or renamed migration
//! file must rebuild this crate.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
