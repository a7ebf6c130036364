//! Writing the usage cab (MS-CAB, MSZIP), streaming, with MSZIP blocks compressed in
//! parallel on every core.
//!
//! Layout: folder 0 holds `UsageData.csv` alone; folder 1 holds `SiteVersion.txt` and
//! `manifest.json`. The CSV is streamed straight into the cab while it is hashed, so no
//! temporary copy exists; the manifest (which needs the CSV's size and SHA-256) comes
//! after it. A separate folder for the manifest lets readers get it without decompressing
//! the data, and keeps the CSV folder within the cab format's 65,535 data blocks.
//!
//! Why not the `cab` crate's writer: it compresses one block at a time on one core, which
//! made Prepare slower than `gcab -z`. MSZIP blocks (≤ 32,768 uncompressed bytes, each
//! `"CK"` + a raw deflate stream ending at the block boundary) do not need each other's
//! history, so each is compressed independently by a pool of worker threads (four blocks
//! per hand-over, which halved the thread wake-ups) and written in order. At most a few
//! jobs per worker are in flight, so memory stays flat. The header, folder and file
//! entries are written as placeholders first and rewritten once the sizes are known (the
//! output is seekable). Each CFDATA block carries its checksum, so `cabextract -t` checks
//! every block. The `cab` crate still reads cabs ([`super::reader`]).

use super::csv::map_io;
use super::manifest::{SITE_VERSION_FILE, USAGE_DATA_FILE, USAGE_MANIFEST_FILE};
use super::UsageFile;
use crate::error::Result;
use crate::hashing::HashingWriter;
use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::mpsc;

mod deflate;

/// Uncompressed bytes per MSZIP block (the format's maximum; readers expect full blocks
/// except the last of a folder).
const BLOCK: usize = 32768;
/// CFFOLDER counts data blocks in 16 bits.
const MAX_FOLDER_BLOCKS: u64 = 65535;
/// MSZIP blocks per job handed to a worker: one hand-over (and thread wake-up) per four
/// blocks rather than per block.
const BLOCKS_PER_JOB: usize = 4;
/// Uncompressed bytes per job.
const JOB: usize = BLOCK * BLOCKS_PER_JOB;
/// Jobs in flight per worker thread: enough to keep every core busy, small enough that
/// memory stays flat (each job is ≤ 128 KiB in and out).
const IN_FLIGHT_PER_WORKER: usize = 4;
/// MS-CAB fixed sizes.
const CFHEADER: u64 = 36;
const CFFOLDER: u64 = 8;
const CFDATA: usize = 8;
const TYPE_MSZIP: u16 = 1;
/// `_A_ARCH`, as `gcab` and makecab set it.
const ATTRIB_ARCH: u16 = 0x20;

/// The small files of the second folder, known once the CSV is written.
pub(crate) struct MetaFiles {
    /// `SiteVersion.txt`.
    pub site_version: Vec<u8>,
    /// `manifest.json`.
    pub manifest: Vec<u8>,
}

/// Write a usage cab to `out`. `write_csv` streams the CSV and returns its record count;
/// `meta` turns the CSV's file entry into `SiteVersion.txt` and the manifest (both from
/// what the CSV was read from, so the three agree). `what` names the destination in error
/// messages.
pub(crate) fn write_usage_cab<W: Write + Seek>(
    mut out: W,
    what: &str,
    write_csv: &mut dyn FnMut(&mut dyn Write) -> Result<u64>,
    meta: &mut dyn FnMut(UsageFile) -> MetaFiles,
) -> Result<W> {
    let io = |e: io::Error| map_io(what, &e);
    let names = [USAGE_DATA_FILE, SITE_VERSION_FILE, USAGE_MANIFEST_FILE];
    let files_bytes: u64 = names.iter().map(|n| 16 + n.len() as u64 + 1).sum();
    let data_start = CFHEADER + 2 * CFFOLDER + files_bytes;
    let start = out.stream_position().map_err(io)?;
    out.write_all(&vec![0u8; data_start as usize]).map_err(io)?;

    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let (entry, csv_folder) = std::thread::scope(|scope| -> Result<_> {
        let mut folder = FolderWriter::new(&mut out, scope, workers, data_start);
        let entry = {
            let mut hw = HashingWriter::new(&mut folder);
            let records = write_csv(&mut hw)?;
            hw.flush().map_err(io)?;
            let (_, size, sha256) = hw.finish();
            UsageFile {
                name: USAGE_DATA_FILE.to_string(),
                size,
                records,
                sha256,
            }
        };
        let (_, csv_folder) = folder.finish().map_err(io)?;
        Ok((entry, csv_folder))
    })?;
    let csv_size = entry.size;
    let MetaFiles {
        site_version: site_version_txt,
        manifest: manifest_bytes,
    } = meta(entry);
    let meta_start = data_start + csv_folder.compressed;
    let meta_folder = {
        let mut folder = FolderWriter::inline(&mut out, meta_start);
        folder.write_all(&site_version_txt).map_err(io)?;
        folder.write_all(&manifest_bytes).map_err(io)?;
        folder.finish().map_err(io)?.1
    };
    let total = meta_start + meta_folder.compressed;
    if total > u32::MAX as u64 {
        return Err(map_io(what, &too_big()));
    }

    // Now that every size is known, fill in the header and the entries.
    let mut head = Vec::with_capacity(data_start as usize);
    head.extend_from_slice(b"MSCF");
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&(total as u32).to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&((CFHEADER + 2 * CFFOLDER) as u32).to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&[3, 1]); // version 1.3
    head.extend_from_slice(&2u16.to_le_bytes()); // folders
    head.extend_from_slice(&3u16.to_le_bytes()); // files
    head.extend_from_slice(&0u16.to_le_bytes()); // flags
    head.extend_from_slice(&0u16.to_le_bytes()); // set id
    head.extend_from_slice(&0u16.to_le_bytes()); // cabinet index
    for (first, f) in [(data_start, &csv_folder), (meta_start, &meta_folder)] {
        head.extend_from_slice(&(first as u32).to_le_bytes());
        head.extend_from_slice(&(f.blocks as u16).to_le_bytes());
        head.extend_from_slice(&TYPE_MSZIP.to_le_bytes());
    }
    let (date, time) = dos_now();
    let files = [
        (USAGE_DATA_FILE, csv_size, 0u64, 0u16),
        (SITE_VERSION_FILE, site_version_txt.len() as u64, 0, 1),
        (
            USAGE_MANIFEST_FILE,
            manifest_bytes.len() as u64,
            site_version_txt.len() as u64,
            1,
        ),
    ];
    for (name, size, offset, folder) in files {
        head.extend_from_slice(&(size as u32).to_le_bytes());
        head.extend_from_slice(&(offset as u32).to_le_bytes());
        head.extend_from_slice(&folder.to_le_bytes());
        head.extend_from_slice(&date.to_le_bytes());
        head.extend_from_slice(&time.to_le_bytes());
        head.extend_from_slice(&ATTRIB_ARCH.to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.push(0);
    }
    debug_assert_eq!(head.len() as u64, data_start);
    out.seek(SeekFrom::Start(start)).map_err(io)?;
    out.write_all(&head).map_err(io)?;
    out.seek(SeekFrom::Start(start + total)).map_err(io)?;
    Ok(out)
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the cab would exceed the format's maximum size",
    )
}

/// Current UTC time as MS-DOS date and time words.
fn dos_now() -> (u16, u16) {
    use chrono::{Datelike, Timelike};
    let t = chrono::Utc::now();
    let date = (((t.year() - 1980).clamp(0, 127) as u16) << 9)
        | ((t.month() as u16) << 5)
        | t.day() as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    (date, time)
}

/// What one folder's data came to.
struct FolderStats {
    blocks: u64,
    compressed: u64,
}

/// A block handed to a worker, and what comes back.
struct Job {
    seq: u64,
    data: Vec<u8>,
}
struct Done {
    seq: u64,
    input: Vec<u8>,
    /// The job's CFDATA blocks, back to back, and how many there are.
    blocks: io::Result<(Vec<u8>, u64)>,
}

/// Streams one folder's uncompressed bytes into MSZIP CFDATA blocks on `out`, in order.
/// With workers, jobs of full blocks are compressed on them; without (`inline`), on this
/// thread.
struct FolderWriter<'o, W: Write> {
    out: &'o mut W,
    cur: Vec<u8>,
    free: Vec<Vec<u8>>,
    workers: Vec<mpsc::SyncSender<Job>>,
    results: Option<mpsc::Receiver<Done>>,
    ready: BTreeMap<u64, Done>,
    sent: u64,
    written: u64,
    /// Blocks handed on so far (compressed or not yet).
    queued_blocks: u64,
    max_in_flight: u64,
    stats: FolderStats,
    uncompressed: u64,
    inline: Option<Compressor>,
    data_start: u64,
}

impl<'o, W: Write> FolderWriter<'o, W> {
    fn new<'scope, 'env>(
        out: &'o mut W,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        workers: usize,
        data_start: u64,
    ) -> Self {
        if workers <= 1 {
            return Self::inline(out, data_start);
        }
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut senders = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Job>(IN_FLIGHT_PER_WORKER);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut c = Compressor::new();
                for job in rx {
                    let blocks = c.blocks(&job.data);
                    let done = Done {
                        seq: job.seq,
                        input: job.data,
                        blocks,
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            });
            senders.push(tx);
        }
        FolderWriter {
            max_in_flight: (workers * IN_FLIGHT_PER_WORKER) as u64,
            workers: senders,
            results: Some(done_rx),
            inline: None,
            ..Self::inline(out, data_start)
        }
    }

    fn inline(out: &'o mut W, data_start: u64) -> Self {
        FolderWriter {
            out,
            cur: Vec::with_capacity(JOB),
            free: Vec::new(),
            workers: Vec::new(),
            results: None,
            ready: BTreeMap::new(),
            sent: 0,
            written: 0,
            queued_blocks: 0,
            max_in_flight: 0,
            stats: FolderStats {
                blocks: 0,
                compressed: 0,
            },
            uncompressed: 0,
            inline: Some(Compressor::new()),
            data_start,
        }
    }

    /// Hand the current job on (compress inline, or queue it for a worker).
    fn submit(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        self.queued_blocks += self.cur.len().div_ceil(BLOCK) as u64;
        if self.queued_blocks > MAX_FOLDER_BLOCKS {
            return Err(too_big());
        }
        let next = self.free.pop().unwrap_or_else(|| Vec::with_capacity(JOB));
        let data = std::mem::replace(&mut self.cur, next);
        if let Some(c) = self.inline.as_mut() {
            let (blocks, n) = c.blocks(&data)?;
            self.cur = data;
            self.cur.clear();
            return self.emit(&blocks, n);
        }
        while self.sent - self.written >= self.max_in_flight {
            self.collect(true)?;
        }
        let seq = self.sent;
        self.sent += 1;
        let w = (seq % self.workers.len() as u64) as usize;
        self.workers[w]
            .send(Job { seq, data })
            .map_err(|_| io::Error::other("cab compression worker stopped"))?;
        self.collect(false)
    }

    /// Receive finished blocks (waiting for one if `wait`) and write those now in order.
    fn collect(&mut self, wait: bool) -> io::Result<()> {
        let rx = self.results.as_ref().expect("workers");
        let mut first = wait;
        loop {
            let d = if first {
                first = false;
                rx.recv()
                    .map_err(|_| io::Error::other("cab compression worker stopped"))?
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            self.ready.insert(d.seq, d);
        }
        while let Some(d) = self.ready.remove(&self.written) {
            self.written += 1;
            let (blocks, n) = d.blocks?;
            self.emit(&blocks, n)?;
            let mut input = d.input;
            input.clear();
            self.free.push(input);
        }
        Ok(())
    }

    /// Write `n` CFDATA blocks (back to back in `blocks`).
    fn emit(&mut self, blocks: &[u8], n: u64) -> io::Result<()> {
        self.out.write_all(blocks)?;
        self.stats.blocks += n;
        self.stats.compressed += blocks.len() as u64;
        if self.data_start + self.stats.compressed > u32::MAX as u64 {
            return Err(too_big());
        }
        Ok(())
    }

    /// Write the last (short) job and wait for every job in flight.
    fn finish(mut self) -> io::Result<(&'o mut W, FolderStats)> {
        self.submit()?;
        self.workers.clear(); // workers end once their queues drain
        while self.written < self.sent {
            self.collect(true)?;
        }
        Ok((self.out, self.stats))
    }
}

impl<W: Write> Write for FolderWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(JOB - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        self.uncompressed += n as u64;
        if self.cur.len() == JOB {
            self.submit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compress `data` into MSZIP blocks on the calling thread as Prepare's compressing
/// threads do; the compressed bytes. For the benchmark's measure of what compressing
/// costs on one core ([`super::compressed_len_for_benchmark`]).
pub(super) fn compressed_len(data: &[u8]) -> io::Result<usize> {
    Compressor::new().blocks(data).map(|(out, _)| out.len())
}

/// One raw-deflate compressor, reused for every block a thread compresses.
struct Compressor {
    deflater: deflate::Deflater,
}

impl Compressor {
    fn new() -> Self {
        Compressor {
            deflater: deflate::Deflater::new(),
        }
    }

    /// The CFDATA blocks for `data` (every [`BLOCK`] bytes one, the last one possibly
    /// short), back to back, and how many there are.
    fn blocks(&mut self, data: &[u8]) -> io::Result<(Vec<u8>, u64)> {
        let n = data.len().div_ceil(BLOCK);
        let mut out = Vec::with_capacity(data.len() + n * (CFDATA + 2 + deflate::SLACK));
        for chunk in data.chunks(BLOCK) {
            self.block(chunk, &mut out)?;
        }
        Ok((out, n as u64))
    }

    /// Append a complete CFDATA block (header with checksum, `"CK"`, deflate stream) for
    /// `data` (at most [`BLOCK`] bytes) to `out`.
    fn block(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let at = out.len();
        out.extend_from_slice(&[0u8; CFDATA]);
        out.extend_from_slice(b"CK");
        self.deflater.deflate(data, out)?;
        let block = &mut out[at..];
        // At most 12 bytes over the input (a stored block is 7 over: "CK" and its 5-byte
        // header), far inside what readers accept (libmspack: 6 KiB over).
        if block.len() - CFDATA > data.len() + 12 {
            return Err(io::Error::other(
                "MSZIP block larger than the format allows",
            ));
        }
        let cb_data = (block.len() - CFDATA) as u16;
        let cb_uncomp = data.len() as u16;
        block[4..6].copy_from_slice(&cb_data.to_le_bytes());
        block[6..8].copy_from_slice(&cb_uncomp.to_le_bytes());
        let sum = checksum(&block[CFDATA..], 0);
        let sum = checksum(&block[4..8], sum);
        block[0..4].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }
}

/// The MS-CAB CFDATA checksum: XOR of little-endian 32-bit words, the 1–3 trailing bytes
/// folded in most significant first (as libmspack and makecab compute it).
fn checksum(data: &[u8], seed: u32) -> u32 {
    let mut sum = seed;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum ^= u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    let mut tail = 0u32;
    for &b in words.remainder() {
        tail = (tail << 8) | b as u32;
    }
    sum ^ tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    const PATTERN: &[u8] = b"id,level,category\r\n7,Basic,x";

    fn write(csv: &[u8]) -> Vec<u8> {
        let out = write_usage_cab(
            Cursor::new(Vec::new()),
            "test",
            &mut |w| {
                // Odd-sized writes cross block boundaries at every offset.
                for chunk in csv.chunks(7919) {
                    w.write_all(chunk).unwrap();
                }
                Ok(1)
            },
            &mut |f| MetaFiles {
                site_version: b"5.00.9128.1000".to_vec(),
                manifest: format!("{{\"size\":{}}}", f.size).into_bytes(),
            },
        )
        .unwrap();
        out.into_inner()
    }

    #[test]
    fn the_cab_crate_reads_back_every_file_byte_for_byte() {
        let patterned = [0usize, 1, BLOCK - 1, BLOCK, BLOCK + 1, 40 * BLOCK + 123].map(|len| {
            (0..len)
                .map(|i| PATTERN[i % PATTERN.len()] ^ (i / 977) as u8)
                .collect::<Vec<u8>>()
        });
        // Bytes that do not compress: their blocks are stored.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..3 * BLOCK + 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for csv in patterned.iter().chain([&noise]) {
            let len = csv.len();
            let bytes = write(csv);
            let mut cab = cab::Cabinet::new(Cursor::new(&bytes)).unwrap();
            let mut got = Vec::new();
            cab.read_file(USAGE_DATA_FILE)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(&got, csv, "length {len}");
            let mut v = String::new();
            cab.read_file(SITE_VERSION_FILE)
                .unwrap()
                .read_to_string(&mut v)
                .unwrap();
            assert_eq!(v, "5.00.9128.1000");
            let mut m = String::new();
            cab.read_file(USAGE_MANIFEST_FILE)
                .unwrap()
                .read_to_string(&mut m)
                .unwrap();
            assert_eq!(m, format!("{{\"size\":{len}}}"));
            let blocks = len.div_ceil(BLOCK) as u16;
            assert_eq!(u16::from_le_bytes([bytes[36 + 4], bytes[36 + 5]]), blocks);
        }
    }

    #[test]
    fn checksum_folds_trailing_bytes_most_significant_first() {
        assert_eq!(checksum(&[1, 0, 0, 0], 0), 1);
        assert_eq!(checksum(&[1, 2, 3, 4, 5], 0), 0x0403_0201 ^ 5);
        assert_eq!(checksum(&[5, 6, 7], 0), 0x0005_0607);
        assert_eq!(checksum(&[], 0xdead), 0xdead);
    }
}
