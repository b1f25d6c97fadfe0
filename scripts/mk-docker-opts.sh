#!/bin/sh
# mk-docker-opts.sh: turns flanneld's subnet.env into options for the Docker daemon.
#
# A drop-in replacement for flannel's dist/mk-docker-opts.sh: the same flags and defaults and the
# same output text, so units and scripts written for flannel keep working. For a subnet.env of
#   FLANNEL_SUBNET=10.1.15.1/24  FLANNEL_MTU=1472  FLANNEL_IPMASQ=true
# it writes (by default both forms; -i only the first three lines, -c only the last):
#   DOCKER_OPT_BIP="--bip=10.1.15.1/24"
#   DOCKER_OPT_IPMASQ="--ip-masq=false"
#   DOCKER_OPT_MTU="--mtu=1472"
#   DOCKER_OPTS=" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472"
# As in flannel:
# - the individual variables come in name order (BIP, IPMASQ, MTU);
# - the combined value starts with the current value of the combined variable (from the
#   environment or the subnet file; followed by one space when not empty), then " <option>" for
#   each option, hence the leading space;
# - --ip-masq is the inverse of FLANNEL_IPMASQ (when flanneld masquerades, Docker must not, and
#   vice versa); it is left out when FLANNEL_IPMASQ is not set, and with -m;
# - -i together with -c writes both forms, like no flag at all; -h and -? print the usage on
#   stderr and exit 1.
# Differences, all of them cases flannel lets pass silently (Docker would then start with its
# default bridge, off the overlay): a missing subnet file, a subnet file without FLANNEL_SUBNET, an
# invalid FLANNEL_IPMASQ, an invalid -k name, extra arguments and an unwritable output file are
# errors (a message on stderr, exit 1, the output file untouched). A regular output file is
# replaced atomically (written beside it, then renamed), so a reader never sees half of it; a
# symlink or special file (-d /dev/stdout) is written through. Only
# FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ from the subnet file are used (values of those
# names in the environment are ignored), and no DOCKER_OPT_* variables other than these three are
# written.

prog=${0##*/}
nl='
'

usage() {
	cat >&2 <<EOF
usage: $prog [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Writes Docker daemon options (--bip, --ip-masq, --mtu) taken from flanneld's subnet file.
  -f FILE  subnet file written by flanneld (default /run/flannel/subnet.env)
  -d FILE  file to write, for Docker's EnvironmentFile= (default /run/docker_opts.env)
  -i       write only the individual variables DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU
  -c       write only the combined variable (all options in one)
  -k NAME  name of the combined variable (default DOCKER_OPTS)
  -m       leave --ip-masq out (for old Docker versions)
  -h, -?   show this help
Without -i and -c (or with both) both forms are written.
EOF
	exit 1
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

# Internal names start with mdo_ so that the sourced subnet file cannot clobber them by accident.
mdo_in=/run/flannel/subnet.env
mdo_out=/run/docker_opts.env
mdo_key=DOCKER_OPTS
mdo_indiv=false
mdo_comb=false
mdo_masq=true

while getopts ':f:d:icmk:h' mdo_opt; do
	case $mdo_opt in
	f) mdo_in=$OPTARG ;;
	d) mdo_out=$OPTARG ;;
	i) mdo_indiv=true ;;
	c) mdo_comb=true ;;
	m) mdo_masq=false ;;
	k) mdo_key=$OPTARG ;;
	h) usage ;;
	:)
		printf '%s: option -%s needs an argument\n' "$prog" "$OPTARG" >&2
		usage
		;;
	*)
		# '?': an unknown option, or -? itself (help).
		[ "$OPTARG" = '?' ] || printf '%s: unknown option -%s\n' "$prog" "$OPTARG" >&2
		usage
		;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || die "unexpected argument '$1' (options only; see -h)"

case $mdo_key in
'' | [0-9]* | *[!A-Za-z0-9_]*) die "-k '$mdo_key': not a valid shell variable name" ;;
esac

if [ "$mdo_indiv" = false ] && [ "$mdo_comb" = false ]; then
	mdo_indiv=true
	mdo_comb=true
fi

[ -e "$mdo_in" ] || die "$mdo_in not found (flanneld writes it once it holds a subnet lease; is it running?)"
if [ ! -f "$mdo_in" ] || [ ! -r "$mdo_in" ]; then
	die "$mdo_in is not a readable file"
fi

# The subnet file is shell syntax (KEY=VALUE lines written by flanneld): source it, as flannel
# does. A name without a slash would make '.' search PATH, hence the ./ prefix.
case $mdo_in in
*/*) mdo_src=$mdo_in ;;
*) mdo_src=./$mdo_in ;;
esac
unset FLANNEL_SUBNET FLANNEL_MTU FLANNEL_IPMASQ
# shellcheck disable=SC1090
. "$mdo_src"

[ -n "${FLANNEL_SUBNET:-}" ] || die "$mdo_in sets no FLANNEL_SUBNET"
mdo_bip="--bip=$FLANNEL_SUBNET"

mdo_mtu=
[ -z "${FLANNEL_MTU:-}" ] || mdo_mtu="--mtu=$FLANNEL_MTU"

mdo_ipmasq=
if [ "$mdo_masq" = true ] && [ -n "${FLANNEL_IPMASQ:-}" ]; then
	case $FLANNEL_IPMASQ in
	true) mdo_ipmasq=--ip-masq=false ;;
	false) mdo_ipmasq=--ip-masq=true ;;
	*) die "invalid FLANNEL_IPMASQ '$FLANNEL_IPMASQ' in $mdo_in (true or false)" ;;
	esac
fi

# The combined value: what the variable already holds, then " <option>" per option.
eval "mdo_all=\${$mdo_key:-}"
[ -z "$mdo_all" ] || mdo_all="$mdo_all "

mdo_text=
for mdo_name in BIP IPMASQ MTU; do
	case $mdo_name in
	BIP) mdo_val=$mdo_bip ;;
	IPMASQ) mdo_val=$mdo_ipmasq ;;
	MTU) mdo_val=$mdo_mtu ;;
	esac
	[ -n "$mdo_val" ] || continue
	[ "$mdo_indiv" = false ] || mdo_text="${mdo_text}DOCKER_OPT_$mdo_name=\"$mdo_val\"$nl"
	mdo_all="$mdo_all $mdo_val"
done
[ "$mdo_comb" = false ] || mdo_text="$mdo_text$mdo_key=\"$mdo_all\"$nl"

mdo_dir=$(dirname -- "$mdo_out")
[ -d "$mdo_dir" ] || die "cannot write $mdo_out: directory $mdo_dir does not exist"
[ ! -d "$mdo_out" ] || die "cannot write $mdo_out: it is a directory"
if [ -L "$mdo_out" ] || { [ -e "$mdo_out" ] && [ ! -f "$mdo_out" ]; }; then
	# A symlink or a special file (-d /dev/stdout): write through it, never replace it.
	printf '%s' "$mdo_text" >"$mdo_out" || die "cannot write $mdo_out"
	exit 0
fi
mdo_tmp="$mdo_out.tmp.$$"
if ! printf '%s' "$mdo_text" >"$mdo_tmp"; then
	rm -f -- "$mdo_tmp"
	die "cannot write $mdo_tmp"
fi
if ! mv -f -- "$mdo_tmp" "$mdo_out"; then
	rm -f -- "$mdo_tmp"
	die "cannot replace $mdo_out"
fi
