#!/bin/sh
# Configures Postfix from the environment and runs it in the foreground.
#   ROLE=client  a mail server that sends everything through RELAY_HOST:RELAY_PORT
#                (relayhost), with TLS_LEVEL (none|may|encrypt) and optional SASL_USER /
#                SASL_PASSWORD; bounces for DOMAIN land in /var/mail/sender.
#   ROLE=server  a downstream server that accepts mail for every domain into the maildir
#                /var/mail/vhosts/sink/, with STARTTLS when /certs/tls.crt exists.
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
  ;;
*)
  echo "unknown ROLE $ROLE (client or server)" >&2
  exit 2
  ;;
esac
newaliases
exec postfix start-fg
