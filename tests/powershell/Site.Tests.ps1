#Requires -Modules @{ ModuleName = 'Pester'; ModuleVersion = '5.0' }
# Sites, trusted publishers and usage data on the offline site (no service needed).

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-TestModule
    $script:Version = '5.00.9128.1000'

    function Get-FileSha { param($Path) (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant() }
}

Describe 'New-ServiceConnectionSite and Get-ServiceConnectionSite' {
    BeforeEach {
        $dir = Join-Path $TestDrive ([guid]::NewGuid().ToString('N'))
        $null = New-Item -ItemType Directory -Path $dir
    }

    It 'creates a site and returns a typed ServiceConnection.Site object' {
        $hier = [guid]::NewGuid()
        $site = New-ServiceConnectionSite -Path (Join-Path $dir 'site.db') -SiteCode ps1 -SiteVersion $Version -DiagnosticsLevel Full -HierarchyId $hier -SiteName 'Lab'
        $site.PSObject.TypeNames[0] | Should -Be 'ServiceConnection.Site'
        $site.SiteCode | Should -Be 'PS1'
        $site.SiteName | Should -Be 'Lab'
        $site.SiteVersion | Should -Be $Version
        $site.DiagnosticsLevel | Should -Be 'Full'
        $site.HierarchyId | Should -Be $hier.ToString()
        $site.ScpMode | Should -Be 'Offline'
        Test-Path (Join-Path $dir 'site.db') | Should -BeTrue
        $again = Get-ServiceConnectionSite -SiteDatabase (Join-Path $dir 'site.db')
        $again.HierarchyId | Should -Be $site.HierarchyId
        $again.PSObject.TypeNames[0] | Should -Be 'ServiceConnection.Site'
    }

    It 'has a default table view with the identity columns' {
        $site = New-ServiceConnectionSite -Path (Join-Path $dir 'site.db') -SiteCode PS1 -SiteVersion $Version
        $header = ($site | Format-Table | Out-String -Width 300) -split "`n" | Where-Object { $_ -match '\S' } | Select-Object -First 1
        $header | Should -Match '^SiteCode\s+SiteName\s+SiteVersion\s+Level\s+ScpMode\s+HierarchyId\s+Path'
    }

    It 'resolves relative paths against the PowerShell location' {
        Push-Location $dir
        try {
            $site = New-ServiceConnectionSite -Path ./rel.db -SiteCode REL -SiteVersion $Version
            $site.Path | Should -Be (Join-Path $dir 'rel.db')
            (Get-ServiceConnectionSite rel.db).SiteCode | Should -Be 'REL'
        }
        finally { Pop-Location }
    }

    It 'handles paths with spaces and non-ASCII characters' {
        $odd = New-Item -ItemType Directory -Path (Join-Path $dir 'Sité données ü 測試')
        $db = Join-Path $odd 'site é.db'
        $site = New-ServiceConnectionSite -Path $db -SiteCode UNI -SiteVersion $Version -SampleData 50 -Seed 5
        $site.Path | Should -Be $db
        $csv = Export-UsageData -SiteDatabase $db -Destination (Join-Path $odd 'revue é.csv')
        $csv.Path | Should -Be (Join-Path $odd 'revue é.csv')
        Test-Path -LiteralPath $csv.Path | Should -BeTrue
    }

    It 'fills the site with sample data and counts rows per level' {
        $site = New-ServiceConnectionSite -Path (Join-Path $dir 'site.db') -SiteCode PS1 -SiteVersion $Version -SampleData 600 -Seed 7
        ($site.UsageRows | Measure-Object -Sum).Sum | Should -Be 600
    }

    It 'writes nothing under -WhatIf' {
        $db = Join-Path $dir 'whatif.db'
        $out = New-ServiceConnectionSite -Path $db -SiteCode PS1 -SiteVersion $Version -SampleData 10 -WhatIf
        $out | Should -BeNullOrEmpty
        Test-Path $db | Should -BeFalse
        @(Get-ChildItem $dir -Force).Count | Should -Be 0
    }

    It 'refuses to overwrite an existing file and leaves it unchanged' {
        $db = Join-Path $dir 'site.db'
        $null = New-ServiceConnectionSite -Path $db -SiteCode PS1 -SiteVersion $Version
        $before = Get-FileSha $db
        { New-ServiceConnectionSite -Path $db -SiteCode PS2 -SiteVersion $Version -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.AlreadyExists*'
        Get-FileSha $db | Should -Be $before
        (Get-ServiceConnectionSite $db).SiteCode | Should -Be 'PS1'
    }

    It 'rejects a bad site code with InvalidArgument and creates nothing' {
        $db = Join-Path $dir 'bad.db'
        $err = $null
        New-ServiceConnectionSite -Path $db -SiteCode 'TOOLONG' -SiteVersion $Version -ErrorAction SilentlyContinue -ErrorVariable err
        $err | Should -HaveCount 1
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ServiceConnection.InvalidArgument*'
        $err[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
        $err[0].Exception.Message | Should -Match 'site code'
        Test-Path $db | Should -BeFalse
    }

    It 'reports a missing site database as ObjectNotFound with the path as target' {
        $db = Join-Path $dir 'missing.db'
        $err = $null
        $out = Get-ServiceConnectionSite -SiteDatabase $db -ErrorAction SilentlyContinue -ErrorVariable err
        $out | Should -BeNullOrEmpty
        $err | Should -HaveCount 1
        $err[0].FullyQualifiedErrorId | Should -Be 'ServiceConnection.NotFound,Get-ServiceConnectionSite'
        $err[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err[0].TargetObject | Should -Be $db
        $err[0].Exception.Kind | Should -Be 'NotFound'
        $err[0].Exception.Message | Should -Match 'does not exist'
        Test-Path $db | Should -BeFalse
    }

    It 'reports a file that is not a site database as InvalidData and leaves it unchanged' {
        $db = Join-Path $dir 'notes.db'
        Set-Content -LiteralPath $db -Value 'just some text, not SQLite'
        $before = Get-FileSha $db
        { Get-ServiceConnectionSite -SiteDatabase $db -ErrorAction Stop } | Should -Throw -ErrorId 'ServiceConnection.NotASiteDatabase*'
        Get-FileSha $db | Should -Be $before
    }

    It 'takes site databases from the pipeline, continuing past a bad one' {
        $null = New-ServiceConnectionSite -Path (Join-Path $dir 'a.db') -SiteCode AAA -SiteVersion $Version
        $null = New-ServiceConnectionSite -Path (Join-Path $dir 'b.db') -SiteCode BBB -SiteVersion $Version
        Set-Content -LiteralPath (Join-Path $dir 'c.db') -Value 'not a site'
        $err = $null
        $sites = Get-ChildItem $dir -Filter *.db | Get-ServiceConnectionSite -ErrorAction SilentlyContinue -ErrorVariable err
        $sites.SiteCode | Sort-Object | Should -Be @('AAA', 'BBB')
        $err | Should -HaveCount 1
    }
}

Describe 'Trusted publishers' {
    BeforeAll {
        $store = Join-Path $TestDrive 'store'
        $null = Invoke-ServiceTool -Arguments @('keygen', '--store', $store)
        $script:PublicKey = Join-Path $store 'publisher.pub'
        $script:Db = Join-Path $TestDrive 'trust.db'
        $null = New-ServiceConnectionSite -Path $Db -SiteCode TRU -SiteVersion $Version
    }

    It 'adds nothing under -WhatIf' {
        Add-TrustedPublisher -SiteDatabase $Db -Path $PublicKey -WhatIf | Should -BeNullOrEmpty
        Get-TrustedPublisher -SiteDatabase $Db | Should -BeNullOrEmpty
    }

    It 'trusts a key, lists it, and trusting it again changes nothing' {
        $t = Add-TrustedPublisher -SiteDatabase $Db -Path $PublicKey -Comment 'lab service'
        $t.PSObject.TypeNames[0] | Should -Be 'ServiceConnection.TrustedPublisher'
        $t.KeyId | Should -Match '^[0-9A-F]{16}$'
        $t.Comment | Should -Be 'lab service'
        $t.SiteDatabase | Should -Be $Db
        $again = Add-TrustedPublisher -SiteDatabase $Db -Path $PublicKey
        $again.KeyId | Should -Be $t.KeyId
        $list = @(Get-TrustedPublisher -SiteDatabase $Db)
        $list | Should -HaveCount 1
        $list[0].KeyId | Should -Be $t.KeyId
        ($list | Format-Table | Out-String -Width 300) | Should -Match 'KeyId\s+Comment\s+Added'
    }

    It 'refuses a file that is not a public key and trusts nothing new' {
        $bad = Join-Path $TestDrive 'bad.pub'
        Set-Content -LiteralPath $bad -Value 'not a key'
        $before = @(Get-TrustedPublisher -SiteDatabase $Db).Count
        $err = $null
        Add-TrustedPublisher -SiteDatabase $Db -Path $bad -ErrorAction SilentlyContinue -ErrorVariable err | Should -BeNullOrEmpty
        $err | Should -HaveCount 1
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ServiceConnection.*'
        $err[0].TargetObject | Should -Be $bad
        @(Get-TrustedPublisher -SiteDatabase $Db).Count | Should -Be $before
    }

    It 'does not remove under -WhatIf, removes through the pipeline, and reports an unknown key' {
        Get-TrustedPublisher -SiteDatabase $Db | Remove-TrustedPublisher -WhatIf
        @(Get-TrustedPublisher -SiteDatabase $Db) | Should -HaveCount 1
        Get-TrustedPublisher -SiteDatabase $Db | Remove-TrustedPublisher -Confirm:$false
        Get-TrustedPublisher -SiteDatabase $Db | Should -BeNullOrEmpty
        { Remove-TrustedPublisher -SiteDatabase $Db -KeyId 0123456789ABCDEF -Confirm:$false -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.NotFound*'
    }
}

Describe 'Usage data: Get-UsageData and Export-UsageData' {
    BeforeAll {
        $script:Db = Join-Path $TestDrive 'usage.db'
        $script:Site = New-ServiceConnectionSite -Path $Db -SiteCode USE -SiteVersion $Version -DiagnosticsLevel Enhanced -SampleData 1500 -Seed 11
        # Enhanced includes Basic: rows at levels 1 and 2 leave the site.
        $script:Outgoing = $Site.UsageRows[0] + $Site.UsageRows[1]
        $script:Out = Join-Path $TestDrive 'out'
        $null = New-Item -ItemType Directory -Path $Out
    }

    It 'streams exactly the outgoing rows as typed UsageRecord objects' {
        $rows = @(Get-UsageData -SiteDatabase $Db)
        $rows.Count | Should -Be $Outgoing
        $rows[0].PSObject.TypeNames[0] | Should -Be 'ServiceConnection.UsageRecord'
        ($rows.Level | Sort-Object -Unique) | Should -Be @('Basic', 'Enhanced')
        # Identifying attributes leave only as SHA-256 hashes.
        $rows | Where-Object SiteCode | ForEach-Object { $_.SiteCode | Should -Match '^[0-9a-f]{64}$' }
        ($rows[0] | Format-Table | Out-String -Width 300) | Should -Match 'Level\s+Category\s+Metric\s+Instance\s+Value'
    }

    It 'stops early for Select-Object -First and works with Where-Object | Export-Csv' {
        @(Get-UsageData -SiteDatabase $Db | Select-Object -First 5) | Should -HaveCount 5
        $csv = Join-Path $Out 'basic.csv'
        Get-UsageData -SiteDatabase $Db | Where-Object Level -eq 'Basic' | Export-Csv -LiteralPath $csv
        @(Import-Csv -LiteralPath $csv).Count | Should -Be $Site.UsageRows[0]
    }

    It 'accepts a site object from the pipeline' {
        @(Get-ServiceConnectionSite $Db | Get-UsageData).Count | Should -Be $Outgoing
    }

    It 'writes a usage cab that stock tools read, and describes it' {
        $cab = Join-Path $Out 'UsageData.cab'
        $file = Export-UsageData -SiteDatabase $Db -Destination $cab
        $file.PSObject.TypeNames[0] | Should -Be 'ServiceConnection.UsageDataFile'
        $file.Format | Should -Be 'Cab'
        $file.Path | Should -Be $cab
        $file.RecordCount | Should -Be $Outgoing
        $file.HierarchyId | Should -Be $Site.HierarchyId
        $file.SiteVersion | Should -Be $Version
        $file.DiagnosticsLevel | Should -Be 'Enhanced'
        $file.Size | Should -Be (Get-Item $cab).Length
        $file.Sha256 | Should -Be (Get-FileSha $cab)
        $listing = & cabextract -l $cab 2>&1 | Out-String
        $LASTEXITCODE | Should -Be 0
        $listing | Should -Match 'manifest\.json'
        ($file | Format-Table | Out-String -Width 300) | Should -Match 'Format\s+Records\s+Size\s+Level\s+SiteVersion\s+HierarchyId\s+Path'
    }

    It 'writes the same rows as CSV for review' {
        $csv = Join-Path $Out 'review.csv'
        $file = Export-UsageData -SiteDatabase $Db -Destination $csv
        $file.Format | Should -Be 'Csv'
        $file.RecordCount | Should -Be $Outgoing
        @(Import-Csv -LiteralPath $csv).Count | Should -Be $Outgoing
    }

    It 'accepts a -Format that agrees with the extension' {
        $csv = Join-Path $Out 'agree.csv'
        (Export-UsageData -SiteDatabase $Db -Destination $csv -Format Csv).Format | Should -Be 'Csv'
        @(Import-Csv -LiteralPath $csv).Count | Should -Be $Outgoing
    }

    It 'refuses a -Format that contradicts the extension, writing nothing' {
        $dest = Join-Path $Out 'mismatch.cab'
        { Export-UsageData -SiteDatabase $Db -Destination $dest -Format Csv -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.InvalidArgument*'
        Test-Path $dest | Should -BeFalse
    }

    It 'refuses a destination that is neither .cab nor .csv, with or without -Format' {
        $dest = Join-Path $Out 'usage.dat'
        { Export-UsageData -SiteDatabase $Db -Destination $dest -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.InvalidArgument*'
        { Export-UsageData -SiteDatabase $Db -Destination $dest -Format Csv -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.InvalidArgument*'
        Test-Path $dest | Should -BeFalse
    }

    It 'writes nothing under -WhatIf' {
        $dest = Join-Path $Out 'whatif.cab'
        Export-UsageData -SiteDatabase $Db -Destination $dest -WhatIf | Should -BeNullOrEmpty
        Test-Path $dest | Should -BeFalse
    }

    It 'does not overwrite without -Force, and replaces with -Force' {
        $dest = Join-Path $Out 'existing.csv'
        Set-Content -LiteralPath $dest -Value 'keep me'
        $before = Get-FileSha $dest
        $err = $null
        Export-UsageData -SiteDatabase $Db -Destination $dest -ErrorAction SilentlyContinue -ErrorVariable err | Should -BeNullOrEmpty
        $err | Should -HaveCount 1
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ServiceConnection.AlreadyExists*'
        $err[0].CategoryInfo.Category | Should -Be 'ResourceExists'
        Get-FileSha $dest | Should -Be $before
        $file = Export-UsageData -SiteDatabase $Db -Destination $dest -Force
        $file.Sha256 | Should -Be (Get-FileSha $dest)
        $file.Sha256 | Should -Not -Be $before
    }

    It 'reports a missing site and leaves no output behind' {
        $dest = Join-Path $Out 'nosite.cab'
        { Export-UsageData -SiteDatabase (Join-Path $TestDrive 'nosite.db') -Destination $dest -ErrorAction Stop } |
            Should -Throw -ErrorId 'ServiceConnection.NotFound*'
        Test-Path $dest | Should -BeFalse
    }
}
