#!/usr/bin/env python3
"""The C ABI seen from Python through ctypes (run by tests/ffi_python.rs).

    ffi_test.py basics   versions, errors, NULL arguments, bad paths, forced panic, sites,
                         trust, sample data, cancellation, threads
    ffi_test.py flow     Prepare -> Connect -> Import against the reference service

Environment: SCT_LIB (path of libserviceconnection.so), SCT_TEST_DIR, SCT_EXPECT_VERSION,
SCT_PUBLISHER_PUB; for "flow" also SCT_SERVICE_URL, SCT_EXPECT_PACK, SCT_FOREIGN_PUB.
Prints one line per check group and "ALL OK" at the end; exits non-zero on failure.
"""

import ctypes
import json
import os
import sys
import tempfile
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_bool, c_char, c_char_p, c_int,
                    c_size_t, c_uint32, c_uint64, c_void_p)

SCT_OK = 7000
SCT_INVALID_ARGUMENT = 7001
SCT_NOT_FOUND = 7002
SCT_ALREADY_EXISTS = 7003
SCT_NOT_A_SITE_DATABASE = 7004
SCT_BUSY = 7006
SCT_CANCELLED = 7021
SCT_NULL_PARAMETER = 7100
SCT_INVALID_UTF8 = 7101
SCT_PANIC = 7102


class Progress(Structure):
    _fields_ = [
        ("phase", c_uint32),
        ("item", c_char_p),
        ("item_done", c_uint64),
        ("item_total", c_uint64),
        ("done", c_uint64),
        ("total", c_uint64),
    ]


PROGRESS_CB = CFUNCTYPE(c_int, c_void_p, POINTER(Progress))
ROW_CB = CFUNCTYPE(c_int, c_void_p, c_char_p)

lib = ctypes.CDLL(os.environ["SCT_LIB"])


def declare(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# Library-owned strings come back as c_void_p so they can be freed after reading.
declare("sct_version", c_char_p)
declare("sct_abi_version", c_uint32)
declare("sct_status_name", c_char_p, c_uint32)
declare("sct_last_error_status", c_int)
declare("sct_last_error_message", c_void_p)
declare("sct_last_error_copy", c_int, POINTER(c_char), c_size_t, POINTER(c_size_t))
declare("sct_string_free", None, c_void_p)
declare("sct_site_create", c_int, c_char_p, c_char_p, POINTER(c_void_p))
declare("sct_site_info", c_int, c_char_p, POINTER(c_void_p))
declare("sct_generate_sample_data", c_int, c_char_p, c_uint64, c_uint64, PROGRESS_CB, c_void_p,
        POINTER(c_uint64))
declare("sct_prepare", c_int, c_char_p, c_char_p, c_bool, PROGRESS_CB, c_void_p, POINTER(c_void_p))
declare("sct_export_csv", c_int, c_char_p, c_char_p, c_bool, PROGRESS_CB, c_void_p,
        POINTER(c_void_p))
declare("sct_usage_rows", c_int, c_char_p, ROW_CB, c_void_p, POINTER(c_uint64))
declare("sct_connect", c_int, c_char_p, PROGRESS_CB, c_void_p, POINTER(c_void_p))
declare("sct_import", c_int, c_char_p, PROGRESS_CB, c_void_p, POINTER(c_void_p))
declare("sct_list_updates", c_int, c_char_p, POINTER(c_void_p))
declare("sct_console_content", c_int, c_char_p, POINTER(c_void_p))
declare("sct_trust_add", c_int, c_char_p, c_char_p, c_char_p, POINTER(c_void_p))
declare("sct_trust_list", c_int, c_char_p, POINTER(c_void_p))
declare("sct_trust_remove", c_int, c_char_p, c_char_p)

NO_PROGRESS = PROGRESS_CB()  # a NULL callback


class SctError(Exception):
    def __init__(self, status, message):
        super().__init__(f"{status_name(status)} ({status}): {message}")
        self.status = status
        self.message = message


def status_name(status):
    return lib.sct_status_name(status).decode()


def take_string(ptr):
    """Copy a library-owned string and free it."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        lib.sct_string_free(ptr)


def last_error():
    return take_string(lib.sct_last_error_message())


def b(s):
    return s.encode("utf-8") if isinstance(s, str) else s


def call_json(fn, *args):
    """Call an export whose last argument is `char **out_json`; parse the result."""
    out = c_void_p()
    status = fn(*args, byref(out))
    if status != SCT_OK:
        assert not out.value, "out_json written on failure"
        raise SctError(status, last_error())
    return json.loads(take_string(out.value))


def expect_error(status, fn, *args, contains=None):
    """Call an export expecting `status`; return the last error message."""
    try:
        call_json(fn, *args)
    except SctError as e:
        assert e.status == status, f"{fn.__name__}: got {e}, expected {status_name(status)}"
        assert lib.sct_last_error_status() == status
        if contains is not None:
            assert contains in e.message, f"{e.message!r} should mention {contains!r}"
        return e.message
    raise AssertionError(f"{fn.__name__} succeeded, expected {status_name(status)}")


class ProgressRecorder:
    """A progress callback recording what it saw; cancels on call `cancel_after` if set."""

    def __init__(self, cancel_after=0):
        self.calls = 0
        self.reports = []  # (phase, done, total)
        self.phases = set()
        self.threads = set()
        self.items_ok = True
        self.cancel_after = cancel_after
        self.cb = PROGRESS_CB(self._on_progress)

    def _on_progress(self, _user_data, p):
        self.calls += 1
        self.reports.append((p.contents.phase, p.contents.done, p.contents.total))
        self.phases.add(p.contents.phase)
        self.threads.add(threading.get_ident())
        if p.contents.item is None:
            self.items_ok = False
        return 1 if self.cancel_after and self.calls >= self.cancel_after else 0


def files_under(path):
    """Files under `path` (lock files excluded: Connect keeps one to serialise runs)."""
    found = []
    for root, _dirs, files in os.walk(path):
        found += [os.path.join(root, f) for f in files if not f.endswith(".lock")]
    return found


SITE_OPTIONS = json.dumps(
    {"site_code": "ps1", "site_version": "5.00.9128.1000", "diagnostics_level": "Enhanced"})


def test_versions():
    assert lib.sct_version().decode() == os.environ["SCT_EXPECT_VERSION"]
    assert lib.sct_abi_version() == 1
    assert status_name(SCT_CANCELLED) == "Cancelled"
    assert status_name(SCT_PANIC) == "Panic"
    assert status_name(1) == "Unknown"
    print(f"ok versions {lib.sct_version().decode()} abi {lib.sct_abi_version()}")


def test_last_error(tmp):
    assert lib.sct_last_error_status() == SCT_OK and last_error() is None
    msg = expect_error(SCT_NOT_FOUND, lib.sct_site_info, b(os.path.join(tmp, "nope", "site.db")),
                       contains="does not exist")
    full = c_size_t()
    assert lib.sct_last_error_copy(None, 0, byref(full)) == SCT_OK
    assert full.value == len(msg.encode())
    buf = ctypes.create_string_buffer(6)
    n = c_size_t()
    assert lib.sct_last_error_copy(buf, 6, byref(n)) == SCT_OK
    assert n.value == full.value and buf.value == msg.encode()[:5]
    assert lib.sct_last_error_copy(buf, 6, None) == SCT_NULL_PARAMETER
    assert lib.sct_last_error_status() == SCT_NOT_FOUND, "retrieval keeps the last error"
    lib.sct_string_free(None)
    print("ok last error retrieval")


def test_null_arguments(site):
    out = c_void_p()
    n = c_uint64(42)
    assert lib.sct_site_create(None, b(SITE_OPTIONS), byref(out)) == SCT_NULL_PARAMETER
    assert "site_db" in last_error()
    assert lib.sct_site_create(b(site), None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_site_create(b(site), b(SITE_OPTIONS), None) == SCT_NULL_PARAMETER
    assert not os.path.exists(site)
    assert lib.sct_site_info(None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_generate_sample_data(b(site), 1, 1, NO_PROGRESS, None, None) == SCT_NULL_PARAMETER
    assert lib.sct_prepare(b(site), None, False, NO_PROGRESS, None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_export_csv(None, b"x.csv", False, NO_PROGRESS, None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_usage_rows(b(site), ROW_CB(), None, byref(n)) == SCT_NULL_PARAMETER
    assert "row_cb" in last_error()
    assert lib.sct_connect(None, NO_PROGRESS, None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_import(b"{}", NO_PROGRESS, None, None) == SCT_NULL_PARAMETER
    assert lib.sct_list_updates(None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_console_content(None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_console_content(b(site), None) == SCT_NULL_PARAMETER
    assert lib.sct_trust_add(b(site), None, None, byref(out)) == SCT_NULL_PARAMETER
    assert lib.sct_trust_list(b(site), None) == SCT_NULL_PARAMETER
    assert lib.sct_trust_remove(b(site), None) == SCT_NULL_PARAMETER
    assert not out.value and n.value == 42, "no out-parameter written"
    expect_error(SCT_INVALID_UTF8, lib.sct_site_info, b"\xff\xfe.db", contains="UTF-8")
    expect_error(SCT_INVALID_ARGUMENT, lib.sct_connect, b'{"source": 1}', NO_PROGRESS, None,
                 contains="options JSON")
    assert not os.path.exists(site)
    print("ok NULL arguments and invalid UTF-8")


def test_bad_paths(tmp):
    folder = os.path.join(tmp, "folder")
    os.mkdir(folder)
    expect_error(SCT_NOT_A_SITE_DATABASE, lib.sct_site_info, b(folder))
    text = os.path.join(tmp, "text.db")
    with open(text, "w") as f:
        f.write("not a database\n" * 20)
    expect_error(SCT_NOT_A_SITE_DATABASE, lib.sct_site_info, b(text), contains="text.db")
    nested = os.path.join(tmp, "missing", "new.db")
    expect_error(SCT_NOT_FOUND, lib.sct_site_create, b(nested), b(SITE_OPTIONS))
    assert not os.path.exists(nested)
    print("ok bad paths")


def test_site(tmp, site):
    info = call_json(lib.sct_site_create, b(site), b(SITE_OPTIONS))
    assert lib.sct_last_error_status() == SCT_OK
    assert info["site_code"] == "PS1" and info["site_version"] == "5.00.9128.1000"
    assert info["diagnostics_level"] == "Enhanced" and info["scp_mode"] == "Offline"
    assert info["usage_rows"] == [0, 0, 0] and len(info["hierarchy_id"]) == 36
    assert info["path"] == site
    expect_error(SCT_ALREADY_EXISTS, lib.sct_site_create, b(site), b(SITE_OPTIONS))
    other = os.path.join(tmp, "other.db")
    expect_error(SCT_INVALID_ARGUMENT, lib.sct_site_create, b(other),
                 b'{"site_code":"TOOLONG","site_version":"5.00.9128.1000"}', contains="TOOLONG")
    assert not os.path.exists(other)

    rec = ProgressRecorder()
    rows = c_uint64()
    assert lib.sct_generate_sample_data(b(site), 500, 11, rec.cb, None, byref(rows)) == SCT_OK, last_error()
    assert rows.value == 500 and rec.calls > 0 and rec.items_ok
    assert rec.phases == {7} and rec.threads == {threading.get_ident()}
    cancel = ProgressRecorder(cancel_after=1)
    rows = c_uint64(99)
    status = lib.sct_generate_sample_data(b(site), 500, 12, cancel.cb, None, byref(rows))
    assert status == SCT_CANCELLED, status_name(status)
    assert rows.value == 99 and cancel.calls == 1
    assert sum(call_json(lib.sct_site_info, b(site))["usage_rows"]) == 500
    assert call_json(lib.sct_list_updates, b(site)) == []
    none = call_json(lib.sct_console_content, b(site))
    assert none["imported"] is False and none["content_version"] is None, none
    assert none["servicing"] == [] and none["messages"] == []
    expect_error(SCT_NOT_FOUND, lib.sct_console_content, b(os.path.join(tmp, "absent.db")))
    print("ok site, sample data, cancellation")


def with_captured_stderr(fn):
    """Run fn() with file descriptor 2 redirected to a file; return (result, bytes written)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return result, captured.read()


def test_forced_panic(site):
    os.environ["SCT_FFI_TEST_PANIC"] = "1"
    os.environ["RUST_BACKTRACE"] = "1"  # the default hook would add a backtrace
    try:
        msg, written = with_captured_stderr(
            lambda: expect_error(SCT_PANIC, lib.sct_site_info, b(site), contains="SCT_FFI_TEST_PANIC"))
    finally:
        del os.environ["SCT_FFI_TEST_PANIC"]
        del os.environ["RUST_BACKTRACE"]
    assert written == b"", f"the library wrote to the host's stderr: {written!r}"
    assert "src/ffi/panic.rs:" in msg, f"the panic's location is kept in the message: {msg!r}"
    assert call_json(lib.sct_site_info, b(site))["site_code"] == "PS1"
    print("ok forced panic caught")


def test_unknown_option_fields(tmp, site):
    """A misspelt option is refused, naming the field, in every options type."""
    other = os.path.join(tmp, "typo.db")
    expect_error(SCT_INVALID_ARGUMENT, lib.sct_site_create, b(other),
                 b'{"site_code":"PS2","site_version":"5.00.9128.1000","diagnostic_level":"Full"}',
                 contains="unknown field `diagnostic_level`")
    assert not os.path.exists(other)
    msg = expect_error(SCT_INVALID_ARGUMENT, lib.sct_import,
                       b(json.dumps({"site_db": site, "source": tmp, "insecure_skip_signature_chek": True})),
                       NO_PROGRESS, None, contains="unknown field `insecure_skip_signature_chek`")
    assert "\n" not in msg
    connect = {"source": tmp, "dest": os.path.join(tmp, "never"), "service_uri": "http://127.0.0.1:9",
               "selction": "All"}
    expect_error(SCT_INVALID_ARGUMENT, lib.sct_connect, b(json.dumps(connect)), NO_PROGRESS, None,
                 contains="unknown field `selction`")
    del connect["selction"]
    connect["proxy"] = {"uri": "127.0.0.1:9", "user": "meg", "password": "hunter2"}
    msg = expect_error(SCT_INVALID_ARGUMENT, lib.sct_connect, b(json.dumps(connect)), NO_PROGRESS, None,
                       contains="unknown field `user`")
    assert "hunter2" not in msg
    assert not os.path.exists(os.path.join(tmp, "never"))
    print("ok unknown option fields refused")


def test_reentrance(site):
    """A write to the same site from inside a callback of a write on it fails at once."""
    pub = os.environ["SCT_PUBLISHER_PUB"]
    seen = []

    @PROGRESS_CB
    def on_progress(_user_data, _p):
        if not seen:
            out = c_void_p()
            status = lib.sct_trust_add(b(site), b(pub), None, byref(out))
            seen.append((status, last_error()))
            # Reads are fine from inside the callback.
            seen.append(call_json(lib.sct_site_info, b(site))["site_code"])
        return 0

    rows = c_uint64()
    assert lib.sct_generate_sample_data(b(site), 10, 99, on_progress, None, byref(rows)) == SCT_OK, last_error()
    (status, message), code = seen
    assert status == SCT_BUSY, status_name(status)
    assert "same thread" in message and "callback" in message, message
    assert code == "PS1"
    assert call_json(lib.sct_trust_list, b(site)) == [], "the refused write changed nothing"
    print("ok same-thread re-entrance fails at once")


def test_trust(tmp, site):
    pub = os.environ["SCT_PUBLISHER_PUB"]
    entry = call_json(lib.sct_trust_add, b(site), b(pub), b"reference service")
    assert len(entry["key_id"]) == 16 and entry["comment"] == "reference service"
    again = call_json(lib.sct_trust_add, b(site), b(pub), None)
    assert again == entry, "trusting twice returns the existing entry"
    assert call_json(lib.sct_trust_list, b(site)) == [entry]
    bogus = os.path.join(tmp, "bogus.pub")
    with open(bogus, "w") as f:
        f.write("untrusted comment: x\nnot a key\n")
    expect_error(SCT_INVALID_ARGUMENT, lib.sct_trust_add, b(site), b(bogus), None, contains="bogus.pub")
    assert lib.sct_trust_remove(b(site), b(entry["key_id"].lower())) == SCT_OK, last_error()
    assert lib.sct_trust_remove(b(site), b(entry["key_id"])) == SCT_NOT_FOUND
    assert call_json(lib.sct_trust_list, b(site)) == []
    print("ok trust add/list/remove")


def test_threads(tmp):
    errors = []

    def worker(i):
        try:
            site = os.path.join(tmp, f"py-thread-{i}.db")
            code = f"P{i:02d}"
            opts = json.dumps({"site_code": code, "site_version": "5.00.9128.1000"})
            assert call_json(lib.sct_site_create, b(site), b(opts))["site_code"] == code
            for r in range(3):
                missing = f"/nonexistent-py-{i}/x.db"
                msg = expect_error(SCT_NOT_FOUND, lib.sct_site_info, b(missing))
                assert missing in msg, "each thread sees its own last error"
                rec = ProgressRecorder()
                rows = c_uint64()
                assert lib.sct_generate_sample_data(b(site), 100, r, rec.cb, None, byref(rows)) == SCT_OK
                assert rows.value == 100 and rec.threads == {threading.get_ident()}
            assert sum(call_json(lib.sct_site_info, b(site))["usage_rows"]) == 300
        except Exception as e:  # reported below
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    print("ok 4 threads on different sites")


def test_same_site_threads(tmp):
    site = os.path.join(tmp, "py-shared.db")
    call_json(lib.sct_site_create, b(site), b(SITE_OPTIONS))
    errors = []

    def worker(i):
        try:
            for r in range(3):
                rows = c_uint64()
                status = lib.sct_generate_sample_data(b(site), 100, i * 10 + r, NO_PROGRESS, None, byref(rows))
                assert status == SCT_OK and rows.value == 100, status_name(status)
        except Exception as e:  # reported below
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(call_json(lib.sct_site_info, b(site))["usage_rows"]) == 900
    print("ok 3 threads on one site, serialised")


def assert_rows_reported_as_they_go(rec, phase, rows):
    """Prepare (1) / Export (2) report rows while they run, not only at the ends."""
    assert rec.phases == {phase}, rec.phases
    assert all(total == rows for _, _, total in rec.reports), rec.reports
    dones = [done for _, done, _ in rec.reports]
    assert dones == sorted(dones) and dones[-1] == rows, dones
    assert any(0 < d < rows for d in dones), f"no report while the rows were written: {dones}"


def test_flow(tmp):
    url = os.environ["SCT_SERVICE_URL"]
    pack = os.environ["SCT_EXPECT_PACK"]
    site = os.path.join(tmp, "flow.db")
    info = call_json(lib.sct_site_create, b(site), b(SITE_OPTIONS))
    hierarchy = info["hierarchy_id"]
    rows = c_uint64()
    # Enough rows that Prepare and Export report several times as they go.
    assert lib.sct_generate_sample_data(b(site), 30_000, 5, NO_PROGRESS, None, byref(rows)) == SCT_OK
    basic, enhanced, _full = call_json(lib.sct_site_info, b(site))["usage_rows"]
    leaving = basic + enhanced

    seen = []

    @ROW_CB
    def on_row(_user_data, row_json):
        seen.append(json.loads(row_json.decode()))
        return 0

    count = c_uint64()
    assert lib.sct_usage_rows(b(site), on_row, None, byref(count)) == SCT_OK, last_error()
    assert count.value == leaving == len(seen)
    assert {r["level"] for r in seen} <= {"Basic", "Enhanced"}
    assert all(len(r["site_code"]) in (0, 64) for r in seen), "identifying attributes hashed"
    print(f"ok usage rows ({leaving})")

    csv = os.path.join(tmp, "UsageData.csv")
    rec = ProgressRecorder()
    exported = call_json(lib.sct_export_csv, b(site), b(csv), False, rec.cb, None)
    assert exported["format"] == "Csv" and exported["record_count"] == leaving
    assert_rows_reported_as_they_go(rec, 2, leaving)

    usb = os.path.join(tmp, "usb")
    os.mkdir(usb)
    cab = os.path.join(usb, "UsageData.cab")
    cancel = ProgressRecorder(cancel_after=1)
    expect_error(SCT_CANCELLED, lib.sct_prepare, b(site), b(cab), False, cancel.cb, None)
    assert os.listdir(usb) == [], "cancelled Prepare left nothing"
    rec = ProgressRecorder()
    prepared = call_json(lib.sct_prepare, b(site), b(cab), False, rec.cb, None)
    assert prepared["format"] == "Cab" and prepared["record_count"] == leaving
    assert prepared["hierarchy_id"] == hierarchy and prepared["size"] == os.path.getsize(cab)
    assert_rows_reported_as_they_go(rec, 1, leaving)
    expect_error(SCT_ALREADY_EXISTS, lib.sct_prepare, b(site), b(cab), False, NO_PROGRESS, None)
    print("ok prepare and export")

    cancelled_dest = os.path.join(tmp, "packs-cancelled")
    opts = {"source": cab, "dest": cancelled_dest, "service_uri": url, "selection": "All"}
    cancel = ProgressRecorder(cancel_after=1)
    expect_error(SCT_CANCELLED, lib.sct_connect, b(json.dumps(opts)), cancel.cb, None)
    assert files_under(cancelled_dest) == [], "cancelled Connect left files"
    # Cancelled mid-download (throttled so the pack cannot finish first): what stays is
    # exactly what the header says: .sct-partial files and verified content files, but no
    # manifest.json for the unfinished pack and no connect-report.json.
    dest = os.path.join(tmp, "packs")
    opts["dest"] = dest
    mid = {"calls": 0}

    @PROGRESS_CB
    def cancel_mid_download(_user_data, p):
        mid["calls"] += 1
        return 1 if p.contents.phase == 4 and 0 < p.contents.done < p.contents.total else 0

    throttled = dict(opts, max_bytes_per_second=100_000)
    expect_error(SCT_CANCELLED, lib.sct_connect, b(json.dumps(throttled)), cancel_mid_download, None)
    kept = files_under(dest)
    assert any(f.endswith(".sct-partial") for f in kept), f"received bytes kept for resuming: {kept}"
    assert not [f for f in kept if os.path.basename(f) in ("manifest.json", "connect-report.json")], kept
    unfinished = call_json(lib.sct_import, b(json.dumps(
        {"site_db": site, "source": dest, "insecure_skip_signature_check": True})), NO_PROGRESS, None)
    assert [r["status"] for r in unfinished] == ["Refused"], f"Import never trusts an unfinished pack: {unfinished}"
    assert call_json(lib.sct_list_updates, b(site)) == []
    assert all(f.endswith(".sct-partial") or "/content/" in f or f.endswith(".minisig") for f in kept), kept

    rec = ProgressRecorder()
    report = call_json(lib.sct_connect, b(json.dumps(opts)), rec.cb, None)
    assert [u["status"] for u in report["uploads"]] == ["Uploaded"]
    assert report["uploads"][0]["hierarchy_id"] == hierarchy
    packs = {p["package_guid"]: p for p in report["packs"]}
    assert pack in packs and packs[pack]["status"] == "Downloaded", report
    statuses = {f["status"] for f in packs[pack]["files"]}
    assert statuses <= {"Downloaded", "Resumed", "AlreadyComplete"}, statuses
    assert statuses & {"Resumed", "AlreadyComplete"}, f"the re-run used the kept bytes: {statuses}"
    assert report["bytes_transferred"] < packs[pack]["size"], report["bytes_transferred"]
    assert rec.threads == {threading.get_ident()}
    assert os.path.isfile(os.path.join(dest, "connect-report.json"))
    console = report["console_content"]
    assert console["status"] == "Downloaded" and console["content_version"] == 1, console
    assert os.path.isfile(os.path.join(dest, "ConsoleContent", "console-content.json"))
    assert os.path.isfile(os.path.join(dest, "ConsoleContent", "console-content.json.minisig"))
    print("ok connect")

    import_opts = b(json.dumps({"site_db": site, "source": dest}))
    refused = call_json(lib.sct_import, import_opts, NO_PROGRESS, None)
    # Untrusted: the pack and the console content are both refused, nothing recorded.
    assert [(r["item"], r["status"], r["error_kind"]) for r in refused] == [
        ("UpdatePack", "Refused", "SignatureInvalid"),
        ("ConsoleContent", "Refused", "SignatureInvalid")], refused
    assert call_json(lib.sct_console_content, b(site))["imported"] is False
    call_json(lib.sct_trust_add, b(site), b(os.environ["SCT_PUBLISHER_PUB"]), b"reference service")
    cancel = ProgressRecorder(cancel_after=1)
    expect_error(SCT_CANCELLED, lib.sct_import, import_opts, cancel.cb, None)
    assert call_json(lib.sct_list_updates, b(site)) == []
    rec = ProgressRecorder()
    results = call_json(lib.sct_import, import_opts, rec.cb, None)
    phases = [phase for phase, _, _ in rec.reports]
    assert set(phases) == {5, 6} and phases == sorted(phases), "Verify (5), then placement (6)"
    verified = [(done, total) for phase, done, total in rec.reports if phase == 5]
    assert verified[-1][0] == verified[-1][1] > 0, verified
    assert [(r["item"], r["package_guid"], r["status"], r["state"]) for r in results] == [
        ("UpdatePack", pack, "Imported", "ReadyToInstall"),
        ("ConsoleContent", None, "Imported", None)], results
    assert results[1]["version"] == "1"
    updates = call_json(lib.sct_list_updates, b(site))
    assert [(u["package_guid"], u["state"], u["state_code"]) for u in updates] == [
        (pack, "ReadyToInstall", 262146)]
    # As the header says: relative to the site database's folder in the list, the same
    # folder as an absolute path in the import result.
    assert not os.path.isabs(updates[0]["content_path"]), updates[0]["content_path"]
    content = os.path.join(os.path.dirname(site), updates[0]["content_path"])
    assert os.path.isabs(results[0]["content_path"])
    assert os.path.samefile(content, results[0]["content_path"]), (content, results[0]["content_path"])
    assert os.path.isdir(content), content
    again = call_json(lib.sct_import, import_opts, NO_PROGRESS, None)
    assert [r["status"] for r in again] == ["AlreadyImported", "AlreadyImported"]
    print("ok import")

    held = call_json(lib.sct_console_content, b(site))
    assert held["imported"] is True and held["content_version"] == 1, held
    assert [r["product"] for r in held["servicing"]] == ["Windows 11"]
    # Only the message for every hierarchy: the other hierarchy's was never recorded.
    assert [m["id"] for m in held["messages"]] == ["for-everyone"], held["messages"]
    assert held["messages"][0]["expired"] is False and "hierarchies" not in held["messages"][0]
    assert len(held["publisher_key_id"]) == 16
    print("ok console content")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("basics", "flow"):
        sys.exit(f"usage: {sys.argv[0]} basics|flow")
    tmp = os.environ["SCT_TEST_DIR"]
    test_versions()
    if sys.argv[1] == "basics":
        site = os.path.join(tmp, "site.db")
        test_last_error(tmp)
        test_null_arguments(site)
        test_bad_paths(tmp)
        test_site(tmp, site)
        test_forced_panic(site)
        test_unknown_option_fields(tmp, site)
        test_reentrance(site)
        test_trust(tmp, site)
        test_threads(tmp)
        test_same_site_threads(tmp)
    else:
        test_flow(tmp)
    print("ALL OK")


if __name__ == "__main__":
    main()
