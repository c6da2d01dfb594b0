#!/usr/bin/env bash
# Install everything `make test`, `make demo` and `make bench` need, as root. Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv"
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*"; }

arch_headers() {
  case "$(dpkg --print-architecture)" in
    amd64) echo linux-headers-amd64 ;;
    arm64) echo linux-headers-arm64 ;;
    *) echo "linux-headers-$(dpkg --print-architecture)" ;;
  esac
}

APT_PACKAGES=(
  python3-bpfcc bpftool "$(arch_headers)" linux-libc-dev gcc
  iproute2 procps openssh-server openssh-client iperf3 nftables iptables
  python3-pyroute2 python3-netaddr python3-venv python3-pip python3-yaml python3-apt shellcheck
  sudo
  # lab/vm.py: Debian guests built with debootstrap, run under qemu (molecule vm scenario)
  qemu-system-x86 qemu-utils debootstrap
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt: all packages present"
fi

if ! grep -qs " /sys/fs/bpf bpf " /proc/mounts; then
  log "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf -o nosuid,nodev,noexec,mode=0700 bpf /sys/fs/bpf
fi

# The venv sees the system site packages: BCC's Python bindings exist only as distro
# packages, and the tests must use the same pyroute2/netaddr as target-side modules.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
STAMP="$VENV/.deps-stamp"
if [ ! -f "$STAMP" ] || [ "$ROOT/tests/requirements.txt" -nt "$STAMP" ]; then
  log "pip: installing tests/requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
  touch "$STAMP"
else
  log "pip: venv up to date"
fi

# ansible-test --venv downloads a pip bootstrap script from its own CI file host, which
# closed networks cannot reach; put our equivalent (ensurepip + PyPI) where it caches it.
PIP_VERSION="$("$VENV/bin/python" - <<'PY'
import re
import ansible_test._internal.python_requirements as r
src = open(r.__file__).read()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)"
CACHE="$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py"
if [ ! -f "$CACHE" ]; then
  log "ansible-test: providing the pip $PIP_VERSION bootstrap at $CACHE"
  mkdir -p "$(dirname "$CACHE")"
  cp "$ROOT/scripts/ansible-test-get-pip.py" "$CACHE"
fi
log "dependencies ready"
