//! Who holds an interface's XDP hook, asked of the kernel over rtnetlink
//! (`RTM_GETLINK`, the `IFLA_XDP` attributes `ip link` shows), so that
//! `attach` can refuse a taken hook by the program's name and id before it
//! changes anything, instead of failing halfway with "Device or resource
//! busy"; and setting it (`RTM_SETLINK`), as libxdp sets its dispatcher.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The name libxdp gives its multi-program dispatcher.
pub const LIBXDP_DISPATCHER: &str = "xdp_dispatcher";

/// A program on an XDP hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookProgram {
    pub id: u32,
    /// The kernel's (16-byte) name of it, if it could be read.
    pub name: Option<String>,
}

impl HookProgram {
    /// libxdp's multi-program dispatcher (xdp-loader, xdp-filter, bpfman).
    pub fn is_dispatcher(&self) -> bool {
        self.name.as_deref() == Some(LIBXDP_DISPATCHER)
    }
}

/// The name of the loaded program with kernel id `id`.
fn program_name(id: u32) -> Option<String> {
    program_info(id).and_then(|p| p.name_as_str().map(str::to_string))
}

/// The loaded program with kernel id `id`, if there is one.
pub fn program_info(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
}

/// `IFLA_XDP_FLAGS` bits (`linux/if_link.h`).
pub mod flags {
    /// Fail if a program is attached already.
    pub const UPDATE_IF_NOEXIST: u32 = 1 << 0;
    /// Generic (skb) mode.
    pub const SKB_MODE: u32 = 1 << 1;
    /// Native (driver) mode.
    pub const DRV_MODE: u32 = 1 << 2;
    /// Replace only the program given as `IFLA_XDP_EXPECTED_FD`.
    pub const REPLACE: u32 = 1 << 4;
}

/// Sends one rtnetlink request about a link and returns the kernel's one
/// answer (with `NLM_F_ACK`, an error message whose code 0 is the ack).
fn request(msg: RouteNetlinkMessage, ack: bool) -> std::io::Result<RouteNetlinkMessage> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    req.header.flags = NLM_F_REQUEST | if ack { NLM_F_ACK } else { 0 };
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| std::io::Error::other(format!("an unreadable rtnetlink reply: {e}")))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(m) => Ok(m),
        NetlinkPayload::Error(e) if e.code.is_none() => {
            Ok(RouteNetlinkMessage::NewLink(LinkMessage::default()))
        }
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(std::io::Error::other(format!(
            "an unexpected rtnetlink reply: {other:?}"
        ))),
    }
}

/// The program on the XDP hook of interface `ifindex` (in this network
/// namespace), in any mode, or `None` when the hook is free.
pub fn xdp_program(ifindex: u32) -> std::io::Result<Option<HookProgram>> {
    Ok(xdp_hook(ifindex)?.map(|(id, _)| HookProgram {
        id,
        name: program_name(id),
    }))
}

/// The id of the program on the XDP hook of `ifindex` and the
/// `IFLA_XDP_FLAGS` mode bit it was attached in (0 if it cannot be told).
pub fn xdp_hook(ifindex: u32) -> std::io::Result<Option<(u32, u32)>> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let link = match request(RouteNetlinkMessage::GetLink(link), false)? {
        RouteNetlinkMessage::NewLink(link) => link,
        other => {
            return Err(std::io::Error::other(format!(
                "an unexpected rtnetlink reply: {other:?}"
            )));
        }
    };
    let xdp: Vec<LinkXdp> = link
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .unwrap_or_default();
    let mode = xdp
        .iter()
        .find_map(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => Some(flags::DRV_MODE),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(flags::SKB_MODE),
            _ => None,
        })
        .unwrap_or(0);
    let id = xdp.iter().find_map(|x| match x {
        LinkXdp::ProgId(id)
        | LinkXdp::DrvProgId(id)
        | LinkXdp::SkbProgId(id)
        | LinkXdp::HwProgId(id)
            if *id != 0 =>
        {
            Some(*id)
        }
        _ => None,
    });
    Ok(id.map(|id| (id, mode)))
}

/// Puts the program `fd` on the XDP hook of `ifindex` through netlink (as
/// libxdp does, so that its tools can swap it), or takes the program off
/// with `fd` -1. With `expected`, only in place of that program
/// (`XDP_FLAGS_REPLACE`); `flags` carries the mode and the other bits.
pub fn set_xdp(ifindex: u32, fd: i32, expected: Option<i32>, flags: u32) -> std::io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut xdp = vec![LinkXdp::Fd(fd)];
    let mut bits = flags;
    if let Some(e) = expected {
        bits |= self::flags::REPLACE;
        xdp.push(LinkXdp::ExpectedFd(e as u32));
    }
    xdp.push(LinkXdp::Flags(bits));
    link.attributes.push(LinkAttribute::Xdp(xdp));
    request(RouteNetlinkMessage::SetLink(link), true).map(drop)
}
