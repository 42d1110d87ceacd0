//! `cargo xtask bench`: runs every benchmark, prints one table and writes
//! the same figures as JSON.

use std::path::PathBuf;

use testbed::bench::{self, Report};

type Section<'a> = &'a dyn Fn(&mut Report, bool, &std::path::Path);

/// A section's title for its failure line (the table groups by title).
fn title_of(title: &str) -> &'static str {
    Box::leak(format!("{title} (failed)").into_boxed_str())
}

fn main() {
    // Stopped by Ctrl-C, it leaves no namespace, agent or pin behind.
    testbed::netns::clean_up_on_signals();
    let mut quick = false;
    let mut json_path: Option<PathBuf> = None;
    let mut only: Vec<String> = Vec::new();
    let mut lb: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = args.next().map(PathBuf::from),
            "--only" => only.extend(args.next()),
            "--lb" => lb = args.next().map(PathBuf::from),
            other => {
                eprintln!("lb-bench: unknown argument {other:?} (use --lb PATH, --quick, --json PATH, --only SECTION)");
                std::process::exit(2);
            }
        }
    }
    let lb = lb.unwrap_or_else(|| {
        eprintln!("lb-bench: --lb PATH-TO-lb is needed (cargo xtask bench passes it)");
        std::process::exit(2);
    });
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let mut report = Report { quick, ..Report::default() };
    let started = std::time::Instant::now();
    // A section that panics is reported as failed, and the others still run.
    // The cluster section's agents are started as the tests start them,
    // from $LB_BIN.
    // SAFETY: no other thread runs yet (the sections have not started), so
    // nothing reads the environment while it changes.
    unsafe { std::env::set_var("LB_BIN", &lb) };
    let sections: [(&str, &str, Section); 8] = [
        ("datapath", "1. Datapath cost per packet", &|r, quick, _| bench::datapath_cost::run(r, quick)),
        ("pps", "2. Packets per second", &|r, quick, _| bench::pps::run(r, quick)),
        ("e2e", "3. End to end through namespaces", &|r, quick, lb| bench::end_to_end::run(r, quick, lb)),
        ("control", "4. Control plane", &|r, quick, lb| bench::control_plane::run(r, quick, lb)),
        ("start", "5. Agent start-up", &|r, quick, lb| bench::startup::run(r, quick, lb)),
        ("cluster", "6. Cluster", &|r, quick, _| bench::cluster::run(r, quick)),
        ("ecmp", "7. Nodes behind ECMP", &|r, quick, _| bench::ecmp::run(r, quick)),
        ("drains", "8. Drains as clients see them", &|r, quick, lb| bench::drains::run(r, quick, lb)),
    ];
    // A misspelt section would run nothing and say nothing wrong.
    let unknown: Vec<&String> = only.iter().filter(|o| !sections.iter().any(|(key, ..)| key == o)).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = sections.iter().map(|(key, ..)| *key).collect();
        eprintln!("lb-bench: no section {unknown:?}; the sections are {}", known.join(", "));
        std::process::exit(2);
    }
    for (key, title, section) in sections {
        if !wanted(key) {
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| section(&mut report, quick, &lb)));
        if let Err(panic) = ran {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("panicked");
            report.failed(title_of(title), format!("section {key}"), format!("crashed: {why}"));
        }
    }
    let machine = machine();
    println!(
        "lb benchmarks ({}, {machine}), {:.0} s",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    print!("{}", report.table());
    if let Some(path) = json_path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create JSON directory");
        }
        let json = serde_json::to_string_pretty(&report.json(&machine)).expect("JSON");
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("\nJSON: {}", path.display());
    }
    if report.failures() > 0 {
        eprintln!("lb-bench: {} figure(s) could not be measured (FAILED above)", report.failures());
        std::process::exit(1);
    }
}

/// CPU model, cores and kernel, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, kernel {}", kernel.trim())
}
