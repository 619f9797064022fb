//! `mock-llm`: runs the mock LLM upstream (see the library docs for what it speaks).
//!
//! ```text
//! mock-llm [--listen 127.0.0.1:8000] [--record-limit 1000]
//! ```
//! `--listen 127.0.0.1:0` picks a free port. The first line on stdout is always
//! `mock-llm listening on http://ADDR`, so a test harness can read the port.

use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Arc;

use tollgate_mock_upstream::{http, Mock};

const USAGE: &str = "usage: mock-llm [--listen ADDR (default 127.0.0.1:8000)] [--record-limit N (default 1000; 0 = off)]";

fn main() {
    let mut listen = "127.0.0.1:8000".to_string();
    let mut record_limit = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| fail("--listen needs an address")),
            "--record-limit" => {
                record_limit = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| fail("--record-limit needs a number"))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e} (pick another port, or 127.0.0.1:0 for any free one)")));
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(listen);
    println!("mock-llm listening on http://{addr}");
    let _ = std::io::stdout().flush();
    if let Err(e) = http::serve(listener, Arc::new(Mock::new(record_limit))) {
        fail(&format!("server stopped: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("mock-llm: {msg}\n{USAGE}");
    std::process::exit(2);
}
