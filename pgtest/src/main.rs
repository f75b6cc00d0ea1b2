//! `fleetform-pg serve [--durable]`: starts a throwaway Postgres on a free loopback port,
//! prints its admin URL on one line, and keeps it until this process is stopped (or its
//! stdin closes). The test script runs one for the whole suite.

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        eprintln!("usage: fleetform-pg serve [--durable]");
        std::process::exit(2);
    }
    let durability = if args.iter().any(|a| a == "--durable") {
        fleetform_pgtest::Durability::Full
    } else {
        fleetform_pgtest::Durability::Throwaway
    };
    let server = match fleetform_pgtest::Server::start(durability) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("fleetform-pg: {error}");
            std::process::exit(1);
        }
    };
    println!("{}", server.admin_url());
    // Until stdin closes (or a signal ends this process, and the server with it).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}
