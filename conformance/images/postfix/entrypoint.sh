#!/bin/sh
# Configures Postfix from the environment and runs it in the foreground.
#   ROLE=client  a mail server that sends everything through RELAY_HOST:RELAY_PORT
#                (relayhost), with TLS_LEVEL (none|may|encrypt) and optional SASL_USER /
#                SASL_PASSWORD; bounces for DOMAIN land in /var/mail/sender.
#   ROLE=server  a downstream server that accepts mail for every domain into the maildir
#                /var/mail/vhosts/sink/, with STARTTLS when /certs/tls.crt exists.
#                With SASL_SERVER_USER (user@realm) and SASL_SERVER_PASSWORD it is a
#                smarthost instead: it takes mail only from that Cyrus sasldb user, AUTH
#                (PLAIN, LOGIN) only over TLS, on 587 with STARTTLS required and on 465 with
#                TLS from the first byte (wrapper mode); it needs /certs/tls.crt.
# MYHOSTNAME sets the HELO/EHLO name; SMTPUTF8=yes turns on smtputf8_enable (default no).
set -eu

: "${ROLE:=server}" "${MYHOSTNAME:=$(hostname)}"
postconf -e "myhostname = $MYHOSTNAME" "maillog_file = /dev/stdout" \
  "inet_protocols = all" "inet_interfaces = all" "compatibility_level = 3.6" \
  "smtputf8_enable = ${SMTPUTF8:-no}" "biff = no"

case "$ROLE" in
client)
  : "${RELAY_HOST:?RELAY_HOST is required}" "${RELAY_PORT:=587}" "${TLS_LEVEL:=may}" "${DOMAIN:=acme.example}"
  postconf -e "mydomain = $DOMAIN" "myorigin = $DOMAIN" \
    "mydestination = \$myhostname, localhost, $DOMAIN" \
    "relayhost = [$RELAY_HOST]:$RELAY_PORT" \
    "mynetworks = 0.0.0.0/0 [::]/0" \
    "smtp_tls_security_level = $TLS_LEVEL" \
    "smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt" \
    "smtp_tls_loglevel = 1" \
    "maximal_queue_lifetime = 1h" "bounce_queue_lifetime = 1h" \
    "queue_run_delay = 10s" "minimal_backoff_time = 10s" "maximal_backoff_time = 20s"
  if [ -n "${SASL_USER:-}" ]; then
    printf '[%s]:%s %s:%s\n' "$RELAY_HOST" "$RELAY_PORT" "$SASL_USER" "${SASL_PASSWORD:-}" > /etc/postfix/sasl_passwd
    postmap /etc/postfix/sasl_passwd
    postconf -e "smtp_sasl_auth_enable = yes" "smtp_sasl_password_maps = hash:/etc/postfix/sasl_passwd" \
      "smtp_sasl_security_options = noanonymous" "smtp_sasl_tls_security_options = noanonymous"
  fi
  ;;
server)
  postconf -e "mydestination = localhost" "mynetworks = 0.0.0.0/0 [::]/0" \
    "virtual_mailbox_domains = static:all" "virtual_mailbox_maps = static:sink/" \
    "virtual_mailbox_base = /var/mail/vhosts" "virtual_uid_maps = static:5000" \
    "virtual_gid_maps = static:5000" "smtpd_relay_restrictions = reject_unauth_destination" \
    "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination" \
    "message_size_limit = 52428800" "virtual_mailbox_limit = 0"
  if [ -f /certs/tls.crt ]; then
    postconf -e "smtpd_tls_cert_file = /certs/tls.crt" "smtpd_tls_key_file = /certs/tls.key" \
      "smtpd_tls_security_level = may" "smtpd_tls_loglevel = 1"
  fi
  if [ -n "${SASL_SERVER_USER:-}" ]; then
    [ -f /certs/tls.crt ] || { echo "SASL_SERVER_USER needs /certs/tls.crt" >&2; exit 2; }
    mkdir -p /etc/postfix/sasl
    printf 'pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: /etc/sasldb2\n' \
      > /etc/postfix/sasl/smtpd.conf
    printf '%s' "${SASL_SERVER_PASSWORD:-}" |
      saslpasswd2 -c -p -f /etc/sasldb2 -u "${SASL_SERVER_USER#*@}" "${SASL_SERVER_USER%@*}"
    chown postfix /etc/sasldb2
    # smtpd reads /etc/sasldb2 and the SASL config outside a chroot.
    postconf -F '*/*/chroot = n'
    postconf -e "mynetworks = 127.0.0.0/8" "smtpd_sasl_auth_enable = yes" "smtpd_sasl_type = cyrus" \
      "smtpd_sasl_path = smtpd" "cyrus_sasl_config_path = /etc/postfix/sasl" "smtpd_tls_auth_only = yes" \
      "smtpd_relay_restrictions = permit_sasl_authenticated, reject" \
      "smtpd_recipient_restrictions = permit_sasl_authenticated, reject"
    postconf -M "587/inet = 587 inet n - n - - smtpd" "465/inet = 465 inet n - n - - smtpd"
    postconf -P "587/inet/syslog_name = postfix/submission" "587/inet/smtpd_tls_security_level = encrypt" \
      "465/inet/syslog_name = postfix/smtps" "465/inet/smtpd_tls_wrappermode = yes"
  fi
  ;;
*)
  echo "unknown ROLE $ROLE (client or server)" >&2
  exit 2
  ;;
esac
newaliases
exec postfix start-fg
