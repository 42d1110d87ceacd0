//! The agent's life: take the instance's API socket, load the datapath and
//! the saved server states, fill the tables, attach, serve the API and tick
//! (drains, aging) until told to stop, then detach.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    api,
    config::Config,
    control::Control,
    datapath::{BPFFS, Datapath, MapSizes},
    state_file, stats,
    tables::Tables,
    tcp_reset::ResetSender,
};

/// How often the agent ticks: the granularity of drain deadlines.
const TICK: Duration = Duration::from_millis(50);

/// Where an instance pins its maps and links.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join(instance)
}

pub fn map_sizes(config: &Config) -> MapSizes {
    MapSizes { max_flows: config.flows.max_flows, max_services: config.max_services, max_servers: config.max_servers }
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install signal handlers")?;
    }
    // First, so that a second agent of the same instance stops here, before
    // it touches the datapath.
    let listener = api::bind(&config.api_socket)?;
    let socket = config.api_socket.clone();
    let result = run_with(config, listener, &stop);
    let _ = std::fs::remove_file(&socket);
    result
}

fn run_with(config: Config, listener: std::os::unix::net::UnixListener, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let states = state_file::load(&config.state_file)?;
    let pins = pin_dir(&config.instance);
    let mut dp = Datapath::load_pinned(&pins, map_sizes(&config))
        .with_context(|| format!("cannot load the datapath (pins in {})", pins.display()))?;
    let tables =
        Tables::apply(&mut dp, &config, &states).context("cannot write the configuration into the datapath")?;
    let resets = ResetSender::new().context("cannot open a raw socket to send TCP resets")?;
    for interface in &config.interfaces {
        if let Err(e) = dp.attach(interface, config.xdp_mode) {
            dp.detach_all();
            return Err(e).context("attach failed; detached from every interface");
        }
    }
    log::info!(
        "instance {}: {} service(s), {} server(s), attached to {}; maps pinned in {}; API on {}",
        config.instance,
        tables.services.len(),
        tables.servers.len(),
        dp.attached_interfaces().join(", "),
        pins.display(),
        config.api_socket.display()
    );
    for service in &tables.services {
        log::info!("service {} -> pool {}", service.label(), service.pool);
    }
    for slot in tables.servers.values().filter(|s| s.admin != crate::server_state::AdminState::Enabled) {
        log::info!("{}/{} resumes as {}", slot.pool, slot.name, slot.admin.describe());
    }

    let clock = dp.maps.clock.keep_running(Arc::clone(stop)).context("cannot run the datapath's clock")?;
    let control = Arc::new(Mutex::new(Control::new(config, dp, tables, resets)));
    lock(&control).save_states()?;
    let api_thread = {
        let (control, stop) = (Arc::clone(&control), Arc::clone(stop));
        std::thread::Builder::new().name("api".into()).spawn(move || api::serve(listener, control, stop))?
    };

    let mut last_report = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        lock(&control).tick();
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = std::time::Instant::now();
            let control = lock(&control);
            if let Ok(outcomes) = stats::outcomes(&control.dp.maps) {
                let busy: Vec<String> =
                    outcomes.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
                log::info!("packets: {}", busy.join(" "));
            }
        }
        std::thread::sleep(TICK);
    }
    let _ = api_thread.join();
    let _ = clock.join();
    let mut control = lock(&control);
    log::info!("stopping: detaching XDP (map pins kept in {} for a restart)", pins.display());
    control.dp.detach_all();
    Ok(())
}

fn lock(control: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    control.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
