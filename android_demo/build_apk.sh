#!/usr/bin/env bash
# Build a signed debug APK of the demo app from an edgekit bundle, here, with Debian's tools:
# no Android SDK, no Gradle, no network beyond Debian's package archive.
#
#   android_demo/build_apk.sh BUNDLE_DIR OUT.apk
#
# What it does (see README.md, "Building the APK here"):
#  1. checks the bundle: manifest.json is an edgekit bundle with a TFLite artifact whose files exist
#     and match the sha256 the exporter recorded;
#  2. host tools: aapt2, zipalign, apksigner from bookworm (packages aapt, zipalign, apksigner:
#     installed with apt-get when missing and running as root); android.jar (API 23) and dx from
#     bullseye's libandroid-23-java and dalvik-exchange packages, fetched with `apt-get download`
#     under a private APT configuration in a temporary folder (the machine's sources are not
#     touched) and cached in ${EDGEKIT_CACHE:-~/.cache/edgekit}/android with a debug keystore;
#  3. javac -source 8 -target 8 against android.jar plus compile-only stubs of the TFLite Java API
#     (android_demo/stubs, never packaged), dx -> classes.dex, aapt2 compile/link with the bundle's
#     manifest.json, labels.txt and .tflite files as assets (.tflite stored uncompressed), zipalign,
#     apksigner;
#  4. verifies the result: apksigner verify, aapt2 dump badging (package, minSdk), unzip -v (.tflite
#     Stored), zipalign -c 4, and that each packaged model is byte-identical to the bundle's.
#
# The APK has NO TFLite runtime (the stubs are compile-only) and cannot run here (no Android
# runtime or emulator): this proves the app compiles against the API 23 platform and the packaging
# is right, not that it runs. Build with Gradle / Android Studio for a runnable app.
#
# Environment: EDGEKIT_CACHE (cache root), EDGEKIT_DEBIAN_MIRROR (default http://deb.debian.org/debian;
# use http://archive.debian.org/debian once bullseye leaves the main mirror), KEEP_BUILD=1 keeps the
# build folder.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACKAGE="dev.edgekit.demo"
MIN_SDK=23
TARGET_SDK=34
VERSION_CODE=1
VERSION_NAME="0.1"
CACHE="${EDGEKIT_CACHE:-$HOME/.cache/edgekit}/android"
MIRROR="${EDGEKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KS_PASS="android"  # the conventional Android debug keystore password: a debug key, not a secret

T0=$(date +%s%N)
die() { echo "build_apk.sh: error: $*" >&2; exit 1; }
elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 ))"; }
step() { printf '==> [%5.1fs] %s\n' "$(( $(elapsed) / 100 ))e-1" "$*"; }

if [[ $# -ne 2 || "$1" == -h || "$1" == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [[ $# -eq 2 ]] && exit 0 || exit 2
fi
BUNDLE="$1"
OUT="$2"
[[ -d "$BUNDLE" ]] || die "bundle folder '$BUNDLE' does not exist: pass the folder \`edgekit export\` wrote"
[[ -f "$BUNDLE/manifest.json" ]] || die "'$BUNDLE' has no manifest.json: pass the folder \`edgekit export\` wrote"
[[ "$OUT" == *.apk ]] || die "the output '$OUT' must end in .apk"
OUT_DIR="$(dirname "$OUT")"
[[ -d "$OUT_DIR" ]] || die "the output folder '$OUT_DIR' does not exist"
command -v python3 >/dev/null || die "python3 is needed to read manifest.json"

# ---------------------------------------------------------------------------- 1. the bundle
step "checking the bundle $BUNDLE"
# Prints: one "model PATH" line per TFLite file, "labels" when labels.txt exists, "name NAME".
BUNDLE_INFO="$(python3 - "$BUNDLE" <<'PY'
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
def fail(msg):
    print(f"build_apk.sh: error: {msg}", file=sys.stderr); sys.exit(1)
try:
    m = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
except (OSError, ValueError) as e:
    fail(f"cannot read {root}/manifest.json: {e}")
if not isinstance(m, dict) or m.get("format") != "edgekit-bundle" or m.get("format_version") != 1:
    fail(f"{root}/manifest.json is not an edgekit bundle manifest (format_version 1)")
spec = (m.get("model") or {}).get("spec") or {}
pre = spec.get("preprocess") or {}
if pre.get("kind") != "image":
    fail(f"model {spec.get('name')} has {pre.get('kind') or 'no'} preprocessing; the demo app classifies images")
arts = [a for a in m.get("artifacts", []) if a.get("target") == "tflite"]
if not arts:
    have = ", ".join(f"{a.get('target')}/{a.get('precision')}" for a in m.get("artifacts", [])) or "none"
    fail(f"the bundle has no TFLite artifact (it has: {have}); export with --targets tflite")
for a in arts:
    for f in a.get("files", []):
        rel = f["path"] if isinstance(f, dict) else f
        p = (root / rel)
        if rel.startswith("/") or ".." in Path(rel).parts:
            fail(f"artifact path {rel!r} leaves the bundle")
        if not p.is_file():
            fail(f"{rel} is listed in manifest.json but missing from the bundle: copy the whole bundle folder")
        want = f.get("sha256") if isinstance(f, dict) else None
        if want:
            got = hashlib.sha256(p.read_bytes()).hexdigest()
            if got != want:
                fail(f"{rel} differs from the manifest (sha256 {got[:12]}..., manifest {want[:12]}...): re-export the bundle")
        print("model", rel)
if (root / "labels.txt").is_file():
    print("labels")
print("name", spec.get("name", "?"))
PY
)" || exit 1
mapfile -t MODELS < <(sed -n 's/^model //p' <<<"$BUNDLE_INFO")
MODEL_NAME="$(sed -n 's/^name //p' <<<"$BUNDLE_INFO")"
echo "    model $MODEL_NAME; TFLite files: ${MODELS[*]}"

# ---------------------------------------------------------------------------- 2. tools
step "host tools"
for tool in javac java keytool dpkg-deb; do
  command -v "$tool" >/dev/null || die "'$tool' not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)"
done
missing=()
command -v aapt2 >/dev/null || missing+=(aapt)          # Debian's aapt package ships aapt2
command -v zipalign >/dev/null || missing+=(zipalign)
command -v apksigner >/dev/null || missing+=(apksigner)
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: run 'sudo apt-get install ${missing[*]}' (Debian bookworm)"
  echo "    apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE"
ANDROID_JAR="$CACHE/android-23.jar"
DX_JAR="$CACHE/dx.jar"
CACHED="yes"
if [[ ! -s "$ANDROID_JAR" || ! -s "$DX_JAR" ]]; then
  CACHED="no"
  step "fetching android.jar (API 23) and dx from Debian bullseye into $CACHE"
  APT_TMP="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-apt.XXXXXX")"
  mkdir -p "$APT_TMP/lists/partial" "$APT_TMP/cache/archives/partial" "$APT_TMP/sources.list.d" \
           "$APT_TMP/preferences.d" "$APT_TMP/debs" "$APT_TMP/x"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  SIGNED=""
  [[ -f "$KEYRING" ]] && SIGNED="[signed-by=$KEYRING] "
  echo "deb ${SIGNED}$MIRROR bullseye main" > "$APT_TMP/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_TMP/sources.list" -o "Dir::Etc::SourceParts=$APT_TMP/sources.list.d"
            -o "Dir::Etc::PreferencesParts=$APT_TMP/preferences.d" -o "Dir::Etc::Preferences=$APT_TMP/preferences"
            -o "Dir::State::Lists=$APT_TMP/lists" -o "Dir::Cache=$APT_TMP/cache"
            -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root"
            -o "Acquire::Languages=none")
  apt-get "${APT_OPTS[@]}" update -qq >"$APT_TMP/update.log" 2>&1 \
    || { cat "$APT_TMP/update.log" >&2; die "apt-get update for bullseye ($MIRROR) failed; if bullseye left the main mirror, set EDGEKIT_DEBIAN_MIRROR=http://archive.debian.org/debian"; }
  # android-sdk-platform-23 only symlinks android.jar to libandroid-23-java's jar: fetch the jar's package.
  (cd "$APT_TMP/debs" && apt-get "${APT_OPTS[@]}" download libandroid-23-java dalvik-exchange >"$APT_TMP/download.log" 2>&1) \
    || { cat "$APT_TMP/download.log" >&2; die "apt-get download libandroid-23-java dalvik-exchange failed"; }
  : > "$CACHE/tools.txt.$$"
  for deb in "$APT_TMP"/debs/*.deb; do
    dpkg-deb -x "$deb" "$APT_TMP/x"
    printf '%s %s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" "$(sha256sum "$deb" | cut -d' ' -f1)" >> "$CACHE/tools.txt.$$"
  done
  mv "$CACHE/tools.txt.$$" "$CACHE/tools.txt"
  src_android="$APT_TMP/x/usr/share/java/com.android.android-23.jar"
  src_dx="$(ls "$APT_TMP"/x/usr/share/java/com.android.dx-*.jar 2>/dev/null | head -1)"
  [[ -f "$src_android" ]] || die "libandroid-23-java did not contain usr/share/java/com.android.android-23.jar"
  [[ -n "$src_dx" ]] || die "dalvik-exchange did not contain usr/share/java/com.android.dx-*.jar"
  cp "$src_android" "$ANDROID_JAR.part.$$" && mv "$ANDROID_JAR.part.$$" "$ANDROID_JAR"  # atomic: safe with a parallel run
  cp "$src_dx" "$DX_JAR.part.$$" && mv "$DX_JAR.part.$$" "$DX_JAR"
  rm -rf "$APT_TMP"
fi
unzip -l "$ANDROID_JAR" android/app/Activity.class >/dev/null 2>&1 || die "$ANDROID_JAR is not an Android platform jar; delete $CACHE and rerun"
KEYSTORE="$CACHE/debug.keystore"
if [[ ! -s "$KEYSTORE" ]]; then
  step "generating a debug keystore ($KEYSTORE)"
  rm -f "$KEYSTORE.part.$$"
  keytool -genkeypair -noprompt -keystore "$KEYSTORE.part.$$" -storetype PKCS12 -storepass "$KS_PASS" -keypass "$KS_PASS" \
    -alias androiddebugkey -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=Android Debug,O=Android,C=US" >/dev/null 2>&1 \
    || die "keytool could not create $KEYSTORE"
  mv "$KEYSTORE.part.$$" "$KEYSTORE"
fi
echo "    aapt2 $(aapt2 version 2>&1 | sed 's/.*) //'), apksigner $(apksigner version), $(javac -version 2>&1), tools cached: $CACHED"
sed 's/^/    /' "$CACHE/tools.txt" 2>/dev/null | cut -c1-80 || true

# ---------------------------------------------------------------------------- 3. build
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-apk.XXXXXX")"
if [[ "${KEEP_BUILD:-0}" == 1 ]]; then echo "    build folder kept: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK/assets" "$WORK/gen" "$WORK/stub-classes" "$WORK/classes"

step "assets: the bundle's manifest.json, labels.txt, .tflite files, the sample image"
for f in "$HERE"/app/src/main/assets/*; do
  [[ -f "$f" ]] && cp "$f" "$WORK/assets/"
done
cp "$BUNDLE/manifest.json" "$WORK/assets/manifest.json"
[[ -f "$BUNDLE/labels.txt" ]] && cp "$BUNDLE/labels.txt" "$WORK/assets/labels.txt"
for rel in "${MODELS[@]}"; do
  mkdir -p "$WORK/assets/$(dirname "$rel")"
  cp "$BUNDLE/$rel" "$WORK/assets/$rel"
done

step "aapt2 compile + link (minSdk $MIN_SDK, targetSdk $TARGET_SDK, .tflite stored)"
# A working copy of the manifest for aapt2: add the package attribute (Gradle takes it from
# `namespace` instead, and AGP 8 rejects it in the source manifest), and drop <uses-native-library>,
# which Debian's aapt2 (Android 10) predates (API 31: it lets the GPU delegate load the vendor's
# OpenCL; the Gradle build keeps it).
grep -v '<uses-native-library' "$HERE/app/src/main/AndroidManifest.xml" \
  | sed "s|<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\"|& package=\"$PACKAGE\"|" \
  > "$WORK/AndroidManifest.xml"
grep -q "package=\"$PACKAGE\"" "$WORK/AndroidManifest.xml" || die "could not set the package in the manifest copy"
aapt2 compile --dir "$HERE/app/src/main/res" -o "$WORK/res.zip" || die "aapt2 compile failed"
# (aapt2 warns that android.jar's resources.arsc is compressed: harmless, filtered out)
aapt2 link -o "$WORK/unsigned.apk" -I "$ANDROID_JAR" --manifest "$WORK/AndroidManifest.xml" \
  -A "$WORK/assets" --java "$WORK/gen" --min-sdk-version "$MIN_SDK" --target-sdk-version "$TARGET_SDK" \
  --version-code "$VERSION_CODE" --version-name "$VERSION_NAME" -0 .tflite "$WORK/res.zip" \
  2> >(grep -v "resources.arsc in APK .* is compressed" >&2) || die "aapt2 link failed"

step "javac -source 8 -target 8 against android.jar (API 23) + compile-only TFLite stubs"
mapfile -t STUBS < <(find "$HERE/stubs" -name '*.java' | sort)
mapfile -t SRCS < <(find "$HERE/app/src/main/java" "$WORK/gen" -name '*.java' | sort)
# One javac run for app + stubs (a JVM start is seconds on a small machine); the stub classes are
# then moved out, so only the app's classes reach dx.
javac -J-XX:TieredStopAtLevel=1 -source 8 -target 8 -encoding UTF-8 -Xlint:-options -Xlint:unchecked \
  -bootclasspath "$ANDROID_JAR" -d "$WORK/classes" "${STUBS[@]}" "${SRCS[@]}" \
  || die "the app does not compile against android.jar API $MIN_SDK (or uses a TFLite API the stubs lack)"
mv "$WORK/classes/org" "$WORK/stub-classes/"
OTHER="$(cd "$WORK/classes" && find . -name '*.class' ! -path "./${PACKAGE//.//}/*" | head -3)"
[[ -z "$OTHER" ]] || die "unexpected classes outside $PACKAGE would be packaged: $OTHER"

step "dx -> classes.dex"
java -XX:TieredStopAtLevel=1 -jar "$DX_JAR" --dex --min-sdk-version="$MIN_SDK" --output="$WORK/classes.dex" "$WORK/classes" \
  || die "dx failed (a Java 8 feature dx cannot translate for minSdk $MIN_SDK, e.g. a lambda?)"
python3 - "$WORK/unsigned.apk" "$WORK/classes.dex" <<'PY' || die "could not add classes.dex to the APK"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "a", compression=zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[2], "classes.dex")
PY

step "zipalign 4 + apksigner (debug key)"
zipalign -f -p 4 "$WORK/unsigned.apk" "$WORK/aligned.apk" || die "zipalign failed"
apksigner sign --ks "$KEYSTORE" --ks-key-alias androiddebugkey --ks-pass "pass:$KS_PASS" --key-pass "pass:$KS_PASS" \
  --min-sdk-version "$MIN_SDK" --out "$WORK/signed.apk" "$WORK/aligned.apk" || die "apksigner sign failed"
mv "$WORK/signed.apk" "$OUT"
BUILD_MS=$(elapsed)

# ---------------------------------------------------------------------------- 4. checks
FAILED=0
check() { if [[ "$1" == ok ]]; then echo "    [ok]   $2"; else echo "    [FAIL] $2" >&2; FAILED=1; fi; }
step "checks"
VERIFY="$(apksigner verify --verbose --min-sdk-version "$MIN_SDK" "$OUT" 2>&1)" && v=ok || v=fail
check "$v" "apksigner verify: $(grep -E '^Verifie[sd]|v[0-9] scheme.*true' <<<"$VERIFY" | tr '\n' ';' | sed 's/;$//')"
[[ $v == ok ]] || echo "$VERIFY" >&2
BADGING="$(aapt2 dump badging "$OUT" 2>&1)" || true
PKG_LINE="$(grep -m1 '^package:' <<<"$BADGING" || true)"
SDK_LINE="$(grep -m1 '^sdkVersion:' <<<"$BADGING" || true)"
TGT_LINE="$(grep -m1 '^targetSdkVersion:' <<<"$BADGING" || true)"
[[ "$PKG_LINE" == *"name='$PACKAGE'"* ]] && v=ok || v=fail; check "$v" "badging: $PKG_LINE"
[[ "$SDK_LINE" == "sdkVersion:'$MIN_SDK'" ]] && v=ok || v=fail; check "$v" "badging: $SDK_LINE $TGT_LINE"
grep -q "^launchable-activity: name='$PACKAGE.MainActivity'" <<<"$BADGING" && v=ok || v=fail
check "$v" "badging: launchable-activity $PACKAGE.MainActivity"
UNZIP="$(unzip -v "$OUT")"
grep -q ' classes.dex$' <<<"$UNZIP" && grep -q ' assets/manifest.json$' <<<"$UNZIP" && v=ok || v=fail
check "$v" "classes.dex and assets/manifest.json are in the APK"
# The classes the dex defines (read from its class_defs): the app's only, no stub of org.tensorflow.
DEX="$(unzip -p "$OUT" classes.dex | python3 -c '
import struct, sys
d = sys.stdin.buffer.read()
assert d[:4] == b"dex\n", "not a dex file"
def u(off): return struct.unpack_from("<I", d, off)[0]
def string(i):
    off = u(u(60) + 4 * i)
    while d[off] & 0x80: off += 1  # skip the uleb128 length
    return d[off + 1:d.index(b"\0", off + 1)].decode("utf-8", "replace")
names = [string(u(u(68) + 4 * u(u(100) + 32 * k))) for k in range(u(96))]
print(len(names), sum(n.startswith("Lorg/tensorflow/") for n in names),
      sum(not n.startswith("L'"${PACKAGE//.//}"'/") for n in names))
' 2>&1)" || DEX="error $DEX"
read -r DEX_N DEX_TF DEX_OTHER <<<"$DEX" || true
[[ "$DEX_TF" == 0 && "$DEX_OTHER" == 0 ]] && v=ok || v=fail
check "$v" "classes.dex defines $DEX_N classes, all in $PACKAGE (org.tensorflow stubs: ${DEX_TF:-?}, others: ${DEX_OTHER:-?})"
ALIGN="$(zipalign -c -v 4 "$OUT" 2>&1)" && v=ok || v=fail
check "$v" "zipalign -c -v 4: $(tail -1 <<<"$ALIGN")"
for rel in "${MODELS[@]}"; do
  line="$(grep " assets/$rel\$" <<<"$UNZIP" || true)"
  [[ "$(awk '{print $2}' <<<"$line")" == Stored ]] && v=ok || v=fail
  check "$v" "unzip -v: $(sed 's/  */ /g' <<<"$line")"
  aline="$(grep "assets/$rel" <<<"$ALIGN" || true)"
  [[ "$aline" == *"(OK"* ]] && v=ok || v=fail
  check "$v" "zipalign: $(sed 's/^ *//' <<<"$aline")"
  [[ "$(unzip -p "$OUT" "assets/$rel" | sha256sum | cut -d' ' -f1)" == "$(sha256sum "$BUNDLE/$rel" | cut -d' ' -f1)" ]] && v=ok || v=fail
  check "$v" "assets/$rel is byte-identical to the bundle's file"
done
CERT="$(apksigner verify --print-certs "$OUT" 2>/dev/null | grep -m1 'certificate SHA-256 digest' | sed 's/.*: //')"

SIZE=$(stat -c %s "$OUT")
echo
echo "APK        $OUT ($SIZE bytes, $(( (SIZE + 1023) / 1024 )) KiB)"
echo "app        $PACKAGE $VERSION_NAME, minSdk $MIN_SDK, targetSdk $TARGET_SDK, debug-signed (cert SHA-256 ${CERT:0:16}...)"
echo "bundle     $MODEL_NAME: ${MODELS[*]}$(grep -q '^labels' <<<"$BUNDLE_INFO" && echo ' + labels.txt')"
echo "time       build ${BUILD_MS} ms, with checks $(elapsed) ms (tools cached before this run: $CACHED)"
echo "not proven the APK was not installed or run (no Android runtime or emulator here), and it contains"
echo "           no TFLite runtime (compile-only stubs): build with Gradle for a runnable app"
if ((FAILED)); then
  die "some checks failed (see [FAIL] above)"
fi
echo "build_apk.sh: OK"
