//! The datapath from the agent's side: the only files that use aya. Loading
//! the XDP program, its maps and their pins, and attaching it (here); the
//! tables written from the config (`tables`; what they hold is planned in `servers::plan`), the flow table
//! (`flow_table`), the sweep that ages and counts flows (`sweep`), the purge
//! and resets of terminated flows (`purge`, `terminate`, `tcp_reset`,
//! `reset_requests`), the counters (`counters`), the datapath's clock
//! (`clock`), and what the owner of the state asks of it (`ops`).
//!
//! Maps are pinned under /sys/fs/bpf/<instance>/ and reused when they are
//! there, so a restarted agent finds the flows of the one before. XDP links
//! are pinned too: if the agent dies, the program stays attached and packets
//! keep flowing; the next agent swaps its program in atomically.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, RingBuf},
    programs::{
        Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, Link as _, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Addr6, CLIENT_HOP_ENTRIES, ClientHop, FlowKey, FlowKey6, FlowSlot, FlowSlot6, MAGLEV_TABLE_SIZE, NextHop,
    OUTCOME_COUNT, RESET_REQUESTS_BYTES, ReverseNat, ReverseNat6, Server, ServerStats, Service, ServiceKey,
    ServiceKey6, TableSlot, filter,
    flow_sync::{self, LogEntry},
    flow_table as table_layout, map_name, purge as purge_layout,
};

pub mod bpf_batch;
pub mod clock;
pub mod counters;
pub mod ebpf_log;
pub mod family;
pub mod flow_log;
pub mod flow_table;
pub mod idle_close;
mod mapped;
pub mod ops;
mod pins;
pub mod purge;
pub mod reset_requests;
pub mod sweep;
pub mod tables;
pub mod tcp_reset;
pub mod terminate;

use self::{
    clock::Clock,
    flow_table::FlowTable,
    pins::{check_pinned_maps, ensure_bpffs},
};
use crate::config::XdpMode;

/// The XDP object, built by build.rs from lb-ebpf.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// Small programs for the test bed and benchmarks (`pass`, `reflect`,
/// `restore`), built by build.rs from lb-ebpf/src/test_programs.rs.
pub fn test_programs_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-test-programs"))
}

/// Name of the balancing program in the object.
pub const PROGRAM: &str = "lb";

/// Name of the IPv6 program, which `lb` tail-calls for IPv6 packets.
pub const PROGRAM6: &str = "lb6";

/// Name of the rest of IPv6's path, which `lb6` tail-calls for what it does
/// not settle itself (new flows, refusals, ICMPv6, extension headers).
pub const PROGRAM6_OTHER: &str = "lb6_other";

/// Name of the program that purges servers' flows (`purge`).
pub const PURGE_PROGRAM: &str = "purge_flows";

/// Root of all instances' pins.
pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{BPFFS} is not mounted in this mount namespace, which is private to the agent (as under `ip netns \
         exec`, which mounts its own /sys): a BPF filesystem mounted here would be private to it, and the pins, \
         and with them the flows and forwarding, would not outlive the agent. \
         Run it in the host's mount namespace, entering only the network namespace: \
         nsenter --net=/run/netns/NAME lb agent --config FILE"
    )]
    PrivateBpffs,
    #[error("cannot read the datapath's log (--datapath-log)")]
    Log(#[source] aya_log::Error),
    #[error("cannot use the flow table")]
    FlowTable(#[source] io::Error),
    #[error("cannot mount the BPF filesystem on {BPFFS}")]
    MountBpffs(#[source] io::Error),
    #[error("cannot create pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinned map {path} does not fit this agent ({what}: found {found}, expected {expected}); \
         it was made by another version or config: stop the agent and remove {dir} to start afresh"
    )]
    PinnedMapMismatch { path: PathBuf, dir: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error(
        "pinned maps in {dir} hold format {found} (this agent reads format {expected}): they were made by \
         another version, and this one would not find their flows; stop the agent and run \
         `lb cleanup --config <its config>` (or remove {dir}) to start afresh"
    )]
    PinnedFormatMismatch { dir: PathBuf, found: u32, expected: u32 },
    #[error("cannot start the datapath's clock")]
    StartClock(#[source] io::Error),
    #[error("cannot record the maps' format")]
    WriteFormat(#[source] aya::maps::MapError),
    #[error("cannot read pinned map {path}")]
    PinnedMapInfo {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot load the XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("cannot load program {name} (verifier or kernel refused it)")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is missing from the XDP object or has an unexpected type")]
    Map {
        name: &'static str,
        #[source]
        source: Option<aya::maps::MapError>,
    },
    #[error(
        "cannot attach XDP to interface {interface}: another XDP program is attached there (another lb \
         instance, or another tool); `lb cleanup --config` with that instance's config, or `ip link set dev \
         {interface} xdp off`, frees it"
    )]
    AttachBusy { interface: String },
    #[error("cannot attach XDP to interface {interface}")]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot clear the purge's server marks")]
    ClearPurgeMarks(#[source] io::Error),
    #[error("cannot pin the program at {path}")]
    PinProgram {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot pin the XDP link of {interface} at {path}")]
    PinLink {
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Map capacities, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub max_flows: u32,
    /// The IPv6 flow table's flows: `max_flows` when the config has an IPv6
    /// service, else 0 (the table at its smallest, a page: IPv4-only nodes
    /// do not pay for it, as with Cilium's IPv6 maps).
    pub max_flows6: u32,
    pub max_services: u32,
    pub max_servers: u32,
}

impl MapSizes {
    /// Every map's name.
    pub(super) fn layout_names() -> Vec<&'static str> {
        MapSizes { max_flows: 1, max_flows6: 1, max_services: 1, max_servers: 1 }
            .layout()
            .iter()
            .map(|(name, ..)| *name)
            .collect()
    }

    /// The IPv6 flow table's slots.
    fn slots6(&self) -> u32 {
        table_layout::slots(self.max_flows6.max(1))
    }

    /// (map, key size, value size, max entries) of every map.
    pub(super) fn layout(&self) -> [(&'static str, u32, u32, u32); 34] {
        use std::mem::size_of;
        let s = |n: usize| n as u32;
        let tag_size = 8 * table_layout::TAG_LINE_BUCKETS;
        [
            (map_name::SERVICES, s(size_of::<ServiceKey>()), s(size_of::<Service>()), self.max_services),
            (map_name::VIP_ADDRS, 4, 1, self.max_services),
            (map_name::SERVERS, 4, s(size_of::<Server>()), self.max_servers),
            (map_name::MAGLEV, 4, 4, self.max_services * MAGLEV_TABLE_SIZE),
            (map_name::FLOWS, 4, s(size_of::<FlowSlot>()), table_layout::slots(self.max_flows)),
            (
                map_name::FLOW_TAGS,
                4,
                8 * table_layout::TAG_LINE_BUCKETS,
                table_layout::tag_lines(table_layout::slots(self.max_flows)),
            ),
            (map_name::REVERSE_NAT, s(size_of::<FlowKey>()), s(size_of::<ReverseNat>()), self.max_flows),
            (map_name::OUTCOMES, 4, 8, OUTCOME_COUNT),
            (map_name::EVICTIONS, 4, 8, lb_common::eviction::COUNT),
            (map_name::SERVER_STATS, 4, s(size_of::<ServerStats>()), self.max_servers),
            (map_name::FILTER, 4, 1, filter::ENTRIES),
            (map_name::NEXT_HOPS, 4, s(size_of::<NextHop>()), self.max_servers),
            (map_name::SERVER_ENDPOINTS, s(size_of::<ServiceKey>()), s(size_of::<ReverseNat>()), self.max_servers),
            (map_name::RESET_REQUESTS, 0, 0, RESET_REQUESTS_BYTES),
            (map_name::PURGE_REQUEST, 4, s(size_of::<purge_layout::Request>()), 1),
            (map_name::PURGE_SERVERS, 4, 1, self.max_servers),
            (map_name::PURGED, 4, s(size_of::<purge_layout::Purged>()), purge_layout::BATCH),
            (map_name::MAPS_FORMAT, 4, 4, 1),
            (map_name::CLOCK, 4, 8, 1),
            (map_name::SERVICES6, s(size_of::<ServiceKey6>()), s(size_of::<Service>()), self.max_services),
            (map_name::VIP_ADDRS6, 16, 1, self.max_services),
            (map_name::SERVER_ADDRS6, 4, 16, self.max_servers),
            (map_name::FLOWS6, 4, s(size_of::<FlowSlot6>()), self.slots6()),
            (map_name::FLOW_TAGS6, 4, tag_size, table_layout::tag_lines(self.slots6())),
            (map_name::SERVER_ENDPOINTS6, s(size_of::<ServiceKey6>()), s(size_of::<ReverseNat6>()), self.max_servers),
            (map_name::REVERSE_NAT6, s(size_of::<FlowKey6>()), s(size_of::<ReverseNat6>()), self.max_flows6.max(1)),
            (map_name::NEXT_HOPS6, 4, s(size_of::<NextHop>()), self.max_servers),
            (map_name::PURGED6, 4, s(size_of::<purge_layout::Purged6>()), purge_layout::BATCH),
            (map_name::FAMILY_PROGRAMS, 4, 4, 2),
            (map_name::NEW_FLOWS, 4, s(size_of::<LogEntry>()), flow_log::cpus() * flow_sync::LOG_SLOTS),
            (map_name::NEW_FLOWS6, 4, s(size_of::<LogEntry>()), flow_log::cpus() * flow_sync::LOG_SLOTS),
            (map_name::FLOW_SYNC, 4, s(8 * flow_sync::LINE), flow_log::cpus()),
            (map_name::CLIENT_HOPS, 4, s(size_of::<ClientHop>()), CLIENT_HOP_ENTRIES),
            (map_name::CLIENT_HOPS6, 4, s(size_of::<ClientHop>()), CLIENT_HOP_ENTRIES),
        ]
    }
}

/// The maps, typed.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub vip_addrs: HashMap<MapData, u32, u8>,
    pub servers: Array<MapData, Server>,
    pub maglev: Array<MapData, u32>,
    pub flows: FlowTable,
    pub server_endpoints: HashMap<MapData, ServiceKey, ReverseNat>,
    pub reverse_nat: HashMap<MapData, FlowKey, ReverseNat>,
    pub outcomes: PerCpuArray<MapData, u64>,
    pub evictions: PerCpuArray<MapData, u64>,
    pub server_stats: PerCpuArray<MapData, ServerStats>,
    pub filter: Array<MapData, u8>,
    pub next_hops: Array<MapData, NextHop>,
    pub reset_requests: RingBuf<MapData>,
    pub purge_request: Array<MapData, purge_layout::Request>,
    pub purge_servers: Array<MapData, u8>,
    pub purged: Array<MapData, purge_layout::Purged>,
    pub clock: Clock,
    pub services6: HashMap<MapData, ServiceKey6, Service>,
    pub vip_addrs6: HashMap<MapData, Addr6, u8>,
    pub server_addrs6: Array<MapData, Addr6>,
    pub flows6: FlowTable<FlowSlot6>,
    pub server_endpoints6: HashMap<MapData, ServiceKey6, ReverseNat6>,
    pub reverse_nat6: HashMap<MapData, FlowKey6, ReverseNat6>,
    pub next_hops6: Array<MapData, NextHop>,
    pub purged6: Array<MapData, purge_layout::Purged6>,
    /// Flow replication's logs and the CPUs' lines (see [`flow_log`]).
    pub new_flows: MapData,
    pub new_flows6: MapData,
    pub flow_sync: MapData,
}

impl Maps {
    /// Clears every server's purge mark: an agent that died during a purge
    /// leaves its marks in the pinned map, and the next purge would free
    /// those servers' flows too.
    fn clear_purge_marks(&mut self, max_servers: u32) -> Result<(), DatapathError> {
        let keys: Vec<u32> = (0..max_servers).collect();
        let zeros = vec![0u8; keys.len()];
        bpf_batch::update_batch(self.purge_servers.map(), &keys, &zeros).map_err(DatapathError::ClearPurgeMarks)
    }

    pub fn reverse_nat_map(&self) -> &MapData {
        self.reverse_nat.map()
    }

    pub fn reverse_nat6_map(&self) -> &MapData {
        self.reverse_nat6.map()
    }

    pub fn filter_map(&self) -> &MapData {
        self.filter.map()
    }

    pub fn maglev_map(&self) -> &MapData {
        self.maglev.map()
    }

    pub fn reset_requests_fd(&self) -> BorrowedFd<'_> {
        self.reset_requests.as_fd()
    }

    /// The new flows' logs, mapped (flow replication reads them).
    pub fn flow_log(&self) -> std::io::Result<flow_log::FlowLog> {
        flow_log::FlowLog::open(&self.flow_sync, (&self.new_flows, &self.flows), (&self.new_flows6, &self.flows6))
    }

    /// Turns the sharing of new flows on or off (every CPU's flag).
    pub fn share_new_flows(&mut self, on: bool) -> std::io::Result<()> {
        flow_log::share(&self.flow_sync, on)
    }
}

struct Attached {
    interface: String,
    link: PinnedLink,
    /// Taken over from the previous agent: it was forwarding before this
    /// one started.
    taken_over: bool,
}

/// The balancing and purge programs: loaded and verified by this agent, or
/// taken over from the pins of an agent of the same build (a restart skips
/// the verifier, most of a start's time).
#[allow(clippy::large_enum_variant, reason = "one per agent, made once at start")]
enum Programs {
    Loaded(Ebpf),
    Pinned { lb: Xdp, purge: Xdp },
}

impl Programs {
    fn get(&self, name: &'static str) -> &Xdp {
        match self {
            Programs::Loaded(ebpf) => ebpf.program(name).and_then(|p| p.try_into().ok()).expect("loaded"),
            Programs::Pinned { lb, .. } if name == PROGRAM => lb,
            Programs::Pinned { purge, .. } => purge,
        }
    }

    fn get_mut(&mut self, name: &'static str) -> &mut Xdp {
        match self {
            Programs::Loaded(ebpf) => ebpf.program_mut(name).and_then(|p| p.try_into().ok()).expect("loaded"),
            Programs::Pinned { lb, .. } if name == PROGRAM => lb,
            Programs::Pinned { purge, .. } => purge,
        }
    }
}

/// The loaded XDP program and its maps.
pub struct Datapath {
    programs: Programs,
    pub maps: Maps,
    pin_dir: Option<PathBuf>,
    attached: Vec<Attached>,
    /// The datapath's log records, when it logs (see `ebpf_log.rs`).
    log_reader: Option<ebpf_log::LogReader>,
}

impl Datapath {
    /// Loads the program with its maps pinned in `pin_dir` (reused if there).
    /// `mark` is told each phase of the load as it ends (the start-up's
    /// timings).
    pub fn load_pinned(
        pin_dir: &Path,
        sizes: MapSizes,
        log: ebpf_log::DatapathLog,
        mark: &mut dyn FnMut(&str),
    ) -> Result<Datapath, DatapathError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(pin_dir)
            .map_err(|source| DatapathError::PinDir { path: pin_dir.to_owned(), source })?;
        check_pinned_maps(pin_dir, &sizes)?;
        mark("pinned maps checked");
        Self::load(Some(pin_dir), sizes, log, mark)
    }

    /// Loads the program with private maps (datapath tests, benchmarks).
    pub fn load_unpinned(sizes: MapSizes) -> Result<Datapath, DatapathError> {
        Self::load(None, sizes, ebpf_log::DatapathLog::Off, &mut |_| {})
    }

    fn load(
        pin_dir: Option<&Path>,
        sizes: MapSizes,
        log: ebpf_log::DatapathLog,
        mark: &mut dyn FnMut(&str),
    ) -> Result<Datapath, DatapathError> {
        let layout = sizes.layout();
        let bucket_mask = table_layout::bucket_mask(table_layout::slots(sizes.max_flows));
        let bucket_mask6 = table_layout::bucket_mask(sizes.slots6());
        // Programs are pinned, and taken over, only without the datapath's
        // log: its reader needs the object this agent loads.
        let build = (log == ebpf_log::DatapathLog::Off).then(|| build_identity(&sizes, [bucket_mask, bucket_mask6]));
        if let (Some(dir), Some(build)) = (pin_dir, build)
            && let Some(mut dp) = Self::take_over(dir, build)?
        {
            mark("programs and maps taken over from the pins");
            dp.maps.clear_purge_marks(sizes.max_servers)?;
            return Ok(dp);
        }
        let mut loader = EbpfLoader::new();
        // The flow table's size, as a constant the verifier sees.
        loader.override_global("FLOW_BUCKET_MASK", &bucket_mask, true);
        loader.override_global("FLOW_BUCKET_MASK6", &bucket_mask6, true);
        log.set_level(&mut loader);
        for (name, _, _, max_entries) in &layout {
            loader.map_max_entries(name, *max_entries);
        }
        // Every map is pinned, so that an agent of the same build can take
        // the programs over with the maps they use.
        let pin_paths: Vec<(&str, PathBuf)> =
            pin_dir.map(|dir| layout.iter().map(|(name, ..)| (*name, dir.join(name))).collect()).unwrap_or_default();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object()).map_err(DatapathError::Load)?;
        mark("object and maps");
        verify_programs(&mut ebpf, mark)?;
        set_family_programs(&mut ebpf)?;
        if let (Some(dir), Some(build)) = (pin_dir, build) {
            pin_programs(&mut ebpf, dir, build)?;
        }
        write_format(&mut ebpf)?;
        let mut maps = take_maps(|name| ebpf.take_map(name))?;
        maps.clear_purge_marks(sizes.max_servers)?;
        mark("maps mapped");
        let log_reader = match log {
            ebpf_log::DatapathLog::Off => None,
            _ => Some(ebpf_log::reader(&mut ebpf).map_err(DatapathError::Log)?),
        };
        Ok(Datapath {
            programs: Programs::Loaded(ebpf),
            maps,
            pin_dir: pin_dir.map(Path::to_owned),
            attached: Vec::new(),
            log_reader,
        })
    }

    /// The programs an agent of this build pinned, and every map from its
    /// pin; none if any is missing (then the object is loaded).
    fn take_over(dir: &Path, build: u64) -> Result<Option<Datapath>, DatapathError> {
        let (lb_pin, purge_pin) = program_pins(dir, build);
        let layout = MapSizes::layout_names();
        if !lb_pin.exists() || !purge_pin.exists() || layout.iter().any(|name| !dir.join(name).exists()) {
            return Ok(None);
        }
        let program = |name: &'static str, path: &Path| {
            Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface)
                .map_err(|source| DatapathError::Program { name, source })
        };
        let (lb, purge) = (program(PROGRAM, &lb_pin)?, program(PURGE_PROGRAM, &purge_pin)?);
        let maps = take_maps(|name| {
            let data = MapData::from_pin(dir.join(name)).ok()?;
            aya::maps::Map::from_map_data(data).ok()
        })?;
        Ok(Some(Datapath {
            programs: Programs::Pinned { lb, purge },
            maps,
            pin_dir: Some(dir.to_owned()),
            attached: Vec::new(),
            log_reader: None,
        }))
    }

    /// The reader of the datapath's log records, if it logs (once).
    pub fn take_log_reader(&mut self) -> Option<ebpf_log::LogReader> {
        self.log_reader.take()
    }

    pub fn program(&self) -> &Xdp {
        self.programs.get(PROGRAM)
    }

    /// The purge program, with the maps its runs use (exclusively: it has
    /// one request).
    pub(crate) fn purge_program(&mut self) -> (&Xdp, &mut Maps) {
        (self.programs.get(PURGE_PROGRAM), &mut self.maps)
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.programs.get_mut(PROGRAM)
    }

    /// Attaches to `interface` and pins the link. An existing pinned link
    /// (left by an agent that died) is taken over: its program is replaced
    /// atomically, so no packet misses the balancer.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone().expect("attach needs a pinned datapath");
        let path = pin_dir.join(format!("link_{interface}"));
        let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinLink {
            interface: interface.to_owned(),
            path: path.clone(),
            source,
        };
        let attach_error = |source: aya::programs::ProgramError| {
            if caused_by_os_error(&source, libc::EBUSY) {
                return DatapathError::AttachBusy { interface: interface.to_owned() };
            }
            DatapathError::Attach { interface: interface.to_owned(), source }
        };
        let program = self.program_mut();
        let taken_over = path.exists() && take_over(program, interface, &path).map_err(pin_error)?;
        let link = if taken_over {
            PinnedLink::from_pin(&path).map_err(|e| pin_error(e.into()))?
        } else {
            let link_id = program.attach(interface, aya_mode(mode)).map_err(attach_error)?;
            let link = program.take_link(link_id).map_err(attach_error)?;
            let link: FdLink = link.try_into().map_err(|e: LinkError| pin_error(e.into()))?;
            link.pin(&path).map_err(|e| pin_error(e.into()))?
        };
        self.attached.push(Attached { interface: interface.to_owned(), link, taken_over });
        Ok(())
    }

    /// Detaches from the interfaces this agent attached to anew and removes
    /// their link pins; the links taken over from the previous agent stay
    /// attached and pinned. A start that fails part way (an interface in
    /// the config that is not there) leaves forwarding as it found it: it
    /// detached every interface before, so a restart with a typo in its
    /// config stopped all forwarding. The map pins stay, so an agent
    /// started again resumes the flows.
    pub fn detach_new(&mut self) {
        for Attached { interface, link, taken_over } in self.attached.drain(..) {
            if taken_over {
                log::warn!("{interface}: left attached, forwarding as before this start");
                continue;
            }
            match link.unpin() {
                Ok(link) => {
                    if let Err(e) = link.detach() {
                        log::warn!("{interface}: detach failed: {e}");
                    }
                }
                Err(e) => log::warn!("{interface}: cannot remove link pin: {e}"),
            }
        }
    }

    /// Detaches the links a previous agent left on interfaces this one's
    /// config no longer names (removed from `interfaces`): the config says
    /// where the balancer runs, and such a link went on balancing there
    /// until `lb cleanup`. Says which it detached.
    pub fn detach_unlisted(&mut self, interfaces: &[String]) -> Vec<String> {
        let Some(dir) = &self.pin_dir else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut detached = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(interface) = name.strip_prefix("link_") else { continue };
            if interfaces.iter().any(|i| i == interface) {
                continue;
            }
            let link = match PinnedLink::from_pin(entry.path()) {
                Ok(link) => link.unpin().map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match link.map(FdLink::detach) {
                Ok(Ok(())) => detached.push(interface.to_owned()),
                Ok(Err(e)) => log::warn!("{interface}: cannot detach the link left there: {e}"),
                Err(e) => log::warn!("{interface}: cannot take the link left there: {e}"),
            }
        }
        detached
    }

    pub fn attached_interfaces(&self) -> Vec<String> {
        self.attached.iter().map(|a| a.interface.clone()).collect()
    }
}

/// Loads the object's programs into the kernel: the verifier checks each
/// (most of a first start's time).
fn verify_programs(ebpf: &mut Ebpf, mark: &mut dyn FnMut(&str)) -> Result<(), DatapathError> {
    for name in [PROGRAM, PROGRAM6, PROGRAM6_OTHER, PURGE_PROGRAM] {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Program { name, source: aya::programs::ProgramError::NotLoaded })?;
        program.load().map_err(|source| DatapathError::Program { name, source })?;
        mark(match name {
            PROGRAM => "program verified",
            PROGRAM6 => "IPv6 program verified",
            PROGRAM6_OTHER => "IPv6's other program verified",
            _ => "purge program verified",
        });
    }
    Ok(())
}

/// Writes this agent's maps format into the maps just made, for the agents
/// that take them over from their pins (`check_pinned_maps`).
fn write_format(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let format =
        ebpf.map_mut(map_name::MAPS_FORMAT).ok_or(DatapathError::Map { name: map_name::MAPS_FORMAT, source: None })?;
    let mut format: Array<_, u32> =
        Array::try_from(format).map_err(|e| DatapathError::Map { name: map_name::MAPS_FORMAT, source: Some(e) })?;
    format.set(0, lb_common::MAPS_FORMAT, 0).map_err(DatapathError::WriteFormat)
}

/// Whether `error`, or an error it was caused by, is the OS error `code`.
fn caused_by_os_error(error: &(dyn std::error::Error + 'static), code: i32) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(code) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Puts `program` on the XDP link pinned at `path` by the previous agent.
/// The pin stays where it is throughout (the link is the same kernel
/// object, now running this program), so the interface is never without a
/// balancer and no new pin can fail and detach it. Where that link cannot
/// be taken over, its pin is removed (detaching it) and false returned, to
/// attach anew.
fn take_over(
    program: &mut Xdp,
    interface: &str,
    path: &Path,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let old = FdLink::from(PinnedLink::from_pin(path)?);
    let why = match XdpLink::try_from(old) {
        Ok(old) => match program.attach_to_link(old) {
            Ok(id) => {
                // Only this agent's descriptor of the link closes: the pin holds it.
                drop(program.take_link(id)?);
                log::info!("{interface}: took over the XDP link left by the previous agent");
                return Ok(true);
            }
            Err(e) => format!("cannot take over the old XDP link ({e})"),
        },
        Err(e) => format!("pinned link is not an XDP link ({e})"),
    };
    log::warn!("{interface}: {why}; attaching anew");
    std::fs::remove_file(path)?;
    Ok(false)
}

fn aya_mode(mode: XdpMode) -> AyaXdpMode {
    match mode {
        XdpMode::Auto => AyaXdpMode::Default,
        XdpMode::Native => AyaXdpMode::Driver,
        XdpMode::Generic => AyaXdpMode::Skb,
    }
}

/// What identifies a build's programs as loaded: the object and the
/// constants set at load (FNV-1a, stable across builds of the agent).
fn build_identity(sizes: &MapSizes, bucket_masks: [u32; 2]) -> u64 {
    let constants = format!("{:?} {bucket_masks:?} {}", sizes.layout(), lb_common::MAPS_FORMAT);
    object()
        .iter()
        .chain(constants.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Where a build's two programs are pinned.
fn program_pins(dir: &Path, build: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("prog_{PROGRAM}_{build:016x}")), dir.join(format!("prog_purge_{build:016x}")))
}

/// Pins the programs just loaded for the next agent of this build, and
/// removes the pins of other builds' programs.
fn pin_programs(ebpf: &mut Ebpf, dir: &Path, build: u64) -> Result<(), DatapathError> {
    let (lb_pin, purge_pin) = program_pins(dir, build);
    for (name, path) in [(PROGRAM, &lb_pin), (PURGE_PROGRAM, &purge_pin)] {
        let pin_error =
            |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinProgram { path: path.clone(), source };
        let _ = std::fs::remove_file(path);
        let program: &mut Xdp = ebpf.program_mut(name).and_then(|p| p.try_into().ok()).expect("loaded");
        program.pin(path).map_err(|e| pin_error(e.into()))?;
    }
    let entries = std::fs::read_dir(dir).map_err(|source| DatapathError::PinDir { path: dir.to_owned(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("prog_") && path != lb_pin && path != purge_pin {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}

/// A flow table (`flows` and its `tags`) of either family.
fn take_flow_table<S: TableSlot>(
    take: &mut impl FnMut(&'static str) -> Option<aya::maps::Map>,
    flows: &'static str,
    tags: &'static str,
) -> Result<FlowTable<S>, DatapathError> {
    let mut array = |name: &'static str| match take(name) {
        Some(aya::maps::Map::Array(data)) => Ok(data),
        _ => Err(DatapathError::Map { name, source: None }),
    };
    let (flows, tags) = (array(flows)?, array(tags)?);
    FlowTable::new(flows, tags).map_err(DatapathError::FlowTable)
}

/// Every map, typed, each from `take` (the loaded object, or the pins).
fn take_maps(mut take: impl FnMut(&'static str) -> Option<aya::maps::Map>) -> Result<Maps, DatapathError> {
    fn typed<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
        take: &mut impl FnMut(&'static str) -> Option<aya::maps::Map>,
        name: &'static str,
    ) -> Result<T, DatapathError> {
        let map = take(name).ok_or(DatapathError::Map { name, source: None })?;
        T::try_from(map).map_err(|e| DatapathError::Map { name, source: Some(e) })
    }
    let t = &mut take;
    Ok(Maps {
        services: typed(t, map_name::SERVICES)?,
        vip_addrs: typed(t, map_name::VIP_ADDRS)?,
        servers: typed(t, map_name::SERVERS)?,
        maglev: typed(t, map_name::MAGLEV)?,
        flows: take_flow_table(t, map_name::FLOWS, map_name::FLOW_TAGS)?,
        server_endpoints: typed(t, map_name::SERVER_ENDPOINTS)?,
        reverse_nat: typed(t, map_name::REVERSE_NAT)?,
        outcomes: typed(t, map_name::OUTCOMES)?,
        evictions: typed(t, map_name::EVICTIONS)?,
        server_stats: typed(t, map_name::SERVER_STATS)?,
        filter: typed(t, map_name::FILTER)?,
        next_hops: typed(t, map_name::NEXT_HOPS)?,
        reset_requests: typed(t, map_name::RESET_REQUESTS)?,
        purge_request: typed(t, map_name::PURGE_REQUEST)?,
        purge_servers: typed(t, map_name::PURGE_SERVERS)?,
        purged: typed(t, map_name::PURGED)?,
        clock: {
            let Some(aya::maps::Map::Array(map)) = t(map_name::CLOCK) else {
                return Err(DatapathError::Map { name: map_name::CLOCK, source: None });
            };
            Clock::start(map).map_err(DatapathError::StartClock)?
        },
        services6: typed(t, map_name::SERVICES6)?,
        vip_addrs6: typed(t, map_name::VIP_ADDRS6)?,
        server_addrs6: typed(t, map_name::SERVER_ADDRS6)?,
        flows6: take_flow_table(t, map_name::FLOWS6, map_name::FLOW_TAGS6)?,
        server_endpoints6: typed(t, map_name::SERVER_ENDPOINTS6)?,
        reverse_nat6: typed(t, map_name::REVERSE_NAT6)?,
        next_hops6: typed(t, map_name::NEXT_HOPS6)?,
        purged6: typed(t, map_name::PURGED6)?,
        new_flows: take_array(t, map_name::NEW_FLOWS)?,
        new_flows6: take_array(t, map_name::NEW_FLOWS6)?,
        flow_sync: take_array(t, map_name::FLOW_SYNC)?,
    })
}

/// An array map as it is (mapped by its reader, not read through aya).
fn take_array(
    take: &mut impl FnMut(&'static str) -> Option<aya::maps::Map>,
    name: &'static str,
) -> Result<MapData, DatapathError> {
    match take(name) {
        Some(aya::maps::Map::Array(map)) => Ok(map),
        _ => Err(DatapathError::Map { name, source: None }),
    }
}

/// Puts the IPv6 programs where they are tail-called (`lb6` from `lb`, at
/// 0; `lb6_other` from `lb6`, at 1). In the (pinned) array, they replace
/// the previous agent's: a program still attached from before then hands
/// IPv6 to this one, over the same maps. The rest of the path first, so
/// that no packet enters a new `lb6` that would hand it to an old one.
fn set_family_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let map_error = |source| DatapathError::Map { name: map_name::FAMILY_PROGRAMS, source };
    // (index in the array, program): the indexes `lb-ebpf/src/maps.rs` names.
    let mut entries = Vec::new();
    for (index, name) in [(1, PROGRAM6_OTHER), (0, PROGRAM6)] {
        let failed = |source| DatapathError::Program { name, source };
        let program: &Xdp = ebpf.program(name).and_then(|p| p.try_into().ok()).expect("loaded");
        entries.push((index, program.fd().map_err(failed)?.try_clone().map_err(|e| failed(e.into()))?));
    }
    let map = ebpf.map_mut(map_name::FAMILY_PROGRAMS).ok_or(map_error(None))?;
    let mut programs = aya::maps::ProgramArray::try_from(map).map_err(|e| map_error(Some(e)))?;
    for (index, fd) in &entries {
        programs.set(*index, fd, 0).map_err(|e| map_error(Some(e)))?;
    }
    Ok(())
}

/// Loads one of the test programs (`pass`, `reflect`, `restore`).
pub fn load_test_program(name: &'static str) -> Result<Ebpf, DatapathError> {
    let mut ebpf = Ebpf::load(test_programs_object()).map_err(DatapathError::Load)?;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::Program { name, source: aya::programs::ProgramError::NotLoaded })?;
    program.load().map_err(|source| DatapathError::Program { name, source })?;
    Ok(ebpf)
}
