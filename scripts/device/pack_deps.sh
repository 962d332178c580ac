#!/usr/bin/env bash
# Packs what scripts/device/build.sh needs beyond a PyTorch wheel, from this Debian machine: the ICU
# libraries and headers (the tokenizer's Unicode normalisation), fmt and nlohmann-json headers.
# The tarball goes to .devdeps/ (ignored by git; carried to the device machine by the `device` tool).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .devdeps
grep -qx '/.devdeps/' .git/info/exclude 2>/dev/null || echo '/.devdeps/' >> .git/info/exclude
lib=/usr/lib/x86_64-linux-gnu
for f in "$lib"/libicu{uc,i18n,data}.so.72 /usr/include/unicode /usr/include/fmt /usr/include/nlohmann; do
  # a missing piece would otherwise give a tarball the device build fails on, minutes into a lease
  [ -e "$f" ] || { echo "pack_deps: $f is missing; run scripts/setup.sh first" >&2; exit 1; }
done
tar cJf .devdeps/deps.tar.xz -h "$lib"/libicu{uc,i18n,data}.so.72 "$lib"/libicu{uc,i18n,data}.so \
  /usr/include/unicode /usr/include/fmt /usr/include/nlohmann 2>/dev/null
ls -la .devdeps/deps.tar.xz
