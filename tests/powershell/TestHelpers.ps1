# Shared set-up for the ServiceConnection Pester suite: where things are, importing the
# module from the repository, and running the real reference service (sct-service).
# Dot-source it inside BeforeAll.

$script:RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot '../..')).Path
$script:ModuleManifest = Join-Path $script:RepoRoot 'powershell/ServiceConnection/ServiceConnection.psd1'

function Import-TestModule {
    Import-Module $script:ModuleManifest -Force -ErrorAction Stop
}

function Get-TestPwsh {
    # The pwsh running this suite, for child sessions (the wrapper script, not the dotnet host).
    if ($env:SCT_PWSH) { return $env:SCT_PWSH }
    $cmd = Get-Command pwsh -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($cmd) { return $cmd.Source }
    $shared = Join-Path $script:RepoRoot '../shared/tools/bin/pwsh'
    if (Test-Path $shared) { return (Resolve-Path $shared).Path }
    throw 'pwsh not found for child sessions (set SCT_PWSH)'
}

function Get-ServiceExe {
    $candidates = @()
    if ($env:SCT_SERVICE_EXE) { $candidates += $env:SCT_SERVICE_EXE }
    $candidates += (Join-Path $script:RepoRoot 'target/debug/sct-service'), (Join-Path $script:RepoRoot 'target/release/sct-service')
    foreach ($c in $candidates) { if (Test-Path -LiteralPath $c -PathType Leaf) { return $c } }
    throw "sct-service not found (tried: $($candidates -join ', ')); build it with cargo build --bin sct-service or set SCT_SERVICE_EXE"
}

function Invoke-ServiceTool {
    # Run sct-service with arguments; fail the test on a non-zero exit. Returns stdout lines.
    param([Parameter(Mandatory)][string[]]$Arguments)
    $exe = Get-ServiceExe
    $out = & $exe @Arguments 2>&1
    if ($LASTEXITCODE -ne 0) { throw "sct-service $($Arguments -join ' ') failed ($LASTEXITCODE): $out" }
    $out | Where-Object { $_ -is [string] }
}

function New-TestContent {
    # A folder of content files for an update pack.
    param([Parameter(Mandatory)][string]$Path, [int]$Files = 3, [int]$Size = 50000)
    $null = New-Item -ItemType Directory -Path $Path -Force
    $rng = [System.Random]::new(42)
    for ($i = 1; $i -le $Files; $i++) {
        $bytes = [byte[]]::new($Size + $i)
        $rng.NextBytes($bytes)
        [System.IO.File]::WriteAllBytes((Join-Path $Path "payload$i.bin"), $bytes)
    }
    $null = New-Item -ItemType Directory -Path (Join-Path $Path 'sub') -Force
    Set-Content -LiteralPath (Join-Path $Path 'sub/readme.txt') -Value 'update pack content'
    $Path
}

function Publish-TestPack {
    # Publish CONTENT as a pack; returns its GUID.
    param(
        [Parameter(Mandatory)][string]$Store, [Parameter(Mandatory)][string]$Name,
        [Parameter(Mandatory)][string]$Version, [string]$Type = 'Update',
        [string]$MinSiteVersion = '5.00.9100.1000', [Parameter(Mandatory)][string]$Content,
        [string[]]$Hierarchy = @()
    )
    $arguments = @('publish', '--store', $Store, '--name', $Name, '--version', $Version, '--type', $Type,
        '--min-site-version', $MinSiteVersion)
    foreach ($h in $Hierarchy) { $arguments += '--hierarchy', $h }
    $arguments += $Content
    $out = @(Invoke-ServiceTool -Arguments $arguments)
    $guid = $out | ForEach-Object { [regex]::Match($_, '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}') } |
        Where-Object Success | Select-Object -First 1
    if (-not $guid) { throw "publish printed no GUID: $out" }
    $guid.Value
}

function Start-TestService {
    # Start "sct-service serve" on 127.0.0.1:0; returns @{ Process; Uri }.
    param([Parameter(Mandatory)][string]$Store, [string[]]$ExtraArguments = @())
    $psi = [System.Diagnostics.ProcessStartInfo]::new((Get-ServiceExe))
    foreach ($a in @('serve', '--store', $Store, '--listen', '127.0.0.1:0') + $ExtraArguments) { $psi.ArgumentList.Add($a) }
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    $psi.UseShellExecute = $false
    $process = [System.Diagnostics.Process]::Start($psi)
    # The request log goes to stderr: keep it (for a failing test's post-mortem) off the console.
    $script:ServiceLog = $process.StandardError.ReadToEndAsync()
    $read = $process.StandardOutput.ReadLineAsync()
    if (-not $read.Wait([TimeSpan]::FromSeconds(60))) {
        $process.Kill($true)
        throw 'sct-service did not report its address within 60 s'
    }
    $line = $read.Result
    if ($line -notmatch 'listening on (https?://\S+)') {
        $process.Kill($true)
        throw "unexpected first line from sct-service: '$line'"
    }
    # Keep draining stdout so the server never blocks on a full pipe.
    $null = $process.StandardOutput.ReadToEndAsync()
    @{ Process = $process; Uri = $Matches[1].TrimEnd('/') }
}

function Stop-TestService {
    param($Service)
    if ($Service -and $Service.Process -and -not $Service.Process.HasExited) {
        $Service.Process.Kill($true)
        $null = $Service.Process.WaitForExit(10000)
    }
}

function Get-FreeTcpPort {
    $listener = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
    $listener.Start()
    try { $listener.LocalEndpoint.Port } finally { $listener.Stop() }
}

function New-TestTlsFiles {
    # A private CA and a server certificate for 127.0.0.1 signed by it, as PEM files, made
    # with .NET alone. Returns @{ CaCert; Cert; Key }.
    param([Parameter(Mandatory)][string]$Path)
    $null = New-Item -ItemType Directory -Path $Path -Force
    $sha256 = [System.Security.Cryptography.HashAlgorithmName]::SHA256
    $pkcs1 = [System.Security.Cryptography.RSASignaturePadding]::Pkcs1
    $notBefore = [DateTimeOffset]::UtcNow.AddDays(-1)
    $notAfter = [DateTimeOffset]::UtcNow.AddDays(30)

    $caKey = [System.Security.Cryptography.RSA]::Create(2048)
    $caReq = [System.Security.Cryptography.X509Certificates.CertificateRequest]::new('CN=ServiceConnection Test CA', $caKey, $sha256, $pkcs1)
    $caReq.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension]::new($true, $false, 0, $true))
    $caReq.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509KeyUsageExtension]::new(
            [System.Security.Cryptography.X509Certificates.X509KeyUsageFlags]'KeyCertSign, CrlSign', $true))
    $caReq.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509SubjectKeyIdentifierExtension]::new($caReq.PublicKey, $false))
    $ca = $caReq.CreateSelfSigned($notBefore, $notAfter)

    $key = [System.Security.Cryptography.RSA]::Create(2048)
    $req = [System.Security.Cryptography.X509Certificates.CertificateRequest]::new('CN=127.0.0.1', $key, $sha256, $pkcs1)
    $req.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension]::new($false, $false, 0, $true))
    $req.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509KeyUsageExtension]::new(
            [System.Security.Cryptography.X509Certificates.X509KeyUsageFlags]'DigitalSignature, KeyEncipherment', $true))
    $eku = [System.Security.Cryptography.OidCollection]::new()
    $null = $eku.Add([System.Security.Cryptography.Oid]::new('1.3.6.1.5.5.7.3.1'))
    $req.CertificateExtensions.Add([System.Security.Cryptography.X509Certificates.X509EnhancedKeyUsageExtension]::new($eku, $false))
    $san = [System.Security.Cryptography.X509Certificates.SubjectAlternativeNameBuilder]::new()
    $san.AddIpAddress([System.Net.IPAddress]::Loopback)
    $san.AddDnsName('localhost')
    $req.CertificateExtensions.Add($san.Build())
    $serial = [byte[]]::new(16)
    [System.Security.Cryptography.RandomNumberGenerator]::Fill($serial)
    $serial[0] = $serial[0] -band 0x7F
    $leaf = $req.Create($ca, $notBefore, $notAfter, $serial)

    $files = @{
        CaCert = Join-Path $Path 'ca.pem'
        Cert   = Join-Path $Path 'server.pem'
        Key    = Join-Path $Path 'server.key'
    }
    # PEM by hand (ExportCertificatePem needs .NET 7; PowerShell 7.2 runs on .NET 6).
    $pem = { param($label, [byte[]]$der) "-----BEGIN $label-----`n" + [Convert]::ToBase64String($der, 'InsertLineBreaks').Replace("`r", '') + "`n-----END $label-----`n" }
    Set-Content -LiteralPath $files.CaCert -Value (& $pem 'CERTIFICATE' $ca.RawData) -NoNewline
    Set-Content -LiteralPath $files.Cert -Value (& $pem 'CERTIFICATE' $leaf.RawData) -NoNewline
    Set-Content -LiteralPath $files.Key -Value (& $pem 'PRIVATE KEY' $key.ExportPkcs8PrivateKey()) -NoNewline
    $files
}
