function Export-UsageData {
    <#
    .SYNOPSIS
    Writes a site's usage data to a .cab for upload (Prepare) or a .csv for review (Export).

    .DESCRIPTION
    Export-UsageData is the first step of the offline servicing flow. On the offline site it
    reads the usage data at or below the site's diagnostics level and writes it, with
    identifying attributes hashed, to the transfer drive:

    - as a usage cab (MS-CAB) that Invoke-ServiceConnection uploads on an internet-connected
      computer (the original tool's -prepare), or
    - as a UTF-8 CSV holding exactly the rows the cab would, for review before the data leaves
      the site (the original tool's -export).

    The format follows the destination's extension, which must be .cab or .csv; -Format states
    the intent explicitly (useful in scripts), and one that contradicts the extension is an error. The file is written under a temporary
    name and renamed into place; an existing file is only replaced with -Force.

    Progress (Write-Progress) counts the rows as they are written, out of the rows that leave
    the site. Stopping the command (Ctrl+C) leaves nothing at the destination.

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name (for example site objects).

    .PARAMETER Destination
    Path of the file to write, usually on the transfer drive, such as E:\UsageData.cab.

    .PARAMETER Format
    Cab or Csv. Optional: the format is taken from the destination's extension; when given,
    it must agree with the extension.

    .PARAMETER Force
    Replace the destination if it exists.

    .EXAMPLE
    Export-UsageData -SiteDatabase ./site.db -Destination E:\UsageData.cab

    Prepares the usage cab to carry to the internet-connected computer.

    .EXAMPLE
    Export-UsageData -SiteDatabase ./site.db -Destination ./review.csv -Force

    Writes the same rows as CSV for review, replacing an earlier review file.

    .EXAMPLE
    Export-UsageData -SiteDatabase ./site.db -Destination E:\UsageData.cab | Invoke-ServiceConnection -UpdatePackDestination E:\UpdatePacks | Import-UpdatePack -SiteDatabase ./site.db

    Runs the whole flow in one line where the site can reach the update service (for example in tests).

    .INPUTS
    Objects with a SiteDatabase property, such as ServiceConnection.Site.

    .OUTPUTS
    ServiceConnection.UsageDataFile

    .LINK
    Invoke-ServiceConnection

    .LINK
    Get-UsageData

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('ServiceConnection.UsageDataFile')]
    param(
        [Parameter(Mandatory, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [Parameter(Mandatory, Position = 0)]
        [Alias('UsageDataDest')]
        [string]$Destination,

        [ValidateSet('Cab', 'Csv')]
        [string]$Format,

        [switch]$Force
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $dest = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $Destination
        $byExtension = switch ([System.IO.Path]::GetExtension($dest).ToLowerInvariant()) {
            '.cab' { 'Cab' }
            '.csv' { 'Csv' }
            default { $null }
        }
        if (-not $byExtension) {
            $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind InvalidArgument -Target $dest -Message "The destination $dest must be named .cab (usage cab) or .csv (review file)."))
            return
        }
        if ($Format -and $Format -ne $byExtension) {
            $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind InvalidArgument -Target $dest -Message "-Format $Format contradicts the extension of $dest; use a .$($Format.ToLowerInvariant()) file name or drop -Format."))
            return
        }
        $fmt = $byExtension

        $action = if ($fmt -eq 'Cab') { 'Write the usage data cab' } else { 'Write the usage data CSV for review' }
        if ($Force) { $action += ' (replacing an existing file)' }
        if (-not $PSCmdlet.ShouldProcess($dest, "$action from site $db")) { return }

        $activity = if ($fmt -eq 'Cab') { "Preparing usage data $dest" } else { "Exporting usage data $dest" }
        $bridge = New-ProgressBridge -Cmdlet $PSCmdlet -Activity $activity
        $forceFlag = [bool]$Force
        Write-Verbose "$action from $db to $dest"
        $r = Invoke-NativeCall -Target $dest -TypeName 'ServiceConnection.UsageDataFile' -Bridge $bridge -Call {
                param($out)
                if ($fmt -eq 'Cab') {
                    $script:Native.Methods::sct_prepare($db, $dest, $forceFlag, $bridge.Callback, [IntPtr]::Zero, $out)
                }
                else {
                    $script:Native.Methods::sct_export_csv($db, $dest, $forceFlag, $bridge.Callback, [IntPtr]::Zero, $out)
                }
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $file = $r.Value[0]
        Write-Verbose "Wrote $($file.RecordCount) usage records ($($file.Size) bytes, SHA-256 $($file.Sha256)) to $dest"
        $file
    }
}
