function Import-UpdatePack {
    <#
    .SYNOPSIS
    Verifies downloaded update packs and records them in the site's Updates and Servicing list (Import).

    .DESCRIPTION
    Import-UpdatePack is the last step of the offline servicing flow, run on the offline site.
    It takes the update-pack folder written by Invoke-ServiceConnection and imports the packs
    of this site's hierarchy; other hierarchies' folders are reported as Skipped.

    Every pack's signature is verified against the site's trusted publisher keys
    (Add-TrustedPublisher) and every file's size and SHA-256 are checked. A pack that passes is
    recorded and its content copied into EasySetupPayload/Offline/<package-guid>/ beside the
    site database, in one transaction; one that does not is Refused with a precise reason,
    reported as a non-terminating error, and leaves the site exactly as it was. Importing a
    pack again is reported as AlreadyImported and changes nothing. A pack for a later site
    version (a later step of a multi-step upgrade) is recorded as NotApplicable.

    Progress (Write-Progress) shows "Verify" while every byte is hashed, then "Import"
    while the verified packs are recorded and moved into place. Stopping the command
    (Ctrl+C) leaves the site exactly as it was.

    One site database per folder: the content library beside a site database belongs to
    the first site database that imported there. Importing into another site database in
    the same folder fails (ErrorId ServiceConnection.Conflict) with a message naming the
    owner, and changes nothing; move that site database to a folder of its own.

    -Path accepts the update-pack folder itself, a hierarchy folder in it, or a pack folder;
    UpdatePack objects from Invoke-ServiceConnection can be piped in. Input is collected and
    each update-pack folder is imported once.

    .PARAMETER SiteDatabase
    Path of the site database.

    .PARAMETER Path
    The update-pack folder (the original tool's -updatepacksrc), or a hierarchy or pack folder
    inside it. Accepts UpdatePack objects and file-system objects from the pipeline.

    .EXAMPLE
    Import-UpdatePack -SiteDatabase ./site.db -Path E:\UpdatePacks

    Imports the packs for this site's hierarchy from the transfer drive.

    .EXAMPLE
    Import-UpdatePack -SiteDatabase ./site.db -Path E:\UpdatePacks | Where-Object Status -eq 'Refused' | Format-List Name, Reason

    Imports and shows why any pack was refused.

    .EXAMPLE
    Export-UsageData -SiteDatabase ./site.db -Destination ./UsageData.cab | Invoke-ServiceConnection -UpdatePackDestination ./UpdatePacks | Import-UpdatePack -SiteDatabase ./site.db -WhatIf

    Runs the flow in one pipeline and shows which import would happen without changing the site.

    .INPUTS
    ServiceConnection.UpdatePack, System.IO.DirectoryInfo, System.String.

    .OUTPUTS
    ServiceConnection.ImportResult

    .LINK
    Invoke-ServiceConnection

    .LINK
    Get-UpdatePack

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('ServiceConnection.ImportResult')]
    param(
        [Parameter(Mandatory)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('FullName', 'UpdatePackSrc', 'UpdatePackRoot')]
        [string[]]$Path
    )

    begin {
        $roots = [System.Collections.Generic.List[string]]::new()
    }

    process {
        foreach ($item in $Path) {
            $root = Resolve-UpdatePackRoot -Path (Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $item)
            if (-not $roots.Contains($root)) {
                Write-Verbose "Update-pack folder $root (from $item)"
                $roots.Add($root)
            }
        }
    }

    end {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        foreach ($root in $roots) {
            if (-not $PSCmdlet.ShouldProcess($db, "Import the update packs in $root")) { continue }
            $json = ConvertTo-NativeJson -Options ([ordered]@{ site_db = $db; source = $root })
            $bridge = New-ProgressBridge -Cmdlet $PSCmdlet -Activity "Importing update packs into $db"
            Write-Verbose "Importing the update packs in $root into $db"
            $call = Invoke-NativeCall -Target $root -TypeName 'ServiceConnection.ImportResult' -Bridge $bridge -Call {
                param($out) $script:Native.Methods::sct_import($json, $bridge.Callback, [IntPtr]::Zero, $out)
            }
            if (-not $call.Ok) { $PSCmdlet.WriteError($call.Error); continue }
            foreach ($r in @($call.Value)) {
                if ($null -eq $r) { continue }
                $r = $r | Add-SiteDatabaseProperty -SiteDatabase $db
                $label = if ($r.Item -eq 'ConsoleContent') { "console content $($r.Version)".TrimEnd() } elseif ($r.Name) { "$($r.Name) $($r.Version) ($($r.PackageGuid))" } else { [string]$r.SourcePath }
                switch ($r.Status) {
                    'Refused' {
                        $kind = if ($r.ErrorKind) { [string]$r.ErrorKind } else { 'Refused' }
                        $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind $kind -Target $r -Message "Refused $label`: $($r.Reason)"))
                    }
                    'Skipped' { Write-Verbose "Skipped $label`: $($r.Reason)" }
                    default { Write-Verbose "$($r.Status): $label" }
                }
                $r
            }
        }
    }
}
