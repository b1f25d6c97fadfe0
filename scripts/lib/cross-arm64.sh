# Sourced (bash) by scripts/test and scripts/package: setup_cross_arm64 prepares this shell to build for
# arm64 (aarch64-unknown-linux-gnu) with Debian's cross toolchain and to run the result under qemu-user.
#
#   source scripts/lib/cross-arm64.sh; setup_cross_arm64 || exit 1
#   cargo build --release --locked --target aarch64-unknown-linux-gnu --bins
#
# It only exports variables in the calling shell: no .cargo/config.toml, so host builds are untouched.
# The Debian packages (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user) come from
# scripts/lib/debian-packages.txt through scripts/lib/install-packages.sh, like every other package.
#
# Exports:
#   CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER  the cross gcc drives the link (it knows its sysroot)
#   CC_aarch64_unknown_linux_gnu, AR_..., (CXX_)   for build scripts using the cc crate (ring, io-uring's
#                                                  optional C parts, ...), per target so host C builds are
#                                                  not affected
#   PKG_CONFIG_ALLOW_CROSS=1                        no crate of ours links a system library; if one starts to,
#                                                  it must not silently pick the host's .pc files -> see below
#   ARM64_SYSROOT=/usr/aarch64-linux-gnu            where libc6-arm64-cross puts ld-linux-aarch64.so.1 + libc
#   QEMU_LD_PREFIX=$ARM64_SYSROOT                   lets qemu-aarch64 find that dynamic loader (same as -L)
#   CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER   "qemu-aarch64 -L /usr/aarch64-linux-gnu": `cargo run` /
#                                                  `cargo test --target aarch64-...` run the binaries under qemu
#   FLANNEL_ARM64_QEMU                              the qemu-aarch64 path, for tests that start arm64 binaries
#
# Returns 1 with a message naming what is missing (the rust target, the cross gcc, the sysroot, qemu).

ARM64_RUST_TARGET=aarch64-unknown-linux-gnu

setup_cross_arm64() {
  local t=$ARM64_RUST_TARGET sysroot=/usr/aarch64-linux-gnu tool qemu

  # 1. the target's std. `rustup target add` is idempotent (it says "is up to date" when present); only
  #    call it when missing so an offline machine that already has the target works too.
  if ! command -v rustup >/dev/null 2>&1; then
    echo "==> cross-arm64: rustup not found in PATH ($PATH); it is needed to add the $t target" >&2
    return 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    echo "==> cross-arm64: adding rust target $t (rustup target add)"
    if ! rustup target add "$t"; then
      echo "==> cross-arm64: 'rustup target add $t' failed: this machine cannot fetch the standard library" \
        "for $t (no network to static.rust-lang.org, or a toolchain without that target). Install it" \
        "elsewhere and copy \$(rustc --print sysroot)/lib/rustlib/$t, or build arm64 on another machine." >&2
      return 1
    fi
  fi

  # 2. the cross C toolchain and the target's libc (linker + crt files + libc.so for the link).
  for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-ar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "==> cross-arm64: $tool not found: install gcc-aarch64-linux-gnu (scripts/lib/debian-packages.txt," \
        "scripts/lib/install-packages.sh)" >&2
      return 1
    fi
  done
  if [ ! -e "$sysroot/lib/ld-linux-aarch64.so.1" ] || [ ! -e "$sysroot/lib/libc.so" ]; then
    echo "==> cross-arm64: no arm64 libc under $sysroot (ld-linux-aarch64.so.1, libc.so): install" \
      "libc6-dev-arm64-cross" >&2
    return 1
  fi

  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  # no crate of the workspace compiles C++; g++-aarch64-linux-gnu is only used when present
  if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
    export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  fi
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  export PKG_CONFIG_ALLOW_CROSS=1
  export PKG_CONFIG_SYSROOT_DIR_aarch64_unknown_linux_gnu=$sysroot
  export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=$sysroot/lib/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig
  export ARM64_SYSROOT=$sysroot
  export QEMU_LD_PREFIX=$sysroot

  # 3. qemu-user (optional for building, needed to run the arm64 binaries here). Debian 12's qemu-user
  #    ships /usr/bin/qemu-aarch64 and registers no binfmt handler (qemu-user-static would, machine-wide).
  qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
  if [ -n "$qemu" ]; then
    export FLANNEL_ARM64_QEMU=$qemu
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu -L $sysroot"
  else
    echo "==> cross-arm64: qemu-aarch64 not found (package qemu-user): arm64 binaries build but cannot run here" >&2
  fi
  return 0
}
