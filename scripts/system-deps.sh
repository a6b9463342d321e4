#!/usr/bin/env bash
# Installs the system packages shmbench's tests and container builds need and pip cannot
# provide: bubblewrap (the rootless runtime), squashfs-tools + siftool (SIF images without
# Apptainer), debootstrap (building images), docker-registry (a real OCI registry on
# loopback for the pull tests), munge + slurmctld + slurmd + slurm-client (a real Slurm
# cluster on loopback for the sweep tests). Only what is missing, only when running as root.
set -euo pipefail
need=()
for pair in bwrap:bubblewrap unsquashfs:squashfs-tools mksquashfs:squashfs-tools siftool:siftool \
            debootstrap:debootstrap docker-registry:docker-registry setpriv:util-linux \
            unshare:util-linux gcc:gcc munged:munge slurmctld:slurmctld slurmd:slurmd \
            sbatch:slurm-client; do
    tool=${pair%%:*} pkg=${pair#*:}
    command -v "$tool" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
# shellcheck disable=SC2207
need=($(printf '%s\n' "${need[@]}" | sort -u))
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "missing system packages (install them, or run as root with apt-get): ${need[*]}" >&2
fi
