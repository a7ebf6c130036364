<#
.SYNOPSIS
    The whole offline-servicing flow on one machine: Prepare -> Connect -> Import.

.DESCRIPTION
    Plays both machines of the real procedure against the reference update service on
    127.0.0.1:
      * the offline site: a site database (SQLite, the embedded default) with generated
        usage data, plus a second hierarchy's site whose cab travels on the same drive;
      * the update service: a fresh store with four signed packs (an update and a hotfix
        for this site's version, an update for a newer version, and one targeted at the
        other hierarchy) and signed console content (servicing dashboard rows and messages,
        one of them for the other hierarchy only), served on a free loopback port;
      * the internet-connected computer: Connect uploads both cabs and downloads the packs
        and the console content.
    Then Import brings this hierarchy's packs and the console content into the site and
    skips the other hierarchy's pack; the site's console content is shown at the end.
    Everything lives under -WorkDir; the transfer folder is left there for inspection.

.PARAMETER WorkDir
    Folder for the demo (emptied first). Default: target/main-job.

.PARAMETER BinDir
    Folder holding the sct-service binary. Default: target/debug.

.PARAMETER SampleRows
    Usage rows to generate in the site database. Default: 20000.

.EXAMPLE
    pwsh -File powershell/examples/Invoke-OfflineServicingDemo.ps1 -WorkDir /tmp/demo
#>
[CmdletBinding()]
param(
    [string]$WorkDir = 'target/main-job',
    [string]$BinDir = 'target/debug',
    [int]$SampleRows = 20000
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
# Plain text when the output goes to a file or a pipe (CI reads it).
if ([Console]::IsOutputRedirected) { $PSStyle.OutputRendering = 'PlainText' }
$repo = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)
Import-Module (Join-Path $repo 'powershell/ServiceConnection/ServiceConnection.psd1') -Force

function Step([string]$Title) { Write-Host "`n=== $Title ===" -ForegroundColor Cyan }
# Tables at full width: a CI log or a narrow console would otherwise cut the columns.
function Show { $input | Format-Table -AutoSize | Out-String -Width 300 | Write-Host }

$WorkDir = [IO.Path]::GetFullPath($WorkDir, (Get-Location).Path)
$BinDir = [IO.Path]::GetFullPath($BinDir, (Get-Location).Path)
$service = Join-Path $BinDir 'sct-service'
if (-not (Test-Path $service)) { throw "sct-service not found at $service; build it first (cargo build)" }
if (Test-Path $WorkDir) { Remove-Item -Recurse -Force $WorkDir }
$siteDir = Join-Path $WorkDir 'site'
$otherDir = Join-Path $WorkDir 'other-site'
$storeDir = Join-Path $WorkDir 'service-store'
$transfer = Join-Path $WorkDir 'transfer'
$packs = Join-Path $transfer 'UpdatePacks'
New-Item -ItemType Directory -Force $siteDir, $otherDir, $transfer | Out-Null

Step 'Offline site: create the site database with generated usage data'
$siteVersion = '5.00.9128.1000'
$site = New-ServiceConnectionSite -Path (Join-Path $siteDir 'PS1.db') -SiteCode PS1 -SiteVersion $siteVersion -SampleData $SampleRows
$site | Format-List | Out-String -Width 300 | Write-Host
$other = New-ServiceConnectionSite -Path (Join-Path $otherDir 'CS2.db') -SiteCode CS2 -SiteVersion $siteVersion -SampleData 1000

Step 'Update service: key, four signed packs, serve on 127.0.0.1'
& $service keygen --store $storeDir | Out-Host
if ($LASTEXITCODE) { throw 'sct-service keygen failed' }
function Publish([string]$Name, [string]$Version, [string]$Type, [string]$Min, [string[]]$Extra) {
    $content = Join-Path $WorkDir "content/$Name"
    New-Item -ItemType Directory -Force (Join-Path $content 'payload') | Out-Null
    Set-Content -Path (Join-Path $content 'payload/notes.txt') -Value "$Name $Version"
    $bytes = [byte[]]::new(256KB); [Random]::new($Name.Length).NextBytes($bytes)
    [IO.File]::WriteAllBytes((Join-Path $content 'payload/setup.bin'), $bytes)
    $guid = & $service publish --store $storeDir --name $Name --version $Version --type $Type --min-site-version $Min @Extra $content
    if ($LASTEXITCODE) { throw "sct-service publish $Name failed" }
    Write-Host ("published {0,-40} {1}" -f "$Name ($Type $Version)", ($guid | Select-Object -Last 1))
}
Publish 'Configuration Manager 2509' '5.00.9132.1000' Update $siteVersion @()
Publish 'Hotfix KB30000001 for 2503' '5.00.9128.1001' Hotfix $siteVersion @()
Publish 'Configuration Manager 2603' '5.00.9140.1000' Update '5.00.9132.1000' @()
Publish 'Early ring update for CS2' '5.00.9133.1000' Update $siteVersion @('--hierarchy', $other.HierarchyId)

# Console content: the servicing dashboard's rows and the service's messages to administrators.
$consoleDraft = [ordered]@{
    servicing = @(
        [ordered]@{ product = 'Windows 11'; version = '24H2'; build = '26100.2454'; channel = 'General Availability'; release_date = '2024-10-01'; end_of_servicing = '2026-10-13' }
        [ordered]@{ product = 'Windows 11'; version = '23H2'; build = '22631.4460'; channel = 'General Availability'; release_date = '2023-10-31'; end_of_servicing = '2025-11-11' }
        [ordered]@{ product = 'Windows 10 Enterprise LTSC 2021'; build = '19044.5131'; channel = 'Long-Term Servicing Channel'; release_date = '2021-11-16'; end_of_servicing = '2027-01-12' }
    )
    messages  = @(
        [ordered]@{ id = 'cm-2509-available'; severity = 'Info'; title = 'Configuration Manager 2509 is available'; body = 'Import it from the transfer drive, then install it from Updates and Servicing.'; link = 'https://learn.microsoft.com/mem/configmgr'; published = '2026-11-20' }
        [ordered]@{ id = 'kb30000001'; severity = 'Warning'; title = 'Apply hotfix KB30000001 before upgrading'; body = 'Sites on 2503 need KB30000001 first.'; published = '2026-11-25' }
        [ordered]@{ id = 'cs2-early-ring'; severity = 'Critical'; title = 'Early ring: CS2 only'; body = 'Meant for the CS2 hierarchy; never shown on PS1.'; published = '2026-11-26'; hierarchies = @($other.HierarchyId) }
    )
}
$consoleFile = Join-Path $WorkDir 'console-content-draft.json'
$consoleDraft | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath $consoleFile -Encoding utf8NoBOM
$consoleVersion = & $service console publish --store $storeDir $consoleFile
if ($LASTEXITCODE) { throw 'sct-service console publish failed' }
Write-Host "published console content version $($consoleVersion | Select-Object -Last 1)"

# The service's request log goes to a file so it does not interleave with the steps' output.
$serviceOut = Join-Path $WorkDir 'service.out'
$serviceLog = Join-Path $WorkDir 'service.log'
$proc = Start-Process -FilePath $service -ArgumentList 'serve', '--store', $storeDir, '--listen', '127.0.0.1:0' `
    -RedirectStandardOutput $serviceOut -RedirectStandardError $serviceLog -PassThru
try {
    $uri = $null
    for ($i = 0; $i -lt 300 -and -not $uri; $i++) {
        if ($proc.HasExited) { throw "sct-service exited: $(Get-Content -Raw $serviceLog)" }
        $first = Get-Content -LiteralPath $serviceOut -TotalCount 1 -ErrorAction SilentlyContinue
        if ($first -match 'listening on (\S+)') { $uri = $Matches[1] } else { Start-Sleep -Milliseconds 100 }
    }
    if (-not $uri) { throw 'sct-service did not report its address within 30 s' }
    Write-Host "service: $uri"

    Step 'Offline site: trust the service''s publisher key'
    Add-TrustedPublisher -SiteDatabase $site.Path -Path (Join-Path $storeDir 'publisher.pub') | Show

    Step 'Prepare (offline site): usage data to the transfer drive'
    $cab = Export-UsageData -SiteDatabase $site.Path -Destination (Join-Path $transfer 'UsageData.cab')
    $cab | Show
    $otherCab = Export-UsageData -SiteDatabase $other.Path -Destination (Join-Path $transfer 'UsageData-CS2.cab')

    Step 'Export (offline site): the same data as CSV for review'
    Export-UsageData -SiteDatabase $site.Path -Destination (Join-Path $transfer 'UsageData.csv') | Show

    Step 'Connect (internet-connected computer): upload both cabs, download the packs and the console content'
    $downloaded = $cab, $otherCab | Invoke-ServiceConnection -UpdatePackDestination $packs -ServiceUri $uri -Download All
    $downloaded | Show
    $consoleReport = (Get-Content -Raw -LiteralPath (Join-Path $packs 'connect-report.json') | ConvertFrom-Json).console_content
    Write-Host ("console content: {0}, version {1}, in {2}" -f $consoleReport.status, $consoleReport.content_version, $consoleReport.path)

    Step 'Import (offline site): this hierarchy''s packs only, and the console content'
    Import-UpdatePack -SiteDatabase $site.Path -Path $packs | Show

    Step 'Import again: nothing to do'
    Import-UpdatePack -SiteDatabase $site.Path -Path $packs | Show

    Step 'Updates and Servicing'
    Get-UpdatePack -SiteDatabase $site.Path | Show

    Step 'Console content: servicing dashboard'
    Get-ConsoleContent -SiteDatabase $site.Path -Include Servicing | Show

    Step 'Console content: messages for this hierarchy'
    Get-ConsoleContent -SiteDatabase $site.Path -Include Messages | Show
}
finally {
    if (-not $proc.HasExited) { $proc.Kill(); $proc.WaitForExit() }
}
Write-Host "`nTransfer folder left for inspection: $transfer"
Write-Host "Service request log: $serviceLog"
