//! Streaming gzip (RFC 1952) on miniz_oxide's raw inflater: the header with its optional fields
//! (FEXTRA, FNAME, FCOMMENT, FHCRC checked), several members one after the other, each member's
//! CRC-32 and length checked at its end. Output goes out in slices of [`SLICE`] bytes, so
//! memory stays flat whatever the ratio of the input (a "decompression bomb" only makes output,
//! which streams).
use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::DocumentError;

/// Bytes inflated at a time (and the size of the output slice held).
pub const SLICE: usize = 64 * 1024;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xE0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The 10 fixed bytes of a member header (the first, or one after a complete member).
    Header,
    ExtraLen,
    Extra(u16),
    Name,
    Comment,
    HeaderCrc,
    Deflate,
    Trailer,
}

/// A gzip stream being inflated.
pub struct Gunzip {
    state: Box<InflateState>,
    stage: Stage,
    flags: u8,
    /// Bytes of a fixed-size part (header, extra length, header CRC, trailer) read so far.
    fixed: [u8; 10],
    fixed_len: usize,
    /// CRC-32 of the member's header so far (FHCRC), and of its decompressed data.
    header_crc: Crc32,
    crc: Crc32,
    size: u32,
    /// Members completed.
    members: u32,
    slice: Box<[u8]>,
}

impl Default for Gunzip {
    fn default() -> Self {
        Gunzip::new()
    }
}

impl Gunzip {
    pub fn new() -> Gunzip {
        Gunzip {
            state: InflateState::new_boxed(DataFormat::Raw),
            stage: Stage::Header,
            flags: 0,
            fixed: [0; 10],
            fixed_len: 0,
            header_crc: Crc32::new(),
            crc: Crc32::new(),
            size: 0,
            members: 0,
            slice: vec![0u8; SLICE].into_boxed_slice(),
        }
    }

    /// Reads up to `n` bytes of a fixed-size part into `fixed`; whether it is complete.
    fn fill(&mut self, input: &mut &[u8], n: usize) -> bool {
        let take = (n - self.fixed_len).min(input.len());
        self.fixed[self.fixed_len..self.fixed_len + take].copy_from_slice(&input[..take]);
        self.fixed_len += take;
        *input = &input[take..];
        if self.fixed_len == n {
            self.fixed_len = 0;
            true
        } else {
            false
        }
    }

    /// The stage after the header part that ends now.
    fn after(&self, done: Stage) -> Stage {
        let order = [(Stage::ExtraLen, FEXTRA), (Stage::Name, FNAME), (Stage::Comment, FCOMMENT), (Stage::HeaderCrc, FHCRC)];
        let from = match done {
            Stage::Header => 0,
            Stage::Extra(_) => 1,
            Stage::Name => 2,
            Stage::Comment => 3,
            _ => 4,
        };
        order.iter().skip(from).find(|(_, flag)| self.flags & flag != 0).map_or(Stage::Deflate, |(stage, _)| *stage)
    }

    /// Inflates `input`, handing each decompressed slice to `sink`.
    pub fn push(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<(), DocumentError>) -> Result<(), DocumentError> {
        loop {
            if input.is_empty() && self.stage != Stage::Deflate {
                return Ok(());
            }
            match self.stage {
                Stage::Header => {
                    let before = input;
                    let done = self.fill(&mut input, 10);
                    self.header_crc.update(&before[..before.len() - input.len()]);
                    if !done {
                        continue;
                    }
                    let h = self.fixed;
                    // Magic, and deflate (the only method gzip defines); no reserved flag.
                    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 || h[3] & RESERVED != 0 {
                        return Err(DocumentError::CorruptGzip);
                    }
                    self.flags = h[3];
                    self.stage = self.after(Stage::Header);
                }
                Stage::ExtraLen => {
                    let before = input;
                    let done = self.fill(&mut input, 2);
                    self.header_crc.update(&before[..before.len() - input.len()]);
                    if done {
                        let n = u16::from_le_bytes([self.fixed[0], self.fixed[1]]);
                        self.stage = if n == 0 { self.after(Stage::Extra(0)) } else { Stage::Extra(n) };
                    }
                }
                Stage::Extra(n) => {
                    let take = (n as usize).min(input.len());
                    self.header_crc.update(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u16;
                    self.stage = if left == 0 { self.after(Stage::Extra(0)) } else { Stage::Extra(left) };
                }
                Stage::Name | Stage::Comment => {
                    // Zero-terminated, any length: skipped, never held.
                    let end = memchr::memchr(0, input);
                    let take = end.map_or(input.len(), |e| e + 1);
                    self.header_crc.update(&input[..take]);
                    input = &input[take..];
                    if end.is_some() {
                        self.stage = self.after(self.stage);
                    }
                }
                Stage::HeaderCrc => {
                    if self.fill(&mut input, 2) {
                        let expected = u16::from_le_bytes([self.fixed[0], self.fixed[1]]);
                        if expected != (self.header_crc.value() & 0xffff) as u16 {
                            return Err(DocumentError::CorruptGzip);
                        }
                        self.stage = Stage::Deflate;
                    }
                }
                Stage::Deflate => {
                    let result = inflate(&mut self.state, input, &mut self.slice, MZFlush::None);
                    input = &input[result.bytes_consumed..];
                    let out = &self.slice[..result.bytes_written];
                    if !out.is_empty() {
                        self.crc.update(out);
                        self.size = self.size.wrapping_add(out.len() as u32);
                        sink(out)?;
                    }
                    match result.status {
                        Ok(MZStatus::StreamEnd) => {
                            self.stage = Stage::Trailer;
                            self.state.reset(DataFormat::Raw);
                        }
                        Ok(_) => {
                            // A full slice may leave more output pending without input.
                            if input.is_empty() && result.bytes_written < SLICE {
                                return Ok(());
                            }
                        }
                        // No progress without more input: wait for the next chunk.
                        Err(MZError::Buf) if input.is_empty() => return Ok(()),
                        Err(_) => return Err(DocumentError::CorruptGzip),
                    }
                }
                Stage::Trailer => {
                    if self.fill(&mut input, 8) {
                        let f = self.fixed;
                        let crc = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                        let size = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
                        if crc != self.crc.value() || size != self.size {
                            return Err(DocumentError::CorruptGzip);
                        }
                        self.members += 1;
                        self.crc = Crc32::new();
                        self.header_crc = Crc32::new();
                        self.size = 0;
                        self.stage = Stage::Header;
                    }
                }
            }
        }
    }

    /// The end of the input: at least one member, the last one complete.
    pub fn finish(&self) -> Result<(), DocumentError> {
        if self.members > 0 && self.stage == Stage::Header && self.fixed_len == 0 {
            Ok(())
        } else {
            Err(DocumentError::CorruptGzip)
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses), slicing by 8.
#[derive(Clone, Copy)]
pub struct Crc32(u32);

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

impl Crc32 {
    pub fn new() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for b in &mut chunks {
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][b[4] as usize]
                ^ t[2][b[5] as usize]
                ^ t[1][b[6] as usize]
                ^ t[0][b[7] as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ t[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        self.0 = c;
    }

    pub fn value(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip member of `data` stored in deflate "stored" blocks (no compressor needed in tests),
    /// with the header fields `flags` asks for.
    pub fn gzip_stored(data: &[u8], flags: u8) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 255];
        if flags & FEXTRA != 0 {
            out.extend_from_slice(&[4, 0, b'a', b'b', 2, 0]);
        }
        if flags & FNAME != 0 {
            out.extend_from_slice(b"report.txt\0");
        }
        if flags & FCOMMENT != 0 {
            out.extend_from_slice(b"a comment\0");
        }
        if flags & FHCRC != 0 {
            let mut c = Crc32::new();
            c.update(&out);
            out.extend_from_slice(&((c.value() & 0xffff) as u16).to_le_bytes());
        }
        let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(65535).collect() };
        for (i, block) in blocks.iter().enumerate() {
            out.push(u8::from(i + 1 == blocks.len()));
            let n = block.len() as u16;
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(block);
        }
        let mut c = Crc32::new();
        c.update(data);
        out.extend_from_slice(&c.value().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn gunzip_split(input: &[u8], splits: &[usize]) -> Result<Vec<u8>, DocumentError> {
        let mut g = Gunzip::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            g.push(&input[at..s], &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
            at = s;
        }
        g.finish()?;
        Ok(out)
    }

    #[test]
    fn crc32_matches_the_check_value() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xCBF4_3926);
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.value(), 0xCBF4_3926);
    }

    #[test]
    fn header_fields_and_members_at_every_split() {
        let data = b"order-id\tbuyer-name\n1\tJane\n";
        for flags in [0, FEXTRA, FNAME, FCOMMENT, FHCRC, FEXTRA | FNAME | FCOMMENT | FHCRC] {
            let mut gz = gzip_stored(data, flags);
            gz.extend_from_slice(&gzip_stored(b"2\tJoe\n", flags));
            for s in 0..=gz.len() {
                assert_eq!(gunzip_split(&gz, &[s]).expect("inflates"), b"order-id\tbuyer-name\n1\tJane\n2\tJoe\n", "flags {flags} split {s}");
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_input_is_refused() {
        let gz = gzip_stored(b"hello world", FNAME | FHCRC);
        for cut in 0..gz.len() {
            assert_eq!(gunzip_split(&gz[..cut], &[]), Err(DocumentError::CorruptGzip), "cut at {cut}");
        }
        let n = gz.len();
        for (at, what) in [(0, "magic"), (3, "flags"), (n - 8, "crc"), (n - 1, "size"), (n - 20, "data"), (22, "header crc")] {
            let mut bad = gz.clone();
            bad[at] ^= 0x40;
            assert_eq!(gunzip_split(&bad, &[]), Err(DocumentError::CorruptGzip), "{what}");
        }
        let mut trailing = gz.clone();
        trailing.extend_from_slice(b"garbage");
        assert_eq!(gunzip_split(&trailing, &[]), Err(DocumentError::CorruptGzip));
    }
}
