//! `cargo bench --bench compare -- --scale tiny|small|medium|large`: every step against
//! the stock tool doing the same work (see `benches/suite/mod.rs`).

#[path = "suite/mod.rs"]
mod suite;

fn main() {
    suite::main();
}
