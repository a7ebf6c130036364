#Requires -Modules @{ ModuleName = 'Pester'; ModuleVersion = '5.0' }
# Write-Progress from the native progress callback, $ProgressPreference, and stopping a
# running cmdlet (what Ctrl+C does) — observed through a separate PowerShell instance,
# whose Progress stream collects every record the cmdlet writes.

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-TestModule

    function New-ModuleShell {
        $ps = [powershell]::Create()
        $null = $ps.AddCommand('Import-Module').AddParameter('Name', $ModuleManifest).AddParameter('ErrorAction', 'Stop')
        $null = $ps.Invoke()
        $ps.Commands.Clear()
        $ps
    }
}

Describe 'Progress and cancellation' {
    It 'writes throttled progress records and completes the bar' {
        $ps = New-ModuleShell
        try {
            $db = Join-Path $TestDrive 'progress.db'
            $null = $ps.AddCommand('New-ServiceConnectionSite').AddParameters(@{
                    Path = $db; SiteCode = 'PRG'; SiteVersion = '5.00.9128.1000'; SampleData = 30000; Seed = 1
                })
            $out = $ps.Invoke()
            $ps.HadErrors | Should -BeFalse
            $out[0].SiteCode | Should -Be 'PRG'
            $records = @($ps.Streams.Progress)
            $records.Count | Should -BeGreaterThan 0
            $records[0].Activity | Should -BeLike 'Generating sample usage data*'
            $records[-1].RecordType | Should -Be 'Completed'
            # Throttled: far fewer records than the rows generated.
            $records.Count | Should -BeLessThan 1000
        }
        finally { $ps.Dispose() }
    }

    It 'writes no progress when $ProgressPreference is SilentlyContinue' {
        $ps = New-ModuleShell
        try {
            $null = $ps.AddScript('$ProgressPreference = "SilentlyContinue"').AddStatement()
            $null = $ps.AddCommand('New-ServiceConnectionSite').AddParameters(@{
                    Path = (Join-Path $TestDrive 'quiet.db'); SiteCode = 'QUI'; SiteVersion = '5.00.9128.1000'; SampleData = 30000; Seed = 1
                })
            $out = $ps.Invoke()
            $ps.HadErrors | Should -BeFalse
            $out[0].SiteCode | Should -Be 'QUI'
            @($ps.Streams.Progress) | Should -HaveCount 0
        }
        finally { $ps.Dispose() }
    }

    It 'stops a running operation cleanly when the pipeline is stopped, leaving nothing behind' {
        $ps = New-ModuleShell
        try {
            $dir = New-Item -ItemType Directory -Path (Join-Path $TestDrive 'stop')
            $db = Join-Path $dir 'stopped.db'
            $null = $ps.AddCommand('New-ServiceConnectionSite').AddParameters(@{
                    Path = $db; SiteCode = 'STP'; SiteVersion = '5.00.9128.1000'; SampleData = 5000000; Seed = 1
                })
            $handle = $ps.BeginInvoke()
            $deadline = [DateTime]::UtcNow.AddSeconds(60)
            while ($ps.Streams.Progress.Count -eq 0 -and -not $handle.IsCompleted -and [DateTime]::UtcNow -lt $deadline) {
                Start-Sleep -Milliseconds 20
            }
            $handle.IsCompleted | Should -BeFalse -Because 'five million rows take longer than the wait for the first progress record'
            $stopping = $ps.BeginStop($null, $null)
            $stopping.AsyncWaitHandle.WaitOne([TimeSpan]::FromSeconds(60)) | Should -BeTrue -Because 'the callback cancels the native call when the pipeline stops'
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            Test-Path $db | Should -BeFalse
            @(Get-ChildItem -LiteralPath $dir -Force) | Should -HaveCount 0
        }
        finally { $ps.Dispose() }
    }
}
