use clap::Parser;
use wschat::server::{Config, Server};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = Config::parse();
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wschat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let addr = server.local_addr();
    let shown = if addr.ip().is_unspecified() {
        format!("http://localhost:{}/", addr.port())
    } else {
        format!("http://{addr}/")
    };
    // Tests read this line to learn the port.
    println!("wschat listening on {addr}; open {shown}");
    if let Err(e) = server.run() {
        eprintln!("wschat: {e}");
        std::process::exit(1);
    }
}
