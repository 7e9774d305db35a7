#!/usr/bin/env bash
# Install vxgate on a Debian VM beside Postfix (run as root from a checkout of vxgate).
#
#   scripts/install-vm.sh [--postfix] [--start] [--no-systemd]
#
#   --postfix     wire Postfix: content_filter to vxgate, the re-injection port 127.0.0.1:10026
#   --start       start vxgate (systemd when present, else `salmon start` as user vxgate)
#   --no-systemd  never touch systemd (containers, CI)
# Where things go (override with the environment): VXGATE_PREFIX=/opt/vxgate (code, venv,
# run/, logs/), VXGATE_ETC=/etc/vxgate (vxgate.ini), VXGATE_STATE=/var/lib/vxgate (spool,
# quarantine database, pid file), VXGATE_BINDIR=/usr/local/bin (the `vxgate` command).
# Safe to run again (also to upgrade in place): it keeps an existing vxgate.ini and Postfix lines.
set -euo pipefail
PREFIX=${VXGATE_PREFIX:-/opt/vxgate}
ETC=${VXGATE_ETC:-/etc/vxgate}
STATE=${VXGATE_STATE:-/var/lib/vxgate}
BINDIR=${VXGATE_BINDIR:-/usr/local/bin}
SRC=$(cd "$(dirname "$0")/.." && pwd)
# Debian's interpreter: a per-user one (pyenv under /root) would not run as user vxgate
PYTHON=${VXGATE_PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3 )}
POSTFIX=no; START=no; SYSTEMD=yes
for arg in "$@"; do
    case $arg in
        --postfix) POSTFIX=yes ;;
        --start) START=yes ;;
        --no-systemd) SYSTEMD=no ;;
        *) echo "usage: $0 [--postfix] [--start] [--no-systemd]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
step() { echo "==> $*"; }

step "packages: python3-venv$( [ $POSTFIX = yes ] && echo ', postfix' )"
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || { [ $POSTFIX = yes ] && ! command -v postfix >/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    echo "postfix postfix/main_mailer_type select Internet Site" | debconf-set-selections
    echo "postfix postfix/mailname string $(hostname -f 2>/dev/null || hostname)" | debconf-set-selections
    apt-get install -y -q python3-venv $( [ $POSTFIX = yes ] && echo postfix )
    PYTHON=/usr/bin/python3
fi

step "user vxgate"
id vxgate >/dev/null 2>&1 || useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin vxgate

step "code and virtualenv in $PREFIX"
mkdir -p "$PREFIX"
if [ "$SRC" != "$(cd "$PREFIX" && pwd)" ]; then
    tar -C "$SRC" --exclude=.venv --exclude=.git --exclude='./run/*' --exclude='./logs/*' \
        --exclude=__pycache__ -cf - . | tar -C "$PREFIX" -xf -
fi
[ -x "$PREFIX/.venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install -q "$PREFIX"
# an upgrade keeps the version number: reinstall vxgate itself (its `salmon` wraps Salmon's)
"$PREFIX/.venv/bin/pip" install -q --no-deps --force-reinstall "$PREFIX"
install -d -o vxgate -g vxgate -m 0700 "$STATE" "$PREFIX/run" "$PREFIX/logs"
install -d -m 0755 "$BINDIR"
ln -sfn "$PREFIX/.venv/bin/vxgate" "$BINDIR/vxgate"     # `vxgate` on the PATH; it reads $ETC/vxgate.ini

step "configuration $ETC/vxgate.ini"
install -d -m 0755 "$ETC"
if [ ! -f "$ETC/vxgate.ini" ]; then
    sed -e "s#/var/lib/vxgate#$STATE#g" -e "s#/opt/vxgate#$PREFIX#g" \
        "$PREFIX/config/vxgate.production.ini" > "$ETC/vxgate.ini"
    chown root:vxgate "$ETC/vxgate.ini"; chmod 0640 "$ETC/vxgate.ini"   # it holds secrets
fi
( cd "$PREFIX" && VXGATE_CONFIG="$ETC/vxgate.ini" runuser -u vxgate -- .venv/bin/vxgate check-config -q )

if [ -d /etc/logrotate.d ]; then
    sed "s#/opt/vxgate#$PREFIX#g" "$PREFIX/config/logrotate/vxgate" > /etc/logrotate.d/vxgate
fi

if [ $POSTFIX = yes ]; then
    step "Postfix: content_filter = scan:[127.0.0.1]:10025, re-injection on 127.0.0.1:10026"
    postconf -e 'content_filter = scan:[127.0.0.1]:10025' 'receive_override_options = no_address_mappings'
    if ! postconf -M scan/unix >/dev/null 2>&1 || [ -z "$(postconf -M scan/unix 2>/dev/null)" ]; then
        cat "$PREFIX/config/postfix/master.cf.smtp-mode" | grep -v '^#' >> /etc/postfix/master.cf
    fi
    postfix check
fi

SYSTEMD_UP=no
[ $SYSTEMD = yes ] && [ -d /run/systemd/system ] && SYSTEMD_UP=yes
if [ $SYSTEMD_UP = yes ]; then
    step "systemd unit vxgate.service"
    sed "s#/opt/vxgate#$PREFIX#g; s#/var/lib/vxgate#$STATE#g; s#/etc/vxgate#$ETC#g" \
        "$PREFIX/config/systemd/vxgate.service" > /etc/systemd/system/vxgate.service
    # the web console's unit is installed, not enabled: it needs an administrator first
    # (vxgate web add-user NAME, then systemctl enable --now vxgate-web)
    sed "s#/opt/vxgate#$PREFIX#g; s#/var/lib/vxgate#$STATE#g; s#/etc/vxgate#$ETC#g" \
        "$PREFIX/config/systemd/vxgate-web.service" > /etc/systemd/system/vxgate-web.service
    systemctl daemon-reload
    systemctl enable vxgate
fi

if [ $START = yes ]; then
    step "start vxgate"
    if [ $SYSTEMD_UP = yes ]; then
        systemctl restart vxgate
    else
        ( cd "$PREFIX" && VXGATE_CONFIG="$ETC/vxgate.ini" runuser -u vxgate -- .venv/bin/salmon start )
    fi
    if [ $POSTFIX = yes ]; then
        if postfix status >/dev/null 2>&1; then postfix reload; else postfix start; fi
    fi
fi
step "done. Check it: vxgate doctor"
