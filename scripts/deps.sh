#!/bin/sh
# Installs the Debian packages the build and the tests need, if missing.
# RocksDB comes from librocksdb-dev (linked statically; see .cargo/config.toml).
set -e
need=""
# Build: RocksDB and its codecs, clang for bindgen. Tests: fuse3 (mounts),
# python3 (the POSIX suite), git (a real program on the mount), iproute2
# (network namespaces).
for p in librocksdb-dev libclang-dev libsnappy-dev liblz4-dev libzstd-dev libbz2-dev zlib1g-dev build-essential pkg-config iproute2 fuse3 python3 git; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    echo "installing:$need" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y $need >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y $need >/dev/null; }
fi
# fsx-rs, the file exerciser the fsx_rs cluster test runs (a Rust binary
# from crates.io, pinned).
if ! command -v fsx >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/fsx" ]; then
    echo "installing: fsx 0.3.2 (cargo install)" >&2
    cargo install fsx --version 0.3.2 --locked >/dev/null 2>&1 || cargo install fsx --version 0.3.2 >/dev/null
fi
# pjdfstest (the Rust rewrite of the POSIX file system suite, crates.io,
# pinned), which the pjdfstest cluster test runs; its user-switching tests
# need a second unprivileged user and group named `tests`.
if ! command -v pjdfstest >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/pjdfstest" ]; then
    echo "installing: pjdfstest 0.2.2 (cargo install)" >&2
    cargo install pjdfstest --version 0.2.2 --locked >/dev/null 2>&1 || cargo install pjdfstest --version 0.2.2 >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id tests >/dev/null 2>&1; then
    echo 'tests:x:::pjdfstest dummy user:/:/usr/sbin/nologin' | newusers
fi
# iSCSI tests: libiscsi's userspace initiators (iscsi-test-cu, iscsi-inq,
# iscsi-perf...) and qemu-img with its iscsi:// driver, which lives in
# qemu-block-extra of exactly the installed qemu-utils version (a
# qemu-utils from bookworm-backports needs backports' qemu-block-extra).
export DEBIAN_FRONTEND=noninteractive
# libiscsi-dev and a C compiler: the failover tests' initiator
# (tests/c/iscsi-writer.c) is a small program over libiscsi.
for p in libiscsi-bin libiscsi-dev gcc; do
    if ! dpkg -s "$p" >/dev/null 2>&1; then
        echo "installing: $p" >&2
        apt-get install -y "$p" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$p" >/dev/null; }
    fi
done
if ! dpkg -s qemu-utils >/dev/null 2>&1; then
    echo "installing: qemu-utils" >&2
    apt-get install -y qemu-utils >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y qemu-utils >/dev/null; }
fi
qver=$(dpkg-query -W -f='${Version}' qemu-utils)
if [ "$(dpkg-query -W -f='${Version}' qemu-block-extra 2>/dev/null)" != "$qver" ]; then
    echo "installing: qemu-block-extra $qver" >&2
    case "$qver" in
    *bpo12*)
        if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/sparefs-backports.list
        fi
        apt-get update >/dev/null
        apt-get install -y "qemu-block-extra=$qver" >/dev/null ;;
    *)
        apt-get install -y "qemu-block-extra=$qver" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "qemu-block-extra=$qver" >/dev/null; } ;;
    esac
fi
