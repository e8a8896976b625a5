#!/usr/bin/env bash
# CI entry point for android_demo/: the JVM unit tests and the APK build with its checks.
#
#   android_demo/check.sh BUNDLE_DIR [OUT.apk]
#   android_demo/check.sh            # exports tiny_cnn to TFLite with edgekit first (needs edgekit[tflite])
#
# Runs both steps even when the first fails, then exits non-zero if either failed.
# Without OUT.apk the APK goes to a temporary folder and is removed afterwards.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${1:-}" == -h || "${1:-}" == --help || $# -gt 2 ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [[ $# -gt 2 ]] && exit 2 || exit 0
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-android-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
BUNDLE="${1:-}"
OUT="${2:-$TMP/edgekit-demo.apk}"

if [[ -z "$BUNDLE" ]]; then
  echo "==> no bundle given: edgekit export tiny_cnn --targets tflite --out $TMP/bundle"
  command -v edgekit >/dev/null || { echo "check.sh: error: edgekit is not installed; pass a bundle folder" >&2; exit 1; }
  if ! edgekit export tiny_cnn --targets tflite --out "$TMP/bundle"; then
    echo "check.sh: error: edgekit export failed (see above); pass an existing bundle folder instead" >&2
    exit 1
  fi
  BUNDLE="$TMP/bundle"
fi

echo "==> JVM unit tests (run_jvm_tests.sh)"
"$HERE/run_jvm_tests.sh"
TESTS=$?
echo
echo "==> APK build and checks (build_apk.sh $BUNDLE $OUT)"
"$HERE/build_apk.sh" "$BUNDLE" "$OUT"
APK=$?
echo
status() { [[ $1 -eq 0 ]] && echo ok || echo "FAILED (exit $1)"; }
echo "android_demo/check.sh: JVM tests $(status $TESTS); APK build $(status $APK)"
[[ $TESTS -eq 0 && $APK -eq 0 ]]
