#!/bin/sh
# Install Postfix and swaks for vxgate's end-to-end tests (Debian/Ubuntu). Idempotent:
# running it again only re-checks. Run as root (or with sudo available).
#
# The tests do NOT use the system's default Postfix instance: tests/support/postfix.py
# starts private instances with `postfix -c <workdir>/etc`, their own queue, data
# directory and maillog_file. What they need from the machine:
#   - the postfix package (Postfix >= 3.4 for maillog_file; Debian 12 has 3.7), swaks;
#   - root: Postfix's master must start as root. As root, `postfix -c DIR` and
#     `postqueue -c DIR` accept any DIR, so no alternate_config_directories entry is
#     written into /etc/postfix/main.cf (that is only needed for non-root postqueue/
#     postdrop users of a second instance);
#   - loopback networking only: the instances use IP literals and no DNS.
# The default instance is left as the package installed it (not started here; on hosts
# with systemd the package may start it on port 25, which does not conflict).
set -eu

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if installed postfix && installed swaks; then
    echo "install-postfix: postfix and swaks already installed"
else
    # Answer the package's questions up front: no mail routing is configured for the
    # default instance ("Local only"), mailname is a test name.
    echo "postfix postfix/main_mailer_type select Local only" | $SUDO debconf-set-selections
    echo "postfix postfix/mailname string example.test" | $SUDO debconf-set-selections
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix swaks
fi

# Debian: prepare the chroot copy of /etc files (resolv.conf, services, ...) for the
# default instance's chrooted services. Harmless to repeat; the test instances set every
# chroot column to "n" and do not need it.
if [ -x /usr/lib/postfix/configure-instance.sh ]; then
    $SUDO /usr/lib/postfix/configure-instance.sh - || true
fi

# There is no syslog in CI containers: give the default instance a log file too, in case
# someone starts it. Only set when not already configured, so a second run changes nothing.
if [ -z "$($SUDO postconf -h maillog_file 2>/dev/null)" ]; then
    $SUDO postconf -e maillog_file=/var/log/postfix.log
fi

# Sanity checks the harness relies on.
version=$(postconf -h mail_version 2>/dev/null || /usr/sbin/postconf -h mail_version)
major=${version%%.*}
rest=${version#*.}
minor=${rest%%.*}
if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 4 ]; }; then
    echo "install-postfix: Postfix $version is too old (maillog_file needs >= 3.4)" >&2
    exit 1
fi
daemon_dir=$(postconf -h daemon_directory 2>/dev/null || /usr/sbin/postconf -h daemon_directory)
for f in "$daemon_dir/master" "$daemon_dir/postlogd"; do
    [ -x "$f" ] || { echo "install-postfix: missing $f" >&2; exit 1; }
done
id postfix >/dev/null 2>&1 || { echo "install-postfix: no postfix user" >&2; exit 1; }
command -v swaks >/dev/null 2>&1 || { echo "install-postfix: swaks missing" >&2; exit 1; }
echo "install-postfix: Postfix $version ready (tests run private instances; run pytest as root)"
