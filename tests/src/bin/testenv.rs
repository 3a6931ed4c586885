//! `celeriac-testenv rabbitmq`: starts one private RabbitMQ node for a whole
//! test run, prints `CELERIAC_TEST_AMQP_URL=<url>`, `CELERIAC_TEST_AMQPS_URL=<url>`
//! and `CELERIAC_TEST_AMQP_CA=<path>` on stdout (one a line), and stops the node
//! when its stdin closes (or when it is killed: a watchdog then stops the node).
//!
//! `scripts/test` runs it as a coprocess so every test binary shares the node.

use std::io::{Read, Write};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    if what != "rabbitmq" {
        eprintln!("usage: celeriac-testenv rabbitmq");
        std::process::exit(2);
    }
    let node = match celeriac_tests::RabbitNode::start() {
        Ok(node) => node,
        Err(e) => {
            eprintln!("celeriac-testenv: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}={}", celeriac_tests::AMQP_URL_ENV, node.url());
    let _ = writeln!(out, "{}={}", celeriac_tests::AMQPS_URL_ENV, node.amqps_url());
    let _ = writeln!(out, "{}={}", celeriac_tests::AMQP_CA_ENV, node.ca_file().display());
    let _ = out.flush();
    eprintln!("celeriac-testenv: RabbitMQ node {} on port {}; close stdin to stop it", node.node_name(), node.port());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    node.stop();
}
