# Sourced by .ci/wine-run and the Windows stage of .ci/test: sets up the Wine environment for
# running the x86_64-pc-windows-gnu build, creating the Wine prefix once (cached under
# target/wine/prefix) with the ProcessPrng stand-in in system32. Headless: no X display.
# Needs ROOT (the repository root).
WINE=$(command -v wine64 || true)
[ -n "$WINE" ] || [ ! -x /usr/lib/wine/wine64 ] || WINE=/usr/lib/wine/wine64
[ -n "$WINE" ] || { echo "wine-env: wine64 not found (apt-get install wine wine64)" >&2; return 1; }
WINESERVER=$(command -v wineserver || true)
[ -n "$WINESERVER" ] || WINESERVER=/usr/lib/wine/wineserver64
export WINE WINESERVER
export WINEPREFIX="$ROOT/target/wine/prefix"
export WINEARCH=win64
# -all: Wine's own diagnostics would drown the tests' output. No Mono, Gecko or menu
# entries (none is needed, and their installers would wait for a click).
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree=;mshtml=;winemenubuilder.exe=d;bcryptprimitives=n"
unset DISPLAY WAYLAND_DISPLAY

wine_prepare_prefix() {
  local stamp="$WINEPREFIX/.sct-ready" dll="$ROOT/target/wine/bcryptprimitives.dll"
  local src="$ROOT/.ci/wine/bcryptprimitives.c" def="$ROOT/.ci/wine/bcryptprimitives.def"
  mkdir -p "$ROOT/target/wine"
  (
    # One preparer at a time; the others wait and then find it ready.
    flock 9
    if [ ! -f "$dll" ] || [ "$src" -nt "$dll" ] || [ "$def" -nt "$dll" ]; then
      x86_64-w64-mingw32-gcc -O2 -Wall -Wextra -Werror -shared -static-libgcc \
        -o "$dll.tmp" "$src" "$def" -ladvapi32
      mv "$dll.tmp" "$dll"
    fi
    if [ ! -f "$stamp" ]; then
      echo "wine-env: creating the Wine prefix $WINEPREFIX (once)" >&2
      rm -rf "$WINEPREFIX"
      "$WINE" wineboot --init >/dev/null 2>&1 || true
      "$WINESERVER" -w
      [ -d "$WINEPREFIX/drive_c/windows/system32" ] || { echo "wine-env: wineboot failed" >&2; exit 1; }
      touch "$stamp"
    fi
    if ! cmp -s "$dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"; then
      cp "$dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
    fi
  ) 9>"$ROOT/target/wine/prepare.lock"
}
