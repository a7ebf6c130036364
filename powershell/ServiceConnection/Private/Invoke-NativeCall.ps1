function Invoke-NativeCall {
    <#
    .SYNOPSIS
    Run one native call and turn its status into a result or a proper ErrorRecord.
    .DESCRIPTION
    -Call is a script block that receives a [ref] for the call's out-parameter (a JSON string
    pointer or a row count), makes the P/Invoke call and returns the sct_status.

    Returns one object: Ok, Value and Error. On SCT_OK, Value holds the JSON result (taken and
    freed) converted to objects with -TypeName, or the UInt64 out-value. Otherwise Error holds
    an ErrorRecord built from the thread's last error message (ID ServiceConnection.<Kind>,
    category from the kind, -Target as target object) for the cmdlet to write. Failures are
    returned rather than thrown so that a cmdlet's -ErrorVariable sees each error once.
    Exceptions a callback bridge caught (a stopping pipeline) are rethrown after the call.
    #>
    [CmdletBinding()]
    [OutputType([pscustomobject])]
    param(
        [Parameter(Mandatory)][scriptblock]$Call,
        [AllowNull()][object]$Target,
        [string]$TypeName,
        [ValidateSet('Json', 'UInt64', 'None')][string]$Result = 'Json',
        [object[]]$Bridge = @()
    )

    $nativeOut = if ($Result -eq 'UInt64') { [uint64]0 } else { [IntPtr]::Zero }
    $nativeRef = [ref]$nativeOut
    try {
        $nativeStatus = [int](& $Call $nativeRef)
    }
    finally {
        foreach ($b in $Bridge) { if ($b -and $b.PSObject.Methods['Complete']) { $b.Complete() } }
    }
    foreach ($b in $Bridge) { if ($b) { $b.ThrowPending() } }

    if ($nativeStatus -ne $script:StatusBase) {
        if ($Result -eq 'Json' -and $nativeRef.Value -ne [IntPtr]::Zero) {
            $script:Native.Methods::sct_string_free($nativeRef.Value)
        }
        $kind = Get-StatusKind -Status $nativeStatus
        $message = $script:Native.Methods::LastErrorMessage()
        if (-not $message) { $message = "the ServiceConnection library failed with status $nativeStatus ($kind)" }
        return [pscustomobject]@{
            Ok    = $false
            Value = $null
            Error = New-ServiceConnectionErrorRecord -Kind $kind -Message $message -Target $Target -Status $nativeStatus
        }
    }
    $value = switch ($Result) {
        'UInt64' { $nativeRef.Value }
        'None' { $null }
        default {
            $json = $script:Native.Methods::TakeString($nativeRef.Value)
            if ($null -ne $json) { , @(ConvertFrom-NativeJson -Json $json -TypeName $TypeName) }
        }
    }
    [pscustomobject]@{ Ok = $true; Value = $value; Error = $null }
}

function ConvertFrom-NativeJson {
    <#
    .SYNOPSIS
    Library JSON -> objects with PascalCase properties; each top-level object (or each element
    of a top-level array) gets -TypeName as its first PSTypeName.
    #>
    [CmdletBinding()]
    param([Parameter(Mandatory)][string]$Json, [string]$TypeName)

    $value = $script:Native.Json::Parse($Json)
    foreach ($item in @($value)) {
        if ($TypeName -and $item -is [psobject]) { $item.PSObject.TypeNames.Insert(0, $TypeName) }
        $item
    }
}

function New-ProgressBridge {
    <#
    .SYNOPSIS
    A progress bridge for one native call: Write-Progress at most every 250 ms, honouring
    $ProgressPreference, and cancellation when the pipeline stops (Ctrl+C).
    #>
    [Diagnostics.CodeAnalysis.SuppressMessageAttribute('PSUseShouldProcessForStateChangingFunctions', '', Justification = 'Creates an in-memory object; changes no state.')]
    [CmdletBinding()]
    param(
        [Parameter(Mandatory)][System.Management.Automation.PSCmdlet]$Cmdlet,
        [Parameter(Mandatory)][string]$Activity
    )
    $enabled = $ProgressPreference -ne 'SilentlyContinue' -and $ProgressPreference -ne 'Ignore'
    $script:Native.ProgressBridge::new($Cmdlet, $Activity, $enabled, 250)
}

function Resolve-FileSystemPath {
    <#
    .SYNOPSIS
    A full file-system path for a (possibly relative, possibly not yet existing) PowerShell path,
    resolved against the current PowerShell location rather than the process directory.
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param(
        [Parameter(Mandatory)][System.Management.Automation.PSCmdlet]$Cmdlet,
        [Parameter(Mandatory)][string]$Path
    )
    $Cmdlet.SessionState.Path.GetUnresolvedProviderPathFromPSPath($Path)
}

function ConvertTo-NativeJson {
    <#
    .SYNOPSIS
    Options hashtable -> compact JSON for the library. Never logged: it may hold secrets.
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param([Parameter(Mandatory)][System.Collections.IDictionary]$Options)
    ConvertTo-Json -InputObject $Options -Depth 5 -Compress
}
