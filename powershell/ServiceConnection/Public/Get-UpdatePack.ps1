function Get-UpdatePack {
    <#
    .SYNOPSIS
    Gets the site's Updates and Servicing list.

    .DESCRIPTION
    Get-UpdatePack lists the update packs recorded in the site database, newest version first:
    package GUID, name, full version, type (Update or Hotfix), applicable site versions, state
    (ReadyToInstall, NotApplicable, Installed, ...) with its Configuration Manager state code,
    size, and where its content lives and was imported from.

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name (for example site objects).

    .PARAMETER Name
    Only packs whose name matches (wildcards allowed).

    .EXAMPLE
    Get-UpdatePack -SiteDatabase ./site.db

    Shows the Updates and Servicing list.

    .EXAMPLE
    Get-UpdatePack -SiteDatabase ./site.db | Where-Object State -eq 'ReadyToInstall' | Format-List Name, FullVersion, ContentPath

    Shows where the content of each pack ready to install lives.

    .INPUTS
    Objects with a SiteDatabase property, such as ServiceConnection.Site.

    .OUTPUTS
    ServiceConnection.UpdateRecord

    .LINK
    Import-UpdatePack
    #>
    [CmdletBinding()]
    [OutputType('ServiceConnection.UpdateRecord')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [SupportsWildcards()]
        [string]$Name = '*'
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $r = Invoke-NativeCall -Target $db -TypeName 'ServiceConnection.UpdateRecord' -Call {
            param($out) $script:Native.Methods::sct_list_updates($db, $out)
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $r.Value | Where-Object { $_.Name -like $Name } | Add-SiteDatabaseProperty -SiteDatabase $db
    }
}
