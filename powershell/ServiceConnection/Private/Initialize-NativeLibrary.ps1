function Get-NativeLibraryRid {
    <#
    .SYNOPSIS
    The runtime identifier (lib/<rid>/ folder) and library file name for this platform.
    .DESCRIPTION
    -OS and -Architecture default to the running system; they exist so the mapping for
    every platform (win-x64: lib/win-x64/serviceconnection.dll) can be checked anywhere.
    #>
    [CmdletBinding()]
    [OutputType([pscustomobject])]
    param(
        [ValidateSet('Windows', 'MacOS', 'Linux')]
        [string]$OS = $(if ($IsWindows) { 'Windows' } elseif ($IsMacOS) { 'MacOS' } else { 'Linux' }),
        [System.Runtime.InteropServices.Architecture]$Architecture =
            [System.Runtime.InteropServices.RuntimeInformation]::OSArchitecture
    )

    $arch = switch ($Architecture) {
        'X64' { 'x64' }
        'Arm64' { 'arm64' }
        'X86' { 'x86' }
        'Arm' { 'arm' }
        default { $_.ToString().ToLowerInvariant() }
    }
    if ($OS -eq 'Windows') {
        $prefix = 'win'; $file = 'serviceconnection.dll'
    }
    elseif ($OS -eq 'MacOS') {
        $prefix = 'osx'; $file = 'libserviceconnection.dylib'
    }
    else {
        $prefix = 'linux'; $file = 'libserviceconnection.so'
    }
    [pscustomobject]@{ Rid = "$prefix-$arch"; FileName = $file }
}

function Get-NativeLibraryCandidate {
    <#
    .SYNOPSIS
    The full paths where the module looks for the native library, in order.
    .DESCRIPTION
    $env:SCT_NATIVE_LIBRARY (a file) wins when set; otherwise lib/<rid>/<file> under the module.
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param([Parameter(Mandatory)][string]$ModuleRoot)

    $platform = Get-NativeLibraryRid
    if ($env:SCT_NATIVE_LIBRARY) {
        [System.IO.Path]::GetFullPath($env:SCT_NATIVE_LIBRARY)
    }
    [System.IO.Path]::Combine($ModuleRoot, 'lib', $platform.Rid, $platform.FileName)
}

function Initialize-NativeLibrary {
    <#
    .SYNOPSIS
    Find the native library by full path and compile the P/Invoke types for it (once per session).
    .OUTPUTS
    A hashtable: Path, Version, Methods, Json, ProgressBridge, RowBridge, Exception (types).
    #>
    [CmdletBinding()]
    [OutputType([hashtable])]
    param([Parameter(Mandatory)][string]$ModuleRoot)

    $tried = @(Get-NativeLibraryCandidate -ModuleRoot $ModuleRoot)
    $path = $tried | Where-Object { [System.IO.File]::Exists($_) } | Select-Object -First 1
    if (-not $path) {
        $platform = Get-NativeLibraryRid
        $list = ($tried | ForEach-Object { "  $_" }) -join [Environment]::NewLine
        $message = "The ServiceConnection native library for $($platform.Rid) was not found. Paths tried:" +
            [Environment]::NewLine + $list + [Environment]::NewLine +
            "Build it and place it under the module with powershell/build.sh (or set SCT_NATIVE_LIBRARY to the library's full path)."
        $exception = [System.IO.FileNotFoundException]::new($message, $tried[-1])
        throw [System.Management.Automation.ErrorRecord]::new(
            $exception, 'ServiceConnection.NativeLibraryNotFound',
            [System.Management.Automation.ErrorCategory]::ObjectNotFound, $tried)
    }

    $source = [System.IO.File]::ReadAllText([System.IO.Path]::Combine($ModuleRoot, 'Private', 'Native.cs'))
    # One namespace per (library path, source text): re-importing reuses the compiled types,
    # because a type cannot be redefined in a session.
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try {
        $bytes = [System.Text.Encoding]::UTF8.GetBytes("$path`n$source")
        $hash = -join ($sha.ComputeHash($bytes)[0..7] | ForEach-Object { $_.ToString('x2') })
    }
    finally { $sha.Dispose() }
    $namespace = "ServiceConnection.Interop.N$hash"

    if (-not ("$namespace.NativeMethods" -as [type])) {
        $code = $source.Replace('__NAMESPACE__', $namespace).Replace('__LIBRARY__', $path.Replace('"', '""'))
        Add-Type -TypeDefinition $code -Language CSharp -ErrorAction Stop
    }
    $methods = "$namespace.NativeMethods" -as [type]
    try {
        $version = $methods::Version()
        $abi = $methods::sct_abi_version()
    }
    catch {
        $message = "The ServiceConnection native library at $path could not be loaded: $($_.Exception.GetBaseException().Message)"
        throw [System.Management.Automation.ErrorRecord]::new(
            [System.DllNotFoundException]::new($message), 'ServiceConnection.NativeLibraryLoadFailed',
            [System.Management.Automation.ErrorCategory]::ResourceUnavailable, $path)
    }
    # The P/Invoke declarations in Native.cs follow this version of include/serviceconnection.h.
    $expectedAbi = 1
    if ($abi -ne $expectedAbi) {
        $message = "The ServiceConnection native library at $path has ABI version $abi; this module needs ABI version $expectedAbi. Use the library built from the same source as the module (powershell/build.sh)."
        throw [System.Management.Automation.ErrorRecord]::new(
            [System.InvalidOperationException]::new($message), 'ServiceConnection.NativeLibraryMismatch',
            [System.Management.Automation.ErrorCategory]::InvalidResult, $path)
    }
    @{
        Path           = $path
        Version        = $version
        AbiVersion     = $abi
        Methods        = $methods
        Json           = "$namespace.Json" -as [type]
        ProgressBridge = "$namespace.ProgressBridge" -as [type]
        RowBridge      = "$namespace.RowBridge" -as [type]
        Exception      = "$namespace.ServiceConnectionException" -as [type]
    }
}
