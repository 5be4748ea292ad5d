//! A local RTSP "camera" serving the sample clip (or a test pattern), for `make demo` and manual
//! testing: `cargo run --example sample_camera -- [--port 8554] [--pattern] [--user U --password P]`
//! (with a user, the camera asks for RTSP digest authentication).
//! Prints the stream URL on its first line of stdout, then serves until killed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;

fn main() {
    let mut port = 0u16;
    let mut source = common::Source::SampleClip;
    let (mut user, mut password) = (None, None);
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
            "--user" => user = Some(args.next().expect("--user U")),
            "--password" => password = Some(args.next().expect("--password P")),
            other => {
                eprintln!(
                    "unknown argument {other}; usage: sample_camera [--port N] [--pattern] [--user U --password P]"
                );
                std::process::exit(2);
            }
        }
    }
    let auth = match (user, password) {
        (Some(user), Some(password)) => common::Auth::Digest { user, password },
        (None, None) => common::Auth::None,
        _ => {
            eprintln!("--user and --password go together");
            std::process::exit(2);
        }
    };
    let server = common::RtspTestServer::start_on(source, auth, port);
    println!("{}", server.url());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}
