//! Getting the kernel programs in: whether BPF may be used at all, bpffs, loading the
//! embedded object with its maps pinned, attaching the programs (tcx, XDP) and pinning
//! their links. Pins of an earlier run of the same router are adopted when they fit (the
//! maps re-used, the new programs swapped into the pinned links in place) and removed when
//! they do not (see `adoption`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use weave_ebpf_common::maps::ALL_MAPS;

use super::adoption::{
    judge_pins, layout_fingerprint, MapShape, PinVerdict, PinnedMap, LAYOUT_MARKER,
};
use super::bpf_sys;
use super::bridge::DATAPATH_PORT_NAME;
use super::maps::{DatapathMaps, StartConfig};
use crate::datapath::netlink::LinkInfo;
use crate::datapath::{DatapathError, DatapathSettings, XdpMode};

/// The compiled kernel programs (`weave-ebpf`), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weave-ebpf.o"));

/// Program names in [`EBPF_OBJECT`].
pub const TX_PROGRAM: &str = "tx_from_container";
/// tcx ingress of [`DATAPATH_PORT_NAME`]: what the bridge sends towards the peers.
pub const FROM_BRIDGE_PROGRAM: &str = "from_bridge";
pub const RX_PROGRAM: &str = "rx_from_underlay";
pub const XDP_PROGRAM: &str = "xdp_admit";
/// tcx egress of container veths: subnet isolation of what the bridge delivers.
pub const EGRESS_PROGRAM: &str = "to_container";

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks that this process may use BPF at all: creates (and closes) a one-entry array map,
/// the least the programs need. The error (EPERM without the privilege) says why not.
pub fn probe_bpf() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // The head of `union bpf_attr` for BPF_MAP_CREATE (type, key size, value size, entries),
    // the rest zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: bpf(2) reads `size` bytes of `attr`, which lives for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just returned, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf unless it is mounted there already.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    let path = CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(BPFFS);
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DatapathError::BpfFs {
            what: format!("bpffs is not mounted at {BPFFS} and mounting it failed"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether the XDP admission filter goes on the underlay: per the mode, and in `auto` only
/// on a physical NIC (one with a bus device behind it).
pub(super) fn wants_xdp(mode: XdpMode, underlay: &LinkInfo) -> bool {
    match mode {
        XdpMode::On => true,
        XdpMode::Off => false,
        // A physical NIC has a bus device behind it (what /sys/class/net/<dev>/device
        // links to); asked over netlink because /sys may show another namespace.
        XdpMode::Auto => underlay.parent_dev.is_some(),
    }
}

/// The programs attached to a container veth's host end, with the name of each link's pin
/// (under `<pin dir>/links/`).
pub(super) fn endpoint_links(host_ifname: &str) -> [(String, &'static str, TcAttachType); 2] {
    [
        (
            format!("tx-{host_ifname}"),
            TX_PROGRAM,
            TcAttachType::Ingress,
        ),
        (
            format!("egress-{host_ifname}"),
            EGRESS_PROGRAM,
            TcAttachType::Egress,
        ),
    ]
}

/// The kernel programs, their maps and their links.
pub(super) struct Programs {
    ebpf: Ebpf,
    pub(super) maps: DatapathMaps,
    /// Pinned links by pin file name (`rx-<dev>`, `xdp-<dev>`, `tx-<host veth>`).
    links: BTreeMap<String, PinnedLink>,
    /// Links an earlier run pinned, not claimed yet by this run (by pin file name): an
    /// attach with the same pin name swaps its program in place instead.
    adopted: BTreeMap<String, PinnedLink>,
    /// `<pin dir>/links`.
    links_dir: std::path::PathBuf,
}

/// Loads the programs with their maps pinned in `pin_dir`, writes the configuration, and
/// attaches RX to the underlay, the bridge-side program to [`DATAPATH_PORT_NAME`] and (per
/// the mode) XDP. Returns the programs and whether XDP is attached.
/// With `adopt` the maps pinned there are re-used as they are (only the configuration's
/// start fields rewritten) and the links pinned there get the new programs in place.
pub(super) fn load(
    settings: &DatapathSettings,
    pin_dir: &Path,
    underlay: &LinkInfo,
    bridge_port: u32,
    adopt: bool,
) -> Result<(Programs, bool), DatapathError> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> =
        ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    // A read-only global: at 0 the verifier drops every log statement as dead code.
    let log_level: u8 = if settings.log_kernel {
        aya_log::Level::Trace as u8
    } else {
        0
    };
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Load)?;
    if settings.log_kernel {
        kernel_log::start(&mut ebpf)?;
    }

    let mut maps = DatapathMaps::take(&mut ebpf)?;
    let start = StartConfig {
        underlay_addr: settings.underlay_addr,
        underlay_ifindex: underlay.index,
        underlay_mac: underlay.mac,
        own_short_id: settings.own_short_id.get(),
        bridge_port_ifindex: bridge_port,
    }
    .config();
    if adopt {
        // The service address and the sleeve's port stay until this run sets them again:
        // traffic to them goes on meanwhile.
        maps.update_config(|config| {
            *config = weave_ebpf_common::maps::DatapathConfig {
                service_ipv4: config.service_ipv4,
                sleeve_port_ifindex: config.sleeve_port_ifindex,
                ..start
            }
        })?;
    } else {
        maps.write_config(start)?;
        let marker = pin_dir.join(LAYOUT_MARKER);
        let _ = std::fs::remove_file(&marker);
        bpf_sys::pin_marker(&marker, layout_fingerprint(&declared_maps()?)).map_err(|source| {
            DatapathError::BpfFs {
                what: format!("pinning the layout marker {}", marker.display()),
                source,
            }
        })?;
    }

    for name in [TX_PROGRAM, RX_PROGRAM, EGRESS_PROGRAM, FROM_BRIDGE_PROGRAM] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load()
            .map_err(|e| DatapathError::program(format_args!("loading {name}"), e))?;
    }
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|e| DatapathError::program(format_args!("loading {XDP_PROGRAM}"), e))?;

    let links_dir = pin_dir.join("links");
    let mut programs = Programs {
        ebpf,
        maps,
        links: BTreeMap::new(),
        adopted: if adopt {
            adopted_links(&links_dir)
        } else {
            BTreeMap::new()
        },
        links_dir,
    };
    programs.attach_tc(
        format!("rx-{}", underlay.name),
        RX_PROGRAM,
        &underlay.name,
        TcAttachType::Ingress,
    )?;
    programs.attach_tc(
        format!("from-bridge-{DATAPATH_PORT_NAME}"),
        FROM_BRIDGE_PROGRAM,
        DATAPATH_PORT_NAME,
        TcAttachType::Ingress,
    )?;
    let want_xdp = wants_xdp(settings.xdp, underlay);
    if want_xdp {
        programs.attach_xdp(underlay)?;
    }
    // What the data path itself had attached and this run did not claim (another underlay,
    // XDP no longer wanted) goes now; container links wait for their endpoints.
    let leftover: Vec<String> = programs
        .adopted
        .keys()
        .filter(|pin| !is_endpoint_link(pin))
        .cloned()
        .collect();
    for pin in leftover {
        programs.remove_adopted(&pin);
    }
    Ok((programs, want_xdp))
}

/// The links pinned under `links_dir` by an earlier run, by pin file name.
fn adopted_links(links_dir: &Path) -> BTreeMap<String, PinnedLink> {
    let mut links = BTreeMap::new();
    for e in std::fs::read_dir(links_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match PinnedLink::from_pin(e.path()) {
            Ok(link) => {
                links.insert(name, link);
            }
            Err(err) => {
                tracing::warn!(
                    "pinned link {} cannot be opened, removed: {err}",
                    e.path().display()
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    links
}

/// Whether a link pin belongs to a container veth (`tx-…`, `egress-…`).
pub(super) fn is_endpoint_link(pin: &str) -> bool {
    pin.starts_with("tx-") || pin.starts_with("egress-")
}

impl Programs {
    /// Attaches TX and the egress check to a container veth's host end (anew, when they
    /// were attached before).
    pub(super) fn attach_to_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        for (pin, program, hook) in endpoint_links(host_ifname) {
            if let Some(old) = self.links.remove(&pin) {
                let _ = old.unpin();
            }
            if !self.adopted.contains_key(&pin) {
                let _ = std::fs::remove_file(self.links_dir.join(&pin));
            }
            self.attach_tc(pin, program, host_ifname, hook)?;
        }
        Ok(())
    }

    /// Unpins (so detaches) the links of a container veth's host end, this run's or adopted.
    pub(super) fn detach_from_endpoint(&mut self, host_ifname: &str) {
        for (pin, _, _) in endpoint_links(host_ifname) {
            if let Some(link) = self.links.remove(&pin) {
                let _ = link.unpin();
            }
            self.remove_adopted(&pin);
        }
    }

    /// Unpins (so detaches) every link.
    pub(super) fn detach_all(&mut self) {
        let adopted = std::mem::take(&mut self.adopted);
        for (_, link) in std::mem::take(&mut self.links).into_iter().chain(adopted) {
            let _ = link.unpin();
        }
    }

    /// Pin names of adopted links no attach of this run has claimed.
    pub(super) fn unclaimed_adopted(&self) -> Vec<String> {
        self.adopted.keys().cloned().collect()
    }

    /// Unpins (so detaches) an adopted link nobody claimed.
    pub(super) fn remove_adopted(&mut self, pin: &str) {
        if let Some(link) = self.adopted.remove(pin) {
            tracing::info!("adopted link {pin} is not used by this run: removed");
            let _ = link.unpin();
        }
    }

    /// Takes over the adopted link pinned as `pin`, if there is one, by swapping program
    /// `name` into it in place; `false` when there is none or the swap failed (its device
    /// is gone, say), the old pin then removed.
    fn replace_in_adopted(&mut self, pin: &str, name: &str) -> Result<bool, DatapathError> {
        let Some(link) = self.adopted.remove(pin) else {
            return Ok(false);
        };
        let path = self.links_dir.join(pin);
        let prog = program_named(&mut self.ebpf, name)?;
        let fd = prog
            .fd()
            .map_err(|e| DatapathError::program(format_args!("{name} descriptor"), e))?;
        match bpf_sys::replace_link_program(&path, fd.as_fd()) {
            Ok(()) => {
                self.links.insert(pin.to_string(), link);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!("cannot put {name} into the pinned link {pin} ({e}): attached anew");
                let _ = link.unpin();
                Ok(false)
            }
        }
    }

    /// Attaches classifier `name` at tcx ingress or egress of `ifname` and pins the link as
    /// `pin`; an adopted link pinned as `pin` gets the program in place instead.
    fn attach_tc(
        &mut self,
        pin: String,
        name: &str,
        ifname: &str,
        hook: TcAttachType,
    ) -> Result<(), DatapathError> {
        if self.replace_in_adopted(&pin, name)? {
            return Ok(());
        }
        let link = attach_tc(
            &mut self.ebpf,
            name,
            ifname,
            hook,
            &self.links_dir.join(&pin),
        )?;
        self.links.insert(pin, link);
        Ok(())
    }

    /// Attaches the XDP admission filter to the underlay and pins its link.
    fn attach_xdp(&mut self, underlay: &LinkInfo) -> Result<(), DatapathError> {
        let xdp_pin = format!("xdp-{}", underlay.name);
        if self.replace_in_adopted(&xdp_pin, XDP_PROGRAM)? {
            return Ok(());
        }
        let prog = xdp_program(&mut self.ebpf)?;
        let id = prog
            .attach_to_if_index(underlay.index, aya::programs::XdpMode::Default)
            .map_err(|e| {
                DatapathError::program(format_args!("attaching XDP to {}", underlay.name), e)
            })?;
        let link = prog
            .take_link(id)
            .map_err(|e| DatapathError::program("XDP link", e))?;
        let fd: FdLink = link.try_into().map_err(|source| DatapathError::Link {
            what: format!("XDP on {} is not a bpf link", underlay.name),
            source,
        })?;
        let pinned =
            fd.pin(self.links_dir.join(&xdp_pin))
                .map_err(|source| DatapathError::Pin {
                    what: "pinning the XDP link".into(),
                    source,
                })?;
        self.links.insert(xdp_pin, pinned);
        Ok(())
    }
}

/// Program `name` of the object, or an error saying it is missing.
fn program_named<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, DatapathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::NotInObject {
            kind: "program",
            name: name.to_string(),
        })
}

/// Classifier `name` of the object.
fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DatapathError> {
    program_named(ebpf, name)?
        .try_into()
        .map_err(|e| DatapathError::program(name, e))
}

/// The XDP admission filter of the object.
fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    program_named(ebpf, XDP_PROGRAM)?
        .try_into()
        .map_err(|e| DatapathError::program(XDP_PROGRAM, e))
}

/// Attaches a classifier at tcx ingress or egress of `ifname` and pins the link at `pin`.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    ifname: &str,
    hook: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let prog = program(ebpf, name)?;
    let id = prog
        .attach(ifname, hook)
        .map_err(|e| DatapathError::program(format_args!("attaching {name} to {ifname}"), e))?;
    let link = prog
        .take_link(id)
        .map_err(|e| DatapathError::program(name, e))?;
    let fd: FdLink = link.try_into().map_err(|source| DatapathError::Link {
        what: format!("{name} on {ifname} is not a tcx link"),
        source,
    })?;
    let _ = std::fs::remove_file(pin);
    fd.pin(pin).map_err(|source| DatapathError::Pin {
        what: format!("pinning the link of {name} on {ifname}"),
        source,
    })
}

/// The maps the object declares, with their shapes, in [`ALL_MAPS`] order.
pub(super) fn declared_maps() -> Result<Vec<(&'static str, MapShape)>, DatapathError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| DatapathError::Bpf(format!("reading the embedded kernel object: {e}")))?;
    ALL_MAPS
        .iter()
        .map(|name| {
            let map = object
                .maps
                .get(*name)
                .ok_or_else(|| DatapathError::NotInObject {
                    kind: "map",
                    name: name.to_string(),
                })?;
            Ok((
                *name,
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                },
            ))
        })
        .collect()
}

/// What lies pinned at `path`.
fn pinned_map(path: &Path) -> PinnedMap {
    if std::fs::symlink_metadata(path).is_err() {
        return PinnedMap::Absent;
    }
    match bpf_sys::pinned_map_shape(path) {
        Ok([map_type, key_size, value_size, max_entries]) => PinnedMap::Present(MapShape {
            map_type,
            key_size,
            value_size,
            max_entries,
        }),
        Err(e) => PinnedMap::Unreadable(e.to_string()),
    }
}

/// Prepares the pin directory `pin_dir` (and its `links/`): what an earlier run pinned
/// there is adopted when its maps fit the programs (`true`), else removed (one log line
/// saying why, when there was something).
pub(super) fn open_pin_dir(pin_dir: &Path) -> Result<bool, DatapathError> {
    ensure_bpffs()?;
    let declared = declared_maps()?;
    let pinned: Vec<(&str, PinnedMap)> = declared
        .iter()
        .map(|(name, _)| (*name, pinned_map(&pin_dir.join(name))))
        .collect();
    let marker = bpf_sys::read_marker(&pin_dir.join(LAYOUT_MARKER));
    let adopt = match judge_pins(&declared, &pinned, marker) {
        PinVerdict::Fresh => false,
        PinVerdict::Adopt => {
            tracing::info!(
                "adopting the data path pinned under {}: its maps are kept, the programs replaced in place",
                pin_dir.display()
            );
            true
        }
        PinVerdict::Recreate(why) => {
            tracing::warn!(
                "not adopting the pins under {} ({why}): the data path is created anew",
                pin_dir.display()
            );
            false
        }
    };
    if !adopt {
        remove_pins(pin_dir);
    }
    std::fs::create_dir_all(pin_dir.join("links")).map_err(|source| DatapathError::BpfFs {
        what: format!("cannot create pin directory {}", pin_dir.display()),
        source,
    })?;
    Ok(adopt)
}

/// Removes pinned links (detaching them) and maps of an earlier run.
pub(super) fn remove_pins(pin_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for m in ALL_MAPS.iter().chain(&[LAYOUT_MARKER]) {
        let _ = std::fs::remove_file(pin_dir.join(m));
    }
}

/// Removes the pins and the pin directory itself (at shutdown).
pub(super) fn remove_pin_dir(pin_dir: &Path) {
    remove_pins(pin_dir);
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    let _ = std::fs::remove_dir(pin_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(parent_dev: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            mac: [0; 6],
            controller: None,
            parent_dev: parent_dev.map(str::to_string),
            headroom: None,
        }
    }

    #[test]
    fn xdp_goes_on_physical_nics_in_auto_mode_and_wherever_it_is_forced() {
        assert!(wants_xdp(XdpMode::Auto, &link(Some("0000:00:03.0"))));
        assert!(!wants_xdp(XdpMode::Auto, &link(None)), "a veth");
        assert!(wants_xdp(XdpMode::On, &link(None)));
        assert!(!wants_xdp(XdpMode::Off, &link(Some("0000:00:03.0"))));
    }

    #[test]
    fn every_pinned_map_has_a_shape_in_the_embedded_object() {
        let declared = declared_maps().expect("the embedded object parses");
        assert_eq!(declared.len(), ALL_MAPS.len());
        for (name, shape) in &declared {
            assert!(
                shape.key_size > 0 && shape.value_size > 0 && shape.max_entries > 0,
                "{name}: {shape:?}"
            );
        }
    }

    #[test]
    fn only_container_veth_links_wait_for_their_endpoints() {
        assert!(is_endpoint_link("tx-vethwe1234abcd"));
        assert!(is_endpoint_link("egress-vethwe1234abcd"));
        assert!(!is_endpoint_link("rx-eth0"));
        assert!(!is_endpoint_link("xdp-eth0"));
        assert!(!is_endpoint_link("from-bridge-vethwe-datapath"));
    }

    #[test]
    fn a_container_veth_gets_tx_at_ingress_and_the_isolation_check_at_egress() {
        let links = endpoint_links("vethwe1234abcd");
        assert_eq!(links[0].0, "tx-vethwe1234abcd");
        assert_eq!(links[0].1, TX_PROGRAM);
        assert!(matches!(links[0].2, TcAttachType::Ingress));
        assert_eq!(links[1].0, "egress-vethwe1234abcd");
        assert_eq!(links[1].1, EGRESS_PROGRAM);
        assert!(matches!(links[1].2, TcAttachType::Egress));
    }
}

/// The kernel programs' log records (`aya-log`), read on a thread of their own into the
/// router's log (through the `log` → `tracing` bridge).
mod kernel_log {
    use std::os::fd::AsRawFd;

    use aya::Ebpf;

    use crate::datapath::DatapathError;

    /// Starts reading; the thread lives as long as the process.
    pub(super) fn start(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
        let mut logger = aya_log::EbpfLogger::init(ebpf)
            .map_err(|e| DatapathError::Bpf(format!("--log-kernel: {e}")))?;
        std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || loop {
                let mut fd = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call; the ring buffer's fd
                // stays open while `logger` lives (this thread owns it).
                let ready = unsafe { libc::poll(&mut fd, 1, 1000) };
                if ready < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    tracing::warn!(
                        "--log-kernel: polling the kernel log failed; no more kernel log"
                    );
                    return;
                }
                logger.flush();
            })
            .map_err(|e| DatapathError::Bpf(format!("--log-kernel: starting its thread: {e}")))?;
        tracing::info!("kernel log on: rare events of the kernel programs are logged here");
        Ok(())
    }
}
