//! `tollgate-counter`: flags are parsed and dispatched in `tollgate_counter::cli`.

fn main() {
    std::process::exit(tollgate_counter::cli::main());
}
