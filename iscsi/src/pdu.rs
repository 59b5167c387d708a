//! iSCSI PDUs (RFC 7143 §11): the 48-byte basic header segment, additional
//! header segments, the data segment, their CRC32C digests, and reading and
//! writing them on a stream with every length bounded before anything is
//! allocated.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const BHS_LEN: usize = 48;

/// Opcodes (§11.1.1): initiator to target.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TASK_MGMT_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    // Target to initiator.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TASK_MGMT_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (§11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

pub const RESERVED_TAG: u32 = 0xffff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("connection closed")]
    Closed,
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("data segment of {0} bytes is over the negotiated {1}")]
    TooLong(usize, usize),
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The header was read and is sound; the data was consumed but its
    /// digest is wrong: the PDU is rejected, the connection goes on.
    #[error("data digest mismatch")]
    DataDigest(Box<Pdu>),
}

/// One PDU as read or about to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl Default for Pdu {
    fn default() -> Pdu {
        Pdu {
            bhs: [0; BHS_LEN],
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl Pdu {
    pub fn new(opcode: u8) -> Pdu {
        let mut p = Pdu::default();
        p.bhs[0] = opcode & 0x3f;
        p
    }

    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    pub fn ahs_words(&self) -> usize {
        self.bhs[4] as usize
    }
    pub fn data_len_field(&self) -> usize {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]]) as usize
    }
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    pub fn set_lun(&mut self, lun: u64) {
        self.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }
    pub fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bhs[at..at + 8]);
        u64::from_be_bytes(b)
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// The header as sent: lengths filled in from `ahs` and `data`.
    fn header(&self) -> [u8; BHS_LEN] {
        let mut h = self.bhs;
        h[4] = (self.ahs.len().div_ceil(4)) as u8;
        let n = self.data.len() as u32;
        h[5..8].copy_from_slice(&n.to_be_bytes()[1..4]);
        h
    }

    /// The bytes on the wire, digests included when negotiated.
    pub fn encode(&self, header_digest: bool, data_digest: bool) -> Vec<u8> {
        let pad = padding(self.data.len());
        let ahs_pad = padding(self.ahs.len());
        let mut out = Vec::with_capacity(BHS_LEN + self.ahs.len() + 8 + self.data.len() + pad + 4);
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.ahs);
        out.extend(std::iter::repeat_n(0, ahs_pad));
        if header_digest {
            let d = crc32c::crc32c(&out);
            out.extend_from_slice(&d.to_le_bytes());
        }
        if !self.data.is_empty() {
            let start = out.len();
            out.extend_from_slice(&self.data);
            out.extend(std::iter::repeat_n(0, pad));
            if data_digest {
                let d = crc32c::crc32c(&out[start..]);
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        out
    }
}

pub fn padding(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What a reader accepts: the data segment the target declared it receives
/// (MaxRecvDataSegmentLength, or the login limit) and the digests.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub data_max: usize,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Reads one PDU. Lengths are checked against `limits` before the data is
/// allocated, so a peer announcing 16 MiB gets nothing pinned.
pub async fn read_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: ReadLimits,
) -> Result<Pdu, PduError> {
    let mut p = Pdu::default();
    match r.read_exact(&mut p.bhs).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PduError::Closed),
        Err(e) => return Err(e.into()),
    }
    let ahs_len = p.ahs_words() * 4;
    if ahs_len > 0 {
        p.ahs = vec![0u8; ahs_len];
        r.read_exact(&mut p.ahs).await?;
    }
    if limits.header_digest {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).await?;
        let mut h = crc32c::crc32c(&p.bhs);
        h = crc32c::crc32c_append(h, &p.ahs);
        if h != u32::from_le_bytes(d) {
            return Err(PduError::HeaderDigest);
        }
    }
    let len = p.data_len_field();
    if len > limits.data_max {
        return Err(PduError::TooLong(len, limits.data_max));
    }
    if len > 0 {
        let padded = len + padding(len);
        // Read into spare capacity: no zeroing of what the peer overwrites.
        p.data = Vec::with_capacity(padded);
        let got = (&mut *r)
            .take(padded as u64)
            .read_to_end(&mut p.data)
            .await?;
        if got < padded {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let mut ok = true;
        if limits.data_digest {
            let mut d = [0u8; 4];
            r.read_exact(&mut d).await?;
            ok = crc32c::crc32c(&p.data) == u32::from_le_bytes(d);
        }
        p.data.truncate(len);
        if !ok {
            return Err(PduError::DataDigest(Box::new(p)));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(d: bool) -> ReadLimits {
        ReadLimits {
            data_max: 1 << 20,
            header_digest: d,
            data_digest: d,
        }
    }

    proptest! {
        #[test]
        fn round_trip(op in 0u8..0x40, flags: u8, itt: u32, data in proptest::collection::vec(any::<u8>(), 0..600),
                      ahs_words in 0usize..3, digests: bool) {
            let mut p = Pdu::new(op);
            p.set_flags(flags);
            p.set_itt(itt);
            p.ahs = vec![7u8; ahs_words * 4];
            p.data = data;
            let bytes = p.encode(digests, digests);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let back = rt.block_on(read_pdu(&mut &bytes[..], limits(digests))).expect("decodes");
            let mut want = p.clone();
            want.bhs = p.header();
            prop_assert_eq!(back, want);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), digests: bool) {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
            let _ = rt.block_on(read_pdu(&mut &bytes[..], limits(digests)));
        }
    }

    #[test]
    fn huge_announced_segment_is_refused_before_allocation() {
        let mut p = Pdu::new(op::SCSI_CMD);
        p.bhs[5] = 0xff;
        p.bhs[6] = 0xff;
        p.bhs[7] = 0xff;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let got = rt.block_on(read_pdu(&mut &p.bhs[..], limits(false)));
        assert!(matches!(got, Err(PduError::TooLong(0xff_ffff, _))));
    }

    #[test]
    fn bad_data_digest_keeps_the_header() {
        let mut p = Pdu::new(op::NOP_OUT);
        p.data = b"hello".to_vec();
        let mut bytes = p.encode(true, true);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        match rt.block_on(read_pdu(&mut &bytes[..], limits(true))) {
            Err(PduError::DataDigest(back)) => assert_eq!(back.opcode(), op::NOP_OUT),
            other => panic!("{other:?}"),
        }
    }
}
