# Sourced by scripts/demo and scripts/test: installs every package of scripts/lib/debian-packages.txt that
# is missing (apt-get, as root). Not root and something missing: says what and returns 1.
install_packages() {
  local list missing=() p
  list="$(dirname "${BASH_SOURCE[0]}")/debian-packages.txt"
  while read -r p; do
    p=${p%%#*}; p=${p//[[:space:]]/}
    [ -n "$p" ] || continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done < "$list"
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "==> not root: cannot install ${missing[*]}" >&2
    return 1
  fi
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
