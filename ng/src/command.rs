//! Requests: a datagram `<cookie> <bencoded dict>` into a typed [`Command`].
//!
//! Rules, from rtpengine's `docs/ng_control_protocol.md` and what its
//! daemon (`daemon/call_flags.c`) and peers actually do:
//!
//! - **Cookie**: everything before the first space; it must not be empty
//!   (`control_ng_process`). The dictionary starts right after that space.
//! - **Keys** are matched in any case with spaces, hyphens and underscores
//!   alike (`call-id`, `call id`, `Call_ID`; `ICE`, `received from`): peers
//!   disagree — `rtpengine-ng-client` sends `ICE` and `media address`,
//!   Kamailio `received-from` and `delete delay`. Two spellings of one key
//!   that we read are refused ([`NgError::DuplicateKey`]); keys we do not
//!   read (`supports`, `sip-message-type`, `codec`, …) are ignored, whatever
//!   their type.
//! - **Dictionary order** is free (see [`super::bencode`]).
//! - **Strings** are bencode byte strings; the ones we keep as `String`
//!   (tags, interface names, labels) must be UTF-8. An empty optional
//!   string counts as absent; an empty required one is refused
//!   (rtpengine: "No call-id in message").
//! - **Integers** (`delete delay`, `limit`) may be bencode integers or
//!   strings of digits, as rtpengine's `get_int_str` allows.
//! - **String lists** (`flags`, `replace`, `rtcp-mux`, `ICE`, `direction`)
//!   may also be one string, split at commas (rtpengine's
//!   `call_ng_flags_list`). Items are trimmed; empty ones are skipped.
//! - **`flags`** items are normalised like keys (`trust address` =
//!   `trust-address`, `SIP-source-address` = `sip-source-address`). As in
//!   rtpengine, `replace-<x>` and `rtcp-mux-<x>` items act as `<x>` in the
//!   `replace` and `rtcp-mux` lists. Anything else lands, normalised, in
//!   [`Flags::unknown`], as do unknown `replace` (`replace-<x>`), `rtcp-mux`
//!   (`rtcp-mux-<x>`) and `ICE` (`ice-<x>`) values, so the daemon can log
//!   everything it ignored in one place.
//! - **`rtpp-flags`** (all flags in one string, for the daemon to parse:
//!   Kamailio's two-argument `rtpengine_offer(flags, via-branch)`) is not
//!   interpreted; its presence is noted as `rtpp-flags` in
//!   [`Flags::unknown`]. Kamailio's usual one-argument form parses the
//!   flags in the module and sends the keys described here.
//! - **`address family`** is `IP4` or `IP6`: the family of the relay
//!   address in the SDP the command returns ([`OfferAnswer::address_family`]).
//! - **`received from`** is `["IP4"|"IP6", address]` (the family must match
//!   the address) or, as rtpengine also accepts, a bare address string.
//! - **Required keys**: offer `call-id`, `from-tag`, `sdp`; answer also
//!   `to-tag`; delete and query `call-id`. Checked in that order, so the
//!   error names the first one missing. (The docs list `from-tag` as
//!   required for delete too, but the daemon deletes the whole call
//!   without one, and so do we.)
//!
//! # `ICE`
//!
//! We anchor media but do not terminate ICE (non-goal in DESIGN.md), so the
//! documented modes (`docs/ng_control_protocol.md`, key `ICE`) map onto the
//! two things we can do, [`Ice::Remove`] and [`Ice::Keep`]:
//!
//! | `ICE` value | rtpengine | here |
//! |---|---|---|
//! | absent, `default` | as `force` if the SDP has ICE | `Remove` |
//! | `remove` | strips ICE attributes | `Remove` |
//! | `force` | strips, then offers itself as the only candidate | `Remove`: we cannot be a candidate, stripping keeps media on the relay |
//! | `force-relay` | keeps the endpoint's candidates, adds itself as `relay` | `Keep` |
//! | `optional` | keeps the endpoint's candidates, adds itself at low priority | `Keep` |
//! | `trickle`, `ice2`, `lite-*`, `no-lite` | modifiers, not modes | no change; noted in `Flags::unknown` |
//! | anything else | — | `Remove`, noted in `Flags::unknown` |
//!
//! In a list, the last mode wins, as in rtpengine.

use std::{collections::BTreeMap, net::IpAddr, str};

use super::{
    AddressFamily, Command, Delete, Flags, Ice, List, NgError, OfferAnswer, Query, Replace,
    RtcpMux, Value, bencode::decode_at,
};

/// Split a datagram into cookie and command. Outer Err: no cookie can be
/// found (no reply possible, the caller counts and drops it). Inner Err: the
/// cookie is known, reply with an error.
pub fn parse_datagram(buf: &[u8]) -> Result<(Vec<u8>, Result<Command, NgError>), NgError> {
    let space = match buf.iter().position(|&byte| byte == b' ') {
        None | Some(0) => return Err(NgError::NoCookie),
        Some(space) => space,
    };
    let (cookie, _) = buf.split_at(space);
    Ok((cookie.to_vec(), parse_request(buf, space + 1)))
}

/// The dictionary starting at `start` (just past the cookie's space), as a
/// command. Offsets in errors count from the start of the datagram.
fn parse_request(buf: &[u8], start: usize) -> Result<Command, NgError> {
    match buf.get(start) {
        None => return Err(NgError::Empty),
        Some(b'{') => return Err(NgError::Json),
        Some(b'd') => {}
        Some(_) => return Err(NgError::NotADict),
    }
    let (value, end) = decode_at(buf, start)?;
    if end != buf.len() {
        return Err(NgError::TrailingData { offset: end });
    }
    let Value::Dict(dict) = value else {
        return Err(NgError::NotADict);
    };
    Command::from_dict(&dict)
}

impl Command {
    /// The command's ng name (`"offer"`, `"list"`, ...).
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Offer(_) => "offer",
            Command::Answer(_) => "answer",
            Command::Delete(_) => "delete",
            Command::Query(_) => "query",
            Command::List(_) => "list",
            Command::Statistics => "statistics",
        }
    }

    /// The call the command is about, if any.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Command::Offer(c) | Command::Answer(c) => Some(&c.call_id),
            Command::Delete(d) => Some(&d.call_id),
            Command::Query(q) => Some(&q.call_id),
            Command::Ping | Command::List(_) | Command::Statistics => None,
        }
    }

    /// The command in an already decoded request dictionary.
    pub fn from_dict(dict: &BTreeMap<Vec<u8>, Value>) -> Result<Command, NgError> {
        let fields = Fields::new(dict);
        let name = match fields.get(key::COMMAND)? {
            None => return Err(NgError::MissingKey { key: key::COMMAND }),
            Some(Value::Bytes(name)) => String::from_utf8_lossy(name),
            Some(_) => {
                return Err(NgError::WrongType {
                    key: key::COMMAND,
                    expected: STRING,
                });
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "ping" => Ok(Command::Ping),
            "offer" => fields.offer_answer(false).map(Command::Offer),
            "answer" => fields.offer_answer(true).map(Command::Answer),
            "delete" => fields.delete().map(Command::Delete),
            "query" => fields.query().map(Command::Query),
            "list" => fields.list().map(Command::List),
            "statistics" => Ok(Command::Statistics),
            _ => Err(NgError::UnknownCommand {
                name: name.into_owned(),
            }),
        }
    }
}

/// Normalised key names: the lookup form, and how errors name a key.
mod key {
    pub const COMMAND: &str = "command";
    pub const CALL_ID: &str = "call-id";
    pub const FROM_TAG: &str = "from-tag";
    pub const TO_TAG: &str = "to-tag";
    pub const VIA_BRANCH: &str = "via-branch";
    pub const SDP: &str = "sdp";
    pub const FLAGS: &str = "flags";
    pub const REPLACE: &str = "replace";
    pub const DIRECTION: &str = "direction";
    pub const FROM_INTERFACE: &str = "from-interface";
    pub const TO_INTERFACE: &str = "to-interface";
    pub const RTCP_MUX: &str = "rtcp-mux";
    pub const ICE: &str = "ice";
    pub const RECEIVED_FROM: &str = "received-from";
    pub const MEDIA_ADDRESS: &str = "media-address";
    pub const LABEL: &str = "label";
    pub const ADDRESS_FAMILY: &str = "address-family";
    /// The docs: "`label` or `from-label`".
    pub const FROM_LABEL: &str = "from-label";
    pub const DELETE_DELAY: &str = "delete-delay";
    pub const LIMIT: &str = "limit";
    /// Flags as one string for the daemon to parse (Kamailio's
    /// `rtpengine_offer(flags, via-branch)`); not interpreted here.
    pub const RTPP_FLAGS: &str = "rtpp-flags";
}

const STRING: &str = "a string";
const STRING_LIST: &str = "a list of strings";
const RECEIVED_FROM_SHAPE: &str = "a list [\"IP4\" or \"IP6\", address] or an address";
const FAMILY: &str = "\"IP4\" or \"IP6\"";
const SECONDS: &str = "an integer from 0 to 4294967295";
const POSITIVE: &str = "an integer from 1 to 4294967295";

/// Lowercase, with spaces and underscores as hyphens: the one spelling
/// keys and flags are compared in.
fn normalise(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The request dictionary by normalised key.
struct Fields<'a> {
    /// Every spelling of each key, to refuse ambiguity on the keys we read.
    by_key: BTreeMap<String, Vec<(&'a [u8], &'a Value)>>,
}

impl<'a> Fields<'a> {
    fn new(dict: &'a BTreeMap<Vec<u8>, Value>) -> Self {
        let mut by_key: BTreeMap<String, Vec<(&[u8], &Value)>> = BTreeMap::new();
        for (raw, value) in dict {
            // A key that is not UTF-8 cannot be one we read.
            if let Ok(text) = str::from_utf8(raw) {
                by_key
                    .entry(normalise(text))
                    .or_default()
                    .push((raw, value));
            }
        }
        Self { by_key }
    }

    fn get(&self, key: &'static str) -> Result<Option<&'a Value>, NgError> {
        match self.by_key.get(key).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([(_, value)]) => Ok(Some(value)),
            Some([(first, _), (second, _), ..]) => Err(NgError::DuplicateKey {
                first: String::from_utf8_lossy(first).into_owned(),
                second: String::from_utf8_lossy(second).into_owned(),
            }),
        }
    }

    /// A string key; empty counts as absent.
    fn string(&self, key: &'static str) -> Result<Option<String>, NgError> {
        match self.get(key)? {
            None => Ok(None),
            Some(value) => {
                let text = text(key, value, STRING)?;
                Ok((!text.is_empty()).then(|| text.to_owned()))
            }
        }
    }

    fn required_string(&self, key: &'static str) -> Result<String, NgError> {
        match self.get(key)? {
            None => Err(NgError::MissingKey { key }),
            Some(value) => match text(key, value, STRING)? {
                "" => Err(NgError::EmptyValue { key }),
                text => Ok(text.to_owned()),
            },
        }
    }

    /// A list of strings, or one comma-separated string.
    fn strings(&self, key: &'static str) -> Result<Vec<&'a str>, NgError> {
        let items: Vec<&str> = match self.get(key)? {
            None => Vec::new(),
            Some(Value::List(items)) => items
                .iter()
                .map(|item| text(key, item, STRING_LIST))
                .collect::<Result<_, _>>()?,
            Some(value @ Value::Bytes(_)) => text(key, value, STRING_LIST)?.split(',').collect(),
            Some(Value::Int(_) | Value::Dict(_)) => {
                return Err(NgError::WrongType {
                    key,
                    expected: STRING_LIST,
                });
            }
        };
        Ok(items
            .into_iter()
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect())
    }

    /// An integer of at least `min`, written as a bencode integer or as a
    /// string of digits.
    fn uint(
        &self,
        key: &'static str,
        min: u32,
        expected: &'static str,
    ) -> Result<Option<u32>, NgError> {
        let bad = |value: String| NgError::BadNumber {
            key,
            expected,
            value,
        };
        let number = match self.get(key)? {
            None => return Ok(None),
            Some(Value::Int(int)) => u32::try_from(*int).map_err(|_| bad(int.to_string()))?,
            Some(Value::Bytes(digits)) => {
                let text = String::from_utf8_lossy(digits);
                if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
                    return Err(bad(text.into_owned()));
                }
                text.parse().map_err(|_| bad(text.to_string()))?
            }
            Some(Value::List(_) | Value::Dict(_)) => {
                return Err(NgError::WrongType { key, expected });
            }
        };
        if number < min {
            return Err(bad(number.to_string()));
        }
        Ok(Some(number))
    }

    fn address(&self, key: &'static str) -> Result<Option<IpAddr>, NgError> {
        match self.get(key)? {
            None => Ok(None),
            Some(value) => ip(key, text(key, value, STRING)?).map(Some),
        }
    }

    /// `IP4` / `IP6` (any case).
    fn family(&self, key: &'static str) -> Result<Option<AddressFamily>, NgError> {
        let Some(value) = self.get(key)? else {
            return Ok(None);
        };
        let family = text(key, value, FAMILY)?;
        if family.eq_ignore_ascii_case("IP4") {
            Ok(Some(AddressFamily::Ip4))
        } else if family.eq_ignore_ascii_case("IP6") {
            Ok(Some(AddressFamily::Ip6))
        } else {
            Err(NgError::WrongType {
                key,
                expected: FAMILY,
            })
        }
    }

    fn received_from(&self) -> Result<Option<IpAddr>, NgError> {
        let key = key::RECEIVED_FROM;
        let items = match self.get(key)? {
            None => return Ok(None),
            Some(value @ Value::Bytes(_)) => return ip(key, text(key, value, STRING)?).map(Some),
            Some(Value::List(items)) => items,
            Some(Value::Int(_) | Value::Dict(_)) => {
                return Err(NgError::WrongType {
                    key,
                    expected: RECEIVED_FROM_SHAPE,
                });
            }
        };
        let [family, address] = items.as_slice() else {
            return Err(NgError::WrongType {
                key,
                expected: RECEIVED_FROM_SHAPE,
            });
        };
        let family = text(key, family, RECEIVED_FROM_SHAPE)?;
        let address_text = text(key, address, RECEIVED_FROM_SHAPE)?;
        let v4 = if family.eq_ignore_ascii_case("IP4") {
            true
        } else if family.eq_ignore_ascii_case("IP6") {
            false
        } else {
            return Err(NgError::UnknownFamily {
                family: family.to_owned(),
            });
        };
        let address = ip(key, address_text)?;
        match (v4, address) {
            (true, IpAddr::V4(_)) | (false, IpAddr::V6(_)) => Ok(Some(address)),
            (true, IpAddr::V6(_)) => Err(NgError::FamilyMismatch {
                family: "IP4",
                address,
            }),
            (false, IpAddr::V4(_)) => Err(NgError::FamilyMismatch {
                family: "IP6",
                address,
            }),
        }
    }

    fn offer_answer(&self, answer: bool) -> Result<OfferAnswer, NgError> {
        let call_id = self.required_string(key::CALL_ID)?;
        let from_tag = self.required_string(key::FROM_TAG)?;
        let to_tag = if answer {
            Some(self.required_string(key::TO_TAG)?)
        } else {
            self.string(key::TO_TAG)?
        };
        let sdp = match self.get(key::SDP)? {
            None => return Err(NgError::MissingKey { key: key::SDP }),
            Some(Value::Bytes(sdp)) if sdp.is_empty() => {
                return Err(NgError::EmptyValue { key: key::SDP });
            }
            Some(Value::Bytes(sdp)) => sdp.clone(),
            Some(_) => {
                return Err(NgError::WrongType {
                    key: key::SDP,
                    expected: STRING,
                });
            }
        };

        let mut flags = Flags::default();
        let mut replace = Replace::default();
        let mut rtcp_mux = RtcpMux::default();
        for item in self.strings(key::FLAGS)? {
            apply_flag(&normalise(item), &mut flags, &mut replace, &mut rtcp_mux);
        }
        for item in self.strings(key::REPLACE)? {
            apply_replace(&normalise(item), &mut replace, &mut flags);
        }
        for item in self.strings(key::RTCP_MUX)? {
            apply_rtcp_mux(&normalise(item), &mut rtcp_mux, &mut flags);
        }
        let mut ice = Ice::default();
        for item in self.strings(key::ICE)? {
            apply_ice(&normalise(item), &mut ice, &mut flags);
        }
        if self.by_key.contains_key(key::RTPP_FLAGS) {
            flags.unknown.push(key::RTPP_FLAGS.to_owned());
        }

        let direction: Vec<String> = self
            .strings(key::DIRECTION)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if direction.len() > 2 {
            return Err(NgError::TooManyInterfaces {
                count: direction.len(),
            });
        }
        let label = match self.string(key::LABEL)? {
            Some(label) => Some(label),
            None => self.string(key::FROM_LABEL)?,
        };

        Ok(OfferAnswer {
            call_id,
            from_tag,
            to_tag,
            via_branch: self.string(key::VIA_BRANCH)?,
            sdp,
            flags,
            replace,
            direction,
            from_interface: self.string(key::FROM_INTERFACE)?,
            to_interface: self.string(key::TO_INTERFACE)?,
            rtcp_mux,
            ice,
            received_from: self.received_from()?,
            media_address: self.address(key::MEDIA_ADDRESS)?,
            label,
            address_family: self.family(key::ADDRESS_FAMILY)?,
        })
    }

    fn delete(&self) -> Result<Delete, NgError> {
        Ok(Delete {
            call_id: self.required_string(key::CALL_ID)?,
            from_tag: self.string(key::FROM_TAG)?,
            to_tag: self.string(key::TO_TAG)?,
            via_branch: self.string(key::VIA_BRANCH)?,
            delete_delay: self.uint(key::DELETE_DELAY, 0, SECONDS)?,
        })
    }

    fn query(&self) -> Result<Query, NgError> {
        Ok(Query {
            call_id: self.required_string(key::CALL_ID)?,
            from_tag: self.string(key::FROM_TAG)?,
            to_tag: self.string(key::TO_TAG)?,
        })
    }

    fn list(&self) -> Result<List, NgError> {
        // The docs: "Must be > 0."
        Ok(List {
            limit: self.uint(key::LIMIT, 1, POSITIVE)?,
        })
    }
}

/// A value that must be a UTF-8 byte string; `expected` describes the
/// whole key's shape for the error.
fn text<'v>(
    key: &'static str,
    value: &'v Value,
    expected: &'static str,
) -> Result<&'v str, NgError> {
    match value {
        Value::Bytes(bytes) => str::from_utf8(bytes).map_err(|_| NgError::NotUtf8 { key }),
        Value::Int(_) | Value::List(_) | Value::Dict(_) => {
            Err(NgError::WrongType { key, expected })
        }
    }
}

/// An address as the docs write it (dotted quad, RFC 5952); `[v6]` is
/// accepted too.
fn ip(key: &'static str, text: &str) -> Result<IpAddr, NgError> {
    let bare = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().map_err(|_| NgError::BadAddress {
        key,
        value: text.to_owned(),
    })
}

fn apply_flag(flag: &str, flags: &mut Flags, replace: &mut Replace, rtcp_mux: &mut RtcpMux) {
    let known = match flag {
        "asymmetric" => &mut flags.asymmetric,
        "symmetric" => &mut flags.symmetric,
        "strict-source" => &mut flags.strict_source,
        "trust-address" => &mut flags.trust_address,
        "sip-source-address" => &mut flags.sip_source_address,
        "port-latching" => &mut flags.port_latching,
        "no-rtcp-attribute" => &mut flags.no_rtcp_attribute,
        "full-rtcp-attribute" => &mut flags.full_rtcp_attribute,
        "loop-protect" => &mut flags.loop_protect,
        _ => {
            if let Some(part) = flag.strip_prefix("replace-") {
                apply_replace(part, replace, flags);
            } else if let Some(option) = flag.strip_prefix("rtcp-mux-") {
                apply_rtcp_mux(option, rtcp_mux, flags);
            } else {
                flags.unknown.push(flag.to_owned());
            }
            return;
        }
    };
    *known = true;
}

fn apply_replace(part: &str, replace: &mut Replace, flags: &mut Flags) {
    match part {
        "origin" => replace.origin = true,
        "session-connection" => replace.session_connection = true,
        _ => flags.unknown.push(format!("replace-{part}")),
    }
}

fn apply_rtcp_mux(option: &str, rtcp_mux: &mut RtcpMux, flags: &mut Flags) {
    let known = match option {
        "offer" => &mut rtcp_mux.offer,
        "demux" => &mut rtcp_mux.demux,
        "accept" => &mut rtcp_mux.accept,
        "reject" => &mut rtcp_mux.reject,
        "require" => &mut rtcp_mux.require,
        _ => {
            flags.unknown.push(format!("rtcp-mux-{option}"));
            return;
        }
    };
    *known = true;
}

/// See the module documentation for the mapping.
fn apply_ice(value: &str, ice: &mut Ice, flags: &mut Flags) {
    match value {
        "remove" | "force" | "default" => *ice = Ice::Remove,
        "optional" | "force-relay" => *ice = Ice::Keep,
        "trickle" | "ice2" | "no-lite" => flags.unknown.push(format!("ice-{value}")),
        lite if lite.starts_with("lite") => flags.unknown.push(format!("ice-{value}")),
        _ => {
            *ice = Ice::Remove;
            flags.unknown.push(format!("ice-{value}"));
        }
    }
}
