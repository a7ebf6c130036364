function Invoke-ServiceConnection {
    <#
    .SYNOPSIS
    Uploads usage data to the update service and downloads the update packs that apply (Connect).

    .DESCRIPTION
    Invoke-ServiceConnection is the second step of the offline servicing flow, run on a
    computer that can reach the update service. It uploads every usage cab it is given (one
    per hierarchy; a second cab of the same hierarchy is skipped with a warning) and
    downloads the update packs the service offers for each hierarchy into
    <UpdatePackDestination>/<hierarchy-id>/<package-guid>/, with connect-report.json at the top.

    Downloads run in parallel (-ThrottleLimit), are verified with SHA-256 while they stream,
    written atomically, resumed where an earlier run stopped and skipped when already
    complete, so running the command again finishes the job rather than starting over.
    Stopping the command (Ctrl+C) keeps only what that next run resumes from: .sct-partial
    files and the files already verified. A pack's manifest.json is written only when the
    pack is complete, so Import-UpdatePack refuses a half-downloaded pack, and no
    connect-report.json is written for a stopped run.

    A failure that concerns the whole run (bad parameters, an unusable destination, the proxy
    cannot be reached or refuses the credentials, or TLS verification fails for every cab) is
    one error (ErrorId ServiceConnection.<Kind>) and nothing is output. Everything else (the
    service unreachable, a damaged cab, a pack that fails to download or verify) is reported
    per item: an upload that was tried and did not go through is an error naming the cab; one
    deliberately not sent (not a usage cab, or a second cab of a hierarchy) is a warning
    (Skipped); a pack that failed is an error and is still output with Status Failed.

    Usage data is collected from the whole pipeline first and sent in one Connect run, so
    "Get-ChildItem E:\*.cab | Invoke-ServiceConnection ..." uploads each hierarchy once.

    The proxy password is read from -ProxyCredential only when the request is made and handed
    straight to the library; it is never written to verbose, debug or log output.

    .PARAMETER UsageDataSource
    Usage cab files, or a folder of uniquely named usage cabs. Accepts the output of
    Export-UsageData and file objects from Get-ChildItem (by their Path or FullName property).

    .PARAMETER UpdatePackDestination
    Folder to download the update packs into (created if missing; its parent must exist).

    .PARAMETER ServiceUri
    Base URI of the update service, such as https://updates.contoso.com. Defaults to the
    SCT_SERVICE_URI environment variable.

    .PARAMETER Download
    Which packs to ask for: Latest (the default: only the newest update for the site version,
    no hotfixes), SiteVersion (every update and hotfix newer than the site version, including
    later steps of an upgrade chain that do not apply yet; Import records those as
    NotApplicable until the site reaches them), Hotfix (every hotfix) or All (everything
    published for the hierarchy).

    .PARAMETER Proxy
    Proxy server as host or host:port (http:// assumed, port 80 by default), such as
    proxy.contoso.com:8080.

    .PARAMETER ProxyCredential
    User name and password for the proxy. Requires -Proxy.

    .PARAMETER CertificateAuthority
    Path of an extra CA certificate (PEM) to trust for the service's TLS certificate, for a
    service behind a private certificate authority.

    .PARAMETER ServiceToken
    Bearer token for an update service that requires one. Never written anywhere.

    .PARAMETER ThrottleLimit
    How many files to download at the same time (1 to 64, default 4).

    .EXAMPLE
    Invoke-ServiceConnection -UsageDataSource E:\UsageData.cab -UpdatePackDestination E:\UpdatePacks -ServiceUri https://updates.contoso.com

    Uploads one usage cab and downloads the newest applicable update to the transfer drive.

    .EXAMPLE
    Get-ChildItem E:\ -Filter *.cab | Invoke-ServiceConnection -UpdatePackDestination E:\UpdatePacks -Download All -Proxy proxy.contoso.com:8080 -ProxyCredential (Get-Credential CONTOSO\Meg)

    Uploads the usage cabs of several hierarchies through an authenticating proxy and downloads
    every pack published for them.

    .EXAMPLE
    Export-UsageData -SiteDatabase ./site.db -Destination ./UsageData.cab | Invoke-ServiceConnection -UpdatePackDestination ./UpdatePacks -ServiceUri http://127.0.0.1:8080 -WhatIf

    Shows what would be uploaded and downloaded, without contacting the service.

    .INPUTS
    ServiceConnection.UsageDataFile, System.IO.FileInfo, System.String.

    .OUTPUTS
    ServiceConnection.UpdatePack

    .LINK
    Export-UsageData

    .LINK
    Import-UpdatePack

    .LINK
    about_ServiceConnection
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('ServiceConnection.UpdatePack')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('Path', 'FullName', 'UsageDataSrc')]
        [string[]]$UsageDataSource,

        [Parameter(Mandatory, Position = 1)]
        [Alias('UpdatePackDest')]
        [string]$UpdatePackDestination,

        [string]$ServiceUri = $env:SCT_SERVICE_URI,

        [ValidateSet('Latest', 'SiteVersion', 'Hotfix', 'All')]
        [string]$Download = 'Latest',

        [Alias('ProxyServerUri')]
        [string]$Proxy,

        [System.Management.Automation.PSCredential]
        [System.Management.Automation.Credential()]
        $ProxyCredential = [System.Management.Automation.PSCredential]::Empty,

        [string]$CertificateAuthority,

        [securestring]$ServiceToken,

        [ValidateRange(1, 64)]
        [int]$ThrottleLimit = 4
    )

    begin {
        $sources = [System.Collections.Generic.List[string]]::new()
    }

    process {
        foreach ($item in $UsageDataSource) {
            $full = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $item
            if (-not (Test-Path -LiteralPath $full)) {
                $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind NotFound -Target $full -Message "usage data source $full does not exist"))
                continue
            }
            if (-not $sources.Contains($full)) { $sources.Add($full) }
        }
    }

    end {
        if ($sources.Count -eq 0) { return }
        if (-not $ServiceUri) {
            $PSCmdlet.ThrowTerminatingError((New-ServiceConnectionErrorRecord -Kind InvalidArgument -Target $null -Message 'No update service given: use -ServiceUri or set the SCT_SERVICE_URI environment variable.'))
        }
        $hasCredential = $ProxyCredential -and $ProxyCredential -ne [System.Management.Automation.PSCredential]::Empty
        if ($hasCredential -and -not $Proxy) {
            $PSCmdlet.ThrowTerminatingError((New-ServiceConnectionErrorRecord -Kind InvalidArgument -Target $null -Message '-ProxyCredential needs -Proxy (the proxy server to authenticate to).'))
        }
        $dest = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $UpdatePackDestination
        $description = if ($sources.Count -eq 1) { $sources[0] } else { "$($sources.Count) usage data sources" }
        if (-not $PSCmdlet.ShouldProcess($dest, "Upload $description to $ServiceUri and download update packs ($Download)")) { return }

        # Several sources go to one Connect run (the library takes them in order and uploads
        # each hierarchy once), so one report covers everything and names the real files.
        try {
            $options = [ordered]@{
                source      = $sources[0]
                dest        = $dest
                service_uri = $ServiceUri
                selection   = $Download
                parallelism = $ThrottleLimit
            }
            if ($sources.Count -gt 1) {
                $options.additional_sources = @($sources | Select-Object -Skip 1)
            }
            if ($CertificateAuthority) { $options.ca_cert = Resolve-FileSystemPath -Cmdlet $PSCmdlet -Path $CertificateAuthority }
            Write-Verbose "Connecting to $ServiceUri (selection $Download, $ThrottleLimit parallel downloads)"
            if ($Proxy) {
                $proxyOptions = [ordered]@{ uri = $Proxy }
                if ($hasCredential) {
                    Write-Verbose "Using proxy $Proxy as $($ProxyCredential.UserName)"
                    $proxyOptions.username = $ProxyCredential.UserName
                    # The password is read here, at the call, and only goes into the options JSON.
                    $proxyOptions.password = $ProxyCredential.GetNetworkCredential().Password
                }
                else {
                    Write-Verbose "Using proxy $Proxy"
                }
                $options.proxy = $proxyOptions
            }
            if ($ServiceToken) {
                $options.token = [System.Net.NetworkCredential]::new('', $ServiceToken).Password
            }
            $json = ConvertTo-NativeJson -Options $options
            $options = $null
            $proxyOptions = $null

            $bridge = New-ProgressBridge -Cmdlet $PSCmdlet -Activity "Connecting to $ServiceUri"
            $call = Invoke-NativeCall -Target $dest -Bridge $bridge -Call {
                param($out) $script:Native.Methods::sct_connect($json, $bridge.Callback, [IntPtr]::Zero, $out)
            }
        }
        finally {
            $json = $null
        }

        if (-not $call.Ok) { $PSCmdlet.WriteError($call.Error); return }
        $report = $call.Value[0]

        foreach ($upload in @($report.Uploads)) {
            $cab = [string]$upload.Cab
            $message = [string]$upload.Message
            switch ($upload.Status) {
                'Uploaded' { Write-Verbose "Uploaded $cab (hierarchy $($upload.HierarchyId), site version $($upload.SiteVersion)): $($upload.Offered) pack(s) offered" }
                'Skipped' { Write-Warning "Skipped $cab`: $message" }
                default {
                    $kind = Get-ReportKind -Entry $upload -Default UploadFailed
                    $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind $kind -Target $cab -Message "Uploading $cab failed: $message"))
                }
            }
        }
        foreach ($pack in @($report.Packs)) {
            $out = [pscustomobject]@{
                PSTypeName     = 'ServiceConnection.UpdatePack'
                HierarchyId    = $pack.HierarchyId
                PackageGuid    = $pack.PackageGuid
                Name           = $pack.Name
                Version        = $pack.Version
                Type           = $pack.Type
                Size           = $pack.Size
                Path           = $pack.Path
                Status         = $pack.Status
                Message        = $pack.Message
                Files          = $pack.Files
                UpdatePackRoot = $dest
            }
            if ($pack.Status -eq 'Failed') {
                $kind = Get-ReportKind -Entry $pack -Default DownloadFailed
                $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind $kind -Target $out -Message "Downloading $($pack.Name) $($pack.Version) ($($pack.PackageGuid)) failed: $($pack.Message)"))
            }
            else {
                Write-Verbose "$($pack.Status): $($pack.Name) $($pack.Version) ($($pack.PackageGuid))"
            }
            $out
        }
        $console = $report.PSObject.Properties['ConsoleContent']
        if ($console -and $console.Value) {
            $c = $console.Value
            switch ($c.Status) {
                'Failed' {
                    $kind = Get-ReportKind -Entry $c -Default DownloadFailed
                    $PSCmdlet.WriteError((New-ServiceConnectionErrorRecord -Kind $kind -Target ([string]$c.Path) -Message "Fetching the console content failed: $($c.Message)"))
                }
                'NonePublished' { Write-Verbose 'The service publishes no console content.' }
                'Skipped' { Write-Verbose "Console content not fetched: $($c.Message)" }
                default { Write-Verbose "Console content $($c.Status): version $($c.ContentVersion) in $($c.Path)" }
            }
        }
        Write-Verbose "Connect report: $(Join-Path $dest 'connect-report.json')"
    }
}
