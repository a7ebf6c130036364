// P/Invoke declarations and callback bridges for the ServiceConnection native library.
// Compiled by Add-Type when the module is imported. The placeholders __NAMESPACE__ and
// __LIBRARY__ are replaced by the module: the namespace carries a hash of the library path
// and of this source, so re-importing the module in one session reuses the compiled type,
// and a different library (or a changed source) gets its own.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Management.Automation;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace __NAMESPACE__
{
    /// <summary>A failure reported by the native library (status code and kind name).</summary>
    public class ServiceConnectionException : Exception
    {
        public ServiceConnectionException(string message, string kind, int status)
            : base(message)
        {
            Kind = kind;
            Status = status;
        }

        /// <summary>The library's ErrorKind name, e.g. NotFound, SignatureInvalid.</summary>
        public string Kind { get; private set; }

        /// <summary>The sct_status value (0 when the failure was detected by the module).</summary>
        public int Status { get; private set; }
    }

    /// <summary>struct sct_progress.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct SctProgress
    {
        public uint Phase;
        public IntPtr Item;
        public ulong ItemDone;
        public ulong ItemTotal;
        public ulong Done;
        public ulong Total;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int ProgressCallback(IntPtr userData, IntPtr progress);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int RowCallback(IntPtr userData, IntPtr rowJson);

    public static class NativeMethods
    {
        public const string Library = @"__LIBRARY__";

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr sct_version();

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint sct_abi_version();

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr sct_last_error_message();

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern void sct_string_free(IntPtr s);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_site_create(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string optionsJson,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_site_info(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_generate_sample_data(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            ulong rows, ulong seed, ProgressCallback progress, IntPtr userData, out ulong outRows);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_prepare(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string dest,
            [MarshalAs(UnmanagedType.I1)] bool force,
            ProgressCallback progress, IntPtr userData, out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_export_csv(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string dest,
            [MarshalAs(UnmanagedType.I1)] bool force,
            ProgressCallback progress, IntPtr userData, out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_usage_rows(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            RowCallback rowCallback, IntPtr userData, out ulong outCount);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_connect(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string optionsJson,
            ProgressCallback progress, IntPtr userData, out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_import(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string optionsJson,
            ProgressCallback progress, IntPtr userData, out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_list_updates(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_console_content(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_trust_add(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string publicKeyPath,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string comment,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_trust_list(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            out IntPtr outJson);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern int sct_trust_remove(
            [MarshalAs(UnmanagedType.LPUTF8Str)] string siteDb,
            [MarshalAs(UnmanagedType.LPUTF8Str)] string keyId);

        /// <summary>Copy a library-owned string and free it (NULL gives null).</summary>
        public static string TakeString(IntPtr p)
        {
            if (p == IntPtr.Zero) return null;
            try { return Marshal.PtrToStringUTF8(p); }
            finally { sct_string_free(p); }
        }

        /// <summary>The calling thread's last error message, or null.</summary>
        public static string LastErrorMessage()
        {
            return TakeString(sct_last_error_message());
        }

        /// <summary>The library's static version string (not freed).</summary>
        public static string Version()
        {
            return Marshal.PtrToStringUTF8(sct_version());
        }
    }

    /// <summary>Turns the library's JSON into PowerShell objects with PascalCase property names.</summary>
    public static class Json
    {
        public static string PascalCase(string name)
        {
            var parts = name.Split('_');
            var sb = new System.Text.StringBuilder(name.Length);
            foreach (var p in parts)
            {
                if (p.Length == 0) continue;
                sb.Append(char.ToUpperInvariant(p[0]));
                sb.Append(p, 1, p.Length - 1);
            }
            return sb.ToString();
        }

        /// <summary>Parse a JSON document; objects become PSObjects, arrays object[].</summary>
        public static object Parse(string json)
        {
            using (var doc = JsonDocument.Parse(json))
            {
                return Convert(doc.RootElement);
            }
        }

        /// <summary>Parse one JSON object and give it a PSTypeName (first in its TypeNames).</summary>
        public static PSObject ParseTyped(string json, string typeName)
        {
            var o = Parse(json) as PSObject;
            if (o == null) throw new InvalidOperationException("the library returned JSON that is not an object");
            if (!string.IsNullOrEmpty(typeName)) o.TypeNames.Insert(0, typeName);
            return o;
        }

        public static object Convert(JsonElement e)
        {
            switch (e.ValueKind)
            {
                case JsonValueKind.Object:
                    var o = new PSObject();
                    foreach (var p in e.EnumerateObject())
                        o.Properties.Add(new PSNoteProperty(PascalCase(p.Name), Convert(p.Value)));
                    return o;
                case JsonValueKind.Array:
                    var list = new List<object>();
                    foreach (var item in e.EnumerateArray()) list.Add(Convert(item));
                    return list.ToArray();
                case JsonValueKind.String:
                    return e.GetString();
                case JsonValueKind.Number:
                    long l; ulong u;
                    if (e.TryGetInt64(out l)) return l;
                    if (e.TryGetUInt64(out u)) return u;
                    return e.GetDouble();
                case JsonValueKind.True: return true;
                case JsonValueKind.False: return false;
                default: return null;
            }
        }
    }

    /// <summary>
    /// Base of the callback bridges: holds the delegate for the whole native call (so the GC
    /// cannot collect it), asks for cancellation when the pipeline is stopping, and keeps any
    /// exception raised inside a callback to rethrow once the native call has returned — no
    /// managed exception ever unwinds through native frames.
    /// </summary>
    public abstract class Bridge
    {
        protected readonly PSCmdlet Cmdlet;
        private ExceptionDispatchInfo _pending;

        protected Bridge(PSCmdlet cmdlet) { Cmdlet = cmdlet; }

        /// <summary>True when a callback asked the library to stop because of the pipeline.</summary>
        public bool StopRequested { get; private set; }

        protected int Guard(Func<int> body)
        {
            if (_pending != null) return 1;
            try
            {
                if (Cmdlet != null && Cmdlet.Stopping) { StopRequested = true; return 1; }
                return body();
            }
            catch (Exception ex)
            {
                _pending = ExceptionDispatchInfo.Capture(ex);
                StopRequested = true;
                return 1;
            }
        }

        /// <summary>Rethrow what a callback caught (e.g. a downstream Select-Object -First).</summary>
        public void ThrowPending()
        {
            var p = _pending;
            _pending = null;
            if (p != null) p.Throw();
        }
    }

    /// <summary>Bridges sct_progress callbacks to Write-Progress, throttled.</summary>
    public sealed class ProgressBridge : Bridge
    {
        public readonly ProgressCallback Callback;
        private readonly string _activity;
        private readonly int _activityId;
        private readonly bool _enabled;
        private readonly long _intervalMs;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _lastMs = long.MinValue;
        private bool _shown;
        private uint _lastPhase;

        public ProgressBridge(PSCmdlet cmdlet, string activity, bool enabled, int intervalMs)
            : base(cmdlet)
        {
            _activity = activity;
            _activityId = Math.Abs(activity.GetHashCode() % 100000) + 1;
            _enabled = enabled && cmdlet != null;
            _intervalMs = intervalMs;
            Callback = OnProgress;
        }

        /// <summary>Callbacks seen (for -Verbose and tests).</summary>
        public long Calls { get; private set; }

        /// <summary>Progress records actually written after throttling.</summary>
        public long Written { get; private set; }

        public static string PhaseName(uint phase)
        {
            switch (phase)
            {
                case 1: return "Prepare";
                case 2: return "Export";
                case 3: return "Upload";
                case 4: return "Download";
                case 5: return "Verify";
                case 6: return "Import";
                case 7: return "Generate";
                default: return "Working";
            }
        }

        private int OnProgress(IntPtr userData, IntPtr progress)
        {
            return Guard(() =>
            {
                Calls++;
                if (!_enabled || progress == IntPtr.Zero) return 0;
                var p = Marshal.PtrToStructure<SctProgress>(progress);
                long now = _clock.ElapsedMilliseconds;
                bool final = p.Total > 0 && p.Done >= p.Total;
                if (p.Phase == _lastPhase && !final && _lastMs != long.MinValue && now - _lastMs < _intervalMs)
                    return 0;
                _lastMs = now;
                _lastPhase = p.Phase;
                string item = p.Item == IntPtr.Zero ? "" : Marshal.PtrToStringUTF8(p.Item);
                string status = PhaseName(p.Phase);
                if (!string.IsNullOrEmpty(item)) status += ": " + item;
                if (p.Total > 0) status += string.Format(" ({0:N0} of {1:N0})", p.Done, p.Total);
                else if (p.Done > 0) status += string.Format(" ({0:N0})", p.Done);
                var rec = new ProgressRecord(_activityId, _activity, status);
                if (p.Total > 0) rec.PercentComplete = (int)Math.Min(100, p.Done * 100 / p.Total);
                Cmdlet.WriteProgress(rec);
                _shown = true;
                Written++;
                return 0;
            });
        }

        /// <summary>Close the progress bar (Write-Progress -Completed).</summary>
        public void Complete()
        {
            if (!_shown) return;
            _shown = false;
            try
            {
                var rec = new ProgressRecord(_activityId, _activity, "Done");
                rec.RecordType = ProgressRecordType.Completed;
                Cmdlet.WriteProgress(rec);
            }
            catch (PipelineStoppedException) { }
        }
    }

    /// <summary>Streams sct_usage_rows rows down the pipeline as typed objects.</summary>
    public sealed class RowBridge : Bridge
    {
        public readonly RowCallback Callback;
        private readonly string _typeName;

        public RowBridge(PSCmdlet cmdlet, string typeName) : base(cmdlet)
        {
            _typeName = typeName;
            Callback = OnRow;
        }

        public long Rows { get; private set; }

        private int OnRow(IntPtr userData, IntPtr rowJson)
        {
            return Guard(() =>
            {
                if (rowJson == IntPtr.Zero) return 0;
                var o = Json.ParseTyped(Marshal.PtrToStringUTF8(rowJson), _typeName);
                Rows++;
                Cmdlet.WriteObject(o);
                return 0;
            });
        }
    }
}
