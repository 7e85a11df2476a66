//! The report over whatever parts have results in the output directory:
//! `report.json` (every part merged, all targets in one list),
//! `report.md` (one table per part and the targets, a missed one stated
//! plainly) and PNG plots (latency CDF per path, pps vs installed calls).
//!
//! A part that did not run is skipped; only I/O errors fail the report.

use std::{
    fmt::Write as _,
    path::Path,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};
use serde_json::{Value, json};

/// The parts, in report order.
const PARTS: &[&str] = &["xdp", "sessions", "sip", "capacity", "latency", "scale"];

/// The font the plots' text is drawn with (Debian: fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

/// `1234567.8` → `1 234 568`.
fn int(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let neg = x < 0.0;
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

fn opt_int(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), int)
}

fn opt(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{:.2} %", 100.0 * x))
}

fn ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.2}×"))
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// UTC now as RFC 3339 (civil-from-days, no date crate needed).
fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn target(name: &str, value: f64, target: &str, met: bool) -> Value {
    json!({ "name": name, "value": value, "target": target, "met": met })
}

/// A part's targets: its own `targets` array, or for the parts written
/// before the benchmark issue, the targets derived from their figures.
fn targets_of(part: &str, v: &Value) -> Vec<Value> {
    if let Some(t) = v.get("targets").and_then(Value::as_array) {
        return t.clone();
    }
    let mut t = Vec::new();
    match part {
        "sessions" => {
            if let Some(p99) = v.pointer("/ng/offer_answer_us/p99").and_then(Value::as_f64) {
                t.push(target(
                    "ng offer+answer latency p99 (µs)",
                    p99,
                    "< 1000",
                    p99 < 1000.0,
                ));
            }
        }
        "sip" => {
            if let Some(c) = f(v, "sustained_cps") {
                t.push(target(
                    "SIP calls/s sustained with media anchoring",
                    c,
                    ">= 1000",
                    c >= 1000.0,
                ));
            }
            for (leg, name) in [("invite", "INVITE"), ("ok", "200 OK")] {
                if let Some(p99) = v
                    .pointer(&format!("/setup_delay_us/{leg}/p99"))
                    .and_then(Value::as_f64)
                {
                    t.push(target(
                        &format!("SIP setup delay added, {name} p99 (µs)"),
                        p99,
                        "< 2000",
                        p99 < 2000.0,
                    ));
                }
            }
        }
        _ => {}
    }
    t
}

fn section_xdp(md: &mut String, v: &Value) {
    let modes = arr(v, "modes");
    let generic = modes
        .iter()
        .find(|m| s(m, "mode") == "generic")
        .and_then(|m| f(m, "pps"));
    let _ = writeln!(
        md,
        "Flows installed through the API; {} frames per run, best of {}.\n",
        opt_int(f(v, "frames_per_run")),
        opt_int(f(v, "reps"))
    );
    md.push_str(
        "| path | forwarded pps | ns/packet | loss | vs generic |\n|---|---:|---:|---:|---:|\n",
    );
    for m in modes {
        let pps = f(m, "pps");
        let _ = writeln!(
            md,
            "| XDP {} | {} | {} | {} | {} |",
            s(m, "mode"),
            opt_int(pps),
            opt_int(pps.map(|p| 1e9 / p)),
            pct(f(m, "loss")),
            ratio(pps.zip(generic).map(|(a, b)| a / b))
        );
    }
}

fn section_sessions(md: &mut String, v: &Value) {
    let ng = v.get("ng").unwrap_or(&Value::Null);
    let lat = ng.get("offer_answer_us").unwrap_or(&Value::Null);
    let _ = writeln!(
        md,
        "ng over loopback, {} cycles: **{}** offer+answer+delete cycles/s; offer+answer latency \
         p50 {} µs, p99 {} µs, p99.9 {} µs.\n",
        opt_int(f(ng, "cycles")),
        opt_int(f(ng, "cycles_per_sec")),
        opt_int(f(lat, "p50")),
        opt_int(f(lat, "p99")),
        opt_int(f(lat, "p999")),
    );
}

fn section_sip(md: &mut String, v: &Value) {
    let d = v.get("setup_delay_us").unwrap_or(&Value::Null);
    let leg = |k: &str| d.get(k).unwrap_or(&Value::Null);
    let _ = writeln!(
        md,
        "Highest rate with no failed call: **{} calls/s**.\n\n\
         | setup delay added ({} calls) | p50 µs | p99 µs | p99.9 µs |\n|---|---:|---:|---:|\n\
         | INVITE in → out | {} | {} | {} |\n| 200 in → out | {} | {} | {} |\n",
        opt_int(f(v, "sustained_cps")),
        opt_int(f(d, "calls")),
        opt_int(f(leg("invite"), "p50")),
        opt_int(f(leg("invite"), "p99")),
        opt_int(f(leg("invite"), "p999")),
        opt_int(f(leg("ok"), "p50")),
        opt_int(f(leg("ok"), "p99")),
        opt_int(f(leg("ok"), "p999")),
    );
    md.push_str("| offered calls/s | successful | failed |\n|---:|---:|---:|\n");
    for c in arr(v, "cps") {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            opt_int(f(c, "rate")),
            opt_int(f(c, "successful")),
            opt_int(f(c, "failed"))
        );
    }
}

fn section_capacity(md: &mut String, v: &Value) {
    let _ = writeln!(
        md,
        "{} calls, {}-byte payload. Max pps: the highest offered rate delivered at < 0.1 % loss.\n",
        opt_int(f(v, "calls")),
        opt_int(f(v, "payload"))
    );
    capacity_table(md, arr(v, "paths"));
    // The IPv6 run, when there was one (vs userspace: its IPv6 run).
    let v6 = arr(v, "paths_ipv6");
    if !v6.is_empty() {
        md.push_str("\nIPv6:\n\n");
        capacity_table(md, v6);
    }
}

fn capacity_table(md: &mut String, paths: &[Value]) {
    let user = paths
        .iter()
        .find(|p| s(p, "path") == "userspace")
        .and_then(|p| f(p, "max_pps"));
    md.push_str(
        "| path | max pps | loss at max | vs userspace | flat-out pps | flat-out loss | \
         machine CPU s / Mpkt | process CPU s / Mpkt |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in paths {
        let max = f(p, "max_pps");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.get("label")
                .and_then(Value::as_str)
                .unwrap_or_else(|| s(p, "path")),
            opt_int(max),
            pct(f(p, "loss_at_max")),
            ratio(max.zip(user).map(|(a, b)| a / b)),
            opt_int(f(p, "flat_out_pps")),
            pct(f(p, "flat_out_loss")),
            opt(f(p, "cpu_s_per_mpkt_machine"), 2),
            opt(f(p, "cpu_s_per_mpkt_process"), 2),
        );
    }
}

fn section_latency(md: &mut String, v: &Value) {
    if let Some(u) = f(v, "userspace_max_pps") {
        let _ = writeln!(
            md,
            "Load is a percentage of the userspace path's capacity, {} pps ({}).\n",
            int(u),
            s(v, "userspace_max_source")
        );
    }
    md.push_str(
        "| path | load | busy | offered pps | p50 µs | p99 µs | p99.9 µs | max µs | jitter mean µs | \
         lost | reordered | duplicated |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in arr(v, "runs") {
        let l = r.get("latency_us").unwrap_or(&Value::Null);
        let j = r.get("jitter_us").unwrap_or(&Value::Null);
        let _ = writeln!(
            md,
            "| {} | {} % | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.get("label")
                .and_then(Value::as_str)
                .unwrap_or_else(|| s(r, "path")),
            opt(f(r, "load_pct"), 0),
            if r.get("busy").and_then(Value::as_bool) == Some(true) {
                "yes"
            } else {
                "no"
            },
            opt_int(f(r, "offered_pps")),
            opt(f(l, "p50"), 1),
            opt(f(l, "p99"), 1),
            opt(f(l, "p999"), 1),
            opt(f(l, "max"), 1),
            opt(f(j, "mean"), 1),
            opt_int(f(r, "lost")),
            opt_int(f(r, "reordered")),
            opt_int(f(r, "duplicated")),
        );
    }
}

fn section_scale(md: &mut String, v: &Value) {
    let _ = writeln!(
        md,
        "A call = 4 flows (RTP and RTCP each way, source-checked). XDP native, {} frames per \
         run, best of {}. At most {} calls can be hit (the generator varies only the destination \
         port).\n",
        opt_int(f(v, "frames_per_run")),
        opt_int(f(v, "reps")),
        opt_int(f(v, "max_calls_hit")),
    );
    md.push_str(
        "| installed calls | flows | calls hit | pps | ns/packet | vs 1 call | calls hit | pps, all hit | vs 1 call |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in arr(v, "points") {
        let all = p.get("all_hit").unwrap_or(&Value::Null);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            opt_int(f(p, "calls")),
            opt_int(f(p, "flows")),
            opt_int(f(p, "calls_hit")),
            opt_int(f(p, "pps")),
            opt_int(f(p, "ns_per_packet")),
            ratio(f(p, "vs_one")),
            opt_int(f(all, "calls_hit")),
            opt_int(f(all, "pps")),
            ratio(f(all, "vs_one")),
        );
    }
    if let Some(i) = v.get("install") {
        let _ = writeln!(
            md,
            "\n| calls installed | install | remove | BPF map memory | process RSS growth |\n\
             |---:|---:|---:|---:|---:|\n| {} | {} s | {} s | {} MiB | {} MiB |",
            opt_int(f(i, "calls")),
            opt(f(i, "install_s"), 2),
            opt(f(i, "remove_s"), 2),
            opt(f(i, "map_memory_kib").map(|k| k / 1024.0), 1),
            opt(f(i, "rss_delta_kib").map(|k| k / 1024.0), 1),
        );
    }
}

/// Register the plots' font once; false if it cannot be read.
fn font() -> bool {
    static FONT_OK: OnceLock<bool> = OnceLock::new();
    *FONT_OK.get_or_init(|| match std::fs::read(FONT) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Line colours, one per series.
const COLOURS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// A line chart with a logarithmic x axis.
struct Chart<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x: (f64, f64),
    y: (f64, f64),
    markers: bool,
    /// A horizontal reference line: (y, label).
    reference: Option<(f64, String)>,
}

fn line_chart(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    c: &Chart<'_>,
    series: &[Series],
) -> PlotResult {
    let (x, y) = (c.x, c.y);
    root.fill(&WHITE)?;
    let text = font();
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder
            .caption(c.title, ("sans-serif", 22))
            .x_label_area_size(50)
            .y_label_area_size(90);
    }
    let mut chart = builder.build_cartesian_2d((x.0..x.1).log_scale(), y.0..y.1)?;
    if text {
        chart
            .configure_mesh()
            .x_desc(c.x_desc)
            .y_desc(c.y_desc)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&|v| int(*v))
            .y_label_formatter(&|v| {
                if y.1 > 1000.0 {
                    int(*v)
                } else {
                    format!("{v:.2}")
                }
            })
            .draw()?;
    } else {
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .disable_axes()
            .draw()?;
    }
    for (i, sr) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let style = ShapeStyle::from(&colour).stroke_width(2);
        let drawn = chart.draw_series(LineSeries::new(sr.points.iter().copied(), style))?;
        if text {
            drawn.label(sr.label.clone()).legend(move |(x, y)| {
                PathElement::new(
                    [(x, y), (x + 20, y)],
                    ShapeStyle::from(&colour).stroke_width(2),
                )
            });
        }
        if c.markers {
            chart.draw_series(
                sr.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, ShapeStyle::from(&colour).filled())),
            )?;
        }
    }
    if let Some((ry, label)) = &c.reference {
        let grey = RGBColor(120, 120, 120);
        let drawn = chart.draw_series(DashedLineSeries::new(
            [(x.0, *ry), (x.1, *ry)],
            8,
            6,
            ShapeStyle::from(&grey).stroke_width(1),
        ))?;
        if text {
            drawn.label(label.clone()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], ShapeStyle::from(&grey))
            });
        }
    }
    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Latency CDF, one line per path: for each path the run whose load is
/// nearest 50 %.
fn plot_cdf(latency: &Value, busy: bool, path: &Path) -> Option<PlotResult> {
    let runs: Vec<&Value> = arr(latency, "runs")
        .iter()
        .filter(|r| r.get("busy").and_then(Value::as_bool).unwrap_or(false) == busy)
        .filter(|r| !arr(r, "cdf").is_empty())
        .collect();
    let mut chosen: Vec<&Value> = Vec::new();
    for r in &runs {
        let load = f(r, "load_pct").unwrap_or(0.0);
        match chosen.iter_mut().find(|c| s(c, "path") == s(r, "path")) {
            Some(c) => {
                if (load - 50.0).abs() < (f(c, "load_pct").unwrap_or(0.0) - 50.0).abs() {
                    *c = r;
                }
            }
            None => chosen.push(r),
        }
    }
    if chosen.is_empty() {
        return None;
    }
    let series: Vec<Series> = chosen
        .iter()
        .map(|r| Series {
            label: format!(
                "{} ({} %)",
                r.get("label")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| s(r, "path")),
                opt(f(r, "load_pct"), 0)
            ),
            points: arr(r, "cdf")
                .iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?.max(0.1), p.get(1)?.as_f64()?)))
                .collect(),
        })
        .collect();
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    if !lo.is_finite() {
        return None;
    }
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    let title = format!(
        "One-way latency CDF at 50 % load{}",
        if busy { ", relay CPU busy" } else { "" }
    );
    Some(line_chart(
        &root,
        &Chart {
            title: &title,
            x_desc: "one-way latency, µs (log)",
            y_desc: "fraction of packets",
            x: (lo / 1.5, hi * 1.5),
            y: (0.0, 1.0),
            markers: false,
            reference: None,
        },
        &series,
    ))
}

fn plot_scale(scale: &Value, path: &Path) -> Option<PlotResult> {
    let points = arr(scale, "points");
    let fixed: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| Some((f(p, "calls")?, f(p, "pps")?)))
        .collect();
    if fixed.is_empty() {
        return None;
    }
    let all: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| Some((f(p, "calls")?, f(p.get("all_hit")?, "pps")?)))
        .collect();
    let hit = points.first().and_then(|p| f(p, "calls_hit")).map(|_| {
        points
            .iter()
            .filter_map(|p| f(p, "calls_hit"))
            .fold(0.0, f64::max)
    });
    let mut series = vec![Series {
        label: format!("≤ {} calls hit", opt_int(hit)),
        points: fixed,
    }];
    if !all.is_empty() {
        series.push(Series {
            label: format!(
                "every call hit (up to {})",
                opt_int(f(scale, "max_calls_hit"))
            ),
            points: all,
        });
    }
    let x_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_hi = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    Some(line_chart(
        &root,
        &Chart {
            title: "XDP native forwarding rate vs installed calls",
            x_desc: "installed calls (log; 4 flows each)",
            y_desc: "forwarded packets/s",
            x: (0.7, x_hi * 1.5),
            y: (0.0, y_hi * 1.15),
            markers: true,
            reference: series[0]
                .points
                .iter()
                .find(|p| p.0 <= 1.0)
                .map(|p| (0.9 * p.1, "target: 90 % of the rate with 1 call".to_owned())),
        },
        &series,
    ))
}

pub fn run(_quick: bool, machine: &str, out: &Path) -> anyhow::Result<()> {
    let mut parts = serde_json::Map::new();
    let mut skipped = Vec::new();
    for &part in PARTS {
        let path = out.join(format!("{part}.json"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skipped.push(part);
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(path.display().to_string())),
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                parts.insert(part.to_owned(), v);
            }
            Err(e) => {
                eprintln!(
                    "warning: report: {} is not valid JSON ({e}); skipped",
                    path.display()
                );
                skipped.push(part);
            }
        }
    }

    let mut targets = Vec::new();
    let present = || PARTS.iter().filter_map(|p| parts.get(*p).map(|v| (*p, v)));
    for (part, v) in present() {
        for mut t in targets_of(part, v) {
            if let Some(o) = t.as_object_mut() {
                o.insert("part".into(), json!(part));
            }
            targets.push(t);
        }
    }

    // Plots.
    let mut plots = Vec::new();
    let mut plot_notes = Vec::new();
    let mut plot = |name: &str, r: Option<PlotResult>| match r {
        Some(Ok(())) => plots.push(name.to_owned()),
        Some(Err(e)) => plot_notes.push(format!("{name} could not be drawn: {e}")),
        None => {}
    };
    if let Some(l) = parts.get("latency") {
        plot(
            "latency_cdf.png",
            plot_cdf(l, false, &out.join("latency_cdf.png")),
        );
        plot(
            "latency_cdf_busy.png",
            plot_cdf(l, true, &out.join("latency_cdf_busy.png")),
        );
    }
    if let Some(sc) = parts.get("scale") {
        plot(
            "pps_vs_calls.png",
            plot_scale(sc, &out.join("pps_vs_calls.png")),
        );
    }
    if !plots.is_empty() && !font() {
        plot_notes.push(format!(
            "{FONT} not found (Debian package fonts-dejavu-core): plots drawn without text"
        ));
    }

    let generated_at = now_utc();
    let report = json!({
        "machine": machine,
        "generated_at": generated_at,
        "parts": parts,
        "skipped": skipped,
        "plots": plots,
        "targets": targets,
    });
    let json_path = out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;

    // Markdown.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# media-relay benchmark report\n\nMachine: {machine}  \nGenerated: {generated_at}\n\n\
         Generator, relay and sink share this machine's CPUs: compare the ratios; absolute \
         figures describe this machine only.\n"
    );
    if !skipped.is_empty() {
        let _ = writeln!(
            md,
            "Parts without results (skipped): {}.\n",
            skipped.join(", ")
        );
    }
    for (part, v) in present() {
        let title = match part {
            "xdp" => "XDP data plane: native vs generic",
            "sessions" => "Media sessions over ng",
            "sip" => "SIP agent",
            "capacity" => "Capacity per path",
            "latency" => "Latency and jitter under load",
            "scale" => "Scale: installed calls",
            other => other,
        };
        let _ = writeln!(md, "## {title}\n");
        if let Some(m) = v.get("machine").and_then(Value::as_str)
            && m != machine
        {
            let _ = writeln!(md, "(measured on: {m})\n");
        }
        match part {
            "xdp" => section_xdp(&mut md, v),
            "sessions" => section_sessions(&mut md, v),
            "sip" => section_sip(&mut md, v),
            "capacity" => section_capacity(&mut md, v),
            "latency" => section_latency(&mut md, v),
            "scale" => section_scale(&mut md, v),
            _ => {}
        }
        md.push('\n');
        for (png, owner) in [
            ("latency_cdf.png", "latency"),
            ("latency_cdf_busy.png", "latency"),
            ("pps_vs_calls.png", "scale"),
        ] {
            if owner == part && plots.iter().any(|p| p == png) {
                let _ = writeln!(md, "![{png}]({png})\n");
            }
        }
    }
    md.push_str("## Targets\n\n");
    if targets.is_empty() {
        md.push_str("No part with targets has results.\n");
    } else {
        md.push_str("| part | target | value | wanted | result |\n|---|---|---:|---|---|\n");
        for t in &targets {
            let met = t.get("met").and_then(Value::as_bool);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                s(t, "part"),
                s(t, "name"),
                f(t, "value").map_or_else(
                    || "-".into(),
                    |x| if x.abs() >= 100.0 {
                        int(x)
                    } else {
                        format!("{x:.2}")
                    }
                ),
                s(t, "target"),
                match met {
                    Some(true) => "met",
                    Some(false) => "**MISSED**",
                    None => "not measured",
                }
            );
        }
        let missed: Vec<String> = targets
            .iter()
            .filter(|t| t.get("met").and_then(Value::as_bool) == Some(false))
            .map(|t| format!("{} ({})", s(t, "name"), s(t, "part")))
            .collect();
        if missed.is_empty() && targets.len() == 1 {
            md.push_str("\nThe target is met.\n");
        } else if missed.is_empty() {
            let _ = writeln!(md, "\nAll {} targets met.", targets.len());
        } else {
            let _ = writeln!(
                md,
                "\n**{} of {} targets MISSED:** {}.",
                missed.len(),
                targets.len(),
                missed.join("; ")
            );
        }
    }
    for n in &plot_notes {
        let _ = writeln!(md, "\nNote: {n}.");
    }
    let md_path = out.join("report.md");
    std::fs::write(&md_path, &md)?;

    println!("## Report\n");
    if !skipped.is_empty() {
        println!("skipped (no results): {}", skipped.join(", "));
    }
    for n in &plot_notes {
        println!("note: {n}");
    }
    for t in &targets {
        if t.get("met").and_then(Value::as_bool) == Some(false) {
            println!("MISSED: {} ({})", s(t, "name"), s(t, "part"));
        }
    }
    for p in &plots {
        println!("plot: {}", out.join(p).display());
    }
    println!("report: {}", md_path.display());
    println!("report: {}", json_path.display());
    Ok(())
}
