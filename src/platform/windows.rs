//! The Windows side of [`crate::platform`] (x64, built with mingw-w64; tested under Wine).
//!
//! Paths handed to Win32 calls directly (not through Rust's standard library, which adds
//! the `\\?\` prefix itself where a path is too long) go through [`verbatim`], so paths
//! longer than 260 characters and UNC paths (`\\server\share\...`) work everywhere.

use super::{LinkRefused, OsClass};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, RawHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use windows_sys::Win32::Foundation as F;
use windows_sys::Win32::Security as S;
use windows_sys::Win32::Storage::FileSystem as FS;
use windows_sys::Win32::System::{Console, Ioctl, Threading, IO};

/// What a Windows error code (`GetLastError`) means for the user; `None` for the rest.
/// Never compared as errno values: Windows error 1 is `ERROR_INVALID_FUNCTION`, not
/// "operation not permitted".
pub(crate) fn classify(code: i32) -> Option<OsClass> {
    let Ok(code) = u32::try_from(code) else {
        return None;
    };
    Some(match code {
        F::ERROR_DISK_FULL | F::ERROR_HANDLE_DISK_FULL | F::ERROR_DISK_QUOTA_EXCEEDED => {
            OsClass::DiskFull
        }
        F::ERROR_FILE_TOO_LARGE => OsClass::FileTooLarge,
        F::ERROR_WRITE_PROTECT => OsClass::ReadOnly,
        F::ERROR_ACCESS_DENIED | F::ERROR_PRIVILEGE_NOT_HELD | F::ERROR_NETWORK_ACCESS_DENIED => {
            OsClass::PermissionDenied
        }
        F::ERROR_SHARING_VIOLATION
        | F::ERROR_LOCK_VIOLATION
        | F::ERROR_USER_MAPPED_FILE
        | F::ERROR_DRIVE_LOCKED => OsClass::InUse,
        F::ERROR_NOT_READY
        | F::ERROR_DEVICE_NOT_CONNECTED
        | F::ERROR_DEV_NOT_EXIST
        | F::ERROR_NO_MEDIA_IN_DRIVE
        | F::ERROR_MEDIA_CHANGED
        | F::ERROR_NETNAME_DELETED => OsClass::DeviceGone,
        _ => return None,
    })
}

/// Whether a rename that failed with `e` may succeed if tried again shortly: another
/// process (typically an antivirus scanner or the search indexer, which open new files
/// the moment they appear) holds the file without sharing it. Replacing a file that is
/// open without `FILE_SHARE_DELETE` fails with `ERROR_ACCESS_DENIED`, so that counts too.
pub(crate) fn rename_may_succeed_later(e: &std::io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|c| classify(c) == Some(OsClass::InUse) || c == F::ERROR_ACCESS_DENIED as i32)
}

/// Windows cannot open a folder as a file (`File::open` of a folder is "access denied"),
/// and NTFS journals its metadata (creations, renames) itself, in order. So durability is
/// by flushing each file's data (`FlushFileBuffers`, i.e. `File::sync_all`) before the
/// rename that gives it its final name; a later rename (the manifest's, which marks a pack
/// complete) cannot survive a crash that an earlier one did not.
pub(crate) const FLUSH_EACH_FILE_BEFORE_RENAME: bool = true;

/// Nothing to do on Windows: see [`FLUSH_EACH_FILE_BEFORE_RENAME`].
pub(crate) fn sync_dir(_dir: &Path) {}

/// Nothing to flush at once on Windows: every file was flushed before its rename (see
/// [`FLUSH_EACH_FILE_BEFORE_RENAME`]); there is no folder or volume handle to flush
/// without administrator rights.
pub(crate) struct FsFlush;

impl FsFlush {
    pub(crate) fn open(_dir: &Path) -> std::io::Result<FsFlush> {
        Ok(FsFlush)
    }

    pub(crate) fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Nothing to do: every file is flushed (`FlushFileBuffers`) before its rename, and
/// Windows has no call to start a file's writeback without waiting for it.
pub(crate) fn start_writeback(_f: &File, _offset: u64, _len: u64) {}

/// Nothing to do for a file opened for reading only (`FlushFileBuffers` needs a handle
/// with write access, and would fail with "access denied"): such a file is a hard link
/// just made to content this machine did not write (it came on the transfer drive, or
/// Connect flushed it before its rename), and the link itself is NTFS metadata, journaled.
pub(crate) fn sync_read_only(_f: &File) -> std::io::Result<()> {
    Ok(())
}

/// Outputs inherit the permissions of the folder they are written to, as every Windows
/// program's do.
pub(crate) fn public_output(_builder: &mut tempfile::Builder<'_, '_>) {}

/// The verbatim (`\\?\`) form of `path`, absolute and normalised, NUL-terminated, for Win32
/// calls: no 260-character limit, and `\\server\share\x` becomes `\\?\UNC\server\share\x`.
pub(crate) fn verbatim(path: &Path) -> std::io::Result<Vec<u16>> {
    let mut out = verbatim_path(path)?
        .as_os_str()
        .encode_wide()
        .collect::<Vec<u16>>();
    out.push(0);
    Ok(out)
}

/// [`verbatim`] as a path, for handing to libraries (tempfile's rename) that call Win32
/// with the path as given.
pub(crate) fn verbatim_path(path: &Path) -> std::io::Result<PathBuf> {
    let s = path.as_os_str().encode_wide().collect::<Vec<u16>>();
    let w = |t: &str| t.encode_utf16().collect::<Vec<u16>>();
    if s.starts_with(&w(r"\\?\")) || s.starts_with(&w(r"\\.\")) {
        return Ok(path.to_path_buf());
    }
    // GetFullPathNameW: absolute, `/` turned into `\`, `.` and `..` resolved (a verbatim
    // path is taken literally by Windows, so it must be normalised first).
    let abs = std::path::absolute(path)?;
    let a = abs.as_os_str().encode_wide().collect::<Vec<u16>>();
    let out = if a.starts_with(&w(r"\\?\")) || a.starts_with(&w(r"\\.\")) {
        a
    } else if let Some(unc) = a.strip_prefix(&w(r"\\")[..]) {
        [w(r"\\?\UNC\"), unc.to_vec()].concat()
    } else {
        [w(r"\\?\"), a].concat()
    };
    Ok(PathBuf::from(OsString::from_wide(&out)))
}

/// The long-path form of a folder for libraries that call Win32 with the path as given.
pub(crate) fn long_path_form(dir: &Path) -> PathBuf {
    verbatim_path(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn check(ok: windows_sys::core::BOOL) -> std::io::Result<()> {
    if ok == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The current user's SID (from the process token), in a buffer that keeps it alive.
pub(crate) struct CurrentUser {
    buf: Vec<u64>,
}

impl CurrentUser {
    pub(crate) fn get() -> std::io::Result<Self> {
        let mut token: F::HANDLE = std::ptr::null_mut();
        // SAFETY: plain Win32 calls with valid out-pointers; the token is closed below.
        unsafe {
            check(Threading::OpenProcessToken(
                Threading::GetCurrentProcess(),
                S::TOKEN_QUERY,
                &mut token,
            ))?;
            let token = File::from_raw_handle(token as RawHandle); // closes it on drop
            let handle = token.as_raw_handle() as F::HANDLE;
            let mut len = 0u32;
            S::GetTokenInformation(handle, S::TokenUser, std::ptr::null_mut(), 0, &mut len);
            let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
            check(S::GetTokenInformation(
                handle,
                S::TokenUser,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut len,
            ))?;
            Ok(CurrentUser { buf })
        }
    }

    pub(crate) fn sid(&self) -> S::PSID {
        // SAFETY: `buf` holds the TOKEN_USER GetTokenInformation wrote, 8-byte aligned.
        unsafe { (*(self.buf.as_ptr() as *const S::TOKEN_USER)).User.Sid }
    }
}

/// A DACL with one entry: full control for `sid`.
fn owner_only_acl(sid: S::PSID) -> std::io::Result<Vec<u64>> {
    // SAFETY: `sid` is a valid SID; the ACL buffer is sized as the documentation says
    // (ACL header + ACCESS_ALLOWED_ACE without its SidStart + the SID) and 8-byte aligned.
    unsafe {
        let size = std::mem::size_of::<S::ACL>() + std::mem::size_of::<S::ACCESS_ALLOWED_ACE>()
            - std::mem::size_of::<u32>()
            + S::GetLengthSid(sid) as usize;
        let mut buf = vec![0u64; size.div_ceil(8)];
        let acl = buf.as_mut_ptr() as *mut S::ACL;
        check(S::InitializeAcl(
            acl,
            (buf.len() * 8) as u32,
            S::ACL_REVISION,
        ))?;
        check(S::AddAccessAllowedAce(
            acl,
            S::ACL_REVISION,
            FS::FILE_ALL_ACCESS,
            sid,
        ))?;
        Ok(buf)
    }
}

/// Create `path` (which must not exist) with a DACL that grants the current user alone
/// full control, protected from inheriting the folder's entries: a private key is never
/// readable by the machine's other users, not even between creation and a later change.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    let user = CurrentUser::get()?;
    let acl = owner_only_acl(user.sid())?;
    let wide = verbatim(path)?;
    // SAFETY: the security descriptor, ACL and SID outlive the CreateFileW call; the
    // returned handle is owned by the File.
    unsafe {
        let mut sd: S::SECURITY_DESCRIPTOR = std::mem::zeroed();
        let psd = &mut sd as *mut S::SECURITY_DESCRIPTOR as S::PSECURITY_DESCRIPTOR;
        check(S::InitializeSecurityDescriptor(
            psd,
            windows_sys::Win32::System::SystemServices::SECURITY_DESCRIPTOR_REVISION,
        ))?;
        check(S::SetSecurityDescriptorDacl(
            psd,
            1,
            acl.as_ptr() as *const S::ACL,
            0,
        ))?;
        check(S::SetSecurityDescriptorControl(
            psd,
            S::SE_DACL_PROTECTED,
            S::SE_DACL_PROTECTED,
        ))?;
        let sa = S::SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<S::SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: psd,
            bInheritHandle: 0,
        };
        let h = FS::CreateFileW(
            wide.as_ptr(),
            F::GENERIC_READ | F::GENERIC_WRITE,
            FS::FILE_SHARE_READ | FS::FILE_SHARE_WRITE | FS::FILE_SHARE_DELETE,
            &sa,
            FS::CREATE_NEW,
            FS::FILE_ATTRIBUTE_NORMAL,
            std::ptr::null_mut(),
        );
        if h == F::INVALID_HANDLE_VALUE {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from_raw_handle(h as RawHandle))
    }
}

fn attribute_tag(f: &File) -> std::io::Result<FS::FILE_ATTRIBUTE_TAG_INFO> {
    let mut info = FS::FILE_ATTRIBUTE_TAG_INFO::default();
    // SAFETY: the buffer is a FILE_ATTRIBUTE_TAG_INFO of the size given.
    check(unsafe {
        FS::GetFileInformationByHandleEx(
            f.as_raw_handle() as F::HANDLE,
            FS::FileAttributeTagInfo,
            (&mut info as *mut FS::FILE_ATTRIBUTE_TAG_INFO).cast(),
            std::mem::size_of::<FS::FILE_ATTRIBUTE_TAG_INFO>() as u32,
        )
    })?;
    Ok(info)
}

/// (volume serial number, file index): the identity of an open file.
fn file_id(f: &File) -> std::io::Result<(u32, u32, u32)> {
    // SAFETY: zeroed is a valid BY_HANDLE_FILE_INFORMATION; the call fills it in.
    unsafe {
        let mut info: FS::BY_HANDLE_FILE_INFORMATION = std::mem::zeroed();
        check(FS::GetFileInformationByHandle(
            f.as_raw_handle() as F::HANDLE,
            &mut info,
        ))?;
        Ok((
            info.dwVolumeSerialNumber,
            info.nFileIndexHigh,
            info.nFileIndexLow,
        ))
    }
}

/// Number of names (hard links) the open file has.
#[cfg(test)]
pub(crate) fn link_count(f: &File) -> std::io::Result<u32> {
    // SAFETY: as in `file_id`.
    unsafe {
        let mut info: FS::BY_HANDLE_FILE_INFORMATION = std::mem::zeroed();
        check(FS::GetFileInformationByHandle(
            f.as_raw_handle() as F::HANDLE,
            &mut info,
        ))?;
        Ok(info.nNumberOfLinks)
    }
}

/// Symbolic links, junctions and mount points: the reparse tags that name another file
/// (`IsReparseTagNameSurrogate`).
fn is_name_surrogate(tag: u32) -> bool {
    tag & 0x2000_0000 != 0
}

/// Open a file for reading without following a link in its last component: opened with
/// `FILE_FLAG_OPEN_REPARSE_POINT`, a symbolic link, junction or mount point is refused
/// ([`LinkRefused`]). A reparse point that is not a link (a deduplicated or cloud file)
/// is opened through to its data, and must be the very file first opened.
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<File> {
    open_no_follow_with(path, OpenOptions::new().read(true))
}

/// Open a file for writing, created if it is not there (not truncated), without
/// following a link in its last component, as [`open_no_follow`] does.
pub(crate) fn open_write_no_follow(path: &Path) -> std::io::Result<File> {
    open_no_follow_with(
        path,
        OpenOptions::new().write(true).create(true).truncate(false),
    )
}

/// Open `path` with `options` without following a link in its last component (see
/// [`open_no_follow`]).
fn open_no_follow_with(path: &Path, options: &OpenOptions) -> std::io::Result<File> {
    let f = options
        .clone()
        .custom_flags(FS::FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)?;
    let info = attribute_tag(&f)?;
    if info.FileAttributes & FS::FILE_ATTRIBUTE_REPARSE_POINT == 0 {
        return Ok(f);
    }
    if is_name_surrogate(info.ReparseTag) {
        return Err(std::io::Error::other(LinkRefused));
    }
    let g = options.open(path)?;
    if file_id(&f)? != file_id(&g)? {
        return Err(std::io::Error::other(LinkRefused));
    }
    Ok(g)
}

/// `ERROR_CANT_RESOLVE_FILENAME`: a chain of links too long (or a loop).
pub(crate) fn is_os_link_refusal(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(F::ERROR_CANT_RESOLVE_FILENAME as i32)
}

/// The current full path of an open file (`\\?\C:\...` or `\\?\UNC\...`), NUL-terminated.
fn final_path(f: &File) -> Option<Vec<u16>> {
    let h = f.as_raw_handle() as F::HANDLE;
    let mut buf = vec![0u16; 512];
    loop {
        // SAFETY: the buffer holds `buf.len()` UTF-16 units.
        let n = unsafe {
            FS::GetFinalPathNameByHandleW(
                h,
                buf.as_mut_ptr(),
                buf.len() as u32,
                FS::FILE_NAME_NORMALIZED | FS::VOLUME_NAME_DOS,
            )
        } as usize;
        if n == 0 {
            return None;
        }
        if n < buf.len() {
            buf.truncate(n);
            buf.push(0);
            return Some(buf);
        }
        buf.resize(n + 1, 0);
    }
}

/// Hard-link the already opened `src` as `dest` (NTFS: `CreateHardLinkW` on the open
/// file's current path, or on `src_path` where that cannot be had). The new name must
/// then be the very file opened (same volume and file index), or it is removed again:
/// a source renamed or replaced meanwhile is never placed. False when the file system
/// cannot (FAT and exFAT sticks, another volume), and the caller copies instead.
pub(crate) fn hard_link_open_file(src: &File, src_path: &Path, dest: &Path) -> bool {
    let from = match final_path(src) {
        Some(p) => p,
        None => match verbatim(src_path) {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    let Ok(to) = verbatim(dest) else {
        return false;
    };
    // SAFETY: both are NUL-terminated UTF-16 strings that outlive the call.
    if unsafe { FS::CreateHardLinkW(to.as_ptr(), from.as_ptr(), std::ptr::null()) } == 0 {
        return false;
    }
    let same = match (file_id(src), File::open(dest).and_then(|d| file_id(&d))) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        let _ = std::fs::remove_file(dest);
    }
    same
}

fn ioctl<I>(f: &File, code: u32, input: Option<&I>, out: &mut [u8]) -> bool {
    let mut returned = 0u32;
    let (ip, il) = match input {
        Some(i) => (
            i as *const I as *const core::ffi::c_void,
            std::mem::size_of::<I>() as u32,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the input is a plain struct of the size given; the output buffer is
    // `out.len()` bytes; the call is synchronous (no OVERLAPPED).
    unsafe {
        IO::DeviceIoControl(
            f.as_raw_handle() as F::HANDLE,
            code,
            ip,
            il,
            out.as_mut_ptr().cast(),
            out.len() as u32,
            &mut returned,
            std::ptr::null_mut(),
        ) != 0
    }
}

/// Clone `src` into the empty `dst` with ReFS block cloning
/// (`FSCTL_DUPLICATE_EXTENTS_TO_FILE`, Windows Server 2016 and later, Dev Drive). False
/// when the volume cannot (NTFS, FAT, another volume), and `dst` is left empty.
pub(crate) fn reflink(src: &File, dst: &File) -> bool {
    // The cluster size comes from the integrity information only ReFS has: elsewhere this
    // fails at once, and the caller stops trying.
    let mut out = [0u8; std::mem::size_of::<Ioctl::FSCTL_GET_INTEGRITY_INFORMATION_BUFFER>()];
    if !ioctl::<()>(src, Ioctl::FSCTL_GET_INTEGRITY_INFORMATION, None, &mut out) {
        return false;
    }
    // SAFETY: the ioctl filled the buffer with that structure (read unaligned).
    let integrity: Ioctl::FSCTL_GET_INTEGRITY_INFORMATION_BUFFER =
        unsafe { std::ptr::read_unaligned(out.as_ptr().cast()) };
    let cluster = u64::from(integrity.ClusterSizeInBytes);
    let (Ok(len), Ok(info)) = (src.metadata().map(|m| m.len()), attribute_tag(src)) else {
        return false;
    };
    if cluster == 0 {
        return false;
    }
    let done = (|| {
        // The clone must match the source's integrity setting and sparseness, and have its
        // final size before the extents are shared.
        let set = Ioctl::FSCTL_SET_INTEGRITY_INFORMATION_BUFFER {
            ChecksumAlgorithm: integrity.ChecksumAlgorithm,
            Reserved: 0,
            Flags: integrity.Flags,
        };
        if !ioctl(
            dst,
            Ioctl::FSCTL_SET_INTEGRITY_INFORMATION,
            Some(&set),
            &mut [],
        ) {
            return false;
        }
        if info.FileAttributes & FS::FILE_ATTRIBUTE_SPARSE_FILE != 0
            && !ioctl::<()>(dst, Ioctl::FSCTL_SET_SPARSE, None, &mut [])
        {
            return false;
        }
        if dst.set_len(len).is_err() {
            return false;
        }
        // Whole clusters (the last one may run past the end of the file), at most
        // 2 GiB at a time (a multiple of every ReFS cluster size).
        const CHUNK: u64 = 1 << 31;
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).div_ceil(cluster) * cluster;
            let n = n.min(CHUNK);
            let d = Ioctl::DUPLICATE_EXTENTS_DATA {
                FileHandle: src.as_raw_handle() as F::HANDLE,
                SourceFileOffset: offset as i64,
                TargetFileOffset: offset as i64,
                ByteCount: n as i64,
            };
            if !ioctl(
                dst,
                Ioctl::FSCTL_DUPLICATE_EXTENTS_TO_FILE,
                Some(&d),
                &mut [],
            ) {
                return false;
            }
            offset += n;
        }
        true
    })();
    if !done {
        let _ = dst.set_len(0);
    }
    done
}

/// The flag the console handler sets; null until [`on_interrupt`] installs it.
static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

/// Runs on a thread of its own that Windows starts for each console event.
unsafe extern "system" fn handle_console(ctrl: u32) -> windows_sys::core::BOOL {
    let flag = FLAG.load(Ordering::SeqCst);
    if flag.is_null() {
        return 0; // not ours: the default handler ends the process
    }
    // SAFETY: FLAG only ever holds a pointer to a `'static` AtomicBool.
    let flag = unsafe { &*flag };
    match ctrl {
        Console::CTRL_C_EVENT | Console::CTRL_BREAK_EVENT => {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130); // a second Ctrl+C: stop now, as on Unix
            }
            1
        }
        // The console window is closing or the user logging off: Windows ends the process
        // when this returns (or after about five seconds). Cancel, and give the running
        // operation that long to remove its temporary output; if it finishes first, the
        // process exits and this thread with it.
        Console::CTRL_CLOSE_EVENT | Console::CTRL_LOGOFF_EVENT | Console::CTRL_SHUTDOWN_EVENT => {
            flag.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(4));
            1
        }
        _ => 0,
    }
}

/// Ctrl+C and Ctrl+Break (and closing the console window) set `flag`, which the running
/// operation polls through its progress callback to cancel cleanly, exactly like SIGINT
/// on Unix; a second Ctrl+C ends the process at once (exit 130).
pub(crate) fn on_interrupt(flag: &'static AtomicBool) {
    FLAG.store(
        flag as *const AtomicBool as *mut AtomicBool,
        Ordering::SeqCst,
    );
    // SAFETY: the handler is a valid `extern "system"` function for the process's life.
    unsafe {
        Console::SetConsoleCtrlHandler(Some(handle_console), 1);
    }
}

#[cfg(test)]
pub(crate) use tests::{acl_of, console_event, sid_string, under_wine};

#[cfg(test)]
mod tests {
    use super::*;

    /// A SID in its string form (`S-1-5-21-…`).
    pub(crate) fn sid_string(sid: S::PSID) -> String {
        // SAFETY: the string is allocated by the call and freed with LocalFree.
        unsafe {
            let mut p: windows_sys::core::PWSTR = std::ptr::null_mut();
            check(S::Authorization::ConvertSidToStringSidW(sid, &mut p)).unwrap();
            let len = (0..).take_while(|&i| *p.add(i) != 0).count();
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(p, len));
            F::LocalFree(p.cast());
            s
        }
    }

    /// Whether this runs under Wine (its ntdll exports `wine_get_version`).
    pub(crate) fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
        // SAFETY: both names are NUL-terminated; nothing is called through the pointer.
        unsafe {
            let h = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
            !h.is_null() && GetProcAddress(h, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    /// The file's DACL as GetSecurityInfo reads it back: (protected from inheritance,
    /// entries as (access allowed?, access mask, SID string)).
    pub(crate) fn acl_of(path: &Path) -> (bool, Vec<(bool, u32, String)>) {
        let f = OpenOptions::new()
            .access_mode(FS::READ_CONTROL)
            .open(path)
            .unwrap();
        // SAFETY: GetSecurityInfo allocates the descriptor (freed with LocalFree below);
        // the DACL and ACEs point into it.
        unsafe {
            let mut dacl: *mut S::ACL = std::ptr::null_mut();
            let mut sd: S::PSECURITY_DESCRIPTOR = std::ptr::null_mut();
            let rc = S::Authorization::GetSecurityInfo(
                f.as_raw_handle() as F::HANDLE,
                S::Authorization::SE_FILE_OBJECT,
                S::DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut dacl,
                std::ptr::null_mut(),
                &mut sd,
            );
            assert_eq!(rc, 0, "GetSecurityInfo failed");
            assert!(!dacl.is_null(), "no DACL: everyone has access");
            let mut control = 0u16;
            let mut revision = 0u32;
            check(S::GetSecurityDescriptorControl(
                sd,
                &mut control,
                &mut revision,
            ))
            .unwrap();
            let mut size = S::ACL_SIZE_INFORMATION::default();
            check(S::GetAclInformation(
                dacl,
                (&mut size as *mut S::ACL_SIZE_INFORMATION).cast(),
                std::mem::size_of::<S::ACL_SIZE_INFORMATION>() as u32,
                S::AclSizeInformation,
            ))
            .unwrap();
            let mut aces = Vec::new();
            for i in 0..size.AceCount {
                let mut ace: *mut core::ffi::c_void = std::ptr::null_mut();
                check(S::GetAce(dacl, i, &mut ace)).unwrap();
                let ace = ace as *const S::ACCESS_ALLOWED_ACE;
                let allowed = u32::from((*ace).Header.AceType)
                    == windows_sys::Win32::System::SystemServices::ACCESS_ALLOWED_ACE_TYPE;
                let sid = std::ptr::addr_of!((*ace).SidStart) as S::PSID;
                aces.push((allowed, (*ace).Mask, sid_string(sid)));
            }
            F::LocalFree(sd);
            (control & S::SE_DACL_PROTECTED != 0, aces)
        }
    }

    /// Deliver a console event to the installed handler as Windows would (on a thread of
    /// its own), returning whether the handler took it.
    pub(crate) fn console_event(ctrl: u32) -> bool {
        std::thread::spawn(move || unsafe { handle_console(ctrl) } != 0)
            .join()
            .unwrap()
    }
}
