//! The report over whatever parts have results in the output directory:
//! `report.json` (every part merged, all targets in one list),
//! `report.md` (one table per part and the targets, a missed one stated
//! plainly) and PNG plots (latency CDF per path, pps vs installed calls).
//!
//! A part that did not run is skipped; only I/O errors fail the report.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};
use serde_json::{Value, json};

/// The parts, in report order.
const PARTS: &[&str] = &[
    "xdp", "sessions", "sip", "capacity", "latency", "overload", "scale", "sharing", "restart",
];

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

/// Latency CDF at the reference rate, one line per path: the run whose p99
/// is the median of its set.
fn plot_cdf(latency: &Value, busy: bool, path: &Path) -> Option<PlotResult> {
    let series: Vec<Series> = arr(latency, "summary")
        .iter()
        .filter(|r| r.get("busy").and_then(Value::as_bool).unwrap_or(false) == busy)
        .filter(|r| !arr(r, "cdf").is_empty())
        .map(|r| Series {
            label: r
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or_else(|| s(r, "path"))
                .to_owned(),
            points: arr(r, "cdf")
                .iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?.max(0.1), p.get(1)?.as_f64()?)))
                .collect(),
        })
        .collect();
    if series.is_empty() {
        return None;
    }
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
        "Path latency CDF at {} pps{}",
        int(f(latency, "reference_pps").unwrap_or(0.0)),
        if busy { ", relay host busy" } else { "" }
    );
    Some(line_chart(
        &root,
        &Chart {
            title: &title,
            x_desc: "one-way path latency, µs (log)",
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

pub fn run(_quick: bool, machine: &str, out: &Path, references: &[PathBuf]) -> anyhow::Result<()> {
    // Read before anything is written: a reference may be this very
    // directory's report.json, the previous run's.
    let references = references
        .iter()
        .map(|p| -> anyhow::Result<(String, Value)> {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the report to compare with, {}", p.display()))?;
            let v = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a bench report.json", p.display()))?;
            Ok((p.display().to_string(), v))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
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
        for t in arr(v, "targets") {
            let mut t = t.clone();
            if let Some(o) = t.as_object_mut() {
                o.insert("part".into(), json!(part));
            }
            targets.push(t);
        }
    }
    let build: Value = std::fs::read_to_string(out.join("build.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);

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
    let comparison =
        (!references.is_empty()).then(|| crate::compare::compare(&targets, &references));
    let report = json!({
        "machine": machine,
        "generated_at": generated_at,
        "build": build,
        "parts": parts,
        "skipped": skipped,
        "plots": plots,
        "targets": targets,
        "comparison": comparison.as_ref().map(|(_, j)| j),
    });
    let json_path = out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;

    // Markdown: each part's own section, then the targets.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# media-relay benchmark report\n\nMachine: {machine}  \nGenerated: {generated_at}  \nMeasured: {}\n\n\
         Generator, relay and sink share this machine's CPUs: compare the ratios; absolute \
         figures describe this machine only. Every figure is the median (min–max) of its runs.\n",
        s(&build, "summary")
    );
    if let Some(line) = build
        .get("host_probe")
        .and_then(crate::host::describe_probe)
    {
        let _ = writeln!(
            md,
            "Host speed at the start: {line} (`host::probe`: the same fixed work in every run, so two runs' hosts \
             can be compared).\n"
        );
    }
    if let Some(line) = build
        .get("cpu_idle")
        .and_then(crate::host::describe_cpu_idle)
    {
        let _ = writeln!(md, "CPU idle: {line}.\n");
    }
    if let Some(line) = build.get("settle").and_then(crate::host::describe_settle) {
        let _ = writeln!(md, "Before the first part: {line}.\n");
    }
    if let Some(g) = build.get("load_generator").and_then(Value::as_str) {
        let _ = writeln!(md, "Rate load: {g}.\n");
    }
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
            "sharing" => "Port sharing: 1 000 calls on 150 ports",
            "restart" => "Reliability: restarts during calls",
            other => other,
        };
        let _ = writeln!(md, "## {title}\n");
        if let Some(m) = v.get("machine").and_then(Value::as_str)
            && m != machine
        {
            let _ = writeln!(md, "(measured on: {m})\n");
        }
        md.push_str(s(v, "markdown"));
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
    let count = |word: &str| targets.iter().filter(|t| s(t, "verdict") == word).count();
    if targets.is_empty() {
        md.push_str("No part with targets has results.\n");
    } else {
        md.push_str("| part | target | value | wanted | result |\n|---|---|---:|---|---|\n");
        for t in &targets {
            let verdict = s(t, "verdict");
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {}{} |",
                s(t, "part"),
                s(t, "name"),
                f(t, "value").map_or_else(
                    || "–".into(),
                    |x| if x.abs() >= 100.0 {
                        int(x)
                    } else {
                        format!("{x:.2}")
                    }
                ),
                s(t, "target"),
                if verdict == "MISSED" {
                    "**MISSED**"
                } else {
                    verdict
                },
                t.get("reason")
                    .and_then(Value::as_str)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            md,
            "\n{} targets: {} met, {} missed, {} not judged, {} not measurable.",
            targets.len(),
            count("met"),
            count("MISSED"),
            count("not judged"),
            count("not measurable")
        );
    }
    for n in &plot_notes {
        let _ = writeln!(md, "\nNote: {n}.");
    }
    if let Some((section, _)) = &comparison {
        let _ = write!(md, "\n{section}");
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
        let verdict = s(t, "verdict");
        println!(
            "{verdict}: {} ({}){}",
            s(t, "name"),
            s(t, "part"),
            t.get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
    }
    println!(
        "targets: {} met, {} MISSED, {} not judged, {} not measurable",
        count("met"),
        count("MISSED"),
        count("not judged"),
        count("not measurable")
    );
    if let Some((_, j)) = &comparison {
        println!(
            "compared with {}: {} agree, {} differ, {} not in two runs or more (report.md says which)",
            j["references"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            j["agree"],
            j["differ"],
            j["unmatched"]
        );
    }
    for p in &plots {
        println!("plot: {}", out.join(p).display());
    }
    println!("report: {}", md_path.display());
    println!("report: {}", json_path.display());
    Ok(())
}
