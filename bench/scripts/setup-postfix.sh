#!/usr/bin/env bash
# Installs Debian's postfix (which ships smtp-sink and smtp-source) and configures it as a
# plain relay on loopback for the comparison benchmark: it accepts mail from 127.0.0.0/8
# on 127.0.0.1:25 and forwards everything to a relayhost that `relay-bench` sets per run
# (`postconf -e relayhost=[127.0.0.1]:PORT`). The queue stays Postfix's default durable
# queue (/var/spool/postfix, fsync'd before 250). Postfix is left stopped; the bench
# starts and stops it.
#
# Usage: bench/scripts/setup-postfix.sh   (as root; idempotent)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-postfix.sh: run as root (apt-get and postfix need it)" >&2
    exit 1
fi

if ! command -v postconf >/dev/null 2>&1 || ! command -v smtp-sink >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # "No configuration": we write main.cf ourselves below.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi

# Debian's package may have started it; the bench owns its lifecycle.
postfix stop >/dev/null 2>&1 || true

[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf 2>/dev/null || touch /etc/postfix/main.cf

postconf -e \
    "myhostname = postfix.bench.example" \
    "mydomain = bench.example" \
    "myorigin = \$myhostname" \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "mydestination =" \
    "local_transport = error:local delivery is disabled" \
    "relayhost = [127.0.0.1]:2526" \
    "mynetworks = 127.0.0.0/8" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "smtpd_recipient_restrictions = permit_mynetworks, reject" \
    "smtputf8_enable = no" \
    "message_size_limit = 36700160" \
    "compatibility_level = 3.6" \
    "maillog_file = /var/log/postfix.log"

# Postfix's chroot'ed daemons need these copies (the init script normally makes them).
mkdir -p /var/spool/postfix/etc
for f in /etc/resolv.conf /etc/hosts /etc/services /etc/nsswitch.conf /etc/localtime; do
    [ -e "$f" ] && cp -L "$f" /var/spool/postfix/etc/ 2>/dev/null || true
done

postfix set-permissions >/dev/null 2>&1 || true
postfix check
echo "postfix $(postconf -h mail_version) configured: relay on 127.0.0.1:25, sink via relayhost"
