//! The parts of the installed systemd unit the install test reproduces:
//! `User=`, `Group=`, `CapabilityBoundingSet=`, `AmbientCapabilities=`,
//! `NoNewPrivileges=`, `Environment=`, `LimitMEMLOCK=`, `ExecStartPre=`
//! and `ExecStart=` of `[Service]`, parsed as systemd reads them (for what
//! our unit uses; anything else it cannot reproduce is an error).

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, bail};

use super::output;

/// Linux capability names (linux/capability.h), by number.
const CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// `CAP_NET_ADMIN` -> `net_admin`, checked against the known names (systemd
/// ignores a misspelt capability silently).
fn cap_name(word: &str) -> anyhow::Result<&'static str> {
    let lower = word.to_ascii_lowercase();
    let name = lower.strip_prefix("cap_").unwrap_or(&lower);
    CAPS.iter()
        .find(|c| **c == name)
        .copied()
        .with_context(|| format!("unknown capability {word:?} in the unit"))
}

fn cap_mask(caps: &[&str]) -> u64 {
    caps.iter()
        .filter_map(|c| CAPS.iter().position(|k| k == c))
        .fold(0, |m, i| m | (1 << i))
}

/// The parts of the unit the test reproduces.
#[derive(Debug, Default)]
pub struct Unit {
    /// `User=`; `None`: root.
    pub user: Option<String>,
    pub group: Option<String>,
    pub bounding: Vec<&'static str>,
    pub ambient: Vec<&'static str>,
    pub no_new_privileges: bool,
    pub environment: Vec<(String, String)>,
    pub memlock_infinity: bool,
    /// `LimitNOFILE=` (a number), applied as systemd would.
    pub nofile: Option<u64>,
    pub exec_start_pre: Vec<String>,
    pub exec_start: Vec<String>,
}

/// Split a command line as systemd does (whitespace; single or double
/// quotes group words). Escapes and `$`/`%` expansion are not needed by our
/// unit and rejected.
pub fn split_words(s: &str) -> anyhow::Result<Vec<String>> {
    if s.contains(['\\', '$', '%']) {
        bail!("escapes, $ and % in unit command lines are not supported by the test: {s}");
    }
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '\'' || first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some(c) if c == first => break,
                    Some(c) => word.push(c),
                    None => bail!("unterminated quote in {s}"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

impl Unit {
    pub fn parse(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let mut section = String::new();
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(rest) = line.strip_suffix('\\') {
                pending.push_str(rest);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                s.clone_into(&mut section);
                continue;
            }
            if section != "Service" {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("{}: cannot parse {line:?}", path.display()))?;
            let list = values.entry(key.trim().to_owned()).or_default();
            // An empty assignment resets a list setting.
            if value.trim().is_empty() {
                list.clear();
            } else {
                list.push(value.trim().to_owned());
            }
        }
        let last = |k: &str| values.get(k).and_then(|v| v.last()).cloned();
        let caps = |k: &str| -> anyhow::Result<Vec<&'static str>> {
            let mut out = Vec::new();
            for v in values.get(k).into_iter().flatten() {
                if v.starts_with('~') {
                    bail!("{k}=~… (an inverted list) is not supported by the install test");
                }
                for w in v.split_whitespace() {
                    let c = cap_name(w)?;
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
            Ok(out)
        };
        let yes =
            |k: &str| last(k).is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "on" | "1"));
        let mut environment = Vec::new();
        for v in values.get("Environment").into_iter().flatten() {
            for w in split_words(v)? {
                let (k, val) = w
                    .split_once('=')
                    .with_context(|| format!("Environment={v}: no '='"))?;
                environment.push((k.to_owned(), val.to_owned()));
            }
        }
        let unit = Self {
            user: last("User").filter(|u| u != "root" && u != "0"),
            group: last("Group"),
            bounding: caps("CapabilityBoundingSet")?,
            ambient: caps("AmbientCapabilities")?,
            no_new_privileges: yes("NoNewPrivileges"),
            environment,
            memlock_infinity: last("LimitMEMLOCK").as_deref() == Some("infinity"),
            nofile: last("LimitNOFILE").and_then(|v| v.parse().ok()),
            exec_start_pre: values.get("ExecStartPre").cloned().unwrap_or_default(),
            exec_start: split_words(&last("ExecStart").context("the unit has no ExecStart=")?)?,
        };
        if unit.bounding.is_empty() {
            bail!("the unit has no CapabilityBoundingSet=: the test expects a restricted set");
        }
        if let Some(c) = unit.ambient.iter().find(|c| !unit.bounding.contains(c)) {
            bail!("AmbientCapabilities= has {c}, which CapabilityBoundingSet= lacks");
        }
        Ok(unit)
    }

    pub fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("root")
    }

    /// The capability sets the kernel must show for the daemon:
    /// `(effective = permitted, inheritable = ambient, bounding)`. Root gets
    /// its whole bounding set; another user only its ambient set.
    pub fn expected_caps(&self) -> (u64, u64, u64) {
        let ambient = cap_mask(&self.ambient);
        let bounding = cap_mask(&self.bounding);
        let effective = if self.user.is_none() {
            bounding
        } else {
            ambient
        };
        (effective, ambient, bounding)
    }
}

/// `uid`, `gid` of a user.
pub fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let line = output("getent", &["passwd", user]).with_context(|| format!("no user {user}"))?;
    let f: Vec<&str> = line.trim().split(':').collect();
    Ok((
        f.get(2).and_then(|v| v.parse().ok()).context("uid")?,
        f.get(3).and_then(|v| v.parse().ok()).context("gid")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_systemd_does() {
        assert_eq!(
            split_words(r#"/bin/sh -ec 'a  b' "c d"  e"#).unwrap(),
            ["/bin/sh", "-ec", "a  b", "c d", "e"]
        );
        assert!(split_words("echo $HOME").is_err());
        assert!(split_words("echo 'open").is_err());
    }

    #[test]
    fn capabilities_by_name_and_number() {
        assert_eq!(cap_name("CAP_NET_ADMIN").unwrap(), "net_admin");
        assert!(cap_name("CAP_NET_ADMN").is_err());
        // linux/capability.h: CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
        assert_eq!(
            cap_mask(&["net_admin", "perfmon", "bpf"]),
            1 << 12 | 1 << 38 | 1 << 39
        );
    }

    /// The install test can reproduce the unit the package ships.
    #[test]
    fn the_shipped_unit_parses() {
        let path = super::super::workspace_root().join("packaging/media-relay.service");
        let unit = Unit::parse(&path).unwrap();
        assert_eq!(unit.exec_start[0], super::super::BIN);
        assert!(!unit.bounding.is_empty());
    }
}
