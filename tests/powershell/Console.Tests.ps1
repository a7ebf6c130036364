#Requires -Modules @{ ModuleName = 'Pester'; ModuleVersion = '5.0' }
# Console content through the module, against the real reference service on 127.0.0.1:
# published by sct-service, fetched by Invoke-ServiceConnection, brought in by
# Import-UpdatePack and read back with Get-ConsoleContent.

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-TestModule
    $script:Version = '5.00.9128.1000'
    $script:Hierarchy = [guid]::NewGuid().ToString()
    $script:Other = [guid]::NewGuid().ToString()

    $script:Store = Join-Path $TestDrive 'store'
    $null = Invoke-ServiceTool -Arguments @('keygen', '--store', $Store)
    $draft = [ordered]@{
        servicing = @(
            [ordered]@{ product = 'Windows 11'; version = '24H2'; build = '26100.2454'; channel = 'General Availability'; release_date = '2024-10-01'; end_of_servicing = '2026-10-13' }
        )
        messages  = @(
            [ordered]@{ id = 'crit-1'; severity = 'Critical'; title = 'Apply KB1'; body = 'Now.'; published = '2026-11-01'; hierarchies = @($Hierarchy) }
            [ordered]@{ id = 'other-1'; severity = 'Warning'; title = 'OTHER-HIERARCHY-ONLY'; body = 'Not yours.'; published = '2026-11-02'; hierarchies = @($Other) }
            [ordered]@{ id = 'info-1'; severity = 'Info'; title = 'Dashboard refreshed'; body = 'FYI'; link = 'https://contoso.com/kb'; published = '2026-11-03' }
            [ordered]@{ id = 'old-1'; severity = 'Warning'; title = 'Old news'; body = 'Gone.'; published = '2020-01-01'; expires = '2020-02-01' }
        )
    }
    $file = Join-Path $TestDrive 'console.json'
    $draft | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath $file -Encoding utf8NoBOM
    $null = Invoke-ServiceTool -Arguments @('console', 'publish', '--store', $Store, $file)
    $script:Service = Start-TestService -Store $Store

    $dir = (New-Item -ItemType Directory -Path (Join-Path $TestDrive 'site')).FullName
    $script:Db = Join-Path $dir 'site.db'
    $null = New-ServiceConnectionSite -Path $Db -SiteCode PS1 -SiteVersion $Version -HierarchyId $Hierarchy -SampleData 100 -Seed 1
    $null = Add-TrustedPublisher -SiteDatabase $Db -Path (Join-Path $Store 'publisher.pub')
    $script:Packs = Join-Path $dir 'UpdatePacks'
}

AfterAll {
    Stop-TestService $Service
}

Describe 'Get-ConsoleContent' {
    It 'writes nothing before anything was imported' {
        Get-ConsoleContent -SiteDatabase $Db | Should -BeNullOrEmpty
    }

    It 'Connect fetches it and Import brings it in as one more result' {
        $cab = Export-UsageData -SiteDatabase $Db -Destination (Join-Path $TestDrive 'UsageData.cab')
        $null = $cab | Invoke-ServiceConnection -UpdatePackDestination $Packs -ServiceUri $Service.Uri -ErrorAction Stop
        Test-Path (Join-Path $Packs 'ConsoleContent/console-content.json') | Should -BeTrue
        $report = Get-Content -Raw (Join-Path $Packs 'connect-report.json') | ConvertFrom-Json
        $report.console_content.status | Should -Be 'Downloaded'
        $results = @(Import-UpdatePack -SiteDatabase $Db -Path $Packs -ErrorAction Stop)
        $item = $results | Where-Object Item -eq 'ConsoleContent'
        $item.Status | Should -Be 'Imported'
        $item.Version | Should -Be '1'
        (@(Import-UpdatePack -SiteDatabase $Db -Path $Packs) | Where-Object Item -eq 'ConsoleContent').Status | Should -Be 'AlreadyImported'
    }

    It 'returns typed servicing rows and this hierarchy''s unexpired messages, most severe first' {
        $all = @(Get-ConsoleContent -SiteDatabase $Db)
        $rows = @($all | Where-Object { $_.PSObject.TypeNames[0] -eq 'ServiceConnection.ServicingRow' })
        $messages = @($all | Where-Object { $_.PSObject.TypeNames[0] -eq 'ServiceConnection.ConsoleMessage' })
        $rows | Should -HaveCount 1
        $rows[0].Product | Should -Be 'Windows 11'
        $rows[0].ReleaseDate | Should -BeOfType [datetime]
        $rows[0].EndOfServicing.Year | Should -Be 2026
        $messages.Id | Should -Be @('crit-1', 'info-1')
        $messages[0].Severity | Should -Be 'Critical'
        $messages[1].Link | Should -Be 'https://contoso.com/kb'
        $messages[0].ContentVersion | Should -Be 1
        $messages[0].SiteDatabase | Should -Be $Db
        ($all | Out-String) | Should -Not -Match 'OTHER-HIERARCHY-ONLY'
    }

    It 'shows expired messages only with -IncludeExpired, and filters by -Severity' {
        $withExpired = @(Get-ConsoleContent -SiteDatabase $Db -Include Messages -IncludeExpired)
        $withExpired.Id | Should -Contain 'old-1'
        ($withExpired | Where-Object Id -eq 'old-1').Expired | Should -BeTrue
        @(Get-ConsoleContent -SiteDatabase $Db -Include Messages -Severity Warning) | Should -BeNullOrEmpty
        (@(Get-ConsoleContent -SiteDatabase $Db -Include Messages -Severity Warning -IncludeExpired)).Id | Should -Be @('old-1')
        $servicing = @(Get-ConsoleContent -SiteDatabase $Db -Include Servicing)
        $servicing | Should -HaveCount 1
        $servicing[0].PSObject.TypeNames[0] | Should -Be 'ServiceConnection.ServicingRow'
    }

    It 'has table views for both object types' {
        $msg = Get-ConsoleContent -SiteDatabase $Db -Include Messages | Select-Object -First 1
        $header = ($msg | Format-Table | Out-String -Width 300) -split "`n" | Where-Object { $_ -match '\S' } | Select-Object -First 1
        $header | Should -Match '^Severity\s+Id\s+Title\s+Published\s+Expires\s+Link'
        $row = Get-ConsoleContent -SiteDatabase $Db -Include Servicing
        $header = ($row | Format-Table | Out-String -Width 300) -split "`n" | Where-Object { $_ -match '\S' } | Select-Object -First 1
        $header | Should -Match '^Product\s+Version\s+Build\s+Channel\s+ReleaseDate\s+EndOfServicing'
    }

    It 'takes the site from the pipeline and has help with examples' {
        (@(Get-ServiceConnectionSite $Db | Get-ConsoleContent -Include Messages)).Count | Should -Be 2
        (Get-Help Get-ConsoleContent -Examples).Examples.Example.Count | Should -BeGreaterOrEqual 2
        (Get-Module ServiceConnection).ExportedFunctions.Keys | Should -Contain 'Get-ConsoleContent'
    }

    It 'reports a missing site database as an error record' {
        Get-ConsoleContent -SiteDatabase (Join-Path $TestDrive 'nope.db') -ErrorVariable err -ErrorAction SilentlyContinue
        $err | Should -HaveCount 1
        $err[0].FullyQualifiedErrorId | Should -Match '^ServiceConnection.NotFound'
    }

    It 'Import refuses a tampered document with an error record and keeps what it had' {
        $copy = Join-Path $TestDrive 'tampered'
        Copy-Item -Recurse -LiteralPath $Packs -Destination $copy
        $doc = Join-Path $copy 'ConsoleContent/console-content.json'
        (Get-Content -Raw $doc).Replace('Apply KB1', 'Apply KB9') | Set-Content -NoNewline -LiteralPath $doc
        $results = @(Import-UpdatePack -SiteDatabase $Db -Path $copy -ErrorVariable err -ErrorAction SilentlyContinue)
        ($results | Where-Object Item -eq 'ConsoleContent').Status | Should -Be 'Refused'
        @($err | Where-Object { $_.FullyQualifiedErrorId -match 'SignatureInvalid' }) | Should -HaveCount 1
        (Get-ConsoleContent -SiteDatabase $Db -Include Messages | Where-Object Id -eq 'crit-1').Title | Should -Be 'Apply KB1'
    }
}
