//! The quality watch: thresholds, hysteresis, windows, the far end, and
//! the engine's counts and summaries.

use std::time::{Duration, Instant, SystemTime};

use super::{basic_call, engine, media_endpoint, oa, offer_sdp, ok_dict, sdp_of};
use crate::{
    ng::{Command, Delete, Query, Value},
    session::{
        Counters, Now, Path, Quality, ReportBlock,
        quality::Leg,
        watch::{AlertThresholds, Figure, LegWatch, Measured},
    },
};

fn quality(jitter_us: u32, delay_us: u32, gaps: u32) -> Quality {
    Quality {
        path: Path::Xdp,
        clock_rate: 8000,
        jitter_us: Some(jitter_us),
        delay_above_min_us: Some(delay_us),
        max_gap_us: 20_000,
        gaps,
        longest_gap: 1,
        duplicates: 0,
        reordered: 0,
    }
}

fn leg(expected: u64, received: u64, q: Quality) -> Leg {
    Leg {
        inbound: Some(q),
        expected,
        received,
        far: None,
        rtt_us: None,
    }
}

/// Figures that changed, with their direction.
fn changed(w: &mut LegWatch, l: &Leg, at: Instant) -> Vec<(Figure, bool)> {
    w.observe(l, at, SystemTime::now(), &AlertThresholds::default())
        .into_iter()
        .map(|c| (c.figure, c.degraded))
        .collect()
}

#[test]
fn jitter_degrades_above_the_threshold_and_recovers_below_half() {
    let t0 = Instant::now();
    let mut w = LegWatch::default();
    let s = |i: u64| t0 + Duration::from_secs(i);
    // 29 ms: fine; 31 ms: degraded (default 30 ms).
    assert_eq!(
        changed(&mut w, &leg(50, 50, quality(29_000, 0, 0)), s(1)),
        []
    );
    assert_eq!(
        changed(&mut w, &leg(100, 100, quality(31_000, 0, 0)), s(2)),
        [(Figure::Jitter, true)]
    );
    assert!(w.is_degraded());
    // 20 ms: still degraded (recovery at 15 ms), then recovered.
    assert_eq!(
        changed(&mut w, &leg(150, 150, quality(20_000, 0, 0)), s(3)),
        []
    );
    assert_eq!(
        changed(&mut w, &leg(200, 200, quality(14_000, 0, 0)), s(4)),
        [(Figure::Jitter, false)]
    );
    assert!(!w.is_degraded());
    assert_eq!(w.summary.max_jitter_us, 31_000);
    assert_eq!(w.summary.checks, 4);
    let m = w.summary.mos_avg().unwrap();
    assert!(w.summary.mos_min <= m && m <= w.summary.mos_max);
}

#[test]
fn loss_and_bursts_are_judged_over_the_window() {
    let t0 = Instant::now();
    let mut w = LegWatch::default();
    let at = |i: u64| t0 + Duration::from_secs(i);
    // 50 packets a second. Clean for 5 s.
    for i in 0..=5 {
        assert_eq!(
            changed(&mut w, &leg(50 * i, 50 * i, quality(0, 0, 0)), at(i)),
            []
        );
    }
    // 2 % random loss (single packets): loss degrades, bursts do not.
    let mut lost = 0;
    let mut gaps = 0;
    let mut seen = Vec::new();
    for i in 6..=12 {
        lost += 1;
        gaps += 1;
        seen.extend(changed(
            &mut w,
            &leg(50 * i, 50 * i - lost, quality(0, 0, gaps as u32)),
            at(i),
        ));
    }
    assert_eq!(seen, [(Figure::Loss, true)], "2 % loss over 5 s");
    // Bursts of 5 packets, one a second (10 %): bursts degrade too.
    let mut seen = Vec::new();
    for i in 13..=16 {
        lost += 5;
        gaps += 1;
        seen.extend(changed(
            &mut w,
            &leg(50 * i, 50 * i - lost, quality(0, 0, gaps as u32)),
            at(i),
        ));
    }
    assert_eq!(seen, [(Figure::Burst, true)]);
    // Clean again: both recover once the window holds no loss.
    let mut seen = Vec::new();
    for i in 17..=24 {
        seen.extend(changed(
            &mut w,
            &leg(50 * i, 50 * i - lost, quality(0, 0, gaps as u32)),
            at(i),
        ));
    }
    seen.sort_by_key(|(f, _)| f.name());
    assert_eq!(seen, [(Figure::Burst, false), (Figure::Loss, false)]);
    assert!(w.summary.max_loss_percent >= 6.0, "{:?}", w.summary);
    assert_eq!(w.summary.bursts, gaps);
}

#[test]
fn too_few_packets_judge_no_loss() {
    let t0 = Instant::now();
    let mut w = LegWatch::default();
    // 10 expected, 5 lost: not enough to say anything.
    assert_eq!(changed(&mut w, &leg(0, 0, quality(0, 0, 0)), t0), []);
    assert_eq!(
        changed(
            &mut w,
            &leg(10, 5, quality(0, 0, 1)),
            t0 + Duration::from_secs(1)
        ),
        []
    );
}

#[test]
fn a_queue_building_degrades_the_delay_rise() {
    let t0 = Instant::now();
    let mut w = LegWatch::default();
    assert_eq!(
        changed(&mut w, &leg(50, 50, quality(1_000, 250_000, 0)), t0),
        [(Figure::DelayRise, true)]
    );
}

#[test]
fn the_far_end_counts_while_its_report_is_fresh() {
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let block = |at: SystemTime| ReportBlock {
        reporter: 1,
        source: 2,
        fraction_lost: 64, // 25 %
        cumulative_lost: 100,
        highest: 1000,
        jitter: 80,
        lsr: 0,
        dlsr: 0,
        at,
    };
    let mut l = leg(50, 50, quality(0, 0, 0));
    l.far = Some((block(wall - Duration::from_secs(20)), 8000));
    let mut w = LegWatch::default();
    assert!(
        w.observe(&l, t0, wall, &AlertThresholds::default())
            .is_empty(),
        "a stale report is not judged"
    );
    l.far = Some((block(wall - Duration::from_secs(2)), 8000));
    let c = w.observe(
        &l,
        t0 + Duration::from_secs(1),
        wall,
        &AlertThresholds::default(),
    );
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(
        (c[0].figure, c[0].measured, c[0].degraded),
        (Figure::Loss, Measured::FarEnd, true)
    );
    assert!((c[0].value - 25.0).abs() < 1e-9);
}

fn q(call: &str) -> Command {
    Command::Query(Query {
        call_id: call.into(),
        from_tag: None,
        to_tag: None,
    })
}

#[test]
fn the_engine_counts_degraded_legs_by_side_and_keeps_a_summary() {
    let mut e = engine();
    let now = Now::read();
    // Parties labelled as the SIP agent labels them.
    let mut offer = oa("w1", "a-tag", None, offer_sdp("198.18.1.2", 5000));
    offer.label = Some("trunk".into());
    let r = e.handle(Command::Offer(offer), now);
    let _to_b = media_endpoint(&sdp_of(&r));
    let mut answer = oa("w1", "a-tag", Some("b-tag"), offer_sdp("198.18.2.2", 6000));
    answer.label = Some("pbx".into());
    let r = e.handle(Command::Answer(answer), now);
    let to_a = media_endpoint(&sdp_of(&r));
    // A's RTP arrives with 40 ms of jitter.
    e.backend_mut().counters.insert(
        to_a,
        Counters {
            packets: 100,
            rtp_expected: 100,
            rtp_received: 100,
            last_packet: Some(SystemTime::now()),
            quality: Some(quality(40_000, 0, 0)),
            ..Counters::default()
        },
    );
    e.tick(now + Duration::from_secs(1));
    let t = e.watch_totals();
    assert_eq!(t.degraded_legs.get("trunk"), Some(&1), "{t:?}");
    assert_eq!(t.degraded_legs.get("pbx").copied().unwrap_or(0), 0);
    assert_eq!(t.alerts.get(&("trunk", "jitter")), Some(&1));
    // Within the budget a call is looked at once a second, not per tick.
    e.tick(now + Duration::from_millis(1250));
    assert_eq!(e.watch_totals().alerts.get(&("trunk", "jitter")), Some(&1));
    let report = ok_dict(e.handle(q("w1"), now));
    let tags = report[b"tags".as_slice()].as_dict().unwrap();
    let summary = tags[b"a-tag".as_slice()].get("quality summary").unwrap();
    assert_eq!(
        summary.get("degraded"),
        Some(&Value::List(vec![Value::from("jitter")]))
    );
    assert_eq!(
        summary.get("max jitter us").and_then(Value::as_int),
        Some(40_000)
    );
    assert!(summary.get("MOS min").is_some());
    // The call ends: the leg leaves the count; the ended call's report
    // keeps the summary.
    e.handle(
        Command::Delete(Delete {
            call_id: "w1".into(),
            from_tag: Some("a-tag".into()),
            to_tag: None,
            via_branch: None,
            delete_delay: None,
        }),
        now,
    );
    assert_eq!(e.watch_totals().degraded_legs.get("trunk"), Some(&0));
    let report = ok_dict(e.handle(q("w1"), now));
    let tags = report[b"tags".as_slice()].as_dict().unwrap();
    assert!(tags[b"a-tag".as_slice()].get("quality summary").is_some());
}

#[test]
fn unlabelled_parties_are_caller_and_callee() {
    let mut e = engine();
    let (to_a, to_b) = basic_call(&mut e, "w2");
    let now = Now::read();
    for local in [to_a, to_b] {
        e.backend_mut().counters.insert(
            local,
            Counters {
                rtp_expected: 100,
                rtp_received: 100,
                quality: Some(quality(0, 500_000, 0)),
                ..Counters::default()
            },
        );
    }
    e.tick(now + Duration::from_secs(1));
    let t = e.watch_totals();
    assert_eq!(t.degraded_legs.get("caller"), Some(&1), "{t:?}");
    assert_eq!(t.degraded_legs.get("callee"), Some(&1), "{t:?}");
}
