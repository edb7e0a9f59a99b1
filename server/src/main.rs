//! `strom-server`: the Strom broker. All of it is the `strom_server`
//! library ([`strom_server::node`] starts it); this is only the entry point.

use clap::Parser;
use strom_server::config::Args;

#[global_allocator]
static GLOBAL: strom_server::alloc::StromAlloc = strom_server::alloc::StromAlloc;

fn main() {
    let args = Args::parse();
    strom_server::node::init_logging(args.log_format.unwrap_or_default());
    match strom_server::node::run(args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(error = %e, "strom-server failed");
            eprintln!("strom-server: {e}");
            std::process::exit(1);
        }
    }
}
