#!/usr/bin/env bash
# Installs what inclubit needs on Debian/Ubuntu (root or sudo), then:
#   scripts/setup.sh demo   build and run `inclubit demo`
#   scripts/setup.sh test   fmt + clippy + the whole test suite
#   scripts/setup.sh        install only
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  build-essential pkg-config clang libclang-dev
  # libopus is built from source by the opus crate
  cmake
  # FFmpeg (linked dynamically; x264 comes with Debian's libavcodec)
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavdevice-dev
  libavfilter-dev libswresample-dev
  # Vulkan loader + Mesa lavapipe: software rendering on machines with no GPU
  libvulkan1 mesa-vulkan-drivers
  # The OpenXR loader (opened at run time; with no runtime installed, view uses a window)
  libopenxr-loader1
  # Window support (X11/Wayland via winit) and a virtual display for tests
  libxkbcommon-x11-0 libx11-xcb1 libxcursor1 libxrandr2 libxi6 libwayland-client0
  xvfb xauth x11-apps
  # The NAT lab (tests/nat.rs): namespaces, NAT, and miniupnpd as a router's NAT-PMP/UPnP
  iproute2 iptables nftables miniupnpd
  curl ca-certificates
)
# The browser tests (tests/browser.rs): Debian's Chromium driven over WebDriver.
# The headset tests against Monado (tests/monado.rs): its build tools, and the Vulkan and
# OpenXR validation layers they run under.
MONADO_SRC="$(ls ../shared/monado/monado-*.tar.gz 2>/dev/null | head -1 || true)"
if [ "${1:-}" = "test" ]; then
  PACKAGES+=(chromium chromium-driver)
  command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
  PACKAGES+=(vulkan-validationlayers openxr-layer-corevalidation)
  # The admin tests: systemd-analyze for the unit, pebble (ACME test server) for certificates.
  PACKAGES+=(systemd pebble)
  # ffprobe checks what send --record writes.
  PACKAGES+=(ffmpeg)
  if [ -n "$MONADO_SRC" ]; then
    PACKAGES+=(cmake ninja-build python3 git libeigen3-dev libvulkan-dev glslang-tools libudev-dev
      libxcb1-dev libxcb-randr0-dev libx11-xcb-dev libxrandr-dev)
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${CI:-}" = "true" ] || [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt: installing ${missing[*]:-(checking all)}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  # miniupnpd is for the lab's routers only: never as a service on this machine.
  $SUDO systemctl disable --now miniupnpd >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "==> installing Rust (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# Build outside the clone so reruns are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inclubit-target}"
# lavapipe probes for a Wayland socket and complains without a runtime dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d /tmp/inclubit-xdg.XXXXXX)"
fi

# WebXR emulation for the "Enter VR" test: iwer from npm, kept outside the clone.
IWER_VERSION=2.5.0
install_iwer() {
  local prefix="$HOME/.cache/inclubit-npm"
  if [ ! -f "$prefix/node_modules/iwer/build/iwer.min.js" ] ||
     ! grep -q "\"version\": \"$IWER_VERSION\"" "$prefix/node_modules/iwer/package.json"; then
    echo "==> npm: iwer@$IWER_VERSION"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --silent "iwer@$IWER_VERSION"
  fi
  export INCLUBIT_IWER="$prefix/node_modules/iwer/build/iwer.min.js"
}

# Monado, the open-source OpenXR runtime, built from ../shared/monado (Debian has no package)
# into ~/.cache: the in-process runtime with its null compositor and simulated HMD. ~9 min cold
# on 2 cores, then incremental.
build_monado() {
  local cache="$HOME/.cache/inclubit-monado" stamp
  if [ -z "$MONADO_SRC" ]; then
    echo "==> Monado: no source in ../shared/monado; headset tests use the simulated runtime only"
    return
  fi
  stamp="$(basename "$MONADO_SRC")"
  if [ ! -f "$cache/build/openxr_monado-dev.json" ] || [ "$(cat "$cache/source" 2>/dev/null)" != "$stamp" ]; then
    echo "==> Monado: building $stamp into $cache (first time: several minutes)"
    rm -rf "$cache/monado" && mkdir -p "$cache"
    tar -xzf "$MONADO_SRC" -C "$cache"
    local off=""
    for d in HDK HYDRA NS PSMV PSSENSE REMOTE RIFT_S TWRAP WMR; do off="$off -DXRT_BUILD_DRIVER_$d=OFF"; done
    # shellcheck disable=SC2086
    cmake -S "$cache/monado" -B "$cache/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DXRT_FEATURE_SERVICE=OFF -DBUILD_TESTING=OFF -DXRT_BUILD_SAMPLES=OFF \
      -DXRT_FEATURE_STEAMVR_PLUGIN=OFF -DXRT_MODULE_MONADO_CLI=OFF -DXRT_MODULE_AUX_VIVE=OFF \
      $off >"$cache/cmake.log" 2>&1 || { tail -20 "$cache/cmake.log"; exit 1; }
    ninja -C "$cache/build" >"$cache/build.log" 2>&1 || { tail -30 "$cache/build.log"; exit 1; }
    echo "$stamp" >"$cache/source"
  fi
  export INCLUBIT_MONADO_JSON="$cache/build/openxr_monado-dev.json"
}

case "${1:-}" in
  demo)
    shift
    cargo build --release --bin inclubit
    exec "$CARGO_TARGET_DIR/release/inclubit" demo "$@"
    ;;
  test)
    install_iwer
    build_monado
    echo "==> cargo fmt --check"
    cargo fmt --all -- --check
    echo "==> cargo clippy -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    echo "==> cargo deny (licences, bans, sources; RustSec's database is on GitHub, out of reach here)"
    command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
    cargo deny check licenses bans sources
    echo "==> tests"
    cargo test --workspace --all-targets --no-fail-fast
    echo "==> fuzz targets, 10 s each (scripts/fuzz.sh TARGET MINUTES for long runs)"
    scripts/fuzz.sh all 10
    ;;
  "") ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac
