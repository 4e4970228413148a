//! Who holds an interface's XDP hook, asked of the kernel over rtnetlink
//! (`RTM_GETLINK`, the `IFLA_XDP` attributes `ip link` shows), so that
//! `attach` can refuse a taken hook by the program's name and id before it
//! changes anything, instead of failing halfway with "Device or resource
//! busy".

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
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
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// The program on the XDP hook of interface `ifindex` (in this network
/// namespace), in any mode, or `None` when the hook is free.
pub fn xdp_program(ifindex: u32) -> std::io::Result<Option<HookProgram>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)),
    );
    req.header.flags = NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| std::io::Error::other(format!("an unreadable rtnetlink reply: {e}")))?;
    let link = match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
        NetlinkPayload::Error(e) => return Err(e.to_io()),
        other => {
            return Err(std::io::Error::other(format!(
                "an unexpected rtnetlink reply: {other:?}"
            )));
        }
    };
    let id = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::ProgId(id)
            | LinkXdp::DrvProgId(id)
            | LinkXdp::SkbProgId(id)
            | LinkXdp::HwProgId(id)
                if *id != 0 =>
            {
                Some(*id)
            }
            _ => None,
        }),
        _ => None,
    });
    Ok(id.map(|id| HookProgram {
        id,
        name: program_name(id),
    }))
}
