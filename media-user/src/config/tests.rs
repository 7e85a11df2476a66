//! The configuration's tests: parsing, merging, errors.

use super::*;

fn err(text: &str) -> String {
    match FileConfig::parse(text, Path::new("t.toml")) {
        Ok(f) => match RunConfig::resolve(f, FileConfig::default(), 10) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn full_file_parses_and_flags_override() {
    let text = r#"
listen-ng = "127.0.0.1:2299"
port-min = 40000
port-max = 40149
xdp-mode = "generic"
timeout = 30
delete-delay = 5
max-flows = 1024
log-format = "json"

[[interface]]
name = "carrier"
netdev = "eth0"
advertise = ["203.0.113.10"]

[[interface]]
name = "pbx"
netdev = "eth1"
"#;
    let file = FileConfig::parse(text, Path::new("t.toml")).unwrap();
    let flags = FileConfig {
        port_max: Some(40199),
        ..FileConfig::default()
    };
    let c = RunConfig::resolve(file, flags, 10).unwrap();
    assert_eq!(c.listen_ng, "127.0.0.1:2299".parse().unwrap());
    assert_eq!((c.port_min, c.port_max), (40000, 40199));
    assert_eq!(c.xdp_mode, XdpModeArg::Generic);
    assert_eq!(c.session.timeout, Duration::from_secs(30));
    assert_eq!(c.session.delete_delay, Duration::from_secs(5));
    assert_eq!(c.interfaces.len(), 2);
    assert_eq!(c.interfaces[0].name.as_deref(), Some("carrier"));
    assert_eq!(
        c.interfaces[0].advertise,
        vec!["203.0.113.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(c.interfaces[0].stun, None);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn defaults() {
    let c = RunConfig::resolve(FileConfig::default(), FileConfig::default(), 10).unwrap();
    assert_eq!(c.listen_ng, "127.0.0.1:2223".parse().unwrap());
    assert_eq!((c.port_min, c.port_max), (30000, 40000));
    assert_eq!(c.xdp_mode, XdpModeArg::Auto);
    assert_eq!(c.session.timeout, Duration::from_secs(60));
    assert_eq!(c.session.silent_timeout, Duration::from_secs(3600));
    assert_eq!(c.session.max_media, 16);
    assert_eq!(c.port_quarantine, Duration::from_secs(32));
    assert_eq!(c.io.max_delay, Duration::from_millis(5));
    assert_eq!(c.io.nice, -10);
    assert!(c.io.threads >= 1);
    assert_eq!(c.ng_cache_bytes, 8 << 20);
    assert!(c.quality_telemetry);
}

#[test]
fn quality_telemetry_from_file_and_flag() {
    let file = FileConfig::parse("quality-telemetry = false", Path::new("t.toml")).unwrap();
    let c = RunConfig::resolve(file.clone(), FileConfig::default(), 10).unwrap();
    assert!(!c.quality_telemetry);
    let on = FileConfig {
        quality_telemetry: Some(true),
        ..FileConfig::default()
    };
    assert!(RunConfig::resolve(file, on, 10).unwrap().quality_telemetry);
    assert!(err("quality-telemetry = \"no\"").contains("quality-telemetry"));
}

#[test]
fn limits_parse() {
    let file = FileConfig::parse(
        "max-media = 4\nport-quarantine = 60\nng-cache-bytes = 1048576",
        Path::new("t.toml"),
    )
    .unwrap();
    let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
    assert_eq!(c.session.max_media, 4);
    assert_eq!(c.port_quarantine, Duration::from_secs(60));
    assert_eq!(c.ng_cache_bytes, 1 << 20);
    // 0 turns the quarantine off.
    let file = FileConfig::parse("port-quarantine = 0", Path::new("t.toml")).unwrap();
    let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
    assert_eq!(c.port_quarantine, Duration::ZERO);
}

#[test]
fn ng_allow_parses_cidrs_and_addresses_and_flags_win() {
    let file = FileConfig::parse(
        "ng-allow = [\"198.18.2.0/24\", \"2001:2:0:2::/64\", \"127.0.0.1\", \"::1\"]",
        Path::new("t.toml"),
    )
    .unwrap();
    let c = RunConfig::resolve(file.clone(), FileConfig::default(), 10).unwrap();
    let shown: Vec<String> = c.ng_allow.nets().iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "198.18.2.0/24",
            "2001:2:0:2::/64",
            "127.0.0.1/32",
            "::1/128"
        ]
    );
    assert!(c.ng_allow.permits("198.18.2.9".parse().unwrap()));
    assert!(!c.ng_allow.permits("198.18.1.2".parse().unwrap()));
    let flags = FileConfig {
        ng_allow: Some(vec!["198.18.1.0/24".into()]),
        ..FileConfig::default()
    };
    let c = RunConfig::resolve(file, flags, 10).unwrap();
    assert!(c.ng_allow.permits("198.18.1.2".parse().unwrap()));
    assert!(!c.ng_allow.permits("198.18.2.9".parse().unwrap()));
    // Unset and empty alike: everyone.
    let c = RunConfig::resolve(FileConfig::default(), FileConfig::default(), 10).unwrap();
    assert!(c.ng_allow.nets().is_empty());
    assert!(c.ng_allow.permits("203.0.113.1".parse().unwrap()));
    let file = FileConfig::parse("ng-allow = []", Path::new("t.toml")).unwrap();
    let c = RunConfig::resolve(file, FileConfig::default(), 10).unwrap();
    assert!(c.ng_allow.nets().is_empty());
}

#[test]
fn errors_name_the_key() {
    for (text, want) in [
        (
            "port-mni = 3",
            "config t.toml, line 1 (`port-mni`): unknown field `port-mni`",
        ),
        (
            "port-min = \"x\"",
            "config t.toml, line 1 (`port-min`): invalid type: string \"x\", expected u16",
        ),
        (
            "port-min = 100",
            "config key `port-min` = 100: at least 1024",
        ),
        (
            "port-min = 40000\nport-max = 30000",
            "config key `port-max` = 30000: greater than port-min (40000)",
        ),
        (
            "xdp-mode = \"turbo\"",
            "config t.toml, line 1 (`xdp-mode`): unknown variant `turbo`",
        ),
        (
            "timeout = 0",
            "config key `timeout` = 0: at least 1 seconds",
        ),
        (
            "max-media = 0",
            "config key `max-media` = 0: between 1 and 1024 m= lines",
        ),
        (
            "ng-cache-bytes = 1000",
            "config key `ng-cache-bytes` = 1000: at least 65536 bytes (one reply of the largest size)",
        ),
        (
            "port-quarantine = -1",
            "config t.toml, line 1 (`port-quarantine`): invalid value: integer `-1`, expected u64",
        ),
        (
            "userspace-max-delay = 0",
            "config key `userspace-max-delay` = 0: between 1 and 1000 milliseconds",
        ),
        (
            "userspace-threads = 65",
            "config key `userspace-threads` = 65: between 0 (one per CPU) and 64",
        ),
        (
            "userspace-nice = -21",
            "config key `userspace-nice` = -21: a nice value between -20 and 19",
        ),
        (
            "cpu-wake-latency = 1001",
            "config key `cpu-wake-latency` = 1001: between 0 (idle CPUs poll) and 1000 microseconds",
        ),
        (
            "cpu-wake-latency = -1",
            "config t.toml, line 1 (`cpu-wake-latency`): invalid value: integer `-1`, expected u32",
        ),
        (
            "advertise = \"198.18.0.1\"",
            "config key `advertise` = 198.18.0.1: needs an interface",
        ),
        (
            "[[interface]]\nnetdev = \"a\"\n[[interface]]\nnetdev = \"a\"",
            "config key `interface` = a: each interface name may appear once",
        ),
        (
            "listen-ng = \"nope\"",
            "config t.toml, line 1 (`listen-ng`): invalid socket address syntax",
        ),
        (
            "metrics-listen = \"127.0.0.1\"",
            "config t.toml, line 1 (`metrics-listen`): invalid socket address syntax",
        ),
        (
            "ng-allow = [\"198.18.2.0/33\"]",
            "config key `ng-allow` = 198.18.2.0/33: a network in CIDR form (e.g. 10.0.0.0/8, 2001:db8::/32) or a single address",
        ),
        (
            "ng-allow = [\"controller.example\"]",
            "config key `ng-allow` = controller.example: a network in CIDR form",
        ),
        (
            "[quality-alerts]\nloss-percent = 0.0",
            "config key `quality-alerts.loss-percent` = 0: above 0 and at most 100",
        ),
        (
            "[quality-alerts]\njiter-ms = 5.0",
            "config t.toml, line 2 (`jiter-ms`): unknown field `jiter-ms`",
        ),
        (
            "ng-allow = [\"198.18.2.1/24\"]",
            "config key `ng-allow` = 198.18.2.1/24: host bits set; write the network, 198.18.2.0/24",
        ),
        (
            "ng-allow = [\"2001:2:0:2::1/64\"]",
            "config key `ng-allow` = 2001:2:0:2::1/64: host bits set; write the network, 2001:2:0:2::/64",
        ),
        (
            "ng-allow = \"198.18.2.0/24\"",
            "config t.toml, line 1 (`ng-allow`): invalid type: string \"198.18.2.0/24\", expected a sequence",
        ),
        (
            "port-sharing = true\nport-sharing-max-per-port = 1",
            "config key `port-sharing-max-per-port` = 1: from 2 to 4096 (streams per shared port pair)",
        ),
        (
            "port-sharing = \"yes\"",
            "config t.toml, line 1 (`port-sharing`): invalid type: string \"yes\", expected a boolean",
        ),
        (
            "log-format = \"xml\"",
            "config t.toml, line 1 (`log-format`): unknown variant `xml`",
        ),
        (
            "[sip]\ntrunk-listen = \"198.18.1.1:5060\"\npbx = \"198.18.2.2:5060\"\nmax-cals = 3",
            "config t.toml, line 4 (`max-cals`): unknown field `max-cals`",
        ),
    ] {
        let e = err(text);
        assert!(e.starts_with(want), "{text:?}\n  got  {e}\n  want {want}…");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn port_sharing_is_off_by_default_and_takes_its_cap() {
    let parse = |text: &str| {
        RunConfig::resolve(
            FileConfig::parse(text, Path::new("t.toml")).unwrap(),
            FileConfig::default(),
            10,
        )
        .unwrap()
    };
    assert_eq!(parse("").port_sharing, None);
    assert_eq!(
        parse("port-sharing = true").port_sharing,
        Some(crate::session::sharing::DEFAULT_MAX_PER_PORT)
    );
    assert_eq!(
        parse("port-sharing = true\nport-sharing-max-per-port = 100").port_sharing,
        Some(100)
    );
    // The cap alone does not switch it on; the flag does.
    assert_eq!(parse("port-sharing-max-per-port = 100").port_sharing, None);
    let on = FileConfig {
        port_sharing: Some(true),
        ..FileConfig::default()
    };
    let c = RunConfig::resolve(FileConfig::default(), on, 10).unwrap();
    assert_eq!(c.port_sharing, Some(64));
}
