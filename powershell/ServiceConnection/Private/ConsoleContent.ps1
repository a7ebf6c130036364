# Helpers of Get-ConsoleContent.

function Get-OptionalProperty {
    # A property the library leaves out when unset (StrictMode forbids reading a missing one).
    param($InputObject, [string]$Name)
    $p = $InputObject.PSObject.Properties[$Name]
    if ($p) { $p.Value } else { $null }
}

function ConvertTo-ConsoleDate {
    # Dates in console content are YYYY-MM-DD (midnight UTC) or RFC 3339: a UTC DateTime.
    param([string]$Text)
    $styles = [Globalization.DateTimeStyles]::AssumeUniversal -bor [Globalization.DateTimeStyles]::AdjustToUniversal
    [datetime]::Parse($Text, [Globalization.CultureInfo]::InvariantCulture, $styles)
}
