function Add-TrustedPublisher {
    <#
    .SYNOPSIS
    Trusts an update-pack publisher's public key on a site.

    .DESCRIPTION
    Add-TrustedPublisher reads a publisher's minisign public key file (for example the
    publisher.pub written by "sct-service keygen") and adds it to the keys the site trusts.
    Import-UpdatePack only imports packs whose signature verifies against a trusted key.
    Trusting a key that is already trusted changes nothing and returns the existing entry.

    .PARAMETER SiteDatabase
    Path of the site database.

    .PARAMETER Path
    Path of the publisher's public key file (minisign format).

    .PARAMETER Comment
    A note stored with the key, such as who publishes with it. Optional.

    .EXAMPLE
    Add-TrustedPublisher -SiteDatabase ./site.db -Path E:\publisher.pub

    Trusts the key in publisher.pub for the site's update packs.

    .EXAMPLE
    Add-TrustedPublisher -SiteDatabase ./site.db -Path ./contoso.pub -Comment 'Contoso update service' -WhatIf

    Shows what would be trusted without changing the site.

    .INPUTS
    Objects with SiteDatabase and Path (or FullName) properties.

    .OUTPUTS
    ServiceConnection.TrustedPublisher

    .LINK
    Get-TrustedPublisher

    .LINK
    Remove-TrustedPublisher
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('ServiceConnection.TrustedPublisher')]
    param(
        [Parameter(Mandatory, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('FullName', 'PublicKey')]
        [string]$Path,

        [string]$Comment = ''
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        $key = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $Path
        if (-not $PSCmdlet.ShouldProcess($db, "Trust the publisher key in $key")) { return }
        Write-Verbose "Trusting the publisher key in $key on site $db"
        $r = Invoke-NativeCall -Target $key -TypeName 'ServiceConnection.TrustedPublisher' -Call {
            param($out) $script:Native.Methods::sct_trust_add($db, $key, $Comment, $out)
        }
        if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error); return }
        $r.Value | Add-SiteDatabaseProperty -SiteDatabase $db
    }
}
