//! The agent's life: load, fill the tables, attach, age flows until told to
//! stop, detach.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    config::Config,
    datapath::{BPFFS, Datapath, MapSizes},
    flow_aging, stats,
    tables::Tables,
};

/// Where an instance pins its maps and links.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join(instance)
}

pub fn map_sizes(config: &Config) -> MapSizes {
    MapSizes {
        max_flows: config.flows.max_flows,
        max_services: config.max_services,
        max_servers: config.max_servers,
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }

    let pins = pin_dir(&config.instance);
    let mut dp = Datapath::load_pinned(&pins, map_sizes(&config))
        .with_context(|| format!("cannot load the datapath (pins in {})", pins.display()))?;
    let tables = Tables::apply(&mut dp, &config)
        .context("cannot write the configuration into the datapath")?;
    for interface in &config.interfaces {
        if let Err(e) = dp.attach(interface, config.xdp_mode) {
            dp.detach_all();
            return Err(e).context("attach failed; detached from every interface");
        }
    }
    log::info!(
        "instance {}: {} service(s), {} server(s), attached to {}; maps pinned in {}",
        config.instance,
        tables.services.len(),
        tables.servers.len(),
        dp.attached_interfaces().join(", "),
        pins.display()
    );
    for service in &tables.services {
        log::info!("service {} -> pool {}", service.label(), service.pool);
    }

    let mut next_sweep = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_sweep {
            match flow_aging::sweep(
                &dp.maps,
                &tables,
                &config.flows,
                flow_aging::datapath_now_ns(),
            ) {
                Ok(report) if report.expired > 0 => {
                    log::debug!(
                        "flow sweep: {} flows, {} expired",
                        report.scanned,
                        report.expired
                    )
                }
                Ok(_) => {}
                Err(e) => log::warn!("flow sweep failed: {e}"),
            }
            next_sweep = Instant::now() + config.flows.sweep_interval;
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            if let Ok(outcomes) = stats::outcomes(&dp.maps) {
                let busy: Vec<String> = outcomes
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                log::info!("packets: {}", busy.join(" "));
            }
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!(
        "stopping: detaching XDP (map pins kept in {} for a restart)",
        pins.display()
    );
    dp.detach_all();
    Ok(())
}
