function Get-ServiceConnectionSite {
    <#
    .SYNOPSIS
    Gets a site's identity from its site database.

    .DESCRIPTION
    Get-ServiceConnectionSite opens a ServiceConnection site database read-only and returns the
    site's hierarchy ID, site code, name, version, diagnostics level, service connection point
    mode, schema version and the number of usage-data rows at each level. A file that is not a
    site database, or one written by a newer version of the tool, is reported as an error
    without being changed.

    .PARAMETER SiteDatabase
    Path of one or more site database files. Accepts pipeline input, including file objects
    from Get-ChildItem.

    .EXAMPLE
    Get-ServiceConnectionSite -SiteDatabase ./site.db

    Shows the site's code, version, diagnostics level and hierarchy ID.

    .EXAMPLE
    Get-ChildItem /srv/sites -Filter *.db | Get-ServiceConnectionSite | Format-List *

    Shows every property of every site database in a folder.

    .INPUTS
    System.String, or any object with a SiteDatabase, Path or FullName property.

    .OUTPUTS
    ServiceConnection.Site

    .LINK
    New-ServiceConnectionSite

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding()]
    [OutputType('ServiceConnection.Site')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('Path', 'FullName', 'SiteDb')]
        [string[]]$SiteDatabase
    )

    process {
        foreach ($item in $SiteDatabase) {
            $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $item
            Write-Verbose "Reading site $db"
            $r = Invoke-NativeCall -Target $db -TypeName 'ServiceConnection.Site' -Call {
                param($out) $script:Native.Methods::sct_site_info($db, $out)
            }
            if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); continue }
            $r.Value | Add-SiteDatabaseProperty -SiteDatabase $db
        }
    }
}
