//! Decoding one folder's data blocks (CFDATA) into its uncompressed stream, in order,
//! with the MSZIP inflate spread over every core.
//!
//! MSZIP blocks are not independent in general: each block's deflate stream may refer up
//! to 32 KiB back into the previous blocks' output (makecab's cabs do). But a block that
//! does not is decoded identically without that history, and a block that does cannot be
//! decoded without it: zlib refuses a distance reaching before the start of its output
//! ("invalid distance too far back"). So worker threads inflate every block on its own,
//! speculatively; the thread that consumes the stream in order takes each result as it
//! is, and only a block whose speculative inflate failed is inflated again there, with the
//! real history. That second inflate is the verdict: a corrupt block is an error exactly
//! when it is one for a sequential reader. Our own writer (`usage::cab`) compresses every
//! block independently, so none of its blocks takes the second path.
//!
//! Blocks go to the workers round robin and come back on one channel per worker, so the
//! consumer reads them in order without a reordering buffer; at most [`IN_FLIGHT`] batches
//! of [`BATCH`] blocks per worker are out at a time, so memory stays flat whatever the folder's size.

use super::cabinet::{Checksum, Compression, Folder};
use flate2::{Decompress, FlushDecompress};
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc;

/// Blocks per message to a worker (about 256 KiB of output): one wake-up per batch
/// instead of per block.
const BATCH: usize = 8;
/// Batches in flight per worker: enough to keep a worker busy while the consumer hashes.
const IN_FLIGHT: usize = 2;
/// Below this many blocks (or 1 MiB of output wanted) threads cost more than they save.
const PARALLEL_MIN_BLOCKS: u64 = 32;
/// MSZIP's history window.
const WINDOW: usize = 32 * 1024;

fn invalid(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

/// One CFDATA block as read from the cabinet.
struct Block {
    index: u64,
    checksum: u32,
    /// Reserve bytes then compressed data (the checksum covers both).
    raw: Vec<u8>,
    reserve: usize,
    uncompressed: usize,
}

impl Block {
    fn data(&self) -> &[u8] {
        &self.raw[self.reserve..]
    }

    fn verify(&self) -> io::Result<()> {
        if self.checksum == 0 {
            return Ok(()); // "no checksum", as the format allows
        }
        let mut c = Checksum::default();
        c.update(&self.raw);
        let sizes = (self.data().len() as u32) | ((self.uncompressed as u32) << 16);
        let actual = c.value() ^ sizes;
        if actual != self.checksum {
            return Err(invalid(format!(
                "checksum error in data block {} (expected {:08x}, actual {actual:08x})",
                self.index, self.checksum
            )));
        }
        Ok(())
    }
}

/// Read the next CFDATA block (the reader is positioned at its header).
fn read_block(r: &mut impl Read, index: u64, reserve: usize) -> io::Result<Block> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let checksum = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let compressed = usize::from(u16::from_le_bytes([h[4], h[5]]));
    let uncompressed = usize::from(u16::from_le_bytes([h[6], h[7]]));
    let mut raw = vec![0u8; reserve + compressed];
    r.read_exact(&mut raw)?;
    Ok(Block {
        index,
        checksum,
        raw,
        reserve,
        uncompressed,
    })
}

/// Inflate one MSZIP block ("CK" + raw deflate) with `history` (the folder's previous
/// output, at most 32 KiB) as its dictionary.
fn inflate(d: &mut Decompress, block: &Block, history: &[u8]) -> io::Result<Vec<u8>> {
    let data = block.data();
    if data.len() < 2 || &data[..2] != b"CK" {
        return Err(invalid(format!(
            "MSZIP data block {} has no CK signature",
            block.index
        )));
    }
    d.reset(false);
    if !history.is_empty() {
        d.set_dictionary(history)
            .map_err(|e| invalid(format!("MSZIP history: {e}")))?;
    }
    let mut out = Vec::with_capacity(block.uncompressed);
    d.decompress_vec(&data[2..], &mut out, FlushDecompress::Finish)
        .map_err(|e| {
            invalid(format!(
                "MSZIP decompression failed in data block {}: {e}",
                block.index
            ))
        })?;
    if out.len() != block.uncompressed {
        return Err(invalid(format!(
            "data block {} inflates to {} bytes, not the {} its header states",
            block.index,
            out.len(),
            block.uncompressed
        )));
    }
    Ok(out)
}

/// A worker's answer for one block.
enum Decoded {
    Done(Vec<u8>),
    /// The block did not inflate on its own: it needs the history (or is corrupt).
    NeedsHistory(Block),
    Failed(io::Error),
}

/// Decode `folder` from its first block until at least `limit` uncompressed bytes have
/// been produced, giving `sink` each block's output in order with its offset in the
/// folder. Errors of the data (checksums, compression, sizes, a folder shorter than
/// `limit`) are `InvalidData`; errors of the reader are passed on as they are.
pub fn decode_folder<R: Read + Seek>(
    r: &mut R,
    folder: &Folder,
    data_reserve: usize,
    limit: u64,
    sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    if limit == 0 {
        return Ok(());
    }
    r.seek(SeekFrom::Start(folder.first_block))?;
    let blocks = u64::from(folder.blocks);
    let mut state = Stream {
        limit,
        produced: 0,
        recent: VecDeque::new(),
        inflater: Decompress::new(false),
        sink,
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let small = blocks < PARALLEL_MIN_BLOCKS || limit < PARALLEL_MIN_BLOCKS * WINDOW as u64;
    if folder.compression != Compression::MsZip || workers == 1 || small {
        for i in 0..blocks {
            let block = read_block(r, i, data_reserve)?;
            block.verify()?;
            let out = match folder.compression {
                Compression::MsZip => state.inflate_in_order(&block)?,
                _ => {
                    if block.data().len() != block.uncompressed {
                        return Err(invalid(format!(
                            "stored data block {i} holds {} bytes, not the {} its header states",
                            block.data().len(),
                            block.uncompressed
                        )));
                    }
                    let mut raw = block.raw;
                    raw.drain(..block.reserve);
                    raw
                }
            };
            if state.take(out)? {
                return Ok(());
            }
        }
        return state.short();
    }

    std::thread::scope(|scope| -> io::Result<()> {
        let mut jobs = Vec::with_capacity(workers);
        let mut results = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (job_tx, job_rx) = mpsc::channel::<Vec<Block>>();
            let (res_tx, res_rx) = mpsc::channel::<Vec<Decoded>>();
            scope.spawn(move || {
                let mut d = Decompress::new(false);
                for batch in job_rx {
                    let answers = batch
                        .into_iter()
                        .map(|block| match block.verify() {
                            Err(e) => Decoded::Failed(e),
                            Ok(()) => match inflate(&mut d, &block, &[]) {
                                Ok(out) => Decoded::Done(out),
                                Err(_) => Decoded::NeedsHistory(block),
                            },
                        })
                        .collect();
                    if res_tx.send(answers).is_err() {
                        return; // the consumer stopped (an error, or enough data)
                    }
                }
            });
            jobs.push(job_tx);
            results.push(res_rx);
        }
        let w = workers as u64;
        // Batches sent, blocks read, and their uncompressed total: reading stops at the
        // block that reaches `limit`, so a cab cut short after the data its files need
        // reads as it would in order.
        let (mut sent, mut read, mut ahead) = (0u64, 0u64, 0u64);
        let mut next = 0u64;
        loop {
            while read < blocks && ahead < limit && sent < next + w * IN_FLIGHT as u64 {
                let mut batch = Vec::with_capacity(BATCH);
                while batch.len() < BATCH && read < blocks && ahead < limit {
                    let block = read_block(r, read, data_reserve)?;
                    ahead += block.uncompressed as u64;
                    read += 1;
                    batch.push(block);
                }
                jobs[(sent % w) as usize]
                    .send(batch)
                    .map_err(|_| invalid("a decoding thread stopped"))?;
                sent += 1;
            }
            if next == sent {
                return state.short();
            }
            let answers = results[(next % w) as usize]
                .recv()
                .map_err(|_| invalid("a decoding thread stopped"))?;
            next += 1;
            for answer in answers {
                let out = match answer {
                    Decoded::Done(out) => out,
                    Decoded::Failed(e) => return Err(e),
                    Decoded::NeedsHistory(block) => state.inflate_in_order(&block)?,
                };
                if state.take(out)? {
                    return Ok(());
                }
            }
        }
        // Dropping `jobs` ends the workers; the scope waits for them.
    })
}

/// The in-order side: the sink, the position and the latest output (the history a
/// block may refer to, kept as the blocks themselves and joined only when needed).
struct Stream<'s> {
    limit: u64,
    produced: u64,
    /// The last blocks' output, newest last, covering at least 32 KiB when there is that much.
    recent: VecDeque<Vec<u8>>,
    inflater: Decompress,
    sink: &'s mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
}

impl Stream<'_> {
    /// Pass one block's output on; true once `limit` bytes have been produced.
    fn take(&mut self, out: Vec<u8>) -> io::Result<bool> {
        (self.sink)(self.produced, &out)?;
        self.produced += out.len() as u64;
        self.recent.push_back(out);
        // Drop the oldest blocks the window no longer reaches.
        while self.recent.len() > 1
            && self.recent.iter().skip(1).map(Vec::len).sum::<usize>() >= WINDOW
        {
            self.recent.pop_front();
        }
        Ok(self.produced >= self.limit)
    }

    /// Inflate `block` with the folder's real history: the authoritative decode.
    fn inflate_in_order(&mut self, block: &Block) -> io::Result<Vec<u8>> {
        let total: usize = self.recent.iter().map(Vec::len).sum();
        let mut skip = total.saturating_sub(WINDOW);
        let mut history = Vec::with_capacity(total.min(WINDOW));
        for b in &self.recent {
            let from = skip.min(b.len());
            history.extend_from_slice(&b[from..]);
            skip -= from;
        }
        inflate(&mut self.inflater, block, &history)
    }

    fn short(&self) -> io::Result<()> {
        Err(invalid(format!(
            "the folder's data ends after {} bytes, before the {} its files need",
            self.produced, self.limit
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// The `cab` crate's writer keeps one deflate stream over the folder, so its blocks
    /// refer back into earlier ones: the speculative inflate fails on some of them, and
    /// decoding still gives the exact bytes (the history path is exercised, not assumed).
    #[test]
    fn blocks_needing_history_take_the_in_order_path_and_decode_exactly() {
        let mut data = Vec::new();
        let mut i = 0u64;
        while data.len() < 2 << 20 {
            let _ = write!(data, "{i},Update,Installed,{},host{}\r\n", i % 97, i % 13);
            i += 1;
        }
        let mut builder = cab::CabinetBuilder::new();
        builder
            .add_folder(cab::CompressionType::MsZip)
            .add_file("a.csv");
        let mut w = builder.build(Cursor::new(Vec::new())).unwrap();
        w.next_file().unwrap().unwrap().write_all(&data).unwrap();
        let bytes = w.finish().unwrap().into_inner();

        let mut r = Cursor::new(&bytes);
        let ix = super::super::cabinet::read_index(&mut r).unwrap();
        let folder = &ix.folders[0];
        assert!(u64::from(folder.blocks) >= PARALLEL_MIN_BLOCKS);
        r.seek(SeekFrom::Start(folder.first_block)).unwrap();
        let mut d = Decompress::new(false);
        let mut need_history = 0;
        for i in 0..u64::from(folder.blocks) {
            let b = read_block(&mut r, i, ix.data_reserve).unwrap();
            if inflate(&mut d, &b, &[]).is_err() {
                need_history += 1;
            }
        }
        assert!(need_history > 0, "no block refers to its history");

        let mut out = Vec::new();
        decode_folder(
            &mut r,
            folder,
            ix.data_reserve,
            data.len() as u64,
            &mut |at, b| {
                assert_eq!(at, out.len() as u64);
                out.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, data);
        // Asking for more than the folder holds is an error of the data.
        let e = decode_folder(
            &mut r,
            folder,
            ix.data_reserve,
            data.len() as u64 + 1,
            &mut |_, _| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
