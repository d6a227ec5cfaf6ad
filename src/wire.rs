//! DNS messages over byte buffers (RFC 1035, RFC 6891).
//!
//! Reading is lazy: a [`Query`] is a set of offsets into the receive buffer,
//! found in one bounded pass, so the forwarding and cache paths touch bytes and
//! allocate nothing. Every length read from the packet is checked against the
//! buffer before it is used, and name decompression follows at most
//! [`MAX_POINTERS`] pointers, each strictly backwards, so hostile input ends in
//! a [`WireError`], never a panic or a loop.
//!
//! Writing goes through [`MessageBuilder`], which compresses owner names and
//! the names inside the RDATA of the RFC 1035 types, since answers that stay
//! under 512 bytes are the only ones musl-based clients can read.

use thiserror::Error;

use crate::name::{MAX_LABEL_LEN, MAX_NAME_LEN, Name};

pub const HEADER_LEN: usize = 12;
/// Bound on compression pointers followed while reading one name.
pub const MAX_POINTERS: usize = 32;
/// The UDP payload size the proxy advertises and uses towards upstreams
/// (the DNS flag day 2020 value: avoids IP fragmentation).
pub const OUR_UDP_SIZE: u16 = 1232;

/// Record types the proxy handles by name.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const DNAME: u16 = 39;
    pub const OPT: u16 = 41;
    pub const DS: u16 = 43;
    pub const RRSIG: u16 = 46;
    pub const NSEC: u16 = 47;
    pub const NSEC3: u16 = 50;
    pub const SVCB: u16 = 64;
    pub const HTTPS: u16 = 65;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const MAILB: u16 = 253;
    pub const MAILA: u16 = 254;
    pub const ANY: u16 = 255;
}

pub mod class {
    pub const IN: u16 = 1;
}

pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const YXDOMAIN: u8 = 6;
    /// Extended (12-bit) rcode 16, carried in the OPT record.
    pub const BADVERS: u16 = 16;
}

pub mod flags {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
    pub const OPCODE_MASK: u16 = 0x7800;
    pub const RCODE_MASK: u16 = 0x000f;
}

/// The DO bit in the OPT record's TTL field.
pub const EDNS_DO: u32 = 0x0000_8000;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("message shorter than its header")]
    ShortHeader,
    #[error("message ends inside a {0}")]
    Truncated(&'static str),
    #[error("label length byte {0:#04x} is not a length or a pointer")]
    BadLabelType(u8),
    #[error("compression pointer does not point backwards")]
    BadPointer,
    #[error("more than {MAX_POINTERS} compression pointers in one name")]
    TooManyPointers,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("more than one OPT record")]
    DuplicateOpt,
    #[error("OPT record not owned by the root name")]
    BadOpt,
    #[error("record count does not fit the message")]
    BadCount,
}

#[inline]
pub fn read_u16(buf: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(pos)?, *buf.get(pos + 1)?]))
}

#[inline]
pub fn read_u32(buf: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(pos..pos + 4)?.try_into().ok()?))
}

/// Accessors over the fixed 12-byte header.
#[derive(Clone, Copy)]
pub struct Header<'a>(pub &'a [u8]);

impl<'a> Header<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::ShortHeader);
        }
        Ok(Header(buf))
    }
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes([self.0[2], self.0[3]])
    }
    pub fn qr(&self) -> bool {
        self.flags() & flags::QR != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags() & flags::OPCODE_MASK) >> 11) as u8
    }
    pub fn tc(&self) -> bool {
        self.flags() & flags::TC != 0
    }
    pub fn rd(&self) -> bool {
        self.flags() & flags::RD != 0
    }
    pub fn cd(&self) -> bool {
        self.flags() & flags::CD != 0
    }
    pub fn rcode(&self) -> u8 {
        (self.flags() & flags::RCODE_MASK) as u8
    }
    pub fn qdcount(&self) -> u16 {
        u16::from_be_bytes([self.0[4], self.0[5]])
    }
    pub fn ancount(&self) -> u16 {
        u16::from_be_bytes([self.0[6], self.0[7]])
    }
    pub fn nscount(&self) -> u16 {
        u16::from_be_bytes([self.0[8], self.0[9]])
    }
    pub fn arcount(&self) -> u16 {
        u16::from_be_bytes([self.0[10], self.0[11]])
    }
}

pub fn set_id(buf: &mut [u8], id: u16) {
    buf[0..2].copy_from_slice(&id.to_be_bytes());
}

/// Skips a possibly compressed name at `pos`; returns the offset after it in
/// the record stream. Pointers are not followed, but their shape is checked.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, WireError> {
    let mut len_total = 0usize;
    loop {
        let b = *msg.get(pos).ok_or(WireError::Truncated("name"))?;
        match b & 0xc0 {
            0x00 => {
                if b == 0 {
                    return Ok(pos + 1);
                }
                len_total += 1 + b as usize;
                if len_total > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                pos += 1 + b as usize;
                if pos > msg.len() {
                    return Err(WireError::Truncated("name"));
                }
            }
            0xc0 => {
                let target = (read_u16(msg, pos).ok_or(WireError::Truncated("name"))? & 0x3fff) as usize;
                if target >= pos {
                    return Err(WireError::BadPointer);
                }
                return Ok(pos + 2);
            }
            _ => return Err(WireError::BadLabelType(b)),
        }
    }
}

/// Reads a possibly compressed name at `pos` into `out` as uncompressed wire
/// bytes, lowercased when `lower` is set. Returns the offset after the name in
/// the record stream.
pub fn read_name_into(msg: &[u8], pos: usize, out: &mut Vec<u8>, lower: bool) -> Result<usize, WireError> {
    let start_len = out.len();
    let mut cur = pos;
    let mut after: Option<usize> = None;
    let mut hops = 0usize;
    loop {
        let b = *msg.get(cur).ok_or(WireError::Truncated("name"))?;
        match b & 0xc0 {
            0x00 => {
                let len = b as usize;
                if len == 0 {
                    out.push(0);
                    if out.len() - start_len > MAX_NAME_LEN {
                        return Err(WireError::NameTooLong);
                    }
                    return Ok(after.unwrap_or(cur + 1));
                }
                debug_assert!(len <= MAX_LABEL_LEN);
                let label = msg.get(cur + 1..cur + 1 + len).ok_or(WireError::Truncated("name"))?;
                out.push(b);
                if lower {
                    out.extend(label.iter().map(u8::to_ascii_lowercase));
                } else {
                    out.extend_from_slice(label);
                }
                if out.len() - start_len >= MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                cur += 1 + len;
            }
            0xc0 => {
                let target = (read_u16(msg, cur).ok_or(WireError::Truncated("name"))? & 0x3fff) as usize;
                // Strictly backwards pointers cannot loop; the hop bound is a
                // second fence for cost.
                if target >= cur {
                    return Err(WireError::BadPointer);
                }
                hops += 1;
                if hops > MAX_POINTERS {
                    return Err(WireError::TooManyPointers);
                }
                if after.is_none() {
                    after = Some(cur + 2);
                }
                cur = target;
            }
            _ => return Err(WireError::BadLabelType(b)),
        }
    }
}

/// Reads a name into a new lowercase [`Name`].
pub fn read_name(msg: &[u8], pos: usize) -> Result<(Name, usize), WireError> {
    let mut v = Vec::with_capacity(64);
    let end = read_name_into(msg, pos, &mut v, true)?;
    Ok((Name::from_wire_lower(&v), end))
}

/// EDNS information from a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query: offsets into the client's buffer plus the few fields the
/// core needs. Building it allocates nothing.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub buf: &'a [u8],
    /// Offset of the end of the question section.
    pub question_end: usize,
    /// Offset of the end of the QNAME (start of QTYPE).
    pub qname_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
    /// The QNAME lowercased, uncompressed, in a fixed buffer.
    lower: [u8; MAX_NAME_LEN],
    lower_len: u8,
}

/// Why a query could not be read; the core turns it into FORMERR or silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// Not even a header: nothing to answer.
    NoHeader,
    /// A response (QR=1): never answered, so that two servers cannot bounce
    /// packets at each other.
    IsResponse,
    /// The header is readable but the rest is malformed: FORMERR.
    Malformed(WireError),
    /// QDCOUNT is not 1.
    QuestionCount,
}

impl<'a> Query<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Query<'a>, QueryError> {
        let h = Header::new(buf).map_err(|_| QueryError::NoHeader)?;
        if h.qr() {
            return Err(QueryError::IsResponse);
        }
        if h.qdcount() != 1 {
            return Err(QueryError::QuestionCount);
        }
        let mut lower = [0u8; MAX_NAME_LEN];
        let mut lower_len = 0usize;
        // Query names are uncompressed in practice; a pointer in the question
        // could only point into the header, so it is malformed.
        let mut pos = HEADER_LEN;
        loop {
            let b = *buf
                .get(pos)
                .ok_or(QueryError::Malformed(WireError::Truncated("question")))?;
            if b & 0xc0 != 0 {
                return Err(QueryError::Malformed(WireError::BadLabelType(b)));
            }
            let len = b as usize;
            if lower_len + 1 + len > MAX_NAME_LEN {
                return Err(QueryError::Malformed(WireError::NameTooLong));
            }
            let label = buf
                .get(pos..pos + 1 + len)
                .ok_or(QueryError::Malformed(WireError::Truncated("question")))?;
            for (i, &c) in label.iter().enumerate() {
                lower[lower_len + i] = if i == 0 { c } else { c.to_ascii_lowercase() };
            }
            lower_len += 1 + len;
            pos += 1 + len;
            if len == 0 {
                break;
            }
        }
        let qname_end = pos;
        let qtype = read_u16(buf, pos).ok_or(QueryError::Malformed(WireError::Truncated("question")))?;
        let qclass = read_u16(buf, pos + 2).ok_or(QueryError::Malformed(WireError::Truncated("question")))?;
        let question_end = pos + 4;
        let edns = find_opt(buf, &h, question_end).map_err(QueryError::Malformed)?;
        Ok(Query {
            buf,
            question_end,
            qname_end,
            qtype,
            qclass,
            edns,
            lower,
            lower_len: lower_len as u8,
        })
    }

    pub fn header(&self) -> Header<'a> {
        Header(self.buf)
    }
    pub fn id(&self) -> u16 {
        self.header().id()
    }
    /// The QNAME as the client sent it (letter case kept), uncompressed wire.
    pub fn qname_raw(&self) -> &'a [u8] {
        &self.buf[HEADER_LEN..self.qname_end]
    }
    /// The question section exactly as sent.
    pub fn question_raw(&self) -> &'a [u8] {
        &self.buf[HEADER_LEN..self.question_end]
    }
    /// The QNAME lowercased.
    pub fn qname_lower(&self) -> &[u8] {
        &self.lower[..self.lower_len as usize]
    }
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
    /// The largest UDP answer this client can take.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size as usize).clamp(512, 65535),
            None => 512,
        }
    }
}

/// Walks the answer, authority and additional sections looking for the OPT
/// record. Record data is skipped by its length, never interpreted.
fn find_opt(buf: &[u8], h: &Header<'_>, mut pos: usize) -> Result<Option<Edns>, WireError> {
    let an_ns = h.ancount() as usize + h.nscount() as usize;
    let ar = h.arcount() as usize;
    // Each record takes at least 11 bytes: a count that cannot fit is a lie.
    if (an_ns + ar) * 11 > buf.len().saturating_sub(pos) {
        return Err(WireError::BadCount);
    }
    let mut edns = None;
    for i in 0..an_ns + ar {
        let name_start = pos;
        pos = skip_name(buf, pos)?;
        let rtype = read_u16(buf, pos).ok_or(WireError::Truncated("record"))?;
        let rdlen = read_u16(buf, pos + 8).ok_or(WireError::Truncated("record"))? as usize;
        let rd_start = pos + 10;
        if rd_start + rdlen > buf.len() {
            return Err(WireError::Truncated("record data"));
        }
        if rtype == rtype::OPT && i >= an_ns {
            if edns.is_some() {
                return Err(WireError::DuplicateOpt);
            }
            if buf[name_start] != 0 {
                return Err(WireError::BadOpt);
            }
            let class = read_u16(buf, pos + 2).unwrap_or(0);
            let ttl = read_u32(buf, pos + 4).unwrap_or(0);
            edns = Some(Edns {
                udp_size: class,
                version: ((ttl >> 16) & 0xff) as u8,
                dnssec_ok: ttl & EDNS_DO != 0,
            });
        }
        pos = rd_start + rdlen;
    }
    Ok(edns)
}

/// One record with its names decompressed, as the proxy stores and re-emits
/// destination answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub owner: Name,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// RDATA with any embedded names of the RFC 1035 types decompressed.
    pub rdata: Vec<u8>,
}

impl Record {
    /// The target of a CNAME record.
    pub fn cname_target(&self) -> Option<Name> {
        if self.rtype != rtype::CNAME {
            return None;
        }
        crate::name::wire_is_valid(&self.rdata).then(|| Name::from_wire_lower(&self.rdata))
    }

    /// The SOA MINIMUM field (RFC 2308 negative TTL), if this is an SOA.
    pub fn soa_minimum(&self) -> Option<u32> {
        if self.rtype != rtype::SOA || self.rdata.len() < 4 {
            return None;
        }
        read_u32(&self.rdata, self.rdata.len() - 4)
    }
}

/// A response parsed into owned records (used on the routed path, where the
/// answer is reassembled, never on the forwarding path).
#[derive(Debug, Clone)]
pub struct Response {
    pub id: u16,
    pub flags: u16,
    pub qname: Name,
    pub qtype: u16,
    pub qclass: u16,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub edns: Option<Edns>,
}

impl Response {
    pub fn rcode(&self) -> u8 {
        (self.flags & flags::RCODE_MASK) as u8
    }
    pub fn truncated(&self) -> bool {
        self.flags & flags::TC != 0
    }

    /// Parses a full response. Additional-section records other than OPT are
    /// skipped: the proxy never passes glue along on synthesized answers.
    pub fn parse(buf: &[u8]) -> Result<Response, WireError> {
        let h = Header::new(buf)?;
        if h.qdcount() != 1 {
            return Err(WireError::BadCount);
        }
        let (qname, mut pos) = read_name(buf, HEADER_LEN)?;
        let qtype = read_u16(buf, pos).ok_or(WireError::Truncated("question"))?;
        let qclass = read_u16(buf, pos + 2).ok_or(WireError::Truncated("question"))?;
        pos += 4;
        let total = h.ancount() as usize + h.nscount() as usize + h.arcount() as usize;
        if total * 11 > buf.len().saturating_sub(pos) {
            return Err(WireError::BadCount);
        }
        let mut answers = Vec::with_capacity(h.ancount() as usize);
        let mut authority = Vec::new();
        let mut edns = None;
        for i in 0..total {
            let name_start = pos;
            let (owner, p) = read_name(buf, pos)?;
            let rt = read_u16(buf, p).ok_or(WireError::Truncated("record"))?;
            let cl = read_u16(buf, p + 2).ok_or(WireError::Truncated("record"))?;
            let ttl = read_u32(buf, p + 4).ok_or(WireError::Truncated("record"))?;
            let rdlen = read_u16(buf, p + 8).ok_or(WireError::Truncated("record"))? as usize;
            let rd_start = p + 10;
            let rd_end = rd_start + rdlen;
            if rd_end > buf.len() {
                return Err(WireError::Truncated("record data"));
            }
            pos = rd_end;
            let section = if i < h.ancount() as usize {
                0
            } else if i < h.ancount() as usize + h.nscount() as usize {
                1
            } else {
                2
            };
            if section == 2 {
                if rt == rtype::OPT {
                    if edns.is_some() {
                        return Err(WireError::DuplicateOpt);
                    }
                    if buf[name_start] != 0 {
                        return Err(WireError::BadOpt);
                    }
                    edns = Some(Edns {
                        udp_size: cl,
                        version: ((ttl >> 16) & 0xff) as u8,
                        dnssec_ok: ttl & EDNS_DO != 0,
                    });
                }
                continue;
            }
            let rdata = decompress_rdata(buf, rt, rd_start, rd_end)?;
            let rec = Record {
                owner,
                rtype: rt,
                class: cl,
                ttl: ttl & 0x7fff_ffff,
                rdata,
            };
            if section == 0 {
                answers.push(rec);
            } else {
                authority.push(rec);
            }
        }
        Ok(Response {
            id: h.id(),
            flags: h.flags(),
            qname,
            qtype,
            qclass,
            answers,
            authority,
            edns,
        })
    }
}

/// Copies RDATA, expanding compressed names for the types whose RDATA may be
/// compressed (RFC 3597 section 4: only the RFC 1035 types; SRV is expanded
/// too because some servers compress it anyway).
fn decompress_rdata(buf: &[u8], rt: u16, start: usize, end: usize) -> Result<Vec<u8>, WireError> {
    let rd = &buf[start..end];
    let mut out = Vec::with_capacity(rd.len() + 16);
    let name_in_rdata = |at: usize, out: &mut Vec<u8>| -> Result<usize, WireError> {
        let p = read_name_into(&buf[..end], at, out, false)?;
        Ok(p)
    };
    match rt {
        rtype::CNAME | rtype::NS | rtype::PTR | rtype::DNAME => {
            let p = name_in_rdata(start, &mut out)?;
            if p != end {
                return Err(WireError::Truncated("record data"));
            }
        }
        rtype::MX => {
            if rd.len() < 3 {
                return Err(WireError::Truncated("record data"));
            }
            out.extend_from_slice(&rd[..2]);
            let p = name_in_rdata(start + 2, &mut out)?;
            if p != end {
                return Err(WireError::Truncated("record data"));
            }
        }
        rtype::SRV => {
            if rd.len() < 7 {
                return Err(WireError::Truncated("record data"));
            }
            out.extend_from_slice(&rd[..6]);
            let p = name_in_rdata(start + 6, &mut out)?;
            if p != end {
                return Err(WireError::Truncated("record data"));
            }
        }
        rtype::SOA => {
            let p = name_in_rdata(start, &mut out)?;
            let p = name_in_rdata(p, &mut out)?;
            if p + 20 != end {
                return Err(WireError::Truncated("record data"));
            }
            out.extend_from_slice(&buf[p..end]);
        }
        _ => out.extend_from_slice(rd),
    }
    Ok(out)
}

/// Builds a message with name compression.
pub struct MessageBuilder {
    buf: Vec<u8>,
    /// Offsets of names already written, for compression targets. Each entry
    /// is the offset of a label start in `buf` whose name (through pointers)
    /// is uncompressed from there.
    names: Vec<u16>,
    counts: [u16; 4],
}

impl MessageBuilder {
    /// Starts a response: header with the given id and flags, then the
    /// question copied byte for byte from the client (so its letter case is
    /// echoed exactly).
    pub fn response(id: u16, flag_bits: u16, question_raw: &[u8]) -> MessageBuilder {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&flag_bits.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(question_raw);
        let mut b = MessageBuilder {
            buf,
            names: Vec::with_capacity(16),
            counts: [1, 0, 0, 0],
        };
        b.register_name(HEADER_LEN);
        b
    }

    /// Starts a query for `name`/`qtype` with the given id and flags.
    pub fn query(id: u16, flag_bits: u16, name: &Name, qtype: u16) -> MessageBuilder {
        let mut q = Vec::with_capacity(name.wire().len() + 4);
        q.extend_from_slice(name.wire());
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&class::IN.to_be_bytes());
        MessageBuilder::response(id, flag_bits, &q)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn register_name(&mut self, at: usize) {
        // Only offsets reachable by a 14-bit pointer are useful.
        let mut pos = at;
        while pos < 0x3fff {
            let b = self.buf[pos];
            if b == 0 || b & 0xc0 == 0xc0 {
                break;
            }
            self.names.push(pos as u16);
            pos += 1 + b as usize;
        }
    }

    /// Compares the uncompressed name `wire` with the (possibly compressed)
    /// name at `off` in the buffer, case-insensitively.
    fn name_at_equals(&self, mut off: usize, wire: &[u8]) -> bool {
        let mut i = 0usize;
        let mut hops = 0;
        loop {
            let b = self.buf[off];
            if b & 0xc0 == 0xc0 {
                hops += 1;
                if hops > MAX_POINTERS {
                    return false;
                }
                off = (u16::from_be_bytes([b, self.buf[off + 1]]) & 0x3fff) as usize;
                continue;
            }
            let len = b as usize;
            if wire.get(i) != Some(&b) {
                return false;
            }
            if len == 0 {
                return i + 1 == wire.len();
            }
            if !self.buf[off + 1..off + 1 + len].eq_ignore_ascii_case(&wire[i + 1..i + 1 + len]) {
                return false;
            }
            i += 1 + len;
            off += 1 + len;
        }
    }

    /// Writes a name, compressing against names written before.
    pub fn put_name(&mut self, wire: &[u8]) {
        let start = self.buf.len();
        let mut i = 0usize;
        while wire[i] != 0 {
            let suffix = &wire[i..];
            if let Some(&off) = self
                .names
                .iter()
                .find(|&&off| self.name_at_equals(off as usize, suffix))
            {
                self.buf.extend_from_slice(&(0xc000 | off).to_be_bytes());
                self.register_name(start);
                return;
            }
            let len = wire[i] as usize;
            self.buf.extend_from_slice(&wire[i..i + 1 + len]);
            i += 1 + len;
        }
        self.buf.push(0);
        self.register_name(start);
    }

    /// Writes an owner name that is the question name, as a pointer to it
    /// (so the client's letter case is kept there too).
    pub fn put_qname_pointer(&mut self) {
        self.buf
            .extend_from_slice(&(0xc000u16 | HEADER_LEN as u16).to_be_bytes());
    }

    fn put_record_head(&mut self, rt: u16, cl: u16, ttl: u32) -> usize {
        self.buf.extend_from_slice(&rt.to_be_bytes());
        self.buf.extend_from_slice(&cl.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        len_at
    }

    fn finish_rdata(&mut self, len_at: usize) {
        let len = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends a record to `section` (1 answer, 2 authority, 3 additional).
    /// `owner` of None means the question name.
    pub fn put_record(&mut self, section: usize, owner: Option<&Name>, rec_type: u16, cl: u16, ttl: u32, rdata: &[u8]) {
        match owner {
            Some(n) => self.put_name(n.wire()),
            None => self.put_qname_pointer(),
        }
        let len_at = self.put_record_head(rec_type, cl, ttl);
        self.put_rdata(rec_type, rdata);
        self.finish_rdata(len_at);
        self.counts[section] += 1;
    }

    /// Writes RDATA, compressing the embedded names of the RFC 1035 types.
    /// Falls back to the raw bytes whenever the data is not shaped as expected.
    fn put_rdata(&mut self, rt: u16, rd: &[u8]) {
        use crate::name::wire_is_valid;
        match rt {
            rtype::CNAME | rtype::NS | rtype::PTR if wire_is_valid(rd) => self.put_name(rd),
            rtype::MX if rd.len() > 2 && wire_is_valid(&rd[2..]) => {
                self.buf.extend_from_slice(&rd[..2]);
                self.put_name(&rd[2..]);
            }
            rtype::SOA => {
                let Some(m_end) = uncompressed_name_len(rd) else {
                    return self.buf.extend_from_slice(rd);
                };
                let Some(r_len) = uncompressed_name_len(&rd[m_end..]) else {
                    return self.buf.extend_from_slice(rd);
                };
                if m_end + r_len + 20 != rd.len() {
                    return self.buf.extend_from_slice(rd);
                }
                self.put_name(&rd[..m_end]);
                self.put_name(&rd[m_end..m_end + r_len]);
                self.buf.extend_from_slice(&rd[m_end + r_len..]);
            }
            _ => self.buf.extend_from_slice(rd),
        }
    }

    /// Appends an OPT record (our own: our buffer size, version 0, the DO bit
    /// as given, an extended rcode high part, and the given options).
    pub fn put_opt(&mut self, udp_size: u16, ext_rcode_hi: u8, dnssec_ok: bool, options: &[u8]) {
        self.buf.push(0);
        let ttl = ((ext_rcode_hi as u32) << 24) | if dnssec_ok { EDNS_DO } else { 0 };
        let len_at = self.put_record_head(rtype::OPT, udp_size, ttl);
        self.buf.extend_from_slice(options);
        self.finish_rdata(len_at);
        self.counts[3] += 1;
    }

    pub fn set_flags(&mut self, f: u16) {
        self.buf[2..4].copy_from_slice(&f.to_be_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        for (i, c) in self.counts.iter().enumerate() {
            self.buf[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
        self.buf
    }
}

/// Length of an uncompressed name at the start of `b`.
fn uncompressed_name_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    loop {
        let l = *b.get(pos)? as usize;
        if l & 0xc0 != 0 {
            return None;
        }
        pos += 1 + l;
        if l == 0 {
            return (pos <= MAX_NAME_LEN).then_some(pos);
        }
    }
}

/// An RFC 8914 extended DNS error option (code 15).
pub fn ede_option(info_code: u16, text: &str) -> Vec<u8> {
    let mut o = Vec::with_capacity(6 + text.len());
    o.extend_from_slice(&15u16.to_be_bytes());
    o.extend_from_slice(&((2 + text.len()) as u16).to_be_bytes());
    o.extend_from_slice(&info_code.to_be_bytes());
    o.extend_from_slice(text.as_bytes());
    o
}

/// Checks that a response answers the given question: same name (ignoring
/// case), type and class. An answer that fails this is dropped as spoofed.
pub fn response_matches(resp: &[u8], qname_lower: &[u8], qtype: u16, qclass: u16) -> bool {
    let Ok(h) = Header::new(resp) else {
        return false;
    };
    if !h.qr() || h.qdcount() != 1 {
        return false;
    }
    let end = HEADER_LEN + qname_lower.len();
    let Some(name) = resp.get(HEADER_LEN..end) else {
        return false;
    };
    if !name.eq_ignore_ascii_case(qname_lower) {
        return false;
    }
    read_u16(resp, end) == Some(qtype) && read_u16(resp, end + 2) == Some(qclass)
}

/// Builds the smallest answer that tells a UDP client to retry over TCP:
/// header with TC, the question, and the given OPT (if the client used EDNS).
pub fn truncated_reply(id: u16, flag_bits: u16, question_raw: &[u8], opt: Option<(u16, bool)>) -> Vec<u8> {
    let mut b = MessageBuilder::response(id, flag_bits | flags::TC, question_raw);
    if let Some((size, dnssec_ok)) = opt {
        b.put_opt(size, 0, dnssec_ok, &[]);
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_bytes(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let n = Name::parse(name).unwrap();
        let mut b = MessageBuilder::query(0x1234, flags::RD, &n, qtype);
        if let Some(sz) = edns {
            b.put_opt(sz, 0, true, &[]);
        }
        b.finish()
    }

    #[test]
    fn query_roundtrip() {
        let q = query_bytes("Example.COM", rtype::AAAA, Some(4096));
        let p = Query::parse(&q).unwrap();
        assert_eq!(p.qtype, rtype::AAAA);
        assert_eq!(p.qname_lower(), Name::parse("example.com").unwrap().wire());
        assert_eq!(p.edns.unwrap().udp_size, 4096);
        assert!(p.dnssec_ok());
        assert_eq!(p.udp_limit(), 4096);
    }

    #[test]
    fn rejects_pointer_loop() {
        // A name that is a pointer to itself.
        let mut m = vec![0u8; 12];
        m[5] = 1; // qdcount 1 in a response-shaped message
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(read_name(&m, 12).unwrap_err(), WireError::BadPointer);
    }

    #[test]
    fn compression_shrinks_and_reads_back() {
        let q = query_bytes("a.example.com", rtype::A, None);
        let p = Query::parse(&q).unwrap();
        let mut b = MessageBuilder::response(1, flags::QR, p.question_raw());
        let target = Name::parse("b.example.com").unwrap();
        b.put_record(1, None, rtype::CNAME, class::IN, 30, target.wire());
        b.put_record(1, Some(&target), rtype::A, class::IN, 60, &[192, 0, 2, 1]);
        let msg = b.finish();
        let r = Response::parse(&msg).unwrap();
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].cname_target().unwrap(), target);
        assert_eq!(r.answers[1].owner, target);
        // "b" + pointer to example.com: 2+2 bytes for CNAME rdata.
        assert!(msg.len() < 12 + 19 + 2 + 10 + 4 + 2 + 10 + 4 + 4);
    }
}
