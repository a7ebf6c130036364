@{
    RootModule           = 'ServiceConnection.psm1'
    ModuleVersion        = '0.1.0'
    GUID                 = '5b0d6f4e-93a1-4c52-9a57-2f3c1b7e8d41'
    Author               = 'ServiceConnection contributors'
    CompanyName          = 'ServiceConnection'
    Copyright            = '(c) ServiceConnection contributors. MIT licence.'
    Description          = 'Offline servicing for Configuration Manager sites: export usage data from an offline site (Prepare/Export), exchange it for update packs on an internet-connected computer (Connect), and import the verified packs into the site (Import). Wraps the ServiceConnection native library.'
    PowerShellVersion    = '7.2'
    CompatiblePSEditions = @('Core')
    FunctionsToExport    = @(
        'New-ServiceConnectionSite'
        'Get-ServiceConnectionSite'
        'Add-TrustedPublisher'
        'Get-TrustedPublisher'
        'Remove-TrustedPublisher'
        'Export-UsageData'
        'Get-UsageData'
        'Invoke-ServiceConnection'
        'Import-UpdatePack'
        'Get-UpdatePack'
        'Get-ConsoleContent'
    )
    CmdletsToExport      = @()
    VariablesToExport    = @()
    AliasesToExport      = @()
    FormatsToProcess     = @('ServiceConnection.Format.ps1xml')
    FileList             = @(
        'ServiceConnection.psd1'
        'ServiceConnection.psm1'
        'ServiceConnection.Format.ps1xml'
        'Private/Native.cs'
        'en-US/about_ServiceConnection.help.txt'
    )
    PrivateData          = @{
        PSData = @{
            Tags       = @('ConfigurationManager', 'SCCM', 'ServiceConnectionTool', 'Offline', 'Updates')
            LicenseUri = 'https://opensource.org/licenses/MIT'
        }
    }
}
