function New-ServiceConnectionSite {
    <#
    .SYNOPSIS
    Creates a ServiceConnection site database (a site's identity, usage data and Updates and Servicing list).

    .DESCRIPTION
    New-ServiceConnectionSite creates the SQLite site database that plays the role of a
    Configuration Manager site database for the Service Connection Tool flow: hierarchy ID,
    site code, site name, site version, diagnostics level and service connection point mode.
    The file is built under a temporary name and moved into place, so a failure leaves nothing;
    an existing file is never overwritten.

    One site database per folder: the content library (EasySetupPayload beside the site
    database) belongs to the first site database that imports there. Creating another site
    database in a folder whose library already belongs to one fails (ErrorId
    ServiceConnection.Conflict), naming that site database; choose a folder of its own.

    With -SampleData, the new site is filled with that many rows of realistic sample usage data
    (for demonstrations, tests and benchmarks). If generating the sample data fails or is
    cancelled, the new database is removed again.

    .PARAMETER Path
    Path of the site database file to create. Its folder must exist; the file must not.

    .PARAMETER SiteCode
    The three-letter or digit site code, such as PS1. Stored upper case.

    .PARAMETER SiteVersion
    The site's full version, such as 5.00.9128.1000.

    .PARAMETER DiagnosticsLevel
    The level of usage data that leaves the site: Basic, Enhanced (the default) or Full.
    Levels nest: Basic is part of Enhanced, which is part of Full.

    .PARAMETER HierarchyId
    The hierarchy ID (a GUID). A new GUID is generated when omitted.

    .PARAMETER SiteName
    A display name for the site. Defaults to "Site <code>".

    .PARAMETER ScpMode
    The service connection point mode, Offline (the default) or Online.

    .PARAMETER SampleData
    Number of sample usage-data rows to generate into the new site (0, the default, generates none).

    .PARAMETER Seed
    Seed for the sample-data generator, to get the same rows again. Random when omitted.

    .EXAMPLE
    New-ServiceConnectionSite -Path ./site.db -SiteCode PS1 -SiteVersion 5.00.9128.1000

    Creates an offline site PS1 at version 5.00.9128.1000 with the Enhanced diagnostics level
    and a new hierarchy ID.

    .EXAMPLE
    New-ServiceConnectionSite -Path ./lab.db -SiteCode LAB -SiteVersion 5.00.9128.1000 -DiagnosticsLevel Full -HierarchyId 0b3c9a71-52f3-4c0e-9a8e-6b1f3f3f2a10 -SampleData 10000

    Creates a site in an existing hierarchy at the Full level and fills it with 10,000 rows of
    sample usage data, showing progress while it generates them.

    .EXAMPLE
    New-ServiceConnectionSite -Path ./site.db -SiteCode PS1 -SiteVersion 5.00.9128.1000 -WhatIf

    Shows what would be created without creating anything.

    .INPUTS
    None.

    .OUTPUTS
    ServiceConnection.Site

    .LINK
    Get-ServiceConnectionSite

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('ServiceConnection.Site')]
    param(
        [Parameter(Mandatory, Position = 0)]
        [Alias('SiteDatabase')]
        [string]$Path,

        [Parameter(Mandatory)]
        [string]$SiteCode,

        [Parameter(Mandatory)]
        [string]$SiteVersion,

        [ValidateSet('Basic', 'Enhanced', 'Full')]
        [string]$DiagnosticsLevel = 'Enhanced',

        [guid]$HierarchyId,

        [string]$SiteName,

        [ValidateSet('Offline', 'Online')]
        [string]$ScpMode = 'Offline',

        [ValidateRange(0, [long]::MaxValue)]
        [long]$SampleData = 0,

        [uint64]$Seed
    )

    $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $Path
    $options = [ordered]@{
        site_code         = $SiteCode
        site_version      = $SiteVersion
        diagnostics_level = $DiagnosticsLevel
        scp_mode          = $ScpMode
    }
    if ($PSBoundParameters.ContainsKey('HierarchyId')) { $options.hierarchy_id = $HierarchyId.ToString() }
    if ($SiteName) { $options.site_name = $SiteName }

    $what = "Create site $($SiteCode.ToUpperInvariant()) ($SiteVersion, $DiagnosticsLevel)"
    if ($SampleData -gt 0) { $what += " with $SampleData sample usage rows" }
    if (-not $PSCmdlet.ShouldProcess($db, $what)) { return }

    Write-Verbose "Creating site database $db"
    $json = ConvertTo-NativeJson -Options $options
    $r = Invoke-NativeCall -Target $db -TypeName 'ServiceConnection.Site' -Call {
        param($out) $script:Native.Methods::sct_site_create($db, $json, $out)
    }
    if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
    $site = $r.Value[0]

    if ($SampleData -gt 0) {
        if (-not $PSBoundParameters.ContainsKey('Seed')) { $Seed = [uint64](Get-Random -Minimum 0 -Maximum ([int]::MaxValue)) }
        Write-Verbose "Generating $SampleData sample usage rows (seed $Seed)"
        $bridge = New-ProgressBridge -Cmdlet $PSCmdlet -Activity "Generating sample usage data for $db"
        $r = $null
        try {
            $r = Invoke-NativeCall -Target $db -Result UInt64 -Bridge $bridge -Call {
                param($out) $script:Native.Methods::sct_generate_sample_data($db, [uint64]$SampleData, $Seed, $bridge.Callback, [IntPtr]::Zero, $out)
            }
            if ($r.Ok) {
                Write-Verbose "Generated $($r.Value) sample usage rows"
                $r = Invoke-NativeCall -Target $db -TypeName 'ServiceConnection.Site' -Call {
                    param($out) $script:Native.Methods::sct_site_info($db, $out)
                }
            }
        }
        finally {
            if (-not $r -or -not $r.Ok) {
                # The site was created by this call; do not leave a half-made one behind
                # (also when Ctrl+C stopped the pipeline).
                Write-Verbose "Removing $db after the sample data failed"
                foreach ($f in $db, "$db-wal", "$db-shm", "$db-journal") {
                    if ([System.IO.File]::Exists($f)) { [System.IO.File]::Delete($f) }
                }
            }
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $site = $r.Value[0]
    }
    Add-SiteDatabaseProperty -InputObject $site -SiteDatabase $db
}
