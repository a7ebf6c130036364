function Get-TrustedPublisher {
    <#
    .SYNOPSIS
    Gets the update-pack publisher keys a site trusts.

    .DESCRIPTION
    Get-TrustedPublisher lists the minisign public keys whose signatures the site accepts on
    update packs, with their key IDs, comments and when they were added.

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name (for example site objects).

    .PARAMETER KeyId
    Only keys whose ID matches this value (wildcards allowed).

    .EXAMPLE
    Get-TrustedPublisher -SiteDatabase ./site.db

    Lists every trusted publisher key.

    .EXAMPLE
    Get-ServiceConnectionSite ./site.db | Get-TrustedPublisher -KeyId 'A1B2*'

    Shows the trusted keys whose IDs start with A1B2.

    .INPUTS
    Objects with a SiteDatabase property.

    .OUTPUTS
    ServiceConnection.TrustedPublisher

    .LINK
    Add-TrustedPublisher

    .LINK
    Remove-TrustedPublisher
    #>
    [CmdletBinding()]
    [OutputType('ServiceConnection.TrustedPublisher')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [SupportsWildcards()]
        [string]$KeyId = '*'
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $r = Invoke-NativeCall -Target $db -TypeName 'ServiceConnection.TrustedPublisher' -Call {
            param($out) $script:Native.Methods::sct_trust_list($db, $out)
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $r.Value | Where-Object { $_.KeyId -like $KeyId } | Add-SiteDatabaseProperty -SiteDatabase $db
    }
}
