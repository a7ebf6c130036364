//! File-system helpers shared by every step: atomic output files and safe relative paths.
//! What differs by operating system lives in `crate::platform`; the path rules here are
//! the same everywhere, because a pack made on Linux must import on Windows.

mod background;
mod batches;
mod outfile;
pub(crate) use background::BackgroundWriter;
pub(crate) use batches::{Batch, Batches};
#[cfg(all(test, target_os = "linux"))]
pub(crate) use outfile::test_support;
pub(crate) use outfile::OutFile;

use crate::error::{Error, ErrorKind, Result};
use crate::platform;
use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Suffix of every temporary file the library writes. Nothing ever trusts a file
/// with this suffix; a crashed run may leave one behind and the next run ignores it.
pub const PARTIAL_SUFFIX: &str = ".sct-partial";

/// An output file written under a temporary name in the destination folder and
/// renamed into place by [`AtomicFile::commit`]. Dropped without commit, it removes
/// its temporary file, so a failed run leaves nothing at (or near) the destination.
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
    /// The final name, in the form handed to the operating system.
    os_dest: PathBuf,
    /// The final name as the caller gave it, for messages.
    dest: PathBuf,
    overwrite: bool,
}

impl AtomicFile {
    /// Check the destination the way a user expects (folder exists, not a directory,
    /// not already there unless `overwrite`) and open a temporary file beside it.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        Self::create_with(dest, overwrite, false)
    }

    /// [`create`](Self::create) for a secret (the service's signing key): the temporary
    /// file is readable by its owner only from the moment it exists (0600 on Unix, a DACL
    /// with the current user alone on Windows), and the rename keeps that.
    pub fn create_private(dest: &Path, overwrite: bool) -> Result<Self> {
        Self::create_with(dest, overwrite, true)
    }

    fn create_with(dest: &Path, overwrite: bool, private: bool) -> Result<Self> {
        let parent = parent_dir(dest);
        if !parent.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("destination folder {} does not exist", parent.display()),
            ));
        }
        if dest.is_dir() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("destination {} is a folder, not a file", dest.display()),
            ));
        }
        if !overwrite && dest.symlink_metadata().is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "destination {} already exists (use force to overwrite it)",
                    dest.display()
                ),
            ));
        }
        let name = dest.file_name().ok_or_else(|| {
            Error::invalid_argument(format!("{} is not a file name", dest.display()))
        })?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(PARTIAL_SUFFIX);
        // The temporary file and the final name are used in their long-path form, so a
        // destination deeper than 260 characters works on Windows too.
        let dir = platform::long_path_form(parent);
        let temp = if private {
            builder.make_in(&dir, platform::create_private)
        } else {
            platform::public_output(&mut builder);
            builder.tempfile_in(&dir)
        }
        .map_err(|e| Error::io(format!("cannot write in {}", parent.display()), &e))?;
        Ok(AtomicFile {
            temp,
            os_dest: dir.join(name),
            dest: dest.to_path_buf(),
            overwrite,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Where the data is being written until [`commit`](Self::commit).
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flush to stable storage and move into place. Without `overwrite`, a file that
    /// appeared at the destination meanwhile is never replaced. Where another process
    /// briefly holds the destination (a virus scanner on Windows), the rename is retried
    /// for a few seconds before it fails.
    pub fn commit(mut self) -> Result<()> {
        let what = || format!("writing {}", self.dest.display());
        self.temp
            .as_file_mut()
            .flush()
            .map_err(|e| Error::io(what(), &e))?;
        self.temp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(what(), &e))?;
        let (dest, shown) = (self.os_dest.clone(), self.dest.clone());
        let mut temp = self.temp;
        let mut tries = 0;
        loop {
            let result = if self.overwrite {
                temp.persist(&dest)
            } else {
                temp.persist_noclobber(&dest)
            };
            let e = match result {
                Ok(_) => break,
                Err(e) => e,
            };
            if !self.overwrite && e.error.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "destination {} already exists (use force to overwrite it)",
                        shown.display()
                    ),
                ));
            }
            tries += 1;
            let retry = platform::rename_may_succeed_later(&e.error);
            let Some(pause) = rename_retry_pause(tries, &e.error) else {
                let err = Error::io(format!("moving into place {}", shown.display()), &e.error);
                if retry && err.kind() == ErrorKind::PermissionDenied {
                    // Windows says "access denied" for a file another process holds
                    // open as well as for one that may not be replaced.
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "moving into place {}: access denied: the file is in use by another process, read-only, or may not be replaced by this account",
                            shown.display()
                        ),
                    ));
                }
                return Err(err);
            };
            temp = e.file;
            std::thread::sleep(pause);
        }
        sync_dir(parent_dir(&dest));
        Ok(())
    }
}

/// How often a rename another process is in the way of is tried (about three seconds in
/// all with the doubling pauses of [`rename_retry_pause`]).
const RENAME_TRIES: u32 = 10;

/// After the `tries`-th failed rename with `e`: how long to wait before trying again, or
/// `None` to give up (the error will not go away, or the tries are used up). On Windows a
/// virus scanner or the search indexer opens new files the moment they appear and a
/// rename fails while they hold them; on Unix renames never wait.
pub(crate) fn rename_retry_pause(tries: u32, e: &std::io::Error) -> Option<std::time::Duration> {
    (tries < RENAME_TRIES && platform::rename_may_succeed_later(e)).then(|| {
        std::time::Duration::from_millis(10 << tries.min(6))
            .min(std::time::Duration::from_millis(500))
    })
}

/// `std::fs::rename`, tried again for a few seconds while another process briefly holds
/// the file or folder (see [`rename_retry_pause`]).
pub fn rename_retrying(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::rename(from, to) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tries += 1;
                match rename_retry_pause(tries, &e) {
                    Some(pause) => std::thread::sleep(pause),
                    None => return Err(e),
                }
            }
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// The folder holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Best-effort flush of a directory so a rename survives power loss (a no-op on Windows,
/// where each file is flushed before its rename instead: see `crate::platform`).
pub fn sync_dir(dir: &Path) {
    platform::sync_dir(dir)
}

/// Validate a relative path that came from outside (a manifest, a URL): non-empty,
/// `/`-separated, not absolute, no `..`, `.`, empty, drive or backslash components, no
/// NUL or control characters, and every component a name Windows can hold
/// ([`portable_name_problem`]) on every platform, so a pack made on Linux imports on
/// Windows. Returns it as a `PathBuf` to join under a trusted root.
pub fn safe_relative_path(p: &str) -> Result<PathBuf> {
    let unsafe_path = |why: &str| {
        Error::new(
            ErrorKind::UnsafePath,
            format!("unsafe path '{}': {why}", p.escape_debug()),
        )
    };
    if p.is_empty() {
        return Err(unsafe_path("empty"));
    }
    if p.len() > 1024 {
        return Err(unsafe_path("longer than 1024 bytes"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(unsafe_path("contains control characters"));
    }
    if p.contains('\\') || p.contains(':') {
        return Err(unsafe_path("contains '\\' or ':'"));
    }
    if p.starts_with('/') {
        return Err(unsafe_path("absolute"));
    }
    let mut out = PathBuf::new();
    for part in p.split('/') {
        match part {
            "" => return Err(unsafe_path("empty component")),
            "." => return Err(unsafe_path("'.' component")),
            ".." => return Err(unsafe_path("'..' component")),
            _ => {
                if let Some(why) = portable_name_problem(part) {
                    return Err(unsafe_path(&why));
                }
                out.push(part)
            }
        }
    }
    debug_assert!(out.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(out)
}

/// Why one path component cannot be a file or folder name on Windows (checked on every
/// platform): a character Windows forbids (`< > " | ? *`, besides `\`, `:` and control
/// characters refused before), a trailing dot or space (Windows drops them, so the name
/// would silently change), or a name Windows reserves for a device (`CON`, `PRN`, `AUX`,
/// `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9` and their superscript-digit forms, `CONIN$`,
/// `CONOUT$`), with any extension (`nul.txt` opens the NUL device).
pub fn portable_name_problem(name: &str) -> Option<String> {
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '<' | '>' | '"' | '|' | '?' | '*'))
    {
        return Some(format!(
            "the name '{name}' contains '{c}', which Windows does not allow"
        ));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Some(format!(
            "the name '{name}' ends with a dot or a space, which Windows drops"
        ));
    }
    // Windows looks at the name up to its first dot, without trailing spaces.
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    let reserved = match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => ["COM", "LPT"].iter().any(|dev| {
            upper.strip_prefix(dev).is_some_and(|rest| {
                let mut chars = rest.chars();
                matches!(
                    (chars.next(), chars.next()),
                    (Some('0'..='9' | '\u{b9}' | '\u{b2}' | '\u{b3}'), None)
                )
            })
        }),
    };
    reserved.then(|| format!("'{name}' is a name Windows reserves for a device"))
}

/// A file name as a case-insensitive file system (NTFS, FAT, APFS by default) compares
/// it: each character upper-cased when that gives one character (as NTFS's up-case table
/// does; `ß` stays `ß`).
fn case_fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// In a set of `/`-separated relative paths (a pack's files), the first two that differ
/// only in letter case, in the whole path or in a folder on the way (`A/x` and `a/y`):
/// they would be one file (or folder) on Windows and macOS, so one would overwrite the
/// other or the pack would not match its manifest. Callers refuse such a set on every
/// platform.
pub fn case_collision<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<(&'a str, &'a str)> {
    let mut seen: std::collections::HashMap<String, &'a str> = std::collections::HashMap::new();
    for path in paths {
        let ends = path
            .match_indices('/')
            .map(|(i, _)| i)
            .chain(std::iter::once(path.len()));
        for end in ends {
            let prefix = &path[..end];
            match seen.entry(case_fold(prefix)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(prefix);
                }
                std::collections::hash_map::Entry::Occupied(o) if *o.get() != prefix => {
                    return Some((o.get(), prefix));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
            }
        }
    }
    None
}

/// Open a file for reading without following a link (symbolic link, junction, mount
/// point) in its last component; [`is_link_refusal`] tells a refused link from other
/// errors. (`O_NOFOLLOW` on Unix, `FILE_FLAG_OPEN_REPARSE_POINT` on Windows.) On Unix only
/// a regular file is opened: a FIFO or a device is refused, a FIFO without waiting for a
/// writer (see [`open_error`]).
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    platform::open_no_follow(path)
}

/// Open a file for writing, created if it is not there and not truncated, without
/// following a link in its last component (a dangling one included: nothing is created
/// where it points); [`is_link_refusal`] tells a refused link from other errors. On Unix,
/// as [`open_no_follow`], only a regular file is opened, without waiting on a FIFO.
pub fn open_write_no_follow(path: &Path) -> std::io::Result<File> {
    platform::open_write_no_follow(path)
}

/// Whether an error from [`open_no_follow`] or [`open_write_no_follow`] means the path was
/// a link.
pub fn is_link_refusal(e: &std::io::Error) -> bool {
    platform::is_link_refusal(e)
}

/// The error of opening `shown` for `doing` (as "reading"): a refused link (see
/// [`is_link_refusal`]) and something other than a regular file (a FIFO or a device,
/// refused by [`open_no_follow`] and [`open_write_no_follow`]) are `UnsafePath`.
pub fn open_error(doing: &str, shown: &str, e: &std::io::Error) -> Error {
    if is_link_refusal(e) {
        return Error::new(
            ErrorKind::UnsafePath,
            format!("{shown} is a symbolic link; links are never followed"),
        );
    }
    if platform::is_not_regular(e) {
        return Error::new(
            ErrorKind::UnsafePath,
            format!("{shown} is not a regular file"),
        );
    }
    Error::io(format!("{doing} {shown}"), e)
}

/// Refuse if any existing component of `root/rel` below `root` is a symbolic link.
pub fn ensure_no_symlinks(root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match cur.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::new(
                    ErrorKind::UnsafePath,
                    format!(
                        "{} is a symbolic link; links are never followed",
                        cur.display()
                    ),
                ))
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Bytes written between two requests to start the writeback (see [`EarlyWriteback`]).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A writer over a file that asks the kernel to start writing what was written every
/// [`WRITEBACK_EVERY`] bytes (`platform::start_writeback`), so the flush of
/// [`AtomicFile::commit`] finds little left to write instead of the whole file (Export's
/// 344 MiB CSV spent about 0.14 s in that fsync). Durability is unchanged: the flush
/// still comes; this only starts the disk work while more data is being produced.
pub(crate) struct EarlyWriteback<'f> {
    file: &'f File,
    pos: u64,
    from: u64,
}

impl<'f> EarlyWriteback<'f> {
    /// Writes at the file's current position, which must be 0 or set through [`Seek`].
    pub(crate) fn new(file: &'f File) -> Self {
        EarlyWriteback {
            file,
            pos: 0,
            from: 0,
        }
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.pos += n as u64;
        if self.pos >= self.from + WRITEBACK_EVERY {
            platform::start_writeback(self.file, self.from, self.pos - self.from);
            self.from = self.pos;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for EarlyWriteback<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let at = (&*self.file).seek(to)?;
        if self.pos > self.from {
            platform::start_writeback(self.file, self.from, self.pos - self.from);
        }
        self.pos = at;
        self.from = at;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_writeback_writes_every_byte_where_it_was_put() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut want = Vec::new();
        {
            let mut w = EarlyWriteback::new(&file);
            // Past two writeback points, in odd-sized writes, then a rewrite of the start
            // (as Prepare rewrites the cab header) and more at the end.
            let chunk: Vec<u8> = (0..7919u32).map(|i| (i % 251) as u8).collect();
            while want.len() < 2 * WRITEBACK_EVERY as usize + 12_345 {
                w.write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
            }
            assert_eq!(w.seek(SeekFrom::Start(0)).unwrap(), 0);
            w.write_all(b"HEAD").unwrap();
            want[..4].copy_from_slice(b"HEAD");
            let end = want.len() as u64;
            assert_eq!(w.seek(SeekFrom::Start(end)).unwrap(), end);
            w.write_all(b"tail").unwrap();
            want.extend_from_slice(b"tail");
        }
        file.sync_all().unwrap();
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    fn safe_paths() {
        assert_eq!(
            safe_relative_path("a/b.bin").unwrap(),
            PathBuf::from("a/b.bin")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "C:/x",
            "a\u{0}b",
            "a/.",
        ] {
            let e = safe_relative_path(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsafePath, "{bad:?}");
        }
    }

    /// Names Windows cannot hold are refused on every platform (a pack made on Linux must
    /// import on Windows); names that merely look like them are not.
    #[test]
    fn windows_name_rules_apply_everywhere() {
        for bad in [
            "CON",
            "con",
            "Aux.txt",
            "nul.tar.gz",
            "NUL .txt",
            "COM1",
            "com9.log",
            "LPT1",
            "lpt0.bin",
            "COM\u{b9}",
            "lpt\u{b3}.txt",
            "CONIN$",
            "conout$.x",
            "PRN",
            "a.",
            "a ",
            "dir./x",
            "dir /x",
            "a/nul",
            "a?b",
            "a*b",
            "a<b",
            "a>b",
            "a|b",
            "a\"b",
        ] {
            let e = safe_relative_path(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsafePath, "{bad:?}");
            assert!(
                e.message().contains("Windows") || e.message().contains("':'"),
                "{e}"
            );
        }
        for good in [
            "CONSOLE",
            "COM10",
            "LPT",
            "nul_x.txt",
            "con-x.txt",
            "xCON",
            "a.b",
            ".hidden",
            " lead",
            "Setup.exe",
            "dir/COM1x/y.bin",
            "\u{e9}t\u{e9}.txt",
        ] {
            assert!(safe_relative_path(good).is_ok(), "{good:?}");
        }
    }

    /// Renames wait for a file another process holds only on Windows, and not forever.
    #[test]
    fn rename_retry_policy() {
        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(rename_retry_pause(1, &not_found), None);
        #[cfg(windows)]
        {
            let held = std::io::Error::from_raw_os_error(
                windows_sys::Win32::Foundation::ERROR_SHARING_VIOLATION as i32,
            );
            let pauses: Vec<_> = (1..20)
                .map_while(|t| rename_retry_pause(t, &held))
                .collect();
            assert_eq!(pauses.len() as u32, RENAME_TRIES - 1);
            assert!(pauses.iter().sum::<std::time::Duration>() < std::time::Duration::from_secs(5));
        }
        #[cfg(unix)]
        assert_eq!(
            rename_retry_pause(1, &std::io::Error::from_raw_os_error(libc::EBUSY)),
            None
        );
    }

    #[test]
    fn case_collisions() {
        assert_eq!(
            case_collision(["a/B.bin", "a/b.bin"]),
            Some(("a/B.bin", "a/b.bin"))
        );
        assert_eq!(case_collision(["A/x", "a/y"]), Some(("A", "a")));
        assert_eq!(
            case_collision(["\u{c4}.txt", "\u{e4}.txt"]),
            Some(("\u{c4}.txt", "\u{e4}.txt"))
        );
        assert_eq!(case_collision(["x/a", "x/b", "y/a", "X1"]), None);
        // NTFS upper-cases one character to one: `ß` is not `SS`.
        assert_eq!(case_collision(["STRASSE", "stra\u{df}e"]), None);
        assert_eq!(case_collision(Vec::<&str>::new()), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn outputs_follow_the_umask() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("UsageData.cab");
        let mut f = AtomicFile::create(&dest, false).unwrap();
        f.write_all(b"x").unwrap();
        f.commit().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask);
    }

    #[test]
    fn atomic_file_no_clobber_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.cab");
        std::fs::write(&dest, b"old").unwrap();
        assert_eq!(
            AtomicFile::create(&dest, false).err().unwrap().kind(),
            ErrorKind::AlreadyExists
        );
        {
            let mut f = AtomicFile::create(&dest, true).unwrap();
            f.write_all(b"new").unwrap();
            // dropped without commit
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
        let mut f = AtomicFile::create(&dest, true).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
    }
}
