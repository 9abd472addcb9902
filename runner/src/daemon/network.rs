//! The bridge network (`--network bridge`, the default): the daemon's Linux
//! bridge, the address management (IPAM) in the catalog, each container's
//! network namespace and veth pair, and the userland proxies of published
//! ports (`-p`, `-P`).
//!
//! The bridge (`wharf0`, gateway `.1` of the subnet, both set with daemon
//! flags) is made at daemon start if missing and kept: running containers
//! outlive the daemon. A container gets its address at create (the catalog's
//! primary key makes a second hand-out impossible; the row goes with the
//! container at rm). At start the daemon makes the container's namespace
//! itself and bind-mounts it at `<root>/netns/<id>` (the runtime joins it by
//! path), moves one end of a veth pair into it as `eth0` with the address,
//! brings `lo` up and routes by the gateway; the host end joins the bridge.
//! Published ports are listened on by tokio tasks here that copy each TCP
//! connection (or UDP datagram) to the container's address; the ports given
//! are kept in the catalog so a restarted daemon listens again. When the
//! container stops everything is undone (veth, namespace, listeners).
//! Outbound NAT is not set up: containers reach the bridge, each other and
//! the host; IPv4 forwarding is turned on.
//!
//! All link changes go through netlink (`rtnetlink`); work inside the
//! container's namespace runs on a short-lived thread of its own, since a
//! namespace belongs to a thread. Calls rtnetlink, nix, sqlx; called by
//! `containers` and `daemon::run`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sqlx::SqlitePool;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

use super::error::{Error, Result};
use crate::api::PortMapping;

/// The bridge a daemon makes when not told otherwise.
pub const DEFAULT_BRIDGE: &str = "wharf0";
/// Its subnet.
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";
/// At most this many UDP clients per published port at once.
const MAX_UDP_PEERS: usize = 1024;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

/// An IPv4 subnet (`10.89.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/N`: a network address (no host bits), N in 8..=30.
    pub fn parse(s: &str) -> std::result::Result<Subnet, String> {
        let bad = |why: &str| format!("invalid subnet {s:?}: {why}");
        let (ip, prefix) = s.split_once('/').ok_or_else(|| bad("want A.B.C.D/N"))?;
        let network: Ipv4Addr = ip.parse().map_err(|_| bad("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be 8 to 30"));
        }
        let subnet = Subnet { network, prefix };
        if u32::from(network) & !subnet.mask() != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The first address: the bridge's own.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// True when the network `ip/prefix` shares an address with this one.
    pub fn overlaps(&self, ip: Ipv4Addr, prefix: u8) -> bool {
        let theirs = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let common = self.mask() & theirs;
        u32::from(ip) & common == u32::from(self.network) & common
    }

    /// The lowest container address (after the gateway, before the
    /// broadcast address) not in `used`.
    pub fn first_free(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// docker's MAC for an address: `02:42` then the address's four bytes.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A link name the kernel takes: 1 to 15 bytes, no `/`, `:` or blank.
pub fn valid_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The host end of a container's veth pair, and the temporary name of the
/// other end before it becomes `eth0` in the container.
fn veth_names(id: &str) -> (String, String) {
    let short: String = id.chars().take(11).collect();
    (format!("wr{short}"), format!("wp{short}"))
}

fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn link_index(handle: &Handle, name: &str) -> std::result::Result<Option<u32>, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if nl_errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(format!("looking up link {name}: {e}")),
    }
}

/// Runs `f` on a new thread with a runtime of its own (the namespace work
/// must not move a daemon thread) and waits for it.
fn on_own_thread<F, Fut>(f: F) -> std::result::Result<(), String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("netlink runtime: {e}"))?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| "the network setup thread panicked".to_string())?
}

/// What a container's network is made of.
#[derive(Debug, Clone)]
struct Plumbing {
    netns: PathBuf,
    bridge: String,
    host_if: String,
    peer_if: String,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
}

/// Makes the namespace file and the veth pair (see the module doc). The
/// caller undoes a failure with [`unplumb`].
async fn plumb(p: Plumbing) -> std::result::Result<(), String> {
    // Opened before this thread changes namespace: it stays the host's.
    let (conn, host, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);
    std::fs::File::create(&p.netns).map_err(|e| format!("{}: {e}", p.netns.display()))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("new network namespace: {e}"))?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        &p.netns,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting the network namespace: {e}"))?;
    let ns = std::fs::File::open(&p.netns).map_err(|e| format!("{}: {e}", p.netns.display()))?;
    let (conn, inner, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);

    let bridge = link_index(&host, &p.bridge)
        .await?
        .ok_or_else(|| format!("the bridge {} is gone", p.bridge))?;
    host.link()
        .add(LinkVeth::new(&p.host_if, &p.peer_if).build())
        .execute()
        .await
        .map_err(nl("creating the veth pair"))?;
    host.link()
        .set(
            LinkUnspec::new_with_name(&p.peer_if)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl("moving the veth into the container"))?;
    host.link()
        .set(
            LinkUnspec::new_with_name(&p.host_if)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl("attaching the veth to the bridge"))?;

    let eth = link_index(&inner, &p.peer_if)
        .await?
        .ok_or("the veth did not arrive in the container")?;
    inner
        .link()
        .set(
            LinkUnspec::new_with_index(eth)
                .name("eth0".to_string())
                .address(mac_of(p.ip).to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(nl("naming eth0"))?;
    inner
        .address()
        .add(eth, IpAddr::V4(p.ip), p.prefix)
        .execute()
        .await
        .map_err(nl("addressing eth0"))?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl("eth0 up"))?;
    if let Some(lo) = link_index(&inner, "lo").await? {
        inner
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("lo up"))?;
    }
    inner
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(p.gateway)
                .output_interface(eth)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("the default route"))?;
    Ok(())
}

/// Removes the veth pair and the namespace file; whatever is already gone
/// is fine.
async fn unplumb(netns: PathBuf, host_if: String) -> std::result::Result<(), String> {
    let mut problems = Vec::new();
    match rtnetlink::new_connection() {
        Ok((conn, host, _)) => {
            tokio::spawn(conn);
            match link_index(&host, &host_if).await {
                Ok(Some(index)) => {
                    if let Err(e) = host.link().del(index).execute().await
                        && nl_errno(&e) != Some(ENODEV)
                    {
                        problems.push(format!("deleting {host_if}: {e}"));
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
        Err(e) => problems.push(format!("netlink: {e}")),
    }
    match nix::mount::umount2(&netns, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => problems.push(format!("unmounting {}: {e}", netns.display())),
    }
    match std::fs::remove_file(&netns) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("removing {}: {e}", netns.display())),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Makes the bridge if missing, gives it the gateway address and brings it
/// up.
/// docker's check before it makes its bridge: the subnet must not overlap
/// an address or a route (other than a default route) of any interface but
/// the bridge itself. The conflict, named, when there is one.
async fn subnet_conflict(
    bridge: &str,
    subnet: Subnet,
) -> std::result::Result<Option<String>, String> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| format!("listing links: {e}"))?
    {
        for attr in &link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                names.insert(link.header.index, name.clone());
            }
        }
    }
    let name_of = |index: u32| {
        names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("interface #{index}"))
    };
    let ours = |index: u32| names.get(&index).is_some_and(|n| n == bridge);
    // Each dump is read to its end before anything is returned (netlink
    // complains about answers left unread).
    let addresses: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("listing addresses: {e}"))?;
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("listing routes: {e}"))?;
    for msg in addresses {
        if ours(msg.header.index) {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr
                && subnet.overlaps(*ip, msg.header.prefix_len)
            {
                return Ok(Some(format!(
                    "the address {ip}/{} of {}",
                    msg.header.prefix_len,
                    name_of(msg.header.index)
                )));
            }
        }
    }
    for msg in routes {
        let prefix = msg.header.destination_prefix_length;
        if msg.header.table != RouteHeader::RT_TABLE_MAIN || prefix == 0 {
            continue;
        }
        let mut dest = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let Some(ip) = dest
            && !oif.is_some_and(ours)
            && subnet.overlaps(ip, prefix)
        {
            let via = oif.map_or_else(String::new, |i| format!(" on {}", name_of(i)));
            return Ok(Some(format!("the route to {ip}/{prefix}{via}")));
        }
    }
    Ok(None)
}

async fn ensure_bridge(name: &str, subnet: Subnet) -> std::result::Result<(), String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);
    if link_index(&handle, name).await?.is_none() {
        match handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
        {
            Ok(()) => tracing::info!(bridge = %name, "made the bridge"),
            Err(e) if nl_errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(format!("creating the bridge {name}: {e}")),
        }
    }
    let index = link_index(&handle, name)
        .await?
        .ok_or_else(|| format!("the bridge {name} vanished"))?;
    match handle
        .address()
        .add(index, IpAddr::V4(subnet.gateway()), subnet.prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if nl_errno(&e) == Some(EEXIST) => {}
        Err(e) => return Err(format!("addressing the bridge {name}: {e}")),
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| format!("bringing the bridge {name} up: {e}"))?;
    Ok(())
}

/// The bridge network of one daemon.
pub struct Network {
    bridge: String,
    subnet: Subnet,
    netns_dir: PathBuf,
    pool: SqlitePool,
    /// The listeners of each container's published ports.
    proxies: Mutex<HashMap<String, Vec<AbortHandle>>>,
}

/// The daemon's first step, before it makes anything: a bad bridge name or
/// subnet, or a subnet that overlaps an address or route of another
/// interface (docker refuses to start then too), is one clear error.
pub async fn preflight(bridge: &str, subnet: &str) -> Result<()> {
    if !valid_link_name(bridge) {
        return Err(Error::BadRequest(format!(
            "invalid bridge name {bridge:?}: 1 to 15 characters, no '/' or ':'"
        )));
    }
    let subnet = Subnet::parse(subnet).map_err(Error::BadRequest)?;
    match subnet_conflict(bridge, subnet).await {
        Ok(None) => Ok(()),
        Ok(Some(conflict)) => Err(Error::Conflict(format!(
            "the bridge subnet {subnet} (--bridge-subnet) conflicts with {conflict}"
        ))),
        Err(e) => Err(Error::Internal(format!(
            "checking the bridge subnet {subnet}: {e}"
        ))),
    }
}

impl Network {
    /// Makes (or finds) the bridge and turns IPv4 forwarding on.
    pub async fn open(
        root: &Path,
        pool: SqlitePool,
        bridge: &str,
        subnet: &str,
    ) -> Result<Arc<Network>> {
        if !valid_link_name(bridge) {
            return Err(Error::BadRequest(format!(
                "invalid bridge name {bridge:?}: 1 to 15 characters, no '/' or ':'"
            )));
        }
        let subnet = Subnet::parse(subnet).map_err(Error::BadRequest)?;
        let netns_dir = root.join("netns");
        std::fs::create_dir_all(&netns_dir)
            .map_err(|e| Error::Internal(format!("{}: {e}", netns_dir.display())))?;
        ensure_bridge(bridge, subnet)
            .await
            .map_err(Error::Internal)?;
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            tracing::warn!(error = %e, "could not turn on IPv4 forwarding");
        }
        tracing::info!(bridge = %bridge, subnet = %subnet, "bridge network ready");
        Ok(Arc::new(Network {
            bridge: bridge.to_string(),
            subnet,
            netns_dir,
            pool,
            proxies: Mutex::new(HashMap::new()),
        }))
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    /// Gives `id` the lowest free address of the subnet (its row in the
    /// catalog must exist).
    pub async fn allocate(&self, id: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.address(id).await? {
            return Ok(ip);
        }
        for _ in 0..8 {
            let used: Vec<(String,)> = sqlx::query_as("SELECT address FROM network_addresses")
                .fetch_all(&self.pool)
                .await?;
            let used: HashSet<Ipv4Addr> = used.iter().filter_map(|(a,)| a.parse().ok()).collect();
            let ip = self.subnet.first_free(&used).ok_or_else(|| {
                Error::Conflict(format!(
                    "no available IPv4 addresses on network bridge ({})",
                    self.subnet
                ))
            })?;
            let inserted =
                sqlx::query("INSERT INTO network_addresses (address, container_id) VALUES (?, ?)")
                    .bind(ip.to_string())
                    .bind(id)
                    .execute(&self.pool)
                    .await;
            match inserted {
                Ok(_) => return Ok(ip),
                // Another create took it between the read and the insert.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Internal("could not allocate an address".into()))
    }

    /// The address `id` holds, if any.
    pub async fn address(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT address FROM network_addresses WHERE container_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(a,)| a.parse().ok()))
    }

    /// Makes the container's namespace and veth (see the module doc);
    /// leaves nothing behind on failure.
    pub async fn attach(&self, id: &str, ip: Ipv4Addr) -> Result<()> {
        let (host_if, peer_if) = veth_names(id);
        let plumbing = Plumbing {
            netns: self.netns_path(id),
            bridge: self.bridge.clone(),
            host_if,
            peer_if,
            ip,
            prefix: self.subnet.prefix,
            gateway: self.subnet.gateway(),
        };
        let p = plumbing.clone();
        let made = tokio::task::spawn_blocking(move || on_own_thread(move || plumb(p)))
            .await
            .map_err(Error::internal)?;
        if let Err(e) = made {
            self.teardown_links(id).await;
            return Err(Error::Internal(format!(
                "setting up the network of {id}: {e}"
            )));
        }
        Ok(())
    }

    async fn teardown_links(&self, id: &str) {
        let netns = self.netns_path(id);
        let (host_if, _) = veth_names(id);
        let done =
            tokio::task::spawn_blocking(move || on_own_thread(move || unplumb(netns, host_if)))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(container = %id, error = %e, "network teardown"),
            Err(e) => tracing::warn!(container = %id, error = %e, "network teardown"),
        }
    }

    /// Closes the listeners and removes the veth and the namespace of `id`;
    /// harmless when there is nothing.
    pub async fn detach(&self, id: &str) {
        self.close_proxies(id);
        if let Err(e) = sqlx::query("DELETE FROM network_ports WHERE container_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(container = %id, error = %e, "forgetting published ports");
        }
        self.teardown_links(id).await;
    }

    fn close_proxies(&self, id: &str) {
        let handles = self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        for h in handles.into_iter().flatten() {
            h.abort();
        }
    }

    /// Namespace files of containers not in `known` (a crash during start
    /// or rm) go.
    pub async fn remove_orphans(&self, known: &HashSet<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.netns_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) {
                tracing::warn!(netns = %entry.path().display(), "removing a network namespace without a container");
                self.teardown_links(&name).await;
            }
        }
    }

    /// Listens on every port of `wanted` for `id` (at `ip`). All binds
    /// happen before any proxy runs: a port in use fails with docker's
    /// message and nothing listens. Returns the ports given.
    pub async fn publish(
        &self,
        id: &str,
        name: &str,
        ip: Ipv4Addr,
        wanted: &[PortMapping],
    ) -> Result<Vec<PortMapping>> {
        let mut bound = Vec::with_capacity(wanted.len());
        for want in wanted {
            let host_ip: IpAddr = if want.host_ip.is_empty() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                want.host_ip.parse().map_err(|_| {
                    Error::BadRequest(format!("invalid IP address: {}", want.host_ip))
                })?
            };
            let addr = SocketAddr::new(host_ip, want.host_port);
            let in_use = |e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    Error::Internal(format!(
                        "driver failed programming external connectivity on endpoint {name} ({id}): Bind for {addr} failed: port is already allocated"
                    ))
                } else {
                    Error::Internal(format!(
                        "driver failed programming external connectivity on endpoint {name} ({id}): listen {}/{addr}: {e}",
                        want.protocol
                    ))
                }
            };
            let listener = match want.protocol.as_str() {
                "udp" => Listener::Udp(UdpSocket::bind(addr).await.map_err(in_use)?),
                _ => Listener::Tcp(TcpListener::bind(addr).await.map_err(in_use)?),
            };
            let port = listener.port().map_err(Error::internal)?;
            bound.push((
                PortMapping {
                    container_port: want.container_port,
                    protocol: want.protocol.clone(),
                    host_ip: host_ip.to_string(),
                    host_port: port,
                },
                listener,
            ));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM network_ports WHERE container_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (p, _) in &bound {
            sqlx::query(
                "INSERT OR IGNORE INTO network_ports (container_id, protocol, container_port, host_ip, host_port)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(&p.protocol)
            .bind(i64::from(p.container_port))
            .bind(&p.host_ip)
            .bind(i64::from(p.host_port))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let mut handles = Vec::with_capacity(bound.len());
        let mut given = Vec::with_capacity(bound.len());
        for (p, listener) in bound {
            let target = SocketAddr::new(IpAddr::V4(ip), p.container_port);
            let task = match listener {
                Listener::Tcp(l) => tokio::spawn(serve_tcp(l, target)),
                Listener::Udp(s) => tokio::spawn(serve_udp(s, target)),
            };
            handles.push(task.abort_handle());
            given.push(p);
        }
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .extend(handles);
        Ok(given)
    }

    /// The ports `id` publishes now.
    pub async fn published(&self, id: &str) -> Result<Vec<PortMapping>> {
        let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT protocol, container_port, host_ip, host_port FROM network_ports
             WHERE container_id = ? ORDER BY container_port, protocol, host_ip, host_port",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(protocol, cp, host_ip, hp)| PortMapping {
                container_port: u16::try_from(cp).unwrap_or(0),
                protocol,
                host_ip,
                host_port: u16::try_from(hp).unwrap_or(0),
            })
            .collect())
    }

    /// After a daemon restart: listens again on the ports a running
    /// container had.
    pub async fn restore(&self, id: &str, name: &str) -> Result<()> {
        let Some(ip) = self.address(id).await? else {
            return Ok(());
        };
        let ports = self.published(id).await?;
        if ports.is_empty() {
            return Ok(());
        }
        self.publish(id, name, ip, &ports).await?;
        Ok(())
    }
}

/// A port key of an image's ExposedPorts: `80/tcp`, `53/udp`, `80`.
pub fn parse_port_key(key: &str) -> Option<(u16, String)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((port, proto))
}

/// The ports to publish: `-p` ones, then with `-P` each exposed port that
/// `-p` did not name, on a free host port.
pub fn wanted_ports(publish: &[PortMapping], all: bool, exposed: &[String]) -> Vec<PortMapping> {
    let mut wanted = publish.to_vec();
    if all {
        for (port, proto) in exposed.iter().filter_map(|k| parse_port_key(k)) {
            if !wanted
                .iter()
                .any(|p| p.container_port == port && p.protocol == proto)
            {
                wanted.push(PortMapping {
                    container_port: port,
                    protocol: proto,
                    host_ip: String::new(),
                    host_port: 0,
                });
            }
        }
    }
    wanted
}

/// docker's `HostConfig.PortBindings`: `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`.
pub fn port_bindings(publish: &[PortMapping]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for p in publish {
        let entry = map
            .entry(format!("{}/{}", p.container_port, p.protocol))
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = entry {
            list.push(serde_json::json!({
                "HostIp": p.host_ip,
                "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
            }));
        }
    }
    serde_json::Value::Object(map)
}

/// docker's `NetworkSettings.Ports`: every exposed or published port, with
/// its host bindings (null when it is only exposed).
pub fn ports_json(exposed: &[String], published: &[PortMapping]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (port, proto) in exposed.iter().filter_map(|k| parse_port_key(k)) {
        map.insert(format!("{port}/{proto}"), serde_json::Value::Null);
    }
    for p in published {
        let key = format!("{}/{}", p.container_port, p.protocol);
        let entry = map.entry(key).or_insert(serde_json::Value::Null);
        if entry.is_null() {
            *entry = serde_json::Value::Array(Vec::new());
        }
        if let serde_json::Value::Array(list) = entry {
            list.push(serde_json::json!({
                "HostIp": p.host_ip,
                "HostPort": p.host_port.to_string(),
            }));
        }
    }
    serde_json::Value::Object(map)
}

/// The container's resolv.conf on the bridge: the host's (without loopback
/// resolvers, already dropped by the caller), or docker's fallback of
/// Google's resolvers when none is left.
pub fn resolv_conf(filtered: &str) -> String {
    let has_nameserver = filtered
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"));
    if has_nameserver {
        filtered.to_string()
    } else {
        format!("{filtered}nameserver 8.8.8.8\nnameserver 8.8.4.4\n")
    }
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Listener {
    fn port(&self) -> std::io::Result<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.port()),
            Listener::Udp(s) => s.local_addr().map(|a| a.port()),
        }
    }
}

/// Accepts connections and copies each to `target`. Aborting this task
/// drops its connections too (they live in its JoinSet).
async fn serve_tcp(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut inbound, _)) => {
                    conns.spawn(async move {
                        match TcpStream::connect(target).await {
                            Ok(mut outbound) => {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                            Err(e) => tracing::debug!(%target, error = %e, "proxy connect"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Forwards datagrams to `target`, one upstream socket per client so the
/// answers find their way back.
async fn serve_udp(socket: UdpSocket, target: SocketAddr) {
    let socket = Arc::new(socket);
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "udp proxy receive");
                continue;
            }
        };
        if !peers.contains_key(&client) {
            if peers.len() >= MAX_UDP_PEERS {
                peers.clear();
                replies.abort_all();
            }
            let Ok(up) =
                UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await
            else {
                continue;
            };
            if up.connect(target).await.is_err() {
                continue;
            }
            let up = Arc::new(up);
            let (back, down) = (Arc::clone(&up), Arc::clone(&socket));
            replies.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = back.recv(&mut buf).await {
                    if down.send_to(&buf[..n], client).await.is_err() {
                        break;
                    }
                }
            });
            peers.insert(client, up);
        }
        if let Some(up) = peers.get(&client) {
            let _ = up.send(&buf[..n]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_networks_are_found() {
        let s = Subnet::parse("10.89.0.0/16").unwrap();
        let ip = |t: &str| t.parse::<Ipv4Addr>().unwrap();
        assert!(s.overlaps(ip("10.89.3.1"), 24));
        assert!(s.overlaps(ip("10.0.0.0"), 8));
        assert!(s.overlaps(ip("10.89.255.255"), 32));
        assert!(!s.overlaps(ip("10.90.0.1"), 24));
        assert!(!s.overlaps(ip("10.88.0.0"), 16));
        assert!(s.overlaps(ip("0.0.0.0"), 0));
    }

    #[test]
    fn subnets_parse_and_reject_host_bits() {
        let s = Subnet::parse("10.89.0.0/16").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 89, 0, 1));
        assert!(s.contains(Ipv4Addr::new(10, 89, 255, 254)));
        assert!(!s.contains(Ipv4Addr::new(10, 90, 0, 1)));
        assert_eq!(s.to_string(), "10.89.0.0/16");
        assert!(Subnet::parse("10.89.0.1/16").is_err());
        assert!(Subnet::parse("10.89.0.0").is_err());
        assert!(Subnet::parse("10.89.0.0/31").is_err());
        assert!(Subnet::parse("nope/24").is_err());
    }

    #[test]
    fn the_lowest_free_address_after_the_gateway_is_given() {
        let s = Subnet::parse("10.89.3.0/24").unwrap();
        let mut used = HashSet::new();
        assert_eq!(s.first_free(&used), Some(Ipv4Addr::new(10, 89, 3, 2)));
        used.insert(Ipv4Addr::new(10, 89, 3, 2));
        used.insert(Ipv4Addr::new(10, 89, 3, 3));
        assert_eq!(s.first_free(&used), Some(Ipv4Addr::new(10, 89, 3, 4)));
        // Freed: handed out again.
        used.remove(&Ipv4Addr::new(10, 89, 3, 2));
        assert_eq!(s.first_free(&used), Some(Ipv4Addr::new(10, 89, 3, 2)));
        // Full: .2 to .254 (never the gateway or the broadcast address).
        let all: HashSet<_> = (2..=254).map(|i| Ipv4Addr::new(10, 89, 3, i)).collect();
        assert_eq!(s.first_free(&all), None);
    }

    #[test]
    fn ports_from_flags_and_exposed_ports() {
        assert_eq!(parse_port_key("80/tcp"), Some((80, "tcp".into())));
        assert_eq!(parse_port_key("53/UDP"), Some((53, "udp".into())));
        assert_eq!(parse_port_key("8080"), Some((8080, "tcp".into())));
        assert_eq!(parse_port_key("0/tcp"), None);
        assert_eq!(parse_port_key("80/sctp"), None);
        let p = |cp, hp| PortMapping {
            container_port: cp,
            protocol: "tcp".into(),
            host_ip: String::new(),
            host_port: hp,
        };
        let exposed = vec!["80/tcp".to_string(), "443/tcp".to_string()];
        assert_eq!(
            wanted_ports(&[p(80, 8080)], false, &exposed),
            vec![p(80, 8080)]
        );
        assert_eq!(
            wanted_ports(&[p(80, 8080)], true, &exposed),
            vec![p(80, 8080), p(443, 0)]
        );
        let ports = ports_json(
            &exposed,
            &[PortMapping {
                host_ip: "0.0.0.0".into(),
                ..p(80, 8080)
            }],
        );
        assert_eq!(ports["80/tcp"][0]["HostPort"], "8080");
        assert!(ports["443/tcp"].is_null());
        assert_eq!(port_bindings(&[p(80, 0)])["80/tcp"][0]["HostPort"], "");
        assert_eq!(
            resolv_conf("search x\n"),
            "search x\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            resolv_conf("nameserver 10.0.0.1\n"),
            "nameserver 10.0.0.1\n"
        );
    }

    #[test]
    fn macs_and_names() {
        assert_eq!(
            format_mac(mac_of(Ipv4Addr::new(10, 89, 0, 2))),
            "02:42:0a:59:00:02"
        );
        assert!(valid_link_name("wharf0"));
        assert!(!valid_link_name("a-name-too-long-"));
        assert!(!valid_link_name("a/b"));
        assert!(!valid_link_name(""));
        let (h, p) = veth_names("0123456789abcdef");
        assert_eq!((h.as_str(), p.as_str()), ("wr0123456789a", "wp0123456789a"));
        assert!(valid_link_name(&h));
    }

    async fn pool() -> SqlitePool {
        let dir = tempfile::tempdir().unwrap();
        let pool = super::super::catalog::open(dir.path()).await.unwrap();
        std::mem::forget(dir);
        pool
    }

    async fn container(pool: &SqlitePool, id: &str) {
        sqlx::query(
            "INSERT INTO containers (id, name, image, image_id, request, path, args, stop_signal, state, created_at)
             VALUES (?, ?, 'i', 'i', '{}', 'sh', '[]', 'SIGTERM', 'created', 'now')",
        )
        .bind(id)
        .bind(format!("n{id}"))
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn ipam_gives_each_address_once_and_again_after_rm() {
        let pool = pool().await;
        let net = Network {
            bridge: "x".into(),
            subnet: Subnet::parse("10.89.7.0/29").unwrap(),
            netns_dir: PathBuf::from("/nonexistent"),
            pool: pool.clone(),
            proxies: Mutex::new(HashMap::new()),
        };
        let mut given = Vec::new();
        for i in 0..5 {
            let id = format!("c{i}");
            container(&pool, &id).await;
            given.push(net.allocate(&id).await.unwrap());
        }
        let expect: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 89, 7, i)).collect();
        assert_eq!(given, expect);
        // Asking again gives the same one.
        assert_eq!(net.allocate("c1").await.unwrap(), expect[1]);
        // Full (/29: .2 to .6).
        container(&pool, "c5").await;
        assert!(matches!(net.allocate("c5").await, Err(Error::Conflict(_))));
        // The catalog refuses a second holder of an address.
        let dup = sqlx::query(
            "INSERT INTO network_addresses (address, container_id) VALUES ('10.89.7.2', 'c5')",
        )
        .execute(&pool)
        .await;
        assert!(dup.is_err());
        // rm frees it (the row cascades), and the next one gets it.
        sqlx::query("DELETE FROM containers WHERE id = 'c1'")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(net.address("c1").await.unwrap(), None);
        assert_eq!(net.allocate("c5").await.unwrap(), expect[1]);
    }
}
