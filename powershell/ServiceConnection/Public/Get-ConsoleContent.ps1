function Get-ConsoleContent {
    <#
    .SYNOPSIS
    Gets the console content the site imported: servicing dashboard rows and messages.

    .DESCRIPTION
    Get-ConsoleContent reads the newest console content that Import-UpdatePack brought into the
    site (the signed document Invoke-ServiceConnection downloads into ConsoleContent\ on the
    transfer drive). It writes the servicing rows (product, version, build, channel, release
    date, end-of-servicing date) as ServiceConnection.ServicingRow objects, then the messages
    for this site's hierarchy (and those for every hierarchy) as ServiceConnection.ConsoleMessage
    objects, most severe first. Expired messages are left out unless -IncludeExpired is given.
    Messages meant only for other hierarchies were never recorded in the site.

    Every object carries the ContentVersion it came from and the SiteDatabase. When the site
    holds no console content yet, nothing is written and a verbose message says so.

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name (for example site objects).

    .PARAMETER Include
    What to write: All (default), Servicing (only the servicing rows) or Messages (only the messages).

    .PARAMETER Severity
    Only messages of these severities (Info, Warning, Critical). Servicing rows are not filtered.

    .PARAMETER IncludeExpired
    Also write messages whose expiry date has passed (their Expired property is $true).

    .EXAMPLE
    Get-ConsoleContent -SiteDatabase ./site.db

    Shows the servicing dashboard rows and the current messages, each as a table.

    .EXAMPLE
    Get-ConsoleContent -SiteDatabase ./site.db -Include Messages -Severity Warning, Critical

    Shows only the warnings and critical messages that have not expired.

    .EXAMPLE
    Get-ConsoleContent ./site.db -Include Messages -IncludeExpired | Format-List Id, Severity, Title, Body, Expires, Expired

    Shows every message the site holds for its hierarchy, with the full text.

    .INPUTS
    Objects with a SiteDatabase property, such as ServiceConnection.Site.

    .OUTPUTS
    ServiceConnection.ServicingRow, ServiceConnection.ConsoleMessage

    .LINK
    Import-UpdatePack

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding()]
    [OutputType('ServiceConnection.ServicingRow', 'ServiceConnection.ConsoleMessage')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [ValidateSet('All', 'Servicing', 'Messages')]
        [string]$Include = 'All',

        [ValidateSet('Info', 'Warning', 'Critical')]
        [string[]]$Severity,

        [switch]$IncludeExpired
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $r = Invoke-NativeCall -Target $db -Call {
            param($out) $script:Native.Methods::sct_console_content($db, $out)
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $content = @($r.Value)[0]
        if (-not $content.Imported) {
            Write-Verbose "The site $db holds no console content yet; import a transfer drive that has a ConsoleContent folder."
            return
        }
        Write-Verbose ("Console content version {0}, published {1}, imported {2}" -f $content.ContentVersion, $content.Published, $content.ImportedUtc)
        if ($Include -ne 'Messages') {
            foreach ($row in @($content.Servicing)) {
                if ($null -eq $row) { continue }
                [pscustomobject]@{
                    PSTypeName     = 'ServiceConnection.ServicingRow'
                    Product        = $row.Product
                    Version        = Get-OptionalProperty $row 'Version'
                    Build          = Get-OptionalProperty $row 'Build'
                    Channel        = $row.Channel
                    ReleaseDate    = ConvertTo-ConsoleDate $row.ReleaseDate
                    EndOfServicing = ConvertTo-ConsoleDate $row.EndOfServicing
                    ContentVersion = $content.ContentVersion
                    SiteDatabase   = $db
                }
            }
        }
        if ($Include -ne 'Servicing') {
            foreach ($m in @($content.Messages)) {
                if ($null -eq $m) { continue }
                if ($m.Expired -and -not $IncludeExpired) { continue }
                if ($Severity -and $Severity -notcontains $m.Severity) { continue }
                $expires = Get-OptionalProperty $m 'Expires'
                [pscustomobject]@{
                    PSTypeName     = 'ServiceConnection.ConsoleMessage'
                    Id             = $m.Id
                    Severity       = $m.Severity
                    Title          = $m.Title
                    Body           = $m.Body
                    Link           = Get-OptionalProperty $m 'Link'
                    Published      = ConvertTo-ConsoleDate $m.Published
                    Expires        = if ($null -ne $expires) { ConvertTo-ConsoleDate $expires } else { $null }
                    Expired        = [bool]$m.Expired
                    Hierarchies    = @(Get-OptionalProperty $m 'Hierarchies' | Where-Object { $null -ne $_ })
                    ContentVersion = $content.ContentVersion
                    SiteDatabase   = $db
                }
            }
        }
    }
}
