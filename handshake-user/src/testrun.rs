//! The real kernel programs loaded but attached nowhere, driven with
//! `BPF_PROG_TEST_RUN`: what the privileged tests and the benchmarks use.
//! A harness for tests: it panics, with the reason, when the kernel refuses.

use std::time::Duration;

use crate::conns::ConnMap;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use handshake_common::{
    Config, FlowEntry, FlowKey, Reason, SourceKey, SourceState, WindowCounter, maps, window,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
/// The egress program's only verdict: let the packet leave.
pub const TC_ACT_OK: u32 = 0;

/// The real programs, XDP ingress and TC egress, sharing their maps,
/// loaded but attached nowhere.
pub struct Harness {
    pub ebpf: Ebpf,
}

impl Harness {
    pub fn new(cfg: Config) -> Harness {
        Harness::sized(cfg, handshake_common::ESTABLISHED_CAPACITY)
    }

    /// A harness whose IPv4 established map holds `max_connections` (as
    /// `attach --max-connections` sizes it; the IPv6 one its default share).
    pub fn sized(cfg: Config, max_connections: u32) -> Harness {
        let v6 = handshake_common::v6_share(max_connections);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(
                maps::ESTABLISHED_V4,
                handshake_common::table::entries(max_connections),
            )
            .map_max_entries(maps::ESTABLISHED_V6, v6)
            .map_max_entries(maps::KNOWN, crate::gate::known_words(max_connections, v6))
            .load(crate::ebpf_object())
            .expect("load the BPF object");
        crate::conns::init_loaded(&mut ebpf).expect("write the established table's header");
        let xdp: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.load().expect("the verifier accepts the XDP program");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(maps::TC_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        tc.load()
            .expect("the verifier accepts the TC egress program");
        let tally: &mut Xdp = ebpf
            .program_mut(maps::TALLY_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        tally
            .load()
            .expect("the verifier accepts the counting program");
        let mut h = Harness { ebpf };
        h.set(cfg);
        h
    }

    /// A harness with `settings` in its maps, as `attach` writes them.
    pub fn with(settings: &crate::settings::Settings) -> Harness {
        let mut h = Harness::new(settings.config);
        h.apply(settings);
        h
    }

    /// Writes `settings` to the maps, as `set` does: the allowed ports'
    /// bitmap, then the configuration.
    pub fn apply(&mut self, settings: &crate::settings::Settings) {
        let mut a: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(maps::ALLOWED_PORTS).unwrap()).unwrap();
        for (i, w) in settings.port_bitmap().into_iter().enumerate() {
            a.set(i as u32, w, 0).unwrap();
        }
        self.set(settings.config);
    }

    pub fn config(&self) -> Config {
        let a: Array<_, Config> = Array::try_from(self.ebpf.map(maps::CONFIG).unwrap()).unwrap();
        a.get(&0, 0).unwrap()
    }

    pub fn set(&mut self, cfg: Config) {
        let mut a: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).unwrap()).unwrap();
        a.set(0, cfg, 0).unwrap();
        // As `set` does, unless the filter may be used as it is.
        let word: Array<_, u64> = Array::try_from(self.ebpf.map(maps::KNOWN_GEN).unwrap()).unwrap();
        if !handshake_common::known::Gen(word.get(&0, 0).unwrap()).usable(&cfg) {
            self.rebuild_known();
        }
    }

    /// Makes the prefix tries hold exactly `lists` (the caller sets
    /// `Config::prefix_lists` to match, as the controller does).
    pub fn set_prefixes(&mut self, lists: &[handshake_common::prefix::Listed]) {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        use handshake_common::prefix::{COMMENT_LEN, PrefixRule};
        let mut v4: LpmTrie<_, [u8; 4], PrefixRule> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::PREFIXES_V4).unwrap()).unwrap();
        for k in v4.keys().collect::<Result<Vec<_>, _>>().unwrap() {
            v4.remove(&k).unwrap();
        }
        let rule = |list| PrefixRule {
            list,
            added_s: 0,
            comment: [0; COMMENT_LEN],
        };
        for p in lists
            .iter()
            .filter(|p| handshake_common::prefix::is_v4(p.family))
        {
            let key = Key::new(u32::from(p.len), handshake_common::prefix::v4(&p.addr));
            v4.insert(&key, rule(p.list), 0).unwrap();
        }
        let mut v6: LpmTrie<_, [u8; 16], PrefixRule> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::PREFIXES_V6).unwrap()).unwrap();
        for k in v6.keys().collect::<Result<Vec<_>, _>>().unwrap() {
            v6.remove(&k).unwrap();
        }
        for p in lists
            .iter()
            .filter(|p| !handshake_common::prefix::is_v4(p.family))
        {
            v6.insert(&Key::new(u32::from(p.len), p.addr), rule(p.list), 0)
                .unwrap();
        }
    }

    /// Builds the known-source filter from the maps, as `attach` and `set`
    /// do (sizing its word the first time): a test that writes the maps
    /// itself calls this after, as the filter only learns what packets put
    /// in them.
    pub fn rebuild_known(&mut self) {
        let word: Array<_, u64> = Array::try_from(self.ebpf.map(maps::KNOWN_GEN).unwrap()).unwrap();
        if word.get(&0, 0).unwrap() == 0 {
            let words = Array::<_, u64>::try_from(self.ebpf.map(maps::KNOWN).unwrap())
                .unwrap()
                .len();
            let log2 = handshake_common::known::log2_bits_of(words);
            let mut word: Array<_, u64> =
                Array::try_from(self.ebpf.map_mut(maps::KNOWN_GEN).unwrap()).unwrap();
            word.set(0, handshake_common::known::Gen::new(log2).0, 0)
                .unwrap();
        }
        let rebuilt = crate::gate::run_rebuild(self.program(maps::TALLY_PROGRAM), 0)
            .expect("the counting program runs");
        assert!(rebuilt, "the known-source filter was rebuilt");
    }

    /// Runs `pkt` `repeat` times through the named program (XDP or TC, by
    /// `egress`), loading it first if it is a baseline not loaded yet;
    /// returns the kernel's own measure of one run (total / repeat).
    pub fn time(&mut self, program: &str, egress: bool, pkt: &[u8], repeat: u32) -> Duration {
        let opts = TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        };
        let p = self
            .ebpf
            .program_mut(program)
            .expect("a program of the object");
        let r = if egress {
            let tc: &mut SchedClassifier = p.try_into().expect("a TC program");
            if tc.fd().is_err() {
                tc.load().expect("the verifier accepts it");
            }
            tc.test_run(opts)
        } else {
            let xdp: &mut Xdp = p.try_into().expect("an XDP program");
            if xdp.fd().is_err() {
                xdp.load().expect("the verifier accepts it");
            }
            xdp.test_run(opts)
        };
        r.expect("BPF_PROG_TEST_RUN").duration
    }

    /// As [`Harness::time`] for a loaded XDP program, through a shared
    /// reference, so that threads on several CPUs can run it at once.
    pub fn time_shared(&self, program: &str, pkt: &[u8], repeat: u32) -> Duration {
        let xdp: &Xdp = self.program(program);
        xdp.test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .duration
    }

    /// Runs one arriving packet through the XDP program; returns its action.
    pub fn run(&self, pkt: &[u8]) -> u32 {
        let xdp: &Xdp = self.program(maps::XDP_PROGRAM);
        xdp.test_run(packet(pkt))
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    /// Runs one arriving packet through the XDP program; returns its action
    /// and the frame as the program left it (what `XDP_TX` would send).
    pub fn run_with_output(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let xdp: &Xdp = self.program(maps::XDP_PROGRAM);
        let mut out = vec![0u8; 4096];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs one leaving packet through the TC egress program; returns its action.
    pub fn run_out(&self, pkt: &[u8]) -> u32 {
        self.try_run_out(pkt).expect("BPF_PROG_TEST_RUN")
    }

    /// [`Harness::run_out`], or the kernel's refusal to build an skb of
    /// `pkt` (it wants at least an Ethernet header's worth more than XDP).
    pub fn try_run_out(&self, pkt: &[u8]) -> Result<u32, aya::programs::ProgramError> {
        let tc: &SchedClassifier = self.program(maps::TC_PROGRAM);
        tc.test_run(packet(pkt)).map(|r| r.return_value)
    }

    fn program<'a, P>(&'a self, name: &str) -> &'a P
    where
        &'a P: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    fn per_cpu_sum(&self, map: &str, slot: u32) -> u64 {
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(map).unwrap()).unwrap();
        a.get(&slot, 0).unwrap().iter().sum()
    }

    /// Arriving packets counted under `r` (passed and dropped), summed
    /// over CPUs.
    pub fn count(&self, r: Reason) -> u64 {
        self.count_dropped(r) + self.per_cpu_sum(maps::COUNTERS, r.counter_slot(false))
    }

    /// Arriving packets dropped under `r`, summed over CPUs.
    pub fn count_dropped(&self, r: Reason) -> u64 {
        self.per_cpu_sum(maps::COUNTERS, r.counter_slot(true))
    }

    /// Leaving packets counted under `r`, summed over CPUs.
    pub fn count_out(&self, r: Reason) -> u64 {
        self.per_cpu_sum(maps::EGRESS, r as u32)
    }

    /// Every entry of the connection table `names` (`maps::HALF_OPEN` or
    /// `maps::ESTABLISHED`), both families, with its key.
    pub fn flows(&self, names: [&str; 2]) -> Vec<(FlowKey, FlowEntry)> {
        self.table(names)
            .entries()
            .expect("read a connection table")
    }

    /// The connection table `names`.
    pub fn table(&self, names: [&str; 2]) -> ConnMap<&MapData> {
        ConnMap::of(&self.ebpf, names).expect("the object has the table's maps")
    }

    /// What the known-source filter says of `addr` under the configuration
    /// in the maps: `None` when the programs would not use it (never built,
    /// or built under other prefix lengths), else whether its bit is set in
    /// the half in use.
    pub fn known(&self, addr: std::net::IpAddr) -> Option<bool> {
        use handshake_common::known::{self, Gen};
        let mut bytes = [0u8; 16];
        let family = match addr {
            std::net::IpAddr::V4(a) => {
                bytes[..4].copy_from_slice(&a.octets());
                handshake_common::flow::AF_INET
            }
            std::net::IpAddr::V6(a) => {
                bytes = a.octets();
                handshake_common::flow::AF_INET6
            }
        };
        let word: Array<_, u64> = Array::try_from(self.ebpf.map(maps::KNOWN_GEN).unwrap()).unwrap();
        let g = Gen(word.get(&0, 0).unwrap());
        let cfg: Array<_, Config> = Array::try_from(self.ebpf.map(maps::CONFIG).unwrap()).unwrap();
        let cfg = cfg.get(&0, 0).unwrap();
        if !g.usable(&cfg) {
            return None;
        }
        let (w, bit) = known::slot(&known::key(&cfg, family, &bytes), g.log2_bits());
        let bits: Array<_, u64> = Array::try_from(self.ebpf.map(maps::KNOWN).unwrap()).unwrap();
        let v = bits.get(&(g.half() * g.words() + w), 0).unwrap();
        Some(v & (1 << bit) != 0)
    }

    /// The keys of the per-source map, in order.
    pub fn source_keys(&self) -> Vec<SourceKey> {
        let m: HashMap<_, SourceKey, SourceState> =
            HashMap::try_from(self.ebpf.map(maps::SOURCES).unwrap()).unwrap();
        let mut keys: Vec<SourceKey> = m.keys().map(Result::unwrap).collect();
        keys.sort();
        keys
    }

    /// Both connection maps counted by the kernel's counting program, as
    /// `status` counts an attached gate's.
    pub fn tally(&self, now_ns: u64) -> handshake_common::tally::Tally {
        crate::gate::run_tally(self.program(maps::TALLY_PROGRAM), now_ns)
            .expect("the counting program runs")
    }

    /// The counting program run as the daemon's sweep at `now_ns`, its
    /// count kept for `keep_ns`: what it said, and the count it left in
    /// the `COUNTED` map.
    pub fn sweep(
        &self,
        now_ns: u64,
        keep_ns: u64,
    ) -> (
        handshake_common::tally::TallyPacket,
        handshake_common::tally::Counted,
    ) {
        let out = crate::gate::run_sweep(self.program(maps::TALLY_PROGRAM), now_ns, keep_ns, true)
            .expect("the counting program runs")
            .expect("the counting program sweeps");
        let kept: Array<&MapData, handshake_common::tally::Counted> =
            Array::try_from(self.ebpf.map(maps::COUNTED).unwrap()).unwrap();
        (out, kept.get(&0, 0).unwrap())
    }

    pub fn half_open_entries(&self) -> Vec<FlowEntry> {
        self.flows(maps::HALF_OPEN)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    pub fn established_entries(&self) -> Vec<FlowEntry> {
        self.flows(maps::ESTABLISHED)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// The entry of `key`, and whether it is in the half-open map (the
    /// established map is looked in first, as the programs do).
    pub fn entry(&self, key: &FlowKey) -> Option<(FlowEntry, bool)> {
        for (names, half_open) in [(maps::ESTABLISHED, false), (maps::HALF_OPEN, true)] {
            if let Some(e) = self.table(names).get(key).expect("read a connection entry") {
                return Some((e, half_open));
            }
        }
        None
    }

    /// Empties every tracking map and zeroes the counts (the global one, and
    /// those of `ports`), as if freshly loaded, without reloading.
    pub fn reset(&mut self, ports: &[u16]) {
        fn clear<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) -> Vec<K> {
            let mut m: HashMap<&mut MapData, K, V> =
                HashMap::try_from(ebpf.map_mut(name).unwrap()).unwrap();
            let keys: Vec<K> = m.keys().map(Result::unwrap).collect();
            for k in &keys {
                m.remove(k).unwrap();
            }
            keys
        }
        let cfg = self.config();
        let mut flows = Vec::new();
        let keys =
            clear::<handshake_common::FlowKeyV4, FlowEntry>(&mut self.ebpf, maps::HALF_OPEN_V4);
        flows.extend(keys.iter().map(|k| k.widen()));
        {
            // The IPv4 established table: every slot in use freed.
            use aya::maps::IterableMap as _;
            use handshake_common::table::Slot;
            let mut t: Array<_, Slot> =
                Array::try_from(self.ebpf.map_mut(maps::ESTABLISHED_V4).unwrap()).unwrap();
            let mut used = Vec::new();
            crate::batch::for_each_batch(t.map(), |batch: &[(u32, Slot)]| {
                used.extend(
                    batch
                        .iter()
                        .filter(|(i, s)| *i != 0 && s.used != 0)
                        .copied(),
                );
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            for (i, mut s) in used {
                flows.push(s.key.widen());
                s.used = 0;
                t.set(i, s, 0).unwrap();
            }
        }
        for name in [maps::HALF_OPEN_V6, maps::ESTABLISHED_V6] {
            flows.extend(clear::<FlowKey, FlowEntry>(&mut self.ebpf, name));
        }
        let mut sources = clear::<SourceKey, SourceState>(&mut self.ebpf, maps::SOURCES);
        sources.extend(clear::<SourceKey, u64>(&mut self.ebpf, maps::VERIFIED));
        // The maps are empty: the filter's bits of what was in them go too
        // (a rebuild would do the same, walking every bucket of every map).
        self.forget_known(&cfg, &flows, &sources);
        let mut g: Array<_, WindowCounter> =
            Array::try_from(self.ebpf.map_mut(maps::GLOBAL).unwrap()).unwrap();
        g.set(0, WindowCounter::default(), 0).unwrap();
        let mut p: Array<_, WindowCounter> =
            Array::try_from(self.ebpf.map_mut(maps::PORTS).unwrap()).unwrap();
        for &port in ports {
            p.set(port as u32, WindowCounter::default(), 0).unwrap();
        }
    }

    /// Clears the known-source filter's words holding the bits of `flows`
    /// (their tuples and ends) and `sources`, in both halves: for maps just
    /// emptied.
    fn forget_known(&mut self, cfg: &Config, flows: &[FlowKey], sources: &[SourceKey]) {
        use handshake_common::known;
        let word: Array<_, u64> = Array::try_from(self.ebpf.map(maps::KNOWN_GEN).unwrap()).unwrap();
        let g = known::Gen(word.get(&0, 0).unwrap());
        let log2 = g.log2_bits();
        let mut words: Vec<u32> = sources.iter().map(|k| known::slot(k, log2).0).collect();
        words.extend(sources.iter().map(|k| known::verified_slot(k, log2).0));
        for k in flows {
            words.push(known::flow_slot(k, log2).0);
            for a in [&k.lo_addr, &k.hi_addr] {
                words.push(known::slot(&cfg.source_key(k.family, a), log2).0);
            }
        }
        let mut bits: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(maps::KNOWN).unwrap()).unwrap();
        for w in words {
            for half in 0..2 {
                bits.set(half * g.words() + w, 0, 0).unwrap();
            }
        }
    }

    /// Zeroes every verdict counter.
    pub fn reset_counters(&mut self) {
        for name in [maps::COUNTERS, maps::EGRESS] {
            let mut a: PerCpuArray<_, u64> =
                PerCpuArray::try_from(self.ebpf.map_mut(name).unwrap()).unwrap();
            let cpus = aya::util::nr_cpus().expect("the number of CPUs");
            for slot in 0..a.len() {
                let zeros = PerCpuValues::try_from(vec![0u64; cpus]).unwrap();
                a.set(slot, zeros, 0).unwrap();
            }
        }
    }

    /// The global half-open count the limits see now.
    pub fn global_half_open(&self, cfg: &Config) -> u32 {
        let a: Array<_, WindowCounter> =
            Array::try_from(self.ebpf.map(maps::GLOBAL).unwrap()).unwrap();
        let w = window::bucket_width_ns(cfg.half_open_timeout_ms);
        a.get(&0, 0)
            .unwrap()
            .live(window::epoch(crate::monotonic_ns(), w))
    }
}

fn packet(pkt: &[u8]) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(pkt),
        ..Default::default()
    }
}

/// The no-op XDP program attached (native mode) to `iface` in network
/// namespace `netns`, for as long as the value lives. On a veth pair, a
/// frame sent back with `XDP_TX` in native mode is delivered only when the
/// peer has an XDP program of its own (the peer's receive queue is
/// serviced for XDP frames only then): the lab's client side needs one for
/// the gate's cookie SYN-ACKs to arrive.
pub struct PeerXdp {
    _ebpf: Ebpf,
}

impl PeerXdp {
    pub fn attach(netns: &str, iface: &str) -> anyhow::Result<PeerXdp> {
        PeerXdp::attach_program(netns, iface, maps::NOOP_XDP)
    }

    /// The baseline `program` of the object (`maps::NOOP_XDP` or
    /// `maps::DROP_XDP`) on `iface` in `netns`, native mode.
    pub fn attach_program(
        netns: &str,
        iface: &str,
        program: &'static str,
    ) -> anyhow::Result<PeerXdp> {
        let (netns, iface) = (netns.to_string(), iface.to_string());
        // In a thread of its own that enters the namespace, where the
        // interface's name means that interface.
        let ebpf = std::thread::spawn(move || -> anyhow::Result<Ebpf> {
            crate::netns::enter(&netns)?;
            let mut ebpf = EbpfLoader::new().load(crate::ebpf_object())?;
            let xdp: &mut Xdp = ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow::anyhow!("no {program} program"))?
                .try_into()?;
            xdp.load()?;
            xdp.attach(&iface, aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread attaching the peer's XDP program panicked"))??;
        Ok(PeerXdp { _ebpf: ebpf })
    }
}
