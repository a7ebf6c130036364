# sct_status (include/serviceconnection.h) = 7000 + ErrorKind number (src/error.rs); 7100+ are boundary failures.
$script:StatusBase = 7000

$script:KindByNumber = @{
    1 = 'InvalidArgument'; 2 = 'NotFound'; 3 = 'AlreadyExists'; 4 = 'NotASiteDatabase'
    5 = 'SchemaTooNew'; 6 = 'Busy'; 7 = 'Io'; 8 = 'DiskFull'; 9 = 'PermissionDenied'
    10 = 'Database'; 11 = 'InvalidCab'; 12 = 'InvalidManifest'; 13 = 'SignatureInvalid'
    14 = 'IntegrityMismatch'; 15 = 'WrongHierarchy'; 16 = 'Network'; 17 = 'ProxyConnect'
    18 = 'ProxyAuth'; 19 = 'Tls'; 20 = 'Service'; 21 = 'Cancelled'; 22 = 'Conflict'
    23 = 'UnsafePath'; 24 = 'Timeout'; 25 = 'Internal'
    # Failures of the C boundary itself (SCT_NULL_PARAMETER, SCT_INVALID_UTF8, SCT_PANIC).
    100 = 'NullParameter'; 101 = 'InvalidUtf8'; 102 = 'Panic'
}

# How each kind shows up as a PowerShell ErrorCategory.
$script:CategoryByKind = @{
    InvalidArgument   = 'InvalidArgument'
    NotFound          = 'ObjectNotFound'
    AlreadyExists     = 'ResourceExists'
    NotASiteDatabase  = 'InvalidData'
    SchemaTooNew      = 'InvalidData'
    Busy              = 'ResourceBusy'
    Io                = 'WriteError'
    DiskFull          = 'WriteError'
    PermissionDenied  = 'PermissionDenied'
    Database          = 'ReadError'
    InvalidCab        = 'InvalidData'
    InvalidManifest   = 'InvalidData'
    SignatureInvalid  = 'SecurityError'
    IntegrityMismatch = 'SecurityError'
    WrongHierarchy    = 'InvalidOperation'
    Network           = 'ConnectionError'
    ProxyConnect      = 'ConnectionError'
    ProxyAuth         = 'AuthenticationError'
    Tls               = 'SecurityError'
    Service           = 'ProtocolError'
    Cancelled         = 'OperationStopped'
    Conflict          = 'ResourceExists'
    UnsafePath        = 'SecurityError'
    Timeout           = 'OperationTimeout'
    Internal          = 'NotSpecified'
    NullParameter     = 'InvalidArgument'
    InvalidUtf8       = 'InvalidArgument'
    Panic             = 'NotSpecified'
    # Per-item failures reported inside a Connect report.
    UploadFailed      = 'ConnectionError'
    DownloadFailed    = 'ConnectionError'
}

function Get-StatusKind {
    <#
    .SYNOPSIS
    The ErrorKind name for an sct_status value.
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param([Parameter(Mandatory)][int]$Status)

    $n = $Status - $script:StatusBase
    if ($script:KindByNumber.ContainsKey($n)) { return $script:KindByNumber[$n] }
    'Internal'
}

function New-ServiceConnectionErrorRecord {
    <#
    .SYNOPSIS
    An ErrorRecord with error ID ServiceConnection.<Kind>, the category mapped from the kind,
    and the target object.
    #>
    [Diagnostics.CodeAnalysis.SuppressMessageAttribute('PSUseShouldProcessForStateChangingFunctions', '', Justification = 'Creates an in-memory object; changes no state.')]
    [CmdletBinding()]
    [OutputType([System.Management.Automation.ErrorRecord])]
    param(
        [Parameter(Mandatory)][string]$Kind,
        [Parameter(Mandatory)][string]$Message,
        [AllowNull()][object]$Target,
        [int]$Status = 0
    )

    $exception = $script:Native.Exception::new($Message, $Kind, $Status)
    $category = $script:CategoryByKind[$Kind]
    if (-not $category) { $category = 'NotSpecified' }
    [System.Management.Automation.ErrorRecord]::new(
        $exception, "ServiceConnection.$Kind",
        [System.Management.Automation.ErrorCategory]$category, $Target)
}

function Get-ReportKind {
    <#
    .SYNOPSIS
    The ErrorKind of a failed entry in a Connect report (its optional "kind"), or -Default.
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param([Parameter(Mandatory)][psobject]$Entry, [Parameter(Mandatory)][string]$Default)
    $p = $Entry.PSObject.Properties['Kind']
    if ($p -and $p.Value) { [string]$p.Value } else { $Default }
}
