//! The allow and deny prefix lists end to end: the CLI's verbs against an
//! attached gate, a flood from a denied prefix that never reaches the
//! server's TCP stack (`nstat` the witness), a connection that outlives its
//! prefix's denial until `--cut`, and a client on the allow list that
//! connects beside a spoofed flood at a cap of 1. Needs root; `cargo xtask
//! test` runs it.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{Attached, ack_flood, cli, spoofed_flood};
use handshake_lab::{EchoServer, Lab, connect_each, connect_many};

const CONNECT: Duration = Duration::from_secs(1);

fn server(lab: &Lab) -> (SocketAddr, EchoServer) {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    (
        addr,
        EchoServer::start(&lab.server, addr, 1024).expect("server"),
    )
}

/// A connection from the lab's client namespace, kept open.
fn open(lab: &Lab, addr: SocketAddr) -> TcpStream {
    lab.client
        .run(move || {
            let s = TcpStream::connect_timeout(&addr, CONNECT)?;
            s.set_read_timeout(Some(CONNECT))?;
            Ok(s)
        })
        .expect("connect")
}

/// Whether one line goes to the echo server and comes back.
fn echoes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 5];
    s.write_all(b"ping\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn a_denied_prefix_never_reaches_the_server_and_its_connections_finish_unless_cut() {
    let lab = Lab::new("lsa").expect("lab");
    let (addr, _srv) = server(&lab);
    let gate = Attached::new(&lab, &[]);
    let mut kept = open(&lab, addr);
    assert!(echoes(&mut kept));

    let out = gate.run("deny", &["add", Lab::SPOOFED_V4, "--comment", "the flood"]);
    assert!(
        out.contains("1 added") && out.contains("1 prefixes on it"),
        "{out}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&gate.run("deny", &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["net"], Lab::SPOOFED_V4, "{listed:#}");
    assert_eq!(listed[0]["comment"], "the flood", "{listed:#}");

    let segs = || lab.server.nstat("TcpInSegs").unwrap();
    let before = segs();
    assert_eq!(spoofed_flood(&lab, addr, 2_000), 2_000);
    assert_eq!(ack_flood(&lab, addr, 500), 500);
    assert_eq!(
        segs(),
        before,
        "the denied flood reached the server's TCP stack"
    );
    let s = gate.status();
    assert_eq!(s["drops"]["denied"], 2_500, "{s:#}");
    assert_eq!(s["half_open"], 0, "{s:#}");
    assert_eq!(s["prefix_lists"]["deny"], 1, "{s:#}");

    // The client's own address denied: its open connection finishes...
    let client = format!("{}", Lab::CLIENT_V4);
    gate.run("deny", &["add", &client]);
    assert!(
        echoes(&mut kept),
        "a connection tracked before its denial was cut"
    );
    // ...while a new one is refused.
    let new = connect_many(&lab.client, addr, 1, CONNECT).unwrap();
    assert_eq!(new.succeeded, 0, "a denied client connected");
    // --cut ends it: its next segment has no entry, and is denied.
    let out = gate.run("deny", &["add", &client, "--cut"]);
    assert!(out.contains("cut 1 tracked connections"), "{out}");
    let denied = gate.status()["drops"]["denied"].as_u64().unwrap();
    assert!(!echoes(&mut kept), "a cut connection still echoes");
    assert!(gate.status()["drops"]["denied"].as_u64().unwrap() > denied);

    // Off the list, the client connects again; flush empties the list.
    gate.run("deny", &["del", &format!("{client}/32")]);
    let again = connect_many(&lab.client, addr, 3, CONNECT).unwrap();
    assert_eq!(
        again.succeeded, 3,
        "a client taken off the deny list was refused"
    );
    let out = gate.run("deny", &["flush"]);
    assert!(
        out.contains("1 removed") && out.contains("0 prefixes on it"),
        "{out}"
    );
    assert_eq!(gate.status()["prefix_lists"]["deny"], 0);
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn an_allowed_client_connects_beside_a_flood_at_a_cap_of_one() {
    let lab = Lab::new("lsb").expect("lab");
    let (addr, _srv) = server(&lab);
    let gate = Attached::new(
        &lab,
        &[
            "max-half-open=1",
            "max-half-open-per-source=1",
            "verified-reserve-pct=0",
            // Nothing ages out while a slow (emulated) VM floods.
            "half-open-timeout-ms=30000",
        ],
    );
    let stranger = IpAddr::from([198, 18, 0, 3]);
    lab.client
        .ip(&[
            "addr",
            "add",
            &format!("{stranger}/24"),
            "dev",
            &lab.client_if,
        ])
        .expect("add a client address");
    let dir = std::env::temp_dir().join(format!("hg-allow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("allow.netset");
    std::fs::write(
        &file,
        format!("# trusted\n{} # the client\n", Lab::CLIENT_V4),
    )
    .unwrap();
    let out = gate.run("allow", &["load", file.to_str().unwrap()]);
    assert!(out.contains("1 added"), "{out}");

    // The flood takes the one half-open slot and keeps it. 5,000 SYNs: the
    // pace is 10,000 a second, but an emulated VM beside the connecting
    // clients sends fewer than 2,000 a second, and the sender stops at 10 s.
    let flooding = std::thread::scope(|t| {
        let flood = t.spawn(|| spoofed_flood(&lab, addr, 5_000));
        std::thread::sleep(Duration::from_millis(300));
        let allowed = connect_many(&lab.client, addr, 10, CONNECT).unwrap();
        let refused = connect_each(&lab.client, &[stranger], addr, CONNECT).unwrap();
        (flood.join().unwrap(), allowed.succeeded, refused.succeeded)
    });
    let (sent, allowed, refused) = flooding;
    assert_eq!(sent, 5_000);
    assert_eq!(
        allowed, 10,
        "the allowed client was refused beside the flood"
    );
    assert_eq!(refused, 0, "a client off the list got past a full cap of 1");
    let s = gate.status();
    assert!(s["packets"]["allowed"].as_u64().unwrap() >= 10, "{s:#}");
    assert!(s["drops"]["global"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["half_open"].as_u64().unwrap() <= 1, "{s:#}");

    // What the lists refuse, changing nothing: a prefix on both lists,
    // --cut on the allow list, a file with a bad line.
    let ns = lab.server.name.as_str();
    let iface = lab.server_if.as_str();
    let client = Lab::CLIENT_V4.to_string();
    let (ok, _, err) = cli(&["--netns", ns, "deny", iface, "add", &client]);
    assert!(!ok && err.contains("is on the allow list"), "{err}");
    let (ok, _, err) = cli(&[
        "--netns",
        ns,
        "allow",
        iface,
        "add",
        "198.18.5.0/24",
        "--cut",
    ]);
    assert!(!ok && err.contains("--cut is for the deny list"), "{err}");
    std::fs::write(&file, "198.18.6.0/24\n198.18.7.0/33\n").unwrap();
    let (ok, _, err) = cli(&[
        "--netns",
        ns,
        "allow",
        iface,
        "load",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("line 2"), "{err}");
    let listed: serde_json::Value =
        serde_json::from_str(&gate.run("allow", &["list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    assert_eq!(listed[0]["comment"], "the client", "{listed:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}
