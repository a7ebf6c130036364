#Requires -Modules @{ ModuleName = 'Pester'; ModuleVersion = '5.0' }
# The module as a module: manifest, loading the native library, re-importing, help.

BeforeDiscovery {
    $manifestPath = Join-Path $PSScriptRoot '../../powershell/ServiceConnection/ServiceConnection.psd1'
    $script:Cmdlets = (Import-PowerShellDataFile $manifestPath).FunctionsToExport | ForEach-Object { @{ Name = $_ } }
    $script:Writers = @('New-ServiceConnectionSite', 'Add-TrustedPublisher', 'Remove-TrustedPublisher',
        'Export-UsageData', 'Invoke-ServiceConnection', 'Import-UpdatePack') | ForEach-Object { @{ Name = $_ } }
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-TestModule

    function Copy-ModuleWithoutLib {
        # The module's files, without a lib/ folder a local build may have placed there.
        param([string]$Destination)
        $source = Split-Path $ModuleManifest
        $null = New-Item -ItemType Directory -Path $Destination -Force
        Get-ChildItem -LiteralPath $source | Where-Object Name -ne 'lib' | Copy-Item -Destination $Destination -Recurse
        Test-Path (Join-Path $Destination 'lib') | Should -BeFalse
        $Destination
    }
}

Describe 'Module manifest' {
    It 'is a valid manifest with the required keys' {
        $m = Test-ModuleManifest -Path $ModuleManifest -ErrorAction Stop
        $m.Name | Should -Be 'ServiceConnection'
        $m.Guid | Should -Not -Be ([guid]::Empty)
        $m.Description | Should -Not -BeNullOrEmpty
        $m.PowerShellVersion | Should -Be ([version]'7.2')
        $m.CompatiblePSEditions | Should -Contain 'Core'
        $m.ExportedFormatFiles | ForEach-Object { Split-Path $_ -Leaf } | Should -Contain 'ServiceConnection.Format.ps1xml'
    }

    It 'exports exactly the functions the manifest lists, and nothing private' {
        $data = Import-PowerShellDataFile $ModuleManifest
        $data.FunctionsToExport | Should -Not -Contain '*'
        $exported = (Get-Module ServiceConnection).ExportedFunctions.Keys | Sort-Object
        $exported | Should -Be ($data.FunctionsToExport | Sort-Object)
        $exported | Should -Not -Contain 'Invoke-NativeCall'
        Get-Command Invoke-NativeCall -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
    }

    It '<Name> uses an approved verb' -ForEach $Cmdlets {
        (Get-Verb).Verb | Should -Contain ($Name -split '-')[0]
    }

    It '<Name> supports -WhatIf and -Confirm' -ForEach $Writers {
        $cmd = Get-Command $Name
        $cmd.Parameters.Keys | Should -Contain 'WhatIf'
        $cmd.Parameters.Keys | Should -Contain 'Confirm'
    }
}

Describe 'Loading the native library' {
    It 'loads the library by full path and reports its version' {
        $native = & (Get-Module ServiceConnection) { $script:Native }
        [System.IO.Path]::IsPathRooted($native.Path) | Should -BeTrue
        Test-Path -LiteralPath $native.Path | Should -BeTrue
        $native.Version | Should -Match '^\d+\.\d+\.\d+'
        $native.AbiVersion | Should -BeGreaterThan 0
    }

    It 're-imports in the same session and still works' {
        $site = Join-Path $TestDrive 'reimport.db'
        Import-Module $ModuleManifest -Force -ErrorAction Stop
        Remove-Module ServiceConnection
        Import-Module $ModuleManifest -ErrorAction Stop
        Import-Module $ModuleManifest -Force -ErrorAction Stop
        $s = New-ServiceConnectionSite -Path $site -SiteCode RI1 -SiteVersion 5.00.9128.1000
        $s.SiteCode | Should -Be 'RI1'
        (Get-ServiceConnectionSite -SiteDatabase $site).HierarchyId | Should -Be $s.HierarchyId
    }

    It 'loads from lib/(platform)/ under the module when SCT_NATIVE_LIBRARY is not set' {
        $native = & (Get-Module ServiceConnection) { $script:Native }
        $rid = & (Get-Module ServiceConnection) { Get-NativeLibraryRid }
        $copy = Copy-ModuleWithoutLib -Destination (Join-Path $TestDrive 'lib-copy/ServiceConnection')
        $libDir = New-Item -ItemType Directory -Path (Join-Path $copy "lib/$($rid.Rid)")
        Copy-Item $native.Path (Join-Path $libDir $rid.FileName)
        $saved = $env:SCT_NATIVE_LIBRARY
        try {
            $env:SCT_NATIVE_LIBRARY = $null
            $out = & (Get-TestPwsh) -NoProfile -NonInteractive -Command "Import-Module '$copy/ServiceConnection.psd1' -ErrorAction Stop; & (Get-Module ServiceConnection) { `$script:Native.Path }" 2>&1
        }
        finally { $env:SCT_NATIVE_LIBRARY = $saved }
        $LASTEXITCODE | Should -Be 0 -Because ($out | Out-String)
        ($out | Select-Object -Last 1) | Should -Be (Join-Path $libDir $rid.FileName)
    }

    It 'looks for lib/<rid>/<file> as the release archives lay it out, win-x64 included' {
        $m = Get-Module ServiceConnection
        foreach ($case in @(
                @{ OS = 'Windows'; Arch = 'X64'; Rid = 'win-x64'; File = 'serviceconnection.dll' }
                @{ OS = 'Linux'; Arch = 'X64'; Rid = 'linux-x64'; File = 'libserviceconnection.so' }
                @{ OS = 'MacOS'; Arch = 'Arm64'; Rid = 'osx-arm64'; File = 'libserviceconnection.dylib' }
            )) {
            $r = & $m { param($o, $a) Get-NativeLibraryRid -OS $o -Architecture $a } $case.OS $case.Arch
            $r.Rid | Should -Be $case.Rid
            $r.FileName | Should -Be $case.File
        }
        # The running platform's default is one of those, and is what the module loaded.
        $here = & $m { Get-NativeLibraryRid }
        $here.Rid | Should -BeIn @('win-x64', 'win-arm64', 'linux-x64', 'linux-arm64', 'osx-x64', 'osx-arm64')
    }

    It 'fails with a clear error naming every path it tried when the library is missing' {
        $copy = Copy-ModuleWithoutLib -Destination (Join-Path $TestDrive 'nolib/ServiceConnection')
        $missing = Join-Path $TestDrive 'does-not-exist/libserviceconnection.so'
        $saved = $env:SCT_NATIVE_LIBRARY
        try {
            $env:SCT_NATIVE_LIBRARY = $missing
            $out = & (Get-TestPwsh) -NoProfile -NonInteractive -Command "try { Import-Module '$copy/ServiceConnection.psd1' -ErrorAction Stop; 'LOADED' } catch { 'ID=' + `$_.FullyQualifiedErrorId; `$_.Exception.Message }" 2>&1
        }
        finally { $env:SCT_NATIVE_LIBRARY = $saved }
        $text = $out | Out-String
        $text | Should -Not -Match 'LOADED'
        $text | Should -Match 'ID=ServiceConnection.NativeLibraryNotFound'
        $text | Should -Match 'native library'
        $text | Should -Match ([regex]::Escape($missing))
        $text | Should -Match ([regex]::Escape((Join-Path $copy 'lib')))
    }
}

Describe 'Help' {
    It '<Name> has a synopsis, a description and at least two examples' -ForEach $Cmdlets {
        $help = Get-Help $Name -Full
        $help.Synopsis | Should -Not -BeNullOrEmpty
        $help.Synopsis | Should -Not -Match "^\s*$([regex]::Escape($Name))\s"
        ($help.Description | Out-String).Trim() | Should -Not -BeNullOrEmpty
        @($help.Examples.Example).Count | Should -BeGreaterOrEqual 2
        (Get-Help $Name -Examples | Out-String) | Should -Match ([regex]::Escape($Name))
    }

    It '<Name> documents every parameter' -ForEach $Cmdlets {
        $common = [System.Management.Automation.Cmdlet]::CommonParameters + [System.Management.Automation.Cmdlet]::OptionalCommonParameters
        $params = (Get-Command $Name).Parameters.Keys | Where-Object { $_ -notin $common }
        $params | Should -Not -BeNullOrEmpty
        foreach ($p in $params) {
            $ph = Get-Help $Name -Parameter $p
            ($ph.Description | Out-String).Trim() | Should -Not -BeNullOrEmpty -Because "-$p of $Name needs a description"
        }
    }

    It '<Name> names its output type' -ForEach $Cmdlets {
        $help = Get-Help $Name -Full
        ($help.returnValues | Out-String).Trim() | Should -Not -BeNullOrEmpty
    }

    It 'has an about_ServiceConnection topic covering the three steps' {
        $about = Get-Help about_ServiceConnection | Out-String
        $about | Should -Match 'Export-UsageData'
        $about | Should -Match 'Invoke-ServiceConnection'
        $about | Should -Match 'Import-UpdatePack'
        $about | Should -Match 'EXAMPLES'
    }
}
