/*
 * The C ABI seen from C: compiled against include/serviceconnection.h and linked to the
 * built libserviceconnection by tests/ffi_c.rs, which also runs it under Valgrind.
 *
 *   ffi_test basics   version, errors, NULL arguments, bad paths, forced panic, sites,
 *                     trust, sample data, cancellation, threads
 *   ffi_test flow     Prepare -> Connect -> Import against the reference service
 *
 * Environment: SCT_TEST_DIR (an empty scratch folder), SCT_EXPECT_VERSION,
 * SCT_PUBLISHER_PUB (the service's publisher.pub); for "flow" also SCT_SERVICE_URL,
 * SCT_EXPECT_PACK (GUID of the pack the service offers) and SCT_FOREIGN_PUB (another
 * publisher's key). Prints one line per check and "ALL OK" at the end; exits 1 on the
 * first failure.
 */
#include "serviceconnection.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef _WIN32
/* mingw-w64: the same program runs against serviceconnection.dll (under Wine in CI). */
#include <direct.h>
#define mkdir(path, mode) _mkdir(path)
#define lstat stat
/* _putenv_s also sets the process environment the library reads. */
#define setenv(name, value, overwrite) _putenv_s(name, value)
#define unsetenv(name) _putenv_s(name, "")
#define SEP "\\"
#else
#define SEP "/"
#endif

static int checks = 0;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        checks++;                                                                             \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
            char *last_ = sct_last_error_message();                                           \
            fprintf(stderr, "  last error: %s\n", last_ ? last_ : "(none)");                  \
            sct_string_free(last_);                                                           \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

/* Expect a status; on mismatch print both names and the last error. */
#define EXPECT_STATUS(call, expected)                                                         \
    do {                                                                                      \
        sct_status got_ = (call);                                                             \
        CHECK(got_ == (expected), "%s returned %s (%d), expected %s", #call,                  \
              sct_status_name((uint32_t)got_), (int)got_, sct_status_name((uint32_t)(expected))); \
    } while (0)

/* A value no successful call would write, to prove out-parameters stay untouched. */
static char sentinel_byte;
#define SENTINEL ((char *)&sentinel_byte)

/* A copy of the variable's value, made once per name: getenv's pointer is only good until
 * the environment changes (the forced-panic test sets a variable; on Windows the C runtime
 * then moves its copy of the environment and the old pointer reads freed memory). The
 * copies stay reachable from this table until the program ends. */
static const char *env(const char *name) {
    static struct {
        const char *name;
        char *value;
    } copies[16];
    for (size_t i = 0; i < sizeof copies / sizeof copies[0] && copies[i].name; i++)
        if (!strcmp(copies[i].name, name))
            return copies[i].value;
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "environment variable %s is not set\n", name);
        exit(2);
    }
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++)
        if (!copies[i].name) {
            copies[i].name = name;
            copies[i].value = strdup(v);
            return copies[i].value;
        }
    fprintf(stderr, "env: more than 16 variables\n");
    exit(2);
}

static char *path_in(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s" SEP "%s", dir, name);
    return p;
}

/* `s` as a JSON string literal, quotes included (malloc'd): paths carry backslashes on
 * Windows, and a path is never pasted into JSON unescaped. */
static char *json_quote(const char *s) {
    char *q = malloc(strlen(s) * 6 + 3), *w = q;
    *w++ = '"';
    for (const unsigned char *r = (const unsigned char *)s; *r; r++) {
        if (*r == '"' || *r == '\\') {
            *w++ = '\\';
            *w++ = (char)*r;
        } else if (*r < 0x20) {
            w += sprintf(w, "\\u%04x", *r);
        } else {
            *w++ = (char)*r;
        }
    }
    *w++ = '"';
    *w = '\0';
    return q;
}

/* A Connect options object for `source` -> `dest` at `url`, selection All. */
static void connect_options(char *opts, size_t len, const char *source, const char *dest, const char *url) {
    char *s = json_quote(source), *d = json_quote(dest), *u = json_quote(url);
    snprintf(opts, len, "{\"source\":%s,\"dest\":%s,\"service_uri\":%s,\"selection\":\"All\"}", s, d, u);
    free(s);
    free(d);
    free(u);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Files under `dir`, recursively (0 when it does not exist). Lock files (`*.lock`, which
 * Connect keeps beside its output to serialise runs) are not output and are not counted. */
static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t len = strlen(e->d_name);
        if (len > 5 && !strcmp(e->d_name + len - 5, ".lock")) continue;
        char *p = path_in(dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) n += count_files(p);
            else n++;
        }
        free(p);
    }
    closedir(d);
    return n;
}

/* Does `json` (compact serde output) contain `needle`? */
static int has(const char *json, const char *needle) { return strstr(json, needle) != NULL; }

/* Copy the string value of the first `"key":"..."` in `json` into `out` (no escapes). */
static int json_str(const char *json, const char *key, char *out, size_t len) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    if (!p) return 0;
    p += strlen(pat);
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= len) return 0;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = 0;
    return 1;
}

/* Sum of the numbers in `"usage_rows":[a,b,c]`. */
static unsigned long long usage_rows_total(const char *json) {
    const char *p = strstr(json, "\"usage_rows\":[");
    if (!p) return (unsigned long long)-1;
    unsigned long long a = 0, b = 0, c = 0;
    if (sscanf(p, "\"usage_rows\":[%llu,%llu,%llu]", &a, &b, &c) != 3) return (unsigned long long)-1;
    return a + b + c;
}

/* ---- progress callbacks ---- */

struct progress_state {
    pthread_t thread;     /* the thread that made the call */
    int calls;
    int cancel_after;     /* cancel on this call (1-based); 0 = never */
    uint32_t phases_seen; /* bit per phase */
    int wrong_thread;
    int null_item;
    uint64_t last_done;
    const char *reenter_site; /* if set, call sct_site_info on it from the first callback */
    int reentered_ok;
};

static int on_progress(void *user_data, const sct_progress *p) {
    struct progress_state *s = user_data;
    s->calls++;
    if (!pthread_equal(pthread_self(), s->thread)) s->wrong_thread++;
    if (p->item == NULL) s->null_item++;
    if (p->phase < 32) s->phases_seen |= 1u << p->phase;
    s->last_done = p->done;
    if (s->reenter_site && s->calls == 1) {
        char *json = NULL;
        if (sct_site_info(s->reenter_site, &json) == SCT_OK && has(json, "\"site_code\"")) s->reentered_ok = 1;
        sct_string_free(json);
    }
    return s->cancel_after > 0 && s->calls >= s->cancel_after;
}

static struct progress_state progress_state(int cancel_after) {
    struct progress_state s;
    memset(&s, 0, sizeof s);
    s.thread = pthread_self();
    s.cancel_after = cancel_after;
    return s;
}

/* ---- last error ---- */

static void check_last_error_contains(sct_status status, const char *needle) {
    CHECK(sct_last_error_status() == status, "last error status %s, expected %s",
          sct_status_name((uint32_t)sct_last_error_status()), sct_status_name((uint32_t)status));
    char *msg = sct_last_error_message();
    CHECK(msg != NULL, "a failure leaves a message");
    CHECK(strstr(msg, needle) != NULL, "message \"%s\" mentions \"%s\"", msg, needle);
    sct_string_free(msg);
}

static void check_no_last_error(void) {
    CHECK(sct_last_error_status() == SCT_OK, "success clears the last error status");
    char *msg = sct_last_error_message();
    CHECK(msg == NULL, "success clears the last error message (got \"%s\")", msg);
}

/* ---- basics ---- */

static void test_versions(void) {
    CHECK(strcmp(sct_version(), env("SCT_EXPECT_VERSION")) == 0, "sct_version() = %s", sct_version());
    CHECK(sct_abi_version() == SCT_ABI_VERSION, "ABI %u vs header %d", sct_abi_version(), SCT_ABI_VERSION);
    CHECK(strcmp(sct_status_name(SCT_OK), "Ok") == 0, "name of SCT_OK");
    CHECK(strcmp(sct_status_name(SCT_CANCELLED), "Cancelled") == 0, "name of SCT_CANCELLED");
    CHECK(strcmp(sct_status_name(SCT_PANIC), "Panic") == 0, "name of SCT_PANIC");
    CHECK(strcmp(sct_status_name(12345), "Unknown") == 0, "name of a non-status");
    CHECK(SCT_CANCELLED == 7021 && SCT_NULL_PARAMETER == 7100, "stable status values");
    printf("ok versions %s abi %u\n", sct_version(), sct_abi_version());
}

static void test_last_error_api(const char *dir) {
    check_no_last_error();
    char *missing = path_in(dir, "no-such-folder/site.db");
    char *out = SENTINEL;
    EXPECT_STATUS(sct_site_info(missing, &out), SCT_NOT_FOUND);
    CHECK(out == SENTINEL, "out_json untouched on failure");
    check_last_error_contains(SCT_NOT_FOUND, "does not exist");

    size_t full = 0;
    EXPECT_STATUS(sct_last_error_copy(NULL, 0, &full), SCT_OK); /* size query */
    CHECK(full > 10, "message length %zu", full);
    char small[8];
    size_t n = 0;
    EXPECT_STATUS(sct_last_error_copy(small, sizeof small, &n), SCT_OK);
    CHECK(n == full, "out_len is the full length even when truncated");
    CHECK(strlen(small) == sizeof small - 1, "truncated and NUL-terminated");
    char *big = malloc(full + 1);
    EXPECT_STATUS(sct_last_error_copy(big, full + 1, &n), SCT_OK);
    char *msg = sct_last_error_message();
    CHECK(msg && strcmp(big, msg) == 0, "copy equals message");
    CHECK(strncmp(small, msg, sizeof small - 1) == 0, "truncated copy is a prefix");
    sct_string_free(msg);
    free(big);
    EXPECT_STATUS(sct_last_error_copy(small, sizeof small, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_last_error_copy(NULL, 4, &n), SCT_NULL_PARAMETER);
    /* The retrieval functions do not disturb the last error. */
    CHECK(sct_last_error_status() == SCT_NOT_FOUND, "last error kept by retrieval");

    sct_string_free(NULL);
    free(missing);
    printf("ok last error retrieval\n");
}

static const char *SITE_OPTIONS =
    "{\"site_code\":\"ps1\",\"site_version\":\"5.00.9128.1000\",\"diagnostics_level\":\"Enhanced\"}";

static void test_null_arguments(const char *site) {
    char *out = SENTINEL;
    uint64_t n = 42;
    EXPECT_STATUS(sct_site_create(NULL, SITE_OPTIONS, &out), SCT_NULL_PARAMETER);
    check_last_error_contains(SCT_NULL_PARAMETER, "site_db");
    EXPECT_STATUS(sct_site_create(site, NULL, &out), SCT_NULL_PARAMETER);
    check_last_error_contains(SCT_NULL_PARAMETER, "options_json");
    EXPECT_STATUS(sct_site_create(site, SITE_OPTIONS, NULL), SCT_NULL_PARAMETER);
    CHECK(!exists(site), "a NULL out-parameter is refused before any work");
    EXPECT_STATUS(sct_site_info(NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_site_info(site, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_generate_sample_data(NULL, 10, 1, NULL, NULL, &n), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_generate_sample_data(site, 10, 1, NULL, NULL, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_prepare(NULL, "x.cab", false, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_prepare(site, NULL, false, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_prepare(site, "x.cab", false, NULL, NULL, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_export_csv(NULL, "x.csv", false, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_export_csv(site, NULL, false, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_export_csv(site, "x.csv", false, NULL, NULL, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_usage_rows(NULL, NULL, NULL, &n), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_usage_rows(site, NULL, NULL, &n), SCT_NULL_PARAMETER);
    check_last_error_contains(SCT_NULL_PARAMETER, "row_cb");
    EXPECT_STATUS(sct_connect(NULL, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_connect("{}", NULL, NULL, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_import(NULL, NULL, NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_import("{}", NULL, NULL, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_list_updates(NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_list_updates(site, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_add(NULL, "k.pub", "c", &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_add(site, NULL, "c", &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_add(site, "k.pub", "c", NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_list(NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_list(site, NULL), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_remove(NULL, "ABC"), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_trust_remove(site, NULL), SCT_NULL_PARAMETER);
    CHECK(out == SENTINEL && n == 42, "no out-parameter written by a failed call");

    /* Invalid UTF-8 is refused, not mangled into another path. */
    EXPECT_STATUS(sct_site_info("\xff\xfe.db", &out), SCT_INVALID_UTF8);
    check_last_error_contains(SCT_INVALID_UTF8, "site_db");
    EXPECT_STATUS(sct_connect("{\"source\":\"\xc3\x28\"}", NULL, NULL, &out), SCT_INVALID_UTF8);
    EXPECT_STATUS(sct_site_info("", &out), SCT_INVALID_ARGUMENT);
    CHECK(out == SENTINEL, "no out-parameter written");
    CHECK(!exists(site), "nothing created by refused calls");
    printf("ok NULL arguments and invalid UTF-8\n");
}

/* Write `text` to a new file at `path`; a file that cannot be created is a failed check
 * (with the C library's reason), not a crash in fputs. */
static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot create %s: %s", path, strerror(errno));
    fputs(text, f);
    CHECK(fclose(f) == 0, "cannot write %s: %s", path, strerror(errno));
}

static void test_bad_paths(const char *dir) {
    char *out = SENTINEL;
    char *folder = path_in(dir, "a-folder");
    mkdir(folder, 0755);
    EXPECT_STATUS(sct_site_info(folder, &out), SCT_NOT_A_SITE_DATABASE);
    char *text = path_in(dir, "not-a-site.db");
    write_text(text, "this is not a database, just text that is long enough to have a header page\n");
    EXPECT_STATUS(sct_site_info(text, &out), SCT_NOT_A_SITE_DATABASE);
    check_last_error_contains(SCT_NOT_A_SITE_DATABASE, "not-a-site.db");
    char *nested = path_in(dir, "missing-folder" SEP "new.db");
    EXPECT_STATUS(sct_site_create(nested, SITE_OPTIONS, &out), SCT_NOT_FOUND);
    CHECK(!exists(nested), "nothing created");
    CHECK(out == SENTINEL, "no out-parameter written");
    free(folder);
    free(text);
    free(nested);
    printf("ok bad paths\n");
}

static void test_forced_panic(const char *dir, const char *site) {
    char *out = SENTINEL;
    /* The library must not write to its host's streams: stderr goes to a file meanwhile. */
    char *captured = path_in(dir, "stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    int fd = open(captured, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    /* dup2 returns the new descriptor on POSIX but 0 in the Windows CRT: -1 is the only
     * failure both agree on. A failed redirect is undone before it is reported, so the
     * report is not lost in the file. */
    int redirected = saved >= 0 && fd >= 0 && dup2(fd, 2) != -1;
    if (fd >= 0)
        close(fd);
    if (!redirected && saved >= 0) {
        dup2(saved, 2);
        close(saved);
    }
    CHECK(redirected, "redirect stderr");
    setenv("SCT_FFI_TEST_PANIC", "1", 1);
    setenv("RUST_BACKTRACE", "1", 1); /* the default hook would add a backtrace */
    sct_status got = sct_site_info(site, &out);
    unsetenv("SCT_FFI_TEST_PANIC");
    unsetenv("RUST_BACKTRACE");
    dup2(saved, 2);
    close(saved);
    EXPECT_STATUS(got, SCT_PANIC);
    struct stat st;
    CHECK(stat(captured, &st) == 0 && st.st_size == 0, "the library wrote %lld bytes to stderr",
          (long long)st.st_size);
    free(captured);
    CHECK(out == SENTINEL, "no out-parameter written after a panic");
    check_last_error_contains(SCT_PANIC, "SCT_FFI_TEST_PANIC");
    check_last_error_contains(SCT_PANIC, "src/ffi/panic.rs:");
    /* The process and the library carry on. */
    EXPECT_STATUS(sct_site_info(site, &out), SCT_OK);
    CHECK(out != SENTINEL && has(out, "\"site_code\":\"PS1\""), "info after the panic: %s", out);
    sct_string_free(out);
    check_no_last_error();
    printf("ok forced panic caught\n");
}

/* Misspelt options are refused with the field's name, never silently ignored. */
static void test_unknown_option_fields(const char *dir, const char *site) {
    char *out = SENTINEL;
    char *other = path_in(dir, "typo.db");
    EXPECT_STATUS(sct_site_create(other, "{\"site_code\":\"PS2\",\"site_version\":\"5.00.9128.1000\",\"sitename\":\"x\"}",
                                  &out),
                  SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "unknown field `sitename`");
    CHECK(!exists(other) && out == SENTINEL, "nothing created");
    char opts[2048];
    char *qsite = json_quote(site), *qdir = json_quote(dir), *never = path_in(dir, "never");
    char *qnever = json_quote(never);
    snprintf(opts, sizeof opts, "{\"site_db\":%s,\"source\":%s,\"insecure_skip_signature_chek\":true}",
             qsite, qdir);
    EXPECT_STATUS(sct_import(opts, NULL, NULL, &out), SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "unknown field `insecure_skip_signature_chek`");
    snprintf(opts, sizeof opts,
             "{\"source\":%s,\"dest\":%s,\"service_uri\":\"http://127.0.0.1:9\",\"paralelism\":2}", qdir,
             qnever);
    free(qsite);
    free(qdir);
    free(never);
    free(qnever);
    EXPECT_STATUS(sct_connect(opts, NULL, NULL, &out), SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "unknown field `paralelism`");
    CHECK(out == SENTINEL, "no out-parameter written");
    free(other);
    printf("ok unknown option fields refused\n");
}

/* A write to the same site from inside a callback of a write on it fails at once. */
struct reentry_state {
    const char *site;
    int calls;
    sct_status status;
    char *message;
};

static int reentering_progress(void *user_data, const sct_progress *p) {
    (void)p;
    struct reentry_state *s = user_data;
    if (s->calls++ == 0) {
        char *json = NULL;
        s->status = sct_trust_add(s->site, env("SCT_PUBLISHER_PUB"), "from a callback", &json);
        sct_string_free(json);
        s->message = sct_last_error_message();
    }
    return 0;
}

static void test_reentrance(const char *site) {
    struct reentry_state s = {site, 0, SCT_OK, NULL};
    uint64_t rows = 0;
    EXPECT_STATUS(sct_generate_sample_data(site, 10, 77, reentering_progress, &s, &rows), SCT_OK);
    CHECK(s.status == SCT_BUSY, "write from inside the callback: %s", sct_status_name((uint32_t)s.status));
    CHECK(s.message && strstr(s.message, "same thread"), "message: %s", s.message ? s.message : "(none)");
    sct_string_free(s.message);
    char *out = NULL;
    EXPECT_STATUS(sct_trust_list(site, &out), SCT_OK);
    CHECK(strcmp(out, "[]") == 0, "the refused write changed nothing: %s", out);
    sct_string_free(out);
    printf("ok same-thread re-entrance fails at once\n");
}

static void test_site_and_sample_data(const char *dir, const char *site) {
    char *out = SENTINEL;
    EXPECT_STATUS(sct_site_create(site, SITE_OPTIONS, &out), SCT_OK);
    check_no_last_error();
    CHECK(has(out, "\"site_code\":\"PS1\""), "site code upper-cased: %s", out);
    CHECK(has(out, "\"site_version\":\"5.00.9128.1000\""), "%s", out);
    CHECK(has(out, "\"diagnostics_level\":\"Enhanced\""), "%s", out);
    CHECK(has(out, "\"scp_mode\":\"Offline\""), "%s", out);
    CHECK(has(out, "\"usage_rows\":[0,0,0]"), "%s", out);
    char hierarchy[64];
    CHECK(json_str(out, "hierarchy_id", hierarchy, sizeof hierarchy) && strlen(hierarchy) == 36,
          "hierarchy GUID in %s", out);
    sct_string_free(out);

    out = SENTINEL;
    EXPECT_STATUS(sct_site_create(site, SITE_OPTIONS, &out), SCT_ALREADY_EXISTS);
    CHECK(out == SENTINEL, "untouched");
    char *other = path_in(dir, "other.db");
    EXPECT_STATUS(sct_site_create(other, "{\"site_code\":\"TOOLONG\",\"site_version\":\"5.00.9128.1000\"}", &out),
                  SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "TOOLONG");
    EXPECT_STATUS(sct_site_create(other, "{not json", &out), SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "JSON");
    CHECK(!exists(other), "refused creations leave no file");
    free(other);

    /* Sample data with progress on this thread. */
    struct progress_state ps = progress_state(0);
    ps.reenter_site = site; /* the callback may call the library, even on the same site */
    uint64_t rows = 0;
    EXPECT_STATUS(sct_generate_sample_data(site, 600, 7, on_progress, &ps, &rows), SCT_OK);
    CHECK(ps.reentered_ok, "sct_site_info from inside the progress callback");
    check_no_last_error();
    CHECK(rows == 600, "rows inserted %llu", (unsigned long long)rows);
    CHECK(ps.calls > 0, "progress was reported");
    CHECK(ps.wrong_thread == 0, "progress only on the calling thread");
    CHECK(ps.null_item == 0, "item never NULL");
    CHECK(ps.phases_seen == (1u << 7), "phase Generate only (seen %#x)", ps.phases_seen);

    /* Cancel from the callback: SCT_CANCELLED and nothing inserted. */
    struct progress_state cancel = progress_state(1);
    rows = 99;
    EXPECT_STATUS(sct_generate_sample_data(site, 600, 8, on_progress, &cancel, &rows), SCT_CANCELLED);
    CHECK(rows == 99, "out_rows untouched on cancel");
    CHECK(cancel.calls == 1, "no callback after cancelling (%d)", cancel.calls);
    check_last_error_contains(SCT_CANCELLED, "cancel");

    EXPECT_STATUS(sct_site_info(site, &out), SCT_OK);
    CHECK(usage_rows_total(out) == 600, "cancelled generation inserted nothing: %s", out);
    sct_string_free(out);

    EXPECT_STATUS(sct_list_updates(site, &out), SCT_OK);
    CHECK(strcmp(out, "[]") == 0, "a new site has no updates: %s", out);
    sct_string_free(out);
    printf("ok site, sample data, cancellation\n");
}

static void test_trust(const char *dir, const char *site) {
    const char *pub = env("SCT_PUBLISHER_PUB");
    char *out = SENTINEL;
    EXPECT_STATUS(sct_trust_add(site, pub, "reference service", &out), SCT_OK);
    char key_id[32];
    CHECK(json_str(out, "key_id", key_id, sizeof key_id) && strlen(key_id) == 16, "key id in %s", out);
    CHECK(has(out, "\"comment\":\"reference service\""), "%s", out);
    sct_string_free(out);
    EXPECT_STATUS(sct_trust_add(site, pub, NULL, &out), SCT_OK); /* again: no-op */
    CHECK(has(out, "\"comment\":\"reference service\""), "existing entry returned: %s", out);
    sct_string_free(out);
    EXPECT_STATUS(sct_trust_list(site, &out), SCT_OK);
    CHECK(has(out, key_id) && out[0] == '[', "%s", out);
    CHECK(strstr(strstr(out, key_id) + 1, key_id) == NULL, "listed once: %s", out);
    sct_string_free(out);

    char *bogus = path_in(dir, "bogus.pub");
    write_text(bogus, "untrusted comment: nothing\nnot-base64!\n");
    out = SENTINEL;
    EXPECT_STATUS(sct_trust_add(site, bogus, NULL, &out), SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "bogus.pub");
    char *missing = path_in(dir, "missing.pub");
    EXPECT_STATUS(sct_trust_add(site, missing, NULL, &out), SCT_NOT_FOUND);
    CHECK(out == SENTINEL, "untouched");
    free(bogus);
    free(missing);

    EXPECT_STATUS(sct_trust_remove(site, key_id), SCT_OK);
    EXPECT_STATUS(sct_trust_remove(site, key_id), SCT_NOT_FOUND);
    check_last_error_contains(SCT_NOT_FOUND, key_id);
    EXPECT_STATUS(sct_trust_list(site, &out), SCT_OK);
    CHECK(strcmp(out, "[]") == 0, "%s", out);
    sct_string_free(out);
    printf("ok trust add/list/remove\n");
}

/* ---- threads: different sites at once, each with its own last error ---- */

struct worker {
    const char *dir;
    int index;
    int failed_line;
    char why[256];
};

#define WCHECK(w, cond)                                                                      \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            (w)->failed_line = __LINE__;                                                     \
            char *m_ = sct_last_error_message();                                             \
            snprintf((w)->why, sizeof (w)->why, "%s (last error: %s)", #cond, m_ ? m_ : "none"); \
            sct_string_free(m_);                                                             \
            return NULL;                                                                     \
        }                                                                                    \
    } while (0)

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char name[64], opts[256], code[8], missing[64];
    snprintf(name, sizeof name, "thread-%d.db", w->index);
    snprintf(code, sizeof code, "T%02d", w->index);
    snprintf(opts, sizeof opts, "{\"site_code\":\"%s\",\"site_version\":\"5.00.9128.1000\",\"diagnostics_level\":\"Full\"}", code);
    char *site = path_in(w->dir, name);
    char *out = NULL;
    for (int round = 0; round < 3; round++) {
        /* A failure on this thread... */
        snprintf(missing, sizeof missing, "/nonexistent-%d/x.db", w->index);
        WCHECK(w, sct_site_info(missing, &out) == SCT_NOT_FOUND);
        WCHECK(w, sct_last_error_status() == SCT_NOT_FOUND);
        char *msg = sct_last_error_message();
        WCHECK(w, msg && strstr(msg, missing));
        sct_string_free(msg);
        if (round == 0) {
            WCHECK(w, sct_site_create(site, opts, &out) == SCT_OK);
        } else {
            WCHECK(w, sct_site_info(site, &out) == SCT_OK);
        }
        char want[32];
        snprintf(want, sizeof want, "\"site_code\":\"%s\"", code);
        WCHECK(w, has(out, want));
        sct_string_free(out);
        /* ...is cleared by the next success on this thread only. */
        WCHECK(w, sct_last_error_status() == SCT_OK);
        struct progress_state ps = progress_state(0);
        uint64_t rows = 0;
        WCHECK(w, sct_generate_sample_data(site, 150, (uint64_t)w->index, on_progress, &ps, &rows) == SCT_OK);
        WCHECK(w, rows == 150 && ps.wrong_thread == 0);
    }
    WCHECK(w, sct_site_info(site, &out) == SCT_OK);
    WCHECK(w, usage_rows_total(out) == 450);
    sct_string_free(out);
    free(site);
    return NULL;
}

static void test_threads(const char *dir) {
    enum { N = 4 };
    pthread_t t[N];
    struct worker w[N];
    for (int i = 0; i < N; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].dir = dir;
        w[i].index = i;
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++)
        CHECK(w[i].failed_line == 0, "thread %d failed at line %d: %s", i, w[i].failed_line, w[i].why);
    /* The main thread's last error was not touched by the workers. */
    check_no_last_error();
    printf("ok %d threads on different sites\n", N);
}

/* Several threads writing to one site: serialised by the site database, nothing lost. */
static void *same_site_worker(void *arg) {
    struct worker *w = arg; /* w->dir is the shared site database here */
    for (int round = 0; round < 3; round++) {
        uint64_t rows = 0;
        WCHECK(w, sct_generate_sample_data(w->dir, 100, (uint64_t)(w->index * 10 + round), NULL, NULL, &rows) == SCT_OK);
        WCHECK(w, rows == 100);
        char *out = NULL;
        WCHECK(w, sct_site_info(w->dir, &out) == SCT_OK);
        sct_string_free(out);
    }
    return NULL;
}

static void test_same_site_threads(const char *dir) {
    enum { N = 3 };
    char *site = path_in(dir, "shared.db");
    char *out = NULL;
    EXPECT_STATUS(sct_site_create(site, SITE_OPTIONS, &out), SCT_OK);
    sct_string_free(out);
    pthread_t t[N];
    struct worker w[N];
    for (int i = 0; i < N; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].dir = site;
        w[i].index = i;
        CHECK(pthread_create(&t[i], NULL, same_site_worker, &w[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++)
        CHECK(w[i].failed_line == 0, "thread %d failed at line %d: %s", i, w[i].failed_line, w[i].why);
    EXPECT_STATUS(sct_site_info(site, &out), SCT_OK);
    CHECK(usage_rows_total(out) == N * 300, "every thread's rows are in: %s", out);
    sct_string_free(out);
    free(site);
    printf("ok %d threads on one site, serialised\n", N);
}

/* ---- flow: Prepare -> Connect -> Import ---- */

struct rows_state {
    int seen;
    int stop_after;
    int bad;
};

static int on_row(void *user_data, const char *row_json) {
    struct rows_state *s = user_data;
    s->seen++;
    if (!has(row_json, "\"id\":") || !has(row_json, "\"level\":\"") || !has(row_json, "\"collected_utc\":"))
        s->bad++;
    /* Enhanced site: never a Full row. */
    if (has(row_json, "\"level\":\"Full\"")) s->bad++;
    return s->stop_after > 0 && s->seen >= s->stop_after;
}

static void test_flow(const char *dir) {
    const char *url = env("SCT_SERVICE_URL");
    const char *pack = env("SCT_EXPECT_PACK");
    char *site = path_in(dir, "flow.db");
    char *out = NULL;
    EXPECT_STATUS(sct_site_create(site, SITE_OPTIONS, &out), SCT_OK);
    char hierarchy[64];
    CHECK(json_str(out, "hierarchy_id", hierarchy, sizeof hierarchy), "%s", out);
    sct_string_free(out);
    uint64_t rows = 0;
    EXPECT_STATUS(sct_generate_sample_data(site, 900, 3, NULL, NULL, &rows), SCT_OK);
    EXPECT_STATUS(sct_site_info(site, &out), SCT_OK);
    unsigned long long basic = 0, enhanced = 0;
    CHECK(sscanf(strstr(out, "\"usage_rows\":["), "\"usage_rows\":[%llu,%llu", &basic, &enhanced) == 2, "%s", out);
    sct_string_free(out);
    unsigned long long leaving = basic + enhanced; /* an Enhanced site sends Basic + Enhanced */

    /* The rows that would leave the site, streamed; and stopping early. */
    struct rows_state rs = {0, 0, 0};
    uint64_t count = 0;
    EXPECT_STATUS(sct_usage_rows(site, on_row, &rs, &count), SCT_OK);
    CHECK(count == leaving && rs.seen == (int)leaving && rs.bad == 0, "rows %llu seen %d bad %d expected %llu",
          (unsigned long long)count, rs.seen, rs.bad, leaving);
    struct rows_state early = {0, 3, 0};
    EXPECT_STATUS(sct_usage_rows(site, on_row, &early, &count), SCT_OK);
    CHECK(count == 3 && early.seen == 3, "stopped after 3 rows (count %llu)", (unsigned long long)count);
    printf("ok usage rows (%llu)\n", leaving);

    /* Export CSV. */
    char *csv = path_in(dir, "UsageData.csv");
    EXPECT_STATUS(sct_export_csv(site, csv, false, NULL, NULL, &out), SCT_OK);
    CHECK(has(out, "\"format\":\"Csv\"") && exists(csv), "%s", out);
    char want[128];
    snprintf(want, sizeof want, "\"record_count\":%llu", leaving);
    CHECK(has(out, want), "CSV %s has %s", out, want);
    sct_string_free(out);
    free(csv);

    /* Prepare, cancelled from the callback first: nothing at the destination. */
    char *usb = path_in(dir, "usb");
    mkdir(usb, 0755);
    char *cab = path_in(usb, "UsageData.cab");
    struct progress_state cancel = progress_state(1);
    out = SENTINEL;
    EXPECT_STATUS(sct_prepare(site, cab, false, on_progress, &cancel, &out), SCT_CANCELLED);
    CHECK(out == SENTINEL && cancel.calls == 1, "cancelled on the first report");
    CHECK(!exists(cab) && count_files(usb) == 0, "cancelled Prepare left nothing (%d files)", count_files(usb));
    check_last_error_contains(SCT_CANCELLED, "cancel");

    struct progress_state ps = progress_state(0);
    EXPECT_STATUS(sct_prepare(site, cab, false, on_progress, &ps, &out), SCT_OK);
    CHECK(has(out, "\"format\":\"Cab\"") && has(out, want), "%s", out);
    CHECK(has(out, hierarchy), "cab of this hierarchy: %s", out);
    CHECK(has(out, "\"sha256\":\""), "%s", out);
    CHECK(ps.calls > 0 && ps.wrong_thread == 0 && (ps.phases_seen & (1u << 1)), "Prepare progress");
    sct_string_free(out);
    out = SENTINEL;
    EXPECT_STATUS(sct_prepare(site, cab, false, NULL, NULL, &out), SCT_ALREADY_EXISTS);
    CHECK(out == SENTINEL, "untouched");
    EXPECT_STATUS(sct_prepare(site, cab, true, NULL, NULL, &out), SCT_OK);
    sct_string_free(out);
    CHECK(count_files(usb) == 1, "only the cab on the drive");
    printf("ok prepare (cancel, write, refuse, force)\n");

    /* Connect, cancelled first: nothing at the destination. */
    char opts[4096];
    char *cancelled_dest = path_in(dir, "packs-cancelled");
    connect_options(opts, sizeof opts, cab, cancelled_dest, url);
    cancel = progress_state(1);
    out = SENTINEL;
    EXPECT_STATUS(sct_connect(opts, on_progress, &cancel, &out), SCT_CANCELLED);
    CHECK(out == SENTINEL, "untouched");
    CHECK(count_files(cancelled_dest) == 0, "cancelled Connect left %d files", count_files(cancelled_dest));

    EXPECT_STATUS(sct_connect("{\"source\":\"x\"}", NULL, NULL, &out), SCT_INVALID_ARGUMENT);
    check_last_error_contains(SCT_INVALID_ARGUMENT, "dest");

    char *dest = path_in(dir, "packs");
    connect_options(opts, sizeof opts, usb, dest, url);
    ps = progress_state(0);
    EXPECT_STATUS(sct_connect(opts, on_progress, &ps, &out), SCT_OK);
    CHECK(has(out, "\"status\":\"Uploaded\""), "%s", out);
    CHECK(has(out, pack), "the published pack %s is in %s", pack, out);
    CHECK(has(out, "\"status\":\"Downloaded\"") && !has(out, "\"status\":\"Failed\""), "%s", out);
    CHECK(ps.calls > 0 && ps.wrong_thread == 0, "Connect progress on the calling thread");
    CHECK(has(out, "\"console_content\":{\"status\":\"Downloaded\",\"content_version\":1"), "%s", out);
    sct_string_free(out);
    char *report = path_in(dest, "connect-report.json");
    CHECK(exists(report), "connect-report.json written");
    free(report);
    char *console_doc = path_in(dest, "ConsoleContent/console-content.json");
    CHECK(exists(console_doc), "console content fetched");
    free(console_doc);
    /* A re-run finds everything complete, and the console content unchanged (304). */
    EXPECT_STATUS(sct_connect(opts, NULL, NULL, &out), SCT_OK);
    CHECK(has(out, "\"status\":\"AlreadyComplete\""), "%s", out);
    CHECK(has(out, "\"console_content\":{\"status\":\"Unchanged\""), "%s", out);
    sct_string_free(out);
    printf("ok connect (cancel, download, re-run)\n");

    /* Import: refused without a trusted key, cancelled, then imported, then a no-op. */
    {
        char *qs = json_quote(site), *qd = json_quote(dest);
        snprintf(opts, sizeof opts, "{\"site_db\":%s,\"source\":%s}", qs, qd);
        free(qs);
        free(qd);
    }
    EXPECT_STATUS(sct_import(opts, NULL, NULL, &out), SCT_OK);
    CHECK(has(out, "\"status\":\"Refused\"") && has(out, "\"error_kind\":\"SignatureInvalid\""),
          "untrusted pack refused: %s", out);
    CHECK(has(out, "\"item\":\"ConsoleContent\""), "console content item: %s", out);
    CHECK(!has(out, "\"status\":\"Imported\""), "nothing imported untrusted: %s", out);
    sct_string_free(out);
    EXPECT_STATUS(sct_console_content(site, &out), SCT_OK);
    CHECK(has(out, "\"imported\":false"), "untrusted console content not recorded: %s", out);
    sct_string_free(out);
    EXPECT_STATUS(sct_trust_add(site, env("SCT_FOREIGN_PUB"), "someone else", &out), SCT_OK);
    sct_string_free(out);
    EXPECT_STATUS(sct_trust_add(site, env("SCT_PUBLISHER_PUB"), "reference service", &out), SCT_OK);
    sct_string_free(out);

    cancel = progress_state(1);
    out = SENTINEL;
    EXPECT_STATUS(sct_import(opts, on_progress, &cancel, &out), SCT_CANCELLED);
    CHECK(out == SENTINEL, "untouched");
    EXPECT_STATUS(sct_list_updates(site, &out), SCT_OK);
    CHECK(strcmp(out, "[]") == 0, "cancelled Import recorded nothing: %s", out);
    sct_string_free(out);
    char *library = path_in(dir, "EasySetupPayload");
    CHECK(count_files(library) == 0, "cancelled Import copied nothing");

    ps = progress_state(0);
    EXPECT_STATUS(sct_import(opts, on_progress, &ps, &out), SCT_OK);
    CHECK(has(out, "\"status\":\"Imported\"") && has(out, pack), "%s", out);
    CHECK(has(out, "\"state\":\"ReadyToInstall\""), "%s", out);
    CHECK(ps.wrong_thread == 0, "Import progress on the calling thread");
    CHECK(ps.phases_seen == ((1u << 5) | (1u << 6)), "Import reports Verify (5) and Import (6), seen %#x",
          ps.phases_seen);
    sct_string_free(out);
    CHECK(count_files(library) > 0, "content copied into the content library");
    EXPECT_STATUS(sct_list_updates(site, &out), SCT_OK);
    CHECK(has(out, pack) && has(out, "\"state\":\"ReadyToInstall\"") && has(out, "\"state_code\":262146"), "%s", out);
    sct_string_free(out);
    EXPECT_STATUS(sct_import(opts, NULL, NULL, &out), SCT_OK);
    CHECK(has(out, "\"status\":\"AlreadyImported\"") && !has(out, "\"status\":\"Imported\""), "%s", out);
    sct_string_free(out);
    printf("ok import (refused, cancel, import, re-import)\n");

    /* The console content the site now holds: this hierarchy's and every hierarchy's
     * messages only (the flow service publishes one for another hierarchy). */
    out = SENTINEL;
    EXPECT_STATUS(sct_console_content(NULL, &out), SCT_NULL_PARAMETER);
    EXPECT_STATUS(sct_console_content(site, NULL), SCT_NULL_PARAMETER);
    CHECK(out == SENTINEL, "untouched");
    EXPECT_STATUS(sct_console_content(site, &out), SCT_OK);
    CHECK(has(out, "\"imported\":true") && has(out, "\"content_version\":1"), "%s", out);
    CHECK(has(out, "\"product\":\"Windows 11\""), "%s", out);
    CHECK(has(out, "\"id\":\"for-everyone\"") && has(out, "\"expired\":false"), "%s", out);
    CHECK(!has(out, "for-another") && !has(out, "Not for you"), "another hierarchy's message shown: %s", out);
    sct_string_free(out);
    printf("ok console content\n");

    free(library);
    free(dest);
    free(cancelled_dest);
    free(cab);
    free(usb);
    free(site);
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "basics") && strcmp(argv[1], "flow"))) {
        fprintf(stderr, "usage: %s basics|flow\n", argv[0]);
        return 2;
    }
    const char *dir = env("SCT_TEST_DIR");
    test_versions();
    if (!strcmp(argv[1], "basics")) {
        char *site = path_in(dir, "site.db");
        test_last_error_api(dir);
        test_null_arguments(site);
        test_bad_paths(dir);
        test_site_and_sample_data(dir, site);
        test_forced_panic(dir, site);
        test_unknown_option_fields(dir, site);
        test_reentrance(site);
        test_trust(dir, site);
        test_threads(dir);
        test_same_site_threads(dir);
        free(site);
    } else {
        test_flow(dir);
    }
    printf("ALL OK (%d checks)\n", checks);
    return 0;
}
