function Remove-TrustedPublisher {
    <#
    .SYNOPSIS
    Stops a site from trusting an update-pack publisher key.

    .DESCRIPTION
    Remove-TrustedPublisher removes a publisher key from the keys the site trusts. Packs signed
    only with that key are refused by Import-UpdatePack afterwards; packs already imported stay.
    Removing a key the site does not trust is an error (ServiceConnection.NotFound).

    .PARAMETER SiteDatabase
    Path of the site database. Accepts pipeline input by property name, so the output of
    Get-TrustedPublisher can be piped in.

    .PARAMETER KeyId
    The ID of the key to remove, as shown by Get-TrustedPublisher (case-insensitive).

    .EXAMPLE
    Remove-TrustedPublisher -SiteDatabase ./site.db -KeyId 6F2C1A9E0B4D7E31

    Stops trusting the key with that ID, after asking for confirmation if $ConfirmPreference requires it.

    .EXAMPLE
    Get-TrustedPublisher -SiteDatabase ./site.db | Where-Object Comment -like '*old*' | Remove-TrustedPublisher -Confirm:$false

    Removes every trusted key whose comment mentions "old", without prompting.

    .INPUTS
    ServiceConnection.TrustedPublisher, or any object with SiteDatabase and KeyId properties.

    .OUTPUTS
    None.

    .LINK
    Get-TrustedPublisher
    #>
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'Medium')]
    [OutputType([void])]
    param(
        [Parameter(Mandatory, ValueFromPipelineByPropertyName)]
        [Alias('SiteDb')]
        [string]$SiteDatabase,

        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)]
        [string[]]$KeyId
    )

    process {
        $db = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $SiteDatabase
        foreach ($id in $KeyId) {
            if (-not $PSCmdlet.ShouldProcess($db, "Stop trusting publisher key $id")) { continue }
            Write-Verbose "Removing trusted publisher key $id from $db"
            $r = Invoke-NativeCall -Target $id -Result None -Call {
                param($out) $null = $out; $script:Native.Methods::sct_trust_remove($db, $id)
            }
            if (-not $r.Ok) { $PSCmdlet.WriteError($r.Error) }
        }
    }
}
