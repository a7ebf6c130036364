function Add-SiteDatabaseProperty {
    <#
    .SYNOPSIS
    Adds a SiteDatabase property to output objects, so they bind to -SiteDatabase down the pipeline.
    #>
    [CmdletBinding()]
    param(
        [Parameter(Mandatory, ValueFromPipeline)][AllowNull()][psobject]$InputObject,
        [Parameter(Mandatory)][string]$SiteDatabase
    )
    process {
        if ($null -eq $InputObject) { return }
        if (-not $InputObject.PSObject.Properties['SiteDatabase']) {
            $InputObject.PSObject.Properties.Add([psnoteproperty]::new('SiteDatabase', $SiteDatabase))
        }
        $InputObject
    }
}
