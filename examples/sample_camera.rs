//! A local RTSP "camera" serving the sample clip (or a test pattern), for `make demo` and manual
//! testing: `cargo run --example sample_camera -- [--port 8554] [--pattern]`.
//! Prints the stream URL on its first line of stdout, then serves until killed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;

fn main() {
    let mut port = 0u16;
    let mut source = common::Source::SampleClip;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            "--pattern" => {
                source = common::Source::Pattern {
                    width: 1280,
                    height: 720,
                    fps: 25,
                }
            }
            other => {
                eprintln!("unknown argument {other}; usage: sample_camera [--port N] [--pattern]");
                std::process::exit(2);
            }
        }
    }
    let server = common::RtspTestServer::start_on(source, common::Auth::None, port);
    println!("{}", server.url());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}
