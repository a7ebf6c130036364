//! Raw deflate of one MSZIP block: the whole block in, one complete deflate stream out
//! (last block flagged final, ending on a byte boundary), as MSZIP wants.
//!
//! Two implementations behind one type, chosen when the library is built:
//! - Linux x86-64 (cargo feature `isal`, on by default): Intel's ISA-L (`isal-sys`, built
//!   from its bundled source, so it needs `nasm`, `make` and autotools at build time).
//!   Measured for issue 19 on the 2 million-row usage CSV in 32 KiB blocks on one core:
//!   ISA-L level 1 0.44 s and a 17.3% result, against zlib-rs level 1 0.59-0.65 s and
//!   21.8%, so Prepare spends less CPU and writes (and uploads) a cab about a fifth smaller.
//! - everywhere else (Windows, where `isal-sys` cannot be cross-built with mingw-w64 from
//!   its autotools build, and any build without the feature): zlib-rs through `flate2`.
//!
//! Either way the block is checked to have been taken whole and to fit the room MSZIP
//! allows; every reader (cabextract, gcab, the `cab` crate, ours) decodes both.
//!
//! ISA-L's level 1 output is not always byte-identical from run to run for the same input
//! (a few bytes in 60 MB differ in which matches it finds); every block still decodes to
//! its input (checked over 8 whole runs, 11,019 blocks each), and nothing here depends on
//! the compressed bytes being reproducible: the manifest's hash is of the CSV.

/// Room a compressed block may need beyond its input: a stored block's header for every
/// 64 KiB (one, at 32 KiB) and the final block's bits, with margin.
pub(super) const SLACK: usize = 64;

#[cfg(all(feature = "isal", target_os = "linux", target_arch = "x86_64"))]
pub(super) use isal::Deflater;
#[cfg(not(all(feature = "isal", target_os = "linux", target_arch = "x86_64")))]
pub(super) use zlib::Deflater;

#[cfg(all(feature = "isal", target_os = "linux", target_arch = "x86_64"))]
mod isal {
    use super::SLACK;
    use isal_sys::igzip_lib as sys;
    use std::io;

    /// ISA-L level 1. Level 0 compresses 17% faster on its own (0.37 s against 0.44 s),
    /// but Prepare took the same time with either (0.82 s, A/B) and level 0's cab is a
    /// quarter larger (21.4% of the CSV against 17.3%), which every upload pays for.
    const LEVEL: u32 = 1;

    /// One compressor per thread: the stream state and level 1's hash tables, reused for
    /// every block (each call starts a fresh stream; nothing carries between blocks).
    pub struct Deflater {
        stream: Box<sys::isal_zstream>,
        level_buf: Vec<u8>,
    }

    // SAFETY: the raw pointers inside `isal_zstream` are set for the length of one
    // `deflate` call and point only at that call's buffers and at `level_buf`, which the
    // Deflater owns; nothing is shared between threads.
    unsafe impl Send for Deflater {}

    impl Deflater {
        pub fn new() -> Self {
            Deflater {
                // SAFETY: isal_zstream is a plain C struct for which all-zero is valid;
                // `isal_deflate_stateless_init` sets every field it reads.
                stream: Box::new(unsafe { std::mem::zeroed() }),
                level_buf: vec![0; sys::ISAL_DEF_LVL1_DEFAULT as usize],
            }
        }

        pub fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
            let room = data.len() + SLACK;
            out.reserve(room);
            let at = out.len();
            let s = &mut *self.stream;
            // SAFETY: `s` is a valid, exclusively borrowed stream.
            unsafe { sys::isal_deflate_stateless_init(s) };
            s.level = LEVEL;
            s.level_buf = self.level_buf.as_mut_ptr();
            s.level_buf_size = self.level_buf.len() as u32;
            s.end_of_stream = 1;
            s.flush = sys::NO_FLUSH as u16;
            s.gzip_flag = sys::IGZIP_DEFLATE as u16;
            s.next_in = data.as_ptr().cast_mut();
            s.avail_in = data.len() as u32;
            // SAFETY: `reserve` made `room` bytes of spare capacity after `at`.
            s.next_out = unsafe { out.as_mut_ptr().add(at) };
            s.avail_out = room as u32;
            // SAFETY: ISA-L reads `avail_in` bytes from `next_in` (borrowed `data`; it
            // never writes through it), writes at most `avail_out` bytes at `next_out`
            // and uses `level_buf` as scratch; all three outlive the call.
            let rc = unsafe { sys::isal_deflate_stateless(s) };
            // Clear the pointers so nothing dangles once the call's buffers are gone.
            s.next_in = std::ptr::null_mut();
            s.next_out = std::ptr::null_mut();
            let done = rc == sys::COMP_OK as i32 && s.avail_in == 0;
            let Some(written) = room.checked_sub(s.avail_out as usize).filter(|_| done) else {
                return Err(io::Error::other(format!(
                    "ISA-L could not compress an MSZIP block (status {rc})"
                )));
            };
            // SAFETY: ISA-L initialised `written` bytes after `at`, within the reserve.
            unsafe { out.set_len(at + written) };
            Ok(())
        }
    }
}

// Built everywhere so its tests run on every platform; only used where ISA-L is not.
#[cfg_attr(
    all(feature = "isal", target_os = "linux", target_arch = "x86_64"),
    allow(dead_code)
)]
mod zlib {
    use super::SLACK;
    use flate2::{Compress, Compression, FlushCompress, Status};
    use std::io;

    /// zlib-rs level 1 (`deflate_quick`, static Huffman codes): about 370 MB/s per core
    /// on usage CSV, 22% of the input; level 3 ran at 150 MB/s (16%), level 6 at 125 MB/s
    /// (15%), and Prepare is CPU-bound, so the fastest level wins. libdeflate's level 1
    /// was measured too: a 24% smaller cab for 64% more instructions.
    const LEVEL: u32 = 1;

    /// One compressor per thread, reset for every block.
    pub struct Deflater {
        z: Compress,
    }

    impl Deflater {
        pub fn new() -> Self {
            Deflater {
                z: Compress::new(Compression::new(LEVEL), false),
            }
        }

        pub fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
            // `compress_vec` writes only into spare capacity.
            out.reserve(data.len() + SLACK);
            let at = out.len();
            self.z.reset();
            let status = self
                .z
                .compress_vec(data, out, FlushCompress::Finish)
                .map_err(io::Error::other)?;
            let whole = status == Status::StreamEnd && self.z.total_in() == data.len() as u64;
            if whole && out.len() - at <= data.len() + STORED_HEADER {
                return Ok(());
            }
            // Level 1 codes bytes it finds no match for with fixed Huffman codes, up to 9
            // bits each, so a block that does not compress can come out an eighth larger
            // than it went in (more than the room reserved above). A block that would be
            // larger than stored goes stored, as ISA-L does by itself.
            out.truncate(at);
            store(data, out);
            Ok(())
        }
    }

    /// A stored block's header: the BFINAL/BTYPE byte, LEN and NLEN.
    const STORED_HEADER: usize = 5;

    /// `data` (at most 65,535 bytes) as one final stored deflate block.
    fn store(data: &[u8], out: &mut Vec<u8>) {
        let len = data.len() as u16;
        out.push(0x01); // BFINAL = 1, BTYPE = 00 (stored); the rest of the byte is padding
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress, Status};
    use std::io;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(64 * 1024);
        let status = d
            .decompress_vec(stream, &mut out, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(
            status,
            Status::StreamEnd,
            "a complete, final deflate stream"
        );
        assert_eq!(
            d.total_in() as usize,
            stream.len(),
            "nothing after the stream"
        );
        out
    }

    /// Text that compresses, bytes that do not (stored blocks), one byte, nothing, a run
    /// of one value (ISA-L's special case), and a full block of each, through `deflate`.
    fn every_kind_of_block(mut deflate: impl FnMut(&[u8], &mut Vec<u8>) -> io::Result<()>) {
        let mut noise = Vec::with_capacity(32768);
        let mut x: u32 = 0x1234_5678;
        while noise.len() < 32768 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let text: Vec<u8> = b"7,Basic,5.00.9128.1000,ab12cd34ef,\"quoted, field\"\r\n"
            .iter()
            .copied()
            .cycle()
            .take(32768)
            .collect();
        let blocks: [&[u8]; 6] = [&text, &noise, b"x", b"", &[0u8; 32768], &noise[..1000]];
        for (i, data) in blocks.iter().enumerate() {
            // Into a buffer that already holds bytes: they must stay, the block follows.
            let mut out = b"CK".to_vec();
            deflate(data, &mut out).unwrap_or_else(|e| panic!("block {i}: {e}"));
            assert_eq!(&out[..2], b"CK");
            assert!(
                out.len() - 2 <= data.len() + 12,
                "block {i}: more than 12 bytes over its input"
            );
            assert_eq!(inflate(&out[2..]), *data, "block {i}");
        }
        let mut out = Vec::new();
        deflate(&text, &mut out).unwrap();
        assert!(out.len() < text.len() / 4, "text compresses: {}", out.len());
    }

    #[test]
    fn the_chosen_deflater_returns_every_kind_of_block_whole_within_the_room() {
        let mut d = Deflater::new();
        every_kind_of_block(|data, out| d.deflate(data, out));
    }

    #[test]
    fn zlib_returns_every_kind_of_block_whole_within_the_room() {
        let mut d = zlib::Deflater::new();
        every_kind_of_block(|data, out| d.deflate(data, out));
    }
}
