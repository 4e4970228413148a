//! Debian's xdp-tools (libxdp's own xdp-loader and xdp-filter, installed by
//! `cargo xtask setup`) run against the lab's server interface.

use std::process::Command;

use handshake_lab::Lab;

/// Runs one of xdp-tools in the lab's server namespace (the mount
/// namespace, and so bpffs, stays the host's); (success, stdout, stderr).
pub fn tool(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    tool_with(lab, args, &[])
}

/// [`tool`] with environment variables set.
pub fn tool_with(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    super::cli::outcome(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.server.name))
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// The id of the program on the server interface's XDP hook, as `ip`
/// shows it.
pub fn hook_id(lab: &Lab) -> Option<u32> {
    let link = lab
        .server
        .ip(&["-d", "link", "show", &lab.server_if])
        .unwrap();
    let rest = link.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `xdp-loader status` of the server interface.
pub fn loader_status(lab: &Lab) -> String {
    let (_, out, err) = tool(lab, &["xdp-loader", "status", &lab.server_if]);
    format!("{out}{err}")
}

/// xdp-filter on the server interface; unloaded on drop, also when the
/// test panics.
pub struct Filter<'a>(pub &'a Lab);

impl Filter<'_> {
    /// Loads xdp-filter (allow policy: what its lists name is dropped).
    pub fn load<'a>(lab: &'a Lab, env: &[(&str, &str)]) -> Result<Filter<'a>, String> {
        let (ok, _, err) = tool_with(lab, &["xdp-filter", "load", &lab.server_if], env);
        if ok { Ok(Filter(lab)) } else { Err(err) }
    }

    /// Drops TCP segments to `port` (xdp-filter's port list is global).
    pub fn deny_port(&self, port: u16) {
        let p = port.to_string();
        let (ok, _, err) = tool(self.0, &["xdp-filter", "port", &p, "--proto", "tcp"]);
        assert!(ok, "xdp-filter port {p}: {err}");
    }
}

impl Drop for Filter<'_> {
    fn drop(&mut self) {
        let _ = tool(self.0, &["xdp-filter", "unload", &self.0.server_if]);
    }
}

/// xdp-filter's hit counter for `port` (`xdp-filter status`: the packets
/// it dropped for that port on every interface).
pub fn port_hits(lab: &Lab, port: u16) -> u64 {
    let (ok, out, err) = tool(lab, &["xdp-filter", "status"]);
    assert!(ok, "xdp-filter status: {err}");
    out.lines()
        .skip_while(|l| !l.starts_with("Filtered ports:"))
        .find(|l| l.split_whitespace().next() == Some(&port.to_string()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("xdp-filter status lists no port {port}:\n{out}"))
}
