//! A validated SDP: `sdp-types`' model of it, mapped back onto the lines of
//! the original text, with what the relay needs already extracted.
//!
//! `sdp-types` parses but does not say where in the text each value came
//! from. Its structure is simple enough to recover that: the first `m=`
//! line ends the session section and every `m=` line opens a media
//! section (RFC 8866 §5), and within a section the k-th `a=` (or `c=`)
//! line is the k-th attribute (or connection) it parsed. We scan the lines
//! the same way and check that the counts agree, so each line index below
//! carries the meaning `sdp-types` gave that line.

use std::{net::IpAddr, ops::Range};

use sdp_types::{AddrType, ConnectionAddress, ConnectionAddressError, NetType, ParserError};

use super::{
    Direction, RtcpAttr,
    error::{AddressProblem, SdpError, excerpt},
    text::{self, Line},
};

/// ICE attributes (RFC 8839 §5; `end-of-candidates`: RFC 8840 §8.1). The
/// relay does not terminate ICE (see DESIGN.md non-goals), so it reports
/// them and strips them on request.
const ICE_ATTRIBUTES: [&str; 9] = [
    "candidate",
    "remote-candidates",
    "ice-lite",
    "ice-mismatch",
    "ice-ufrag",
    "ice-pwd",
    "ice-pacing",
    "ice-options",
    "end-of-candidates",
];

pub(super) struct Document<'a> {
    pub(super) lines: Vec<Line<'a>>,
    /// Terminator for lines the relay adds.
    pub(super) eol: &'static str,
    pub(super) origin: Origin,
    pub(super) session: Section,
    pub(super) media: Vec<Media>,
}

/// The `o=` line (RFC 8866 §5.2).
pub(super) struct Origin {
    /// Index into [`Document::lines`].
    pub(super) line: usize,
    pub(super) version: u64,
    /// The unicast-address, if it is an IN IP4/IP6 literal of the family
    /// its addrtype says.
    pub(super) address: Option<IpAddr>,
    /// Byte ranges in the line's text of sess-version, nettype, addrtype
    /// and unicast-address.
    pub(super) version_at: Range<usize>,
    pub(super) nettype_at: Range<usize>,
    pub(super) addrtype_at: Range<usize>,
    pub(super) address_at: Range<usize>,
}

/// One `m=` section (RFC 8866 §5.14).
pub(super) struct Media {
    /// Index of the `m=` line.
    pub(super) line: usize,
    /// Index of the media-level `i=` line.
    pub(super) title: Option<usize>,
    pub(super) kind: String,
    pub(super) port: u16,
    /// Byte range of the port in the `m=` line's text (without `/<count>`).
    pub(super) port_at: Range<usize>,
    pub(super) protocol: String,
    /// The clock rate of the first (preferred) payload format, from its
    /// `a=rtpmap` or, for a static payload type, RFC 3551's tables.
    pub(super) clock_rate: Option<u32>,
    /// SSRCs the section announces (`a=ssrc`, RFC 5576 §4.1).
    pub(super) ssrcs: Vec<u32>,
    pub(super) section: Section,
}

/// The lines of the session section or of one media section.
pub(super) struct Section {
    /// Index of the section's last non-empty line.
    pub(super) last: usize,
    /// The `c=` line; at most one (sdp-types enforces it at session level,
    /// we at media level).
    pub(super) connection: Option<Located<IpAddr>>,
    /// Every `a=` line, in order.
    pub(super) attributes: Vec<Located<Attr>>,
}

/// A value and the index of the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Located<T> {
    pub(super) line: usize,
    pub(super) value: T,
}

/// What an attribute line means to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attr {
    /// `a=rtcp` at media level (RFC 3605 §2.1).
    Rtcp(RtcpAttr),
    /// `a=rtcp-mux` at media level (RFC 5761 §5.1.1).
    RtcpMux,
    Direction(Direction),
    Ice,
    Other,
}

impl Section {
    /// The first direction attribute; RFC 8866 §6.7 allows one.
    pub(super) fn direction(&self) -> Option<Direction> {
        self.attributes.iter().find_map(|attr| match attr.value {
            Attr::Direction(direction) => Some(direction),
            _ => None,
        })
    }

    pub(super) fn rtcp(&self) -> Option<Located<RtcpAttr>> {
        self.attributes.iter().find_map(|attr| match attr.value {
            Attr::Rtcp(rtcp) => Some(Located {
                line: attr.line,
                value: rtcp,
            }),
            _ => None,
        })
    }

    pub(super) fn has(&self, what: Attr) -> bool {
        self.attributes.iter().any(|attr| attr.value == what)
    }
}

/// Line indices of one section, before they are matched with `sdp-types`.
#[derive(Default)]
struct Scanned {
    first: usize,
    last: usize,
    origin: Option<usize>,
    title: Option<usize>,
    connections: Vec<usize>,
    attributes: Vec<usize>,
}

impl<'a> Document<'a> {
    pub(super) fn parse(sdp: &'a [u8]) -> Result<Self, SdpError> {
        if sdp.iter().all(u8::is_ascii_whitespace) {
            return Err(SdpError::Empty);
        }
        let utf8 = std::str::from_utf8(sdp).map_err(|error| not_utf8(sdp, error.valid_up_to()))?;
        let lines = text::split_lines(utf8);
        let parsed =
            sdp_types::Session::parse(sdp).map_err(|source| parse_error(&lines, source))?;

        let (session_lines, media_lines) = scan(&lines)?;
        let origin = origin(&lines, &session_lines, &parsed)?;
        let session = section(
            &lines,
            &session_lines,
            parsed.connection.as_slice(),
            &parsed.attributes,
            false,
        )?;
        if media_lines.len() != parsed.medias.len() {
            return Err(SdpError::Inconsistent {
                line: media_lines.first().map_or(1, |m| m.first + 1),
            });
        }
        let media = media_lines
            .iter()
            .zip(&parsed.medias)
            .map(|(scanned, model)| media(&lines, scanned, model))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            eol: text::eol_style(&lines),
            lines,
            origin,
            session,
            media,
        })
    }
}

/// The start of line `index`, for an error message.
fn quote(lines: &[Line<'_>], index: usize) -> String {
    lines
        .get(index)
        .map(|line| excerpt(line.text))
        .unwrap_or_default()
}

fn not_utf8(sdp: &[u8], valid_up_to: usize) -> SdpError {
    let before = sdp.get(..valid_up_to).unwrap_or_default();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    SdpError::NotUtf8 {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        column: valid_up_to.saturating_sub(line_start) + 1,
    }
}

fn parse_error(lines: &[Line<'_>], source: ParserError) -> SdpError {
    use ParserError as E;
    let line = match source {
        E::NoVersion => {
            // The first non-empty line is not `v=`.
            let index = lines
                .iter()
                .position(|line| !line.text.is_empty())
                .unwrap_or(0);
            return SdpError::NoVersion {
                line: index + 1,
                text: quote(lines, index),
            };
        }
        E::InvalidLineFormat(n, _)
        | E::InvalidFieldEncoding(n, _)
        | E::InvalidFieldFormat(n, _)
        | E::MissingField(n, _)
        | E::FieldTrailingData(n, _)
        | E::InvalidVersion(n, _)
        | E::MultipleVersions(n)
        | E::MultipleOrigins(n)
        | E::MultipleSessionNames(n)
        | E::MultipleSessionDescription(n)
        | E::MultipleUris(n)
        | E::MultipleConnections(n)
        | E::MultipleTimeZones(n)
        | E::MultipleMediaTitles(n)
        | E::MultipleKeys(n)
        | E::RepeatWithoutTime(n) => Some(n),
        // Deprecated variants sdp-types no longer returns.
        _ => None,
    };
    SdpError::Parse {
        line,
        text: line
            .map(|n| quote(lines, n.saturating_sub(1)))
            .unwrap_or_default(),
        source,
    }
}

/// Group line indices into the session section and the media sections,
/// as `sdp-types` does: empty lines are skipped, `m=` opens a section.
fn scan(lines: &[Line<'_>]) -> Result<(Scanned, Vec<Scanned>), SdpError> {
    let mut session = Scanned::default();
    let mut media: Vec<Scanned> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.text.is_empty() {
            continue;
        }
        let Some(key) = line.key() else {
            return Err(SdpError::Inconsistent { line: index + 1 });
        };
        if key == b'm' {
            media.push(Scanned {
                first: index,
                ..Scanned::default()
            });
        }
        let at_media_level = !media.is_empty();
        let current = match media.last_mut() {
            Some(current) => current,
            None => &mut session,
        };
        current.last = index;
        match key {
            b'o' if !at_media_level => current.origin = Some(index),
            // A session-level i= is free text the relay never edits.
            b'i' if at_media_level => current.title = Some(index),
            b'c' => current.connections.push(index),
            b'a' => current.attributes.push(index),
            _ => {}
        }
    }
    Ok((session, media))
}

fn origin(
    lines: &[Line<'_>],
    scanned: &Scanned,
    parsed: &sdp_types::Session,
) -> Result<Origin, SdpError> {
    // sdp-types invents an origin when there is none; we need the real one.
    let line = scanned.origin.ok_or(SdpError::NoOrigin)?;
    let value = lines.get(line).and_then(Line::value);
    // Fields of the whole line: "o=" is two bytes.
    let fields: Vec<Range<usize>> = value
        .map(text::fields)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.start + 2..r.end + 2)
        .collect();
    let [_, _, version_at, nettype_at, addrtype_at, address_at] = fields.as_slice() else {
        return Err(SdpError::Inconsistent { line: line + 1 });
    };
    let model = &parsed.origin;
    let address = model
        .unicast_address
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| model.nettype == NetType::In && model.addrtype == family(*ip));
    Ok(Origin {
        line,
        version: model.sess_version,
        address,
        version_at: version_at.clone(),
        nettype_at: nettype_at.clone(),
        addrtype_at: addrtype_at.clone(),
        address_at: address_at.clone(),
    })
}

fn media(
    lines: &[Line<'_>],
    scanned: &Scanned,
    model: &sdp_types::Media,
) -> Result<Media, SdpError> {
    let line = scanned.first;
    let inconsistent = SdpError::Inconsistent { line: line + 1 };
    let Some(port_at) = lines.get(line).and_then(|l| port_range(l.text)) else {
        return Err(inconsistent);
    };
    let port_text = lines.get(line).and_then(|l| l.text.get(port_at.clone()));
    if port_text.and_then(|p| p.parse::<u16>().ok()) != Some(model.port) {
        return Err(inconsistent);
    }
    if let Some(count) = model.num_ports.filter(|&n| n != 1) {
        return Err(SdpError::PortCount {
            line: line + 1,
            text: quote(lines, line),
            count,
        });
    }
    Ok(Media {
        line,
        title: scanned.title,
        kind: model.media.clone(),
        port: model.port,
        port_at,
        protocol: model.proto.clone(),
        clock_rate: clock_rate(model),
        ssrcs: ssrcs(model),
        section: section(lines, scanned, &model.connections, &model.attributes, true)?,
    })
}

/// The SSRCs of a media section's `a=ssrc:<ssrc-id> <attribute>` lines
/// (RFC 5576 §4.1), each once; a malformed id is skipped (the line passes
/// through untouched either way).
fn ssrcs(model: &sdp_types::Media) -> Vec<u32> {
    let mut out = Vec::new();
    for a in &model.attributes {
        if !a.attribute.eq_ignore_ascii_case("ssrc") {
            continue;
        }
        let id = a
            .value
            .as_deref()
            .and_then(|v| v.split_ascii_whitespace().next());
        if let Some(x) = id.and_then(|s| s.parse::<u32>().ok())
            && !out.contains(&x)
        {
            out.push(x);
        }
    }
    out
}

/// The RTP clock rate of an `m=` line's first payload format: its
/// `a=rtpmap` (RFC 8866 §6.6, parsed by sdp-types), else the static
/// payload types' rates (RFC 3551 §6, tables 4 and 5). `None` for a
/// dynamic type without a valid rtpmap and for non-RTP media.
fn clock_rate(model: &sdp_types::Media) -> Option<u32> {
    if !model.proto.to_ascii_uppercase().contains("RTP/") {
        return None;
    }
    let pt: u8 = model.fmt.split_ascii_whitespace().next()?.parse().ok()?;
    let mapped = model
        .attributes
        .iter()
        .filter(|a| a.attribute.eq_ignore_ascii_case("rtpmap"))
        .filter_map(|a| a.value.as_deref()?.parse::<sdp_types::RtpMap>().ok())
        .find(|m| m.payload_type == pt)
        .map(|m| m.clock_rate)
        .filter(|&hz| hz > 0);
    mapped.or(match pt {
        0 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 13 | 15 | 18 => Some(8_000),
        6 => Some(16_000),
        10 | 11 => Some(44_100),
        16 => Some(11_025),
        17 => Some(22_050),
        14 | 25 | 26 | 28 | 31 | 32 | 33 | 34 => Some(90_000),
        _ => None,
    })
}

/// Where the port is in an `m=<media> <port>[/<count>] <proto> <fmt>...`
/// line. sdp-types splits it on single spaces, so do we.
fn port_range(m_line: &str) -> Option<Range<usize>> {
    let value = m_line.strip_prefix("m=")?;
    let start = value.find(' ')? + 1;
    let rest = value.get(start..)?;
    let len = rest.find([' ', '/']).unwrap_or(rest.len());
    Some(start + 2..start + 2 + len)
}

fn section(
    lines: &[Line<'_>],
    scanned: &Scanned,
    connections: &[sdp_types::Connection],
    attributes: &[sdp_types::Attribute],
    media_level: bool,
) -> Result<Section, SdpError> {
    let inconsistent = SdpError::Inconsistent {
        line: scanned.first + 1,
    };
    if scanned.connections.len() != connections.len()
        || scanned.attributes.len() != attributes.len()
    {
        return Err(inconsistent);
    }
    if let Some(&second) = scanned.connections.get(1) {
        return Err(SdpError::Duplicate {
            line: second + 1,
            text: quote(lines, second),
            what: "c= line",
        });
    }
    let connection = match (scanned.connections.first(), connections.first()) {
        (Some(&line), Some(model)) => Some(Located {
            line,
            value: checked_ip(
                Some(&model.nettype),
                Some(&model.addrtype),
                model.try_address(),
            )
            .map_err(|problem| address_error(lines, line, problem))?,
        }),
        _ => None,
    };
    let mut located = Vec::with_capacity(attributes.len());
    let mut rtcp_seen = false;
    for (&line, model) in scanned.attributes.iter().zip(attributes) {
        let value = classify(lines, line, model, media_level)?;
        if matches!(value, Attr::Rtcp(_)) {
            if rtcp_seen {
                return Err(SdpError::Duplicate {
                    line: line + 1,
                    text: quote(lines, line),
                    what: "a=rtcp attribute",
                });
            }
            rtcp_seen = true;
        }
        located.push(Located { line, value });
    }
    Ok(Section {
        last: scanned.last,
        connection,
        attributes: located,
    })
}

fn classify(
    lines: &[Line<'_>],
    line: usize,
    model: &sdp_types::Attribute,
    media_level: bool,
) -> Result<Attr, SdpError> {
    let name = model.attribute.as_str();
    if media_level && name.eq_ignore_ascii_case("rtcp") {
        return rtcp(lines, line, model.value.as_deref().unwrap_or_default()).map(Attr::Rtcp);
    }
    if media_level && name.eq_ignore_ascii_case("rtcp-mux") {
        return Ok(Attr::RtcpMux);
    }
    if let Ok(direction) = name.parse::<sdp_types::Direction>() {
        return Ok(Attr::Direction(match direction {
            sdp_types::Direction::SendRecv => Direction::SendRecv,
            sdp_types::Direction::SendOnly => Direction::SendOnly,
            sdp_types::Direction::RecvOnly => Direction::RecvOnly,
            sdp_types::Direction::Inactive => Direction::Inactive,
        }));
    }
    if ICE_ATTRIBUTES
        .iter()
        .any(|ice| name.eq_ignore_ascii_case(ice))
    {
        return Ok(Attr::Ice);
    }
    Ok(Attr::Other)
}

/// `a=rtcp:<port> [IN IP4|IP6 <address>]` (RFC 3605 §2.1), parsed by
/// sdp-types.
fn rtcp(lines: &[Line<'_>], line: usize, value: &str) -> Result<RtcpAttr, SdpError> {
    let model = value
        .parse::<sdp_types::Rtcp>()
        .map_err(|source| SdpError::Rtcp {
            line: line + 1,
            text: quote(lines, line),
            source,
        })?;
    let address = model
        .try_address()
        .map(|parsed| checked_ip(model.nettype.as_ref(), model.addrtype.as_ref(), parsed))
        .transpose()
        .map_err(|problem| address_error(lines, line, problem))?;
    Ok(RtcpAttr {
        port: model.port,
        address,
    })
}

/// The IP address of a `<nettype> <addrtype> <address>` triple, if the
/// relay can send to it: IN, IP4 or IP6, a literal of that family. A
/// multicast TTL or count suffix (RFC 8866 §5.7) is accepted and ignored.
fn checked_ip(
    nettype: Option<&NetType>,
    addrtype: Option<&AddrType>,
    parsed: Result<ConnectionAddress, ConnectionAddressError>,
) -> Result<IpAddr, AddressProblem> {
    if nettype != Some(&NetType::In) {
        return Err(AddressProblem::NetType {
            nettype: nettype.map(NetType::as_str).unwrap_or_default().to_owned(),
        });
    }
    let want_v4 = match addrtype {
        Some(AddrType::Ip4) => true,
        Some(AddrType::Ip6) => false,
        other => {
            return Err(AddressProblem::AddrType {
                addrtype: other.map(AddrType::as_str).unwrap_or_default().to_owned(),
            });
        }
    };
    let ip = parsed
        .map_err(|source| AddressProblem::NotIp { source })?
        .ip;
    if ip.is_ipv4() != want_v4 {
        return Err(AddressProblem::Family {
            addrtype: if want_v4 { "IP4" } else { "IP6" },
            address: ip,
        });
    }
    Ok(ip)
}

fn address_error(lines: &[Line<'_>], line: usize, problem: AddressProblem) -> SdpError {
    SdpError::Address {
        line: line + 1,
        text: quote(lines, line),
        problem,
    }
}

/// The addrtype that goes with an address (RFC 8866 §5.7).
pub(super) fn family(ip: IpAddr) -> AddrType {
    match ip {
        IpAddr::V4(_) => AddrType::Ip4,
        IpAddr::V6(_) => AddrType::Ip6,
    }
}
