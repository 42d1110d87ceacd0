//! `cargo xtask bench`: how fast the balancer is, against a baseline or a
//! peer measured side by side in the same run, reported as ratios with
//! medians over rounds (these machines are shared and noisy: absolute
//! times are informative only).

pub mod cluster;
pub mod control_plane;
pub mod datapath_cost;
pub mod drains;
pub mod ecmp;
pub mod end_to_end;
pub mod health_cost;
pub mod katran;
pub mod pps;
pub mod startup;

use std::{net::Ipv4Addr, ops::Range};

use lb_common::{Flow, FlowKey, flow_seen, flow_state, flow_time, proto};
use lb_userspace::datapath::{clock::datapath_now_ns, flow_table::FlowTable};
use serde_json::{Value, json};

/// Where the bench builds what it times beside ours (peers' programs).
pub fn output_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("lb-bench")
}

/// What a figure must reach.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

#[derive(Clone, Debug)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// How it was measured, or figures for comparison.
    pub note: String,
    /// Why it could not be measured (then `value` means nothing).
    pub failed: Option<String>,
}

impl Figure {
    pub fn met(&self) -> Option<bool> {
        if self.failed.is_some() {
            return Some(false);
        }
        self.target.map(|t| match t {
            Target::AtMost(limit) => self.value <= limit,
            Target::AtLeast(floor) => self.value >= floor,
        })
    }
}

#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub quick: bool,
}

impl Report {
    pub fn add(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<Target>,
        note: impl Into<String>,
    ) {
        let figure = Figure { section, name: name.into(), value, unit, target, note: note.into(), failed: None };
        eprintln!("bench: {:<58} {}", figure.name, format_value(figure.value, figure.unit));
        self.figures.push(figure);
    }

    /// A figure that could not be measured: said in the table and the
    /// JSON (as not met), and the run goes on.
    pub fn failed(&mut self, section: &'static str, name: impl Into<String>, why: impl Into<String>) {
        let figure = Figure {
            section,
            name: name.into(),
            value: f64::NAN,
            unit: "",
            target: None,
            note: String::new(),
            failed: Some(why.into()),
        };
        eprintln!("bench: {:<58} FAILED: {}", figure.name, figure.failed.as_deref().unwrap_or_default());
        self.figures.push(figure);
    }

    /// Figures that could not be measured.
    pub fn failures(&self) -> usize {
        self.figures.iter().filter(|f| f.failed.is_some()).count()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for f in &self.figures {
            if f.section != section {
                section = f.section;
                out.push_str(&format!("\n{section}\n"));
                out.push_str(&format!(
                    "  {:<58} {:>14}  {:<12} {:<4} {}\n",
                    "figure", "value", "target", "met", "note"
                ));
            }
            let target = match f.target {
                Some(Target::AtMost(t)) => format!("<= {}", format_value(t, f.unit)),
                Some(Target::AtLeast(t)) => format!(">= {}", format_value(t, f.unit)),
                None => "-".to_owned(),
            };
            let met = match f.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let (value, note) = match &f.failed {
                Some(why) => ("FAILED".to_owned(), why.as_str()),
                None => (format_value(f.value, f.unit), f.note.as_str()),
            };
            out.push_str(&format!("  {:<58} {:>14}  {:<12} {:<4} {}\n", f.name, value, target, met, note));
        }
        out
    }

    pub fn json(&self, machine: &str) -> Value {
        json!({
            "machine": machine,
            "quick": self.quick,
            "figures": self.figures.iter().map(|f| json!({
                "section": f.section,
                "name": f.name,
                "value": if f.failed.is_some() { Value::Null } else { json!(f.value) },
                "unit": f.unit,
                "target": f.target.map(|t| match t {
                    Target::AtMost(v) => json!({"at_most": v}),
                    Target::AtLeast(v) => json!({"at_least": v}),
                }),
                "met": f.met(),
                "note": f.note,
                "failed": f.failed,
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{v:.2}x"),
        "ns" | "us" | "ms" => format!("{v:.0} {unit}"),
        "" => format!("{v:.0}"),
        _ => format!("{v:.2} {unit}"),
    }
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Pins the calling thread to one CPU (per-CPU maps, and honest timing).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!("cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}

/// The benchmarks' client number `i` (11.0.0.0/8, distinct for i < 2^24).
pub fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 | i)
}

/// Puts established TCP flows from clients `clients` (port 40000) to `vip`
/// straight into a flow table, each on the server `server_of(i)` gives.
pub fn fill_flows(flows: &FlowTable, clients: Range<u32>, vip: (Ipv4Addr, u16), server_of: impl Fn(u32) -> u32) {
    let now = datapath_now_ns();
    let count = clients.len();
    let placed = flows
        .insert_all(clients.map(|i| {
            let key: FlowKey = crate::fixture::flow_key((client(i), 40000), vip, proto::TCP);
            let flow = Flow {
                server_id: server_of(i) as u16,
                state: flow_state::TCP_OPEN,
                seen: flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ,
                last_seen: flow_time::tick(now),
                client_next_seq: 1000,
                server_next_seq: 1,
            };
            (key, flow)
        }))
        .expect("fill the flow table");
    assert_eq!(placed, count, "every flow found a free slot");
}
