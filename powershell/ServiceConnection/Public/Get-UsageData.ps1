function Get-UsageData {
    <#
    .SYNOPSIS
    Gets the usage-data rows that would leave the site, as objects.

    .DESCRIPTION
    Get-UsageData streams the rows Export-UsageData would write — only rows at or below the
    site's diagnostics level, identifying attributes already hashed — one object per row, as
    they are read. Memory stays flat however many rows there are, and the objects can be
    filtered, sorted or exported with the usual cmdlets.

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name (for example site objects).

    .EXAMPLE
    Get-UsageData -SiteDatabase ./site.db | Select-Object -First 10

    Shows the first ten rows that would leave the site.

    .EXAMPLE
    Get-UsageData -SiteDatabase ./site.db | Where-Object Category -eq 'Hardware' | Export-Csv ./hardware.csv

    Reviews one category of the usage data in a spreadsheet.

    .EXAMPLE
    Get-UsageData -SiteDatabase ./site.db | Group-Object Level -NoElement

    Counts the outgoing rows per diagnostics level.

    .INPUTS
    Objects with a SiteDatabase property, such as ServiceConnection.Site.

    .OUTPUTS
    ServiceConnection.UsageRecord

    .LINK
    Export-UsageData
    #>
    [CmdletBinding()]
    [OutputType('ServiceConnection.UsageRecord')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $rows = $script:Native.RowBridge::new($PSCmdlet, 'ServiceConnection.UsageRecord')
        Write-Verbose "Reading the outgoing usage data of $db"
        # Rows go down the pipeline from the callback as they are read; a downstream
        # Select-Object -First stops the read (the bridge rethrows its stop signal here).
        $r = Invoke-NativeCall -Target $db -Result UInt64 -Bridge $rows -Call {
            param($out) $script:Native.Methods::sct_usage_rows($db, $rows.Callback, [IntPtr]::Zero, $out)
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        Write-Verbose "Read $($r.Value) usage records from $db"
    }
}
