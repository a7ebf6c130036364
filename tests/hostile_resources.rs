//! Resource faults: a full disk, a read-only destination, a USB folder removed mid-run, an
//! unreadable file and a locked site database. Each must give one clear error (kind and key
//! words asserted) and leave existing data untouched.
//!
//! Full and read-only file systems are real: a 2 MiB tmpfs mounted in a tempdir (root
//! only), remounted read-only where needed. Where mounting is not permitted the tmpfs
//! tests say so on stderr and the full-disk case falls back to a file-size limit
//! (RLIMIT_FSIZE) set in a child process. Root ignores file permissions, so "unreadable"
//! runs its child as user `nobody` when the tests run as root. Import's reflink placement
//! runs on a real copy-on-write file system: XFS made in an image file and loop-mounted.
//!
//! Those faults are made with Unix mechanisms (mounts, rlimits, EIO from a failing
//! device, users and modes, removing a folder that holds open files), so they are
//! `unix_only`; the locked site database runs on Windows too (under Wine in CI).

#[path = "common/packs.rs"]
mod packs;
#[path = "common/service.rs"]
mod service;
#[path = "common/site.rs"]
mod site;

use packs::Publisher;
use serviceconnection::site::{DiagnosticsLevel, Site};
use std::path::Path;
use std::process::Command;

const TOOL: &str = env!("CARGO_BIN_EXE_serviceconnectiontool");

fn integrity_ok(db: &Path) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let r: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(r, "ok");
}

/// The faults made with Unix mechanisms.
#[cfg(unix)]
mod unix_only {
    use super::*;
    use packs::{write_pack, PackSpec};
    use serviceconnection::import::{
        import, ImportOptions, ImportResult, ImportStatus, CONTENT_LIBRARY,
    };
    use serviceconnection::ErrorKind;
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::Stdio;

    /// A tmpfs mounted on a fresh folder; lazily unmounted on drop.
    struct Tmpfs {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl Tmpfs {
        /// `None` (with a note on stderr) where mounting is not permitted.
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("mnt");
            std::fs::create_dir(&path).unwrap();
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("note: mounting a tmpfs is not permitted here; this case is skipped");
                return None;
            }
            Some(Tmpfs { _dir: dir, path })
        }

        fn remount_read_only(&self) {
            remount_read_only(&self.path);
        }

        /// Fill the file system, then free `leave` bytes, so the next large write fails.
        fn fill_leaving(&self, leave: u64) {
            let filler = self.path.join("filler.bin");
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0xA5u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.flush();
            let len = f.metadata().unwrap().len();
            f.set_len(len.saturating_sub(leave)).unwrap();
            f.sync_all().unwrap();
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }

    /// Remount the file system at `mount_point` read-only.
    fn remount_read_only(mount_point: &Path) {
        let s = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(mount_point)
            .status()
            .unwrap();
        assert!(s.success(), "remount read-only");
    }

    /// A freshly made XFS file system with reflink support, in an image file on a loop device;
    /// unmounted (and the image removed) on drop. `None` with a note where the tests do not
    /// run as root; as root, a missing `mkfs.xfs` or loop device fails the test (CI installs
    /// `xfsprogs`).
    struct XfsImage {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl XfsImage {
        fn mount(mib: u64) -> Option<XfsImage> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("note: mounting a file system image needs root; this case is skipped");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("xfs.img");
            std::fs::File::create(&image)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            let out = Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .output()
                .expect("mkfs.xfs (package xfsprogs) is needed for the reflink test");
            assert!(out.status.success(), "mkfs.xfs: {out:?}");
            let path = dir.path().join("mnt");
            std::fs::create_dir(&path).unwrap();
            let out = Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "mounting the XFS image: {out:?}");
            Some(XfsImage { _dir: dir, path })
        }

        /// Make the device fail like a dying drive: remounted read-only, the page cache
        /// dropped (so file data must come from the device again) except for the `cached`
        /// files, read back in first, then its image truncated to `keep` bytes: the loop
        /// device answers every read beyond with EIO.
        fn fail_beyond(&self, keep: u64, cached: &[&Path]) {
            remount_read_only(&self.path);
            std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
            for f in cached {
                std::fs::read(f).unwrap();
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(self._dir.path().join("xfs.img"))
                .unwrap()
                .set_len(keep)
                .unwrap();
        }

        /// Byte offset on the device of `file`'s first extent, and its length (`xfs_bmap`).
        fn first_extent(file: &Path) -> (u64, u64) {
            let out = Command::new("xfs_bmap").arg(file).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            // "	0: [0..32767]: 192..32959" (512-byte units)
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with("0:"))
                .unwrap_or_else(|| panic!("xfs_bmap {}: {text}", file.display()));
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().unwrap())
                .collect();
            // [index, file start, file end, device start, device end]
            (nums[3] * 512, (nums[4] - nums[3] + 1) * 512)
        }

        /// Free bytes on the file system.
        fn free(&self) -> u64 {
            let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
            unsafe {
                let mut st: libc::statvfs = std::mem::zeroed();
                assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
                st.f_bavail as u64 * st.f_frsize as u64
            }
        }
    }

    impl Drop for XfsImage {
        fn drop(&mut self) {
            // Not lazily: the image file is removed with the temp dir right after.
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }

    /// `serviceconnectiontool -prepare` of `db` to `dest`.
    fn prepare_command(db: &Path, dest: &Path) -> Command {
        let mut cmd = Command::new(TOOL);
        cmd.args(["-prepare", "-sitedb"])
            .arg(db)
            .arg("-usagedatadest")
            .arg(dest);
        cmd
    }

    /// Every file under `dir` with its bytes, for "nothing was touched".
    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let b = std::fs::read(&p).unwrap_or_default();
                    out.push((p, b));
                }
            }
        }
        out.sort();
        out
    }

    /// What an import may change: the recorded updates and the content library.
    fn site_state(db: &Path) -> (String, Vec<(PathBuf, Vec<u8>)>) {
        let updates = Site::open_read_only(db).unwrap().list_updates().unwrap();
        (
            format!("{updates:?}"),
            tree(&db.parent().unwrap().join(CONTENT_LIBRARY)),
        )
    }

    /// A site in `dir` trusting `publisher`, and an update-pack source beside it holding one
    /// pack of `size` bytes for the site's hierarchy.
    fn site_and_pack(dir: &Path, size: usize) -> (PathBuf, PathBuf, PackSpec) {
        let spec = PackSpec::update("Big", "5.00.9132.1000", "5.00.9106.1000")
            .with_files(vec![("payload/big.bin".into(), packs::bytes(7, size))]);
        let (db, src) = site_with_pack(dir, &spec);
        (db, src, spec)
    }

    /// A site in `dir` trusting a fresh publisher, and `dir/UpdatePacks` holding `spec`
    /// signed by it for the site's hierarchy.
    fn site_with_pack(dir: &Path, spec: &PackSpec) -> (PathBuf, PathBuf) {
        let db = site::create_site(dir, DiagnosticsLevel::Enhanced, 10);
        let publisher = Publisher::new();
        Site::open(&db)
            .unwrap()
            .add_trusted_publisher(publisher.public_key(), "test")
            .unwrap();
        let src = dir.join("UpdatePacks");
        write_pack(&src, site::HIERARCHY.parse().unwrap(), spec, &publisher);
        (db, src)
    }

    /// The one refusal of a run, as (kind, message), whether it came as an error or a result.
    fn refusal(r: serviceconnection::Result<Vec<ImportResult>>) -> (String, String) {
        match r {
            Err(e) => (e.kind().to_string(), e.message().to_string()),
            Ok(results) => {
                let bad: Vec<_> = results
                    .iter()
                    .filter(|x| {
                        !matches!(
                            x.status,
                            ImportStatus::Imported | ImportStatus::AlreadyImported
                        )
                    })
                    .collect();
                assert!(!bad.is_empty(), "the import succeeded: {results:#?}");
                (
                    bad[0].error_kind.clone().unwrap_or_default(),
                    bad[0].reason.clone().unwrap_or_default(),
                )
            }
        }
    }

    fn one_clear_line(message: &str) {
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{message:?}"
        );
    }

    // ---------------------------------------------------------------------------------------
    // Full disk

    /// `run(site, dest)` of a 20,000-row site onto a drive of `size` that holds an older
    /// `name` and has `free` bytes left: DiskFull naming the file, in one line; the drive
    /// (the older file included) unchanged, no temporary file left behind; the site intact.
    fn fails_cleanly_onto_a_full_drive<T: std::fmt::Debug>(
        size: &str,
        free: u64,
        name: &str,
        run: impl FnOnce(&Path, &Path) -> serviceconnection::Result<T>,
    ) {
        let Some(usb) = Tmpfs::mount(size) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 20_000);
        let dest = usb.path.join(name);
        std::fs::write(&dest, b"the one from last month").unwrap();
        usb.fill_leaving(free);
        let before = tree(&usb.path);
        let e = run(&db, &dest).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DiskFull, "{e}");
        assert!(e.message().contains("no space left"), "{e}");
        assert!(e.message().contains(name), "names the file: {e}");
        one_clear_line(e.message());
        assert_eq!(tree(&usb.path), before, "the drive changed");
        integrity_ok(&db);
    }

    /// Prepare onto a full USB drive: DiskFull, the older cab there is untouched, and no
    /// temporary file is left to fill the drive further.
    #[test]
    fn prepare_onto_a_full_disk_fails_cleanly_and_keeps_the_old_cab() {
        fails_cleanly_onto_a_full_drive("2m", 16 * 1024, "UsageData.cab", |db, dest| {
            serviceconnection::usage::prepare(db, dest, true, &mut |_| true)
        });
    }

    /// Export onto a full drive: DiskFull (the error of the thread that writes the CSV,
    /// with its cause), the older CSV there untouched, no temporary file left behind. The
    /// CSV is 3.4 MiB: past the part written through the page cache.
    #[test]
    fn export_onto_a_full_disk_fails_cleanly_and_keeps_the_old_csv() {
        fails_cleanly_onto_a_full_drive("8m", 256 * 1024, "UsageData.csv", |db, dest| {
            serviceconnection::usage::export_csv(db, dest, true, &mut |_| true)
        });
    }

    /// Where no tmpfs can be mounted, the same through a file-size limit on the real command
    /// line tool (it runs everywhere): exit status 1, one line naming the cause. Below 32 KiB
    /// even opening the site fails (SQLite cannot size its index file): the line says so
    /// instead of SQLite's bare "disk I/O error".
    #[test]
    fn prepare_under_a_file_size_limit_fails_cleanly() {
        for (limit, says) in [
            // Above the site database's 32 KiB WAL index, below the cab.
            (64 * 1024, "no space left"),
            (8 * 1024, "file-size limit (ulimit -f)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 20_000);
            // A fresh checkpointed site has no index file yet: the open must create it.
            let _ = std::fs::remove_file(db.with_extension("db-shm"));
            let dest = dir.path().join("UsageData.cab");
            let mut cmd = prepare_command(&db, &dest);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(says), "limit {limit}: {err}");
            assert!(!dest.exists());
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().contains("UsageData"))
                .collect();
            assert!(left.is_empty(), "left behind: {left:?}");
            integrity_ok(&db);
        }
    }

    /// Import into a site whose disk fills while the content is copied: DiskFull, the site's
    /// list and content library exactly as before, the database intact; with room made, the
    /// same import succeeds.
    #[test]
    fn import_onto_a_full_disk_leaves_the_site_unchanged_then_succeeds() {
        let Some(disk) = Tmpfs::mount("2m") else {
            return;
        };
        let (db, src, spec) = site_and_pack(&disk.path, 1024 * 1024);
        // The source lives elsewhere: only the site's disk is full.
        let other = tempfile::tempdir().unwrap();
        let src2 = other.path().join("UpdatePacks");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&src2)
            .status()
            .unwrap()
            .success());
        std::fs::remove_dir_all(&src).unwrap();
        disk.fill_leaving(300 * 1024);
        let before = site_state(&db);
        let (kind, message) = refusal(import(&ImportOptions::new(&db, &src2), &mut |_| true));
        assert_eq!(kind, "DiskFull", "{message}");
        assert!(message.contains("no space"), "{message}");
        one_clear_line(&message);
        assert_eq!(site_state(&db), before, "the site changed");
        integrity_ok(&db);

        std::fs::remove_file(disk.path.join("filler.bin")).unwrap();
        let r = import(&ImportOptions::new(&db, &src2), &mut |_| true).unwrap();
        assert_eq!(r[0].status, ImportStatus::Imported, "{r:#?}");
        assert_eq!(r[0].package_guid, Some(spec.id));
    }

    /// On a copy-on-write file system (XFS with reflink, in a loop-mounted image) Import
    /// places content as a clone: a separate inode (not a hard link, so editing the pack
    /// afterwards cannot reach the site), no data copied (free space barely moves), and what
    /// was placed verified.
    #[test]
    fn import_on_a_reflink_file_system_places_clones() {
        let Some(fs) = XfsImage::mount(300) else {
            return;
        };
        const SIZE: usize = 64 * 1024 * 1024;
        let (db, src, spec) = site_and_pack(&fs.path, SIZE);
        let before = fs.free();
        let r = import(&ImportOptions::new(&db, &src), &mut |_| true).unwrap();
        assert_eq!(r[0].status, ImportStatus::Imported, "{r:#?}");
        let used = before.saturating_sub(fs.free());
        assert!(
            used < (SIZE as u64) / 4,
            "{used} bytes used for a {SIZE}-byte pack: the content was copied, not cloned"
        );
        let pack_file = packs::pack_dir(&src, site::HIERARCHY.parse().unwrap(), spec.id)
            .join("content/payload/big.bin");
        let placed = fs
            .path
            .join(CONTENT_LIBRARY)
            .join(spec.id.to_string())
            .join("payload/big.bin");
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(&pack_file).unwrap(),
            std::fs::metadata(&placed).unwrap(),
        );
        assert_ne!(a.ino(), b.ino(), "placed by hard link, not by reflink");
        assert_eq!(b.nlink(), 1);
        // Copy-on-write: changing the pack afterwards leaves the site's copy as imported.
        let original = std::fs::read(&placed).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack_file)
            .unwrap()
            .write_all(b"changed after the import")
            .unwrap();
        assert!(std::fs::read(&placed).unwrap() == original);
        assert!(original == packs::bytes(7, SIZE));
        integrity_ok(&db);
    }

    /// Import from a dying transfer drive: the pack's content cannot be read back (the
    /// device answers EIO half-way through the file, as a failing USB stick does). The pack is
    /// refused with one clear line naming the file and the I/O error; the site is exactly as
    /// it was; once the packs are readable again the import succeeds.
    /// The EIO tests drop the machine-wide page cache (`fail_beyond`) after reading back the
    /// files they need cached: run in parallel, one would evict the other's files.
    static EIO_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn import_from_a_drive_failing_with_eio_changes_nothing() {
        let _one_at_a_time = EIO_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(usb) = XfsImage::mount(300) else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        let (db, src, spec) = site_and_pack(local.path(), 16 * 1024 * 1024);
        // The packs go on the drive; the site stays on the local disk.
        let on_usb = usb.path.join("UpdatePacks");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&on_usb)
            .status()
            .unwrap()
            .success());
        let pack = packs::pack_dir(&on_usb, site::HIERARCHY.parse().unwrap(), spec.id);
        let big = pack.join("content/payload/big.bin");
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let (start, len) = XfsImage::first_extent(&big);
        let before = site_state(&db);
        // The manifest and its signature still read (from the cache); the content's second
        // half does not.
        usb.fail_beyond(
            (start + len / 2) / 4096 * 4096,
            &[
                &pack.join("manifest.json"),
                &pack.join("manifest.json.minisig"),
            ],
        );
        let (kind, message) = refusal(import(&ImportOptions::new(&db, &on_usb), &mut |_| true));
        assert_eq!(kind, "Io", "{message}");
        assert!(message.contains("big.bin"), "{message}");
        assert!(
            message.contains("Input/output error") || message.contains("I/O error"),
            "{message}"
        );
        one_clear_line(&message);
        assert_eq!(site_state(&db), before, "the site changed");
        integrity_ok(&db);
        // The same packs from a good copy go in.
        let r = import(&ImportOptions::new(&db, &src), &mut |_| true).unwrap();
        assert_eq!(r[0].status, ImportStatus::Imported, "{r:#?}");
    }

    /// Connect reading a usage cab from a dying drive (EIO half-way through the cab): that
    /// upload fails with an I/O error naming the file, not as "not a usage cab", and the
    /// other hierarchy's cab, elsewhere, still goes through.
    #[test]
    fn connect_with_a_cab_on_a_drive_failing_with_eio_reports_it_and_goes_on() {
        let _one_at_a_time = EIO_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(usb) = XfsImage::mount(300) else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        let bad_site = site::create_site_with(
            local.path(),
            "bad.db",
            DiagnosticsLevel::Full,
            40_000,
            Some(uuid::Uuid::new_v4()),
        );
        let good_site = site::create_site(local.path(), DiagnosticsLevel::Enhanced, 100);
        let bad_cab = usb.path.join("UsageData.cab");
        let good_cab = local.path().join("UsageData.cab");
        for (db, cab) in [(&bad_site, &bad_cab), (&good_site, &good_cab)] {
            serviceconnection::usage::prepare(db, cab, false, &mut |_| true).unwrap();
        }
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let (start, len) = XfsImage::first_extent(&bad_cab);
        usb.fail_beyond((start + len / 2) / 4096 * 4096, &[]);

        let store = service::TestStore::new();
        let svc = service::TestService::start(&store, &[]);
        let dest = local.path().join("UpdatePacks");
        let mut o = serviceconnection::connect::ConnectOptions::new(&bad_cab, &dest, svc.url());
        o.additional_sources = vec![good_cab.clone()];
        o.retry_base_delay_ms = 10;
        let rep = serviceconnection::connect::connect(&o, &mut |_| true).unwrap();
        let bad = rep.uploads.iter().find(|u| u.cab == bad_cab).unwrap();
        assert_eq!(bad.kind, Some(ErrorKind::Io), "{bad:#?}");
        assert_eq!(
            bad.status,
            serviceconnection::connect::UploadStatus::Failed,
            "an unreadable cab is a failure, not a file passed over: {bad:#?}"
        );
        assert!(!rep.is_success());
        let message = bad.message.clone().unwrap_or_default();
        assert!(message.contains("UsageData.cab"), "{message}");
        assert!(
            message.contains("Input/output error") || message.contains("I/O error"),
            "{message}"
        );
        one_clear_line(&message);
        let good = rep.uploads.iter().find(|u| u.cab == good_cab).unwrap();
        assert_eq!(
            good.status,
            serviceconnection::connect::UploadStatus::Uploaded,
            "{good:#?}"
        );
    }

    /// Connect onto a full USB drive: the pack fails with a clear "no space" message, nothing
    /// sits at a final name, and the report says so.
    #[test]
    fn connect_onto_a_full_disk_reports_the_pack_failed_and_writes_no_final_file() {
        let Some(usb) = Tmpfs::mount("2m") else {
            return;
        };
        let store = service::TestStore::new();
        let big = service::pseudo_random(1024 * 1024, 3);
        let content = service::write_content(&store.dir().join("c"), &[("big.bin", &big)]);
        let id = store.publish(
            "Big",
            "5.00.9132.1000",
            serviceconnection::api::PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        );
        let svc = service::TestService::start(&store, &[]);
        let work = tempfile::tempdir().unwrap();
        let cab = work.path().join("UsageData.cab");
        service::write_usage_cab(&cab, site::HIERARCHY.parse().unwrap(), site::SITE_VERSION);
        usb.fill_leaving(200 * 1024);
        let dest = usb.path.join("UpdatePacks");
        let mut o = serviceconnection::connect::ConnectOptions::new(&cab, &dest, svc.url());
        o.retry_base_delay_ms = 10;
        let r = serviceconnection::connect::connect(&o, &mut |_| true);
        let message = match r {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::DiskFull, "{e}");
                e.message().to_string()
            }
            Ok(rep) => {
                let p = rep.packs.iter().find(|p| p.package_guid == id).unwrap();
                assert!(!rep.is_success());
                assert_eq!(p.kind, Some(ErrorKind::DiskFull), "{p:#?}");
                p.message.clone().unwrap_or_default()
            }
        };
        assert!(message.contains("no space"), "{message}");
        one_clear_line(&message);
        for (p, _) in tree(&dest) {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                n.ends_with(".sct-partial") || n.starts_with(".sct-") || n == "connect-report.json",
                "a file at a final name on a full disk: {}",
                p.display()
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Read-only destinations (a read-only mount: root ignores file modes)

    #[test]
    fn prepare_onto_a_read_only_drive_is_permission_denied_and_keeps_the_old_cab() {
        let Some(usb) = Tmpfs::mount("2m") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 100);
        let dest = usb.path.join("UsageData.cab");
        std::fs::write(&dest, b"the cab from last month").unwrap();
        usb.remount_read_only();
        let e = serviceconnection::usage::prepare(&db, &dest, true, &mut |_| true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.message().contains("read-only"), "{e}");
        one_clear_line(e.message());
        assert_eq!(std::fs::read(&dest).unwrap(), b"the cab from last month");
    }

    #[test]
    fn import_into_a_site_on_a_read_only_disk_is_refused_and_changes_nothing() {
        let Some(disk) = Tmpfs::mount("4m") else {
            return;
        };
        let (db, src, _spec) = site_and_pack(&disk.path, 10_000);
        let before = site_state(&db);
        disk.remount_read_only();
        let (kind, message) = refusal(import(&ImportOptions::new(&db, &src), &mut |_| true));
        assert_eq!(kind, "PermissionDenied", "{message}");
        one_clear_line(&message);
        assert_eq!(site_state(&db), before);
    }

    #[test]
    fn connect_onto_a_read_only_drive_is_permission_denied() {
        let Some(usb) = Tmpfs::mount("2m") else {
            return;
        };
        let store = service::TestStore::new();
        let content = service::write_content(&store.dir().join("c"), &[("a.bin", b"data")]);
        store.publish(
            "A",
            "5.00.9132.1000",
            serviceconnection::api::PackType::Update,
            "5.00.9000.1000",
            None,
            &[],
            &content,
        );
        let svc = service::TestService::start(&store, &[]);
        let work = tempfile::tempdir().unwrap();
        let cab = work.path().join("UsageData.cab");
        service::write_usage_cab(&cab, site::HIERARCHY.parse().unwrap(), site::SITE_VERSION);
        usb.remount_read_only();
        let dest = usb.path.join("UpdatePacks");
        let e = serviceconnection::connect::connect(
            &serviceconnection::connect::ConnectOptions::new(&cab, &dest, svc.url()),
            &mut |_| true,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.message().contains("read-only"), "{e}");
        one_clear_line(e.message());
        assert!(tree(&usb.path).is_empty());
    }

    // ---------------------------------------------------------------------------------------
    // The USB folder removed mid-run

    /// The transfer drive's folder disappears while Prepare streams rows into it: a clear
    /// NotFound naming the cab, and nothing re-created at the destination.
    #[test]
    fn prepare_with_the_usb_folder_removed_mid_run_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 20_000);
        let usb = dir.path().join("usb");
        std::fs::create_dir(&usb).unwrap();
        let dest = usb.join("UsageData.cab");
        let mut calls = 0;
        let e = serviceconnection::usage::prepare(&db, &dest, false, &mut |_| {
            calls += 1;
            if calls == 2 {
                std::fs::remove_dir_all(&usb).unwrap();
            }
            true
        })
        .unwrap_err();
        assert!(calls >= 2, "the drive was never pulled");
        assert!(
            matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Io),
            "{:?}: {e}",
            e.kind()
        );
        assert!(e.message().contains("UsageData.cab"), "{e}");
        one_clear_line(e.message());
        assert!(!usb.exists(), "the folder was re-created");
        integrity_ok(&db);
    }

    /// The update-pack folder disappears while Import works through the pack (an open file
    /// stays readable on Unix; the rest is gone). Two outcomes are right, depending on
    /// whether Import had already taken its copy: the pack is refused with a clear reason and
    /// the site is exactly as before, or it is imported complete with byte-exact content.
    #[test]
    fn import_with_the_source_removed_mid_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spec = PackSpec::update("Two", "5.00.9132.1000", "5.00.9106.1000").with_files(vec![
            ("a/first.bin".into(), packs::bytes(1, 3 * 1024 * 1024)),
            ("b/second.bin".into(), packs::bytes(2, 1000)),
        ]);
        let (db, src) = site_with_pack(dir.path(), &spec);
        let before = site_state(&db);
        let mut pulled = false;
        let r = import(&ImportOptions::new(&db, &src), &mut |p| {
            if !pulled && p.item_done > 0 && p.item_done < p.item_total {
                std::fs::remove_dir_all(&src).unwrap();
                pulled = true;
            }
            true
        });
        assert!(pulled, "the drive was never pulled");
        match &r {
            Ok(results) if results.iter().all(|x| x.status == ImportStatus::Imported) => {
                let lib = db
                    .parent()
                    .unwrap()
                    .join(CONTENT_LIBRARY)
                    .join(spec.id.to_string());
                for (rel, bytes) in &spec.files {
                    let placed = std::fs::read(lib.join(rel)).unwrap_or_default();
                    assert!(placed == *bytes, "{rel} imported but not exact");
                }
            }
            _ => {
                let (kind, message) = refusal(r);
                assert!(
                    ["NotFound", "Io", "IntegrityMismatch"].contains(&kind.as_str()),
                    "{kind}: {message}"
                );
                one_clear_line(&message);
                assert_eq!(site_state(&db), before);
            }
        }
        integrity_ok(&db);
    }

    // ---------------------------------------------------------------------------------------
    // Unreadable files

    /// Run `cmd` as user `nobody` when we are root (root reads anything), else as we are.
    fn as_unprivileged(cmd: &mut Command) {
        // SAFETY: getuid is always safe.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(65534) != 0
                        || libc::setuid(65534) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }

    /// Give `nobody` the run of `dir` (when we are root), so only the chmod-000 file is closed.
    fn hand_over(dir: &Path) {
        if unsafe { libc::geteuid() } == 0 {
            assert!(Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(dir)
                .status()
                .unwrap()
                .success());
        }
    }

    /// Import, with one content file unreadable: refused with PermissionDenied naming the
    /// file, and the site unchanged.
    #[test]
    fn import_with_an_unreadable_content_file_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (db, src, spec) = site_and_pack(dir.path(), 50_000);
        let file = packs::pack_dir(&src, site::HIERARCHY.parse().unwrap(), spec.id)
            .join("content/payload/big.bin");
        hand_over(dir.path());
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let before = site_state(&db);
        let mut cmd = Command::new(TOOL);
        cmd.args(["-import", "-json", "-sitedb"])
            .arg(&db)
            .arg("-updatepacksrc")
            .arg(&src);
        as_unprivileged(&mut cmd);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stdout}{stderr}");
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("PermissionDenied") || all.contains("permission denied"),
            "{all}"
        );
        assert!(all.contains("big.bin"), "names the file: {all}");
        assert_eq!(site_state(&db), before);
        integrity_ok(&db);
    }

    /// Prepare from a site database nobody may read: PermissionDenied in one line, no cab.
    #[test]
    fn prepare_from_an_unreadable_site_database_is_permission_denied() {
        let dir = tempfile::tempdir().unwrap();
        let db = site::create_site(dir.path(), DiagnosticsLevel::Enhanced, 10);
        hand_over(dir.path());
        std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let dest = dir.path().join("UsageData.cab");
        let mut cmd = prepare_command(&db, &dest);
        as_unprivileged(&mut cmd);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("permission denied"), "{err}");
        assert!(!dest.exists());
    }
}

// ---------------------------------------------------------------------------------------
// A locked site database

/// Another connection holds an exclusive transaction with uncommitted rows: Prepare still
/// runs (it reads the last committed state, never the uncommitted rows), and a writer
/// (trusting a key) waits, then gives up with Busy in one line and changes nothing.
#[test]
fn locked_site_database_gives_busy_for_writers_and_committed_data_to_readers() {
    let dir = tempfile::tempdir().unwrap();
    let db = site::create_site(dir.path(), DiagnosticsLevel::Full, 100);
    let committed: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM usage_data", [], |r| r.get(0))
        .unwrap();
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    locker
        .execute_batch(
            "INSERT INTO usage_data (level, category, metric, instance, value, site_code, site_name, server_name, collected_utc)
             SELECT level, category, metric, instance, 'UNCOMMITTED', site_code, site_name, server_name, collected_utc FROM usage_data",
        )
        .unwrap();

    let dest = dir.path().join("UsageData.csv");
    let r = serviceconnection::usage::export_csv(&db, &dest, false, &mut |_| true).unwrap();
    assert_eq!(r.record_count as i64, committed);
    assert!(!std::fs::read_to_string(&dest)
        .unwrap()
        .contains("UNCOMMITTED"));

    let key = dir.path().join("publisher.pub");
    std::fs::write(&key, Publisher::new().public_key().to_file_text()).unwrap();
    let out = site::output(
        Command::new(TOOL)
            .args(["-trust", "-sitedb"])
            .arg(&db)
            .arg("-publickey")
            .arg(&key),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("in use by another process"), "{err}");

    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let site = Site::open_read_only(&db).unwrap();
    assert!(
        site.trusted_publishers().unwrap().is_empty(),
        "the key was trusted anyway"
    );
    integrity_ok(&db);
}
