//! The cabinet's index: CFHEADER, the CFFOLDER entries (where each folder's data blocks
//! start, how many there are, how they are compressed) and the CFFILE entries (name,
//! folder, offset and size in the folder's uncompressed stream). MS-CAB as in
//! [MS-CAB] 2.1–2.4; names are decoded as the `cab` crate decodes them (lossy UTF-8), so a
//! name compares the same on either path.

use std::io::{self, Read, Seek, SeekFrom};

const SIGNATURE: &[u8; 4] = b"MSCF";
const FLAG_PREV_CABINET: u16 = 0x1;
const FLAG_NEXT_CABINET: u16 = 0x2;
const FLAG_RESERVE_PRESENT: u16 = 0x4;
/// The longest name (and previous/next cabinet string) MS-CAB allows, without its NUL.
const MAX_STRING: usize = 255;

/// `typeCompress` (low nibble; the LZX/Quantum window bits sit above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    MsZip,
    /// LZX or Quantum: read by the `cab` crate instead.
    Other,
}

#[derive(Debug, Clone)]
pub struct Folder {
    /// File offset of the first CFDATA.
    pub first_block: u64,
    pub blocks: u16,
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub struct FileEntry {
    pub name: String,
    pub folder: usize,
    /// Offset in the folder's uncompressed stream.
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub folders: Vec<Folder>,
    pub files: Vec<FileEntry>,
    /// `cbCFData`: reserved bytes in each CFDATA header.
    pub data_reserve: usize,
    /// Part of a multi-cabinet set (files continued from or into another cabinet).
    pub spanned: bool,
}

impl Index {
    /// The first file entry named `name` (as `cab::Cabinet::read_file` picks it).
    pub fn file(&self, name: &str) -> Option<usize> {
        self.files.iter().position(|f| f.name == name)
    }
}

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Skip a NUL-terminated string of at most [`MAX_STRING`] bytes; return it (lossy UTF-8).
fn read_string(r: &mut impl Read) -> io::Result<String> {
    let mut bytes = Vec::new();
    let mut b = [0u8];
    loop {
        r.read_exact(&mut b)?;
        if b[0] == 0 {
            break;
        }
        if bytes.len() == MAX_STRING {
            return Err(invalid("a name in the cabinet is longer than 255 bytes"));
        }
        bytes.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Read the index from the start of `r`. Every count and offset is checked against the
/// format's limits before it is used; nothing is allocated from an unchecked size.
pub fn read_index<R: Read + Seek>(r: &mut R) -> io::Result<Index> {
    r.seek(SeekFrom::Start(0))?;
    let mut h = [0u8; 36];
    r.read_exact(&mut h)?;
    if &h[0..4] != SIGNATURE {
        return Err(invalid("not a cabinet file (invalid file signature)"));
    }
    let (minor, major) = (h[24], h[25]);
    if major > 1 || (major == 1 && minor > 3) {
        return Err(invalid(format!(
            "version {major}.{minor} cabinet files are not supported"
        )));
    }
    let files_at = u64::from(u32_at(&h, 16));
    let n_folders = usize::from(u16_at(&h, 26));
    let n_files = usize::from(u16_at(&h, 28));
    let flags = u16_at(&h, 30);
    let (mut folder_reserve, mut data_reserve) = (0usize, 0usize);
    if flags & FLAG_RESERVE_PRESENT != 0 {
        let mut rs = [0u8; 4];
        r.read_exact(&mut rs)?;
        let header_reserve = u16_at(&rs, 0);
        if header_reserve > 60_000 {
            return Err(invalid(
                "the cabinet's header reserve is larger than 60,000 bytes",
            ));
        }
        folder_reserve = usize::from(rs[2]);
        data_reserve = usize::from(rs[3]);
        r.seek(SeekFrom::Current(i64::from(header_reserve)))?;
    }
    if flags & FLAG_PREV_CABINET != 0 {
        read_string(r)?;
        read_string(r)?;
    }
    if flags & FLAG_NEXT_CABINET != 0 {
        read_string(r)?;
        read_string(r)?;
    }
    let mut folders = Vec::with_capacity(n_folders);
    let mut entry = vec![0u8; 8 + folder_reserve];
    for _ in 0..n_folders {
        r.read_exact(&mut entry)?;
        let compression = match u16_at(&entry, 6) & 0x000f {
            0 => Compression::None,
            1 => Compression::MsZip,
            _ => Compression::Other,
        };
        folders.push(Folder {
            first_block: u64::from(u32_at(&entry, 0)),
            blocks: u16_at(&entry, 4),
            compression,
        });
    }
    r.seek(SeekFrom::Start(files_at))?;
    let mut files = Vec::with_capacity(n_files);
    let mut spanned = flags & (FLAG_PREV_CABINET | FLAG_NEXT_CABINET) != 0;
    let mut fixed = [0u8; 16];
    for _ in 0..n_files {
        r.read_exact(&mut fixed)?;
        let folder = u16_at(&fixed, 8);
        let name = read_string(r)?;
        // 0xFFFD..=0xFFFF: continued from/to another cabinet of a set.
        if folder >= 0xfffd {
            spanned = true;
        } else if usize::from(folder) >= folders.len() {
            return Err(invalid(
                "a file entry names a folder the cabinet does not have",
            ));
        }
        files.push(FileEntry {
            name,
            folder: usize::from(folder),
            offset: u64::from(u32_at(&fixed, 4)),
            size: u64::from(u32_at(&fixed, 0)),
        });
    }
    Ok(Index {
        folders,
        files,
        data_reserve,
        spanned,
    })
}

/// The CFDATA checksum ([MS-CAB] 3.1: XOR of the little-endian 32-bit words of the
/// reserve and data, the last 1–3 bytes taken in reverse order), continued over several
/// slices as if they were one.
#[derive(Default)]
pub struct Checksum {
    value: u32,
    /// Bytes of an unfinished word and how many there are.
    pending: u32,
    pending_len: u32,
}

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        while self.pending_len != 0 && !data.is_empty() {
            self.push_byte(data[0]);
            data = &data[1..];
        }
        let whole = data.len() / 4 * 4;
        let (words, tail) = data.split_at(whole);
        // XOR is associative: fold the words into independent lanes the compiler can
        // vectorise, then combine.
        let mut acc = [0u32; 8];
        let mut lanes = words.chunks_exact(32);
        for chunk in &mut lanes {
            for (i, a) in acc.iter_mut().enumerate() {
                *a ^= u32::from_le_bytes(chunk[i * 4..i * 4 + 4].try_into().unwrap());
            }
        }
        for w in lanes.remainder().chunks_exact(4) {
            acc[0] ^= u32::from_le_bytes(w.try_into().unwrap());
        }
        self.value ^= acc.iter().fold(0, |x, a| x ^ a);
        for &b in tail {
            self.push_byte(b);
        }
    }

    fn push_byte(&mut self, b: u8) {
        self.pending |= u32::from(b) << (8 * self.pending_len);
        self.pending_len += 1;
        if self.pending_len == 4 {
            self.value ^= self.pending;
            self.pending = 0;
            self.pending_len = 0;
        }
    }

    pub fn value(&self) -> u32 {
        let p = self.pending;
        match self.pending_len {
            0 => self.value,
            1 => self.value ^ p,
            2 => self.value ^ (p >> 8) ^ ((p & 0xff) << 8),
            _ => self.value ^ (p >> 16) ^ (p & 0xff00) ^ ((p & 0xff) << 16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition, as the `cab` crate computes it.
    fn reference(data: &[u8]) -> u32 {
        let mut c = Checksum::default();
        for &b in data {
            c.push_byte(b);
        }
        c.value()
    }

    #[test]
    fn checksum_matches_the_specification_example_and_every_split() {
        // The `cab` crate's own test vector.
        let mut c = Checksum::default();
        c.update(b"\x0e\0\x0e\0Hello, world!\n");
        assert_eq!(c.value(), 0x7f2e1a4c);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 31, 32, 33, 127, 128, 129, 300] {
            for split in [0, 1, 2, 3, 5, len / 2, len] {
                let split = split.min(len);
                let mut c = Checksum::default();
                c.update(&data[..split]);
                c.update(&data[split..len]);
                assert_eq!(
                    c.value(),
                    reference(&data[..len]),
                    "len {len} split {split}"
                );
            }
        }
    }

    #[test]
    fn an_index_from_the_cab_crate_example_is_read() {
        // The `cab` crate's two-file uncompressed example.
        let binary: &[u8] = b"MSCF\0\0\0\0\x80\0\0\0\0\0\0\0\
            \x2c\0\0\0\0\0\0\0\x03\x01\x01\0\x02\0\0\0\x34\x12\0\0\
            \x5b\0\0\0\x01\0\0\0\
            \x0e\0\0\0\0\0\0\0\0\0\x6c\x22\xe7\x59\x01\0hi.txt\0\
            \x0f\0\0\0\x0e\0\0\0\0\0\x6c\x22\xe7\x59\x01\0bye.txt\0\
            \0\0\0\0\x1d\0\x1d\0Hello, world!\nSee you later!\n";
        let ix = read_index(&mut std::io::Cursor::new(binary)).unwrap();
        assert_eq!(ix.folders.len(), 1);
        assert_eq!(ix.folders[0].first_block, 0x5b);
        assert_eq!(ix.folders[0].compression, Compression::None);
        assert_eq!(ix.files.len(), 2);
        assert_eq!(
            (
                ix.files[1].name.as_str(),
                ix.files[1].offset,
                ix.files[1].size
            ),
            ("bye.txt", 14, 15)
        );
        assert!(!ix.spanned);
        // Truncated anywhere in the index: an error, never a panic.
        for cut in 0..0x5b {
            assert!(read_index(&mut std::io::Cursor::new(&binary[..cut])).is_err());
        }
    }
}
