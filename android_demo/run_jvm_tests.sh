#!/usr/bin/env bash
# Run the app's JVM unit tests (app/src/test) with plain javac/java: no Gradle, no Android SDK.
# They test the pure-Java layer (manifest parsing, Pillow-exact preprocessing, top-k, quantization)
# against android_demo/testdata: a real edgekit manifest and the preprocessing test vectors.
#
#   android_demo/run_jvm_tests.sh
#
# Needs a JDK (8+; 17 here) and JUnit 4: Debian's junit4 package (/usr/share/java/junit4.jar and
# hamcrest), installed here with apt-get when missing and running as root; or point JUNIT_JAR and
# HAMCREST_JAR at the jars.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "run_jvm_tests.sh: error: $*" >&2; exit 1; }

for tool in javac java; do
  command -v "$tool" >/dev/null || die "'$tool' not found: install a JDK (apt-get install default-jdk-headless)"
done

JUNIT_JAR="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST_JAR="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
if [[ ! -f "$JUNIT_JAR" || ! -f "$HAMCREST_JAR" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian's junit4 (JUnit 4 + hamcrest) ..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends junit4 >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends junit4 >/dev/null; } \
      || die "apt-get install junit4 failed"
  fi
fi
[[ -f "$JUNIT_JAR" ]] || die "JUnit 4 not found at $JUNIT_JAR: apt-get install junit4, or set JUNIT_JAR"
[[ -f "$HAMCREST_JAR" ]] || die "hamcrest not found at $HAMCREST_JAR: apt-get install junit4, or set HAMCREST_JAR"

OUT="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-jvm-tests.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
CP="$JUNIT_JAR:$HAMCREST_JAR"

# The pure layer must compile as Java 8 (what the APK is built with) and without android.*:
# compiling it alone, with no android.jar on the path, proves the second.
mapfile -t MAIN_SRC < <(find "$HERE/app/src/main/java/dev/edgekit/demo/core" -name '*.java' | sort)
mapfile -t TEST_SRC < <(find "$HERE/app/src/test/java" -name '*.java' | sort)
((${#MAIN_SRC[@]})) || die "no sources under app/src/main/java/dev/edgekit/demo/core"
((${#TEST_SRC[@]})) || die "no tests under app/src/test/java"
javac --release 8 -Xlint:-options -encoding UTF-8 -d "$OUT/main" "${MAIN_SRC[@]}" \
  || die "the pure-Java layer (dev.edgekit.demo.core) does not compile as Java 8 on its own"
javac -encoding UTF-8 -cp "$OUT/main:$CP" -d "$OUT/test" "${TEST_SRC[@]}" "$HERE/tools/JUnitMain.java" \
  || die "the tests do not compile"

CLASSES=()
for f in "${TEST_SRC[@]}"; do
  rel="${f#"$HERE/app/src/test/java/"}"
  [[ "$(basename "$f")" == *Test.java ]] && CLASSES+=("$(echo "${rel%.java}" | tr / .)")
done
echo "running ${#CLASSES[@]} test classes: ${CLASSES[*]}"
java -Djava.awt.headless=true -Dedgekit.testdata="$HERE/testdata" -cp "$OUT/main:$OUT/test:$CP" JUnitMain "${CLASSES[@]}"
