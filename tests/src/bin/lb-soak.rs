//! The chaos soak behind `cargo xtask soak`: `lb-soak --lb PATH [--duration
//! 10m] [--seed N] [--cluster]`. Prints a summary; exits 1 if any check was
//! violated.

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut duration, mut seed, mut mode) = (Duration::from_secs(600), 0x5eed_u64, testbed::soak::Mode::Single);
    while let Some(arg) = args.next() {
        if arg == "--cluster" {
            mode = testbed::soak::Mode::Cluster;
            continue;
        }
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            // The test bed's agent guard reads the binary from LB_BIN.
            // SAFETY: set before any thread starts.
            "--lb" => unsafe { std::env::set_var("LB_BIN", value) },
            "--duration" => {
                duration = lb_userspace::config::parse_duration(&value).unwrap_or_else(|e| {
                    eprintln!("lb-soak: --duration: {e}");
                    std::process::exit(2)
                })
            }
            "--seed" => seed = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    // Stopped by Ctrl-C, it leaves no namespace, agent or pin behind.
    testbed::netns::clean_up_on_signals();
    eprintln!("soak: {duration:?} of chaos, seed {seed}, {mode:?}");
    let report = testbed::soak::soak(duration, seed, mode);
    println!("{report}");
    std::process::exit(if report.violations.is_empty() { 0 } else { 1 });
}

fn usage() -> ! {
    eprintln!("usage: lb-soak --lb PATH [--duration 10m] [--seed N] [--cluster]   (run it with `cargo xtask soak`)");
    std::process::exit(2)
}
