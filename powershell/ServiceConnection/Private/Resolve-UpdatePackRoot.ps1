function Resolve-UpdatePackRoot {
    <#
    .SYNOPSIS
    The update-pack folder (the one holding <hierarchy-id>/ folders) for a path that may be
    that folder, a hierarchy folder inside it, or a pack folder (<root>/<hierarchy>/<guid>).
    #>
    [CmdletBinding()]
    [OutputType([string])]
    param([Parameter(Mandatory)][string]$Path)

    $full = [System.IO.Path]::TrimEndingDirectorySeparator($Path)
    $isGuid = { param($p) $g = [guid]::Empty; [guid]::TryParse([System.IO.Path]::GetFileName($p), [ref]$g) }
    if ([System.IO.File]::Exists([System.IO.Path]::Combine($full, 'manifest.json')) -and (& $isGuid $full)) {
        $hierarchy = [System.IO.Path]::GetDirectoryName($full)
        if ($hierarchy -and (& $isGuid $hierarchy)) {
            return [System.IO.Path]::GetDirectoryName($hierarchy)
        }
    }
    if ((& $isGuid $full) -and [System.IO.Directory]::Exists($full)) {
        $parent = [System.IO.Path]::GetDirectoryName($full)
        $packs = [System.IO.Directory]::EnumerateDirectories($full) |
            Where-Object { [System.IO.File]::Exists([System.IO.Path]::Combine($_, 'manifest.json')) }
        if ($parent -and @($packs).Count -gt 0) { return $parent }
    }
    $full
}
