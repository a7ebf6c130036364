/*
 * Stand-in for Windows' bcryptprimitives.dll, used only to run the Windows build under Wine.
 *
 * Rust's standard library (since 1.78) draws its random numbers from
 * bcryptprimitives.dll!ProcessPrng, which every supported Windows (10 and later) has.
 * Wine 8.0 (Debian 12) has no bcryptprimitives.dll at all, so any Rust program fails to
 * load there. This DLL exports ProcessPrng over advapi32's RtlGenRandom
 * (SystemFunction036), which Wine implements over the host's random device. It is copied
 * into the test Wine prefix by .ci/wine-run and never shipped.
 */
#include <windows.h>

/* advapi32!SystemFunction036, documented as RtlGenRandom. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Same contract as the system's: fills the buffer, always returns TRUE. */
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            /* The real ProcessPrng cannot fail; a broken random source must not yield
               predictable bytes, so stop the process rather than return. */
            TerminateProcess(GetCurrentProcess(), 0xC0000001 /* STATUS_UNSUCCESSFUL */);
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
