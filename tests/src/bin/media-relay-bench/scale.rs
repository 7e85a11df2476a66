//! Scale: forwarding rate and cost per packet as installed calls grow from
//! 1 to 100 000, and the time and memory to install and remove 100 000
//! calls.
//!
//! A call is what a two-leg audio call installs in the data plane: four
//! flows, RTP and RTCP each way, source-checked, the RTP ones flagged RTP
//! (as `media-user`'s `xdp_flow` builds them for latched peers). Call `i`
//! uses relay ports `FIRST_PORT + 2 j` (RTP) and `+ 1` (RTCP) on one
//! relay address per side, `j = i mod 30 000`; every further 30 000 calls
//! sit on another pair of relay addresses. The generator varies only the
//! destination port, so it can hit the A→B RTP flows of the first 30 000
//! calls at most.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use media_ebpf::{Flow, FlowKey};
use media_relay_tests::{
    Relay,
    bed::{A_MAC, A_V4, B_V4, RA_MAC, RA_V4, RB_V4},
    frame::UdpFrame,
    xdp_load::Generator,
};
use media_user::dataplane::XdpMode;

use crate::{
    figure::{Derived, Figure, MIN_RUNS, Verdict, group, target},
    host::{MachineCpu, rss_kib},
    xdp::{FIRST_PORT, MAX_SPREAD, Setup, sa, setup},
};

/// Flows per call: RTP and RTCP, each way.
const FLOWS_PER_CALL: u32 = 4;
/// Calls the fixed-spread measurement hits.
const FIXED_HIT: u32 = 1000;
/// Calls whose install and removal are timed.
const INSTALL_CALLS: u32 = 100_000;
/// The generator's source (A's RTP address); the A→B RTCP flows expect
/// the next port.
const A_PORT: u16 = 5000;

/// Relay addresses and port of call `i`: (A-side local, B-side local, port).
fn call_addrs(i: u32) -> (Ipv4Addr, Ipv4Addr, u16) {
    let block = i / MAX_SPREAD;
    let port = FIRST_PORT + 2 * (i % MAX_SPREAD) as u16;
    if block == 0 {
        (RA_V4, RB_V4, port)
    } else {
        // 198.18.0.0/15 only; never reached by traffic anyway.
        (
            Ipv4Addr::new(198, 18, 100 + block as u8, 1),
            Ipv4Addr::new(198, 18, 200 + block as u8, 1),
            port,
        )
    }
}

/// The four flows of call `i`: A's media arrives at the A-side relay port
/// and leaves from the B-side one to B (B's ports mirror the relay's, so
/// the sink counts them), and back.
fn call_flows(i: u32) -> [(FlowKey, Flow); 4] {
    let (ra, rb, p) = call_addrs(i);
    [
        (
            FlowKey::new(sa(ra, p)),
            Flow::new(sa(rb, p), sa(B_V4, p))
                .rtp()
                .with_source(sa(A_V4, A_PORT)),
        ),
        (
            FlowKey::new(sa(ra, p + 1)),
            Flow::new(sa(rb, p + 1), sa(B_V4, p + 1)).with_source(sa(A_V4, A_PORT + 1)),
        ),
        (
            FlowKey::new(sa(rb, p)),
            Flow::new(sa(ra, p), sa(A_V4, p))
                .rtp()
                .with_source(sa(B_V4, p)),
        ),
        (
            FlowKey::new(sa(rb, p + 1)),
            Flow::new(sa(ra, p + 1), sa(A_V4, p + 1)).with_source(sa(B_V4, p + 1)),
        ),
    ]
}

fn install_calls(relay: &mut Relay, calls: std::ops::Range<u32>) -> anyhow::Result<()> {
    for i in calls {
        for (k, f) in call_flows(i) {
            relay.flows_mut().install(k, f)?;
        }
    }
    Ok(())
}

/// Below this loss a path carried what it was sent: its rate is the
/// generator's.
const CARRIED_ALL: f64 = 0.001;

/// The flatness target's verdict. It compares the relay's rate with many
/// calls installed to its rate with one, so with one call it must lose
/// some of what the generator sends flat out: if it carries all of it (the
/// AF_PACKET generator, on a kernel that refuses live frames, is slower
/// than XDP), every rate measured is the generator's and their ratio is
/// the generator's noise, not the relay's.
fn flat_verdict(
    quick: bool,
    max_calls: u32,
    flat: f64,
    one_call: &[Meas],
    generator: &str,
) -> Verdict {
    if quick {
        return Verdict::NotJudged(format!(
            "--quick stops at {} installed calls (lowest there {flat:.2}×)",
            group(f64::from(max_calls))
        ));
    }
    let loss = Figure::new(one_call.iter().map(Meas::loss)).median();
    if loss < CARRIED_ALL {
        return Verdict::NotMeasurable(format!(
            "with 1 call installed XDP native carried all the generator sent ({} pps, {generator}): \
             the rates are the generator's, and their ratio ({flat:.2}) is its noise",
            group(Figure::new(one_call.iter().map(Meas::pps)).median())
        ));
    }
    Verdict::of(flat >= 0.9)
}

fn remove_calls(relay: &mut Relay, calls: std::ops::Range<u32>) -> anyhow::Result<()> {
    for i in calls {
        for (k, _) in call_flows(i) {
            relay.flows_mut().remove(&k)?;
        }
    }
    Ok(())
}

/// One run: forwarded packets per second and machine CPU per packet.
#[derive(Clone, Debug)]
struct Meas {
    sent: u64,
    delivered: u64,
    secs: f64,
    /// Non-idle CPU seconds of the whole machine during the blast.
    cpu_s: Option<f64>,
}

impl Meas {
    fn pps(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.sent as f64
    }
    fn cpu_ns_per_packet(&self) -> Option<f64> {
        self.cpu_s
            .filter(|_| self.delivered > 0)
            .map(|c| c * 1e9 / self.delivered as f64)
    }
}

fn measure(s: &Setup, spread: u32, frames: u32) -> anyhow::Result<Meas> {
    let frame = UdpFrame::new(
        RA_MAC,
        A_MAC,
        sa(A_V4, A_PORT),
        sa(RA_V4, FIRST_PORT),
        &[0x80; 172],
    )
    .bytes();
    let generator = Generator::new(&s.bed.a, "a0", frame, spread, 2)?;
    let before = s.sink.packets()?;
    let j0 = MachineCpu::read().ok();
    let secs = generator.blast(frames)?;
    let j1 = MachineCpu::read().ok();
    // Let in-flight frames land.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Meas {
        sent: u64::from(frames),
        delivered: s.sink.packets()? - before,
        secs,
        cpu_s: j0.zip(j1).map(|(a, b)| a.until(b).busy),
    })
}

/// BPF maps this process holds: map id → (memlock bytes, fdinfo fields).
fn held_maps() -> BTreeMap<u32, (u64, String)> {
    let mut maps = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return maps;
    };
    for e in dir.flatten() {
        let is_map =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(id), Some(memlock)) = (
            field("map_id:").and_then(|v| v.parse().ok()),
            field("memlock:").and_then(|v| v.parse().ok()),
        ) {
            let desc = format!(
                "type {} entries {} value {} B",
                field("map_type:").unwrap_or_default(),
                field("max_entries:").unwrap_or_default(),
                field("value_size:").unwrap_or_default()
            );
            maps.insert(id, (memlock, desc));
        }
    }
    maps
}

/// The map's name from `bpftool`, if it can tell.
fn map_name(id: u32) -> Option<String> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "id", &id.to_string(), "-j"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("name")?.as_str().map(str::to_owned)
}

/// `reps` runs.
fn runs(s: &Setup, spread: u32, frames: u32, reps: usize) -> anyhow::Result<Vec<Meas>> {
    (0..reps).map(|_| measure(s, spread, frames)).collect()
}

struct Point {
    calls: u32,
    fixed_hit: u32,
    fixed: Vec<Meas>,
    all_hit: u32,
    all: Vec<Meas>,
}

fn pps(m: &[Meas]) -> Figure {
    Figure::new(m.iter().map(Meas::pps))
}

type MapInfo = (u32, u64, String, Option<String>);

/// What installing and removing `INSTALL_CALLS` calls took.
struct Installed {
    install_s: Figure,
    remove_s: Figure,
    /// From the first run: the maps' memory, the RSS growth of installing
    /// and of loading, the maps.
    map_memory_kib: u64,
    rss_delta_kib: i64,
    rss_load_delta_kib: i64,
    maps: Vec<MapInfo>,
}

/// Install and remove `INSTALL_CALLS` calls into a fresh relay,
/// `MIN_RUNS` times: the times, and from the first run the maps' memory,
/// the RSS growth of installing and of loading, and the maps.
fn install_remove(bed: &media_relay_tests::Bed) -> anyhow::Result<Installed> {
    let flows = INSTALL_CALLS * FLOWS_PER_CALL;
    let (mut install_s, mut remove_s) = (Figure::default(), Figure::default());
    let mut memory = None;
    for r in 0..MIN_RUNS {
        eprintln!(
            "==> scale: install and remove {INSTALL_CALLS} calls ({flows} flows), run {} of {MIN_RUNS}",
            r + 1
        );
        let maps_before = held_maps();
        let rss_before_load = rss_kib();
        let mut relay = Relay::start(bed, XdpMode::Native, flows)?;
        let rss_before = rss_kib();
        let t = Instant::now();
        install_calls(&mut relay, 0..INSTALL_CALLS)?;
        install_s.push(t.elapsed().as_secs_f64());
        let rss_after = rss_kib();
        if memory.is_none() {
            let relay_maps: Vec<MapInfo> = held_maps()
                .into_iter()
                .filter(|(id, _)| !maps_before.contains_key(id))
                .map(|(id, (memlock, desc))| (id, memlock, desc, map_name(id)))
                .collect();
            let kib = relay_maps.iter().map(|m| m.1).sum::<u64>() / 1024;
            memory = Some((
                kib,
                rss_after - rss_before,
                rss_before - rss_before_load,
                relay_maps,
            ));
        }
        let t = Instant::now();
        remove_calls(&mut relay, 0..INSTALL_CALLS)?;
        remove_s.push(t.elapsed().as_secs_f64());
        let left = relay.flows().len();
        drop(relay);
        anyhow::ensure!(left == 0, "{left} flows left after removing every call");
    }
    let (map_memory_kib, rss_delta_kib, rss_load_delta_kib, maps) = memory.expect("MIN_RUNS > 0");
    Ok(Installed {
        install_s,
        remove_s,
        map_memory_kib,
        rss_delta_kib,
        rss_load_delta_kib,
        maps,
    })
}

pub fn run(quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let frames: u32 = if quick { 300_000 } else { 2_000_000 };
    let reps = MIN_RUNS;
    let points: &[u32] = if quick {
        &[1, 1_000, 10_000]
    } else {
        &[1, 1_000, 10_000, 100_000]
    };
    let max_calls = *points.last().expect("points");

    // The bed (relay namespace, sink at B) with a small relay first: the
    // install measurement runs before anything large was allocated, so the
    // RSS growth is not hidden by freed memory being reused.
    eprintln!("==> scale: setting up");
    let Setup { relay, sink, bed } = setup(XdpMode::Native, 1024)?;
    drop(relay);

    // 1. Install and remove 100 000 calls; memory.
    let flows = INSTALL_CALLS * FLOWS_PER_CALL;
    let Installed {
        install_s,
        remove_s,
        map_memory_kib,
        rss_delta_kib,
        rss_load_delta_kib,
        maps: relay_maps,
    } = install_remove(&bed)?;
    eprintln!(
        "    installed in {} s, removed in {} s; maps {map_memory_kib} KiB, RSS +{rss_delta_kib} KiB",
        install_s.show(2),
        remove_s.show(2)
    );

    // 2. Rate vs installed calls: one relay sized for the largest point
    //    (as a daemon's --max-flows would be), calls added between points.
    eprintln!(
        "==> scale: rate vs installed calls (capacity {} flows)",
        max_calls * FLOWS_PER_CALL
    );
    let relay = Relay::start(&bed, XdpMode::Native, max_calls * FLOWS_PER_CALL)?;
    let mut s = Setup { relay, sink, bed };
    let mut installed = 0;
    let mut results = Vec::new();
    for &calls in points {
        install_calls(&mut s.relay, installed..calls)?;
        if installed == 0 {
            // Warm-up, not counted.
            measure(&s, 1, frames / 10)?;
        }
        installed = calls;
        let fixed_hit = calls.min(FIXED_HIT);
        let all_hit = calls.min(MAX_SPREAD);
        let fixed = runs(&s, fixed_hit, frames, reps)?;
        let all = if all_hit == fixed_hit {
            fixed.clone()
        } else {
            runs(&s, all_hit, frames, reps)?
        };
        eprintln!(
            "    {calls} calls: {} pps with {fixed_hit} hit, {} pps with {all_hit} hit",
            pps(&fixed).show_int(),
            pps(&all).show_int()
        );
        results.push(Point {
            calls,
            fixed_hit,
            fixed,
            all_hit,
            all,
        });
    }
    drop(s);

    let base = pps(&results[0].fixed).median();
    let mut md = format!(
        "A call = 4 flows (RTP and RTCP each way, source-checked). XDP native, {frames} frames per run, median \
         (min–max) of {reps} runs per point after a warm-up. At most {MAX_SPREAD} calls can be hit (the generator \
         varies only the destination port).\n\n\
         | installed calls | flows | calls hit | pps | vs 1 call | calls hit | pps, all hit | vs 1 call | machine CPU ns/packet |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for p in &results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2}× | {} | {} | {:.2}× | {} |",
            group(f64::from(p.calls)),
            group(f64::from(p.calls * FLOWS_PER_CALL)),
            group(f64::from(p.fixed_hit)),
            pps(&p.fixed).show_int(),
            pps(&p.fixed).median() / base,
            group(f64::from(p.all_hit)),
            pps(&p.all).show_int(),
            pps(&p.all).median() / base,
            Figure::new(p.fixed.iter().filter_map(Meas::cpu_ns_per_packet)).show(0),
        );
    }
    let _ = writeln!(
        md,
        "\n| calls | flows | install | remove | BPF map memory | process RSS growth |\n|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} s | {} s | {:.1} MiB | {:.1} MiB |",
        group(f64::from(INSTALL_CALLS)),
        group(f64::from(flows)),
        install_s.show(2),
        remove_s.show(2),
        map_memory_kib as f64 / 1024.0,
        rss_delta_kib as f64 / 1024.0
    );
    for (id, memlock, desc, name) in &relay_maps {
        eprintln!(
            "    map {id} {}: {:.1} MiB ({desc})",
            name.as_deref().unwrap_or("?"),
            *memlock as f64 / (1024.0 * 1024.0)
        );
    }
    // The lowest point, with its range over every pairing of its runs and
    // the first point's.
    let base_fig = Derived::of(&pps(&results[0].fixed));
    let flat_spread = results
        .iter()
        .map(|p| Derived::ratio(Derived::of(&pps(&p.fixed)), base_fig))
        .reduce(Derived::min);
    let flat = flat_spread.map_or(f64::NAN, |d| d.value);
    let flat_all = results
        .iter()
        .map(|p| pps(&p.all).median() / base)
        .fold(f64::INFINITY, f64::min);
    let verdict = flat_verdict(
        quick,
        max_calls,
        flat,
        &results[0].fixed,
        media_relay_tests::xdp_load::generator(),
    );
    let top_hit = results.last().map_or(0, |p| p.all_hit);
    let _ = writeln!(
        md,
        "\nLowest median pps vs 1 call up to {} installed calls ({FIXED_HIT} calls hit): {flat:.2}× (target: flat \
         within 10 % from 1 to 100 000 calls: {}); with every call hit (up to {}): {flat_all:.2}×.",
        group(f64::from(max_calls)),
        verdict.sentence(),
        group(f64::from(top_hit)),
    );
    print!("## Scale: installed calls\n\n{md}\n");
    let json = serde_json::json!({
        "machine": machine,
        "frames_per_run": frames,
        "reps": reps,
        "flows_per_call": FLOWS_PER_CALL,
        "capacity_flows": max_calls * FLOWS_PER_CALL,
        "max_calls_hit": MAX_SPREAD,
        "points": results.iter().map(|p| serde_json::json!({
            "calls": p.calls,
            "flows": p.calls * FLOWS_PER_CALL,
            "calls_hit": p.fixed_hit,
            "pps": pps(&p.fixed).median(),
            "pps_runs": pps(&p.fixed).json(),
            "vs_one": pps(&p.fixed).median() / base,
            "loss": Figure::new(p.fixed.iter().map(Meas::loss)).json(),
            "cpu_ns_per_packet": Figure::new(p.fixed.iter().filter_map(Meas::cpu_ns_per_packet)).json(),
            "all_hit": {
                "calls_hit": p.all_hit,
                "pps": pps(&p.all).median(),
                "pps_runs": pps(&p.all).json(),
                "vs_one": pps(&p.all).median() / base,
            },
        })).collect::<Vec<_>>(),
        "install": {
            "calls": INSTALL_CALLS,
            "flows": flows,
            "install_s": install_s.json(),
            "remove_s": remove_s.json(),
            "map_memory_kib": map_memory_kib,
            "rss_delta_kib": rss_delta_kib,
            "rss_load_delta_kib": rss_load_delta_kib,
            "maps": relay_maps.iter().map(|(id, memlock, desc, name)| serde_json::json!({
                "id": id, "name": name, "memlock_kib": memlock / 1024, "fdinfo": desc,
            })).collect::<Vec<_>>(),
        },
        "targets": [target(
            &format!(
                "pps flat from 1 to {} installed calls ({} calls hit): lowest median rate vs 1 call",
                group(f64::from(max_calls)),
                group(f64::from(FIXED_HIT)),
            ),
            flat_spread,
            ">= 0.90 (within 10 % up to 100 000)",
            &verdict,
        )],
        "markdown": md,
    });
    let path = out.join("scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("report: {}\n", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(sent: u64, delivered: u64) -> Vec<Meas> {
        (0..3)
            .map(|_| Meas {
                sent,
                delivered,
                secs: 1.0,
                cpu_s: None,
            })
            .collect()
    }

    /// A relay that carried all the generator sent with one call installed
    /// has no rate of its own to be flat against.
    #[test]
    fn flatness_needs_the_relay_to_be_the_limit() {
        let v = flat_verdict(false, 100_000, 0.84, &runs(1000, 1000), "AF_PACKET");
        assert!(
            matches!(&v, Verdict::NotMeasurable(r) if r.contains("carried all the generator sent (1\u{202f}000 pps, AF_PACKET)")),
            "{v:?}"
        );
        assert!(matches!(
            flat_verdict(false, 100_000, 0.84, &runs(1000, 900), "g"),
            Verdict::Missed
        ));
        assert!(matches!(
            flat_verdict(false, 100_000, 0.95, &runs(1000, 900), "g"),
            Verdict::Met
        ));
        assert!(matches!(
            flat_verdict(true, 10_000, 0.95, &runs(1000, 900), "g"),
            Verdict::NotJudged(_)
        ));
    }
}
