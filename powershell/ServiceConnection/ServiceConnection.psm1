# ServiceConnection root module: loads the helpers and cmdlets, then the native library for
# this platform by full path (lib/<rid>/ beside this file, or $env:SCT_NATIVE_LIBRARY).
Set-StrictMode -Version 3.0

foreach ($folder in 'Private', 'Public') {
    $files = Get-ChildItem -LiteralPath (Join-Path $PSScriptRoot $folder) -Filter '*.ps1' -File |
        Sort-Object Name
    foreach ($file in $files) { . $file.FullName }
}

$script:Native = Initialize-NativeLibrary -ModuleRoot $PSScriptRoot

$public = Get-ChildItem -LiteralPath (Join-Path $PSScriptRoot 'Public') -Filter '*.ps1' -File |
    ForEach-Object BaseName
Export-ModuleMember -Function $public
